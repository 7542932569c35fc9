//! The smallest end-to-end run: release two versions, update v1 to v2.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
use e2e_tests::*;

#[test]
fn release_then_update_v1_to_v2() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let out = ok(w.apply_cmd("apply", &app).arg("--json"));
    let r = last_json(&out);
    assert_eq!(r["to"], "2.0.0");
    assert_eq!(r["method"], "incremental");
    assert_same_tree(&app, &w.releases[1]);
}
