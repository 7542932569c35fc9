//! The repair file decoder (header, zstd, size and hash bound).
#![no_main]
use formats::container::{header, ArtifactKind};
use formats::{Blake3, Pin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let p = dir.path().join("in");
    let mut framed = header(ArtifactKind::Repair).to_vec();
    framed.extend_from_slice(data);
    let mut compressed = header(ArtifactKind::Repair).to_vec();
    compressed.extend(zstd::encode_all(data, 1).unwrap_or_default());
    let pin = Pin {
        size: 4096,
        blake3: Blake3::of(b""),
    };
    for bytes in [data, &framed[..], &compressed[..]] {
        if std::fs::write(&p, bytes).is_err() {
            return;
        }
        let _ = patch_apply::archive::decode_repair(&p, "fuzz", pin, &dir.path().join("out"));
    }
});
