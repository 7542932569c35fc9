//! The three streams of a split diff (docs/encodings.md) and `SplitBuilder`, which turns
//! bsdiff-style matches into them; used by the single-window diff and by the windowed mode.

pub use formats::split_diff::put_varint;

use crate::error::Result;

/// The three uncompressed streams of a split diff (docs/encodings.md). The diff stream is held
/// as the zero-run pairs a member stores ([`ZeroRuns`]), not byte for byte: on a 34 MB
/// executable its bytes are 31 MB, mostly zeros, and its pairs 3 MB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitStreams {
    /// Triples `seek` (zigzag varint), `add_len`, `copy_len` (varints).
    pub ctrl: Vec<u8>,
    /// The diff bytes of every add run, in order (`new - old` minus the predicted carry,
    /// [`formats::split_diff::encode_run`]), as zero-run pairs.
    pub pairs: Vec<u8>,
    /// Zero diff bytes after the last pair (a member does not store them).
    pub trailing_zeros: u64,
    /// Literal new bytes of every copy run, in order.
    pub extra: Vec<u8>,
}

/// Writes a diff stream, given in pieces, as pairs: for each non-zero byte, the number of zero
/// bytes before it (varint) then the byte. Zeros after the last non-zero byte are not written.
#[derive(Debug, Default)]
pub struct ZeroRuns {
    /// Zero bytes seen since the last non-zero one.
    zeros: u64,
}

impl ZeroRuns {
    /// Appends the pairs of the next piece of the diff stream to `out`.
    pub fn push(&mut self, diff: &[u8], out: &mut Vec<u8>) {
        for &b in diff {
            if b == 0 {
                self.zeros += 1;
            } else {
                put_varint(out, self.zeros);
                out.push(b);
                self.zeros = 0;
            }
        }
    }

    /// Joins the next piece of the diff stream, given as the pairs of `s` (written from a fresh
    /// [`ZeroRuns`]): appends to `head` its first run with the zeros pending here added, and
    /// returns the rest of its pairs, to be written after `head` as they are (not copied).
    pub fn push_pairs<'s>(&mut self, s: &'s SplitStreams, head: &mut Vec<u8>) -> &'s [u8] {
        match read_varint(&s.pairs) {
            Some((run, n)) => {
                put_varint(head, self.zeros + run);
                self.zeros = s.trailing_zeros;
                &s.pairs[n..]
            }
            None => {
                self.zeros += s.trailing_zeros;
                &[]
            }
        }
    }

    /// Zero bytes seen since the last non-zero one.
    pub fn pending(&self) -> u64 {
        self.zeros
    }
}

/// Reads an unsigned LEB128 varint at the start of `b`: (value, bytes read), or `None` when
/// `b` does not start with one.
pub(crate) fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut at = 0;
    let v = formats::split_diff::read_varint(b, &mut at).ok()?;
    Some((v, at))
}

impl SplitStreams {
    /// Appends one control triple: move the old cursor by `seek`, add `add_len` bytes of old +
    /// diff, then copy `copy_len` bytes of extra.
    fn push(&mut self, seek: i64, add_len: u64, copy_len: u64) {
        put_varint(&mut self.ctrl, formats::split_diff::zigzag(seek));
        put_varint(&mut self.ctrl, add_len);
        put_varint(&mut self.ctrl, copy_len);
    }
}

/// Accumulates bsdiff-style matches (absolute old/new positions) into split streams. Matches
/// must come in increasing new order; gaps in the new file become copies.
pub(crate) struct SplitBuilder<'a> {
    old: &'a [u8],
    new: &'a [u8],
    /// Offset of `old` within the whole old file (windowed diffs).
    old_base: u64,
    new_pos: usize,
    old_cursor: u64,
    /// Old and new positions (absolute old, within `new`) where the last add run ended.
    last_add_end: Option<(u64, usize)>,
    streams: SplitStreams,
    /// The diff stream's pairs so far.
    zeros: ZeroRuns,
    /// The diff bytes of the add run being appended (reused).
    run: Vec<u8>,
}

impl<'a> SplitBuilder<'a> {
    /// A builder for `new` against `old`, which starts at `old_base` in the whole old file;
    /// the old cursor starts at `cursor`.
    pub(crate) fn new(old: &'a [u8], new: &'a [u8], old_base: u64, cursor: u64) -> Self {
        SplitBuilder {
            old,
            new,
            old_base,
            new_pos: 0,
            old_cursor: cursor,
            last_add_end: None,
            streams: SplitStreams::default(),
            zeros: ZeroRuns::default(),
            run: Vec::new(),
        }
    }

    /// The old cursor (absolute) after the triples so far.
    pub(crate) fn cursor(&self) -> u64 {
        self.old_cursor
    }

    /// Where the last non-empty add run ended: absolute old position, position in `new`.
    pub(crate) fn last_add_end(&self) -> Option<(u64, usize)> {
        self.last_add_end
    }

