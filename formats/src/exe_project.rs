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
use crate::split_diff::{put_varint, read_varint};

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
    /// `[offset, length]` of the old file's `.eh_frame`, if its records' PC-relative pointers
    /// are projected (rules 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_eh_frame: Option<[u64; 2]>,
    /// Which references are projected (§6.2.6): 1 (absent in JSON) for the first set, 2 adds
    /// `.eh_frame` records and the RIP-relative forms of [`rip_operand`]. Rules 2 need patch
    /// info format `patchkit-patch-5`.
    #[serde(default = "rules_1", skip_serializing_if = "is_rules_1")]
    pub rules: u8,
}

/// The rules this version of the creator writes.
pub const RULES_LATEST: u8 = 2;

fn rules_1() -> u8 {
    1
}

fn is_rules_1(r: &u8) -> bool {
    *r == 1
}

impl Projection {
    /// Checks the projection of an op whose old file has `old_size` bytes; `what` names the
    /// op in errors.
    pub fn validate(&self, what: &str, old_size: u64) -> Result<()> {
        if !(1..=RULES_LATEST).contains(&self.rules) {
            return Err(Error::invalid(
                what,
                format!(
                    "exe-project-diff rules {} (this client knows 1 to {RULES_LATEST})",
                    self.rules
                ),
            ));
        }
        if self.old_eh_frame.is_some() && self.rules < 2 {
            return Err(Error::invalid(what, "old_eh_frame needs rules 2"));
        }
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
        if !in_file(self.old_rela) || !in_file(self.old_eh_frame_hdr) || !in_file(self.old_eh_frame)
        {
            return Err(Error::invalid(
                what,
                "old_rela, old_eh_frame_hdr or old_eh_frame past the end of the old file",
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
    /// `first[p]` = the index of the first entry that ends after the start of page `p`
    /// (pages of `1 << PAGE_LOG` old bytes, up to the page of the last entry's end): a lookup
    /// searches the few entries of one page instead of the whole map.
    first: Vec<u32>,
}

/// Log2 of the pages of [`EqMap`]'s index.
const PAGE_LOG: u32 = 12;

impl EqMap {
    /// The map of `entries` (sorted, disjoint, non-empty), with its page index.
    fn indexed(entries: Vec<(u64, u64, i64)>) -> EqMap {
        let pages = entries
            .last()
            .map_or(0, |&(o, l, _)| ((o + l) >> PAGE_LOG) + 1);
        let mut first = Vec::with_capacity(pages as usize);
        let mut i = 0usize;
        for p in 0..pages {
            let start = p << PAGE_LOG;
            while entries.get(i).is_some_and(|&(o, l, _)| o + l <= start) {
                i += 1;
            }
            // Entries are disjoint and non-empty inside an old file of at most MAX_OLD_SIZE
            // bytes: a u32 holds every index.
            first.push(i as u32);
        }
        EqMap { entries, first }
    }

    /// A map from `(old start, new start, length)` equivalences: the longest ones first,
    /// each keeps the parts of its old range that no longer one holds (a short match of
    /// look-alike code elsewhere must not shadow the long alignment around it); empty ones are
    /// dropped, and touching ranges with the same shift become one entry.
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
        // Touching ranges with the same shift are one entry.
        let mut entries: Vec<(u64, u64, i64)> = Vec::with_capacity(taken.len());
        for (s, (e, shift)) in taken {
            match entries.last_mut() {
                Some(last) if last.0 + last.1 == s && last.2 == shift => last.1 = e - last.0,
                _ => entries.push((s, e - s, shift)),
            }
        }
        EqMap::indexed(entries)
    }

    /// The entries `(old start, length, shift)`.
    pub fn entries(&self) -> &[(u64, u64, i64)] {
        &self.entries
    }

    /// The map restricted to the entries whose index `keep` says.
    pub fn retain(&self, keep: &[bool]) -> EqMap {
        EqMap::indexed(
            self.entries
                .iter()
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|(e, _)| *e)
                .collect(),
        )
    }

    /// The index of the entry holding old offset `x`.
    pub fn entry_of(&self, x: u64) -> Option<usize> {
        // The entry holding `x` ends after its page's start, so it is at `first[p]` or later;
        // it starts before the next page, and every entry after `first[p + 1]` starts after
        // that one ends, past the next page's start: it is at `first[p + 1]` or earlier.
        let p = usize::try_from(x >> PAGE_LOG).ok()?;
        let lo = *self.first.get(p)? as usize;
        let hi = self.first.get(p + 1).map_or(self.entries.len(), |&h| {
            (h as usize + 1).min(self.entries.len())
        });
        let i = (lo + self.entries[lo..hi].partition_point(|e| e.0 <= x)).checked_sub(1)?;
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
            read_varint(bytes, &mut at).map(Some).map_err(bad)
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
        Ok(EqMap::indexed(entries))
    }
}

/// File offset → address through `segs` (the first segment holding it).
pub fn addr_of(segs: &[Segment], off: u64) -> Option<u64> {
    segs.iter()
        .find(|s| off >= s[0] && off - s[0] < s[2])
        .map(|s| off - s[0] + s[1])
}

/// Address → file offset through `segs` (the first segment holding it).
pub fn off_of(segs: &[Segment], addr: u64) -> Option<u64> {
    segs.iter()
        .find(|s| addr >= s[1] && addr - s[1] < s[2])
        .map(|s| addr - s[1] + s[0])
}

/// Whether the range `[offset, length]` lies inside a buffer of `size` bytes.
fn inside([off, len]: [u64; 2], size: u64) -> bool {
    off.checked_add(len).is_some_and(|e| e <= size)
}

/// The state of one projection run; `used[i]` records that entry `i` of the map decided a
/// rewrite that changed bytes (the creator keeps only those entries).
struct Run<'a> {
    p: &'a Projection,
    map: &'a EqMap,
    used: Option<&'a mut Vec<bool>>,
    undo: Option<&'a mut Undo>,
}

/// What a projection overwrote, to put the old file back ([`Undo::restore`]): the creator
/// projects its only copy of the old file in place and needs it back when the projection
/// loses.
#[derive(Debug, Default)]
pub struct Undo {
    /// `(offset, the bytes there before, how many of them)`, in the order written.
    writes: Vec<(usize, [u8; 8], u8)>,
}

impl Undo {
    /// Puts back every byte the projection changed in `buf` (the buffer it projected).
    pub fn restore(self, buf: &mut [u8]) {
        for (at, old, n) in self.writes.into_iter().rev() {
            let n = usize::from(n);
            buf[at..at + n].copy_from_slice(&old[..n]);
        }
    }
}

impl<'a> Run<'a> {
    /// A run that records neither the entries used nor what it overwrites (the client's).
    fn recording_nothing(p: &'a Projection, map: &'a EqMap) -> Self {
        Run {
            p,
            map,
            used: None,
            undo: None,
        }
    }

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
            if let Some(undo) = self.undo.as_deref_mut() {
                let mut old = [0; 8];
                old[..N].copy_from_slice(&buf[at..at + N]);
                undo.writes.push((at, old, N as u8));
            }
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
        let count = u64::from(rd_u32(buf, o + 8));
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

