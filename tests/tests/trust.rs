//! Keys, roles, freshness, rollback, downgrade and targeting, end to end through the real
//! binaries (docs/security.md lists which attack each test covers).
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::*;

/// Generates `keys/NAME.key` and `keys/NAME.pub` in the world.
fn keygen(w: &World, name: &str) -> (PathBuf, PathBuf) {
    let dir = w.path("keys");
    ok(cmd("patch-create")
        .args(["keygen", "--out"])
        .arg(&dir)
        .args(["--name", name]));
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// `patch-create release` of release `i` as `i.0.0` into `repo`, signed with `keys`.
fn release_cmd(w: &World, repo: &Path, i: usize, keys: &[&Path], extra: &[&str]) -> Command {
    let mut c = cmd("patch-create");
    c.args([
        "release", "--name", "demo", "--json", "--level", "3", "--repo",
    ])
    .arg(repo)
    .arg("--root")
    .arg(&w.releases[i - 1])
    .args(["--version", &format!("{i}.0.0")]);
    for k in keys {
        c.arg("--key").arg(k);
    }
    c.args(extra);
    c
}

/// A `patch-apply SUB` command for `app` against `repo`, pinning `public`.
fn apply_cmd(sub: &str, app: &Path, repo: &Path, public: &Path) -> Command {
    let mut c = cmd("patch-apply");
    c.arg(sub)
        .arg("--app-dir")
        .arg(app)
        .arg("--repo")
        .arg(repo)
        .arg("--public-key")
        .arg(public)
        .arg("--json");
    c
}

/// Runs a command that must fail and asserts the app dir did not change; returns stderr.
fn refused(c: &mut Command, app: &Path, expect_in_error: &str) -> String {
    let before = tree_state(app);
    let err = fails(c);
    assert!(
        err.to_lowercase().contains(&expect_in_error.to_lowercase()),
        "error should mention {expect_in_error:?}: {err}"
    );
    assert_eq!(
        tree_state(app),
        before,
        "app dir changed after a refused update"
    );
    err
}

struct Keys {
    root: (PathBuf, PathBuf),
    rel: Vec<(PathBuf, PathBuf)>,
}

/// A repository with a separate root key and `n` release keys, `threshold` of which sign.
fn separate_keys(w: &World, n: usize, threshold: u32) -> Keys {
    let root = keygen(w, "root");
    let rel: Vec<_> = (1..=n).map(|i| keygen(w, &format!("rel{i}"))).collect();
    let mut c = cmd("patch-create");
    c.args(["keys", "init", "--repo"])
        .arg(&w.repo)
        .arg("--root-key")
        .arg(&root.0);
    for r in &rel {
        c.arg("--release-key").arg(&r.1);
    }
    c.args(["--threshold", &threshold.to_string()]);
    ok(&mut c);
    Keys { root, rel }
}

#[test]
fn key_rotation_app_pinned_to_first_root_key_updates_across_two_root_rotations() {
    let w = World::new(3);
    let k = separate_keys(&w, 1, 1);
    let rel1 = k.rel[0].0.as_path();
    ok(&mut release_cmd(&w, &w.repo, 1, &[rel1], &[]));
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    // Rotation 1: root -> root2, and the release key rel1 -> rel2 at the same time.
    let root2 = keygen(&w, "root2");
    let rel2 = keygen(&w, "rel2");
    ok(cmd("patch-create")
        .args(["keys", "update", "--repo"])
        .arg(&w.repo)
        .arg("--root-key")
        .arg(&k.root.0)
        .arg("--root-key")
        .arg(&root2.0)
        .arg("--new-root-key")
        .arg(&root2.1)
        .arg("--add-release-key")
        .arg(&rel2.1)
        .arg("--revoke-release-key")
        .arg(&k.rel[0].1)
        .arg("--key")
        .arg(&rel2.0));
    ok(&mut release_cmd(&w, &w.repo, 2, &[&rel2.0], &[]));
    let r = last_json(&ok(&mut apply_cmd("apply", &app, &w.repo, &k.root.1)));
    assert_eq!(r["to"], "2.0.0");
    assert_same_tree(&app, &w.releases[1]);
    // Rotation 2: root2 -> root3.
    let root3 = keygen(&w, "root3");
    ok(cmd("patch-create")
        .args(["keys", "update", "--repo"])
        .arg(&w.repo)
        .arg("--root-key")
        .arg(&root2.0)
        .arg("--root-key")
        .arg(&root3.0)
        .arg("--new-root-key")
        .arg(&root3.1));
    ok(&mut release_cmd(&w, &w.repo, 3, &[&rel2.0], &[]));
    let r = last_json(&ok(&mut apply_cmd("apply", &app, &w.repo, &k.root.1)));
    assert_eq!(r["to"], "3.0.0");
    assert_same_tree(&app, &w.releases[2]);
    assert!(w.repo.join("metadata/3.root.json").exists());
    // A fresh install pinned to the first root key walks both rotations too.
    let fresh = w.path("fresh");
    ok(&mut apply_cmd("apply", &fresh, &w.repo, &k.root.1));
    assert_same_tree(&fresh, &w.releases[2]);
    // root.json is a copy of the newest root.
    assert_eq!(
        std::fs::read(w.repo.join("metadata/root.json")).unwrap(),
        std::fs::read(w.repo.join("metadata/3.root.json")).unwrap()
    );
}

#[test]
fn root_rotation_signed_by_new_key_only_is_refused_by_patch_create() {
    let w = World::new(1);
    let k = separate_keys(&w, 1, 1);
    let root2 = keygen(&w, "root2");
    let err = fails(
        cmd("patch-create")
            .args(["keys", "update", "--repo"])
            .arg(&w.repo)
            .arg("--root-key")
            .arg(&root2.0)
            .arg("--new-root-key")
            .arg(&root2.1),
    );
    assert!(err.contains("cannot sign root"), "{err}");
    assert!(!w.repo.join("metadata/2.root.json").exists());
    let _ = k;
}

#[test]
fn threshold_two_of_three_release_keys() {
    let w = World::new(2);
    let k = separate_keys(&w, 3, 2);
    // One key is not enough for patch-create.
    let err = fails(&mut release_cmd(&w, &w.repo, 1, &[&k.rel[0].0], &[]));
    assert!(err.contains("1 of the 2 required signatures"), "{err}");
    ok(&mut release_cmd(
        &w,
        &w.repo,
        1,
        &[&k.rel[0].0, &k.rel[2].0],
        &[],
    ));
    let app = w.path("app");
    ok(&mut apply_cmd("apply", &app, &w.repo, &k.root.1));
    assert_same_tree(&app, &w.releases[0]);
    // Raise to 3 of 3: metadata signed by two keys is then refused by clients until re-signed.
    ok(cmd("patch-create")
        .args(["keys", "update", "--repo"])
        .arg(&w.repo)
        .arg("--root-key")
        .arg(&k.root.0)
        .args(["--threshold", "3"]));
    ok(&mut release_cmd(
        &w,
        &w.repo,
        2,
        &[&k.rel[0].0, &k.rel[1].0, &k.rel[2].0],
        &[],
    ));
    ok(&mut apply_cmd("apply", &app, &w.repo, &k.root.1));
    assert_same_tree(&app, &w.releases[1]);
}

#[test]
fn fewer_signatures_than_threshold_are_refused() {
    let w = World::new(2);
    let k = separate_keys(&w, 3, 2);
    let keys: Vec<&Path> = k.rel.iter().take(2).map(|r| r.0.as_path()).collect();
    ok(&mut release_cmd(&w, &w.repo, 1, &keys, &[]));
    let app = w.path("app");
    ok(&mut apply_cmd("apply", &app, &w.repo, &k.root.1));
    ok(&mut release_cmd(&w, &w.repo, 2, &keys, &[]));
    // An attacker holding one release key signs new metadata with it alone.
    let one = tamper::load_key(&k.rel[0].0);
    tamper::resign_targets(&w.repo, &[&one], |_| {});
    let err = refused(
        &mut apply_cmd("apply", &app, &w.repo, &k.root.1),
        &app,
        "threshold is 2",
    );
    assert!(err.contains("1 valid signature"), "{err}");
    assert_same_tree(&app, &w.releases[0]);
}

#[test]
fn revoked_release_key_is_refused() {
    let w = World::new(2);
    let k = separate_keys(&w, 2, 1);
    let (rel1, rel2) = (&k.rel[0], &k.rel[1]);
    let attacker_copy = w.path("attacker");
    ok(&mut release_cmd(&w, &w.repo, 1, &[&rel1.0], &[]));
    copy_tree(&w.repo, &attacker_copy);
    let app = w.path("app");
    ok(&mut apply_cmd("apply", &app, &w.repo, &k.root.1));
    // rel1 is compromised: revoke it and re-sign with rel2.
    ok(cmd("patch-create")
        .args(["keys", "update", "--repo"])
        .arg(&w.repo)
        .arg("--root-key")
        .arg(&k.root.0)
        .arg("--revoke-release-key")
        .arg(&rel1.1)
        .arg("--key")
        .arg(&rel2.0));
    ok(&mut apply_cmd("check", &app, &w.repo, &k.root.1));
    // The attacker publishes release 2 signed with the revoked key on a repository without the
    // revocation; the client remembers root version 2 and refuses it.
    ok(&mut release_cmd(&w, &attacker_copy, 2, &[&rel1.0], &[]));
    refused(
        &mut apply_cmd("apply", &app, &attacker_copy, &k.root.1),
        &app,
        "valid signature",
    );
    // And patch-create refuses to sign with it on the real repository.
    let err = fails(&mut release_cmd(&w, &w.repo, 2, &[&rel1.0], &[]));
    assert!(err.contains("cannot sign"), "{err}");
    assert_same_tree(&app, &w.releases[0]);
}

#[test]
fn expired_metadata_is_refused_then_resign_extends_expiry() {
    let w = World::new(2);
    w.release(1, &[]);
    let app = w.path("app");
    ok(w.apply_cmd("apply", &app).arg("--json"));
    w.release(2, &["--expires", "2s", "--expires-short-ok"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    refused(w.apply_cmd("apply", &app).arg("--json"), &app, "expired");
    assert_same_tree(&app, &w.releases[0]);
    // Re-sign without a new release.
    ok(cmd("patch-create")
        .args(["resign", "--repo"])
        .arg(&w.repo)
        .arg("--key")
        .arg(&w.key)
        .args(["--expires", "1d"]));
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["to"], "2.0.0");
    assert_same_tree(&app, &w.releases[1]);
}

/// Trust stored under one pinned key is not carried over to another: an app re-pointed at
/// another repository, pinned to that repository's key, starts over from the new key (before,
/// the old root refused the new repository's metadata). The old repository's higher
/// timestamp version does not count as a rollback there.
#[test]
fn app_repinned_to_another_repository_key_starts_over_from_that_key() {
    let w = World::new(4);
    w.release_all(3);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    ok(w.apply_cmd("apply", &app).arg("--json"));
    assert_same_tree(&app, &w.releases[2]);
    let anchor = app.join(".patchkit/trust/anchor.json");
    let first_anchor = std::fs::read(&anchor).expect("anchor.json written");
    // Another repository, another key, a single release (metadata versions 1).
    let (other_key, other_pub) = keygen(&w, "other");
    let other = w.path("other-repo");
    ok(&mut release_cmd(&w, &other, 4, &[&other_key], &[]));
    let r = last_json(&ok(&mut apply_cmd("apply", &app, &other, &other_pub)));
    assert_eq!(r["to"], "4.0.0", "{r}");
    assert_same_tree(&app, &w.releases[3]);
    assert_ne!(std::fs::read(&anchor).expect("anchor.json"), first_anchor);
    // The first repository's key is no longer trusted for this app's stored metadata either:
    // pinned to it again, the app starts over from it (and is refused a downgrade, not a
    // signature).
    refused(
        &mut apply_cmd("apply", &app, &w.repo, &w.public),
        &app,
        "downgrade",
    );
}

#[test]
fn rollback_to_older_correctly_signed_metadata_is_refused() {
    let w = World::new(3);
    w.release_all(2);
    let old = w.path("old-repo");
    copy_tree(&w.repo, &old);
    w.release(3, &[]);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    ok(w.apply_cmd("apply", &app).arg("--json"));
    assert_same_tree(&app, &w.releases[2]);
    // A mirror (or attacker) serves the older, validly signed repository.
    let mut c = cmd("patch-apply");
    c.args(["apply", "--json", "--allow-downgrade", "--app-dir"])
        .arg(&app)
        .arg("--repo")
        .arg(&old)
        .arg("--public-key")
        .arg(&w.public);
    let err = refused(&mut c, &app, "older than trusted version");
    assert!(err.contains("timestamp.json"), "{err}");
}

/// A repository re-created with the same key starts again at metadata version 1: the app,
/// which trusts version 2, refuses it (a rollback looks the same), and the error names the
/// repository, the app dir, the stored trust and the way out; after `trust reset` (never
/// done by itself) the update works.
#[test]
fn recreated_repository_is_refused_naming_repo_app_and_trust_until_trust_reset() {
    let w = World::new(3);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    ok(w.apply_cmd("apply", &app).arg("--json"));
    assert_same_tree(&app, &w.releases[1]);
    // The repository is deleted and made again, same key, one newer release.
    std::fs::remove_dir_all(&w.repo).unwrap();
    w.release(3, &[]);
    let trust_dir = app.join(".patchkit").join("trust");
    for _ in 0..2 {
        let err = refused(
            w.apply_cmd("apply", &app).arg("--json"),
            &app,
            "older than trusted version",
        );
        for part in [
            w.repo.display().to_string(),
            app.display().to_string(),
            trust_dir.display().to_string(),
            format!("patch-apply trust reset --app-dir {}", app.display()),
        ] {
            assert!(err.contains(&part), "error does not name {part:?}: {err}");
        }
        // Refusing stays the default: the stored trust is kept as it was.
        assert!(trust_dir.join("timestamp.json").exists());
    }
    let shown = ok(cmd("patch-apply")
        .args(["trust", "show", "--json", "--app-dir"])
        .arg(&app));
    let shown: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    let versions: Vec<u64> = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 2], "{shown}");
    let out = run(cmd("patch-apply")
        .args(["trust", "reset", "--app-dir"])
        .arg(&app));
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&trust_dir.join("timestamp.json").display().to_string()),
        "reset does not say what it removes: {said}"
    );
    assert!(!trust_dir.exists());
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["to"], "3.0.0", "{r}");
    assert_same_tree(&app, &w.releases[2]);
    // Trusted anew: the next run is up to date, not refused.
    let check = ok(&mut w.apply_cmd("check", &app));
    assert!(check.contains("up to date"), "{check}");
}

