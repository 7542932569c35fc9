//! Round trips of every encoding the creator may choose: encode with patch_create::encode,
//! decode with patch_apply::decode::produce, compare bytes.

use std::path::Path;

use formats::patch_info::{Encoding, PatchOp};
use formats::{Pin, RelPath};
use patch_create::encode::{self, Chosen, EncodeOptions};
use proptest::prelude::*;

/// Encodes `new` against `old` as `chosen`, decodes it through `produce`, returns the output.
fn round_trip(old: &[u8], new: &[u8], chosen: &Chosen, opts: &EncodeOptions) -> Vec<u8> {
    let bytes = encode::encode_as(old, new, chosen, opts).expect("encode");
    decode(old, new, chosen, &bytes)
}

fn decode(old: &[u8], new: &[u8], chosen: &Chosen, bytes: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("old");
    let member = dir.path().join("member");
    let out = dir.path().join("out");
    std::fs::write(&src, old).expect("write old");
    std::fs::write(&member, bytes).expect("write member");
    let source = RelPath::new("f").expect("path");
    let member_size = bytes.len() as u64;
    let encoding = match chosen {
        Chosen::Bidiff => Encoding::Bidiff {
            source,
            member_size,
        },
        Chosen::SplitDiff => Encoding::SplitDiff {
            source,
            member_size,
        },
        Chosen::ZstdRef { .. } => Encoding::ZstdRef {
            source,
            member_size,
            window_log: encode::window_log_for((old.len() + new.len()) as u64),
        },
        Chosen::Full => Encoding::Full { member_size },
        Chosen::ExeSplitDiff(filter) => Encoding::ExeSplitDiff {
            source,
            member_size,
            filter: filter.clone(),
        },
        Chosen::ExeProjectDiff(project) => Encoding::ExeProjectDiff {
            source,
            member_size,
            project: project.clone(),
        },
    };
    let op = PatchOp {
        path: RelPath::new("f").expect("path"),
        new: Pin::of(new),
        encoding,
    };
    let source: Option<(&Path, Pin)> = if matches!(chosen, Chosen::Full) {
        None
    } else {
        Some((&src, Pin::of(old)))
    };
    patch_apply::decode::produce("test", &op, source, Some(&member), &out).expect("produce");
    std::fs::read(&out).expect("read out")
}

const ALL: [Chosen; 4] = [
    Chosen::Bidiff,
    Chosen::SplitDiff,
    Chosen::ZstdRef { window_log: 0 },
    Chosen::Full,
];

/// `old` with edits: a few byte changes, an insertion, a deletion.
fn mutate(old: &[u8], seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..(next() % 8) {
        if new.is_empty() {
            break;
        }
        let i = (next() as usize) % new.len();
        new[i] = new[i].wrapping_add(next() as u8);
    }
    if !new.is_empty() {
        let i = (next() as usize) % new.len();
        let ins: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
        new.splice(i..i, ins);
        let j = (next() as usize) % new.len();
        let k = (j + (next() as usize % 200)).min(new.len());
        new.drain(j..k);
    }
    new
}

fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = [
        "alpha ",
        "beta ",
        "gamma\n",
        "delta ",
        "{ x: 1 }",
        "return;\n",
        "0x1f ",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
    }
    out.truncate(n);
    out
}

#[test]
fn every_encoding_round_trips_on_edited_files() {
    let opts = EncodeOptions {
        level: 3,
        ..EncodeOptions::default()
    };
    for (n, seed) in [(0usize, 1u64), (1, 2), (100, 3), (5000, 4), (300_000, 5)] {
        let old = text(n, seed);
        let new = mutate(&old, seed * 7);
        for c in &ALL {
            if (old.is_empty() || new.is_empty()) && !matches!(c, Chosen::Full) {
                continue;
            }
            assert_eq!(round_trip(&old, &new, c, &opts), new, "{c:?} n={n}");
        }
    }
}

