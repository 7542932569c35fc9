//! Crash safety of the journaled apply (issue 7): real `patch-apply` processes killed with
//! SIGKILL at points spread over a whole apply, two runs at once, rollback, a full disk and an
//! unwritable file. After each interruption every file is its old or its new version; after
//! recovery the tree is exactly the old or the new release.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e_tests::*;

/// Files in the extra `many/` directory of the big fixture (about half change, half are
/// replaced by differently named files).
const MANY_FILES: usize = 2500;

/// A world whose v1 → v2 apply takes over a second: a sequence with a 16 MiB big file plus
/// many small files. Built once and shared (read only) by the tests of this file.
fn big_world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let rel = dir.path().join("rel");
        let opts = fixtures::SequenceOptions {
            seed: 11,
            versions: 2,
            big_file_bytes: 16 << 20,
            renamed_file_bytes: 1 << 20,
        };
        let releases = fixtures::write_sequence(&rel, &opts).expect("fixtures");
        fixtures::write_many_files(&releases[0].join("many"), 1, MANY_FILES).expect("many v1");
        fixtures::write_many_files(&releases[1].join("many"), 2, MANY_FILES).expect("many v2");
        let keys = dir.path().join("keys");
        ok(cmd("patch-create").args(["keygen", "--out"]).arg(&keys));
        let w = World {
            repo: dir.path().join("repo"),
            key: keys.join("release.key"),
            public: keys.join("release.pub"),
            releases,
            dir,
        };
        for i in 1..=2 {
            w.release(i, &["--patch-level", "1"]);
        }
        w
    })
}

