//! The release manifest parser and validator.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = formats::manifest::ReleaseManifest::from_json("m", data, &Default::default()) {
        let _ = m.tree_digest();
        let _ = m.to_json();
    }
    let _ = formats::layout::RepositoryInfo::from_json("r", data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = formats::RelPath::new(s);
        let _ = formats::Version::parse(s);
    }
});
