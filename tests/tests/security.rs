//! One test per attack on the updater: each hostile repository is refused and the app dir is
//! left byte-identical (docs/security.md maps attacks to these tests). Hostile archives and
//! paths are signed with the repository key (the attacker-holds-the-signing-key case), so they
//! reach the archive and path parsers instead of stopping at a signature check.
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
use std::path::{Path, PathBuf};

use e2e_tests::tamper::{self, artifact, raw_tar_entry, tar_end};
use e2e_tests::*;
use formats::container::ArtifactKind;
use tar::EntryType;

/// A world with releases 1 and 2 and an app dir at 1.0.0.
fn world_at_v1() -> (World, PathBuf) {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    (w, app)
}

/// `patch-apply apply` must fail mentioning `expect`, leaving the app dir unchanged.
fn refused(w: &World, app: &Path, extra: &[&str], expect: &str) -> String {
    let before = tree_state(app);
    let err = fails(w.apply_cmd("apply", app).arg("--json").args(extra));
    assert!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "error should mention {expect:?}: {err}"
    );
    assert_eq!(
        tree_state(app),
        before,
        "app dir changed after a refused update"
    );
    err
}

fn key(w: &World) -> formats::keys::KeyPair {
    tamper::load_key(&w.key)
}

// ---- Repository-level attacks (no signing key) ----

#[test]
fn artifact_not_in_signed_metadata_is_refused() {
    let (w, app) = world_at_v1();
    // Replace the signed patch by other bytes (the v1 installer) under the same name.
    let patch = tamper::target_path(&w.repo, "2.0.0/patch-from-1.0.0.patch");
    let inst = tamper::target_bytes(&w.repo, "1.0.0/installer.tar.zst");
    std::fs::write(&patch, &inst).unwrap();
    refused(
        &w,
        &app,
        &["--method", "incremental"],
        "patch-from-1.0.0.patch",
    );
    // An unlisted release dropped into targets/ is never offered.
    let manifest = tamper::target_bytes(&w.repo, "2.0.0/manifest.json");
    std::fs::create_dir_all(w.repo.join("targets/9.0.0")).unwrap();
    std::fs::write(w.repo.join("targets/9.0.0/manifest.json"), manifest).unwrap();
    let r = last_json(&ok(w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(r["latest"], "2.0.0");
}

#[test]
fn mix_and_match_of_metadata_from_two_releases_is_refused() {
    let (w, app) = world_at_v1();
    // Serve release 1's targets metadata (the delegated role `recent`, which lists the
    // releases) under release 2's name: snapshot pins it by hash.
    let md = w.repo.join("metadata");
    std::fs::copy(md.join("1.recent.json"), md.join("2.recent.json")).unwrap();
    refused(&w, &app, &[], "2.recent.json");
}

#[test]
fn mix_and_match_of_artifacts_from_two_releases_is_refused() {
    let (w, app) = world_at_v1();
    // Release 2's installer path serves release 1's installer.
    let v1 = tamper::target_bytes(&w.repo, "1.0.0/installer.tar.zst");
    std::fs::write(tamper::target_path(&w.repo, "2.0.0/installer.tar.zst"), v1).unwrap();
    refused(&w, &app, &["--method", "installer"], "installer");
    // Release 2's manifest path serves release 1's manifest.
    let m1 = tamper::target_bytes(&w.repo, "1.0.0/manifest.json");
    std::fs::write(tamper::target_path(&w.repo, "2.0.0/manifest.json"), m1).unwrap();
    refused(&w, &app, &[], "manifest.json");
}

#[test]
fn endless_data_oversized_metadata_is_refused() {
    let (w, app) = world_at_v1();
    let ts = w.repo.join("metadata/timestamp.json");
    let mut big = std::fs::read(&ts).unwrap();
    big.resize(5 << 20, b' ');
    std::fs::write(&ts, big).unwrap();
    refused(&w, &app, &[], "exceeds the limit");
}

#[test]
fn endless_data_oversized_artifact_is_refused() {
    let (w, app) = world_at_v1();
    // A patch that goes on past its signed length.
    let p = tamper::target_path(&w.repo, "2.0.0/patch-from-1.0.0.patch");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 8 << 20));
    std::fs::write(&p, bytes).unwrap();
    refused(
        &w,
        &app,
        &["--method", "incremental"],
        "patch-from-1.0.0.patch",
    );
    // A snapshot longer than timestamp pins. The client kept snapshot v2 from the refusal
    // above and reuses it while timestamp pins its version (TUF 5.5): forget it, so that the
    // tampered one is fetched.
    let _ = std::fs::remove_file(app.join(".patchkit").join("trust").join("snapshot.json"));
    let md = w.repo.join("metadata");
    let mut s = std::fs::read(md.join("2.snapshot.json")).unwrap();
    s.extend(std::iter::repeat_n(b' ', 1 << 20));
    std::fs::write(md.join("2.snapshot.json"), s).unwrap();
    refused(&w, &app, &[], "snapshot");
}

