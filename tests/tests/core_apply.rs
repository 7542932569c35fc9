//! Acceptance of "Core 2": `patch-apply` recognises installs, picks the cheapest method,
//! repairs exactly what differs, and refuses what it cannot trust with the app dir unchanged.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
use e2e_tests::*;

#[test]
fn copy_of_v1_without_state_updates_to_v3_through_the_chain() {
    let w = World::new(3);
    w.release_all(3);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let check = last_json(&ok(w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(check["installed"], "1.0.0");
    assert_eq!(check["latest"], "3.0.0");
    assert_eq!(check["up_to_date"], false);
    assert_eq!(check["method"], "incremental", "{check}");
    assert_eq!(
        check["alternatives"][0]["chain"],
        serde_json::json!(["2.0.0", "3.0.0"])
    );
    let planned = check["download_bytes"].as_u64().unwrap();
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["from"], "1.0.0");
    assert_eq!(r["to"], "3.0.0");
    assert_eq!(r["method"], "incremental", "{r}");
    assert_eq!(r["downloaded_bytes"].as_u64().unwrap(), planned);
    assert_same_tree(&app, &w.releases[2]);
}

#[test]
fn v2_to_v3_fresh_install_and_up_to_date() {
    let w = World::new(3);
    w.release_all(3);
    let app = w.path("app");
    copy_tree(&w.releases[1], &app);
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(
        (r["from"].as_str(), r["method"].as_str()),
        (Some("2.0.0"), Some("incremental"))
    );
    assert_same_tree(&app, &w.releases[2]);

    // Up to date: nothing downloaded.
    let c = last_json(&ok(w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(c["up_to_date"], true);
    assert_eq!(c["method"], "none");
    assert_eq!(c["download_bytes"], 0);
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["method"], "none");
    assert_eq!(r["downloaded_bytes"], 0);

    // Fresh install into an empty and into a missing dir.
    let empty = w.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let c = last_json(&ok(w.apply_cmd("check", &empty).arg("--json")));
    assert_eq!(c["installed"], serde_json::Value::Null);
    let r = last_json(&ok(w.apply_cmd("apply", &empty).arg("--json")));
    assert_eq!(r["to"], "3.0.0");
    assert_same_tree(&empty, &w.releases[2]);
    let missing = w.path("missing/app");
    last_json(&ok(w.apply_cmd("apply", &missing).arg("--json")));
    assert_same_tree(&missing, &w.releases[2]);
}

#[test]
fn edited_and_deleted_files_get_exactly_their_repair_files() {
    let w = World::new(2);
    let dir = w.path("v2-ignore");
    copy_tree(&w.releases[1], &dir);
    // Release with ignore patterns: user files under `saves/` and `*.log` are not shipped.
    let _ = std::fs::remove_file(dir.join("logs/runtime.log"));
    for i in 1..=2 {
        let root = if i == 2 {
            dir.clone()
        } else {
            w.releases[0].clone()
        };
        ok(cmd("patch-create")
            .args([
                "release", "--json", "--level", "3", "--ignore", "*.log", "--ignore", "saves/",
                "--repo",
            ])
            .arg(&w.repo)
            .arg("--root")
            .arg(&root)
            .args(["--version", &format!("{i}.0.0"), "--key"])
            .arg(&w.key));
    }
    let app = w.path("app");
    copy_tree(&dir, &app);
    // Damage: one edited, one deleted file; plus strays, one ignored.
    std::fs::write(app.join("resources/config.txt"), b"edited by the user").unwrap();
    std::fs::remove_file(app.join("bin/app")).unwrap();
    std::fs::write(app.join("stray.txt"), b"stray").unwrap();
    std::fs::create_dir_all(app.join("stray-dir/sub")).unwrap();
    std::fs::create_dir_all(app.join("saves")).unwrap();
    std::fs::write(app.join("saves/slot1.sav"), b"keep me").unwrap();
    std::fs::write(app.join("logs/session.log"), b"keep me too").unwrap();

    let c = last_json(&ok(w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(
        c["installed"],
        serde_json::Value::Null,
        "a damaged install is not recognised as 2.0.0"
    );
    assert_eq!(c["damaged"], true);
    assert_eq!(c["method"], "repair");
    // Exactly the two files' repair files.
    let verify = last_json(&ok(cmd("patch-create")
        .args(["verify", "--json", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public)));
    let _ = verify;
    let manifest = manifest_of(&w, "2.0.0");
    let expect: u64 = ["resources/config.txt", "bin/app"]
        .iter()
        .map(|p| manifest[*p])
        .sum();
    assert_eq!(c["download_bytes"].as_u64().unwrap(), expect);
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["method"], "repair");
    assert_eq!(r["downloaded_bytes"].as_u64().unwrap(), expect);
    // Byte-identical to the release, plus the ignored user files.
    assert_eq!(
        std::fs::read(app.join("saves/slot1.sav")).unwrap(),
        b"keep me"
    );
    assert_eq!(
        std::fs::read(app.join("logs/session.log")).unwrap(),
        b"keep me too"
    );
    std::fs::remove_dir_all(app.join("saves")).unwrap();
    std::fs::remove_file(app.join("logs/session.log")).unwrap();
    // Strays no release lists are the user's: kept (issue 14).
    assert_eq!(std::fs::read(app.join("stray.txt")).unwrap(), b"stray");
    assert!(app.join("stray-dir/sub").is_dir());
    std::fs::remove_file(app.join("stray.txt")).unwrap();
    std::fs::remove_dir_all(app.join("stray-dir")).unwrap();
    assert_same_tree(&app, &dir);
}

/// Repair-file sizes of a release, by path, read from its verified manifest.
fn manifest_of(w: &World, version: &str) -> std::collections::BTreeMap<String, u64> {
    let md = w.repo.join("targets").join(version);
    let f = std::fs::read_dir(&md)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
    m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["repair"].is_object())
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["repair"]["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn assert_refused_unchanged(
    w: &World,
    app: &std::path::Path,
    mut c: std::process::Command,
    expect: &str,
) {
    let before = tree_state(app);
    let err = fails(&mut c);
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "expected {expect:?} in: {err}"
    );
    assert_eq!(
        tree_state(app),
        before,
        "app dir changed after a refused update"
    );
    let _ = w;
}

#[test]
fn tampered_artifact_is_refused_and_app_dir_unchanged() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    // Tamper with the patch: every method that needs it fails; only trusted methods may run.
    let dir = w.repo.join("targets/2.0.0");
    let patch = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".patch"))
        .unwrap();
    let mut bytes = std::fs::read(&patch).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&patch, &bytes).unwrap();
    let mut c = w.apply_cmd("apply", &app);
    c.args(["--method", "incremental"]);
    assert_refused_unchanged(&w, &app, c, "patch");
    // With every method allowed, the updater falls back to a method whose bytes verify.
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_ne!(r["method"], "incremental");
    assert!(
        r["fallbacks"][0].as_str().unwrap().contains("incremental"),
        "{r}"
    );
    assert_same_tree(&app, &w.releases[1]);
}

