//! Issue 14, items 1, 6, 7 and 13b: the updater never destroys what it does not own. User
//! files survive every method, a wrong `--app-dir` is refused untouched, things in the way are
//! quarantined (and come back on rollback), `check` lists what would happen, and entries the
//! scan cannot use never block an install that is up to date.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
use std::path::{Path, PathBuf};

use e2e_tests::*;

/// A small repository of hand-made releases (the fixture sequence is too regular for these).
struct Small {
    w: World,
}

/// Version 1: `bin/app`, `config/default.ini`, `data/a.txt`, `data/big.bin`,
/// `dirfile/readme.txt`. Version 2: new `bin/app`, edited `data/a.txt` and `data/big.bin`
/// (a few bytes), `dirfile` a file, and a new `extras/new.txt`.
fn write_version(root: &Path, v: usize) {
    let _ = std::fs::remove_dir_all(root);
    let mut big = fixtures::noise(3, 300_000);
    let mut a = b"line of text\n".repeat(200);
    if v == 2 {
        big[1000..1010].copy_from_slice(b"version 2!");
        a.extend_from_slice(b"one more line in version 2\n");
    }
    let files: Vec<(&str, Vec<u8>)> = if v == 1 {
        vec![
            ("bin/app", b"app version 1".to_vec()),
            ("config/default.ini", b"colour=blue\n".to_vec()),
            ("data/a.txt", a),
            ("data/big.bin", big),
            ("dirfile/readme.txt", b"a directory in 1.0.0".to_vec()),
        ]
    } else {
        vec![
            ("bin/app", b"app version 2".to_vec()),
            ("config/default.ini", b"colour=blue\n".to_vec()),
            ("data/a.txt", a),
            ("data/big.bin", big),
            ("dirfile", b"a file in 2.0.0".to_vec()),
            ("extras/new.txt", b"new in 2.0.0".to_vec()),
        ]
    };
    for (p, data) in files {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    }
}

impl Small {
    fn new() -> Small {
        let w = World::with_sizes(1, 4096, 4096);
        for v in 1..=2 {
            write_version(&w.path(&format!("small-{v}")), v);
        }
        Small { w }
    }

    fn tree(&self, v: usize) -> PathBuf {
        self.w.path(&format!("small-{v}"))
    }

    /// Publishes version `v` (1 or 2) with `extra` arguments.
    fn release(&self, v: usize, extra: &[&str]) {
        ok(cmd("patch-create")
            .args([
                "release", "--name", "small", "--json", "--level", "3", "--repo",
            ])
            .arg(&self.w.repo)
            .arg("--root")
            .arg(self.tree(v))
            .args(["--version", &format!("{v}.0.0"), "--key"])
            .arg(&self.w.key)
            .args(extra));
    }

    /// An app dir with 1.0.0 installed by the updater (install record, backup of nothing).
    fn installed_v1(&self, name: &str, extra: &[&str]) -> PathBuf {
        let app = self.w.path(name);
        if !self.w.repo.exists() {
            self.release(1, extra);
        }
        ok(&mut self.w.apply_cmd("apply", &app));
        assert_eq!(
            std::fs::read(app.join("bin/app")).unwrap(),
            b"app version 1"
        );
        app
    }
}

/// `tree_state` of `app` without the paths in `user`.
fn release_part(app: &Path, user: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut t = tree_state(app);
    t.retain(|k, _| {
        !user
            .iter()
            .any(|u| k == u || k.starts_with(&format!("{u}/")))
    });
    t
}

fn add_user_files(app: &Path) {
    std::fs::write(app.join("config/settings.ini"), b"volume=11\n").unwrap();
    std::fs::create_dir_all(app.join("Documents")).unwrap();
    std::fs::write(app.join("Documents/thesis.txt"), b"five years of work").unwrap();
}

fn assert_user_files(app: &Path) {
    assert_eq!(
        std::fs::read(app.join("config/settings.ini")).unwrap(),
        b"volume=11\n"
    );
    assert_eq!(
        std::fs::read(app.join("Documents/thesis.txt")).unwrap(),
        b"five years of work"
    );
}