    pub(crate) fn add_match(&mut self, m: &bidiff::Match) -> std::io::Result<()> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        if m.add_new_start < self.new_pos
            || m.add_new_start + m.add_length > m.copy_end
            || m.copy_end > self.new.len()
            || m.add_old_start + m.add_length > self.old.len()
        {
            return Err(bad("bidiff produced an out-of-order match"));
        }
        if m.add_new_start > self.new_pos {
            self.copy_run(self.new_pos, m.add_new_start);
        }
        let target = self.old_base + m.add_old_start as u64;
        let seek = target as i64 - self.old_cursor as i64;
        let a = &self.new[m.add_new_start..m.add_new_start + m.add_length];
        let o = &self.old[m.add_old_start..m.add_old_start + m.add_length];
        self.run.clear();
        formats::split_diff::encode_run(a, o, &mut self.run);
        self.zeros.push(&self.run, &mut self.streams.pairs);
        self.streams
            .extra
            .extend_from_slice(&self.new[m.copy_start()..m.copy_end]);
        self.streams.push(
            seek,
            m.add_length as u64,
            (m.copy_end - m.copy_start()) as u64,
        );
        self.old_cursor = target + m.add_length as u64;
        // Short add runs are often chance matches; only long ones say where the file went.
        if m.add_length >= 32 {
            self.last_add_end = Some((self.old_cursor, m.add_new_start + m.add_length));
        }
        self.new_pos = m.copy_end;
        Ok(())
    }

    fn copy_run(&mut self, from: usize, to: usize) {
        self.streams.extra.extend_from_slice(&self.new[from..to]);
        self.streams.push(0, 0, (to - from) as u64);
    }

    pub(crate) fn finish(mut self) -> SplitStreams {
        if self.new_pos < self.new.len() {
            self.copy_run(self.new_pos, self.new.len());
        }
        self.streams.trailing_zeros = self.zeros.pending();
        self.streams
    }
}

/// The split-diff streams from `old` to `new`. The suffix sort runs on one thread and the scan
/// on rayon's threads, in pieces fixed by the file size ([`crate::diff::sa_scan`]), so the result
/// does not depend on the number of threads.
pub fn split_streams(old: &[u8], new: &[u8]) -> Result<SplitStreams> {
    split_streams_with(old, new, |_| {})
}

/// [`split_streams`], showing each match to `seen` first.
pub fn split_streams_with(
    old: &[u8],
    new: &[u8],
    mut seen: impl FnMut(&bidiff::Match),
) -> Result<SplitStreams> {
    let mut b = SplitBuilder::new(old, new, 0, 0);
    crate::diff::sa_scan::diff(old, new, |m| {
        seen(&m);
        b.add_match(&m)
    })?;
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The pairs of `diff` written from a fresh [`ZeroRuns`], as one window's streams.
    fn window(diff: &[u8]) -> SplitStreams {
        let mut z = ZeroRuns::default();
        let mut s = SplitStreams::default();
        z.push(diff, &mut s.pairs);
        s.trailing_zeros = z.pending();
        s
    }

    proptest! {
        /// Windows' pairs joined with `push_pairs` are the pairs of the whole stream, whatever
        /// the cuts (windows of zeros only, empty ones, runs across cuts).
        #[test]
        fn joined_window_pairs_are_the_whole_streams_pairs(
            diff in proptest::collection::vec(prop_oneof![4 => Just(0u8), 1 => any::<u8>()], 0..3000),
            cuts in proptest::collection::vec(any::<u16>(), 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| usize::from(c) % (diff.len() + 1)).collect();
            cuts.push(0);
            cuts.push(diff.len());
            cuts.sort_unstable();
            let mut joined = Vec::new();
            let mut z = ZeroRuns::default();
            for w in cuts.windows(2) {
                let piece = window(&diff[w[0]..w[1]]);
                let rest = z.push_pairs(&piece, &mut joined);
                joined.extend_from_slice(rest);
            }
            let whole = window(&diff);
            prop_assert_eq!(joined, whole.pairs);
            prop_assert_eq!(z.pending(), whole.trailing_zeros);
        }
    }

    #[test]
    fn split_streams_hold_the_diff_bytes_as_pairs() {
        let old: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[100] ^= 1;
        new[4000] = new[4000].wrapping_add(3);
        let s = split_streams(&old, &new).unwrap();
        // Two non-zero diff bytes: (100 zeros, 0x01-ish) and (3899 zeros, …); none after.
        let mut pairs = Vec::new();
        let mut at = 0;
        while at < s.pairs.len() {
            let (run, n) = read_varint(&s.pairs[at..]).unwrap();
            pairs.push((run, s.pairs[at + n]));
            at += n + 1;
        }
        assert_eq!(pairs.len(), 2, "{pairs:?}");
        assert_eq!(pairs[0].0, 100);
        assert_eq!(pairs[0].0 + 1 + pairs[1].0, 4000);
        assert_eq!(s.trailing_zeros, 999);
    }
}