// ---- Hostile installer archives, signed by the attacker ----

/// Replaces release 2's installer by `tar` (header + zstd) signed with the repository key, and
/// expects `--method installer` to refuse it.
fn hostile_installer(tar: Vec<u8>, expect: &str) {
    let (w, app) = world_at_v1();
    let bytes = artifact(ArtifactKind::Installer, &tar);
    tamper::replace_target(&w.repo, &[&key(&w)], "2.0.0/installer.tar.zst", &bytes);
    refused(&w, &app, &["--method", "installer"], expect);
    assert!(
        !w.path("evil").exists() && !w.path("app/../evil").exists(),
        "wrote outside the app dir"
    );
}

fn entries(list: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = list.concat();
    out.extend(tar_end());
    out
}

#[test]
fn installer_with_absolute_path_is_refused() {
    let evil = std::env::temp_dir().join("patchkit-evil-absolute");
    let name = evil.to_str().unwrap().as_bytes().to_vec();
    hostile_installer(
        entries(&[raw_tar_entry(&name, EntryType::Regular, b"", b"pwned")]),
        "unsafe path",
    );
    assert!(!evil.exists());
}

#[test]
fn installer_with_dotdot_path_is_refused() {
    hostile_installer(
        entries(&[raw_tar_entry(b"../evil", EntryType::Regular, b"", b"pwned")]),
        "unsafe path",
    );
}

#[test]
fn installer_with_nested_dotdot_path_is_refused() {
    hostile_installer(
        entries(&[raw_tar_entry(
            b"bin/../../evil",
            EntryType::Regular,
            b"",
            b"pwned",
        )]),
        "unsafe path",
    );
}

#[test]
fn installer_writing_through_a_symlink_is_refused() {
    // A symlink to outside, then a file "through" it.
    hostile_installer(
        entries(&[
            raw_tar_entry(b"current", EntryType::Symlink, b"../..", b""),
            raw_tar_entry(b"current/evil", EntryType::Regular, b"", b"pwned"),
        ]),
        "",
    );
}

#[test]
fn installer_with_device_file_is_refused() {
    hostile_installer(
        entries(&[raw_tar_entry(b"bin", EntryType::Char, b"", b"")]),
        "does not match",
    );
}

#[test]
fn installer_with_fifo_or_hardlink_is_refused() {
    hostile_installer(
        entries(&[raw_tar_entry(b"bin", EntryType::Fifo, b"", b"")]),
        "does not match",
    );
    hostile_installer(
        entries(&[raw_tar_entry(b"bin", EntryType::Link, b"/etc/passwd", b"")]),
        "does not match",
    );
}

#[test]
fn installer_with_duplicate_entries_is_refused() {
    let (w, _) = world_at_v1();
    let m = tamper::target_bytes(&w.repo, "2.0.0/manifest.json");
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let dir = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "dir")
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let name = format!("{dir}/");
    let e = raw_tar_entry(name.as_bytes(), EntryType::Directory, b"", b"");
    hostile_installer(entries(&[e.clone(), e]), "appears twice");
}

#[test]
fn installer_with_oversized_header_is_refused() {
    // A pax extended header far larger than any real header.
    let big = vec![b'a'; 48 << 20];
    hostile_installer(
        entries(&[raw_tar_entry(b"pax", EntryType::XHeader, b"", &big)]),
        "",
    );
}

