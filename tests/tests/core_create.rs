//! Acceptance of "Core 1": `patch-create` writes a repository that `verify` accepts, refuses bad
//! input with the repository unchanged, and detects any changed byte.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
use std::collections::BTreeMap;
use std::path::Path;

use e2e_tests::*;

fn repo_state(repo: &Path) -> BTreeMap<String, String> {
    let mut s = tree_state(repo);
    s.remove(".patch-create.lock");
    s
}

fn verify(w: &World) -> std::process::Output {
    run(cmd("patch-create")
        .args(["verify", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public))
}

#[test]
fn three_releases_verify_and_every_changed_byte_is_named() {
    // Small big/renamed files keep 100+ verify runs fast; every change kind is still there.
    let w = World::with_sizes(3, 128 << 10, 64 << 10);
    let r1 = w.release(1, &[]);
    assert!(r1["patches"].as_array().unwrap().is_empty());
    let r2 = w.release(2, &[]);
    assert_eq!(r2["patches"][0]["from"], "1.0.0");
    let r3 = w.release(3, &[]);
    assert_eq!(r3["patches"][0]["from"], "2.0.0");
    // Every change kind of the fixtures shows up as an encoding or a delete.
    let enc = &r2["patches"][0]["encodings"];
    assert!(
        enc["copy"].as_u64().unwrap() >= 2,
        "renames become copies: {enc}"
    );
    assert!(r2["patches"][0]["deletes"].as_u64().unwrap() >= 1);
    let out = verify(&w);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OK"), "{text}");
    assert!(
        text.contains("from 2.0.0"),
        "size report lists patches: {text}"
    );

    // Flip one byte in every file of the repository, one at a time; four workers, each on its
    // own copy of the repository.
    let files: Vec<_> = walk_files(&w.repo)
        .into_iter()
        .map(|f| {
            f.strip_prefix(&w.repo)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|rel| rel != ".patch-create.lock")
        .collect();
    assert!(files.len() > 50, "repository has {} files", files.len());
    let workers = 4;
    std::thread::scope(|scope| {
        for k in 0..workers {
            let files = &files;
            let w = &w;
            scope.spawn(move || {
                let copy = w.path(&format!("repo-copy-{k}"));
                copy_tree(&w.repo, &copy);
                for rel in files.iter().skip(k).step_by(workers) {
                    let f = copy.join(rel);
                    let orig = std::fs::read(&f).unwrap();
                    let mut bad = orig.clone();
                    let i = bad.len() / 2;
                    bad[i] ^= 0x20;
                    std::fs::write(&f, &bad).unwrap();
                    let out = run(cmd("patch-create")
                        .args(["verify", "--repo"])
                        .arg(&copy)
                        .arg("--public-key")
                        .arg(&w.public));
                    std::fs::write(&f, &orig).unwrap();
                    assert!(
                        !out.status.success(),
                        "verify accepted a changed byte in {rel}"
                    );
                    let all = format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let name = Path::new(rel)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    let short = &name[..name.len().min(16)];
                    assert!(
                        all.contains(short),
                        "verify output does not name {rel}:\n{all}"
                    );
                }
            });
        }
    });
    assert!(verify(&w).status.success());
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn renamed_10mb_file_adds_under_1kb() {
    let w = World::new(1);
    let a = w.path("a");
    let b = w.path("b");
    std::fs::create_dir_all(a.join("data/assets")).unwrap();
    std::fs::create_dir_all(b.join("data/packs")).unwrap();
    let big = fixtures::binary_like(99, 10 << 20);
    std::fs::write(a.join("data/assets/pack-v1.bin"), &big).unwrap();
    std::fs::write(b.join("data/packs/pack.bin"), &big).unwrap();
    for (i, t) in [&a, &b].iter().enumerate() {
        ok(cmd("patch-create")
            .args(["release", "--json", "--level", "1", "--repo"])
            .arg(&w.repo)
            .arg("--root")
            .arg(t)
            .args(["--version", &format!("{}.0.0", i + 1), "--key"])
            .arg(&w.key));
    }
    let out = ok(cmd("patch-create")
        .args(["verify", "--json", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public));
    let v = last_json(&out);
    let bytes = v["versions"][1]["patches"][0]["bytes"].as_u64().unwrap();
    assert!(
        bytes < 1024,
        "patch for a renamed 10 MB file is {bytes} bytes"
    );
}

fn refused(w: &World, args: &[&str], expect: &str) {
    let before = repo_state(&w.repo);
    let err = fails(cmd("patch-create").args(args));
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "expected {expect:?} in: {err}"
    );
    assert!(err.starts_with("error: "), "one clear line: {err}");
    assert_eq!(
        repo_state(&w.repo),
        before,
        "repository changed after a refused release"
    );
}

#[test]
fn bad_input_is_refused_and_repository_unchanged() {
    let w = World::new(2);
    w.release(1, &[]);
    let repo = w.repo.to_str().unwrap().to_string();
    let key = w.key.to_str().unwrap().to_string();
    let v2 = w.releases[1].to_str().unwrap().to_string();
    let base = |root: &str, version: &str, key: &str| -> Vec<String> {
        [
            "release",
            "--repo",
            &repo,
            "--root",
            root,
            "--version",
            version,
            "--key",
            key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let go = |args: Vec<String>, expect: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&w, &a, expect);
    };
    // Missing tree.
    go(
        base(w.path("nope").to_str().unwrap(), "2.0.0", &key),
        "nope",
    );
    // Version not increasing.
    go(base(&v2, "1.0.0", &key), "not greater");
    go(base(&v2, "0.9.0", &key), "not greater");
    go(base(&v2, "1.0", &key), "semantic version");
    // Wrong key.
    let other = w.path("other-keys");
    ok(cmd("patch-create").args(["keygen", "--out"]).arg(&other));
    go(
        base(&v2, "2.0.0", other.join("release.key").to_str().unwrap()),
        "cannot sign",
    );
    // Unreadable key: missing, garbage, the public half.
    go(
        base(&v2, "2.0.0", w.path("missing.key").to_str().unwrap()),
        "missing.key",
    );
    std::fs::write(w.path("garbage.key"), b"not a key").unwrap();
    go(
        base(&v2, "2.0.0", w.path("garbage.key").to_str().unwrap()),
        "garbage.key",
    );
    go(base(&v2, "2.0.0", w.public.to_str().unwrap()), "private");
    // A symlink pointing outside the tree.
    let t = w.path("escape");
    copy_tree(&w.releases[1], &t);
    std::os::unix::fs::symlink("../../etc/passwd", t.join("bin/evil")).unwrap();
    go(base(t.to_str().unwrap(), "2.0.0", &key), "outside the tree");
    // A path that is not valid UTF-8.
    let t = w.path("nonutf8");
    copy_tree(&w.releases[1], &t);
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(t.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name")), b"x").unwrap();
    go(base(t.to_str().unwrap(), "2.0.0", &key), "UTF-8");
    // A device-like special file (FIFO).
    let t = w.path("fifo");
    copy_tree(&w.releases[1], &t);
    assert!(std::process::Command::new("mkfifo")
        .arg(t.join("pipe"))
        .status()
        .unwrap()
        .success());
    go(
        base(t.to_str().unwrap(), "2.0.0", &key),
        "not a regular file",
    );
    // A tree that is a file.
    go(
        base(w.key.to_str().unwrap(), "2.0.0", &key),
        "not a directory",
    );
    // After all that, a good release still works and verifies.
    w.release(2, &[]);
    ok(cmd("patch-create")
        .args(["verify", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public));
}

#[test]
fn release_without_prev_root_equals_release_with_prev_root() {
    // The previous tree is rebuilt from the repository; giving it explicitly must not change
    // the result (same patch content).
    let w = World::new(2);
    w.release(1, &[]);
    let a = w.release(2, &[]);
    let w2 = World::new(2);
    w2.release(1, &[]);
    let prev = w2.releases[0].to_str().unwrap().to_string();
    let b = w2.release(2, &["--prev-root", &prev]);
    assert_eq!(a["patches"][0]["bytes"], b["patches"][0]["bytes"]);
    assert_eq!(a["patches"][0]["encodings"], b["patches"][0]["encodings"]);
}

#[test]
fn patches_from_all_and_keep_prune_old_versions() {
    let w = World::new(3);
    w.release(1, &[]);
    w.release(2, &[]);
    let r3 = w.release(3, &["--patches-from-all", "--keep", "2"]);
    let froms: Vec<_> = r3["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["from"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(froms, ["1.0.0", "2.0.0"]);
    assert_eq!(r3["pruned"][0], "1.0.0");
    let out = ok(cmd("patch-create")
        .args(["verify", "--json", "--repo"])
        .arg(&w.repo)
        .arg("--public-key")
        .arg(&w.public));
    let v = last_json(&out);
    let versions: Vec<_> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(versions, ["2.0.0", "3.0.0"]);
    assert!(
        v["unreferenced"].as_array().unwrap().is_empty(),
        "pruned files are removed: {}",
        v["unreferenced"]
    );
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new(1);
    let mode = std::fs::metadata(&w.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let err = fails(
        cmd("patch-create")
            .args(["keygen", "--out"])
            .arg(w.key.parent().unwrap()),
    );
    assert!(err.contains("overwrite"), "{err}");
}
