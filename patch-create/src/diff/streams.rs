//! The three streams of a split diff (docs/encodings.md) and `SplitBuilder`, which turns
//! bsdiff-style matches into them; used by the single-window diff and by the windowed mode.

use crate::error::Result;

/// The three uncompressed streams of a split diff (docs/encodings.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitStreams {
    /// Triples `seek` (zigzag varint), `add_len`, `copy_len` (varints).
    pub ctrl: Vec<u8>,
    /// Diff bytes of every add run, in order: `new - old` minus the predicted carry
    /// ([`formats::split_diff::encode_run`]).
    pub diff: Vec<u8>,
    /// Literal new bytes of every copy run, in order.
    pub extra: Vec<u8>,
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
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
        formats::split_diff::encode_run(a, o, &mut self.streams.diff);
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
