//! The branch filter of the `exe-split-diff` encoding (docs/format.md §6.2.5): inside the code
//! ranges of an executable, relative branch, call and address operands are rewritten into an
//! absolute form before diffing, so that code which moved keeps the same bytes where its
//! targets moved with it. Pure functions on bytes, no I/O.
//!
//! The transform is a bijection for any bytes and any ranges: the scanner only looks at bytes
//! it has not rewritten, and it rewrites an operand only when its value lies in a set that the
//! rewrite maps onto itself, so [`Filter`] run [`Direction::Decode`] on the output of a
//! [`Direction::Encode`] run makes the same decisions and restores every byte. It streams:
//! bytes can be fed in pieces of any size ([`Filter::run`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most code ranges an `exe-split-diff` op may name per file.
pub const MAX_RANGES: usize = 64;
/// Smallest accepted [`ExeFilter::span_log`].
pub const MIN_SPAN_LOG: u8 = 16;
/// Largest accepted [`ExeFilter::span_log`].
pub const MAX_SPAN_LOG: u8 = 30;

/// The instruction set whose operands are rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// x86-64: `call`/`jmp` rel32 (E8, E9), `Jcc` rel32 (0F 80..8F) and RIP-relative
    /// `mov`/`lea` disp32 (REX 8B/89/8D with ModRM mod 00, r/m 101).
    #[serde(rename = "x86-64")]
    X86_64,
    /// AArch64: `B`/`BL` imm26 and `ADRP` imm21.
    Aarch64,
}

/// A byte range `[start, start + len)` of a file, in JSON `[start, len]`.
pub type CodeRange = [u64; 2];

/// What the filter of one file pair does: the architecture, the operand span (x86-64) and the
/// code ranges of the old and the new file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExeFilter {
    /// Instruction set.
    pub arch: Arch,
    /// x86-64 operands `v` with `-2^span_log <= v < 2^span_log` are rewritten (ignored, but
    /// still checked, for AArch64).
    pub span_log: u8,
    /// Code ranges of the old file, sorted, disjoint, non-empty.
    pub old_code: Vec<CodeRange>,
    /// Code ranges of the new file, same rules.
    pub new_code: Vec<CodeRange>,
}

impl ExeFilter {
    /// Checks the span and the ranges of the new file against its size `new_size`; `what`
    /// names the op in errors. The old ranges are checked against the old file by
    /// [`check_ranges`] when it is known.
    pub fn validate(&self, what: &str, new_size: u64) -> Result<()> {
        if !(MIN_SPAN_LOG..=MAX_SPAN_LOG).contains(&self.span_log) {
            return Err(Error::invalid(
                what,
                format!("span_log {} out of range", self.span_log),
            ));
        }
        check_ranges(&format!("{what}: old_code"), &self.old_code, u64::MAX)?;
        check_ranges(&format!("{what}: new_code"), &self.new_code, new_size)
    }
}

/// Checks that `ranges` are at most [`MAX_RANGES`], non-empty, sorted, disjoint and end
/// within `size` bytes.
pub fn check_ranges(what: &str, ranges: &[CodeRange], size: u64) -> Result<()> {
    if ranges.len() > MAX_RANGES {
        return Err(Error::invalid(
            what,
            format!("{} ranges, more than {MAX_RANGES}", ranges.len()),
        ));
    }
    let mut prev_end = 0u64;
    for &[start, len] in ranges {
        let end = start.checked_add(len).filter(|&e| e <= size);
        match end {
            Some(end) if len > 0 && start >= prev_end => prev_end = end,
            _ => {
                return Err(Error::invalid(
                    what,
                    format!("range [{start}, {len}] is empty, unsorted, overlapping or past the end of the file ({size} bytes)"),
                ))
            }
        }
    }
    Ok(())
}

/// Which way the filter runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Relative operands become absolute (the creator, on both files; the client, on the old).
    Encode,
    /// Absolute operands become relative again (the client, on the diff's output).
    Decode,
}

/// Longest x86-64 pattern: REX, opcode, ModRM, disp32.
const X86_LOOKAHEAD: u64 = 7;

