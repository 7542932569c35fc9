//! Issue 14, items 11, 13 (first half) and 14: an app dir writable by a less privileged user
//! must not be able to redirect the updater's writes with symbolic links planted in its state
//! directory `.patchkit/`; an app dir named through a symbolic link works the same in every
//! command; the write-permission probe never leaves a file in the app dir.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};

use e2e_tests::*;

/// Every file below `dir` with its bytes (what a planted link might have let the updater
/// change).
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in fixtures::snapshot(dir).expect("snapshot") {
        if let fixtures::EntryKind::File { data, .. } = e.kind {
            out.insert(e.path, data);
        }
    }
    out
}

/// An outside directory holding one precious file, as a target for planted links.
fn outside(w: &World, name: &str) -> std::path::PathBuf {
    let d = w.path(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("precious"), b"the user's own bytes\n").unwrap();
    d
}

#[test]
fn symlinks_planted_in_the_state_dir_are_refused_by_check_and_apply_and_their_targets_untouched() {
    let w = World::new(2);
    w.release_all(2);
    // A trusted state to plant links into: v1 installed and checked once.
    let base = w.path("base");
    copy_tree(&w.releases[0], &base);
    // `check` writes nothing into a directory the updater never wrote to: make it one it did.
    std::fs::create_dir(base.join(".patchkit")).unwrap();
    ok(&mut w.apply_cmd("check", &base));
    assert!(base.join(".patchkit/trust/timestamp.json").is_file());

    // (path inside the app dir, whether the link points at a directory)
    let plants: &[(&str, bool)] = &[
        (".patchkit/lock", false),
        (".patchkit/scan-cache.tmp", false),
        (".patchkit/scan-cache", false),
        (".patchkit/installed.json", false),
        (".patchkit/journal.json", false),
        (".patchkit/progress", false),
        (".patchkit/self-patch.json", false),
        (".patchkit/trust/timestamp.json", false),
        (".patchkit/trust", true),
        (".patchkit/cache", true),
        (".patchkit/staging", true),
        (".patchkit/backup", true),
        (".patchkit", true),
    ];
    for (i, (rel, is_dir)) in plants.iter().enumerate() {
        let out = outside(&w, &format!("outside-{i}"));
        let target = if *is_dir {
            out.clone()
        } else {
            out.join("precious")
        };
        let before = contents(&out);
        let app = w.path(&format!("app-{i}"));
        copy_tree(&base, &app);
        let planted = app.join(rel);
        if planted.is_dir() {
            std::fs::remove_dir_all(&planted).unwrap();
        } else {
            let _ = std::fs::remove_file(&planted);
        }
        symlink(&target, &planted).unwrap();

        for sub in ["check", "apply"] {
            let err = fails(&mut w.apply_cmd(sub, &app));
            assert!(
                err.contains("symbolic link") && err.contains(rel),
                "{sub} with {rel} planted: the refusal must name the link: {err}"
            );
            assert_eq!(
                contents(&out),
                before,
                "{sub} with {rel} planted changed the files the link points at"
            );
        }
        assert_same_tree(&app, &w.releases[0]);

        // The way out: remove the link.
        std::fs::remove_file(&planted).unwrap();
        ok(&mut w.apply_cmd("apply", &app));
        assert_same_tree(&app, &w.releases[1]);
        assert_eq!(contents(&out), before, "{rel}: outside files changed");
    }
}

#[test]
fn an_app_dir_named_through_a_symlink_works_in_check_apply_recover_and_rollback() {
    let w = World::new(2);
    w.release_all(2);
    let real = w.path("real-app");
    copy_tree(&w.releases[0], &real);
    let link = w.path("app-link");
    symlink(&real, &link).unwrap();

    let check = last_json(&ok(w.apply_cmd("check", &link).arg("--json")));
    assert_eq!(check["installed"], "1.0.0", "{check}");
    assert_eq!(check["latest"], "2.0.0", "{check}");
    let r = last_json(&ok(w.apply_cmd("apply", &link).arg("--json")));
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("1.0.0"), Some("2.0.0"))
    );
    assert_same_tree(&real, &w.releases[1]);
    // The link is still a link, and nothing was created beside it.
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let c = last_json(&ok(w.apply_cmd("check", &link).arg("--json")));
    assert_eq!(c["up_to_date"], true, "{c}");

    ok(cmd("patch-apply").args(["recover", "--app-dir"]).arg(&link));
    ok(cmd("patch-apply")
        .args(["rollback", "--app-dir"])
        .arg(&link));
    assert_same_tree(&real, &w.releases[0]);

    // A link that leads to a file says so, in words a user can act on.
    let file_link = w.path("file-link");
    let some_file = w.path("plain-file");
    std::fs::write(&some_file, b"x").unwrap();
    symlink(&some_file, &file_link).unwrap();
    for sub in ["check", "apply"] {
        let err = fails(&mut w.apply_cmd(sub, &file_link));
        assert!(
            err.contains("file-link: is a symbolic link that does not lead to a directory"),
            "{err}"
        );
        let err = fails(&mut w.apply_cmd(sub, &some_file));
        assert!(
            err.contains("plain-file: is a file, not a directory"),
            "{err}"
        );
        assert!(
            !err.to_lowercase()
                .contains("not a directory (os error 20): not a"),
            "{err}"
        );
    }
    let err = fails(
        cmd("patch-apply")
            .args(["rollback", "--app-dir"])
            .arg(&file_link),
    );
    assert!(err.contains("does not lead to a directory"), "{err}");
    assert_eq!(std::fs::read(&some_file).unwrap(), b"x");
}

fn probes_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pk-write-probe-"))
        .collect()
}

#[test]
fn no_write_probe_is_left_in_the_app_dir_after_runs_killed_during_preflight() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    // What a run of an earlier version killed during its write probe left behind.
    std::fs::write(app.join(".pk-write-probe-Xy12Ab"), b"").unwrap();
    // Runs killed right after the plan is announced, that is during the preflight checks.
    for i in 0..8u64 {
        let mut child = w
            .apply_cmd("apply", &app)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines {
            if line
                .map(|l| l.contains(r#""event":"plan""#))
                .unwrap_or(true)
            {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(200 * i));
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        assert_eq!(probes_in(&app), Vec::<String>::new(), "kill {i}");
    }
    ok(cmd("patch-apply").args(["recover", "--app-dir"]).arg(&app));
    ok(&mut w.apply_cmd("apply", &app));
    assert_eq!(probes_in(&app), Vec::<String>::new());
    assert_same_tree(&app, &w.releases[1]);
}

#[test]
fn installer_entries_with_long_names_and_long_link_targets_install_byte_identical() {
    // Installer entries are read raw (long names bounded by `Limits::max_archive_header`):
    // GNU long names and long link targets must still work.
    let w = World::new(2);
    let long_dir = format!("deep/{}", "d".repeat(120));
    let tree = &w.releases[1];
    std::fs::create_dir_all(tree.join(&long_dir)).unwrap();
    std::fs::write(tree.join(&long_dir).join("file.txt"), b"far down\n").unwrap();
    symlink(format!("{long_dir}/file.txt"), tree.join("shortcut")).unwrap();
    w.release_all(2);
    let app = w.path("app");
    ok(w.apply_cmd("apply", &app).args(["--method", "installer"]));
    assert_same_tree(&app, &w.releases[1]);
}