    /// The steps before the code (§6.2.6 steps 1-3): relocations, the search table and the
    /// `.eh_frame` records, each when it lies inside `buf`.
    fn data(&mut self, buf: &mut [u8]) {
        let p = self.p;
        let size = buf.len() as u64;
        let fits = |r: [u64; 2]| inside(r, size);
        if let Some(r) = p.old_rela.filter(|&r| fits(r)) {
            self.rela(buf, r);
        }
        if let (Some(r), Some(new_hdr)) = (
            p.old_eh_frame_hdr.filter(|&r| fits(r)),
            p.new_eh_frame_hdr_addr,
        ) {
            self.eh_frame_hdr(buf, r, new_hdr);
        }
        if let Some(r) = p.old_eh_frame.filter(|&r| fits(r) && p.rules >= 2) {
            self.eh_frame(buf, r);
        }
    }

    fn code(&mut self, buf: &mut [u8]) {
        self.code_scan::<true>(buf);
    }

    /// [`Run::code`], with `FILTER` = whether positions where no form can start
    /// ([`may_start_form`]) are passed over without trying each form (the same result, faster;
    /// `false` is the reference the tests compare with).
    fn code_scan<const FILTER: bool>(&mut self, buf: &mut [u8]) {
        for k in 0..self.p.old_code.len() {
            let [start, len] = self.p.old_code[k];
            let (start, end) = (start as usize, (start + len) as usize);
            self.scan_forms::<FILTER>(buf, 0, start, end, |_| false, |_, _| {});
        }
    }

    /// The scan of [`Run::code`] over `buf[from..end]`, where `buf[0]` is at file offset
    /// `base`: projects every form it meets and reports it to `found(start, end)` (positions in
    /// `buf`), until the scan ends or reaches a position for which `stop` says so; returns that
    /// position. From each position it tries, the scan reads and writes fewer than [`GUARD`]
    /// bytes, and it writes only inside the forms it passes: the bytes from the returned
    /// position on are untouched.
    fn scan_forms<const FILTER: bool>(
        &mut self,
        buf: &mut [u8],
        base: usize,
        from: usize,
        end: usize,
        mut stop: impl FnMut(usize) -> bool,
        mut found: impl FnMut(usize, usize),
    ) -> usize {
        let rules = self.p.rules;
        let mut i = from;
        while i + 6 <= end && !stop(i) {
            let b = &buf[i..end];
            if FILTER && !may_start_form(b) {
                i += 1;
                continue;
            }
            let field = match b[0] {
                0xE8 | 0xE9 => Some((1, 0)),
                0x0F if b[1] & 0xF0 == 0x80 => Some((2, 0)),
                0xFF if b[1] == 0x15 || b[1] == 0x25 => Some((2, 0)),
                0x40..=0x4F if matches!(b[1], 0x89 | 0x8B | 0x8D) && b[2] & 0xC7 == 0x05 => {
                    Some((3, 0))
                }
                _ if rules >= 2 => rip_operand(b),
                _ => None,
            };
            match field {
                Some((f, imm)) if i + f + 4 + imm <= end => {
                    let f = i + f;
                    self.pc_relative_in(buf, base, f, (base + f + 4 + imm) as u64);
                    found(i, f + 4 + imm);
                    i = f + 4 + imm;
                }
                _ => i += 1,
            }
        }
        i
    }

