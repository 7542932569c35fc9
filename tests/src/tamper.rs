//! The attacker who holds the release signing key: helpers that replace a target of a
//! repository and sign new targets, snapshot and timestamp metadata for it, so that tests reach
//! the archive and path parsers with hostile input that passes every signature check.

use std::path::Path;

use formats::keys::KeyPair;
use formats::layout;
use formats::limits::Limits;
use formats::tuf::{self, MetaFile, Signed, SnapshotMetadata, TargetsMetadata, TimestampMetadata};
use formats::{Blake3, Sha256};

/// Reads a secret key file.
pub fn load_key(path: &Path) -> KeyPair {
    let bytes = std::fs::read(path).expect("read key");
    KeyPair::from_json(&path.display().to_string(), &bytes).expect("key file")
}

fn md(repo: &Path, name: &str) -> std::path::PathBuf {
    repo.join(layout::METADATA_DIR).join(name)
}

/// The current (timestamp, snapshot, targets) of `repo`, unverified; the targets are
/// top-level targets with the targets of every delegated role added (docs/format.md §7.2).
pub fn current(repo: &Path) -> (TimestampMetadata, SnapshotMetadata, TargetsMetadata) {
    let (ts, s, mut t) = current_top(repo);
    let l = Limits::default();
    for role in t.delegations.iter().flat_map(|d| d.roles.iter().flatten()) {
        let v = s.meta[&format!("{}.json", role.name)].version;
        let b = std::fs::read(md(repo, &format!("{v}.{}.json", role.name))).expect("role");
        let doc = tuf::parse_unverified::<TargetsMetadata>("d", &b, &l)
            .expect("delegated")
            .signed;
        for (name, f) in doc.targets {
            t.targets.entry(name).or_insert(f);
        }
    }
    (ts, s, t)
}

/// The current (timestamp, snapshot, top-level targets) of `repo`, unverified.
pub fn current_top(repo: &Path) -> (TimestampMetadata, SnapshotMetadata, TargetsMetadata) {
    let l = Limits::default();
    let ts_b = std::fs::read(md(repo, "timestamp.json")).expect("timestamp");
    let ts = tuf::parse_unverified::<TimestampMetadata>("ts", &ts_b, &l)
        .expect("ts")
        .signed;
    let sv = ts.meta["snapshot.json"].version;
    let s_b = std::fs::read(md(repo, &format!("{sv}.snapshot.json"))).expect("snapshot");
    let s = tuf::parse_unverified::<SnapshotMetadata>("s", &s_b, &l)
        .expect("s")
        .signed;
    let tv = s.meta["targets.json"].version;
    let t_b = std::fs::read(md(repo, &format!("{tv}.targets.json"))).expect("targets");
    let t = tuf::parse_unverified::<TargetsMetadata>("t", &t_b, &l)
        .expect("t")
        .signed;
    (ts, s, t)
}

/// Signs `targets` (after `edit`) as the next targets version, then a new snapshot and
/// timestamp, with `keys`, keeping the current expiry. The new top-level targets list every
/// target itself and delegates nothing (the form written before delegations, which clients
/// still read); the snapshot keeps listing the delegated roles, as clients require.
pub fn resign_targets(repo: &Path, keys: &[&KeyPair], edit: impl FnOnce(&mut TargetsMetadata)) {
    let (ts, s, mut t) = current(repo);
    t.delegations = None;
    edit(&mut t);
    t.version += 1;
    let t_bytes = Signed::sign(t.clone(), keys)
        .expect("sign")
        .to_canonical_bytes()
        .expect("bytes");
    std::fs::write(md(repo, &format!("{}.targets.json", t.version)), &t_bytes).expect("write");
    let exp = formats::time_util::parse_tuf(&s.expires).expect("expires");
    let mut snap = SnapshotMetadata::new(s.version + 1, exp, t.version, &t_bytes);
    for (name, m) in &s.meta {
        snap.meta.entry(name.clone()).or_insert_with(|| m.clone());
    }
    let s_bytes = Signed::sign(snap, keys)
        .expect("sign")
        .to_canonical_bytes()
        .expect("bytes");
    std::fs::write(
        md(repo, &format!("{}.snapshot.json", s.version + 1)),
        &s_bytes,
    )
    .expect("write");
    let exp = formats::time_util::parse_tuf(&ts.expires).expect("expires");
    let tsm = TimestampMetadata::new(ts.version + 1, exp, s.version + 1, &s_bytes);
    let ts_bytes = Signed::sign(tsm, keys)
        .expect("sign")
        .to_canonical_bytes()
        .expect("bytes");
    std::fs::write(md(repo, "timestamp.json"), ts_bytes).expect("write");
}

