//! Offline bundles (issue 20): `patch-create bundle` writes one file; `patch-apply apply
//! --bundle` and the agent's `--watch-dir` verify it with the same TUF checks as online and
//! apply it with no repository and no network; tampering and expiry are refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{assert_same_tree, cmd, copy_tree, fails, last_json, ok, tree_state, World};
use patch_apply::fetch::bundle::{BundleIndex, BundleWriter, INDEX_NAME, SEAL_NAME};

/// Three small releases in a repository.
fn world() -> World {
    let w = World::with_sizes(3, 256 << 10, 128 << 10);
    w.release_all(3);
    w
}

/// `patch-create bundle --json` from `from` versions into `out`; returns the summary.
fn make_bundle(w: &World, from: &[&str], out: &Path) -> serde_json::Value {
    let mut c = cmd("patch-create");
    c.args(["bundle", "--json", "--repo"]).arg(&w.repo);
    for f in from {
        c.args(["--from", f]);
    }
    c.arg("--out").arg(out);
    last_json(&ok(&mut c))
}

/// `patch-apply apply --bundle` (no `--repo`).
fn apply_bundle(w: &World, app: &Path, bundle: &Path) -> Command {
    let mut c = cmd("patch-apply");
    c.args(["apply", "--app-dir"])
        .arg(app)
        .arg("--bundle")
        .arg(bundle)
        .arg("--public-key")
        .arg(&w.public);
    c
}

/// The repository moved out of reach: an apply that still needed it would fail.
struct RepoAway<'a>(&'a World, PathBuf);

impl<'a> RepoAway<'a> {
    fn new(w: &'a World) -> Self {
        let gone = w.path("repo.gone");
        std::fs::rename(&w.repo, &gone).expect("move repo");
        RepoAway(w, gone)
    }
}

impl Drop for RepoAway<'_> {
    fn drop(&mut self) {
        let _ = std::fs::rename(&self.1, &self.0.repo);
    }
}

