//! The fleet protocol parser on hostile input: an error naming a field, never a panic, and
//! what it accepts always survives a round trip (the same property the fuzz target checks).
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
use formats::fleet::{parse, CheckIn, CommandResult, EnrollRequest, MAX_BODY};
use proptest::prelude::*;

const GOOD: &str = r#"{"version":"1.2.0","tree_digest":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
"channel":"stable","attrs":{"region":"eu"},"results":[{"seq":1,"finished_at":"2026-11-25T10:00:00Z",
"from":"1.1.0","to":"1.2.0","method":"incremental","bytes":10,"seconds":0.5,"ok":false,
"error_kind":"disk","error_message":"no space"}],"free_disk":1000,"os":"linux","arch":"x86_64",
"hostname":"pc","agent_version":"0.1.0","state":{"a":[1,2,{"b":null}]}}"#;

fn check(bytes: &[u8]) {
    match parse::<CheckIn>(bytes) {
        Ok(c) => {
            let again = serde_json::to_vec(&c).unwrap();
            assert_eq!(parse::<CheckIn>(&again).unwrap(), c);
        }
        Err(e) => {
            assert!(!e.field.is_empty());
            assert!(!e.reason.is_empty());
        }
    }
    let _ = parse::<EnrollRequest>(bytes);
    let _ = parse::<CommandResult>(bytes);
}

#[test]
fn the_sample_document_is_valid() {
    parse::<CheckIn>(GOOD.as_bytes()).unwrap();
}

proptest! {
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes);
    }

    #[test]
    fn mutated_documents(pos in 0usize..GOOD.len(), byte in any::<u8>(), cut in 0usize..GOOD.len()) {
        let mut b = GOOD.as_bytes().to_vec();
        b[pos] = byte;
        check(&b);
        check(&GOOD.as_bytes()[..cut]);
    }

    #[test]
    fn deep_nesting_in_state(depth in 1usize..200) {
        let doc = format!(r#"{{"state":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        check(doc.as_bytes());
    }
}

#[test]
fn over_the_body_bound_is_413_material() {
    let mut doc = String::from(r#"{"hostname":""#);
    doc.push_str(&" ".repeat(MAX_BODY));
    doc.push_str("\"}");
    let e = parse::<CheckIn>(doc.as_bytes()).unwrap_err();
    assert!(e.too_large, "{e}");
    assert_eq!(e.field, "body");
}
