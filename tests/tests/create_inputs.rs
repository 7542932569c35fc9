//! Issue 14, items 5 and 8: `patch-create` (and `patch-apply`'s key loading) refuse inputs that
//! are wrong before writing anything, expiry is never shorter than meant without a word, and a
//! release keeps the previous release's `--ignore` patterns unless told to drop them.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use e2e_tests::*;

/// Everything under `dir`, the lock file included (it must not appear where it does not
/// belong).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    tree_state(dir)
}

/// `patch-create release` of release tree `root` into `repo` as `version`.
fn release_cmd(w: &World, repo: &Path, root: &Path, version: &str) -> Command {
    let mut c = cmd("patch-create");
    c.args(["release", "--name", "demo", "--json", "--level", "3"])
        .arg("--repo")
        .arg(repo)
        .arg("--root")
        .arg(root)
        .args(["--version", version, "--key"])
        .arg(&w.key);
    c
}

#[test]
fn release_with_repo_and_root_swapped_is_refused_and_writes_nothing() {
    let w = World::new(2);
    w.release(1, &[]);
    let tree = &w.releases[1];
    let (tree_before, repo_before) = (snapshot(tree), snapshot(&w.repo));
    // --repo names the release tree, --root the repository.
    let err = fails(&mut release_cmd(&w, tree, &w.repo, "2.0.0"));
    assert!(err.contains("swapped"), "{err}");
    assert_eq!(snapshot(tree), tree_before, "the release tree is untouched");
    assert_eq!(
        snapshot(&w.repo),
        repo_before,
        "the repository is untouched"
    );
    assert!(!tree.join(".patch-create.lock").exists());
    assert!(!tree.join("metadata").exists());
}

#[test]
fn release_with_repo_inside_the_release_tree_or_tree_inside_repo_is_refused_and_writes_nothing() {
    let w = World::new(2);
    let tree = w.path("tree");
    copy_tree(&w.releases[0], &tree);
    let before = snapshot(&tree);
    // A repository that does not exist yet, inside the tree: compared through its nearest
    // existing ancestor.
    let err = fails(&mut release_cmd(
        &w,
        &tree.join("dist/repo"),
        &tree,
        "1.0.0",
    ));
    assert!(err.contains("inside the release tree"), "{err}");
    assert!(err.contains(".patch-create.lock"), "{err}");
    assert_eq!(snapshot(&tree), before, "nothing written into the tree");
    // The same through a symlink to the tree.
    let link = w.path("link");
    std::os::unix::fs::symlink(&tree, &link).unwrap();
    let err = fails(&mut release_cmd(&w, &link.join("repo"), &tree, "1.0.0"));
    assert!(err.contains("inside the release tree"), "{err}");
    assert_eq!(snapshot(&tree), before, "nothing written through the link");

    // A release tree inside the repository.
    w.release(1, &[]);
    let inner = w.repo.join("build-2");
    copy_tree(&w.releases[1], &inner);
    let repo_before = snapshot(&w.repo);
    let err = fails(&mut release_cmd(&w, &w.repo, &inner, "2.0.0"));
    assert!(err.contains("contains the release tree"), "{err}");
    assert_eq!(
        snapshot(&w.repo),
        repo_before,
        "the repository is untouched"
    );
}

#[test]
fn repo_that_is_a_non_empty_directory_and_not_a_repository_is_refused_untouched() {
    let w = World::new(1);
    let dir = w.path("home");
    std::fs::create_dir_all(dir.join("Documents")).unwrap();
    std::fs::write(dir.join("Documents/thesis.txt"), b"four years of work").unwrap();
    std::fs::write(dir.join("notes.txt"), b"notes").unwrap();
    let before = snapshot(&dir);
    let err = fails(&mut release_cmd(&w, &dir, &w.releases[0], "1.0.0"));
    assert!(err.contains("not a patch repository"), "{err}");
    assert!(err.contains("notes.txt"), "names what is there: {err}");
    assert!(err.contains("new or empty directory"), "{err}");
    assert_eq!(snapshot(&dir), before, "untouched, no lock file");
    assert!(!dir.join(".patch-create.lock").exists());
}

