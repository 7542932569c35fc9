//! The exe-split-diff decoder: branch filter ranges and span from the first bytes, then the
//! split-diff member against a fixed old file of call-like bytes. Also checks that the filter
//! round-trips whatever bytes it is given.
#![no_main]
use formats::exe_filter::{apply, Arch, Direction, ExeFilter};
use formats::Pin;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, member) = data.split_at(8);
    let arch = if head[0] & 1 == 0 { Arch::X86_64 } else { Arch::Aarch64 };
    let r = |a: u8, b: u8| [u64::from(a) * 4, u64::from(b) + 1];
    let filter = ExeFilter {
        arch,
        span_log: 16 + head[1] % 16,
        old_code: vec![r(head[2], head[3])],
        new_code: vec![r(head[4], head[5])],
    };
    let mut round = member.to_vec();
    apply(&mut round, arch, filter.span_log, &filter.new_code, Direction::Encode);
    apply(&mut round, arch, filter.span_log, &filter.new_code, Direction::Decode);
    assert_eq!(round, member, "the filter does not round-trip");

    let Ok(dir) = tempfile::tempdir() else { return };
    let (m, old, out) = (dir.path().join("m"), dir.path().join("old"), dir.path().join("out"));
    let old_bytes: Vec<u8> = (0..1200u32).map(|i| [0xE8, 0x10, 0, 0, 0, 0x48][i as usize % 6]).collect();
    if std::fs::write(&m, member).is_err() || std::fs::write(&old, &old_bytes).is_err() {
        return;
    }
    let mut produced = Vec::new();
    let _ = patch_apply::decode::apply_exe_split(
        "fuzz",
        &m,
        member.len() as u64,
        (old.as_path(), Pin::of(&old_bytes)),
        &filter,
        &out,
        1024,
        &mut produced,
    );
    assert!(produced.len() <= 1024, "wrote past the signed size");
});
