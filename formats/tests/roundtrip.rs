//! Property tests: parsing what was serialized gives the same metadata.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
use std::collections::BTreeMap;

use formats::keys::KeyPair;
use formats::limits::Limits;
use formats::manifest::{Entry, Node, ReleaseManifest, MANIFEST_FORMAT};
use formats::patch_info::{Encoding, PatchInfo, PatchOp, PATCH_INFO_FORMAT};
use formats::tuf::{Signed, TargetFile, TargetsMetadata};
use formats::{Blake3, Pin, RelPath, Version};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_éü日][a-zA-Z0-9_. éü日-]{0,12}".prop_filter("valid component", |s| {
        RelPath::new(s.clone()).is_ok() && !s.starts_with(".patchkit")
    })
}

fn pin() -> impl Strategy<Value = Pin> {
    (any::<u64>(), any::<[u8; 32]>()).prop_map(|(size, h)| Pin {
        size: size % (1 << 36),
        blake3: Blake3(h),
    })
}

fn version() -> impl Strategy<Value = Version> {
    (
        0u64..50,
        0u64..50,
        0u64..50,
        proptest::option::of("[a-z]{1,5}(\\.(0|[1-9][0-9]?))?"),
    )
        .prop_map(|(a, b, c, pre)| {
            let s = match pre {
                Some(p) => format!("{a}.{b}.{c}-{p}"),
                None => format!("{a}.{b}.{c}"),
            };
            Version::parse(&s).unwrap()
        })
}

/// A valid manifest: a set of top-level dirs with files, symlinks to siblings.
fn manifest() -> impl Strategy<Value = ReleaseManifest> {
    (
        version(),
        proptest::collection::btree_map(
            name(),
            proptest::collection::btree_map(
                name(),
                (pin(), any::<bool>(), any::<bool>(), any::<bool>()),
                0..5,
            ),
            0..5,
        ),
        proptest::collection::vec("[*a-z./]{1,8}", 0..3),
    )
        .prop_map(|(version, dirs, ignore)| {
            let mut entries = Vec::new();
            for (d, files) in dirs {
                let dp = RelPath::new(d.clone()).unwrap();
                entries.push(Entry {
                    path: dp.clone(),
                    node: Node::Dir,
                    code: false,
                    repair: None,
                });
                let mut prev: Option<String> = None;
                for (f, (p, exec, code, link)) in files {
                    let path = dp.join(&f).unwrap();
                    let node = match (&prev, link) {
                        (Some(t), true) => Node::Symlink { target: t.clone() },
                        _ => Node::File {
                            size: p.size,
                            blake3: p.blake3,
                            exec,
                        },
                    };
                    let is_file = matches!(node, Node::File { .. });
                    entries.push(Entry {
                        path,
                        node,
                        code: code && is_file,
                        repair: is_file.then_some(p),
                    });
                    prev = Some(f);
                }
            }
            entries.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
            ReleaseManifest {
                format: MANIFEST_FORMAT.into(),
                app: "app".into(),
                version,
                ignore,
                owned: vec![],
                restart_required: false,
                // Quotes, backslashes and non-ASCII survive canonical JSON.
                notes: vec![
                    "Fixed \"saves\" in C:\\Games".into(),
                    String::new(),
                    "Grüße ✓".into(),
                ],
                links: vec!["https://tracker.example/issues/1".into()],
                entries,
            }
        })
        .prop_filter("valid manifest", |m| {
            m.validate("m", &Limits::default()).is_ok()
        })
}

fn op() -> impl Strategy<Value = PatchOp> {
    (name(), pin(), 0u8..5, name(), 10u32..31, 0u64..1 << 30).prop_map(
        |(p, new, kind, src, wl, member_size)| {
            let source = RelPath::new(src).unwrap();
            let encoding = match kind {
                0 => Encoding::Copy { source },
                1 => Encoding::Full { member_size },
                2 => Encoding::Bidiff {
                    source,
                    member_size,
                },
                3 => Encoding::SplitDiff {
                    source,
                    member_size,
                },
                _ => Encoding::ZstdRef {
                    source,
                    member_size,
                    window_log: wl,
                },
            };
            PatchOp {
                path: RelPath::new(p).unwrap(),
                new,
                encoding,
            }
        },
    )
}

proptest! {
    #[test]
    fn manifest_round_trip(m in manifest()) {
        let bytes = m.to_json().unwrap();
        let back = ReleaseManifest::from_json("m", &bytes, &Limits::default()).unwrap();
        prop_assert_eq!(back.tree_digest(), m.tree_digest());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn patch_info_round_trip(ops in proptest::collection::btree_map(name(), op(), 0..8), deletes in proptest::collection::vec(name(), 0..4), from in version(), to in version()) {
        let ops: Vec<PatchOp> = ops.into_iter().map(|(k, mut op)| { op.path = RelPath::new(k).unwrap(); op }).collect();
        let p = PatchInfo {
            format: PATCH_INFO_FORMAT.into(),
            app: "app".into(),
            from,
            to,
            from_tree: Blake3::of(b"a"),
            to_tree: Blake3::of(b"b"),
            ops,
            deletes: deletes.into_iter().map(|d| RelPath::new(d).unwrap()).collect(),
        };
        let bytes = p.to_json().unwrap();
        prop_assert_eq!(PatchInfo::from_json("p", &bytes, &Limits::default()).unwrap(), p);
    }

    #[test]
    fn signed_targets_round_trip(entries in proptest::collection::btree_map(name(), (1u64..1 << 40, any::<[u8; 32]>()), 0..6), version in 1u64..1000) {
        let key = KeyPair::from_seed([3; 32]);
        let mut t = TargetsMetadata::new(version, formats::time_util::now() + time::Duration::days(1));
        for (n, (len, h)) in entries {
            t.targets.insert(n, TargetFile { length: len, hashes: BTreeMap::from([("sha256".to_string(), hex::encode(h))]), custom: Some(serde_json::json!({"kind": "installer", "blake3": hex::encode(h)})) });
        }
        let signed = Signed::sign(t.clone(), &[&key]).unwrap();
        let bytes = signed.to_canonical_bytes().unwrap();
        let root = formats::tuf::RootMetadata::new_single_key(&key.public(), 1, formats::time_util::now() + time::Duration::days(1));
        let back = formats::tuf::verify_role::<TargetsMetadata>("t", &bytes, &root, &Limits::default()).unwrap();
        prop_assert_eq!(back.signed, t);
    }
}
