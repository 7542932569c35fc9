//! The exe-project-diff decoder: projection tables (rules 1 or 2) from the first bytes, then the member (map
//! and split diff) against a fixed old file of call-like bytes and relocation-like entries.
#![no_main]
use formats::exe_filter::Arch;
use formats::exe_project::Projection;
use formats::Pin;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, member) = data.split_at(12);
    let rules = 1 + head[11] % 2;
    let r = |a: u8, b: u8| [u64::from(a) * 4, u64::from(b) + 1];
    let project = Projection {
        arch: Arch::X86_64,
        old_code: vec![r(head[0], head[1])],
        old_segments: vec![[0, 0x1000, 1200], [u64::from(head[2]) * 4, 0x9000, 400]],
        new_segments: vec![[0, 0x1000 + u64::from(head[3]), 1400]],
        old_rela: Some(r(head[4], head[5])),
        old_eh_frame_hdr: Some(r(head[6], head[7])),
        new_eh_frame_hdr_addr: Some(0x1000 + u64::from(head[8]) * 16),
        old_eh_frame: (rules == 2).then(|| r(head[9], head[10])),
        rules,
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let (m, old, out) = (dir.path().join("m"), dir.path().join("old"), dir.path().join("out"));
    let old_bytes: Vec<u8> = (0..1200u32)
        .map(|i| [0xE8, 0x10, 0, 0, 0, 0x48, 8, 0x10, 0, 0, 0, 0][i as usize % 12])
        .collect();
    if std::fs::write(&m, member).is_err() || std::fs::write(&old, &old_bytes).is_err() {
        return;
    }
    let mut produced = Vec::new();
    let _ = patch_apply::decode::apply_exe_project(
        "fuzz",
        &m,
        member.len() as u64,
        (old.as_path(), Pin::of(&old_bytes)),
        &project,
        &out,
        1024,
        &mut produced,
    );
    assert!(produced.len() <= 1024, "wrote past the signed size");
});
