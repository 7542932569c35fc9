//! The projection of the `exe-project-diff` encoding (docs/format.md §6.2.6): the old
//! executable's references (x86-64 relative operands in code, `R_X86_64_RELATIVE`
//! relocations and the pointers they fill, the `.eh_frame_hdr` search table) are rewritten to
//! the values they would have if every byte of the old file had moved where an *equivalence
//! map* says it went in the new file. Code that only moved then has the same bytes in the
//! projected old file as in the new one, although each of its branches and pointers shifted by
//! a different amount, which no fixed filter can undo.
//!
//! The creator and the client run [`project`] on the same old bytes with the same signed
//! [`Projection`] and the same [`EqMap`], so they build the same projected file; the diff is
//! taken against it. Nothing here has to be invertible. Pure functions on bytes, no I/O.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exe_filter::{check_ranges, Arch, CodeRange};

/// The most load segments a projection may name per file.
pub const MAX_SEGMENTS: usize = 64;
/// Largest old file the encoding accepts: the client holds the old file in memory while it
/// projects it.
pub const MAX_OLD_SIZE: u64 = 256 << 20;
/// Largest decompressed equivalence map.
pub const MAX_MAP_BYTES: u64 = 16 << 20;
/// Size of one `Elf64_Rela` entry.
const RELA_SIZE: u64 = 24;
/// `R_X86_64_RELATIVE`.
const R_X86_64_RELATIVE: u64 = 8;

/// A loaded segment `[file offset, virtual address, size in the file]`, in JSON as an array.
pub type Segment = [u64; 3];

/// What the client needs to project the old file of one op: where its references are, and how
/// file offsets and addresses correspond in both files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// Instruction set (only `x86-64` is projected by this version).
    pub arch: Arch,
    /// Code ranges of the old file (sorted, disjoint, as [`check_ranges`] wants).
    pub old_code: Vec<CodeRange>,
    /// Loaded segments of the old file.
    pub old_segments: Vec<Segment>,
    /// Loaded segments of the new file.
    pub new_segments: Vec<Segment>,
    /// `[offset, length]` of the old file's table of RELA relocations, if projected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_rela: Option<[u64; 2]>,
    /// `[offset, length]` of the old file's `.eh_frame_hdr`, if projected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_eh_frame_hdr: Option<[u64; 2]>,
    /// Virtual address of the new file's `.eh_frame_hdr` (with `old_eh_frame_hdr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_eh_frame_hdr_addr: Option<u64>,
}

impl Projection {
    /// Checks the projection of an op whose old file has `old_size` bytes; `what` names the
    /// op in errors.
    pub fn validate(&self, what: &str, old_size: u64) -> Result<()> {
        if self.arch != Arch::X86_64 {
            return Err(Error::invalid(
                what,
                "exe-project-diff projects x86-64 code only",
            ));
        }
        if old_size > MAX_OLD_SIZE {
            return Err(Error::invalid(
                what,
                format!("old file of {old_size} bytes, more than the {MAX_OLD_SIZE} this encoding accepts"),
            ));
        }
        check_ranges(&format!("{what}: old_code"), &self.old_code, old_size)?;
        for (name, segs) in [
            ("old_segments", &self.old_segments),
            ("new_segments", &self.new_segments),
        ] {
            if segs.len() > MAX_SEGMENTS
                || segs
                    .iter()
                    .any(|s| s[0].checked_add(s[2]).is_none() || s[1].checked_add(s[2]).is_none())
            {
                return Err(Error::invalid(
                    what,
                    format!("{name}: more than {MAX_SEGMENTS} segments or one that wraps around"),
                ));
            }
        }
        let in_file = |r: Option<[u64; 2]>| {
            r.is_none_or(|[o, l]| o.checked_add(l).is_some_and(|e| e <= old_size))
        };
        if !in_file(self.old_rela) || !in_file(self.old_eh_frame_hdr) {
            return Err(Error::invalid(
                what,
                "old_rela or old_eh_frame_hdr past the end of the old file",
            ));
        }
        if self.old_eh_frame_hdr.is_some() != self.new_eh_frame_hdr_addr.is_some() {
            return Err(Error::invalid(
                what,
                "old_eh_frame_hdr and new_eh_frame_hdr_addr go together",
            ));
        }
        Ok(())
    }
}

/// The equivalence map: disjoint ranges of the old file, each with the distance it moved to
/// in the new file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EqMap {
    /// `(old start, length, new start − old start)`, sorted by start, disjoint, non-empty.
    entries: Vec<(u64, u64, i64)>,
}