#[test]
fn wrong_public_key_is_refused_and_app_dir_unchanged() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let other = w.path("other");
    ok(cmd("patch-create").args(["keygen", "--out"]).arg(&other));
    let mut c = cmd("patch-apply");
    c.arg("apply")
        .arg("--app-dir")
        .arg(&app)
        .arg("--repo")
        .arg(&w.repo)
        .arg("--public-key")
        .arg(other.join("release.pub"));
    assert_refused_unchanged(&w, &app, c, "pinned");
}

#[test]
fn metadata_of_another_app_is_refused_and_app_dir_unchanged() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    ok(&mut w.apply_cmd("apply", &app));
    // Another app's repository, signed with the same key, with newer metadata versions than
    // the ones this install trusts (so rollback protection is not what refuses it).
    let other_repo = w.path("other-repo");
    for v in ["7.0.0", "8.0.0", "9.0.0"] {
        ok(cmd("patch-create")
            .args(["release", "--name", "other-app", "--level", "1", "--repo"])
            .arg(&other_repo)
            .arg("--root")
            .arg(&w.releases[0])
            .args(["--version", v, "--key"])
            .arg(&w.key));
    }
    let mut c = cmd("patch-apply");
    c.arg("apply")
        .arg("--app-dir")
        .arg(&app)
        .arg("--repo")
        .arg(&other_repo)
        .arg("--public-key")
        .arg(&w.public);
    assert_refused_unchanged(&w, &app, c, "other-app");
}

#[test]
fn running_instance_blocks_the_update() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    // A real process whose executable lies in the app dir.
    std::fs::copy("/bin/sleep", app.join("bin/sleeper")).unwrap();
    // ETXTBSY while a thread of this test binary forked with the copy's fd still open: retry.
    let mut tries = 0;
    let mut child = loop {
        match std::process::Command::new(app.join("bin/sleeper"))
            .arg("30")
            .spawn()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = tree_state(&app);
    let err = fails(&mut w.apply_cmd("apply", &app));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        err.contains("running") && err.contains(&child.id().to_string()),
        "{err}"
    );
    assert_eq!(tree_state(&app), before);
    // Once it exited, the update goes through (the stray binary is no release's: kept).
    ok(&mut w.apply_cmd("apply", &app));
    assert!(app.join("bin/sleeper").exists());
    std::fs::remove_file(app.join("bin/sleeper")).unwrap();
    assert_same_tree(&app, &w.releases[1]);
}
