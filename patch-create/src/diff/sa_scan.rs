//! bsdiff matches over a suffix array built by `libsais`.
//!
//! [`diff`] makes the same decisions as `bidiff` 1.0's scan with one sort partition and one
//! scan chunk (`bidiff::DiffParams::default()`), so the split-diff streams are unchanged, but
//! sorts the old file with libsais (single-threaded, about twice as fast as bidiff's built-in
//! divsufsort) and starts every longest-match search in the suffix-array range of the needle's
//! first two bytes. The matches are `bidiff::Match` values, fed in increasing new order to a
//! callback exactly as `bidiff::diff` does.
//!
//! A new file longer than [`SCAN_CHUNK`] is scanned in pieces of that size, on all cores: each
//! piece is scanned as if it were a whole new file (its first match starts at its first byte),
//! so the result depends on the file size only, never on the number of cores.

use std::io;

use bidiff::Match;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// One suffix-array entry: `i32` while the text fits, `i64` beyond 2 GiB.
trait SaEntry: Copy {
    /// The suffix's start in the text.
    fn pos(self) -> usize;
    /// A count of suffixes (at most the text length, which the entry type can hold).
    fn from_count(n: usize) -> Self;
}

impl SaEntry for i32 {
    #[inline]
    fn pos(self) -> usize {
        self as usize
    }
    #[inline]
    fn from_count(n: usize) -> Self {
        n as i32
    }
}

impl SaEntry for i64 {
    #[inline]
    fn pos(self) -> usize {
        self as usize
    }
    #[inline]
    fn from_count(n: usize) -> Self {
        n as i64
    }
}

/// Size of the pieces of a new file scanned in parallel. Each boundary costs a few bytes of
/// patch (a match cannot run across it); 1 MiB pieces keep both cores busy on a 10 MB file.
pub const SCAN_CHUNK: usize = 1 << 20;

/// Calls `on_match` with the bsdiff matches of `new` against `old`, in increasing new order.
/// Bytes of `new` between matches are left to the caller (they become copies). Nothing is
/// reported when either input is empty.
pub fn diff(old: &[u8], new: &[u8], on_match: impl FnMut(Match) -> io::Result<()>) -> Result<()> {
    if old.is_empty() || new.is_empty() {
        return Ok(());
    }
    let sort_err = |source| Error::SuffixSort {
        len: old.len(),
        source,
    };
    let scanned = if i32::try_from(old.len()).is_ok() {
        let sa = libsais::SuffixArrayConstruction::for_text(old)
            .in_owned_buffer32()
            .single_threaded()
            .run()
            .map_err(sort_err)?
            .into_vec();
        scan_chunks(&Index::new(old, &sa), new, on_match)
    } else {
        let sa = libsais::SuffixArrayConstruction::for_text(old)
            .in_owned_buffer64()
            .single_threaded()
            .run()
            .map_err(sort_err)?
            .into_vec();
        scan_chunks(&Index::new(old, &sa), new, on_match)
    };
    scanned.map_err(|e| Error::io("<diff>", e))
}

/// Length of the common prefix of `a` and `b`, compared 8 bytes at a time.
fn common_len(a: &[u8], b: &[u8]) -> usize {
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_le_bytes(w)
    };
    let mut n = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let d = word(x) ^ word(y);
        if d != 0 {
            return n + (d.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + a[n..]
        .iter()
        .zip(&b[n..])
        .take_while(|(x, y)| x == y)
        .count()
}

/// The old file, its suffix array, and where each 2-byte prefix starts in the suffix array,
/// so that a search binary-searches one bucket instead of the whole array.
struct Index<'a, S> {
    old: &'a [u8],
    sa: &'a [S],
    /// `bucket[k]` = the first suffix-array index whose suffix's first two bytes (big-endian)
    /// are >= `k`; a one-byte suffix counts as its byte followed by 0x00 (it sorts first among
    /// those).
    bucket: Vec<S>,
}

impl<'a, S: SaEntry> Index<'a, S> {
    fn new(old: &'a [u8], sa: &'a [S]) -> Self {
        let mut count = vec![0usize; 65537];
        for (i, &b) in old.iter().enumerate() {
            let next = old.get(i + 1).copied().unwrap_or(0);
            count[(usize::from(b) << 8 | usize::from(next)) + 1] += 1;
        }
        let mut total = 0;
        let bucket = count
            .into_iter()
            .map(|c| {
                total += c;
                S::from_count(total)
            })
            .collect();
        Index { old, sa, bucket }
    }

