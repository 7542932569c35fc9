//! The patch info parser and validator.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = formats::patch_info::PatchInfo::from_json("p", data, &Default::default()) {
        let _ = p.to_json();
    }
});