#[test]
fn downgrade_is_refused_unless_allowed() {
    let w = World::new(2);
    w.release(1, &[]);
    w.release(2, &["--channel", "beta"]);
    let app = w.path("app");
    copy_tree(&w.releases[1], &app);
    // On beta the app is up to date at 2.0.0.
    let r = last_json(&ok(w.apply_cmd("apply", &app).args([
        "--json",
        "--channel",
        "beta",
    ])));
    assert_eq!(r["to"], "2.0.0");
    // Switching to stable offers 1.0.0, lower than installed: refused.
    let err = refused(
        w.apply_cmd("apply", &app)
            .args(["--json", "--channel", "stable"]),
        &app,
        "downgrade",
    );
    assert!(err.contains("2.0.0"), "{err}");
    assert_same_tree(&app, &w.releases[1]);
    let r = last_json(&ok(w.apply_cmd("apply", &app).args([
        "--json",
        "--channel",
        "stable",
        "--allow-downgrade",
    ])));
    assert_eq!(r["to"], "1.0.0");
    assert_same_tree(&app, &w.releases[0]);
}

#[test]
fn wrong_region_or_channel_gets_newest_release_that_targets_it_or_nothing() {
    let w = World::new(3);
    w.release(1, &[]);
    w.release(2, &["--target", "region=india"]);
    w.release(3, &["--target", "region=india", "--target", "os=linux"]);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    // Europe: only 1.0.0 is for it; told that 3.0.0 is not.
    let r = last_json(&ok(w.apply_cmd("check", &app).args([
        "--json",
        "--target",
        "region=europe",
    ])));
    assert_eq!(r["latest"], "1.0.0");
    assert_eq!(r["newest_not_for_this_client"], "3.0.0");
    assert!(
        r["note"]
            .as_str()
            .unwrap_or_default()
            .contains("not for this client"),
        "{r}"
    );
    assert_eq!(r["up_to_date"], true);
    let r = last_json(&ok(w.apply_cmd("apply", &app).args([
        "--json",
        "--target",
        "region=europe",
    ])));
    assert_eq!(r["method"], "none");
    assert_same_tree(&app, &w.releases[0]);
    // India on windows: 2.0.0.
    let r = last_json(&ok(w.apply_cmd("apply", &app).args([
        "--json",
        "--target",
        "region=india",
        "--target",
        "os=windows",
    ])));
    assert_eq!(r["to"], "2.0.0");
    assert_same_tree(&app, &w.releases[1]);
    // India on linux: 3.0.0.
    let r = last_json(&ok(w.apply_cmd("apply", &app).args([
        "--json",
        "--target",
        "region=india",
        "--target",
        "os=linux",
    ])));
    assert_eq!(r["to"], "3.0.0");
    assert_same_tree(&app, &w.releases[2]);
    // A channel with no release at all: nothing, and the error says so.
    let other = w.path("other");
    copy_tree(&w.releases[0], &other);
    let err = refused(
        w.apply_cmd("apply", &other).args(["--channel", "nightly"]),
        &other,
        "no release for channel",
    );
    assert!(err.contains("not for this client"), "{err}");
}
