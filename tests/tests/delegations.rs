//! Delegated targets roles (issue 20, docs/format.md §7.2): the targets of the newest releases
//! live in the role `recent`, older ones in archive chunks, so that the metadata a client
//! downloads to update does not grow with history. With the real binaries over real HTTP
//! (`patch-create serve`): a client at the previous release reads no archive role, an old
//! install loads them and ends byte-identical, a yank of an archived release reaches clients,
//! tampered roles are refused with the app dir unchanged, and a repository written before
//! delegations is converted by its next release.
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::*;
use formats::limits::Limits;
use formats::tuf::{self, SnapshotMetadata, TargetsMetadata, TimestampMetadata};

/// `recent` holds 2 releases, an archive chunk 3 (`patch-create` reads these variables).
const SIZES: [(&str, &str); 2] = [
    ("PATCHKIT_RECENT_RELEASES", "2"),
    ("PATCHKIT_ARCHIVE_CHUNK", "3"),
];

/// A world of `n` tiny releases (none released yet).
fn world(n: usize) -> World {
    World::with_sizes(n, 48 << 10, 24 << 10)
}

/// `patch-create` with the small role sizes.
fn create() -> Command {
    let mut c = cmd("patch-create");
    c.envs(SIZES);
    c
}

/// Releases release `i` as `i.0.0`.
fn release(w: &World, i: usize) {
    ok(create()
        .args([
            "release", "--name", "demo", "--json", "--level", "3", "--repo",
        ])
        .arg(&w.repo)
        .arg("--root")
        .arg(&w.releases[i - 1])
        .args(["--version", &format!("{i}.0.0"), "--key"])
        .arg(&w.key));
}

/// `patch-apply -v SUB` against `repo` (a directory or URL); returns (status ok, stdout,
/// stderr).
fn apply_v(w: &World, sub: &str, app: &Path, repo: &str, extra: &[&str]) -> (bool, String, String) {
    let out = run(cmd("patch-apply")
        .arg("-v")
        .arg(sub)
        .arg("--app-dir")
        .arg(app)
        .arg("--repo")
        .arg(repo)
        .arg("--public-key")
        .arg(&w.public)
        .args(extra));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The metadata files a `-v` log shows requested (`metadata/...` paths).
fn metadata_requests(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let url = l.split_whitespace().find(|w| w.starts_with("http://"))?;
            let path = url.split_once("/metadata/")?.1;
            Some(path.trim_end_matches(':').to_string())
        })
        .collect()
}

