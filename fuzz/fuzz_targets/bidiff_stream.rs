//! Every patch op encoding through `decode::produce` (bidiff, zstd, zstd-ref, split diff), with
//! the input as the archive member and a fixed old file.
#![no_main]
use formats::patch_info::{Encoding, PatchOp};
use formats::{Blake3, Pin, RelPath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let (m, old, out) = (
        dir.path().join("m"),
        dir.path().join("old"),
        dir.path().join("out"),
    );
    let old_bytes = [5u8; 200];
    if std::fs::write(&m, data).is_err() || std::fs::write(&old, old_bytes).is_err() {
        return;
    }
    let Ok(src) = RelPath::new("old") else { return };
    let size = data.len() as u64;
    let old_pin = Pin {
        size: 200,
        blake3: Blake3::of(&old_bytes),
    };
    let encodings = [
        Encoding::Bidiff {
            source: src.clone(),
            member_size: size,
        },
        Encoding::Full {
            member_size: size,
        },
        Encoding::SplitDiff {
            source: src.clone(),
            member_size: size,
        },
    ];
    for encoding in encodings {
        let Ok(path) = RelPath::new("new") else {
            return;
        };
        let op = PatchOp {
            path,
            new: Pin {
                size: 512,
                blake3: Blake3::of(b"x"),
            },
            encoding,
        };
        let _ = patch_apply::decode::produce("fuzz", &op, Some((&old, old_pin)), Some(&m), &out);
        if let Ok(md) = std::fs::metadata(&out) {
            assert!(md.len() <= 512, "wrote past the signed size");
        }
    }
});