    /// The longest prefix of `needle` that occurs in the old file: (start, length). Same
    /// search and tie-breaking as bidiff's suffix array (sacabase 2).
    #[inline]
    fn longest(&self, needle: &[u8]) -> (usize, usize) {
        match needle {
            [a, b, ..] => {
                let k = usize::from(*a) << 8 | usize::from(*b);
                // One suffix either side of the bucket keeps the insertion point inside it
                // with a neighbour on each side, as in a search over the whole array.
                let lo = self.bucket[k].pos().saturating_sub(1);
                let hi = (self.bucket[k + 1].pos() + 1).min(self.sa.len());
                self.longest_in(lo, hi - lo, needle)
            }
            _ => self.longest_in(0, self.sa.len(), needle),
        }
    }

    /// The search restricted to `sa[lo..lo + n]` (n >= 1).
    #[inline]
    fn longest_in(&self, mut lo: usize, mut n: usize, needle: &[u8]) -> (usize, usize) {
        let (old, sa) = (self.old, self.sa);
        while n > 2 {
            let mid = n / 2;
            if needle > &old[sa[lo + mid].pos()..] {
                lo += mid;
                n -= mid;
            } else {
                n = mid + 1;
            }
        }
        let first = sa[lo].pos();
        let x = common_len(&old[first..], needle);
        if n == 1 {
            return (first, x);
        }
        let second = sa[lo + 1].pos();
        let y = common_len(&old[second..], needle);
        if x > y {
            (first, x)
        } else {
            (second, y)
        }
    }
}

/// Scans `new` in [`SCAN_CHUNK`] pieces, as many at once as rayon has threads, and reports the
/// matches of each round of pieces in order (so that at most one round's matches are held).
/// Every piece but the first starts as if the longest match at its first byte had been the
/// previous match: where the file's alignment runs across the boundary, the piece continues it
/// and no seek away and back is paid (typescript's 9 MB files: +120 B of patch without this).
fn scan_chunks<S: SaEntry + Sync>(
    idx: &Index<'_, S>,
    new: &[u8],
    mut on_match: impl FnMut(Match) -> io::Result<()>,
) -> io::Result<()> {
    if new.len() <= SCAN_CHUNK {
        return scan(idx, new, 0, false, on_match);
    }
    let starts: Vec<usize> = (0..new.len()).step_by(SCAN_CHUNK).collect();
    let round = rayon::current_num_threads().max(1);
    for group in starts.chunks(round) {
        let found: Vec<io::Result<Vec<Match>>> = group
            .par_iter()
            .map(|&start| {
                let end = (start + SCAN_CHUNK).min(new.len());
                let mut v = Vec::new();
                scan(idx, &new[start..end], start, start > 0, |m| {
                    v.push(m);
                    Ok(())
                })?;
                Ok(v)
            })
            .collect();
        for piece in found {
            for m in piece? {
                on_match(m)?;
            }
        }
    }
    Ok(())
}

/// Whether the old byte at `i + offset` exists and equals `new[i]`.
#[inline]
fn same_at(old: &[u8], new: &[u8], i: usize, offset: isize) -> bool {
    i.checked_add_signed(offset).and_then(|o| old.get(o)) == Some(&new[i])
}