#[test]
fn secret_key_where_a_public_key_is_expected_and_back_is_refused_writing_nothing() {
    let w = World::new(1);
    w.release(1, &[]);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let before = snapshot(&app);
    for sub in ["check", "apply"] {
        let mut c = cmd("patch-apply");
        c.arg(sub)
            .arg("--app-dir")
            .arg(&app)
            .arg("--repo")
            .arg(&w.repo)
            .arg("--public-key")
            .arg(&w.key);
        let err = fails(&mut c);
        assert!(err.contains("release.key"), "names the file: {err}");
        assert!(err.contains("secret key"), "{err}");
        assert!(err.contains("anyone"), "says why it matters: {err}");
        assert_eq!(snapshot(&app), before, "{sub}: app dir untouched");
        assert!(!app.join(".patchkit").exists(), "{sub}: no state written");
    }
    // patch-create's public key options too.
    let err = fails(
        cmd("patch-create")
            .args(["verify", "--repo"])
            .arg(&w.repo)
            .arg("--public-key")
            .arg(&w.key),
    );
    assert!(err.contains("secret key"), "{err}");
    let fresh = w.path("fresh-repo");
    let err = fails(
        cmd("patch-create")
            .args(["keys", "init", "--repo"])
            .arg(&fresh)
            .arg("--root-key")
            .arg(&w.key)
            .arg("--release-key")
            .arg(&w.key),
    );
    assert!(err.contains("secret key"), "{err}");
    assert!(!fresh.exists(), "nothing written");
    // And a public key as the signing key.
    let repo_before = snapshot(&w.repo);
    let mut c = cmd("patch-create");
    c.args(["release", "--json", "--level", "3", "--repo"])
        .arg(&w.repo)
        .arg("--root")
        .arg(&w.releases[0])
        .args(["--version", "1.0.1", "--key"])
        .arg(&w.public);
    let err = fails(&mut c);
    assert!(err.contains("release.pub"), "{err}");
    assert!(err.contains("public key file"), "{err}");
    assert_eq!(snapshot(&w.repo), repo_before);
}

#[test]
fn expires_shorter_than_a_day_is_refused_unless_expires_short_ok() {
    let w = World::new(1);
    let err = fails(release_cmd(&w, &w.repo, &w.releases[0], "1.0.0").args(["--expires", "3m"]));
    assert!(err.contains("3m = 3 minutes"), "{err}");
    assert!(err.contains("--expires-short-ok"), "{err}");
    assert!(!w.repo.exists(), "nothing written");
    ok(release_cmd(&w, &w.repo, &w.releases[0], "1.0.0").args([
        "--expires",
        "3m",
        "--expires-short-ok",
    ]));
    // resign too, and the per-role lifetime of `keys update`.
    let err = fails(
        cmd("patch-create")
            .args(["resign", "--expires", "90m", "--repo"])
            .arg(&w.repo)
            .arg("--key")
            .arg(&w.key),
    );
    assert!(err.contains("90m = 1 hour 30 minutes"), "{err}");
    let err = fails(
        cmd("patch-create")
            .args(["keys", "update", "--resign-expires", "2h", "--repo"])
            .arg(&w.repo)
            .arg("--root-key")
            .arg(&w.key)
            .arg("--key")
            .arg(&w.key),
    );
    assert!(err.contains("--resign-expires 2h = 2 hours"), "{err}");
}