#[test]
fn user_files_survive_incremental_repair_and_installer_fallback() {
    for method in ["incremental", "repair", "fallback-to-installer"] {
        let s = Small::new();
        let app = s.installed_v1("app", &[]);
        add_user_files(&app);
        s.release(2, &[]);
        let mut c = s.w.apply_cmd("apply", &app);
        c.arg("--json");
        if method == "fallback-to-installer" {
            // Every patch and repair file of the repository is damaged: only the installer works.
            for dir in ["targets/2.0.0", "blobs"] {
                for f in walk(&s.w.repo.join(dir)) {
                    let name = f.to_string_lossy().into_owned();
                    if name.ends_with(".patch") || dir == "blobs" {
                        let mut b = std::fs::read(&f).unwrap();
                        let n = b.len();
                        b[n / 2] ^= 0xff;
                        std::fs::write(&f, b).unwrap();
                    }
                }
            }
        } else {
            c.args(["--method", method]);
        }
        let r = last_json(&ok(&mut c));
        let expect = if method == "fallback-to-installer" {
            "installer"
        } else {
            method
        };
        assert_eq!(r["method"], expect, "{r}");
        assert_user_files(&app);
        assert_eq!(
            release_part(&app, &["config/settings.ini", "Documents"]),
            tree_state(&s.tree(2)),
            "{method}"
        );
        let kept: Vec<String> = serde_json::from_value(r["kept"].clone()).unwrap();
        assert_eq!(
            kept,
            ["Documents/thesis.txt", "config/settings.ini"],
            "{method}: {r}"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn wrong_app_dir_is_refused_untouched_and_adopt_keeps_its_files() {
    let s = Small::new();
    s.release(1, &[]);
    let home = s.w.path("home");
    std::fs::create_dir_all(home.join("Documents")).unwrap();
    std::fs::write(home.join("Documents/thesis.txt"), b"five years of work").unwrap();
    std::fs::write(home.join("notes.txt"), b"notes").unwrap();
    let before = tree_state(&home);
    for sub in ["check", "apply"] {
        let mut c = s.w.apply_cmd(sub, &home);
        if sub == "apply" {
            let err = fails(&mut c);
            assert!(err.contains(&home.display().to_string()), "{err}");
            assert!(err.contains("notes.txt"), "{err}");
            assert!(err.contains("--adopt"), "{err}");
        } else {
            let out = ok(&mut c);
            assert!(out.contains("apply would refuse"), "{out}");
        }
        assert_eq!(tree_state(&home), before);
        assert!(
            !home.join(".patchkit").exists(),
            "{sub} wrote the state directory into a foreign dir"
        );
    }
    let r = last_json(&ok(s
        .w
        .apply_cmd("apply", &home)
        .args(["--adopt", "--json"])));
    assert_eq!(r["to"], "1.0.0");
    assert_eq!(
        std::fs::read(home.join("Documents/thesis.txt")).unwrap(),
        b"five years of work"
    );
    assert_eq!(std::fs::read(home.join("notes.txt")).unwrap(), b"notes");
    assert_eq!(
        release_part(&home, &["Documents", "notes.txt"]),
        tree_state(&s.tree(1))
    );
}

#[test]
fn file_in_the_way_is_quarantined_reported_and_rolled_back() {
    let s = Small::new();
    let app = s.installed_v1("app", &[]);
    let human = s.w.path("app-human");
    copy_tree(&app, &human);
    for a in [&app, &human] {
        std::fs::create_dir_all(a.join("extras")).unwrap();
        std::fs::write(a.join("extras/new.txt"), b"the user's own new.txt").unwrap();
    }
    s.release(2, &[]);
    let out = ok(s.w.apply_cmd("apply", &app).arg("--json"));
    let event = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "quarantined")
        .unwrap_or_else(|| panic!("no quarantined event in {out}"));
    assert_eq!(event["path"], "extras/new.txt");
    let r = last_json(&out);
    assert_eq!(r["quarantined"][0]["path"], "extras/new.txt", "{r}");
    let to = app.join(r["quarantined"][0]["to"].as_str().unwrap());
    assert!(
        to.starts_with(app.join(".patchkit/quarantine")),
        "{}",
        to.display()
    );
    assert_eq!(std::fs::read(&to).unwrap(), b"the user's own new.txt");
    assert_same_tree(&app, &s.tree(2));
    // The human output names it too.
    let text = ok(&mut s.w.apply_cmd("apply", &human));
    assert!(
        text.contains("quarantined: extras/new.txt -> .patchkit/quarantine/"),
        "{text}"
    );
    // Rollback brings it back.
    ok(&mut rollback_cmd(&app));
    assert_eq!(
        std::fs::read(app.join("extras/new.txt")).unwrap(),
        b"the user's own new.txt"
    );
    assert_eq!(
        std::fs::read(app.join("bin/app")).unwrap(),
        b"app version 1"
    );
    assert!(!to.exists());
}

fn rollback_cmd(app: &Path) -> std::process::Command {
    let mut c = cmd("patch-apply");
    c.arg("rollback").arg("--app-dir").arg(app);
    c
}

#[test]
fn check_lists_what_apply_would_do_and_how_the_install_differs() {
    let s = Small::new();
    let app = s.installed_v1("app", &[]);
    std::fs::write(app.join("config/default.ini"), b"colour=red\n").unwrap();
    std::fs::write(app.join("config/settings.ini"), b"volume=11\n").unwrap();
    s.release(2, &[]);
    let text = ok(&mut s.w.apply_cmd("check", &app));
    assert!(
        text.contains("installed: 1.0.0 with 1 changed file and 1 unknown file, latest: 2.0.0"),
        "{text}"
    );
    assert!(
        text.contains("would keep (not the updater's): config/settings.ini"),
        "{text}"
    );
    assert!(text.contains("would replace: "), "{text}");
    assert!(text.contains("config/default.ini"), "{text}");
    assert!(text.contains("incremental: usable"), "{text}");
    let c = last_json(&ok(s.w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(c["recognised"], "1.0.0", "{c}");
    assert_eq!(
        c["install_state"],
        "1.0.0 with 1 changed file and 1 unknown file"
    );
    assert_eq!(c["would_keep"], serde_json::json!(["config/settings.ini"]));
    assert_eq!(
        c["differences"]["changed"],
        serde_json::json!(["config/default.ini"])
    );
    let replace: Vec<String> = serde_json::from_value(c["would_replace"].clone()).unwrap();
    assert!(replace.contains(&"config/default.ini".to_string()), "{c}");
    assert!(replace.contains(&"dirfile".to_string()), "{c}");
    let delete: Vec<String> = serde_json::from_value(c["would_delete"].clone()).unwrap();
    assert_eq!(delete, ["dirfile/readme.txt"], "{c}");
}

#[test]
fn incremental_is_still_chosen_with_one_edited_file() {
    let s = Small::new();
    let app = s.installed_v1("app", &[]);
    std::fs::write(app.join("data/a.txt"), b"edited by the user").unwrap();
    s.release(2, &[]);
    let c = last_json(&ok(s.w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(c["method"], "incremental", "{c}");
    let r = last_json(&ok(s.w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["method"], "incremental", "{r}");
    assert_eq!(r["repaired"], serde_json::json!(["data/a.txt"]), "{r}");
    assert_eq!(r["from_state"], "1.0.0 with 1 changed file");
    assert_same_tree(&app, &s.tree(2));
    // Far less than a repair of every changed file (the big one especially).
    let repair = c["alternatives"][1]["bytes"].as_u64().unwrap();
    assert!(
        r["downloaded_bytes"].as_u64().unwrap() < repair,
        "{r} vs repair {repair}"
    );
}

#[test]
fn ignored_file_in_a_directory_that_becomes_a_file_is_quarantined_not_deleted() {
    let s = Small::new();
    let app = s.installed_v1("app", &["--ignore", "*.sav"]);
    std::fs::write(app.join("dirfile/slot.sav"), b"level 42").unwrap();
    s.release(2, &["--ignore", "*.sav"]);
    let r = last_json(&ok(s.w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["quarantined"][0]["path"], "dirfile", "{r}");
    let to = app.join(r["quarantined"][0]["to"].as_str().unwrap());
    assert_eq!(std::fs::read(to.join("slot.sav")).unwrap(), b"level 42");
    assert_same_tree(&app, &s.tree(2));
    // Later updates keep the quarantine.
    ok(&mut s.w.apply_cmd("apply", &app));
    assert!(to.join("slot.sav").exists());
}

#[cfg(unix)]
#[test]
fn unusable_entries_outside_release_paths_do_not_block_up_to_date_nor_drop_the_backup() {
    let s = Small::new();
    let app = s.installed_v1("app", &["--ignore", "saves/"]);
    s.release(2, &["--ignore", "saves/"]);
    ok(&mut s.w.apply_cmd("apply", &app));
    std::fs::create_dir_all(app.join("saves")).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(app.join("saves/pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    std::os::unix::fs::symlink("/etc", app.join("link-out")).unwrap();
    let journal = std::fs::read(app.join(".patchkit/journal.json")).unwrap();
    let c = last_json(&ok(s.w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(c["up_to_date"], true, "{c}");
    assert_eq!(c["would_keep"], serde_json::json!(["link-out"]), "{c}");
    let r = last_json(&ok(s.w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["method"], "none", "{r}");
    assert_eq!(r["repaired_after"], serde_json::json!([]), "{r}");
    assert_eq!(
        std::fs::read(app.join(".patchkit/journal.json")).unwrap(),
        journal,
        "a run with nothing to change opened a transaction"
    );
    // The update's rollback still works.
    ok(&mut rollback_cmd(&app));
    assert_eq!(
        std::fs::read(app.join("bin/app")).unwrap(),
        b"app version 1"
    );
    assert!(app.join("saves/pipe").exists());
}

#[cfg(unix)]
#[test]
fn release_directory_replaced_by_a_symlink_is_quarantined_and_its_target_untouched() {
    let s = Small::new();
    let app = s.installed_v1("app", &[]);
    let elsewhere = s.w.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::rename(app.join("data"), elsewhere.join("data")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("data"), app.join("data")).unwrap();
    let before = tree_state(&elsewhere);
    s.release(2, &[]);
    let r = last_json(&ok(s.w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["quarantined"][0]["path"], "data", "{r}");
    assert_eq!(
        tree_state(&elsewhere),
        before,
        "the symlink's target changed"
    );
    assert!(std::fs::symlink_metadata(app.join("data"))
        .unwrap()
        .is_dir());
    let to = app.join(r["quarantined"][0]["to"].as_str().unwrap());
    assert!(std::fs::symlink_metadata(&to)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_same_tree(&app, &s.tree(2));
}