/// bsdiff's scan (as in bidiff's `BsdiffIterator`): extends each approximate match forwards
/// and backwards and reports it with the copy run that follows it. `new` is the piece of the
/// new file that starts at `base`; reported new positions are in the whole file. With
/// `resume`, the scan starts aligned with the longest match of the piece's first bytes instead
/// of old offset 0.
fn scan<S: SaEntry>(
    idx: &Index<'_, S>,
    new: &[u8],
    base: usize,
    resume: bool,
    mut on_match: impl FnMut(Match) -> io::Result<()>,
) -> io::Result<()> {
    let old = idx.old;
    let (ol, nl) = (old.len(), new.len());
    let (mut scan, mut pos, mut len) = (0usize, 0usize, 0usize);
    let (mut lastscan, mut lastpos, mut lastoff) = (0usize, 0usize, 0isize);
    if resume && nl > 0 {
        lastpos = idx.longest(new).0;
        lastoff = lastpos as isize;
    }
    while scan < nl {
        let mut oldscore = 0usize;
        scan += len;
        let mut scsc = scan;
        while scan < nl {
            (pos, len) = idx.longest(&new[scan..]);
            while scsc < scan + len {
                if same_at(old, new, scsc, lastoff) {
                    oldscore += 1;
                }
                scsc += 1;
            }
            if (len == oldscore && len != 0) || len > oldscore + 8 {
                break;
            }
            // Counted above: `scan < scsc` once a match is found, and a byte absent from the
            // old file (len 0) cannot equal an old byte.
            if same_at(old, new, scan, lastoff) {
                oldscore = oldscore.saturating_sub(1);
            }
            scan += 1;
        }
        if len == oldscore && scan != nl {
            continue;
        }
        // How far the previous match extends forwards.
        let (mut s, mut sf, mut lenf) = (0isize, 0isize, 0usize);
        for i in 1..=(scan - lastscan).min(ol - lastpos) {
            if old[lastpos + i - 1] == new[lastscan + i - 1] {
                s += 1;
            }
            if s * 2 - i as isize > sf * 2 - lenf as isize {
                sf = s;
                lenf = i;
            }
        }
        // How far this match extends backwards.
        let mut lenb = 0usize;
        if scan < nl {
            let (mut s, mut sb) = (0isize, 0isize);
            for i in 1..=(scan - lastscan).min(pos) {
                if old[pos - i] == new[scan - i] {
                    s += 1;
                }
                if s * 2 - i as isize > sb * 2 - lenb as isize {
                    sb = s;
                    lenb = i;
                }
            }
        }
        // Where they overlap, split at the best-scoring point.
        if lastscan + lenf > scan - lenb {
            let overlap = (lastscan + lenf) - (scan - lenb);
            let (mut s, mut ss, mut lens) = (0isize, 0isize, 0usize);
            for i in 0..overlap {
                if new[lastscan + lenf - overlap + i] == old[lastpos + lenf - overlap + i] {
                    s += 1;
                }
                if new[scan - lenb + i] == old[pos - lenb + i] {
                    s -= 1;
                }
                if s > ss {
                    ss = s;
                    lens = i + 1;
                }
            }
            lenf = lenf + lens - overlap;
            lenb -= lens;
        }
        on_match(Match {
            add_old_start: lastpos,
            add_new_start: base + lastscan,
            add_length: lenf,
            copy_end: base + scan - lenb,
        })?;
        lastscan = scan - lenb;
        lastpos = pos - lenb;
        lastoff = pos as isize - scan as isize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(old: &[u8], new: &[u8]) -> Vec<(usize, usize, usize, usize)> {
        let mut v = Vec::new();
        diff(old, new, |m| {
            v.push((m.add_old_start, m.add_new_start, m.add_length, m.copy_end));
            Ok(())
        })
        .unwrap();
        v
    }

    fn bidiffs(old: &[u8], new: &[u8]) -> Vec<(usize, usize, usize, usize)> {
        let mut v = Vec::new();
        if old.is_empty() || new.is_empty() {
            return v;
        }
        bidiff::diff(old, new, &bidiff::DiffParams::default(), |m| {
            v.push((m.add_old_start, m.add_new_start, m.add_length, m.copy_end));
            Ok::<(), io::Error>(())
        })
        .unwrap();
        v
    }

    /// xorshift: deterministic inputs without a dependency.
    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    fn check(old: &[u8], new: &[u8]) {
        assert_eq!(
            ours(old, new),
            bidiffs(old, new),
            "old {} new {}",
            old.len(),
            new.len()
        );
    }

    #[test]
    fn same_matches_as_bidiff_one_partition() {
        let mut r = rng(7);
        for len in [1usize, 2, 3, 8, 9, 50, 3000, 300_000] {
            // Low-entropy text, so that long matches, ties and one-byte suffixes all occur.
            let old: Vec<u8> = (0..len)
                .map(|_| b"abcab\x00\xff"[(r() % 7) as usize])
                .collect();
            let mut new = old.clone();
            for _ in 0..len / 100 + 1 {
                let i = (r() as usize) % new.len();
                new[i] = r() as u8;
            }
            new.splice(len / 2..len / 2, (0..len / 20).map(|_| r() as u8));
            check(&old, &new);
            // Random bytes (most 2-byte buckets are small) and bytes absent from old.
            let noise: Vec<u8> = (0..len).map(|_| r() as u8).collect();
            check(&noise, &new);
            check(&old, &noise);
        }
    }

    #[test]
    fn same_matches_as_bidiff_on_edge_inputs() {
        check(b"a", b"a");
        check(b"a", b"b");
        check(b"\x00", b"\x00\x00\x00");
        check(b"\xff\xff\xff\xff", b"\xff");
        check(&[0u8; 1000], &[0u8; 999]);
        check(b"abababababababab", b"babababababababa");
        check(&[], b"abc");
        check(b"abc", &[]);
    }

    #[test]
    fn callback_error_is_returned() {
        let err = diff(b"abcdef", b"abcdef", |_| Err(io::Error::other("stop")));
        assert!(matches!(err, Err(Error::Io { .. })));
    }

    proptest! {
        #[test]
        fn same_matches_as_bidiff_proptest(
            old in proptest::collection::vec(0u8..4, 0..2000),
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..20),
            tail in proptest::collection::vec(any::<u8>(), 0..50),
        ) {
            let mut new = old.clone();
            for (i, b) in edits {
                if !new.is_empty() {
                    let i = usize::from(i) % new.len();
                    new[i] = b;
                }
            }
            new.extend_from_slice(&tail);
            prop_assert_eq!(ours(&old, &new), bidiffs(&old, &new));
        }
    }
}
