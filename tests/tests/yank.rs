//! Signed yank and release notes (issue 19), with the real binaries: a yanked release is never
//! installed, a client running it moves back to the newest release that is not yanked without
//! `--allow-downgrade` and says why, `--undo` lifts it, and nobody without the key can forge or
//! remove a yank.

use std::path::Path;
use std::process::Command;

use e2e_tests::*;

fn version_of(app: &Path) -> Option<String> {
    let b = std::fs::read(app.join(".patchkit/installed.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v["version"].as_str().map(str::to_string)
}

fn yank(w: &World, version: &str, reason: Option<&str>) -> std::process::Command {
    let mut c = cmd("patch-create");
    c.args(["yank", "--repo"])
        .arg(&w.repo)
        .args(["--version", version, "--key"])
        .arg(&w.key);
    match reason {
        Some(r) => c.args(["--reason", r]),
        None => c.arg("--undo"),
    };
    c
}

fn check_json(w: &World, app: &Path) -> serde_json::Value {
    last_json(&ok(w.apply_cmd("check", app).arg("--json")))
}

#[test]
fn a_yanked_release_is_left_for_the_newest_one_that_is_not() {
    let w = World::new(3);
    w.release_all(3);
    // Two installs at v3 and one at v2.
    let at3 = w.path("at3");
    copy_tree(&w.releases[2], &at3);
    ok(&mut w.apply_cmd("apply", &at3));
    assert_eq!(version_of(&at3).as_deref(), Some("3.0.0"));
    let at2 = w.path("at2");
    copy_tree(&w.releases[1], &at2);

    ok(&mut yank(
        &w,
        "3.0.0",
        Some("corrupts saves on Windows (#123)"),
    ));

    // The client at v2 is not offered v3.
    let c = check_json(&w, &at2);
    assert_eq!(c["latest"], "2.0.0", "{c}");
    assert_eq!(c["up_to_date"], true, "{c}");

    // The client at v3 is told why and goes back to v2 without --allow-downgrade.
    let c = check_json(&w, &at3);
    assert_eq!(c["latest"], "2.0.0", "{c}");
    let note = c["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("withdrawn") && note.contains("corrupts saves"),
        "{c}"
    );
    assert_eq!(
        c["installed_yanked"], "corrupts saves on Windows (#123)",
        "{c}"
    );
    ok(&mut w.apply_cmd("apply", &at3));
    assert_eq!(version_of(&at3).as_deref(), Some("2.0.0"));
    assert_same_tree(&at3, &w.releases[1]);

    // Lifting the yank offers v3 again.
    ok(&mut yank(&w, "3.0.0", None));
    ok(&mut w.apply_cmd("apply", &at3));
    assert_eq!(version_of(&at3).as_deref(), Some("3.0.0"));
    assert_same_tree(&at3, &w.releases[2]);

    // Without a yank, going back still needs --allow-downgrade (nothing changed there).
    let newer = w.path("newer");
    copy_tree(&w.releases[2], &newer);
    let c = check_json(&w, &newer);
    assert_eq!(c["latest"], "3.0.0", "{c}");
}

#[test]
fn yank_names_what_is_wrong() {
    let w = World::new(2);
    w.release_all(1);
    let err = fails(&mut yank(&w, "9.9.9", Some("x")));
    assert!(
        err.contains("no release 9.9.9") && err.contains("1.0.0"),
        "{err}"
    );
    let err = fails(&mut yank(&w, "1.0.0", None));
    assert!(err.contains("not yanked"), "{err}");
    let err = fails(&mut yank(&w, "1.0.0", Some("   ")));
    assert!(err.contains("needs a reason"), "{err}");
    let long = "x".repeat(2000);
    let err = fails(&mut yank(&w, "1.0.0", Some(&long)));
    assert!(err.contains("yank reason"), "{err}");
    let empty = w.path("empty-repo");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let err = fails(
        cmd("patch-create")
            .args(["yank", "--repo"])
            .arg(&empty)
            .args(["--version", "1.0.0", "--reason", "r", "--key"])
            .arg(&w.key),
    );
    assert!(err.contains("not a repository yet"), "{err}");
}

/// A yank cannot be forged or removed without the key: editing the signed targets document
/// breaks its signature, and replaying the targets document from before the yank is refused as
/// a rollback.
#[test]
fn a_yank_cannot_be_forged_or_removed_without_the_key() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[1], &app);
    ok(&mut w.apply_cmd("apply", &app));
    let meta = w.repo.join("metadata");
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&meta)
        .expect("metadata")
        .map(|e| {
            let p = e.expect("entry").path();
            let b = std::fs::read(&p).expect("read");
            (p, b)
        })
        .collect();

    // Forge: add a yank to the current targets document that lists the release (the
    // delegated role `recent`) by hand. A client that has not trusted this version yet
    // fetches it and refuses it.
    let targets_path = newest(&meta, "recent.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&targets_path).expect("targets")).expect("json");
    let t = &mut doc["signed"]["targets"]["2.0.0/manifest.json"]["custom"];
    assert!(t.is_object(), "{doc}");
    t["yanked"] = serde_json::json!({"reason": "forged", "at": "2026-01-01T00:00:00Z"});
    std::fs::write(&targets_path, serde_json::to_vec(&doc).expect("json")).expect("write");
    let fresh = w.path("fresh");
    copy_tree(&w.releases[1], &fresh);
    let err = fails(&mut w.apply_cmd("check", &fresh));
    assert!(
        err.contains("signature") || err.contains("hash") || err.contains("length"),
        "{err}"
    );
    for (p, b) in &before {
        std::fs::write(p, b).expect("restore");
    }

    // Remove: yank for real, let the client see it, then serve the metadata from before.
    ok(&mut yank(&w, "2.0.0", Some("bad build")));
    ok(&mut w.apply_cmd("apply", &app));
    assert_eq!(version_of(&app).as_deref(), Some("1.0.0"));
    for e in std::fs::read_dir(&meta).expect("metadata") {
        std::fs::remove_file(e.expect("entry").path()).expect("rm");
    }
    for (p, b) in &before {
        std::fs::write(p, b).expect("restore");
    }
    let err = fails(&mut w.apply_cmd("apply", &app));
    assert!(
        err.contains("older than trusted") || err.contains("rollback"),
        "{err}"
    );
    assert_eq!(version_of(&app).as_deref(), Some("1.0.0"));
}

