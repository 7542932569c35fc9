//! The fleet protocol parser: every document a device or server sends.
#![no_main]
use formats::fleet::{parse, CheckIn, CommandResult, EnrollRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = parse::<CheckIn>(data) {
        // What was accepted serialises and parses again to the same document.
        let again = serde_json::to_vec(&c).expect("serialise");
        assert_eq!(parse::<CheckIn>(&again).ok(), Some(c));
    }
    let _ = parse::<EnrollRequest>(data);
    let _ = parse::<CommandResult>(data);
    let _ = serde_json::from_slice::<formats::fleet::CheckInResponse>(data);
});