/// A streaming run of the filter over one file.
#[derive(Clone, Debug)]
pub struct Filter {
    arch: Arch,
    dir: Direction,
    span_log: u32,
    ranges: Vec<CodeRange>,
    /// Index of the range holding (or following) `next`.
    range: usize,
    /// File offset of the next scan position.
    next: u64,
}

impl Filter {
    /// A filter over a file whose code ranges are `ranges` (sorted and disjoint, as checked by
    /// [`check_ranges`]; ranges past the end of the data are cut at its end).
    pub fn new(arch: Arch, span_log: u8, ranges: &[CodeRange], dir: Direction) -> Self {
        Filter {
            arch,
            dir,
            span_log: u32::from(span_log.clamp(MIN_SPAN_LOG, MAX_SPAN_LOG)),
            ranges: ranges.to_vec(),
            range: 0,
            next: 0,
        }
    }

    /// Transforms in place `buf`, which holds the file's bytes from offset `at`, and returns
    /// how many of its leading bytes are final. The caller hands the bytes after those again,
    /// at their offset, with more bytes behind them, in the next call; `last` says that `buf`
    /// reaches the end of the file (then every byte is final and the return is `buf.len()`).
    pub fn run(&mut self, buf: &mut [u8], at: u64, last: bool) -> usize {
        let buf_end = at + buf.len() as u64;
        let mut i = self.next.max(at);
        while let Some(&[start, len]) = self.ranges.get(self.range) {
            let range_end = start.saturating_add(len);
            let end = if last {
                range_end.min(buf_end)
            } else {
                range_end
            };
            i = i.max(start);
            if self.arch == Arch::Aarch64 {
                i = i.checked_next_multiple_of(4).unwrap_or(u64::MAX);
            }
            if i >= end {
                self.range += 1;
                continue;
            }
            if i >= buf_end {
                break; // the range starts in bytes still to come
            }
            let stopped = match self.arch {
                Arch::X86_64 => self.x86(buf, at, &mut i, end, buf_end),
                Arch::Aarch64 => self.arm(buf, at, &mut i, end, buf_end),
            };
            if stopped {
                self.next = i;
                return (i - at) as usize;
            }
            self.range += 1;
        }
        self.next = i;
        buf.len()
    }

    /// Scans x86-64 code from `*i` to `end`; returns true when it stopped at `*i` for want of
    /// bytes past `buf_end`.
    fn x86(&self, buf: &mut [u8], at: u64, i: &mut u64, end: u64, buf_end: u64) -> bool {
        while *i < end {
            if (*i).saturating_add(X86_LOOKAHEAD).min(end) > buf_end {
                return true;
            }
            let b = |k: u64| buf[(*i + k - at) as usize];
            let field = if b(0) == 0xE8 || b(0) == 0xE9 {
                Some(*i + 1)
            } else if *i + 1 < end && b(0) == 0x0F && b(1) & 0xF0 == 0x80 {
                Some(*i + 2)
            } else if *i + 2 < end
                && b(0) & 0xF0 == 0x40
                && matches!(b(1), 0x89 | 0x8B | 0x8D)
                && b(2) & 0xC7 == 0x05
            {
                Some(*i + 3)
            } else {
                None
            };
            match field {
                // A matched pattern is passed over whole, converted or not: the bytes a
                // decision looked at are then never rewritten by a later one.
                Some(f) => {
                    if f + 4 <= end {
                        self.x86_operand(buf, (f - at) as usize, f + 4);
                    }
                    *i = f + 4;
                }
                None => *i += 1,
            }
        }
        false
    }

    /// Rewrites the rel32/abs32 operand at `buf[p..p + 4]`, whose instruction ends at file
    /// offset `pc`, when its value is within the span.
    fn x86_operand(&self, buf: &mut [u8], p: usize, pc: u64) {
        let k = self.span_log;
        let half = 1i64 << k;
        let v = i64::from(i32::from_le_bytes([
            buf[p],
            buf[p + 1],
            buf[p + 2],
            buf[p + 3],
        ]));
        if !(-half..half).contains(&v) {
            return;
        }
        let modulus = 1u64 << (k + 1);
        let pc = pc & (modulus - 1);
        let u = (v + half) as u64;
        let u = match self.dir {
            Direction::Encode => (u + pc) & (modulus - 1),
            Direction::Decode => (u + modulus - pc) & (modulus - 1),
        };
        let w = (u as i64 - half) as i32;
        buf[p..p + 4].copy_from_slice(&w.to_le_bytes());
    }