#[test]
fn verify_prints_each_role_expiry_and_warns_when_one_expires_within_the_hour() {
    let w = World::with_sizes(1, 64 << 10, 32 << 10);
    w.release(1, &[]);
    let verify = || {
        run(cmd("patch-create")
            .args(["verify", "--repo"])
            .arg(&w.repo)
            .arg("--public-key")
            .arg(&w.public))
    };
    let out = verify();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for role in ["root", "targets", "snapshot", "timestamp"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("expires: {role} ")) && l.contains(" (in ")),
            "{role}: {text}"
        );
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("warning"), "90 days is not near: {err}");

    ok(cmd("patch-create")
        .args(["resign", "--expires", "30m", "--expires-short-ok", "--repo"])
        .arg(&w.repo)
        .arg("--key")
        .arg(&w.key));
    let out = verify();
    assert!(out.status.success(), "not expired yet: still OK");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("(in 30 minutes)") || text.contains("(in 29 minutes"),
        "{text}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: timestamp metadata") && err.contains("minutes"),
        "{err}"
    );
    assert!(!err.contains("warning: root"), "the root is far: {err}");
}

/// The first release ignores `saves/`; the second is made without `--ignore`.
fn two_releases_first_ignoring_saves(w: &World, second: &[&str]) -> (serde_json::Value, String) {
    w.release(1, &["--ignore", "saves/"]);
    let out = run(release_cmd(w, &w.repo, &w.releases[1], "2.0.0").args(second));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        last_json(&String::from_utf8_lossy(&out.stdout)),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ignore_of_the_previous_release_is_inherited_and_users_saves_survive_the_update() {
    let w = World::new(2);
    let app = w.path("app");
    w.release(1, &["--ignore", "saves/"]);
    ok(w.apply_cmd("apply", &app).arg("--json"));
    std::fs::create_dir_all(app.join("saves")).unwrap();
    std::fs::write(app.join("saves/slot1.sav"), b"a week of play").unwrap();
    let out = run(&mut release_cmd(&w, &w.repo, &w.releases[1], "2.0.0"));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keeping --ignore \"saves/\" of release 1.0.0"),
        "says so: {err}"
    );
    let r = last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(r["ignore"]["patterns"], serde_json::json!(["saves/"]));
    assert_eq!(r["ignore"]["inherited"], serde_json::json!(["saves/"]));
    let a = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(a["to"], "2.0.0");
    assert_eq!(
        std::fs::read(app.join("saves/slot1.sav")).unwrap(),
        b"a week of play"
    );
    std::fs::remove_dir_all(app.join("saves")).unwrap();
    assert_same_tree(&app, &w.releases[1]);
}

#[test]
fn drop_ignore_drops_the_previous_pattern_and_warns() {
    let w = World::new(2);
    let (r, err) = two_releases_first_ignoring_saves(&w, &["--drop-ignore", "saves/"]);
    assert_eq!(r["ignore"]["patterns"], serde_json::json!([]));
    assert_eq!(r["ignore"]["dropped"], serde_json::json!(["saves/"]));
    assert!(
        err.contains("warning: --ignore \"saves/\" of release 1.0.0 is dropped")
            && err.contains("delete users' files"),
        "{err}"
    );
    // Dropping a pattern the previous release does not have is a typo, refused.
    let w = World::new(2);
    w.release(1, &["--ignore", "saves/"]);
    let before = snapshot(&w.repo);
    let e =
        fails(release_cmd(&w, &w.repo, &w.releases[1], "2.0.0").args(["--drop-ignore", "save/"]));
    assert!(
        e.contains("no such ignore pattern") && e.contains("saves/"),
        "{e}"
    );
    assert_eq!(snapshot(&w.repo), before);
    // Starting fresh warns the same way.
    let w = World::new(2);
    let (r, err) =
        two_releases_first_ignoring_saves(&w, &["--no-inherit-ignore", "--ignore", "*.log"]);
    assert_eq!(r["ignore"]["patterns"], serde_json::json!(["*.log"]));
    assert!(
        err.contains("\"saves/\" of release 1.0.0 is dropped"),
        "{err}"
    );
}