/// Appends `v` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl EqMap {
    /// A map from `(old start, new start, length)` equivalences: the longest ones first,
    /// each keeps the parts of its old range that no longer one holds (a short match of
    /// look-alike code elsewhere must not shadow the long alignment around it); empty ones are
    /// dropped.
    pub fn from_equivalences(mut eqs: Vec<(u64, u64, u64)>) -> EqMap {
        eqs.sort_unstable_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        // Accepted ranges: start -> (end, shift).
        let mut taken: std::collections::BTreeMap<u64, (u64, i64)> =
            std::collections::BTreeMap::new();
        for (o, n, l) in eqs {
            let (Some(end), shift) = (o.checked_add(l), n as i64 - o as i64) else {
                continue;
            };
            let mut at = o;
            // A range that starts before `o` may reach into it.
            if let Some((_, &(e, _))) = taken.range(..o).next_back() {
                at = at.max(e);
            }
            let mut pieces = Vec::new();
            for (&s, &(e, _)) in taken.range(o..end) {
                if s > at {
                    pieces.push((at, s));
                }
                at = at.max(e);
            }
            if at < end {
                pieces.push((at, end));
            }
            for (s, e) in pieces {
                taken.insert(s, (e, shift));
            }
        }
        EqMap {
            entries: taken
                .into_iter()
                .map(|(s, (e, shift))| (s, e - s, shift))
                .collect(),
        }
    }

    /// The entries `(old start, length, shift)`.
    pub fn entries(&self) -> &[(u64, u64, i64)] {
        &self.entries
    }

    /// The map restricted to the entries whose index `keep` says.
    pub fn retain(&self, keep: &[bool]) -> EqMap {
        EqMap {
            entries: self
                .entries
                .iter()
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|(e, _)| *e)
                .collect(),
        }
    }

    /// The index of the entry holding old offset `x`.
    pub fn entry_of(&self, x: u64) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.0 <= x).checked_sub(1)?;
        let (o, l, _) = self.entries[i];
        (x - o < l).then_some(i)
    }

    /// Where old offset `x` went in the new file, if the map says.
    pub fn map(&self, x: u64) -> Option<u64> {
        let (_, _, s) = self.entries[self.entry_of(x)?];
        x.checked_add_signed(s)
    }

    /// The map's serialised form (§6.2.6): per entry, varints of zigzag(start − previous end),
    /// length and zigzag(shift − previous shift).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 6);
        let (mut end, mut shift) = (0u64, 0i64);
        for &(o, l, s) in &self.entries {
            put_varint(
                &mut out,
                crate::split_diff::zigzag(o.wrapping_sub(end) as i64),
            );
            put_varint(&mut out, l);
            put_varint(&mut out, crate::split_diff::zigzag(s.wrapping_sub(shift)));
            end = o + l;
            shift = s;
        }
        out
    }

    /// Parses a serialised map of an old file of `old_size` bytes; every entry must be
    /// non-empty, in order, disjoint and inside the old file.
    pub fn decode(what: &str, bytes: &[u8], old_size: u64) -> Result<EqMap> {
        let bad = |r: &str| Error::invalid(what, format!("equivalence map: {r}"));
        let mut at = 0usize;
        let mut varint = || -> Result<Option<u64>> {
            if at == bytes.len() {
                return Ok(None);
            }
            let (mut v, mut shift) = (0u64, 0u32);
            loop {
                let b = *bytes.get(at).ok_or_else(|| bad("truncated varint"))?;
                at += 1;
                if shift >= 64 || (shift == 63 && b > 1) {
                    return Err(bad("varint overflows 64 bits"));
                }
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(Some(v));
                }
                shift += 7;
            }
        };
        let mut entries = Vec::new();
        let (mut end, mut shift) = (0u64, 0i64);
        while let Some(gap) = varint()? {
            let gap = crate::split_diff::unzigzag(gap);
            let len = varint()?.ok_or_else(|| bad("truncated entry"))?;
            let ds = varint()?.ok_or_else(|| bad("truncated entry"))?;
            let start = u64::try_from(gap)
                .ok()
                .and_then(|g| end.checked_add(g))
                .ok_or_else(|| bad("an entry starts before the previous one ends"))?;
            let stop = start
                .checked_add(len)
                .filter(|&s| len > 0 && s <= old_size)
                .ok_or_else(|| bad("an entry is empty or ends past the old file"))?;
            shift = shift.wrapping_add(crate::split_diff::unzigzag(ds));
            entries.push((start, len, shift));
            end = stop;
        }
        Ok(EqMap { entries })
    }
}

