//! The `exe-split-diff` candidate (docs/format.md §6.2.5): executables are recognised with the
//! `object` crate (parsing only; a file that does not parse is simply not an executable), their
//! code sections become the filter's ranges, and both files are diffed after the branch filter
//! of [`formats::exe_filter`] made their relative operands absolute.

use formats::exe_filter::{self, Arch, CodeRange, Direction, ExeFilter, MAX_RANGES};
use formats::exe_project::{self, EqMap, Projection, Segment, MAX_OLD_SIZE, MAX_SEGMENTS};
use object::{Architecture, BinaryFormat, Object, ObjectSection, ObjectSegment, SectionKind};

/// The instruction set and code ranges of an executable or library in `bytes`, or `None` when
/// it is not an ELF, PE or Mach-O file for x86-64 or AArch64 with code sections. Ranges are
/// sorted and merged; more than [`MAX_RANGES`] are joined into one covering all of them.
pub fn code_ranges(bytes: &[u8]) -> Option<(Arch, Vec<CodeRange>)> {
    let file = object::File::parse(bytes).ok()?;
    let arch = match file.architecture() {
        Architecture::X86_64 => Arch::X86_64,
        Architecture::Aarch64 => Arch::Aarch64,
        _ => return None,
    };
    let size = bytes.len() as u64;
    let mut ranges: Vec<CodeRange> = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .filter_map(|s| s.file_range())
        .filter(|&(start, len)| len > 0 && start.checked_add(len).is_some_and(|e| e <= size))
        .map(|(start, len)| [start, len])
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<CodeRange> = Vec::with_capacity(ranges.len());
    for [start, len] in ranges {
        match merged.last_mut() {
            Some(last) if start <= last[0] + last[1] => {
                last[1] = last[1].max(start + len - last[0]);
            }
            _ => merged.push([start, len]),
        }
    }
    if merged.len() > MAX_RANGES {
        let (first, last) = (merged[0], merged[merged.len() - 1]);
        merged = vec![[first[0], last[0] + last[1] - first[0]]];
    }
    (!merged.is_empty()).then_some((arch, merged))
}

/// The loaded segments of an executable (file offset, address, size in the file), when there
/// are at most [`MAX_SEGMENTS`].
fn segments(file: &object::File) -> Option<Vec<Segment>> {
    let segs: Vec<Segment> = file
        .segments()
        .filter_map(|s| {
            let (off, size) = s.file_range();
            (size > 0).then_some([off, s.address(), size])
        })
        .collect();
    (!segs.is_empty() && segs.len() <= MAX_SEGMENTS).then_some(segs)
}

/// Largest old file offered the `exe-project-diff` candidate. The client holds the old file in
/// memory while it projects it; 48 MiB keeps an update's apply within its 64 MB goal
/// (the format itself accepts up to [`MAX_OLD_SIZE`]).
pub const PROJECT_MAX_OLD: u64 = 48 << 20;

/// The projection of the pair `old` → `new` (docs/format.md §6.2.6) when both are x86-64 ELF
/// files with loaded segments and code, and the old file is at most [`PROJECT_MAX_OLD`] bytes:
/// its code ranges, both files' segments, the old `.rela.dyn`, `.eh_frame_hdr` and `.eh_frame`.
pub fn projection_for(old: &[u8], new: &[u8]) -> Option<Projection> {
    if old.len() as u64 > PROJECT_MAX_OLD.min(MAX_OLD_SIZE) {
        return None;
    }
    let (fo, fnew) = (
        object::File::parse(old).ok()?,
        object::File::parse(new).ok()?,
    );
    let elf_x86 = |f: &object::File| {
        f.format() == BinaryFormat::Elf && f.architecture() == Architecture::X86_64
    };
    if !elf_x86(&fo) || !elf_x86(&fnew) {
        return None;
    }
    let (Arch::X86_64, old_code) = code_ranges(old)? else {
        return None;
    };
    let range = |f: &object::File, name: &str| {
        f.section_by_name(name)
            .and_then(|s| s.file_range())
            .map(|(o, l)| [o, l])
    };
    let hdr = range(&fo, ".eh_frame_hdr");
    let new_hdr = fnew.section_by_name(".eh_frame_hdr").map(|s| s.address());
    let both = hdr.is_some() && new_hdr.is_some();
    let p = Projection {
        arch: Arch::X86_64,
        old_code,
        old_segments: segments(&fo)?,
        new_segments: segments(&fnew)?,
        old_rela: range(&fo, ".rela.dyn"),
        old_eh_frame_hdr: hdr.filter(|_| both),
        new_eh_frame_hdr_addr: new_hdr.filter(|_| both),
        old_eh_frame: range(&fo, ".eh_frame"),
        rules: exe_project::RULES_LATEST,
    };
    p.validate("projection", old.len() as u64).ok()?;
    Some(p)
}

