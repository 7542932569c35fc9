//! The split-diff stream reader (varint lengths, control triples, seeks) against a fixed old
//! file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let (m, old) = (dir.path().join("m"), dir.path().join("old"));
    if std::fs::write(&m, data).is_err() || std::fs::write(&old, [7u8; 300]).is_err() {
        return;
    }
    let mut out = Vec::new();
    let _ = patch_apply::decode::apply_split("fuzz", (&m, 0), data.len() as u64, &old, 1024, &mut out);
    assert!(out.len() <= 1024, "wrote past the signed size");
});