#[test]
fn quiet_prints_only_errors_and_verbose_adds_detail() {
    let w = World::new(2);
    let out = run(cmd("patch-create")
        .args(["release", "-q", "--level", "3", "--repo"])
        .arg(&w.repo)
        .arg("--root")
        .arg(&w.releases[0])
        .args(["--version", "1.0.0", "--key"])
        .arg(&w.key));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "quiet");
    let out = run(cmd("patch-create")
        .args(["--verbose", "release", "--level", "3", "--repo"])
        .arg(&w.repo)
        .arg("--root")
        .arg(&w.releases[1])
        .args(["--version", "2.0.0", "--key"])
        .arg(&w.key));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("released repo 2.0.0"), "{err}");
    assert!(err.contains("timings:"), "{err}");
    // Errors still print when quiet.
    let err = fails(
        cmd("patch-create")
            .args(["resign", "-q", "--expires", "1m", "--repo"])
            .arg(&w.repo)
            .arg("--key")
            .arg(&w.key),
    );
    assert!(err.contains("error:"), "{err}");
}

/// Issue 21: a `release` killed midway (as Ctrl-C or a crash would) leaves its work directory,
/// the old file it decoded from a repair file (session 18: it used to be left in the system's
/// temporary directory, where nothing removed it) and unreferenced files; the next `release`
/// removes exactly those (files written after the
/// last commit that no metadata references), keeps an older unreferenced file it cannot show
/// it wrote, and the repository verifies clean.
#[test]
fn release_killed_midway_leaves_leftovers_that_the_next_release_removes() {
    // A big changed file makes the patch of release 2 take long enough to be killed midway.
    let w = World::with_sizes(2, 24 << 20, 1 << 20);
    w.release(1, &[]);
    // An unreferenced file from long before the last commit: not provably a leftover, kept.
    let old = w.repo.join("blobs/zz/not-ours");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, b"kept").unwrap();
    ok(Command::new("touch").args(["-d", "2001-01-01"]).arg(&old));
    let tmp_dirs = |repo: &Path| -> Vec<String> {
        std::fs::read_dir(repo)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-release-"))
            .collect()
    };
    let mut child = cmd("patch-create")
        .args(["release", "--name", "demo", "-q", "--level", "19", "--repo"])
        .arg(&w.repo)
        .arg("--root")
        .arg(&w.releases[1])
        .args(["--version", "2.0.0", "--key"])
        .arg(&w.key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    // Killed once the old version of the big file is decoded, while its patch is computed.
    let decoded = |names: &[String]| names.iter().any(|n| n.starts_with(".tmp-release-decoded-"));
    while !decoded(&tmp_dirs(&w.repo)) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "release 2 ended before it could be interrupted"
        );
        assert!(
            t0.elapsed().as_secs() < 120,
            "release 2 never started its patches"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs, as with a crash or a power cut.
    child.wait().unwrap();
    let left = tmp_dirs(&w.repo);
    assert_eq!(
        left.len(),
        2,
        "the killed release left its work directory and the decoded old file: {left:?}"
    );
    assert!(decoded(&left), "{left:?}");
    // A file it had placed but never committed (as a kill just after placing one would leave).
    let placed = w.repo.join("targets/2.0.0/feedface.uncommitted");
    std::fs::create_dir_all(placed.parent().unwrap()).unwrap();
    std::fs::write(&placed, b"never signed").unwrap();

    let report = last_json(&ok(&mut release_cmd(&w, &w.repo, &w.releases[1], "2.0.0")));
    let removed: Vec<String> = report["leftovers_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(left.iter().all(|l| removed.contains(l)), "{removed:?}");
    assert!(
        removed.contains(&"targets/2.0.0/feedface.uncommitted".to_owned()),
        "{removed:?}"
    );
    assert!(tmp_dirs(&w.repo).is_empty());
    assert!(!placed.exists());
    assert_eq!(std::fs::read(&old).unwrap(), b"kept");
    let verify = last_json(&ok(cmd("patch-create")
        .args(["verify", "--json", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public)));
    assert_eq!(
        verify["unreferenced"],
        serde_json::json!(["blobs/zz/not-ours"]),
        "{verify}"
    );
}
