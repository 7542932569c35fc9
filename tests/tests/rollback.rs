//! Rollback edge cases (issue 14 item 12), with the real `patch-apply`: a rollback killed with
//! SIGKILL at several steps and run again, files changed after the update, and a rollback
//! stopped half-way by a file it cannot replace.
//!
//! The kill points are reached with the test-only pause hook of `self_patcher` (environment
//! `PATCHKIT_TEST_PAUSE=<point>`: the process prints `test pause: <point>` and waits there),
//! so that each SIGKILL lands at a known step instead of a guessed moment.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e_tests::*;

/// A world with v1 and v2 released, and an app dir that went from nothing to v1 (so that it
/// has an install record) and then to v2.
fn updated_world() -> (World, PathBuf) {
    let w = World::new(2);
    w.release(1, &[]);
    let app = w.path("template");
    std::fs::create_dir_all(&app).expect("mkdir");
    ok(&mut w.apply_cmd("apply", &app));
    assert_same_tree(&app, &w.releases[0]);
    assert_eq!(installed_version(&app).as_deref(), Some("1.0.0"));
    w.release(2, &[]);
    ok(&mut w.apply_cmd("apply", &app));
    assert_same_tree(&app, &w.releases[1]);
    assert_eq!(installed_version(&app).as_deref(), Some("2.0.0"));
    (w, app)
}