    /// Scans AArch64 code (4-byte words at offsets that are multiples of 4) from `*i` to
    /// `end`; returns true when it stopped for want of bytes past `buf_end`.
    fn arm(&self, buf: &mut [u8], at: u64, i: &mut u64, end: u64, buf_end: u64) -> bool {
        while (*i).saturating_add(4) <= end {
            if *i + 4 > buf_end {
                return true;
            }
            let p = (*i - at) as usize;
            let ins = u32::from_le_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
            let add = |v: u32, pc: u32, mask: u32| match self.dir {
                Direction::Encode => v.wrapping_add(pc) & mask,
                Direction::Decode => v.wrapping_sub(pc) & mask,
            };
            let out = if ins & 0x7C00_0000 == 0x1400_0000 {
                // B / BL: imm26, in words.
                let pc = (*i >> 2) as u32;
                (ins & !0x03FF_FFFF) | add(ins & 0x03FF_FFFF, pc, 0x03FF_FFFF)
            } else if ins & 0x9F00_0000 == 0x9000_0000 {
                // ADRP: imm21 = immhi:immlo, in 4 KiB pages.
                let pc = (*i >> 12) as u32;
                let imm = ((ins >> 29) & 3) | (((ins >> 5) & 0x7_FFFF) << 2);
                let imm = add(imm, pc, 0x1F_FFFF);
                (ins & 0x9F00_001F) | ((imm & 3) << 29) | ((imm >> 2) << 5)
            } else {
                ins
            };
            buf[p..p + 4].copy_from_slice(&out.to_le_bytes());
            *i += 4;
        }
        *i = (*i).max(end);
        false
    }
}

