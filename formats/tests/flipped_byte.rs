//! One flipped byte in a signed file gives an error, never a panic and never acceptance.
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
use formats::keys::KeyPair;
use formats::limits::Limits;
use formats::time_util::now;
use formats::tuf::{
    RootMetadata, Signed, SnapshotMetadata, TargetsMetadata, TimestampMetadata, TrustedRoot,
    TrustedSet,
};
use proptest::prelude::*;

struct Repo {
    key: KeyPair,
    root: Vec<u8>,
    timestamp: Vec<u8>,
    snapshot: Vec<u8>,
    targets: Vec<u8>,
}

fn repo() -> Repo {
    let key = KeyPair::from_seed([9; 32]);
    let later = now() + time::Duration::days(30);
    let root = Signed::sign(
        RootMetadata::new_single_key(&key.public(), 1, later),
        &[&key],
    )
    .unwrap()
    .to_canonical_bytes()
    .unwrap();
    let mut t = TargetsMetadata::new(2, later);
    t.targets.insert(
        "1.0.0/manifest.json".into(),
        formats::tuf::TargetFile {
            length: 123,
            hashes: [("sha256".to_string(), formats::Sha256::of(b"m").to_hex())].into(),
            custom: Some(serde_json::json!({"kind": "manifest", "blake3": formats::Blake3::of(b"m").to_hex()})),
        },
    );
    let targets = Signed::sign(t, &[&key])
        .unwrap()
        .to_canonical_bytes()
        .unwrap();
    let snapshot = Signed::sign(SnapshotMetadata::new(2, later, 2, &targets), &[&key])
        .unwrap()
        .to_canonical_bytes()
        .unwrap();
    let timestamp = Signed::sign(TimestampMetadata::new(2, later, 2, &snapshot), &[&key])
        .unwrap()
        .to_canonical_bytes()
        .unwrap();
    Repo {
        key,
        root,
        timestamp,
        snapshot,
        targets,
    }
}

/// Runs the client's checks over the four documents; Ok only if all pass.
fn client(r: &Repo, root: &[u8], ts: &[u8], snap: &[u8], targets: &[u8]) -> formats::Result<()> {
    let l = Limits::default();
    let trusted = TrustedRoot::bootstrap(root, &[r.key.public()], now(), &l)?;
    let mut set = TrustedSet::new(trusted, now(), l)?;
    set.update_timestamp(ts)?;
    set.update_snapshot(snap)?;
    set.update_targets(targets)?;
    Ok(())
}

/// The `signed` object of a document (None when it does not parse).
fn signed_part(doc: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(doc)
        .ok()
        .map(|v| v["signed"].clone())
}

fn orig_doc(r: &Repo, which: usize) -> Vec<u8> {
    [&r.root, &r.timestamp, &r.snapshot, &r.targets][which].clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn flipped_byte_in_signed_metadata_is_an_error(which in 0usize..4, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let r = repo();
        let mut docs = [r.root.clone(), r.timestamp.clone(), r.snapshot.clone(), r.targets.clone()];
        prop_assert!(client(&r, &docs[0], &docs[1], &docs[2], &docs[3]).is_ok());
        let i = pos.index(docs[which].len());
        let orig = docs[which][i];
        docs[which][i] ^= 1 << bit;
        let new = docs[which][i];
        let res = client(&r, &docs[0], &docs[1], &docs[2], &docs[3]);
        // A change to the signed content must be refused. A change outside it (white space,
        // or the letter case of a signature's hex) leaves what was signed intact: snapshot and
        // targets are pinned by hash and still refuse it; root and timestamp may accept it.
        let signed_same = signed_part(&docs[which]) == signed_part(&orig_doc(&r, which));
        if which <= 1 && signed_same {
            let _ = res;
        } else {
            prop_assert!(res.is_err(), "accepted a flipped byte at {} of document {} ({:#x} -> {:#x})", i, which, orig, new);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let r = repo();
        let _ = client(&r, &data, &r.timestamp, &r.snapshot, &r.targets);
        let _ = client(&r, &r.root, &data, &r.snapshot, &r.targets);
        let _ = formats::manifest::ReleaseManifest::from_json("m", &data, &Limits::default());
        let _ = formats::patch_info::PatchInfo::from_json("p", &data, &Limits::default());
    }
}
