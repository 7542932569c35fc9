//! The installer reader against a fixed small manifest: the input is the compressed payload
//! behind a valid header (and raw).
#![no_main]
use formats::container::{header, ArtifactKind};
use formats::limits::Limits;
use libfuzzer_sys::fuzz_target;

const MANIFEST: &str = r#"{"app":"fuzz","entries":[{"path":"a","type":"dir"},{"blake3":"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262","path":"a/f","size":0,"type":"file"},{"path":"l","target":"a/f","type":"symlink"}],"format":"patchkit-manifest-1","version":"1.0.0"}"#;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(m) = formats::manifest::ReleaseManifest::from_json("m", MANIFEST.as_bytes(), &limits)
    else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let p = dir.path().join("in");
    let mut framed = header(ArtifactKind::Installer).to_vec();
    framed.extend_from_slice(data);
    // The input also as the compressed payload, so the tar and member parsers see it.
    let mut compressed = header(ArtifactKind::Installer).to_vec();
    compressed.extend(zstd::encode_all(data, 1).unwrap_or_default());
    for bytes in [data, &framed[..], &compressed[..]] {
        if std::fs::write(&p, bytes).is_err() {
            return;
        }
        let out = dir.path().join("out");
        let _ = patch_apply::archive::extract_installer(&p, "fuzz", &m, &out, &limits, &|_, _| {});
        let _ = std::fs::remove_dir_all(&out);
    }
});