/// Call-like code: `call`, `jmp`, `Jcc` and RIP-relative `lea` with small operands among
/// random bytes (and AArch64 `BL`/`ADRP`-looking words), deterministic from `seed`.
fn code(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v = ((x >> 40) as i32 % 5000).to_le_bytes();
        match (x >> 33) % 9 {
            0 => out.extend_from_slice(&[0xE8, v[0], v[1], v[2], v[3]]),
            1 => out.extend_from_slice(&[0x0F, 0x85, v[0], v[1], v[2], v[3]]),
            2 => out.extend_from_slice(&[0x48, 0x8D, 0x05, v[0], v[1], v[2], v[3]]),
            3 => out.extend_from_slice(&[v[0], v[1], 0x00, 0x94]),
            // RIP-relative forms of rules 2: movzbl, movdqa, cmpq with an immediate byte.
            4 => out.extend_from_slice(&[0x0F, 0xB6, 0x05, v[0], v[1], v[2], v[3]]),
            5 => out.extend_from_slice(&[0x66, 0x0F, 0x6F, 0x05, v[0], v[1], v[2], v[3]]),
            6 => out.extend_from_slice(&[0x48, 0x83, 0x3D, v[0], v[1], v[2], v[3], 0x01]),
            _ => out.push((x >> 20) as u8),
        }
    }
    out.truncate(n);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The exe-split-diff member decodes byte-identical through `produce` for any code ranges
    /// (including ranges cut by the end of either file) and either instruction set.
    #[test]
    fn exe_split_diff_round_trips_with_any_ranges(
        n in 1usize..20_000,
        seed in any::<u64>(),
        old_cuts in prop::collection::vec((0u64..3000, 1u64..12_000), 0..4),
        new_cuts in prop::collection::vec((0u64..3000, 1u64..12_000), 0..4),
        arm in any::<bool>(),
        span_log in 16u8..=30,
    ) {
        use formats::exe_filter::{Arch, CodeRange, ExeFilter};
        let old = code(n, seed);
        let new = mutate(&old, seed ^ 0x55);
        prop_assume!(!new.is_empty());
        let ranges = |cuts: &[(u64, u64)], size: usize| -> Vec<CodeRange> {
            let mut at = 0;
            let mut out = Vec::new();
            for &(gap, len) in cuts {
                let start = at + gap;
                let len = len.min((size as u64).saturating_sub(start));
                if len == 0 {
                    break;
                }
                out.push([start, len]);
                at = start + len;
            }
            out
        };
        let filter = ExeFilter {
            arch: if arm { Arch::Aarch64 } else { Arch::X86_64 },
            span_log,
            old_code: ranges(&old_cuts, old.len()),
            new_code: ranges(&new_cuts, new.len()),
        };
        let opts = EncodeOptions { level: 3, ..EncodeOptions::default() };
        let chosen = Chosen::ExeSplitDiff(filter);
        prop_assert_eq!(round_trip(&old, &new, &chosen, &opts), new);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The exe-project-diff member decodes byte-identical through `produce` whatever the
    /// projection says (code ranges, segments of both files, relocation table, search table
    /// and `.eh_frame` anywhere, including over each other; rules 1 and 2), since both sides
    /// project the same bytes.
    #[test]
    fn exe_project_diff_round_trips_with_any_projection(
        n in 1usize..20_000,
        seed in any::<u64>(),
        code_at in (0u64..3000, 1u64..20_000),
        segs in prop::collection::vec((0u64..20_000, 0u64..0x10_0000, 1u64..20_000), 1..4),
        new_segs in prop::collection::vec((0u64..20_000, 0u64..0x10_0000, 1u64..20_000), 1..4),
        rela in (0u64..20_000, 0u64..2_000),
        hdr in (0u64..20_000, 0u64..2_000, 0u64..0x10_0000),
        eh in (0u64..20_000, 0u64..4_000),
        rules in 1u8..=2,
    ) {
        use formats::exe_filter::Arch;
        use formats::exe_project::Projection;
        let old = code(n, seed);
        let new = mutate(&old, seed ^ 0x55);
        prop_assume!(!new.is_empty());
        let size = old.len() as u64;
        let inside = |(o, l): (u64, u64)| {
            let o = o.min(size);
            [o, l.min(size - o)]
        };
        let code_range = inside(code_at);
        let project = Projection {
            arch: Arch::X86_64,
            old_code: if code_range[1] > 0 { vec![code_range] } else { vec![] },
            old_segments: segs.iter().map(|&(o, a, l)| [o, a, l]).collect(),
            new_segments: new_segs.iter().map(|&(o, a, l)| [o, a, l]).collect(),
            old_rela: Some(inside(rela)),
            old_eh_frame_hdr: Some(inside((hdr.0, hdr.1))),
            new_eh_frame_hdr_addr: Some(hdr.2),
            old_eh_frame: (rules == 2).then(|| inside(eh)),
            rules,
        };
        let opts = EncodeOptions { level: 3, ..EncodeOptions::default() };
        let chosen = Chosen::ExeProjectDiff(project);
        prop_assert_eq!(round_trip(&old, &new, &chosen, &opts), new);
    }
}