/// (name, offset of its data, size) of every entry of a bundle.
fn entries(bundle: &Path) -> Vec<(String, u64, u64)> {
    let mut a = tar::Archive::new(std::fs::File::open(bundle).expect("open"));
    a.entries_with_seek()
        .expect("tar")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.path().expect("path").display().to_string(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect()
}

/// Rewrites `bundle` into `out` (sealed again, as an attacker can) with `edit` applied to the
/// content of each entry.
fn repack(bundle: &Path, out: &Path, edit: impl Fn(&str, &mut Vec<u8>)) {
    let bytes = std::fs::read(bundle).expect("read");
    let list = entries(bundle);
    let get = |off: u64, size: u64| bytes[off as usize..(off + size) as usize].to_vec();
    let (_, ioff, isize) = list[0].clone();
    let mut index_bytes = get(ioff, isize);
    edit(INDEX_NAME, &mut index_bytes);
    let index: BundleIndex = serde_json::from_slice(&index_bytes).expect("index");
    let mut w = BundleWriter::create(out, &index).expect("writer");
    for (name, off, size) in &list[1..list.len() - 1] {
        let mut data = get(*off, *size);
        edit(name, &mut data);
        w.add_bytes(name, &data).expect("add");
    }
    assert_eq!(list.last().map(|e| e.0.as_str()), Some(SEAL_NAME));
    w.finish().expect("finish");
}

#[test]
fn a_bundle_from_1_0_0_updates_without_the_repository_byte_identical() {
    let w = world();
    let b = w.path("to-3.bundle");
    let s = make_bundle(&w, &["1.0.0"], &b);
    assert_eq!(s["to"], "3.0.0");
    assert_eq!(s["paths"][0]["from"], "1.0.0");
    assert_eq!(s["paths"][0]["method"], "incremental", "{s}");
    assert_eq!(
        s["size"].as_u64(),
        Some(std::fs::metadata(&b).expect("bundle").len())
    );
    // Only what the path needs: no installer, no patch it does not use.
    let names: Vec<String> = entries(&b).into_iter().map(|e| e.0).collect();
    assert!(
        names.iter().all(|n| !n.ends_with("installer.tar.zst")),
        "{names:?}"
    );
    let chain: Vec<&str> = s["paths"][0]["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let patches: Vec<&String> = names.iter().filter(|n| n.ends_with(".patch")).collect();
    assert_eq!(patches.len(), chain.len(), "{names:?}");
    assert!(names.iter().any(|n| n == "metadata/timestamp.json"));
    assert!(names.iter().any(|n| n == "metadata/1.root.json"));

    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let away = RepoAway::new(&w);
    let out = ok(apply_bundle(&w, &app, &b).arg("--json"));
    assert_eq!(last_json(&out)["to"], "3.0.0", "{out}");
    assert_same_tree(&app, &w.releases[2]);
    // Applying it again: up to date, nothing changes.
    let out = ok(&mut apply_bundle(&w, &app, &b));
    assert!(out.contains("up to date"), "{out}");
    drop(away);

    // An unknown --from names the versions the repository has.
    let e = fails(
        cmd("patch-create")
            .args(["bundle", "--repo"])
            .arg(&w.repo)
            .args(["--from", "0.9.0", "--out"])
            .arg(w.path("x.bundle")),
    );
    assert!(
        e.contains("0.9.0") && e.contains("1.0.0, 2.0.0, 3.0.0"),
        "{e}"
    );
    assert!(!w.path("x.bundle").exists());
}

#[test]
fn one_bundle_serves_several_starting_versions() {
    let w = world();
    let b = w.path("multi.bundle");
    let s = make_bundle(&w, &["1.0.0", "2.0.0"], &b);
    assert_eq!(s["paths"].as_array().map(Vec::len), Some(2), "{s}");
    let _away = RepoAway::new(&w);
    for (i, start) in [0usize, 1].into_iter().enumerate() {
        let app = w.path(&format!("app{i}"));
        copy_tree(&w.releases[start], &app);
        ok(&mut apply_bundle(&w, &app, &b));
        assert_same_tree(&app, &w.releases[2]);
    }
    // An install whose files were modified needs the repair files: refused without them,
    // updated with --with-repair-files.
    let edited = w.path("app-edited");
    copy_tree(&w.releases[0], &edited);
    let newest = tree_state(&w.releases[2]);
    let victim = tree_state(&edited)
        .into_iter()
        .find(|(k, v)| {
            v.starts_with("file") && newest.get(k).is_some_and(|n| n.starts_with("file"))
        })
        .map(|(k, _)| k)
        .expect("a file in both releases");
    std::fs::write(edited.join(&victim), b"edited by the user").expect("edit");
    let before = tree_state(&edited);
    fails(&mut apply_bundle(&w, &edited, &b));
    assert_eq!(tree_state(&edited), before);
    drop(_away);
    let full = w.path("full.bundle");
    let mut c = cmd("patch-create");
    c.args(["bundle", "--json", "--with-repair-files", "--repo"])
        .arg(&w.repo)
        .args(["--from", "1.0.0", "--out"])
        .arg(&full);
    let fs = last_json(&ok(&mut c));
    assert!(fs["size"].as_u64() > s["size"].as_u64(), "{fs} vs {s}");
    let _away = RepoAway::new(&w);
    ok(&mut apply_bundle(&w, &edited, &full));
    assert_same_tree(&edited, &w.releases[2]);

    // check --bundle says what apply would do, also offline.
    let app = w.path("app-check");
    copy_tree(&w.releases[0], &app);
    let mut c = cmd("patch-apply");
    c.args(["check", "--json", "--app-dir"])
        .arg(&app)
        .arg("--bundle")
        .arg(&b)
        .arg("--public-key")
        .arg(&w.public);
    let r = last_json(&ok(&mut c));
    assert_eq!(r["latest"], "3.0.0", "{r}");
    assert_eq!(r["installed"], "1.0.0", "{r}");
}

#[test]
fn a_flipped_byte_anywhere_in_a_bundle_is_refused_and_the_app_is_unchanged() {
    let w = world();
    let b = w.path("good.bundle");
    make_bundle(&w, &["1.0.0"], &b);
    let good = std::fs::read(&b).expect("read");
    let list = entries(&b);
    let at = |name: &dyn Fn(&str) -> bool| {
        list.iter()
            .find(|e| name(&e.0))
            .map(|e| e.1 + e.2 / 2)
            .expect("entry")
    };
    let offsets = [
        ("first tar header", 100),
        ("index", at(&|n| n == INDEX_NAME)),
        ("timestamp", at(&|n| n == "metadata/timestamp.json")),
        ("targets", at(&|n| n.ends_with(".targets.json"))),
        ("a patch", at(&|n| n.ends_with(".patch"))),
        ("a tar header", list[3].1 - 512 + 10),
        ("seal", at(&|n| n == SEAL_NAME)),
        ("end of archive", good.len() as u64 - 100),
    ];
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let before = tree_state(&app);
    let _away = RepoAway::new(&w);
    let bad = w.path("bad.bundle");
    for (what, off) in offsets {
        let mut bytes = good.clone();
        bytes[off as usize] ^= 0x20;
        std::fs::write(&bad, &bytes).expect("write");
        let e = fails(&mut apply_bundle(&w, &app, &bad));
        assert!(e.contains("bad.bundle"), "{what} at {off}: {e}");
        assert_eq!(tree_state(&app), before, "{what} at {off} changed the app");
    }
    // Cut short.
    std::fs::write(&bad, &good[..good.len() / 2]).expect("write");
    fails(&mut apply_bundle(&w, &app, &bad));
    assert_eq!(tree_state(&app), before);
}

#[test]
fn a_resealed_tampered_bundle_is_refused_by_the_signed_metadata() {
    // The seal is not a signature: an attacker can seal an edited bundle again. The signed
    // metadata still refuses it, naming the file.
    let w = world();
    let b = w.path("good.bundle");
    make_bundle(&w, &["1.0.0"], &b);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let before = tree_state(&app);
    let _away = RepoAway::new(&w);
    let flip = |d: &mut Vec<u8>| {
        let i = d.len() / 2;
        d[i] ^= 0x01;
    };
    let cases: [(&str, EntryPick); 4] = [
        ("timestamp", |n| n == "metadata/timestamp.json"),
        ("snapshot", |n| n.ends_with(".snapshot.json")),
        ("targets", |n| n.ends_with(".targets.json")),
        ("manifest", |n| {
            n.contains("3.0.0/") && n.ends_with("manifest.json")
        }),
    ];
    let bad = w.path("resealed.bundle");
    for (what, pick) in cases {
        repack(&b, &bad, |n, d| {
            if pick(n) {
                flip(d)
            }
        });
        let e = fails(&mut apply_bundle(&w, &app, &bad));
        assert!(
            e.contains("signature")
                || e.contains("hash")
                || e.contains("mismatch")
                || e.contains("json"),
            "{what}: {e}"
        );
        assert_eq!(tree_state(&app), before, "{what} changed the app");
        // Nothing of it was trusted: a fresh state still takes the good bundle later.
    }
    // A tampered patch is refused before use; the update falls back to the repair files the
    // bundle carries, or fails with the app unchanged.
    repack(&b, &bad, |n, d| {
        if n.ends_with(".patch") {
            flip(d)
        }
    });
    let out = apply_bundle(&w, &app, &bad).output().expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        assert!(
            text.contains("fell back") || text.contains("failed"),
            "{text}"
        );
        assert_same_tree(&app, &w.releases[2]);
    } else {
        assert_eq!(tree_state(&app), before, "{text}");
    }
    // An edited index (another target) does not make the client install anything unsigned.
    repack(&b, &bad, |n, d| {
        if n == INDEX_NAME {
            let s = String::from_utf8_lossy(d).replace("\"3.0.0\"", "\"9.0.0\"");
            *d = s.into_bytes();
        }
    });
    let app2 = w.path("app2");
    copy_tree(&w.releases[0], &app2);
    ok(&mut apply_bundle(&w, &app2, &bad));
    assert_same_tree(&app2, &w.releases[2]);
}

/// Chooses bundle entries by name.
type EntryPick = fn(&str) -> bool;

/// Seconds until `t` (TUF time), at least 0.
fn secs_until(t: &str) -> f64 {
    let t = formats::time_util::parse_tuf(t).expect("time");
    (t - formats::time_util::now()).as_seconds_f64().max(0.0)
}

#[test]
fn expired_bundles_are_refused_unless_allowed_and_valid_when_made_and_not_a_rollback() {
    let w = World::with_sizes(3, 256 << 10, 128 << 10);
    w.release(1, &[]);
    w.release(2, &[]);
    w.release(3, &["--expires", "10s", "--expires-short-ok"]);
    let b = w.path("short.bundle");
    let s = make_bundle(&w, &["1.0.0"], &b);
    let expires = s["expires"].as_str().expect("expires").to_string();
    std::thread::sleep(Duration::from_secs_f64(secs_until(&expires) + 1.5));

    // Made after expiry: the creator refuses.
    let e = fails(
        cmd("patch-create")
            .args(["bundle", "--repo"])
            .arg(&w.repo)
            .args(["--from", "1.0.0", "--out"])
            .arg(w.path("late.bundle")),
    );
    assert!(e.contains("expired"), "{e}");

    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let before = tree_state(&app);
    {
        let _away = RepoAway::new(&w);
        // By default an expired bundle is refused like expired online metadata.
        let e = fails(&mut apply_bundle(&w, &app, &b));
        assert!(e.contains("expired"), "{e}");
        assert_eq!(tree_state(&app), before);

        // An index claiming a creation time after expiry (the index is not signed) is no way
        // around it: the metadata was not valid then.
        let forged = w.path("forged.bundle");
        let now = formats::time_util::format_tuf(formats::time_util::now());
        repack(&b, &forged, |n, d| {
            if n == INDEX_NAME {
                let mut i: BundleIndex = serde_json::from_slice(d).expect("index");
                i.created = now.clone();
                *d = serde_json::to_vec(&i).expect("json");
            }
        });
        let e = fails(apply_bundle(&w, &app, &forged).arg("--allow-expired-bundle"));
        assert!(e.contains("expired"), "{e}");
        assert_eq!(tree_state(&app), before);

        // Allowed, and valid when it was made: applied.
        ok(apply_bundle(&w, &app, &b).arg("--allow-expired-bundle"));
        assert_same_tree(&app, &w.releases[2]);
    }

    // A device that already trusts newer metadata refuses the old bundle even when expired
    // bundles are allowed: rollback protection holds.
    ok(cmd("patch-create")
        .args(["resign", "--repo"])
        .arg(&w.repo)
        .arg("--key")
        .arg(&w.key)
        .args(["--expires", "30d"]));
    let app2 = w.path("app2");
    copy_tree(&w.releases[0], &app2);
    ok(&mut w.apply_cmd("apply", &app2));
    assert_same_tree(&app2, &w.releases[2]);
    let _away = RepoAway::new(&w);
    let e = fails(apply_bundle(&w, &app2, &b).arg("--allow-expired-bundle"));
    assert!(e.contains("rollback") || e.contains("older"), "{e}");
    assert_same_tree(&app2, &w.releases[2]);
    // The override is for bundles only.
    let e = fails(w.apply_cmd("apply", &app2).arg("--allow-expired-bundle"));
    assert!(e.contains("bundles only"), "{e}");
}

/// The agent, without a fleet server, watching `dir`.
fn start_agent(w: &World, app: &Path, dir: &Path, log: &Path) -> Child {
    Command::new(e2e_tests::bin("patch-apply"))
        .args(["agent", "--json", "--interval", "1s", "--app-dir"])
        .arg(app)
        .arg("--public-key")
        .arg(&w.public)
        .arg("--watch-dir")
        .arg(dir)
        .stdout(std::fs::File::create(log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts")
}

fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_agent_applies_a_bundle_dropped_in_its_watch_dir_and_rejects_a_tampered_one() {
    let w = world();
    let b = w.path("made.bundle");
    make_bundle(&w, &["1.0.0"], &b);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    // An install the agent knows (the updater's state directory exists).
    std::fs::create_dir_all(app.join(".patchkit")).expect("state dir");
    let dir = w.path("drop");
    std::fs::create_dir_all(&dir).expect("dir");
    // A tampered copy sorts first (same target): it must be rejected, the good one applied.
    let mut bytes = std::fs::read(&b).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(dir.join("a-tampered.bundle"), &bytes).expect("write");
    std::fs::copy(&b, dir.join("b-good.bundle")).expect("copy");
    std::fs::write(dir.join("notes.txt"), b"not a bundle").expect("write");

    let _away = RepoAway::new(&w);
    let log = w.path("agent.log");
    let mut agent = start_agent(&w, &app, &dir, &log);
    wait_for(
        "the good bundle to be applied",
        Duration::from_secs(60),
        || dir.join("applied/b-good.bundle").exists(),
    );
    assert_same_tree(&app, &w.releases[2]);
    assert!(dir.join("rejected/a-tampered.bundle").exists());
    let reason =
        std::fs::read_to_string(dir.join("rejected/a-tampered.bundle.reason")).expect("reason");
    assert!(reason.contains("damaged"), "{reason}");
    assert!(dir.join("notes.txt").exists(), "other files are left alone");

    // Something that is no bundle at all is rejected too, with the reason.
    std::fs::write(dir.join("c-garbage.bundle"), b"garbage").expect("write");
    wait_for(
        "the garbage bundle to be rejected",
        Duration::from_secs(30),
        || dir.join("rejected/c-garbage.bundle.reason").exists(),
    );
    // A bundle for the installed release is put away without an attempt.
    std::fs::copy(&b, dir.join("d-old.bundle")).expect("copy");
    wait_for(
        "the superseded bundle to be put away",
        Duration::from_secs(30),
        || dir.join("applied/d-old.bundle").exists(),
    );
    // Several more polls: nothing rejected is tried again.
    std::thread::sleep(Duration::from_secs(3));
    let _ = agent.kill();
    let _ = agent.wait();
    let events = std::fs::read_to_string(&log).expect("log");
    let attempts = events
        .lines()
        .filter(|l| l.contains("update_failed"))
        .count();
    assert_eq!(attempts, 1, "{events}");
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("\"installed\""))
            .count(),
        1,
        "{events}"
    );
    // Every attempt is queued for the fleet server like any other update.
    let q: serde_json::Value = serde_json::from_slice(
        &std::fs::read(app.join(".patchkit/results.json")).expect("results queue"),
    )
    .expect("json");
    let entries = q["entries"].as_array().expect("entries");
    assert!(
        entries
            .iter()
            .any(|e| e["ok"] == true && e["to"] == "3.0.0"),
        "{q}"
    );
    assert_eq!(
        entries.iter().filter(|e| e["ok"] == false).count(),
        1,
        "{q}"
    );
    assert_same_tree(&app, &w.releases[2]);
}