    /// The code step of [`project_in_parallel`] for the range `buf[start..end]`, cut into
    /// `pieces` scanned at once, then stitched in order: from where the scan of a piece
    /// stopped, within [`GUARD`] bytes of the next piece, the scan goes on over the original
    /// bytes until it reaches a position that the next piece's own scan also reached; from
    /// there on the two scans are the same. False when that does not happen within `sync`
    /// bytes of the boundary (the range is then neither projected nor original).
    fn code_range_in_pieces(
        &self,
        buf: &mut [u8],
        [start, end]: [usize; 2],
        pieces: usize,
        sync: usize,
    ) -> bool {
        let len = end - start;
        let bounds: Vec<usize> = (0..=pieces).map(|j| start + len * j / pieces).collect();
        let originals: Vec<Vec<u8>> = bounds[1..pieces]
            .iter()
            .map(|&m| buf[m..(m + sync + GUARD).min(end)].to_vec())
            .collect();
        let mut slices = Vec::with_capacity(pieces);
        let mut rest = &mut buf[start..end];
        for j in 0..pieces {
            let (piece, tail) = rest.split_at_mut(bounds[j + 1] - bounds[j]);
            slices.push(piece);
            rest = tail;
        }
        // Per piece: where its scan stopped (a file offset), and the forms it found in its
        // first `sync` bytes (positions in the piece).
        let scanned: Vec<(usize, Vec<(usize, usize)>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = slices
                .into_iter()
                .enumerate()
                .map(|(j, piece)| {
                    let base = bounds[j];
                    let stop_at = if j + 1 == pieces {
                        usize::MAX
                    } else {
                        piece.len() - GUARD
                    };
                    let mut run = Run::recording_nothing(self.p, self.map);
                    scope.spawn(move || {
                        let mut forms = Vec::new();
                        let n = piece.len();
                        let at = run.scan_forms::<true>(
                            piece,
                            base,
                            0,
                            n,
                            |i| i >= stop_at,
                            |a, b| {
                                if a < sync {
                                    forms.push((a, b));
                                }
                            },
                        );
                        (base + at, forms)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut run = Run::recording_nothing(self.p, self.map);
        for j in 1..pieces {
            // The scan is right up to `a`, which is before the boundary `m`, and the bytes
            // from `a` on are original: the piece before wrote only behind `a`, and the
            // piece's own writes are not in `originals`.
            let (a, m) = (scanned[j - 1].0, bounds[j]);
            let forms = &scanned[j].1;
            let mut joined = buf[a..m].to_vec();
            joined.extend_from_slice(&originals[j - 1]);
            let joined_end = joined.len();
            let mut synced = None;
            run.scan_forms::<true>(
                &mut joined,
                a,
                0,
                joined_end,
                |i| {
                    let Some(x) = (a + i).checked_sub(m) else {
                        return false;
                    };
                    if x >= sync {
                        return true;
                    }
                    // The piece's scan reached `x` unless `x` is strictly inside one of its
                    // forms.
                    let k = forms.partition_point(|&(s, _)| s < x);
                    let inside = k > 0 && forms[k - 1].1 > x;
                    if !inside {
                        synced = Some(i);
                    }
                    !inside
                },
                |_, _| {},
            );
            let Some(q) = synced else {
                return false;
            };
            buf[a..a + q].copy_from_slice(&joined[..q]);
        }
        true
    }

    /// Projects the signed 32-bit field at `buf[f..f + 4]` holding a target address minus the
    /// address of old file offset `pc_off`: the new value is where the target went minus where
    /// `pc_off` went (the entry holding `f` decides both `f`'s and `pc_off`'s move).
    fn pc_relative(&mut self, buf: &mut [u8], f: usize, pc_off: u64) {
        self.pc_relative_in(buf, 0, f, pc_off);
    }

    /// [`Run::pc_relative`] of the field at `buf[f..f + 4]`, where `buf[0]` is at file offset
    /// `base` (`pc_off` is a file offset).
    fn pc_relative_in(&mut self, buf: &mut [u8], base: usize, f: usize, pc_off: u64) {
        let disp = i32::from_le_bytes([buf[f], buf[f + 1], buf[f + 2], buf[f + 3]]);
        let Some(pc) = addr_of(&self.p.old_segments, pc_off) else {
            return;
        };
        let mut t = [None; 2];
        let Some(target) = self.addr(pc.wrapping_add_signed(i64::from(disp)), &mut t, 0) else {
            return;
        };
        let Some(e) = self.map.entry_of((base + f) as u64) else {
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

    /// Projects the PC-relative pointers of the `.eh_frame` records in `buf[off..off + len]`
    /// (see [`frame_records`]), each relative to its own address.
    fn eh_frame(&mut self, buf: &mut [u8], [off, len]: [u64; 2]) {
        for r in frame_records(buf, off as usize, len as usize) {
            for f in r.fields.into_iter().flatten() {
                self.pc_relative(buf, f, f as u64);
            }
        }
    }
}

/// One record of an `.eh_frame` section, as [`frame_records`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRecord {
    /// File offset of the record (its length field).
    pub start: usize,
    /// Length of the whole record, length field included.
    pub len: usize,
    /// Whether it is an FDE (else a CIE).
    pub fde: bool,
    /// File offsets of its PC-relative 32-bit pointers: an FDE's initial location then its
    /// LSDA, a CIE's personality.
    pub fields: [Option<usize>; 2],
}

/// The records of the `.eh_frame` section at `buf[off..off + len]` and their PC-relative
/// pointers (§6.2.6): a CIE's personality pointer encoded `pcrel | sdata4` (`0x1b`, or `0x9b`
/// indirect), an FDE's initial location and LSDA pointer when its CIE gives them that
/// encoding. The walk goes in order and stops at a terminator, a length under 4, a 64-bit
/// length or a record
/// that does not fit; an FDE whose CIE (an earlier record) is unknown has no fields. The walk
/// reads no field it lists, so rewriting them does not change it.
pub fn frame_records(buf: &[u8], off: usize, len: usize) -> Vec<FrameRecord> {
    let mut out = Vec::new();
    let Some(end) = off.checked_add(len).filter(|&e| e <= buf.len()) else {
        return out;
    };
    let mut cies: std::collections::HashMap<usize, Cie> = std::collections::HashMap::new();
    let mut p = off;
    while p + 8 <= end {
        let length = rd_u32(buf, p) as usize;
        if length < 4 || length == 0xFFFF_FFFF || length > end - p - 4 {
            break;
        }
        let rec_end = p + 4 + length;
        let id = rd_u32(buf, p + 4) as usize;
        let mut r = FrameRecord {
            start: p,
            len: length + 4,
            fde: id != 0,
            fields: [None; 2],
        };
        if id == 0 {
            if let Some(cie) = parse_cie(&buf[p + 8..rec_end]) {
                r.fields[0] = cie.personality.map(|at| p + 8 + at);
                cies.insert(p, cie);
            }
        } else if let Some(cie) = (p + 4).checked_sub(id).and_then(|c| cies.get(&c)) {
            let f = p + 8;
            if cie.fde_enc == Some(PCREL_SDATA4) && f + 8 <= rec_end {
                r.fields[0] = Some(f);
                // Augmentation data length (a ULEB128 of one byte: 4), then the LSDA.
                let l = f + 8;
                if cie.augmented
                    && cie.lsda_enc == Some(PCREL_SDATA4)
                    && l + 5 <= rec_end
                    && buf[l] == 4
                {
                    r.fields[1] = Some(l + 1);
                }
            }
        }
        out.push(r);
        p = rec_end;
    }
    out
}

/// The RIP-relative memory operand of rules 2 of an instruction starting at `b[0]`, as
/// `(offset of its 32-bit displacement, bytes of immediate after it)` (§6.2.6): an optional
/// `66`, `F2` or `F3` prefix, an optional REX prefix (`40`-`4F`), then
/// - `0F` and a second opcode byte other than `0F`, `38`, `3A`, `80`-`8F`; an immediate byte
///   follows for `70`-`73`, `A4`, `AC`, `BA`, `C2`, `C4`-`C6`;
/// - or one of the one-byte opcodes `00`-`03`, `08`-`0B`, `10`-`13`, `18`-`1B`, `20`-`23`,
///   `28`-`2B`, `30`-`33`, `38`-`3B`, `63`, `84`-`8B`, `8D` (no immediate), `80`, `83`,
///   `C0`, `C1`, `C6`, `6B` (an immediate byte), `81`, `C7`, `69` (four immediate bytes, two
///   after a `66` prefix);
///
/// then a ModRM byte `m` with `m & 0xC7 == 0x05`.
pub fn rip_operand(b: &[u8]) -> Option<(usize, usize)> {
    let mut at = 0;
    let p66 = b.first() == Some(&0x66);
    if matches!(b.first(), Some(0x66 | 0xF2 | 0xF3)) {
        at += 1;
    }
    if matches!(b.get(at), Some(0x40..=0x4F)) {
        at += 1;
    }
    let op = *b.get(at)?;
    let imm = if op == 0x0F {
        at += 1;
        match *b.get(at)? {
            0x0F | 0x38 | 0x3A | 0x80..=0x8F => return None,
            0x70..=0x73 | 0xA4 | 0xAC | 0xBA | 0xC2 | 0xC4..=0xC6 => 1,
            _ => 0,
        }
    } else {
        match op {
            0x00..=0x03
            | 0x08..=0x0B
            | 0x10..=0x13
            | 0x18..=0x1B
            | 0x20..=0x23
            | 0x28..=0x2B
            | 0x30..=0x33
            | 0x38..=0x3B
            | 0x63
            | 0x84..=0x8B
            | 0x8D => 0,
            0x80 | 0x83 | 0xC0 | 0xC1 | 0xC6 | 0x6B => 1,
            0x81 | 0xC7 | 0x69 if p66 => 2,
            0x81 | 0xC7 | 0x69 => 4,
            _ => return None,
        }
    };
    at += 1;
    (*b.get(at)? & 0xC7 == 0x05).then_some((at + 1, imm))
}

/// Whether one of the instruction forms that [`Run::code`] projects may start at `b[0]`
/// (`b` holds at least 5 bytes): every form starts with `E8`, `E9` or `0F`, or has its ModRM
/// byte (mod 00, r/m 101: `m & 0xC7 == 0x05`) at `b[1..=4]` (`FF 15`/`FF 25`, the REX forms,
/// and [`rip_operand`]'s forms, whose ModRM comes after at most a prefix, a REX byte and two
/// opcode bytes). About 3 % of code bytes are such a ModRM value, so most positions fail both
/// tests, which cost a few arithmetic operations and no unpredictable branch.
#[inline]
fn may_start_form(b: &[u8]) -> bool {
    if matches!(b[0], 0xE8 | 0xE9 | 0x0F) {
        return true;
    }
    let x = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) & 0xC7C7_C7C7 ^ 0x0505_0505;
    // Non-zero exactly when one of the four bytes of `x` is zero.
    x.wrapping_sub(0x0101_0101) & !x & 0x8080_8080 != 0
}

/// DWARF pointer encoding `DW_EH_PE_pcrel | DW_EH_PE_sdata4`.
const PCREL_SDATA4: u8 = 0x1b;

/// What an FDE needs from its CIE.
struct Cie {
    /// Encoding of the FDEs' addresses (`R`), if given.
    fde_enc: Option<u8>,
    /// Encoding of the FDEs' LSDA pointer (`L`), if given.
    lsda_enc: Option<u8>,
    /// Whether FDEs carry augmentation data (`z`).
    augmented: bool,
    /// Offset, from the CIE's version byte, of a personality pointer encoded `0x1b` or `0x9b`.
    personality: Option<usize>,
}

/// Parses a CIE from its version byte to its end (`b`): version 1 or 3, an augmentation of
/// `z` followed by `R`, `L`, `P`, `S` or `B` (any other makes it unknown: `None`).
fn parse_cie(b: &[u8]) -> Option<Cie> {
    let version = *b.first()?;
    if version != 1 && version != 3 {
        return None;
    }
    let nul = b[1..].iter().position(|&c| c == 0)? + 1;
    let aug = &b[1..nul];
    let mut at = nul + 1;
    read_varint(b, &mut at).ok()?; // code alignment
    read_varint(b, &mut at).ok()?; // data alignment (SLEB128: read for its length only)
    if version == 1 {
        at += 1;
    } else {
        read_varint(b, &mut at).ok()?;
    }
    let mut cie = Cie {
        fde_enc: None,
        lsda_enc: None,
        augmented: false,
        personality: None,
    };
    let Some(rest) = aug.strip_prefix(b"z") else {
        return aug.is_empty().then_some(cie);
    };
    cie.augmented = true;
    read_varint(b, &mut at).ok()?; // augmentation data length
    for &c in rest {
        match c {
            b'R' => {
                cie.fde_enc = Some(*b.get(at)?);
                at += 1;
            }
            b'L' => {
                cie.lsda_enc = Some(*b.get(at)?);
                at += 1;
            }
            b'P' => {
                let enc = *b.get(at)?;
                if enc & 0x7F != PCREL_SDATA4 {
                    return None;
                }
                if at + 5 > b.len() {
                    return None;
                }
                cie.personality = Some(at + 1);
                at += 5;
            }
            b'S' | b'B' => {}
            _ => return None,
        }
    }
    Some(cie)
}

/// The little-endian `u32` at `b[at..at + 4]` (which the caller checked is in `b`).
fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Projects `buf`, the old file (checked with [`Projection::validate`] against its size),
/// through `map`, in place: first the relocations, then the `.eh_frame_hdr` table, then the
/// `.eh_frame` records, then the code. When `used` is given (as long as the map), it records the entries that changed a byte.
pub fn project(buf: &mut [u8], p: &Projection, map: &EqMap, used: Option<&mut Vec<bool>>) {
    project_undoable(buf, p, map, used, None);
}

/// Code ranges of at least this many bytes per thread are projected on several threads by
/// [`project_in_parallel`].
const PIECE_MIN: usize = 1 << 20;
/// Bytes after the start of a piece within which the scan coming from the previous piece must
/// reach a position the piece's own scan reached (x86 code falls in step within a few
/// instructions; only contrived bytes, such as a long run of `E8`, do not).
const SYNC_WINDOW: usize = 64 << 10;
/// Bytes before the end of a piece where its scan stops: from a position, the code scan reads
/// and writes at most 12 bytes (a prefix, a REX byte, two opcode bytes, ModRM, a 32-bit
/// field and a 4-byte immediate have at most 12).
const GUARD: usize = 64;

/// [`project`] with the code scanned on up to `threads` threads (long code ranges are cut into
/// pieces scanned at once, then stitched so that the bytes are exactly those of [`project`]).
/// False in the rare case where a piece boundary could not be stitched (the scans did not fall
/// in step within [`SYNC_WINDOW`] bytes): `buf` is then neither projected nor original, and the
/// caller projects the original bytes again with [`project`].
pub fn project_in_parallel(buf: &mut [u8], p: &Projection, map: &EqMap, threads: usize) -> bool {
    project_in_pieces(buf, p, map, threads, PIECE_MIN, SYNC_WINDOW)
}

/// [`project_in_parallel`] with its piece size and stitching window (smaller in tests).
fn project_in_pieces(
    buf: &mut [u8],
    p: &Projection,
    map: &EqMap,
    threads: usize,
    piece_min: usize,
    sync: usize,
) -> bool {
    let piece_min = piece_min.max(2 * (sync + GUARD));
    let mut run = Run::recording_nothing(p, map);
    run.data(buf);
    let size = buf.len() as u64;
    if !p.old_code.iter().all(|&r| inside(r, size)) {
        return true;
    }
    for &[start, len] in &p.old_code {
        let (start, end) = (start as usize, (start + len) as usize);
        let pieces = threads.min(len as usize / piece_min);
        if pieces < 2 {
            run.scan_forms::<true>(buf, 0, start, end, |_| false, |_, _| {});
        } else if !run.code_range_in_pieces(buf, [start, end], pieces, sync) {
            return false;
        }
    }
    true
}

/// [`project`], recording in `undo` what it overwrites.
pub fn project_undoable(
    buf: &mut [u8],
    p: &Projection,
    map: &EqMap,
    used: Option<&mut Vec<bool>>,
    undo: Option<&mut Undo>,
) {
    let mut run = Run { p, map, used, undo };
    run.data(buf);
    let size = buf.len() as u64;
    if p.old_code.iter().all(|&r| inside(r, size)) {
        run.code(buf);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Instruction heads that [`Run::code`] projects (opcode bytes up to the 32-bit field) and
    /// the immediate bytes after the field.
    const FORMS: [(&[u8], usize); 12] = [
        (&[0xE8], 0),
        (&[0xE9], 0),
        (&[0x0F, 0x85], 0),
        (&[0xFF, 0x15], 0),
        (&[0x48, 0x8B, 0x05], 0),
        (&[0x4C, 0x8D, 0x0D], 0),
        (&[0x0F, 0xB6, 0x05], 0),
        (&[0x66, 0x0F, 0x6F, 0x05], 0),
        (&[0xF3, 0x48, 0x0F, 0x10, 0x15], 0),
        (&[0x80, 0x3D], 1),
        (&[0xC7, 0x05], 4),
        (&[0x66, 0x81, 0x3D], 2),
    ];

    fn proj(size: u64) -> Projection {
        Projection {
            arch: Arch::X86_64,
            old_code: vec![[0, size / 2]],
            old_segments: vec![[0, 0x1000, size]],
            new_segments: vec![[0, 0x1000, size + 64]],
            old_rela: None,
            old_eh_frame_hdr: None,
            new_eh_frame_hdr_addr: None,
            old_eh_frame: None,
            rules: 1,
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

    /// An `.eh_frame` section (at offset 0): a CIE `zPLR` (personality `0x9b`, LSDA and FDE
    /// addresses `0x1b`), then one FDE per `(initial location field, has an LSDA)`, the LSDA
    /// field holding the same value, then a terminator.
    fn eh_frame_of(fdes: &[(i32, bool)]) -> Vec<u8> {
        let mut f = Vec::new();
        let mut cie = vec![0, 0, 0, 0, 1];
        cie.extend_from_slice(b"zPLR\0");
        cie.extend_from_slice(&[1, 0x78, 16, 7, 0x9b, 0x40, 0, 0, 0, 0x1b, 0x1b, 0]);
        f.extend_from_slice(&(cie.len() as u32).to_le_bytes());
        f.extend_from_slice(&cie);
        for &(pc, lsda) in fdes {
            let start = f.len();
            let mut fde = Vec::new();
            fde.extend_from_slice(&((start + 4) as u32).to_le_bytes());
            fde.extend_from_slice(&pc.to_le_bytes());
            fde.extend_from_slice(&16u32.to_le_bytes());
            if lsda {
                fde.push(4);
                fde.extend_from_slice(&pc.to_le_bytes());
            } else {
                fde.push(0);
            }
            fde.extend_from_slice(&[0, 0, 0]);
            f.extend_from_slice(&(fde.len() as u32).to_le_bytes());
            f.extend_from_slice(&fde);
        }
        f.extend_from_slice(&[0; 4]);
        f
    }

    #[test]
    fn frame_records_follow_their_functions() {
        // `.eh_frame` at 0x200 moves by +0x40, the function at 0x100 by +0x20 and the
        // personality routine's slot at 0x180 by +0x10.
        let frame = eh_frame_of(&[(0, true), (0, false)]);
        let mut b = vec![0u8; 0x400];
        b[0x200..0x200 + frame.len()].copy_from_slice(&frame);
        let len_at =
            |at: usize| 4 + u32::from_le_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
        let fde1 = 0x200 + len_at(0);
        let fde2 = fde1 + len_at(fde1 - 0x200);
        let rel =
            |target: i64, field: usize| ((target - (0x1000 + field as i64)) as i32).to_le_bytes();
        b[fde1 + 8..fde1 + 12].copy_from_slice(&rel(0x1100, fde1 + 8));
        b[fde1 + 17..fde1 + 21].copy_from_slice(&rel(0x1100, fde1 + 17));
        b[fde2 + 8..fde2 + 12].copy_from_slice(&rel(0x1100, fde2 + 8));
        // Length, id, version, "zPLR\0", three fields, data length, encoding.
        let personality = 0x200 + 19;
        b[personality..personality + 4].copy_from_slice(&rel(0x1180, personality));
        let mut p = proj(0x400);
        p.old_code = vec![];
        p.old_eh_frame = Some([0x200, frame.len() as u64]);
        p.rules = 2;
        let map = EqMap::from_equivalences(vec![
            (0x100, 0x120, 0x10),
            (0x180, 0x190, 8),
            (0x200, 0x240, 0x100),
        ]);
        let mut used = vec![false; 3];
        project(&mut b, &p, &map, Some(&mut used));
        let new_rel = |target: i64, field: usize| rel(target, field + 0x40);
        assert_eq!(b[fde1 + 8..fde1 + 12], new_rel(0x1120, fde1 + 8));
        assert_eq!(b[fde1 + 17..fde1 + 21], new_rel(0x1120, fde1 + 17));
        assert_eq!(b[fde2 + 8..fde2 + 12], new_rel(0x1120, fde2 + 8));
        assert_eq!(
            b[personality..personality + 4],
            new_rel(0x1190, personality)
        );
        assert_eq!(used, vec![true, true, true]);
        // The record structure itself is untouched.
        assert_eq!(b[0x200..personality], frame[..19]);
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
        // Touching ranges that moved alike are one entry.
        let m = EqMap::from_equivalences(vec![(0, 8, 10), (10, 18, 5), (15, 30, 5)]);
        assert_eq!(m.entries(), &[(0, 15, 8), (15, 5, 15)]);
    }

    #[test]
    fn long_code_is_projected_in_pieces_and_contrived_code_falls_back() {
        // Code dense in forms, its second half moved: every piece boundary is stitched, and
        // the bytes are those of the sequential scan.
        let mut data = Vec::new();
        let mut x = 0x9E37_79B9u32;
        while data.len() < 200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let (head, imm) = FORMS[x as usize % FORMS.len()];
            data.extend_from_slice(head);
            data.extend_from_slice(&((x >> 8) as i32 % 5000).to_le_bytes());
            data.extend(std::iter::repeat_n(0x90, imm + (x >> 28) as usize));
        }
        let size = data.len() as u64;
        let p = Projection {
            old_code: vec![[0, size]],
            rules: 2,
            ..proj(size)
        };
        let half = size / 2;
        let map = EqMap::from_equivalences(vec![(0, 0, half), (half, half + 40, half - 64)]);
        let mut one = data.clone();
        project(&mut one, &p, &map, None);
        assert_ne!(one, data);
        for threads in [2, 3, 7] {
            let mut cut_up = data.clone();
            assert!(project_in_pieces(&mut cut_up, &p, &map, threads, 0, 256));
            assert!(cut_up == one, "{threads} threads");
        }
        // A run of E8 cut where the two scans are out of step for good (5-byte calls, a
        // boundary at 5,001): the stitching gives up instead of guessing.
        let e8 = vec![0xE8u8; 10_002];
        let p = Projection {
            old_code: vec![[0, e8.len() as u64]],
            ..proj(e8.len() as u64)
        };
        let mut cut_up = e8.clone();
        assert!(!project_in_pieces(&mut cut_up, &p, &map, 2, 0, 256));
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

    /// Random bytes mixed with instructions of every form of [`FORMS`] (targets within 3000
    /// bytes), from up to `pieces` pieces.
    fn code_bytes(pieces: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                any::<u8>().prop_map(|b| vec![b]),
                (0usize..FORMS.len(), -3000i32..3000, any::<u32>()).prop_map(|(f, d, imm)| {
                    let (head, imm_len) = FORMS[f];
                    let mut v = head.to_vec();
                    v.extend_from_slice(&d.to_le_bytes());
                    v.extend_from_slice(&imm.to_le_bytes()[..imm_len]);
                    v
                }),
            ],
            0..pieces,
        )
        .prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn maps_round_trip(eqs in prop::collection::vec((0u64..5000, 0u64..5000, 1u64..300), 0..40)) {
            let m = EqMap::from_equivalences(eqs);
            prop_assert_eq!(EqMap::decode("m", &m.encode(), 6000).unwrap(), m);
        }

        /// The page index finds the entry a search of the whole map finds, for offsets inside,
        /// between and after entries that are shorter or longer than a page.
        #[test]
        fn the_page_index_finds_what_a_linear_search_finds(
            eqs in prop::collection::vec((0u64..40_000, 0u64..40_000, 1u64..9_000), 0..30),
            probes in prop::collection::vec(0u64..60_000, 1..200),
        ) {
            let m = EqMap::from_equivalences(eqs);
            let keep: Vec<bool> = (0..m.entries().len()).map(|i| i % 3 != 1).collect();
            for m in [m.retain(&keep), m] {
                for &x in &probes {
                    let linear = m.entries().iter().position(|&(o, l, _)| x >= o && x - o < l);
                    prop_assert_eq!(m.entry_of(x), linear, "offset {}", x);
                }
            }
        }

        /// Passing over the positions where no form can start changes nothing: the same bytes
        /// and the same entries used as trying every form at every position, on random bytes
        /// mixed with instructions of every form whose targets fall in the file, under both
        /// rules.
        #[test]
        fn the_form_filter_changes_nothing(
            data in code_bytes(400),
            eqs in prop::collection::vec((0u64..3000, 0u64..3000, 1u64..800), 0..8),
            rules in 1u8..=2,
        ) {
            let size = data.len() as u64;
            let p = Projection {
                old_code: vec![[0, size]].into_iter().filter(|r| r[1] > 0).collect(),
                rules,
                ..proj(size)
            };
            let map = EqMap::from_equivalences(eqs);
            let mut runs = [(data.clone(), vec![false; map.entries().len()]), (data.clone(), vec![false; map.entries().len()])];
            for (k, (buf, used)) in runs.iter_mut().enumerate() {
                let mut run = Run { p: &p, map: &map, used: Some(used), undo: None };
                if k == 0 {
                    run.code_scan::<true>(buf);
                } else {
                    run.code_scan::<false>(buf);
                }
            }
            prop_assert_eq!(&runs[0], &runs[1]);
        }

        /// Code cut into pieces scanned at once and stitched projects to exactly the bytes of
        /// the sequential scan, whenever the stitching succeeds.
        #[test]
        fn pieces_stitched_project_as_one_scan(
            data in code_bytes(600),
            eqs in prop::collection::vec((0u64..3000, 0u64..3000, 1u64..800), 0..8),
            rules in 1u8..=2,
            threads in 2usize..6,
            sync in 1usize..40,
            cut in 0u64..200,
        ) {
            let size = data.len() as u64;
            let cut = cut.min(size);
            let p = Projection {
                old_code: [[0, cut], [cut, size - cut]].into_iter().filter(|r| r[1] > 0).collect(),
                rules,
                ..proj(size)
            };
            let map = EqMap::from_equivalences(eqs);
            let mut one = data.clone();
            project(&mut one, &p, &map, None);
            let mut cut_up = data;
            if project_in_pieces(&mut cut_up, &p, &map, threads, 0, sync) {
                prop_assert_eq!(cut_up, one);
            }
        }

        #[test]
        fn projection_never_panics(data in prop::collection::vec(prop_oneof![any::<u8>(), Just(0xE8u8), Just(0x0F), Just(0x48), Just(0x8B), Just(0x05), Just(8)], 0..600),
                                   eqs in prop::collection::vec((0u64..700, 0u64..700, 1u64..300), 0..8),
                                   rela in (0u64..700, 0u64..200), hdr in (0u64..700, 0u64..100),
                                   eh in (0usize..700, 0u64..300),
                                   fdes in prop::collection::vec((any::<i32>(), any::<bool>()), 0..6),
                                   flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
            // A well-formed `.eh_frame` at `eh.0`, then a few bytes of it changed.
            let mut data = data;
            let frame = eh_frame_of(&fdes);
            let at = eh.0.min(data.len());
            data.splice(at..at, frame.iter().copied());
            for (i, b) in flips {
                data[at + i.index(frame.len())] = b;
            }
            let size = data.len() as u64;
            let p = Projection {
                arch: Arch::X86_64,
                old_code: vec![[0, size]].into_iter().filter(|r| r[1] > 0).collect(),
                old_segments: vec![[0, 0x1000, size], [size / 2, 0x8000, size / 2]],
                new_segments: vec![[0, 0x1000, size + 100]],
                old_rela: Some([rela.0, rela.1]),
                old_eh_frame_hdr: Some([hdr.0, hdr.1]),
                new_eh_frame_hdr_addr: Some(0x1010),
                old_eh_frame: Some([at as u64, (frame.len() as u64 + eh.1).min(size - at as u64)]),
                rules: 2,
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
            let mut c = data.clone();
            project(&mut c, &p, &map.retain(&used), None);
            prop_assert_eq!(&c, &a);
            // And what a projection overwrote can be put back.
            let (mut d, mut undo) = (data.clone(), Undo::default());
            project_undoable(&mut d, &p, &map, None, Some(&mut undo));
            prop_assert_eq!(&d, &a);
            undo.restore(&mut d);
            prop_assert_eq!(&d, &data);
        }
    }
}