fn installed_version(app: &Path) -> Option<String> {
    let b = std::fs::read(app.join(".patchkit/installed.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v["version"].as_str().map(str::to_string)
}

fn journal(app: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(app.join(".patchkit/journal.json")).expect("journal"))
        .expect("journal json")
}

fn rollback_cmd(app: &Path) -> Command {
    let mut c = cmd("patch-apply");
    c.args(["rollback", "--app-dir"]).arg(app);
    c
}

/// Runs `rollback` until it pauses at `point`, then kills it with SIGKILL. Returns false if
/// the run ended without reaching the point.
fn rollback_killed_at(app: &Path, point: &str) -> bool {
    let mut child = rollback_cmd(app)
        .env("PATCHKIT_TEST_PAUSE", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rollback");
    let err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut paused = false;
    for line in err.lines() {
        if line.map(|l| l.contains("test pause: ")).unwrap_or(false) {
            paused = true;
            break;
        }
    }
    if paused {
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
    }
    let st = child.wait().expect("wait");
    if paused {
        assert!(!st.success(), "a killed rollback reported success");
    }
    paused
}

fn assert_old_or_new(
    now: &BTreeMap<String, String>,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    what: &str,
) {
    let paths: std::collections::BTreeSet<&String> =
        old.keys().chain(new.keys()).chain(now.keys()).collect();
    for p in paths {
        let (n, o, w) = (now.get(p), old.get(p), new.get(p));
        assert!(
            n == o || n == w,
            "{what}: {p}: {n:?} is neither old {o:?} nor new {w:?}"
        );
    }
}

#[test]
fn rollback_killed_at_each_step_then_run_again_exits_0_at_the_old_version_and_record() {
    let (w, template) = updated_world();
    let old = tree_state(&w.releases[0]);
    let new = tree_state(&w.releases[1]);
    let n = journal(&template)["actions"]
        .as_array()
        .expect("actions")
        .len();
    assert!(n >= 4, "too few actions to stop half-way: {n}");
    let points = [
        "rollback-start".to_string(),
        "undo-1".to_string(),
        format!("undo-{}", n / 2),
        format!("undo-{}", n - 1),
        "rollback-undone".to_string(),
        "rollback-recorded".to_string(),
    ];
    for (k, point) in points.iter().enumerate() {
        let app = w.path(&format!("kill-{k}"));
        copy_tree(&template, &app);
        assert!(
            rollback_killed_at(&app, point),
            "rollback never reached {point}"
        );
        assert_old_or_new(&tree_state(&app), &old, &new, point);
        assert_eq!(journal(&app)["state"], "rolling_back", "{point}");
        // Every other kill is finished by `recover` (what the next apply does first).
        if k % 2 == 1 {
            let r = last_json(&ok(cmd("patch-apply")
                .args(["recover", "--json", "--app-dir"])
                .arg(&app)));
            assert_eq!(r["finished_rollback"]["restored"], "1.0.0", "{point}: {r}");
        } else {
            let out = ok(&mut rollback_cmd(&app));
            assert!(
                out.contains("rolled back 2.0.0 to 1.0.0 (finished an interrupted rollback)"),
                "{point}: {out}"
            );
        }
        assert_same_tree(&app, &w.releases[0]);
        assert_eq!(
            installed_version(&app).as_deref(),
            Some("1.0.0"),
            "{point}: the install record was not restored"
        );
        assert!(
            !app.join(".patchkit/quarantine").exists(),
            "{point}: nothing was changed by the user, nothing is kept"
        );
        // Nothing left to undo: said clearly.
        let err = fails(&mut rollback_cmd(&app));
        assert!(
            err.contains("nothing to roll back") && err.contains("already rolled back"),
            "{err}"
        );
    }
}

/// A file the update changed (present in both versions, different) and one it removed whose
/// directory stays.
fn changed_and_removed(w: &World) -> (String, String) {
    let old = tree_state(&w.releases[0]);
    let new = tree_state(&w.releases[1]);
    let changed = old
        .iter()
        .find(|(p, v)| v.starts_with("file") && new.get(*p).is_some_and(|n| n != *v))
        .map(|(p, _)| p.clone())
        .expect("a changed file");
    let removed = old
        .iter()
        .find(|(p, v)| {
            v.starts_with("file")
                && !new.contains_key(*p)
                && Path::new(p.as_str())
                    .parent()
                    .map(|d| d.as_os_str().is_empty() || new.contains_key(d.to_str().unwrap_or("")))
                    .unwrap_or(true)
        })
        .map(|(p, _)| p.clone())
        .expect("a removed file");
    (changed, removed)
}

#[test]
fn rollback_keeps_files_changed_after_the_update_in_the_quarantine_and_reports_them() {
    let (w, app) = updated_world();
    let (changed, removed) = changed_and_removed(&w);
    std::fs::write(app.join(&changed), "edited by the user after the update\n").expect("edit");
    std::fs::write(app.join(&removed), "made by the user after the update\n").expect("create");
    let out = run(rollback_cmd(&app).arg("--json"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_same_tree(&app, &w.releases[0]);
    assert_eq!(installed_version(&app).as_deref(), Some("1.0.0"));
    let r = last_json(&stdout);
    let kept: BTreeMap<String, PathBuf> = r["kept"]
        .as_array()
        .expect("kept list")
        .iter()
        .map(|k| {
            (
                k["path"].as_str().expect("path").to_string(),
                PathBuf::from(k["copy"].as_str().expect("copy")),
            )
        })
        .collect();
    assert_eq!(
        kept.keys().cloned().collect::<Vec<_>>(),
        {
            let mut v = vec![changed.clone(), removed.clone()];
            v.sort();
            v
        },
        "{r}"
    );
    let q = app.join(".patchkit/quarantine");
    for (p, copy) in &kept {
        assert!(
            copy.starts_with(&q),
            "{p} kept outside the quarantine: {copy:?}"
        );
        assert!(
            stderr.contains(&format!("warning: {p} was changed after the update")),
            "{stderr}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&kept[&changed]).expect("kept copy"),
        "edited by the user after the update\n"
    );
    assert_eq!(
        std::fs::read_to_string(&kept[&removed]).expect("kept copy"),
        "made by the user after the update\n"
    );
    // The human output says it too.
    let (w2, app2) = (w, app.with_file_name("human"));
    copy_tree(&w2.releases[0], &app2);
    let _ = ok(&mut w2.apply_cmd("apply", &app2));
    std::fs::write(app2.join(&changed), "edited\n").expect("edit");
    let out = run(&mut rollback_cmd(&app2));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 changed file(s) kept in"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&changed));
}

/// Clears the immutable flag on drop, so that the temp dir can be removed even after a panic.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Option<Immutable> {
        let st = Command::new("chattr")
            .arg("+i")
            .arg(p)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        st.success().then(|| Immutable(p.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn rollback_stopped_by_an_immutable_file_leaves_it_new_the_rest_old_names_it_and_finishes_later() {
    let (w, app) = updated_world();
    let old = tree_state(&w.releases[0]);
    let new = tree_state(&w.releases[1]);
    // A file the rollback replaces, in the middle of the list, so that steps on both sides
    // of it are undone.
    let changed: Vec<&String> = old
        .iter()
        .filter(|(p, v)| v.starts_with("file") && new.get(*p).is_some_and(|n| n != *v))
        .map(|(p, _)| p)
        .collect();
    let victim = changed[changed.len() / 2].clone();
    // Root ignores permission bits; an immutable file cannot be replaced even by root.
    let Some(guard) = Immutable::set(&app.join(&victim)) else {
        eprintln!("skipped: chattr +i is not supported here");
        return;
    };
    let err = fails(&mut rollback_cmd(&app));
    eprintln!("{}", err.trim());
    assert!(
        err.contains(&victim),
        "the error does not name {victim}: {err}"
    );
    assert!(err.contains("stays at 2.0.0"), "{err}");
    assert!(err.contains("run `patch-apply rollback` again"), "{err}");
    // Every path is old or new: the victim new, every other path old.
    let now = tree_state(&app);
    assert_old_or_new(&now, &old, &new, "after the failed rollback");
    for (p, v) in &now {
        if *p != victim {
            assert_eq!(Some(v), old.get(p), "{p} was not rolled back");
        }
    }
    assert_eq!(now.get(&victim), new.get(&victim));
    for p in old.keys() {
        assert!(now.contains_key(p), "{p} is missing");
    }
    // The cause removed, rollback finishes: old version, old record, exit 0.
    drop(guard);
    let out = ok(&mut rollback_cmd(&app));
    assert!(out.contains("to 1.0.0"), "{out}");
    assert_same_tree(&app, &w.releases[0]);
    assert_eq!(installed_version(&app).as_deref(), Some("1.0.0"));
}
