//! Flip bytes across every artifact of a fixture repository: each update either refuses,
//! leaving the app dir unchanged, or ends byte-identical to the new release. Never anything
//! else. Runs the library (`patch_apply::Updater` over a local repository copy) for speed.
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use e2e_tests::*;
use patch_apply::{Config, Method, MethodChoice, Updater};

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn text(seed: u64, n: usize) -> Vec<u8> {
    bytes(seed, n)
        .into_iter()
        .map(|b| b"abcdefgh ijklmnop\n"[(b % 18) as usize])
        .collect()
}

fn write(root: &Path, rel: &str, data: &[u8], exec: bool) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    if exec {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Two small releases with every kind of entry and every kind of change.
fn trees(dir: &Path) -> (PathBuf, PathBuf) {
    let (v1, v2) = (dir.join("v1"), dir.join("v2"));
    let app = bytes(1, 24_000);
    write(&v1, "bin/app", &app, true);
    write(&v1, "data/a.txt", &text(2, 3_000), false);
    write(&v1, "data/b.bin", &bytes(3, 12_000), false);
    write(&v1, "data/keep.txt", &text(4, 500), false);
    std::fs::create_dir_all(v1.join("empty")).unwrap();
    std::os::unix::fs::symlink("data", v1.join("current")).unwrap();
    let mut app2 = app.clone();
    app2[10_000..10_300].copy_from_slice(&bytes(5, 300));
    app2.extend(bytes(6, 2_000));
    write(&v2, "bin/app", &app2, true);
    let mut a2 = text(2, 3_000);
    a2.extend(text(7, 800));
    write(&v2, "data/a.txt", &a2, false);
    write(&v2, "data/c.txt", &text(8, 1_500), false);
    write(&v2, "data/keep.txt", &text(4, 500), false);
    std::fs::create_dir_all(v2.join("empty")).unwrap();
    std::os::unix::fs::symlink("data/a.txt", v2.join("current")).unwrap();
    (v1, v2)
}

fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with(".patch-create.lock") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Positions to flip in each file: every byte of small files, evenly spread positions in the
/// others (at least `min_total` overall).
fn plan(list: &[(PathBuf, u64)], min_total: u64) -> Vec<(PathBuf, u64)> {
    const SMALL: u64 = 700;
    let mut out = Vec::new();
    let large: u64 = list
        .iter()
        .filter(|(_, n)| *n > SMALL)
        .map(|(_, n)| *n)
        .sum();
    for (p, n) in list {
        if *n <= SMALL {
            out.extend((0..*n).map(|i| (p.clone(), i)));
        } else {
            let k = (min_total * n / large.max(1)).clamp(40, *n);
            out.extend((0..k).map(|i| (p.clone(), i * n / k)));
        }
    }
    out
}

fn method_for(rel: &str) -> MethodChoice {
    if rel.starts_with("blobs/") {
        MethodChoice::Only(Method::Repair)
    } else if rel.ends_with(".patch") {
        MethodChoice::Only(Method::Incremental)
    } else if rel.contains("installer") {
        MethodChoice::Only(Method::Installer)
    } else {
        MethodChoice::Auto
    }
}

#[test]
fn flipped_bytes_in_any_artifact_refuse_or_give_the_new_release() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = trees(dir.path());
    let keys = dir.path().join("keys");
    ok(cmd("patch-create").args(["keygen", "--out"]).arg(&keys));
    let repo = dir.path().join("repo");
    for (t, v) in [(&v1, "1.0.0"), (&v2, "2.0.0")] {
        ok(cmd("patch-create")
            .args(["release", "--name", "demo", "--level", "3", "--repo"])
            .arg(&repo)
            .arg("--root")
            .arg(t)
            .args(["--version", v, "--key"])
            .arg(keys.join("release.key")));
    }
    let pubkey = formats::keys::PublicKey::from_json(
        "pub",
        &std::fs::read(keys.join("release.pub")).unwrap(),
    )
    .unwrap();
    let (s1, s2) = (tree_state(&v1), tree_state(&v2));
    let list: Vec<(PathBuf, u64)> = files(&repo)
        .into_iter()
        .map(|p| {
            let n = std::fs::metadata(&p).unwrap().len();
            (p.strip_prefix(&repo).unwrap().to_path_buf(), n)
        })
        .collect();
    let runs = plan(&list, 2_000);
    assert!(runs.len() >= 2_000, "{} runs", runs.len());
    // Two workers, each with its own repository copy and app dir.
    let workers = 2;
    let outcomes: Vec<BTreeMap<String, (u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let runs: Vec<&(PathBuf, u64)> = runs.iter().skip(w).step_by(workers).collect();
                let (repo, v1, pubkey, s1, s2) = (&repo, &v1, &pubkey, &s1, &s2);
                let base = dir.path().join(format!("w{w}"));
                s.spawn(move || {
                    let my_repo = base.join("repo");
                    std::fs::create_dir_all(&base).unwrap();
                    copy_tree(repo, &my_repo);
                    let app = base.join("app");
                    copy_tree(v1, &app);
                    // file -> (refused, updated)
                    let mut tally: BTreeMap<String, (u64, u64)> = BTreeMap::new();
                    for (rel, pos) in runs {
                        let path = my_repo.join(rel);
                        let orig = std::fs::read(&path).unwrap();
                        let mut bad = orig.clone();
                        bad[*pos as usize] ^= 0x01;
                        std::fs::write(&path, &bad).unwrap();
                        let rel_s = rel.to_string_lossy().into_owned();
                        let mut cfg = Config::new(&app, my_repo.to_string_lossy().into_owned(), pubkey.clone());
                        cfg.check_running = false;
                        cfg.method = method_for(&rel_s);
                        let result = Updater::new(cfg, |_| {}).apply();
                        let after = tree_state(&app);
                        let t = tally.entry(rel_s.clone()).or_default();
                        match &result {
                            Ok(_) => {
                                assert!(&after == s2, "{rel_s}@{pos}: update succeeded but the app dir is not release 2");
                                t.1 += 1;
                            }
                            Err(e) => {
                                assert!(&after == s1, "{rel_s}@{pos}: refused ({e}) but the app dir changed");
                                t.0 += 1;
                            }
                        }
                        std::fs::write(&path, &orig).unwrap();
                        if &after != s1 {
                            std::fs::remove_dir_all(&app).unwrap();
                            copy_tree(v1, &app);
                        }
                        let _ = std::fs::remove_dir_all(app.join(".patchkit"));
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for o in outcomes {
        for (k, (a, b)) in o {
            let t = total.entry(k).or_default();
            t.0 += a;
            t.1 += b;
        }
    }
    eprintln!("{} flips; per file (refused, updated):", runs.len());
    for (k, v) in &total {
        eprintln!("  {k}: {v:?}");
    }
    // The metadata and artifacts this update reads never accept a flipped byte (older
    // versions' files are not read at all, and repair files only matter when used).
    let used = |k: &str| {
        [
            "metadata/1.root.json",
            "metadata/timestamp.json",
            "metadata/2.snapshot.json",
            "metadata/1.targets.json",
            "metadata/2.recent.json",
        ]
        .contains(&k)
            || k.starts_with("targets/2.0.0/")
            || k.ends_with(".repository.json")
    };
    for (k, (_, updated)) in &total {
        if used(k) {
            assert_eq!(*updated, 0, "{k}: a flipped byte was accepted");
        }
    }
}