/// Equivalences `(old start, new start, length)` that align the `.eh_frame` records of `old`
/// with those of `new` describing the same function, as the map `map` moved it.
///
/// Every FDE holds its function's address relative to its own, so after a recompilation few
/// FDEs are byte-identical and the diff's matches rarely reach [`crate::encode::MIN_EQ`]
/// bytes there: without these equivalences the projection would not know where an FDE went.
/// An old FDE whose function `map` moves to where a new FDE's function starts, with a record
/// of the same length, is paired with it.
pub fn frame_equivalences(
    old: &[u8],
    new: &[u8],
    p: &Projection,
    map: &EqMap,
) -> Vec<(u64, u64, u64)> {
    let Some([off, len]) = p.old_eh_frame else {
        return vec![];
    };
    let Some((new_off, new_len)) = object::File::parse(new)
        .ok()
        .and_then(|f| f.section_by_name(".eh_frame")?.file_range())
    else {
        return vec![];
    };
    // The function address of an FDE: its initial location field holds it relative to the
    // field's own address.
    let target = |buf: &[u8], segs: &[Segment], f: usize| -> Option<u64> {
        let v = i32::from_le_bytes(buf.get(f..f + 4)?.try_into().ok()?);
        Some(exe_project::addr_of(segs, f as u64)?.wrapping_add_signed(i64::from(v)))
    };
    let by_function: std::collections::HashMap<u64, exe_project::FrameRecord> =
        exe_project::frame_records(new, new_off as usize, new_len as usize)
            .into_iter()
            .filter(|r| r.fde)
            .filter_map(|r| Some((target(new, &p.new_segments, r.fields[0]?)?, r)))
            .collect();
    exe_project::frame_records(old, off as usize, len as usize)
        .into_iter()
        .filter(|r| r.fde)
        .filter_map(|r| {
            let f = target(old, &p.old_segments, r.fields[0]?)?;
            let moved = exe_project::addr_of(
                &p.new_segments,
                map.map(exe_project::off_of(&p.old_segments, f)?)?,
            )?;
            let n = by_function.get(&moved)?;
            (n.len == r.len).then_some((r.start as u64, n.start as u64, r.len as u64))
        })
        .collect()
}

/// The operand span of a pair: the smallest log within the format's bounds whose span covers
/// the larger file (no branch inside one file reaches further).
pub fn span_log(old_len: usize, new_len: usize) -> u8 {
    let n = old_len.max(new_len).max(1) as u64;
    let log = 64 - (n - 1).leading_zeros();
    log.clamp(
        u32::from(exe_filter::MIN_SPAN_LOG),
        u32::from(exe_filter::MAX_SPAN_LOG),
    ) as u8
}

/// The filter of the pair `old` → `new` when both are executables of the same instruction set.
pub fn filter_for(old: &[u8], new: &[u8]) -> Option<ExeFilter> {
    let (old_arch, old_code) = code_ranges(old)?;
    let (new_arch, new_code) = code_ranges(new)?;
    (old_arch == new_arch).then(|| ExeFilter {
        arch: old_arch,
        span_log: span_log(old.len(), new.len()),
        old_code,
        new_code,
    })
}

/// Runs `filter` forwards over `old` and `new` in place (the creator's side).
pub fn encode_pair(filter: &ExeFilter, old: &mut [u8], new: &mut [u8]) {
    let (a, s) = (filter.arch, filter.span_log);
    rayon::join(
        || exe_filter::apply(old, a, s, &filter.old_code, Direction::Encode),
        || exe_filter::apply(new, a, s, &filter.new_code, Direction::Encode),
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn not_executables_are_not_recognised() {
        assert!(code_ranges(b"").is_none());
        assert!(code_ranges(b"\x7fELF garbage that is not a header").is_none());
        assert!(code_ranges(&[0u8; 4096]).is_none());
        let mut truncated = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        truncated.truncate(200);
        assert!(code_ranges(&truncated).is_none());
    }

    #[test]
    fn this_test_binary_is_recognised() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let (arch, ranges) = code_ranges(&me).unwrap();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(arch, Arch::X86_64);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(arch, Arch::Aarch64);
        let _ = arch;
        exe_filter::check_ranges("me", &ranges, me.len() as u64).unwrap();
        let covered: u64 = ranges.iter().map(|r| r[1]).sum();
        assert!(covered > 64 << 10, "{ranges:?}");
    }

    #[test]
    fn span_covers_the_larger_file() {
        assert_eq!(span_log(10, 20), 16);
        assert_eq!(span_log(33_772_288, 33_378_784), 26);
        assert_eq!(span_log(1 << 25, 1), 25);
        assert_eq!(span_log(usize::MAX, 0), 30);
    }
}
