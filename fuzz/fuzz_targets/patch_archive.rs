//! The patch archive reader (container header, zstd, tar, patch info, members), with the
//! input used both raw and as the compressed payload behind a valid header.
#![no_main]
use formats::container::{header, ArtifactKind};
use formats::limits::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let limits = Limits {
        max_decompressed: 16 << 20,
        max_large_metadata: 1 << 20,
        ..Limits::default()
    };
    let p = dir.path().join("in");
    let mut framed = header(ArtifactKind::Patch).to_vec();
    framed.extend_from_slice(data);
    // The input also as the compressed payload, so the tar and member parsers see it.
    let mut compressed = header(ArtifactKind::Patch).to_vec();
    compressed.extend(zstd::encode_all(data, 1).unwrap_or_default());
    for bytes in [data, &framed[..], &compressed[..]] {
        if std::fs::write(&p, bytes).is_err() {
            return;
        }
        let _ = patch_apply::archive::unpack_patch(&p, "fuzz", &dir.path().join("out"), &limits);
        let _ = std::fs::remove_dir_all(dir.path().join("out"));
    }
});