/// Runs the filter over a whole file held in `buf`.
pub fn apply(buf: &mut [u8], arch: Arch, span_log: u8, ranges: &[CodeRange], dir: Direction) {
    Filter::new(arch, span_log, ranges, dir).run(buf, 0, true);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(buf: &[u8], arch: Arch, ranges: &[CodeRange]) -> Vec<u8> {
        let mut b = buf.to_vec();
        apply(&mut b, arch, 20, ranges, Direction::Encode);
        b
    }

    #[test]
    fn x86_call_becomes_absolute() {
        // call +0x10 at offset 0x100: the instruction ends at 0x105, target 0x115.
        let mut b = vec![0u8; 0x200];
        b[0x100] = 0xE8;
        b[0x101..0x105].copy_from_slice(&0x10i32.to_le_bytes());
        let e = enc(&b, Arch::X86_64, &[[0, 0x200]]);
        assert_eq!(&e[0x101..0x105], &0x115i32.to_le_bytes());
        // A backward jump to 0x20 encodes the same target.
        b[0x150] = 0xE9;
        b[0x151..0x155].copy_from_slice(&(0x20i32 - 0x155).to_le_bytes());
        let e = enc(&b, Arch::X86_64, &[[0, 0x200]]);
        assert_eq!(&e[0x151..0x155], &0x20i32.to_le_bytes());
        // Outside the ranges nothing changes.
        assert_eq!(enc(&b, Arch::X86_64, &[[0x160, 0x10]]), b);
    }

    #[test]
    fn x86_rip_relative_lea_and_jcc() {
        let mut b = vec![0x90u8; 64];
        b[8..11].copy_from_slice(&[0x48, 0x8D, 0x05]); // lea rax, [rip + disp32]
        b[11..15].copy_from_slice(&100i32.to_le_bytes());
        b[20..22].copy_from_slice(&[0x0F, 0x84]); // je rel32
        b[22..26].copy_from_slice(&(-6i32).to_le_bytes());
        let e = enc(&b, Arch::X86_64, &[[0, 64]]);
        assert_eq!(&e[11..15], &115i32.to_le_bytes());
        assert_eq!(&e[22..26], &20i32.to_le_bytes());
    }

    #[test]
    fn aarch64_bl_and_adrp() {
        let mut b = vec![0u8; 0x3000];
        let bl = 0x9400_0010u32; // bl +0x40
        b[0x2004..0x2008].copy_from_slice(&bl.to_le_bytes());
        let adrp = 0x9000_0001u32 | (1 << 29); // adrp x1, +1 page
        b[0x2008..0x200C].copy_from_slice(&adrp.to_le_bytes());
        let e = enc(&b, Arch::Aarch64, &[[0x1000, 0x2000]]);
        let w = |p: usize| u32::from_le_bytes(e[p..p + 4].try_into().unwrap());
        assert_eq!(w(0x2004) & 0x03FF_FFFF, 0x10 + 0x2004 / 4);
        let imm = ((w(0x2008) >> 29) & 3) | (((w(0x2008) >> 5) & 0x7_FFFF) << 2);
        assert_eq!(imm, 1 + 2);
        assert_eq!(w(0x2008) & 0x9F00_001F, 0x9000_0001);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(check_ranges("r", &[[0, 4], [4, 4]], 8).is_ok());
        assert!(check_ranges("r", &[[0, 4], [3, 4]], 8).is_err());
        assert!(check_ranges("r", &[[4, 4], [0, 4]], 8).is_err());
        assert!(check_ranges("r", &[[0, 0]], 8).is_err());
        assert!(check_ranges("r", &[[0, 9]], 8).is_err());
        assert!(check_ranges("r", &[[u64::MAX, 2]], u64::MAX).is_err());
        assert!(check_ranges("r", &vec![[0, 1]; MAX_RANGES + 1], 8).is_err());
    }

    /// Call-like bytes: the opcodes the filter looks for, densely, among random ones.
    fn code_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                any::<u8>(),
                Just(0xE8u8),
                Just(0xE9),
                Just(0x0F),
                Just(0x85),
                Just(0x48),
                Just(0x8D),
                Just(0x05),
                Just(0x00),
                Just(0xFF),
                Just(0x94),
                Just(0x90),
            ],
            0..600,
        )
    }

    /// Sorted disjoint ranges, possibly reaching past the end of the data.
    fn ranges() -> impl Strategy<Value = Vec<CodeRange>> {
        prop::collection::vec((0u64..80, 1u64..300), 0..5).prop_map(|gaps| {
            let mut at = 0;
            gaps.into_iter()
                .map(|(gap, len)| {
                    let r = [at + gap, len];
                    at += gap + len;
                    r
                })
                .collect()
        })
    }

    fn arch() -> impl Strategy<Value = Arch> {
        prop_oneof![Just(Arch::X86_64), Just(Arch::Aarch64)]
    }

    /// Runs the filter over `data` fed in pieces cut at `cuts`, keeping the tail the filter
    /// has not finished, as a streaming caller does.
    fn streamed(data: &[u8], f: &mut Filter, cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            let c = c.clamp(fed, data.len());
            pending.extend_from_slice(&data[fed..c]);
            fed = c;
            let last = fed == data.len();
            let at = out.len() as u64;
            let done = f.run(&mut pending, at, last);
            out.extend(pending.drain(..done));
        }
        assert!(pending.is_empty());
        out
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(data in code_bytes(), arch in arch(), span in 16u8..=30, rs in ranges()) {
            let mut b = data.clone();
            apply(&mut b, arch, span, &rs, Direction::Encode);
            apply(&mut b, arch, span, &rs, Direction::Decode);
            prop_assert_eq!(b, data);
        }

        #[test]
        fn encode_inverts_decode(data in code_bytes(), arch in arch(), rs in ranges()) {
            let mut b = data.clone();
            apply(&mut b, arch, 16, &rs, Direction::Decode);
            apply(&mut b, arch, 16, &rs, Direction::Encode);
            prop_assert_eq!(b, data);
        }

        #[test]
        fn streaming_equals_whole(data in code_bytes(), arch in arch(), rs in ranges(),
                                  mut cuts in prop::collection::vec(0usize..600, 0..8),
                                  decode in any::<bool>()) {
            cuts.sort_unstable();
            let dir = if decode { Direction::Decode } else { Direction::Encode };
            let mut whole = data.clone();
            apply(&mut whole, arch, 17, &rs, dir);
            let mut f = Filter::new(arch, 17, &rs, dir);
            prop_assert_eq!(streamed(&data, &mut f, &cuts), whole);
        }
    }
}