/// An attacker without the targets key: replaces role `name` by a copy edited by `edit`
/// (signatures kept, version raised) and pins it in a new snapshot and timestamp signed with
/// `key` (which holds the snapshot and timestamp roles).
pub fn forge_delegated(
    repo: &Path,
    key: &Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let key = load_key(key);
    let l = Limits::default();
    let ts_b = std::fs::read(md(repo, "timestamp.json")).expect("forge");
    let ts = tuf::parse_unverified::<TimestampMetadata>("ts", &ts_b, &l)
        .expect("forge")
        .signed;
    let mut snap = current_top(repo).1;
    let v = snap.meta[&format!("{name}.json")].version;
    let mut doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(md(repo, &format!("{v}.{name}.json"))).expect("forge"),
    )
    .expect("forge");
    edit(&mut doc["signed"]);
    doc["signed"]["version"] = serde_json::json!(v + 1);
    let bytes = serde_json::to_vec_pretty(&doc).expect("forge");
    std::fs::write(md(repo, &format!("{}.{name}.json", v + 1)), &bytes).expect("forge");
    snap.meta
        .insert(format!("{name}.json"), MetaFile::pin_of(v + 1, &bytes));
    snap.version += 1;
    let s_bytes = Signed::sign(snap.clone(), &[&key])
        .expect("forge")
        .to_canonical_bytes()
        .expect("forge");
    std::fs::write(
        md(repo, &format!("{}.snapshot.json", snap.version)),
        &s_bytes,
    )
    .expect("forge");
    let exp = formats::time_util::parse_tuf(&ts.expires).expect("forge");
    let new_ts = TimestampMetadata::new(ts.version + 1, exp, snap.version, &s_bytes);
    let t_bytes = Signed::sign(new_ts, &[&key])
        .expect("forge")
        .to_canonical_bytes()
        .expect("forge");
    std::fs::write(md(repo, "timestamp.json"), t_bytes).expect("forge");
}

/// Replaces target `name` by `bytes` (stored under its new hash-prefixed name) with correct
/// length, SHA-256 and BLAKE3, then re-signs with `keys`.
pub fn replace_target(repo: &Path, keys: &[&KeyPair], name: &str, bytes: &[u8]) {
    let sha = Sha256::of(bytes);
    let p = repo.join(layout::target_file(name, &sha));
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, bytes).expect("write target");
    resign_targets(repo, keys, |t| {
        let e = t
            .targets
            .get_mut(name)
            .unwrap_or_else(|| panic!("no target {name}"));
        e.length = bytes.len() as u64;
        e.hashes.insert("sha256".into(), sha.to_hex());
        if let Some(c) = e.custom.as_mut() {
            c["blake3"] = serde_json::Value::String(Blake3::of(bytes).to_hex());
        }
    });
}

/// The bytes of target `name` as stored.
pub fn target_bytes(repo: &Path, name: &str) -> Vec<u8> {
    let (_, _, t) = current(repo);
    let e = &t.targets[name];
    let sha: Sha256 = e.hashes["sha256"].parse().expect("sha");
    std::fs::read(repo.join(layout::target_file(name, &sha))).expect("read target")
}

/// The repository path of target `name`.
pub fn target_path(repo: &Path, name: &str) -> std::path::PathBuf {
    let (_, _, t) = current(repo);
    let sha: Sha256 = t.targets[name].hashes["sha256"].parse().expect("sha");
    repo.join(layout::target_file(name, &sha))
}

/// A binary artifact: our 24-byte header, then `payload` zstd-compressed.
pub fn artifact(kind: formats::container::ArtifactKind, payload: &[u8]) -> Vec<u8> {
    let mut out = formats::container::header(kind).to_vec();
    out.extend(zstd::encode_all(payload, 3).expect("zstd"));
    out
}

/// A raw tar entry: the name is written as is (no path checks), then the data padded to 512.
pub fn raw_tar_entry(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The end-of-archive marker (two zero blocks).
pub fn tar_end() -> Vec<u8> {
    vec![0u8; 1024]
}