#[test]
fn installer_decompression_bomb_is_refused() {
    // 2 GiB of zeros behind a regular file entry claiming that size: refused before writing
    // more than the release's signed sizes.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_size(2 << 30);
    h.set_mode(0o644);
    h.as_old_mut().name[..3].copy_from_slice(b"bin");
    h.set_cksum();
    let mut enc = zstd::Encoder::new(Vec::new(), 1).unwrap();
    use std::io::Write;
    enc.write_all(h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..2048 {
        enc.write_all(&zeros).unwrap();
    }
    let z = enc.finish().unwrap();
    assert!(z.len() < 1 << 20, "the bomb is small: {}", z.len());
    let mut bytes = formats::container::header(ArtifactKind::Installer).to_vec();
    bytes.extend(z);
    let (w, app) = world_at_v1();
    tamper::replace_target(&w.repo, &[&key(&w)], "2.0.0/installer.tar.zst", &bytes);
    refused(&w, &app, &["--method", "installer"], "installer");
}

// ---- Hostile manifests (paths and symlinks), signed by the attacker ----

fn hostile_manifest(edit: impl FnOnce(&mut Vec<serde_json::Value>), expect: &str) {
    let (w, app) = world_at_v1();
    let m = tamper::target_bytes(&w.repo, "2.0.0/manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let mut list = v["entries"].as_array().unwrap().clone();
    edit(&mut list);
    list.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    v["entries"] = serde_json::Value::Array(list);
    tamper::replace_target(
        &w.repo,
        &[&key(&w)],
        "2.0.0/manifest.json",
        &serde_json::to_vec(&v).unwrap(),
    );
    refused(&w, &app, &[], expect);
}

fn file_entry(path: &str) -> serde_json::Value {
    serde_json::json!({"path": path, "type": "file", "size": 5,
        "blake3": formats::Blake3::of(b"pwned").to_hex()})
}

#[test]
fn manifest_with_dotdot_path_is_refused() {
    hostile_manifest(|l| l.insert(0, file_entry("../evil")), "unsafe path");
}

#[test]
fn manifest_with_absolute_path_is_refused() {
    hostile_manifest(|l| l.insert(0, file_entry("/tmp/evil")), "unsafe path");
}

#[test]
fn manifest_with_symlink_pointing_outside_is_refused() {
    hostile_manifest(
        |l| {
            l.push(
                serde_json::json!({"path": "zz-evil", "type": "symlink", "target": "../../../etc"}),
            )
        },
        "points outside the tree",
    );
}

#[test]
fn manifest_with_file_below_a_symlink_is_refused() {
    hostile_manifest(
        |l| {
            l.push(serde_json::json!({"path": "zz-link", "type": "symlink", "target": "bin"}));
            l.push(file_entry("zz-link/evil"));
        },
        "below non-directory",
    );
}

#[test]
fn manifest_with_duplicate_paths_is_refused() {
    hostile_manifest(
        |l| {
            let first = l[0].clone();
            l.insert(0, first);
        },
        "duplicated",
    );
}

#[test]
fn manifest_in_the_state_directory_is_refused() {
    hostile_manifest(
        |l| l.insert(0, file_entry(".patchkit/record.json")),
        "state directory",
    );
}

// ---- Hostile patches, signed by the attacker ----

/// Rewrites the patch info of release 2's patch with `edit` and signs the result.
fn hostile_patch_info(edit: impl FnOnce(&mut serde_json::Value), expect: &str) {
    let (w, app) = world_at_v1();
    let name = "2.0.0/patch-from-1.0.0.patch";
    let bytes = tamper::target_bytes(&w.repo, name);
    let tar_bytes = zstd::decode_all(&bytes[formats::container::HEADER_LEN..]).unwrap();
    let mut ar = tar::Archive::new(tar_bytes.as_slice());
    let mut out = Vec::new();
    let mut edit = Some(edit);
    for (i, e) in ar.entries().unwrap().enumerate() {
        let mut e = e.unwrap();
        let path = e.path_bytes().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if i == 0 {
            let mut v: serde_json::Value = serde_json::from_slice(&data).unwrap();
            if let Some(f) = edit.take() {
                f(&mut v);
            }
            data = serde_json::to_vec(&v).unwrap();
        }
        out.extend(raw_tar_entry(&path, EntryType::Regular, b"", &data));
    }
    out.extend(tar_end());
    tamper::replace_target(
        &w.repo,
        &[&key(&w)],
        name,
        &artifact(ArtifactKind::Patch, &out),
    );
    refused(&w, &app, &["--method", "incremental"], expect);
}

#[test]
fn patch_with_dotdot_path_is_refused() {
    hostile_patch_info(|v| v["ops"][0]["path"] = "../evil".into(), "unsafe path");
}

#[test]
fn patch_with_absolute_delete_path_is_refused() {
    hostile_patch_info(
        |v| {
            if let Some(d) = v.get_mut("deletes").and_then(|d| d.as_array_mut()) {
                d.push("/etc/passwd".into());
            } else {
                v["ops"][0]["path"] = "/etc/passwd".into();
            }
        },
        "unsafe path",
    );
}

#[test]
fn patch_with_source_outside_the_tree_is_refused() {
    hostile_patch_info(
        |v| {
            let ops = v["ops"].as_array_mut().unwrap();
            let op = ops
                .iter_mut()
                .find(|o| o.get("source").is_some())
                .expect("an op with a source");
            op["source"] = "../../etc/passwd".into();
        },
        "unsafe path",
    );
}

// ---- Diff control values out of range (library level: the stream reader itself) ----

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn split_member(ctrl: &[u64], _zero_diff: &[u8], extra: &[u8]) -> Vec<u8> {
    // docs/format.md §6.2.3 `split-diff`: ctrl, pairs and extra streams behind three varint
    // lengths, each a tag byte (0 = zstd) and a frame; an all-zero diff has an empty (0-byte)
    // pairs stream.
    let mut c = Vec::new();
    for &v in ctrl {
        varint(v, &mut c);
    }
    let tagged = |f: &[u8]| {
        let mut t = vec![0u8];
        t.extend(zstd::encode_all(f, 1).unwrap());
        t
    };
    let frames = [tagged(&c), Vec::new(), tagged(extra)];
    let mut out = Vec::new();
    for f in &frames {
        varint(f.len() as u64, &mut out);
    }
    for f in frames {
        out.extend(f);
    }
    out
}

fn apply_split(member: &[u8], new_size: u64) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().unwrap();
    let (m, old) = (dir.path().join("m"), dir.path().join("old"));
    std::fs::write(&m, member).unwrap();
    std::fs::write(&old, vec![7u8; 100]).unwrap();
    let mut out = Vec::new();
    patch_apply::decode::apply_split("t", (&m, 0), member.len() as u64, &old, new_size, &mut out)
        .map(|()| out)
        .map_err(|e| e.to_string())
}

#[test]
fn diff_control_values_out_of_range_are_refused() {
    // Sanity: a good stream: seek 0, add 10 bytes from old, copy 2 extra bytes.
    assert_eq!(
        apply_split(&split_member(&[0, 10, 2], &[0; 10], b"ab"), 12)
            .unwrap()
            .len(),
        12
    );
    // Seek before the start of the old file (zigzag 201 = -101).
    let e = apply_split(&split_member(&[201, 1, 0], &[0], b""), 1).unwrap_err();
    assert!(e.contains("outside the old file"), "{e}");
    // Seek past its end.
    let e = apply_split(&split_member(&[2 * 1000, 1, 0], &[0], b""), 1).unwrap_err();
    assert!(e.contains("outside the old file"), "{e}");
    // Add running past the end of the old file.
    let e = apply_split(&split_member(&[0, 1 << 40, 0], &[0], b""), 1 << 41).unwrap_err();
    assert!(e.contains("past the end"), "{e}");
    // Producing more than the signed size.
    let e = apply_split(&split_member(&[0, 10, u64::MAX], &[0; 10], b""), 12).unwrap_err();
    assert!(e.contains("more than"), "{e}");
    // Lengths that do not add up.
    let mut m = split_member(&[0, 10, 2], &[0; 10], b"ab");
    m.push(0);
    assert!(apply_split(&m, 12).is_err());
    // A stream whose codec tag the format does not define (the ctrl stream's tag follows the
    // three one-byte lengths).
    let mut m = split_member(&[0, 10, 2], &[0; 10], b"ab");
    m[3] = 7;
    let e = apply_split(&m, 12).unwrap_err();
    assert!(e.contains("unknown codec tag 7"), "{e}");
}

#[test]
fn repair_file_decompression_bomb_is_refused() {
    let (w, app) = world_at_v1();
    let name = "2.0.0/manifest.json";
    let m2: serde_json::Value =
        serde_json::from_slice(&tamper::target_bytes(&w.repo, name)).unwrap();
    let m1: serde_json::Value =
        serde_json::from_slice(&tamper::target_bytes(&w.repo, "1.0.0/manifest.json")).unwrap();
    let old: std::collections::BTreeMap<String, serde_json::Value> = m1["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["blake3"].clone()))
        .collect();
    // A file that changes from 1.0.0 to 2.0.0, so repair must fetch it.
    let mut m = m2.clone();
    let entry = m["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["type"] == "file" && old.get(e["path"].as_str().unwrap()) != Some(&e["blake3"]))
        .expect("a changed file");
    // 1 GiB of zeros in a few tens of KiB, as the repair file of that content.
    let mut enc =
        zstd::Encoder::new(formats::container::header(ArtifactKind::Repair).to_vec(), 1).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    let content: formats::Blake3 = entry["blake3"].as_str().unwrap().parse().unwrap();
    let blob = w.repo.join(formats::layout::blob_path(&content));
    std::fs::write(&blob, &bomb).unwrap();
    entry["repair"] =
        serde_json::json!({"size": bomb.len(), "blake3": formats::Blake3::of(&bomb).to_hex()});
    tamper::replace_target(&w.repo, &[&key(&w)], name, &serde_json::to_vec(&m).unwrap());
    let err = refused(&w, &app, &["--method", "repair"], "repair");
    assert!(
        !err.contains("tree digest"),
        "refused for another reason: {err}"
    );
}