/// File offset → address through `segs` (the first segment holding it).
fn addr_of(segs: &[Segment], off: u64) -> Option<u64> {
    segs.iter()
        .find(|s| off >= s[0] && off - s[0] < s[2])
        .map(|s| off - s[0] + s[1])
}

/// Address → file offset through `segs`.
fn off_of(segs: &[Segment], addr: u64) -> Option<u64> {
    segs.iter()
        .find(|s| addr >= s[1] && addr - s[1] < s[2])
        .map(|s| addr - s[1] + s[0])
}

/// The state of one projection run; `used[i]` records that entry `i` of the map decided a
/// rewrite that changed bytes (the creator keeps only those entries).
struct Run<'a> {
    p: &'a Projection,
    map: &'a EqMap,
    used: Option<&'a mut Vec<bool>>,
}

impl Run<'_> {
    /// Where the old address `a` went, as an address of the new file.
    fn addr(&mut self, a: u64, touched: &mut [Option<usize>; 2], k: usize) -> Option<u64> {
        let off = off_of(&self.p.old_segments, a)?;
        let e = self.map.entry_of(off)?;
        touched[k] = Some(e);
        addr_of(
            &self.p.new_segments,
            off.checked_add_signed(self.map.entries[e].2)?,
        )
    }

    fn mark(&mut self, touched: [Option<usize>; 2]) {
        if let Some(used) = self.used.as_deref_mut() {
            for e in touched.into_iter().flatten() {
                used[e] = true;
            }
        }
    }

    /// Writes `v` at `buf[at..]` (little-endian, `N` bytes); marks the entries when it changed.
    fn put<const N: usize>(
        &mut self,
        buf: &mut [u8],
        at: usize,
        v: [u8; N],
        touched: [Option<usize>; 2],
    ) {
        if buf[at..at + N] != v {
            buf[at..at + N].copy_from_slice(&v);
            self.mark(touched);
        }
    }

    fn rela(&mut self, buf: &mut [u8], [off, len]: [u64; 2]) {
        let rd = |b: &[u8], at: u64| -> u64 {
            let at = at as usize;
            u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
        };
        for e in (0..len / RELA_SIZE).map(|i| off + i * RELA_SIZE) {
            if rd(buf, e + 8) != R_X86_64_RELATIVE {
                continue;
            }
            let (r_off, addend) = (rd(buf, e), rd(buf, e + 16));
            let mut t = [None; 2];
            if let Some(n) = self.addr(r_off, &mut t, 0) {
                self.put(buf, e as usize, n.to_le_bytes(), t);
            }
            let mut t = [None; 2];
            let Some(n) = self.addr(addend, &mut t, 0) else {
                continue;
            };
            self.put(buf, (e + 16) as usize, n.to_le_bytes(), t);
            // The pointer the relocation fills, when the file holds the addend there.
            if let Some(slot) = off_of(&self.p.old_segments, r_off) {
                if slot.checked_add(8).is_some_and(|s| s <= buf.len() as u64)
                    && rd(buf, slot) == addend
                {
                    self.put(buf, slot as usize, n.to_le_bytes(), t);
                }
            }
        }
    }

    fn eh_frame_hdr(&mut self, buf: &mut [u8], [off, len]: [u64; 2], new_hdr: u64) {
        // version 1, eh_frame_ptr pcrel sdata4, fde_count udata4, table datarel sdata4.
        if len < 12 || buf[off as usize..off as usize + 4] != [1, 0x1b, 0x03, 0x3b] {
            return;
        }
        let Some(hdr) = addr_of(&self.p.old_segments, off) else {
            return;
        };
        let o = off as usize;
        let count = u64::from(u32::from_le_bytes([
            buf[o + 8],
            buf[o + 9],
            buf[o + 10],
            buf[o + 11],
        ]));
        for i in 0..count.saturating_mul(2).min((len - 12) / 4) {
            let at = o + 12 + 4 * i as usize;
            let v = i32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let mut t = [None; 2];
            let Some(n) = self.addr(hdr.wrapping_add_signed(i64::from(v)), &mut t, 0) else {
                continue;
            };
            if let Ok(d) = i32::try_from(n.wrapping_sub(new_hdr) as i64) {
                self.put(buf, at, d.to_le_bytes(), t);
            }
        }
    }

    fn code(&mut self, buf: &mut [u8]) {
        for i in 0..self.p.old_code.len() {
            let [start, len] = self.p.old_code[i];
            let (start, end) = (start as usize, (start + len) as usize);
            let mut i = start;
            while i + 6 <= end {
                let b = &buf[i..];
                let field = match b[0] {
                    0xE8 | 0xE9 => Some(i + 1),
                    0x0F if b[1] & 0xF0 == 0x80 => Some(i + 2),
                    0xFF if b[1] == 0x15 || b[1] == 0x25 => Some(i + 2),
                    0x40..=0x4F if matches!(b[1], 0x89 | 0x8B | 0x8D) && b[2] & 0xC7 == 0x05 => {
                        Some(i + 3)
                    }
                    _ => None,
                };
                match field {
                    Some(f) if f + 4 <= end => {
                        self.operand(buf, f);
                        i = f + 4;
                    }
                    _ => i += 1,
                }
            }
        }
    }

    /// Projects the rel32 operand at `buf[f..f + 4]`, whose instruction ends at `f + 4`.
    fn operand(&mut self, buf: &mut [u8], f: usize) {
        let disp = i32::from_le_bytes([buf[f], buf[f + 1], buf[f + 2], buf[f + 3]]);
        let pc_off = f as u64 + 4;
        let Some(pc) = addr_of(&self.p.old_segments, pc_off) else {
            return;
        };
        let mut t = [None; 2];
        let Some(target) = self.addr(pc.wrapping_add_signed(i64::from(disp)), &mut t, 0) else {
            return;
        };
        let Some(e) = self.map.entry_of(f as u64) else {
            return;
        };
        t[1] = Some(e);
        let Some(new_pc) = pc_off
            .checked_add_signed(self.map.entries[e].2)
            .and_then(|o| addr_of(&self.p.new_segments, o))
        else {
            return;
        };
        if let Ok(d) = i32::try_from(target.wrapping_sub(new_pc) as i64) {
            self.put(buf, f, d.to_le_bytes(), t);
        }
    }
}