#[test]
fn multi_threaded_split_diff_round_trips() {
    // Large enough for chunked scanning (sa_scan::SCAN_CHUNK): several pieces scanned at once.
    let old = text(5 << 20, 9);
    let mut new = mutate(&old, 11);
    new.extend_from_slice(&old[1000..200_000]);
    assert!(new.len() > 4 * patch_create::sa_scan::SCAN_CHUNK);
    let opts = EncodeOptions {
        level: 3,
        try_zstd_ref: true,
        ..EncodeOptions::default()
    };
    let mut members = Vec::new();
    for threads in [1, 2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let member = pool
            .install(|| encode::encode_as(&old, &new, &Chosen::SplitDiff, &opts))
            .expect("encode");
        assert_eq!(
            decode(&old, &new, &Chosen::SplitDiff, &member),
            new,
            "threads {threads}"
        );
        members.push(member);
    }
    // The pieces depend on the file size only: the same patch whatever the number of cores.
    assert!(members.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn chosen_encoding_round_trips() {
    let opts = EncodeOptions {
        level: 3,
        ..EncodeOptions::default()
    };
    let old = text(200_000, 21);
    for new in [mutate(&old, 5), text(50_000, 99), old[..10].to_vec()] {
        let e = encode::encode_change(&old, &new, &opts).expect("encode");
        assert_eq!(
            decode(&old, &new, &e.chosen, &e.bytes),
            new,
            "{:?}",
            e.chosen
        );
    }
}

#[test]
fn corrupt_split_diff_is_rejected() {
    let opts = EncodeOptions {
        level: 3,
        ..EncodeOptions::default()
    };
    let old = text(20_000, 3);
    let new = mutate(&old, 4);
    let mut bytes = encode::encode_as(&old, &new, &Chosen::SplitDiff, &opts).expect("encode");
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, member, out) = (
        dir.path().join("o"),
        dir.path().join("m"),
        dir.path().join("n"),
    );
    std::fs::write(&src, &old).expect("write");
    let op = |size: u64| PatchOp {
        path: RelPath::new("f").expect("path"),
        new: Pin::of(&new),
        encoding: Encoding::SplitDiff {
            source: RelPath::new("f").expect("path"),
            member_size: size,
        },
    };
    // Wrong member size, then a flipped byte in each stream region.
    std::fs::write(&member, &bytes).expect("write");
    assert!(patch_apply::decode::produce(
        "t",
        &op(bytes.len() as u64 + 1),
        Some((&src, Pin::of(&old))),
        Some(&member),
        &out
    )
    .is_err());
    let n = bytes.len();
    for i in [0, 3, n / 2, n - 1] {
        bytes[i] ^= 0x5a;
        std::fs::write(&member, &bytes).expect("write");
        assert!(patch_apply::decode::produce(
            "t",
            &op(n as u64),
            Some((&src, Pin::of(&old))),
            Some(&member),
            &out
        )
        .is_err());
        bytes[i] ^= 0x5a;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn split_and_all_encodings_round_trip(
        old in proptest::collection::vec(any::<u8>(), 1..3000),
        new in proptest::collection::vec(any::<u8>(), 1..3000),
        seed in any::<u64>(),
        similar in any::<bool>(),
    ) {
        let opts = EncodeOptions { level: 1, ..EncodeOptions::default() };
        let new = if similar { mutate(&old, seed) } else { new };
        prop_assume!(!new.is_empty());
        for c in &ALL {
            prop_assert_eq!(&round_trip(&old, &new, c, &opts), &new, "{:?}", c);
        }
        let e = encode::encode_change(&old, &new, &opts).expect("encode");
        prop_assert_eq!(&decode(&old, &new, &e.chosen, &e.bytes), &new);
    }
}

/// The stream tags of a split-diff member (docs/format.md §6.2.3); `None` for an empty stream.
fn stream_tags(member: &[u8]) -> Vec<Option<u8>> {
    let mut p = 0;
    let mut lens = Vec::new();
    for _ in 0..3 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = member[p];
            p += 1;
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        lens.push(v as usize);
    }
    lens.iter()
        .map(|&l| {
            let tag = (l > 0).then(|| member[p]);
            p += l;
            tag
        })
        .collect()
}

#[test]
fn split_diff_streams_use_lzma2_where_smaller_and_round_trip() {
    // Text-like data with scattered edits and moved little-endian numbers: small redundant
    // streams, where LZMA2 beats zstd.
    let mut old = Vec::new();
    for i in 0u32..20_000 {
        old.extend_from_slice(format!("line {} of the old file ", i % 977).as_bytes());
        old.extend_from_slice(&(i * 16).to_le_bytes());
    }
    let mut new = old.clone();
    for i in (0..new.len() - 4).step_by(97) {
        let v = u32::from_le_bytes(new[i..i + 4].try_into().expect("4 bytes"));
        new[i..i + 4].copy_from_slice(&v.wrapping_add(0x40).to_le_bytes());
    }
    new.splice(
        5000..5000,
        b"inserted text that is not in the old file".iter().copied(),
    );
    let opts = EncodeOptions::default();
    let member = encode::encode_as(&old, &new, &Chosen::SplitDiff, &opts).expect("encode");
    let tags = stream_tags(&member);
    assert!(
        tags.iter().flatten().any(|&t| (12..=24).contains(&t)),
        "no LZMA2 stream: {tags:?}"
    );
    assert_eq!(round_trip(&old, &new, &Chosen::SplitDiff, &opts), new);
}

#[test]
fn incompressible_files_are_compressed_at_level_1_and_round_trip() {
    let noise = fixtures::noise(0x2545_f491_4f6c_dd1d, 3 << 20);
    let prose = text(3 << 20, 5);
    assert_eq!(encode::level_for_sample(&noise[..1 << 20], 19), 1);
    assert_eq!(encode::level_for_sample(&prose[..1 << 20], 19), 19);
    // Short samples and low levels are left alone.
    assert_eq!(encode::level_for_sample(&noise[..1000], 19), 19);
    assert_eq!(encode::level_for_sample(&noise[..1 << 20], 1), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    for data in [&noise, &prose] {
        let p = dir.path().join("f");
        std::fs::write(&p, data).expect("write");
        let z = encode::compress_file(&p, formats::Pin::of(data), 19).expect("compress");
        assert_eq!(&zstd::decode_all(z.as_slice()).expect("decode"), data);
    }
}

/// `old` → `new` as `exe-project-diff` at level 1, with the whole old file as code and one
/// segment per file, through `produce`.
fn whole_code_round_trip(old: &[u8], new: &[u8], rules: u8) -> Vec<u8> {
    use formats::exe_filter::Arch;
    use formats::exe_project::Projection;
    let seg = |len: usize| vec![[0, 0x40_0000, len as u64]];
    let project = Projection {
        arch: Arch::X86_64,
        old_code: vec![[0, old.len() as u64]],
        old_segments: seg(old.len()),
        new_segments: seg(new.len()),
        old_rela: None,
        old_eh_frame_hdr: None,
        new_eh_frame_hdr_addr: None,
        old_eh_frame: None,
        rules,
    };
    let opts = EncodeOptions {
        level: 1,
        ..EncodeOptions::default()
    };
    round_trip(old, new, &Chosen::ExeProjectDiff(project), &opts)
}

/// An old file larger than the client keeps in memory, projected
/// ([`patch_apply::decode::PROJECTED_IN_MEMORY_MAX`]): the client writes the projected file to
/// a temporary file and applies the split diff from there, to the same bytes.
#[test]
fn an_exe_project_diff_of_an_old_file_too_large_to_hold_round_trips() {
    let n = (patch_apply::decode::PROJECTED_IN_MEMORY_MAX + (1 << 20)) as usize;
    let old = code(n, 17);
    let mut new = mutate(&old, 23);
    // Code moved: every reference after the insertion shifts.
    new.splice(n / 3..n / 3, code(4096, 29));
    assert!(whole_code_round_trip(&old, &new, 2) == new);
}

/// Code the client cannot project in pieces (a run of `E8` whose 5-byte calls fall out of step
/// with a piece boundary for good): it reads the old file again and projects it on one thread,
/// to the bytes the creator projected.
#[test]
fn an_exe_project_diff_whose_pieces_cannot_be_stitched_round_trips() {
    // Two pieces of about 1 MiB on a machine of two cores or more; the boundary is at
    // 1,048,577, which is not a multiple of 5.
    let old = vec![0xE8u8; (2 << 20) + 2];
    let mut new = old.clone();
    new[1000..1005].copy_from_slice(b"\x90\x90\x90\x90\x90");
    new.splice(4000..4000, [0x90; 7]);
    assert!(whole_code_round_trip(&old, &new, 1) == new);
}