/// The newest `N.targets.json` (consistent snapshots) or `targets.json`.
fn newest(meta: &Path, role: &str) -> std::path::PathBuf {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for e in std::fs::read_dir(meta).expect("metadata") {
        let p = e.expect("entry").path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if let Some(n) = name.strip_suffix(&format!(".{role}")) {
            if let Ok(n) = n.parse::<u64>() {
                if best.as_ref().is_none_or(|(b, _)| n > *b) {
                    best = Some((n, p));
                }
            }
        }
    }
    best.map(|(_, p)| p).unwrap_or_else(|| meta.join(role))
}

#[test]
fn release_notes_and_links_are_signed_and_bounded() {
    let w = World::new(1);
    let notes = w.path("NOTES.md");
    std::fs::write(&notes, "Fixes the crash on start.\n\n- faster saves\n").expect("write");
    let r = w.release(
        1,
        &[
            "--notes",
            notes.to_str().expect("utf-8"),
            "--link",
            "https://tracker.example/issues/42",
        ],
    );
    assert_eq!(r["version"], "1.0.0", "{r}");
    // The manifest (a signed target) carries them.
    let mut found = false;
    for e in walk(&w.repo) {
        if e.to_string_lossy().ends_with("manifest.json") {
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&e).expect("read"))
                .unwrap_or_else(|err| panic!("{}: {err}", e.display()));
            assert_eq!(
                m["notes"],
                serde_json::json!(["Fixes the crash on start.", "", "- faster saves"])
            );
            assert_eq!(m["links"][0], "https://tracker.example/issues/42");
            found = true;
        }
    }
    assert!(found, "no manifest in {}", w.repo.display());
    // `check --json` shows them to a client that would install the release.
    let app = w.path("app");
    std::fs::create_dir_all(&app).expect("mkdir");
    let c = check_json(&w, &app);
    assert_eq!(
        c["notes"], "Fixes the crash on start.\n\n- faster saves",
        "{c}"
    );
    assert_eq!(c["links"][0], "https://tracker.example/issues/42", "{c}");

    // Bad input is refused before anything is written, naming what is wrong.
    std::fs::write(&notes, "x".repeat(20_000)).expect("write");
    let err = release_2_fails(&w, |c| c.arg("--notes").arg(&notes));
    assert!(err.contains("release notes"), "{err}");
    let err = release_2_fails(&w, |c| c.args(["--link", "javascript:alert(1)"]));
    assert!(err.contains("javascript:alert(1)"), "{err}");
    let err = release_2_fails(&w, |c| c.arg("--notes").arg(w.path("missing.md")));
    assert!(err.contains("missing.md"), "{err}");
}

/// `patch-create release` of release 1's tree as 2.0.0 with the arguments `extra` adds; it must
/// fail. Returns its stderr.
fn release_2_fails(w: &World, extra: impl FnOnce(&mut Command) -> &mut Command) -> String {
    let mut c = cmd("patch-create");
    c.args(["release", "--name", "demo", "--version", "2.0.0", "--repo"])
        .arg(&w.repo)
        .arg("--root")
        .arg(&w.releases[0])
        .arg("--key")
        .arg(&w.key);
    fails(extra(&mut c))
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