/// Projects `buf`, the old file (checked with [`Projection::validate`] against its size),
/// through `map`, in place: first the relocations, then the `.eh_frame_hdr` table, then the
/// code. When `used` is given (as long as the map), it records the entries that changed a byte.
pub fn project(buf: &mut [u8], p: &Projection, map: &EqMap, used: Option<&mut Vec<bool>>) {
    let mut run = Run { p, map, used };
    let size = buf.len() as u64;
    let fits = |r: [u64; 2]| r[0].checked_add(r[1]).is_some_and(|e| e <= size);
    if let Some(r) = p.old_rela.filter(|&r| fits(r)) {
        run.rela(buf, r);
    }
    if let (Some(r), Some(new_hdr)) = (
        p.old_eh_frame_hdr.filter(|&r| fits(r)),
        p.new_eh_frame_hdr_addr,
    ) {
        run.eh_frame_hdr(buf, r, new_hdr);
    }
    if p.old_code.iter().all(|&r| fits(r)) {
        run.code(buf);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn proj(size: u64) -> Projection {
        Projection {
            arch: Arch::X86_64,
            old_code: vec![[0, size / 2]],
            old_segments: vec![[0, 0x1000, size]],
            new_segments: vec![[0, 0x1000, size + 64]],
            old_rela: None,
            old_eh_frame_hdr: None,
            new_eh_frame_hdr_addr: None,
        }
    }

    #[test]
    fn a_call_follows_its_callee() {
        // call at 0x10 to 0x80; in the new file the code around the call moved by +4 and the
        // callee by +20: the projected operand is the new distance.
        let mut b = vec![0x90u8; 0x100];
        b[0x10] = 0xE8;
        b[0x11..0x15].copy_from_slice(&(0x80i32 - 0x15).to_le_bytes());
        let map = EqMap::from_equivalences(vec![(0, 4, 0x40), (0x40, 0x54, 0x60)]);
        let mut used = vec![false; map.entries().len()];
        project(&mut b, &proj(0x100), &map, Some(&mut used));
        assert_eq!(&b[0x11..0x15], &(0x94i32 - 0x19).to_le_bytes());
        assert_eq!(used, vec![true, true]);
        // Outside the map nothing changes.
        let mut c = vec![0x90u8; 0x100];
        c[0x10] = 0xE8;
        c[0x11..0x15].copy_from_slice(&(0x80i32 - 0x15).to_le_bytes());
        let before = c.clone();
        project(&mut c, &proj(0x100), &EqMap::default(), None);
        assert_eq!(c, before);
    }

    #[test]
    fn relocations_and_their_slots_follow_the_map() {
        let mut b = vec![0u8; 0x200];
        // One RELATIVE relocation at 0x20: slot 0x1180 (file 0x180), addend 0x1100.
        b[0x20..0x28].copy_from_slice(&0x1180u64.to_le_bytes());
        b[0x28..0x30].copy_from_slice(&8u64.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&0x1100u64.to_le_bytes());
        b[0x180..0x188].copy_from_slice(&0x1100u64.to_le_bytes());
        let mut p = proj(0x200);
        p.old_code = vec![];
        p.old_rela = Some([0x20, 24]);
        let map = EqMap::from_equivalences(vec![(0x100, 0x110, 0x100)]);
        project(&mut b, &p, &map, None);
        assert_eq!(&b[0x20..0x28], &0x1190u64.to_le_bytes());
        assert_eq!(&b[0x30..0x38], &0x1110u64.to_le_bytes());
        assert_eq!(&b[0x180..0x188], &0x1110u64.to_le_bytes());
    }

    #[test]
    fn overlapping_equivalences_are_cut() {
        // The longest keeps its whole range; shorter ones keep what is left of theirs.
        let m = EqMap::from_equivalences(vec![(10, 100, 20), (0, 50, 15), (12, 0, 4), (29, 7, 3)]);
        assert_eq!(m.entries(), &[(0, 10, 50), (10, 20, 90), (30, 2, -22)]);
        assert_eq!(m.map(16), Some(106));
        assert_eq!(m.map(31), Some(9));
        assert_eq!(m.map(32), None);
    }

    #[test]
    fn bad_maps_are_refused() {
        let ok = EqMap::from_equivalences(vec![(0, 9, 4), (8, 0, 2)]).encode();
        assert!(EqMap::decode("m", &ok, 10).is_ok());
        assert!(EqMap::decode("m", &ok, 9).is_err()); // past the end
        assert!(EqMap::decode("m", &ok[..ok.len() - 1], 10).is_err()); // truncated
        assert!(EqMap::decode("m", &[1, 4, 0], 10).is_err()); // starts before the previous end
        assert!(EqMap::decode("m", &[0, 0, 0], 10).is_err()); // empty
        assert!(EqMap::decode("m", &[0xFF; 11], 10).is_err()); // overflow
    }

    #[test]
    fn projections_are_validated() {
        let mut p = proj(100);
        assert!(p.validate("p", 100).is_ok());
        p.old_rela = Some([90, 24]);
        assert!(p.validate("p", 100).is_err());
        p.old_rela = None;
        p.new_eh_frame_hdr_addr = Some(5);
        assert!(p.validate("p", 100).is_err());
        let mut q = proj(100);
        q.arch = Arch::Aarch64;
        assert!(q.validate("p", 100).is_err());
        assert!(proj(100).validate("p", MAX_OLD_SIZE + 1).is_err());
    }

    proptest! {
        #[test]
        fn maps_round_trip(eqs in prop::collection::vec((0u64..5000, 0u64..5000, 1u64..300), 0..40)) {
            let m = EqMap::from_equivalences(eqs);
            prop_assert_eq!(EqMap::decode("m", &m.encode(), 6000).unwrap(), m);
        }

        #[test]
        fn projection_never_panics(data in prop::collection::vec(prop_oneof![any::<u8>(), Just(0xE8u8), Just(0x0F), Just(0x48), Just(0x8B), Just(0x05), Just(8)], 0..600),
                                   eqs in prop::collection::vec((0u64..700, 0u64..700, 1u64..300), 0..8),
                                   rela in (0u64..700, 0u64..200), hdr in (0u64..700, 0u64..100)) {
            let size = data.len() as u64;
            let p = Projection {
                arch: Arch::X86_64,
                old_code: vec![[0, size]].into_iter().filter(|r| r[1] > 0).collect(),
                old_segments: vec![[0, 0x1000, size], [size / 2, 0x8000, size / 2]],
                new_segments: vec![[0, 0x1000, size + 100]],
                old_rela: Some([rela.0, rela.1]),
                old_eh_frame_hdr: Some([hdr.0, hdr.1]),
                new_eh_frame_hdr_addr: Some(0x1010),
            };
            let map = EqMap::from_equivalences(eqs);
            let mut a = data.clone();
            project(&mut a, &p, &map, None);
            let mut b = data.clone();
            let mut used = vec![false; map.entries().len()];
            project(&mut b, &p, &map, Some(&mut used));
            // The same bytes, whether or not the entries are recorded, and with the map cut to the
            // entries that changed a byte.
            prop_assert_eq!(&a, &b);
            let mut c = data;
            project(&mut c, &p, &map.retain(&used), None);
            prop_assert_eq!(&c, &a);
        }
    }
}