fn installed_version(app: &Path) -> Option<String> {
    let b = std::fs::read(app.join(".patchkit/installed.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v["version"].as_str().map(str::to_string)
}

fn md(repo: &Path, name: &str) -> PathBuf {
    repo.join("metadata").join(name)
}

/// The current snapshot of `repo` (unverified).
fn snapshot(repo: &Path) -> SnapshotMetadata {
    let l = Limits::default();
    let ts = std::fs::read(md(repo, "timestamp.json")).unwrap();
    let ts = tuf::parse_unverified::<TimestampMetadata>("ts", &ts, &l)
        .unwrap()
        .signed;
    let v = ts.meta["snapshot.json"].version;
    let s = std::fs::read(md(repo, &format!("{v}.snapshot.json"))).unwrap();
    tuf::parse_unverified::<SnapshotMetadata>("s", &s, &l)
        .unwrap()
        .signed
}

/// The current version and document of targets role `role` (`targets`, `recent`, ...).
fn role(repo: &Path, role: &str) -> (u64, TargetsMetadata) {
    let v = snapshot(repo).meta[&format!("{role}.json")].version;
    let b = std::fs::read(md(repo, &format!("{v}.{role}.json"))).unwrap();
    let doc = tuf::parse_unverified::<TargetsMetadata>(role, &b, &Limits::default())
        .unwrap()
        .signed;
    (v, doc)
}

/// The releases (`X.0.0`) whose manifest role `name` lists.
fn releases_in(repo: &Path, name: &str) -> Vec<String> {
    role(repo, name)
        .1
        .targets
        .keys()
        .filter_map(|t| t.strip_suffix("/manifest.json").map(str::to_string))
        .collect()
}

#[test]
fn an_update_from_the_previous_release_reads_no_archive_and_an_old_install_does() {
    let w = world(7);
    for i in 1..=6 {
        release(&w, i);
    }
    // 6 releases: recent {5, 6}; archive chunks of 3 in version order.
    assert_eq!(releases_in(&w.repo, "recent"), ["5.0.0", "6.0.0"]);
    assert_eq!(
        releases_in(&w.repo, "archive-0001"),
        ["1.0.0", "2.0.0", "3.0.0"]
    );
    assert_eq!(releases_in(&w.repo, "archive-0002"), ["4.0.0"]);
    let (top_v, top) = role(&w.repo, "targets");
    assert_eq!(
        top.targets.keys().collect::<Vec<_>>(),
        ["repository.json"],
        "top-level targets list only the settings"
    );
    let order: Vec<String> = top
        .delegations
        .as_ref()
        .and_then(|d| d.roles.as_ref())
        .unwrap()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(order, ["recent", "archive-0002", "archive-0001"]);

    // An app at 6.0.0 that trusts the metadata of 6.0.0.
    let at6 = w.path("at6");
    copy_tree(&w.releases[5], &at6);
    let repo_dir = w.repo.display().to_string();
    let (done, _, err) = apply_v(&w, "apply", &at6, &repo_dir, &[]);
    assert!(done, "{err}");
    assert_eq!(installed_version(&at6).as_deref(), Some("6.0.0"));
    let (a1_v, _) = role(&w.repo, "archive-0001");

    release(&w, 7);
    // 5.0.0 left recent for the chunk with room; top-level targets and the full chunk did not
    // change.
    assert_eq!(releases_in(&w.repo, "recent"), ["6.0.0", "7.0.0"]);
    assert_eq!(releases_in(&w.repo, "archive-0002"), ["4.0.0", "5.0.0"]);
    assert_eq!(role(&w.repo, "targets").0, top_v);
    assert_eq!(role(&w.repo, "archive-0001").0, a1_v);

    let srv = ServedRepo::start(&w.repo);
    let (done, _, log) = apply_v(&w, "apply", &at6, &srv.url, &[]);
    assert!(done, "{log}");
    assert_same_tree(&at6, &w.releases[6]);
    assert_eq!(installed_version(&at6).as_deref(), Some("7.0.0"));
    let got = metadata_requests(&log);
    let snap_v = snapshot(&w.repo).version;
    let recent_v = role(&w.repo, "recent").0;
    let want = [
        "2.root.json".to_string(),
        "timestamp.json".to_string(),
        format!("{snap_v}.snapshot.json"),
        format!("{recent_v}.recent.json"),
    ];
    assert_eq!(got, want, "metadata requests of the update 6 -> 7:\n{log}");

    // A copy of 1.0.0 with no state at all: recognised from the archive, updated to 7.0.0.
    let at1 = w.path("at1");
    copy_tree(&w.releases[0], &at1);
    let (done, _, log) = apply_v(&w, "apply", &at1, &srv.url, &[]);
    assert!(done, "{log}");
    assert_same_tree(&at1, &w.releases[6]);
    let got = metadata_requests(&log);
    for chunk in ["archive-0001", "archive-0002"] {
        assert!(
            got.iter().any(|r| r.ends_with(&format!(".{chunk}.json"))),
            "{chunk} not loaded for an install at 1.0.0: {got:?}"
        );
    }

    // The repository verifies, delegated roles included.
    let out = ok(create()
        .args(["verify", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public));
    assert!(out.contains("OK"), "{out}");
    assert!(out.contains("archive-0001"), "expiry of every role: {out}");
}

#[test]
fn a_yank_of_an_archived_release_re_signs_its_chunk_and_reaches_clients() {
    let w = world(6);
    for i in 1..=6 {
        release(&w, i);
    }
    let (a1_v, _) = role(&w.repo, "archive-0001");
    let (a2_v, _) = role(&w.repo, "archive-0002");
    let (recent_v, _) = role(&w.repo, "recent");
    let (top_v, _) = role(&w.repo, "targets");
    ok(create()
        .args(["yank", "--repo"])
        .arg(&w.repo)
        .args(["--version", "2.0.0", "--reason", "eats saves", "--key"])
        .arg(&w.key));
    assert_eq!(role(&w.repo, "archive-0001").0, a1_v + 1);
    assert_eq!(role(&w.repo, "archive-0002").0, a2_v);
    assert_eq!(role(&w.repo, "recent").0, recent_v);
    assert_eq!(role(&w.repo, "targets").0, top_v);
    let m = &role(&w.repo, "archive-0001").1.targets["2.0.0/manifest.json"];
    assert_eq!(m.custom.as_ref().unwrap()["yanked"]["reason"], "eats saves");

    // A client at the yanked release is told and moves on.
    let at2 = w.path("at2");
    copy_tree(&w.releases[1], &at2);
    let repo_dir = w.repo.display().to_string();
    let (done, out, err) = apply_v(&w, "check", &at2, &repo_dir, &["--json"]);
    assert!(done, "{err}");
    let c = last_json(&out);
    assert_eq!(c["installed_yanked"], "eats saves", "{c}");
    assert_eq!(c["latest"], "6.0.0", "{c}");
    let (done, _, err) = apply_v(&w, "apply", &at2, &repo_dir, &[]);
    assert!(done, "{err}");
    assert_same_tree(&at2, &w.releases[5]);
    // Another release keeps the yank in the chunk.
    let w7 = w.path("rel7");
    copy_tree(&w.releases[5], &w7);
    std::fs::write(w7.join("seventh.txt"), b"7").unwrap();
    ok(create()
        .args(["release", "--name", "demo", "--repo"])
        .arg(&w.repo)
        .arg("--root")
        .arg(&w7)
        .args(["--version", "7.0.0", "--key"])
        .arg(&w.key));
    let m = &role(&w.repo, "archive-0001").1.targets["2.0.0/manifest.json"];
    assert!(m.custom.as_ref().unwrap()["yanked"].is_object());
}

#[test]
fn tampered_recent_and_archive_roles_are_refused_and_the_app_is_unchanged() {
    let w = world(6);
    for i in 1..=6 {
        release(&w, i);
    }
    let repo_dir = w.repo.display().to_string();
    let pristine = w.path("pristine");
    copy_tree(&w.repo, &pristine);
    let reset = || {
        std::fs::remove_dir_all(&w.repo).unwrap();
        copy_tree(&pristine, &w.repo);
    };

    // recent: one changed length, its signatures kept; snapshot and timestamp re-signed.
    tamper::forge_delegated(&w.repo, &w.key, "recent", |s| {
        s["targets"]["6.0.0/manifest.json"]["length"] = serde_json::json!(1);
    });
    let at5 = w.path("at5");
    copy_tree(&w.releases[4], &at5);
    let before = tree_state(&at5);
    let (done, _, err) = apply_v(&w, "apply", &at5, &repo_dir, &[]);
    assert!(!done, "a forged recent role was accepted");
    assert!(
        err.contains("recent.json") && err.contains("signature"),
        "the error names the role and why: {err}"
    );
    assert_eq!(tree_state(&at5), before);
    reset();

    // An archive chunk, which only an old install reads.
    tamper::forge_delegated(&w.repo, &w.key, "archive-0001", |s| {
        s["targets"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with("1.0.0/"));
    });
    let at1 = w.path("at1");
    copy_tree(&w.releases[0], &at1);
    let before = tree_state(&at1);
    let (done, _, err) = apply_v(&w, "apply", &at1, &repo_dir, &[]);
    assert!(!done, "a forged archive chunk was accepted");
    assert!(
        err.contains("archive-0001.json") && err.contains("signature"),
        "{err}"
    );
    assert_eq!(tree_state(&at1), before);
    reset();

    // A role file changed in place (its snapshot pin no longer matches).
    let v = snapshot(&w.repo).meta["recent.json"].version;
    let p = md(&w.repo, &format!("{v}.recent.json"));
    let mut b = std::fs::read(&p).unwrap();
    let at = b.len() / 2;
    b[at] ^= 1;
    std::fs::write(&p, b).unwrap();
    let (done, _, err) = apply_v(&w, "apply", &at5, &repo_dir, &[]);
    assert!(!done);
    assert!(err.contains("recent.json"), "{err}");
    assert_eq!(tree_state(&at5), before_of(&w, 4));
    reset();

    // `patch-create verify` finds a forged chunk too.
    tamper::forge_delegated(&w.repo, &w.key, "archive-0002", |s| {
        s["expires"] = serde_json::json!("2099-01-01T00:00:00Z");
    });
    let out = run(create()
        .args(["verify", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("archive-0002"), "{text}");
}

fn before_of(w: &World, i: usize) -> std::collections::BTreeMap<String, String> {
    tree_state(&w.releases[i])
}

#[test]
fn a_repository_with_every_target_in_top_level_targets_is_read_and_converted() {
    let w = world(5);
    for i in 1..=4 {
        release(&w, i);
    }
    // The form written before delegations: every target in top-level targets.
    tamper::resign_targets(&w.repo, &[&tamper::load_key(&w.key)], |_| {});
    let (_, top) = role(&w.repo, "targets");
    assert!(top.delegations.is_none());
    assert!(top.targets.contains_key("1.0.0/manifest.json"));
    // Still read: an install at 1.0.0 updates to 4.0.0.
    let at1 = w.path("at1");
    copy_tree(&w.releases[0], &at1);
    let repo_dir = w.repo.display().to_string();
    let (done, _, err) = apply_v(&w, "apply", &at1, &repo_dir, &[]);
    assert!(done, "{err}");
    assert_same_tree(&at1, &w.releases[3]);

    // The next release converts it.
    release(&w, 5);
    let (_, top) = role(&w.repo, "targets");
    assert_eq!(top.targets.keys().collect::<Vec<_>>(), ["repository.json"]);
    assert!(top.delegations.is_some());
    assert_eq!(releases_in(&w.repo, "recent"), ["4.0.0", "5.0.0"]);
    assert_eq!(
        releases_in(&w.repo, "archive-0001"),
        ["1.0.0", "2.0.0", "3.0.0"]
    );
    // The client that trusted the old form follows, and so does a fresh one at 2.0.0.
    let (done, _, err) = apply_v(&w, "apply", &at1, &repo_dir, &[]);
    assert!(done, "{err}");
    assert_same_tree(&at1, &w.releases[4]);
    let at2 = w.path("at2");
    copy_tree(&w.releases[1], &at2);
    let (done, _, err) = apply_v(&w, "apply", &at2, &repo_dir, &[]);
    assert!(done, "{err}");
    assert_same_tree(&at2, &w.releases[4]);
    ok(create()
        .args(["verify", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public));

    // Resign re-signs every role; settings change only top-level targets.
    let (recent_v, _) = role(&w.repo, "recent");
    let (chunk_v, _) = role(&w.repo, "archive-0001");
    ok(create()
        .args(["resign", "--repo"])
        .arg(&w.repo)
        .arg("--key")
        .arg(&w.key));
    assert_eq!(role(&w.repo, "recent").0, recent_v + 1);
    assert_eq!(role(&w.repo, "archive-0001").0, chunk_v + 1);
    let (top_v, _) = role(&w.repo, "targets");
    ok(create()
        .args(["maintenance", "--on", "--message", "later", "--repo"])
        .arg(&w.repo)
        .arg("--key")
        .arg(&w.key));
    assert_eq!(role(&w.repo, "targets").0, top_v + 1);
    assert_eq!(role(&w.repo, "recent").0, recent_v + 1);
    assert_eq!(role(&w.repo, "archive-0001").0, chunk_v + 1);
}
