//! The installer is assembled from the repair files (docs/format.md §6.1, "Frames"): a second
//! release writes only the repair files of its new contents and copies the others into its
//! installer byte for byte; stock `zstd | tar` and the client read the result; fresh installs
//! from it over real HTTP are byte-identical; a damaged repair file or installer is refused by
//! name.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::{assert_same_tree, cmd, fails, last_json, ok, tree_state, ServedRepo, World};

/// Every repair file of the repository: path → (inode, mtime in ns).
fn blobs(repo: &Path) -> BTreeMap<PathBuf, (u64, i64)> {
    let mut out = BTreeMap::new();
    let Ok(dirs) = std::fs::read_dir(repo.join("blobs")) else {
        return out;
    };
    for d in dirs {
        let d = d.expect("blobs dir entry").path();
        for f in std::fs::read_dir(&d).expect("blob dir") {
            let p = f.expect("blob").path();
            let m = std::fs::metadata(&p).expect("blob metadata");
            out.insert(p, (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec()));
        }
    }
    out
}

/// Distinct contents (BLAKE3 hex) of the regular files of a release tree.
fn contents(root: &Path) -> BTreeSet<String> {
    tree_state(root)
        .into_values()
        .filter_map(|v| v.split("blake3=").nth(1).map(str::to_string))
        .collect()
}

/// The repository path of version `v`'s installer.
fn installer_of(repo: &Path, v: &str) -> PathBuf {
    let dir = repo.join("targets").join(v);
    for f in std::fs::read_dir(&dir).expect("targets dir") {
        let p = f.expect("entry").path();
        if p.to_string_lossy().ends_with(".installer.tar.zst") {
            return p;
        }
    }
    panic!("no installer in {}", dir.display());
}

/// `patch-apply apply` of the newest release into `app` over `url` with `method`.
fn fresh_install(w: &World, app: &Path, url: &str, method: &str) -> Command {
    let mut c = cmd("patch-apply");
    c.arg("apply")
        .arg("--app-dir")
        .arg(app)
        .arg("--repo")
        .arg(url)
        .arg("--public-key")
        .arg(&w.public)
        .args(["--json", "--method", method]);
    c
}

#[test]
fn a_second_release_writes_only_new_repair_files_and_its_installer_reuses_the_rest() {
    let w = World::new(2);
    let r1 = w.release(1, &[]);
    let before = blobs(&w.repo);
    assert_eq!(
        r1["installer_build"]["compressed_files"], 0,
        "first release: every file has its repair file: {r1}"
    );
    let r2 = w.release(2, &[]);
    let after = blobs(&w.repo);

    // Every repair file of v1 is untouched (same inode, same mtime): none was rewritten.
    for (p, id) in &before {
        assert_eq!(after.get(p), Some(id), "{} was rewritten", p.display());
    }
    // The new ones are exactly the contents v2 has and v1 had not.
    let new: BTreeSet<String> = after
        .keys()
        .filter(|p| !before.contains_key(*p))
        .map(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".zst"))
                .expect("blob name")
                .to_string()
        })
        .collect();
    let v1 = contents(&w.releases[0]);
    let expected: BTreeSet<String> = contents(&w.releases[1])
        .into_iter()
        .filter(|c| !v1.contains(c))
        .collect();
    assert!(!expected.is_empty(), "the fixture changes some files");
    assert_eq!(new, expected, "new repair files");
    assert_eq!(r2["repair"]["new_files"], expected.len() as u64, "{r2}");

    // The installer copies the repair files: no file compressed again, and the repair file of
    // every non-empty file appears in it byte for byte.
    let b = &r2["installer_build"];
    assert_eq!(b["compressed_files"], 0, "{r2}");
    let nonempty = tree_state(&w.releases[1])
        .keys()
        .filter(|p| {
            let m = std::fs::symlink_metadata(w.releases[1].join(p)).expect("metadata");
            m.is_file() && m.len() > 0
        })
        .count() as u64;
    assert_eq!(b["reused_files"], nonempty, "{r2}");
    let inst = std::fs::read(installer_of(&w.repo, "2.0.0")).expect("installer");
    assert_eq!(b["bytes"], inst.len() as u64);
    let reused: u64 = b["reused_bytes"].as_u64().expect("reused_bytes");
    assert!(
        reused * 100 > inst.len() as u64 * 90,
        "repair files are most of the installer: {reused} of {}",
        inst.len()
    );
    let v2 = contents(&w.releases[1]);
    for p in after.keys() {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let blob = std::fs::read(p).expect("blob");
        if v2.contains(stem) && blob.len() > 64 {
            assert!(
                inst.windows(blob.len()).any(|win| win == blob.as_slice()),
                "{} is not copied into the installer",
                p.display()
            );
            break;
        }
    }

    // Stock tools read it (skippable frames included): `zstd -dc | tar` lists every path.
    let out = Command::new("sh")
        .arg("-c")
        .arg("zstd -dc \"$1\" | tar -t")
        .arg("sh")
        .arg(installer_of(&w.repo, "2.0.0"))
        .output()
        .expect("zstd and tar (apt-get install zstd tar)");
    assert!(out.status.success(), "zstd | tar: {out:?}");
    let listed: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    let want: BTreeSet<String> = tree_state(&w.releases[1]).into_keys().collect();
    assert_eq!(listed, want);

    // `verify` extracts and checks every installer and patch.
    let v = last_json(&ok(cmd("patch-create")
        .args(["verify", "--json", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public)));
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["checked"]["installers"], 2, "{v}");

    // Fresh installs over real HTTP, by the installer and by the repair files: identical trees.
    let srv = ServedRepo::start(&w.repo);
    for method in ["installer", "repair"] {
        let app = w.path(&format!("fresh-{method}"));
        let r = last_json(&ok(&mut fresh_install(&w, &app, &srv.url, method)));
        assert_eq!(r["method"], method);
        assert_eq!(r["to"], "2.0.0");
        assert_same_tree(&app, &w.releases[1]);
    }
}