/// Checks that every path of `app` is in the state it has in `old` or in `new` (absent
/// counts as a state), and nothing else exists.
fn old_or_new(
    now: &BTreeMap<String, String>,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Result<(), String> {
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).chain(now.keys()).collect();
    let mut bad = Vec::new();
    for p in paths {
        let (n, o, w) = (now.get(p), old.get(p), new.get(p));
        if n != o && n != w {
            bad.push(format!("{p}: {n:?} is neither old {o:?} nor new {w:?}"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        bad.truncate(10);
        Err(bad.join("\n"))
    }
}

fn journal_state(app: &Path) -> Option<String> {
    let b = std::fs::read(app.join(".patchkit/journal.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v["state"].as_str().map(str::to_string)
}

fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// Runs a full apply with `--json`, timing the commit phase from the event lines.
/// Returns (whole duration, commit start, commit end).
fn timed_apply(w: &World, app: &Path) -> (Duration, Duration, Duration) {
    let start = Instant::now();
    let mut child = w
        .apply_cmd("apply", app)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (mut commit, mut verify) = (None, None);
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        if line.contains(r#""phase":"commit""#) {
            commit = Some(start.elapsed());
        }
        if line.contains(r#""phase":"verify""#) {
            verify = Some(start.elapsed());
        }
    }
    assert!(child.wait().expect("wait").success());
    let total = start.elapsed();
    let commit = commit.expect("commit phase seen");
    (total, commit, verify.unwrap_or(total))
}

#[test]
fn apply_killed_at_50_points_leaves_each_file_old_or_new_and_recovers_to_a_whole_version() {
    let w = big_world();
    let old = tree_state(&w.releases[0]);
    let new = tree_state(&w.releases[1]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = tmp.path().join("app");
    copy_tree(&w.releases[0], &app);
    // Measure the apply (and its commit phase), then go back to v1 with rollback.
    let (total, commit_start, commit_end) = timed_apply(w, &app);
    assert_same_tree(&app, &w.releases[1]);
    ok(cmd("patch-apply").args(["rollback", "--app-dir"]).arg(&app));
    assert_same_tree(&app, &w.releases[0]);
    eprintln!("apply takes {total:?}; commit phase from {commit_start:?} to {commit_end:?}");
    // The fixture is sized so that an apply takes over a second on the 2-core CI machine; a
    // much faster machine still gets kills spread over the whole (shorter) apply.
    if total < Duration::from_secs(1) {
        eprintln!("note: the apply took only {total:?} on this machine");
    }
    assert!(
        total > Duration::from_millis(300),
        "the fixture is too small to spread kills over the apply: it took {total:?}"
    );

    // 35 kills spread over the whole apply (delay from the start), then 15 spread over the
    // commit phase (delay from the moment the run announces it), where the app dir changes.
    let commit = commit_end.saturating_sub(commit_start) + Duration::from_millis(5);
    let mut delays: Vec<(bool, Duration)> = (0..35)
        .map(|i| (false, total.mul_f64((i as f64 + 0.5) / 35.0)))
        .collect();
    delays.extend((0..15).map(|i| (true, commit.mul_f64((i as f64 + 0.5) / 15.0))));

    let (mut before, mut during, mut after) = (0, 0, 0);
    for (i, (in_commit, d)) in delays.iter().enumerate() {
        let mut child = w
            .apply_cmd("apply", &app)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        if *in_commit {
            for line in lines.by_ref() {
                if line
                    .map(|l| l.contains(r#""phase":"commit""#))
                    .unwrap_or(true)
                {
                    break;
                }
            }
        } else {
            // Keep the pipe drained so the run is never slowed by a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
        }
        std::thread::sleep(*d);
        kill9(child.id());
        let _ = child.wait();
        if let Err(e) = old_or_new(&tree_state(&app), &old, &new) {
            panic!("kill {i} after {d:?}: a file is neither old nor new:\n{e}");
        }
        match journal_state(&app).as_deref() {
            Some("committing") => during += 1,
            Some("committed") => after += 1,
            _ => before += 1,
        }
        // The explicit recover (the next apply would do the same) gives a whole version.
        ok(cmd("patch-apply").args(["recover", "--app-dir"]).arg(&app));
        if tree_state(&app) == new {
            ok(cmd("patch-apply").args(["rollback", "--app-dir"]).arg(&app));
        }
        assert!(
            tree_state(&app) == old,
            "kill {i} after {d:?}: recover and rollback left neither v1 nor v2"
        );
    }
    eprintln!(
        "{} kills: {before} before the commit, {during} during it, {after} after it",
        delays.len()
    );
    assert!(during > 0, "no kill landed inside the commit phase");
    // A normal run ends at the new version.
    ok(&mut w.apply_cmd("apply", &app));
    assert_same_tree(&app, &w.releases[1]);
}

#[test]
fn second_apply_refuses_with_the_owner_pid_and_a_killed_owner_releases_the_lock() {
    let w = big_world();
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = tmp.path().join("app");
    copy_tree(&w.releases[0], &app);
    let mut first = w
        .apply_cmd("apply", &app)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = first.id();
    let lock = app.join(".patchkit/lock");
    let start = Instant::now();
    while std::fs::read_to_string(&lock)
        .ok()
        .map(|s| s.trim().to_string())
        != Some(pid.to_string())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "first apply never took the lock"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let err = fails(&mut w.apply_cmd("apply", &app));
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(err.contains("another update is running"), "{err}");
    let err = fails(cmd("patch-apply").args(["recover", "--app-dir"]).arg(&app));
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    // The owner dies: the OS releases its lock, the next run takes it over.
    kill9(pid);
    let _ = first.wait();
    ok(&mut w.apply_cmd("apply", &app));
    assert_same_tree(&app, &w.releases[1]);
}

#[test]
fn rollback_after_v1_to_v3_restores_v1_byte_for_byte() {
    let w = World::new(3);
    w.release_all(3);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["from"], "1.0.0");
    assert_eq!(r["to"], "3.0.0");
    assert_same_tree(&app, &w.releases[2]);
    let r = last_json(&ok(cmd("patch-apply")
        .args(["rollback", "--json", "--app-dir"])
        .arg(&app)));
    assert_eq!(r["restored"], "1.0.0");
    assert_same_tree(&app, &w.releases[0]);
    let c = last_json(&ok(w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(c["installed"], "1.0.0");
    // Only the last update can be undone.
    let err = fails(cmd("patch-apply").args(["rollback", "--app-dir"]).arg(&app));
    assert!(err.contains("already rolled back"), "{err}");
    ok(&mut w.apply_cmd("apply", &app));
    assert_same_tree(&app, &w.releases[2]);
}

#[test]
fn recover_on_a_clean_app_dir_does_nothing() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    ok(&mut w.apply_cmd("apply", &app));
    let r = last_json(&ok(cmd("patch-apply")
        .args(["recover", "--json", "--app-dir"])
        .arg(&app)));
    assert_eq!(r, "clean");
    assert_same_tree(&app, &w.releases[1]);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        st.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Bytes a tree takes on tmpfs (whole pages per file and directory).
fn tree_pages(root: &Path) -> u64 {
    fixtures::snapshot(root)
        .expect("snapshot")
        .iter()
        .map(|e| match &e.kind {
            fixtures::EntryKind::File { data, .. } => {
                (data.len() as u64).div_ceil(4096).max(1) * 4096
            }
            _ => 4096,
        })
        .sum()
}

#[test]
fn disk_full_gives_a_clear_error_and_leaves_the_old_version() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let w = World::new(2);
    w.release_all(2);
    let base = tree_pages(&w.releases[0]);
    let mut failures = 0;
    // From barely enough room for v1 to plenty: each run fails cleanly or succeeds.
    for extra_kib in [64u64, 512, 1024, 2048, 4096, 8192, 65536] {
        let mnt = w.path(&format!("mnt-{extra_kib}"));
        let Some(_fs) = Tmpfs::mount(&mnt, base + extra_kib * 1024) else {
            eprintln!("skipped: mount -t tmpfs failed");
            return;
        };
        let app = mnt.join("app");
        copy_tree(&w.releases[0], &app);
        let out = run(&mut w.apply_cmd("apply", &app));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            assert_same_tree(&app, &w.releases[1]);
            eprintln!("{extra_kib} KiB free: the update fits");
        } else {
            failures += 1;
            eprintln!("{extra_kib} KiB free: {}", err.trim());
            assert!(
                err.contains("No space left on device") || err.contains("not enough disk space"),
                "unclear error: {err}"
            );
            assert!(
                err.contains(&mnt.display().to_string()),
                "the error names no file: {err}"
            );
            assert_same_tree(&app, &w.releases[0]);
        }
    }
    assert!(failures > 0, "no run ran out of space");
}

#[test]
fn unwritable_file_gives_an_error_naming_it_and_leaves_the_old_version() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let old = tree_state(&w.releases[0]);
    let new = tree_state(&w.releases[1]);
    // A file the update replaces, in the middle of the list, so steps before it are undone.
    let changed: Vec<&String> = old
        .iter()
        .filter(|(p, v)| v.starts_with("file") && new.get(*p).is_some_and(|n| n != *v))
        .map(|(p, _)| p)
        .collect();
    let victim = changed[changed.len() / 2].clone();
    let path = app.join(&victim);
    // Root ignores permission bits: make the file immutable instead.
    let (lock_args, unlock): (Vec<String>, Box<dyn Fn()>) = if is_root() {
        let p = path.clone();
        (
            vec!["chattr".into(), "+i".into(), path.display().to_string()],
            Box::new(move || {
                let _ = Command::new("chattr").arg("-i").arg(&p).status();
            }),
        )
    } else {
        let d = path.parent().expect("parent").to_path_buf();
        (
            vec!["chmod".into(), "a-w".into(), d.display().to_string()],
            Box::new(move || {
                let _ = Command::new("chmod").arg("u+w").arg(&d).status();
            }),
        )
    };
    let st = Command::new(&lock_args[0])
        .args(&lock_args[1..])
        .stderr(Stdio::null())
        .status();
    if !st.map(|s| s.success()).unwrap_or(false) {
        eprintln!("skipped: {} is not supported here", lock_args.join(" "));
        return;
    }
    let out = run(&mut w.apply_cmd("apply", &app));
    unlock();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "apply succeeded over an unwritable file"
    );
    eprintln!("{}", err.trim());
    assert!(
        err.contains(&victim),
        "the error does not name {victim}: {err}"
    );
    assert!(
        err.contains("not permitted") || err.contains("denied"),
        "{err}"
    );
    assert_same_tree(&app, &w.releases[0]);
    ok(&mut w.apply_cmd("apply", &app));
    assert_same_tree(&app, &w.releases[1]);
}