#[test]
fn a_damaged_repair_file_stops_the_next_release_and_a_damaged_installer_stops_the_install() {
    let w = World::new(3);
    w.release(1, &[]);
    w.release(2, &[]);
    // Damage a repair file of v1 that v3 reuses (a file unchanged from v1 to v3): the next
    // release refuses to copy it into its installer and names it; nothing is published.
    let v3 = contents(&w.releases[2]);
    let victim = blobs(&w.repo)
        .into_keys()
        .find(|p| {
            let c = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            v3.contains(c) && std::fs::metadata(p).map(|m| m.len() > 40).unwrap_or(false)
        })
        .expect("a reused repair file");
    let good = std::fs::read(&victim).expect("blob");
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x55;
    std::fs::write(&victim, &bad).expect("damage");
    let timestamp = std::fs::read(w.repo.join("metadata/timestamp.json")).expect("timestamp");
    let err = fails(
        cmd("patch-create")
            .args(["release", "--name", "demo", "--level", "3", "--repo"])
            .arg(&w.repo)
            .arg("--root")
            .arg(&w.releases[2])
            .args(["--version", "3.0.0", "--key"])
            .arg(&w.key),
    );
    let name = victim.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(err.contains(name), "error names the repair file: {err}");
    assert_eq!(
        std::fs::read(w.repo.join("metadata/timestamp.json")).expect("timestamp"),
        timestamp,
        "nothing published"
    );
    std::fs::write(&victim, &good).expect("repair");
    w.release(3, &[]);

    // A damaged installer on the server: the install is refused naming its URL, the app dir is
    // left without the release.
    let inst = installer_of(&w.repo, "3.0.0");
    let mut bytes = std::fs::read(&inst).expect("installer");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&inst, &bytes).expect("damage installer");
    let srv = ServedRepo::start(&w.repo);
    let app = w.path("fresh");
    let err = fails(&mut fresh_install(&w, &app, &srv.url, "installer"));
    let file = inst.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(err.contains(file), "error names the installer: {err}");
    assert!(
        tree_state(&app).is_empty(),
        "nothing installed: {:?}",
        tree_state(&app)
    );

    // A damaged repair file on the server: the repair method refuses it naming its URL.
    bytes[mid] ^= 0x01;
    std::fs::write(&inst, &bytes).expect("restore installer");
    std::fs::write(&victim, &bad).expect("damage again");
    let err = fails(&mut fresh_install(
        &w,
        &w.path("fresh2"),
        &srv.url,
        "repair",
    ));
    assert!(err.contains(name), "error names the repair file: {err}");
    std::fs::write(&victim, &good).expect("restore");
    let r = last_json(&ok(&mut fresh_install(&w, &app, &srv.url, "installer")));
    assert_eq!(r["to"], "3.0.0");
    assert_same_tree(&app, &w.releases[2]);
}
