//! Bounded-memory diffing of large files (docs/encodings.md, "Bounded memory").
//!
//! A single-window split diff holds the old file, its suffix array (4 bytes per old byte), the
//! new file and the diff stream: about `5 × old + 2 × new` bytes. Above a memory budget the
//! creator instead cuts the new file into windows and diffs each window against a bounded
//! region of the old file (where the previous windows' matches say it corresponds, plus
//! margins), reading both from disk. The windows' control streams are concatenated with the
//! first seek of each window adjusted to the previous window's old cursor, and their diff and
//! extra streams are fed, in order, to streaming zstd encoders: the member is an ordinary
//! split diff, decoded by the unchanged client.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Condvar, Mutex, OnceLock};

use rayon::prelude::*;

use formats::split_diff::{unzigzag, zigzag, StreamCodec};

use crate::diff::streams::{put_varint, read_varint, SplitBuilder, SplitStreams, ZeroRuns};
use crate::error::{Error, IoContext, Result};
use crate::split_pack::frame_member;

/// Smallest automatic memory budget of a diff ([`auto_budget`]): 256 MiB.
pub const MIN_AUTO_BUDGET: u64 = 256 << 20;

/// Largest automatic memory budget of a diff ([`auto_budget`]): 4 GiB.
pub const MAX_AUTO_BUDGET: u64 = 4 << 30;

/// The memory budget of diffing a pair whose larger file has `file_len` bytes when none is
/// given: four times the file, at least [`MIN_AUTO_BUDGET`] and at most [`MAX_AUTO_BUDGET`].
/// With a single-window cost of about 8 × the file, pairs up to 32 MiB are diffed whole and
/// larger ones in windows, so a release's peak stays near 4 × its largest changed file (or
/// 256 MiB) and below 4 GiB whatever the file size.
pub fn auto_budget(file_len: u64) -> u64 {
    file_len
        .saturating_mul(4)
        .clamp(MIN_AUTO_BUDGET, MAX_AUTO_BUDGET)
}

/// Memory set aside in a windowed diff's budget for the four streaming zstd encoders (table
/// logs bounded by [`STREAM_WINDOW_LOG`]), the [`AnchorIndex`] (at most 34 MiB) and the
/// process itself.
pub const STREAM_RESERVE: u64 = 160 << 20;

/// Window log of the four streaming encoders of a windowed split diff (4 MiB).
pub const STREAM_WINDOW_LOG: u32 = 22;

/// Smallest new-file window chosen from a budget.
const MIN_WINDOW: u64 = 1 << 20;

/// Bytes a single-window split diff of `old_len` → `new_len` holds at its peak: the old file,
/// its suffix array (`i32` per byte), the new file and the diff stream (up to the new size),
/// plus the extra stream (up to the new size).
pub fn single_window_cost(old_len: u64, new_len: u64) -> u64 {
    old_len
        .saturating_mul(5)
        .saturating_add(new_len.saturating_mul(3))
}

/// How a windowed diff cuts the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowPlan {
    /// Bytes of the new file per window.
    pub new_window: u64,
    /// Old bytes added on each side of the old range a window is expected to match.
    pub margin: u64,
    /// Windows diffed at the same time (one per core).
    pub jobs: usize,
}

impl WindowPlan {
    /// The largest windows whose `jobs` concurrent diffs fit in `budget` bytes beside
    /// [`STREAM_RESERVE`]: per job, [`WindowPlan::job_cost`] = `5 × (W + 2M) + 3 × W` with
    /// margin `M = W / 4`, i.e. `10.5 × W`.
    pub fn for_budget(budget: u64, jobs: usize) -> WindowPlan {
        let jobs = jobs.max(1);
        let per_job = budget.saturating_sub(STREAM_RESERVE) / jobs as u64;
        let w = (per_job * 2 / 21).max(MIN_WINDOW);
        let w = w & !0xffff; // whole 64 KiB units
        WindowPlan {
            new_window: w.max(MIN_WINDOW),
            margin: w.max(MIN_WINDOW) / 4,
            jobs,
        }
    }

    /// Peak bytes of one window's diff: old region (with margins) and its suffix array, the new
    /// window, its diff and extra streams.
    pub fn job_cost(&self) -> u64 {
        single_window_cost(self.new_window + 2 * self.margin, self.new_window)
    }

    /// Peak bytes of the whole windowed diff: `jobs` windows plus the stream encoders.
    pub fn peak(&self) -> u64 {
        self.job_cost() * self.jobs as u64 + STREAM_RESERVE
    }
}

/// Random access to a file's bytes for reading windows (shared by the window jobs).
pub trait ReadAt: Sync {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `[offset, offset + buf.len())` into `buf`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl ReadAt for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).ok();
        let slice = start
            .and_then(|s| Some(s..s.checked_add(buf.len())?))
            .and_then(|r| self.get(r));
        match slice {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(Error::io(
                "<memory>",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end"),
            )),
        }
    }
}

/// A file read at offsets (one handle, locked per read: reads are whole windows).
pub struct FileAt {
    path: std::path::PathBuf,
    file: Mutex<File>,
    len: u64,
}

impl FileAt {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<FileAt> {
        let file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        Ok(FileAt {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            len,
        })
    }
}

impl ReadAt for FileAt {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.seek(SeekFrom::Start(offset)).at(&self.path)?;
        f.read_exact(buf).at(&self.path)
    }
}

fn read_range(src: &dyn ReadAt, start: u64, end: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(end - start).map_err(|_| {
        Error::io(
            "<window>",
            std::io::Error::other("window does not fit in memory"),
        )
    })?;
    let mut buf = vec![0u8; len];
    src.read_at(start, &mut buf)?;
    Ok(buf)
}

/// Bytes hashed per anchor of the [`AnchorIndex`].
const ANCHOR_LEN: usize = 32;

/// Most anchors sampled from an old file (16 bytes each in the index: 32 MiB).
const MAX_ANCHORS: u64 = 1 << 21;

/// Multiplier of the rolling hash (odd).
const ROLL_P: u64 = 0x0000_0100_0000_01b3;

fn mix(h: u64) -> u64 {
    let h = (h ^ (h >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// Where a window's bytes are in the old file, found through a sampled index of the old file:
/// the hash of the [`ANCHOR_LEN`] bytes at every `block`-aligned old offset (hashes that occur
/// more than once are dropped as ambiguous). A window rolls the same hash over every position
/// and votes for the offset `old - new` of each anchor it meets; the winner places the window's
/// old region, so insertions and moves larger than the margins are still found.
pub struct AnchorIndex {
    block: u64,
    /// (mixed hash, old offset), sorted by hash.
    entries: Vec<(u64, u64)>,
    /// One bit per `filter_log`-bit hash prefix: most positions are rejected by one load.
    filter: Vec<u64>,
    filter_log: u32,
}

impl AnchorIndex {
    /// Samples `old` (read in pieces of about 1 MiB).
    pub fn build(old: &dyn ReadAt) -> Result<AnchorIndex> {
        let len = old.len();
        let block = len.div_ceil(MAX_ANCHORS).max(64);
        let mut entries = Vec::with_capacity((len / block + 1) as usize);
        let per_piece = ((1u64 << 20) / block).max(1);
        let mut at = 0u64;
        while at + ANCHOR_LEN as u64 <= len {
            let end = (at + per_piece * block + ANCHOR_LEN as u64).min(len);
            let buf = read_range(old, at, end)?;
            let mut off = 0usize;
            while off + ANCHOR_LEN <= buf.len() && (off as u64) < per_piece * block {
                let h = buf[off..off + ANCHOR_LEN].iter().fold(0u64, |h, b| {
                    h.wrapping_mul(ROLL_P).wrapping_add(u64::from(*b))
                });
                entries.push((mix(h), at + off as u64));
                off += block as usize;
            }
            at += per_piece * block;
        }
        entries.sort_unstable();
        let mut unique = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            let mut j = i + 1;
            while j < entries.len() && entries[j].0 == entries[i].0 {
                j += 1;
            }
            if j == i + 1 {
                unique.push(entries[i]);
            }
            i = j;
        }
        let filter_log = (unique.len() as u64 * 8)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(10, 26);
        let mut filter = vec![0u64; 1 << (filter_log - 6)];
        for (h, _) in &unique {
            let bit = h >> (64 - filter_log);
            filter[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        Ok(AnchorIndex {
            block,
            entries: unique,
            filter,
            filter_log,
        })
    }

    /// The offset `old − new` most anchors of `window` (new bytes starting at `new_start`)
    /// agree on, if any anchor is met.
    fn vote(&self, window: &[u8], new_start: u64) -> Option<i64> {
        if window.len() < ANCHOR_LEN || self.entries.is_empty() {
            return None;
        }
        let top = (0..ANCHOR_LEN - 1).fold(1u64, |p, _| p.wrapping_mul(ROLL_P));
        let mut votes: std::collections::HashMap<i64, u32> = std::collections::HashMap::new();
        let mut h = 0u64;
        for (i, &b) in window.iter().enumerate() {
            if i >= ANCHOR_LEN {
                h = h.wrapping_sub(u64::from(window[i - ANCHOR_LEN]).wrapping_mul(top));
            }
            h = h.wrapping_mul(ROLL_P).wrapping_add(u64::from(b));
            if i + 1 < ANCHOR_LEN {
                continue;
            }
            let key = mix(h);
            let bit = key >> (64 - self.filter_log);
            if self.filter[(bit >> 6) as usize] & (1 << (bit & 63)) == 0 {
                continue;
            }
            if let Ok(k) = self.entries.binary_search_by_key(&key, |e| e.0) {
                let new_pos = new_start + (i + 1 - ANCHOR_LEN) as u64;
                *votes
                    .entry(self.entries[k].1 as i64 - new_pos as i64)
                    .or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(d, n)| (*n, std::cmp::Reverse(d.unsigned_abs())))
            .map(|(d, _)| d)
    }

    /// Bytes between anchors.
    pub fn block(&self) -> u64 {
        self.block
    }
}

/// One diffed window: its streams (the first control triple's seek is relative to the window's
/// old region start), where it left the old cursor, and the drift (old − new position) of its
/// last match.
struct WindowOut {
    region_start: u64,
    streams: SplitStreams,
    end_cursor: u64,
    drift: Option<i64>,
}

fn diff_window(
    old: &dyn ReadAt,
    new: &dyn ReadAt,
    anchors: &AnchorIndex,
    plan: &WindowPlan,
    new_start: u64,
    drift: Option<i64>,
) -> Result<WindowOut> {
    let (old_len, new_len) = (old.len(), new.len());
    let new_end = (new_start + plan.new_window).min(new_len);
    let w = new_end - new_start;
    let new_buf = read_range(new, new_start, new_end)?;
    // Where this window's bytes are expected in the old file: where its anchors say, else
    // where the previous windows' matches ended, else the proportional position.
    let expect = match anchors.vote(&new_buf, new_start).or(drift) {
        Some(d) => (new_start as i128 + d as i128).clamp(0, old_len as i128) as u64,
        None if new_len > 0 => (new_start as u128 * old_len as u128 / new_len as u128) as u64,
        None => 0,
    };
    let span = w + 2 * plan.margin;
    let mut start = expect.saturating_sub(plan.margin);
    if start + span > old_len {
        start = old_len.saturating_sub(span);
    }
    let end = (start + span).min(old_len);
    let old_buf = read_range(old, start, end)?;
    let mut b = SplitBuilder::new(&old_buf, &new_buf, start, start);
    crate::sa_scan::diff(&old_buf, &new_buf, |m| b.add_match(&m))?;
    let last = b.last_add_end();
    let end_cursor = b.cursor();
    let streams = b.finish();
    Ok(WindowOut {
        region_start: start,
        streams,
        end_cursor,
        drift: last.map(|(o, n)| o as i64 - (new_start + n as u64) as i64),
    })
}

/// A zstd encoder of one split-diff stream with bounded tables.
fn stream_encoder(level: i32) -> Result<zstd::stream::write::Encoder<'static, Vec<u8>>> {
    use zstd::zstd_safe::CParameter;
    let zerr = |e| Error::io("<zstd>", e);
    // The codec tag goes first; the zstd frame is appended behind it.
    let mut enc =
        zstd::stream::write::Encoder::new(vec![StreamCodec::Zstd.tag()], level).map_err(zerr)?;
    enc.include_checksum(false).map_err(zerr)?;
    enc.window_log(STREAM_WINDOW_LOG).map_err(zerr)?;
    enc.set_parameter(CParameter::HashLog(STREAM_WINDOW_LOG - 1))
        .map_err(zerr)?;
    enc.set_parameter(CParameter::ChainLog(STREAM_WINDOW_LOG))
        .map_err(zerr)?;
    Ok(enc)
}

/// New bytes a windowed diff covers before it may give up as poor ([`split_diff_windowed`]).
pub const GIVE_UP_AFTER: u64 = 16 << 20;

/// The three streaming encoders of a split-diff member (ctrl, (zero run, value) pairs, extra;
/// zstd, as LZMA2 is only used for small streams) and the state joining windows: the old cursor
/// and the zero run carried over from the previous window's diff stream.
struct MemberWriter {
    ctrl: zstd::stream::write::Encoder<'static, Vec<u8>>,
    pairs: zstd::stream::write::Encoder<'static, Vec<u8>>,
    extra: zstd::stream::write::Encoder<'static, Vec<u8>>,
    cursor: u64,
    zeros: ZeroRuns,
}

impl MemberWriter {
    fn new(level: i32) -> Result<MemberWriter> {
        Ok(MemberWriter {
            ctrl: stream_encoder(level)?,
            pairs: stream_encoder(level)?,
            extra: stream_encoder(level)?,
            cursor: 0,
            zeros: ZeroRuns::default(),
        })
    }

    /// Compressed bytes written so far (zstd may still hold some).
    fn compressed_len(&self) -> u64 {
        [&self.ctrl, &self.pairs, &self.extra]
            .iter()
            .map(|e| e.get_ref().len() as u64)
            .sum()
    }

    fn push(&mut self, w: WindowOut) -> Result<()> {
        let io = |e| Error::io("<zstd>", e);
        let ctrl = &w.streams.ctrl;
        let (z, n) = read_varint(ctrl).ok_or_else(|| {
            Error::io(
                "<window>",
                std::io::Error::other("window without control triples"),
            )
        })?;
        // The window's first seek is relative to its region start; make it relative to where
        // the previous window left the cursor.
        let seek = unzigzag(z) + (w.region_start as i64 - self.cursor as i64);
        let mut head = Vec::with_capacity(10);
        put_varint(&mut head, zigzag(seek));
        self.ctrl.write_all(&head).map_err(io)?;
        self.ctrl.write_all(&ctrl[n..]).map_err(io)?;
        self.cursor = w.end_cursor;
        head.clear();
        let rest = self.zeros.push_pairs(&w.streams, &mut head);
        self.pairs.write_all(&head).map_err(io)?;
        self.pairs.write_all(rest).map_err(io)?;
        self.extra.write_all(&w.streams.extra).map_err(io)?;
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        let io = |e| Error::io("<zstd>", e);
        let parts = [
            self.ctrl.finish().map_err(io)?,
            self.pairs.finish().map_err(io)?,
            self.extra.finish().map_err(io)?,
        ];
        Ok(frame_member(&parts))
    }
}

/// The split-diff member (docs/encodings.md) from `old` to `new`, diffed window by window as
/// `plan` says: at most `plan.jobs` windows in memory at once, each window on its own core.
/// `level` is the zstd level of the three streams (levels above 19 use zstd's ultra range with
/// the bounded tables of [`STREAM_WINDOW_LOG`]). With `give_up`, returns `None` as soon as,
/// past the first [`GIVE_UP_AFTER`] bytes or quarter of the new file (whichever is smaller),
/// the compressed streams pass 7/8 of
/// the new bytes diffed so far: such a diff is no smaller than the new file compressed whole,
/// and holding it would cost about the file's size in memory.
pub fn split_diff_windowed(
    old: &dyn ReadAt,
    new: &dyn ReadAt,
    plan: &WindowPlan,
    level: i32,
    give_up: bool,
) -> Result<Option<Vec<u8>>> {
    let plan = WindowPlan {
        new_window: plan.new_window.max(1),
        jobs: plan.jobs.max(1),
        ..*plan
    };
    let mut out = MemberWriter::new(level)?;
    let anchors = AnchorIndex::build(old)?;
    let new_len = new.len();
    let mut drift: Option<i64> = None;
    let mut next = 0u64;
    while next < new_len {
        let starts: Vec<u64> = (0..plan.jobs as u64)
            .map(|j| next + j * plan.new_window)
            .filter(|s| *s < new_len)
            .collect();
        next = starts.last().map_or(new_len, |s| s + plan.new_window);
        let d = drift;
        let windows: Vec<Result<WindowOut>> = starts
            .par_iter()
            .map(|s| diff_window(old, new, &anchors, &plan, *s, d))
            .collect();
        for w in windows {
            let w = w?;
            if w.drift.is_some() {
                drift = w.drift;
            }
            out.push(w)?;
        }
        let done = next.min(new_len);
        if give_up && done >= GIVE_UP_AFTER.min(new_len / 4) && out.compressed_len() > done / 8 * 7
        {
            return Ok(None);
        }
    }
    out.finish().map(Some)
}

/// Memory reservations of concurrent diffs against one budget: a diff waits until its cost
/// fits beside the others (a diff costing more than the budget runs alone). A thread that
/// already holds a reservation (rayon may run another file's diff on the stack of a waiting
/// one) never waits, so reservations cannot deadlock.
pub struct MemoryGate {
    used: Mutex<u64>,
    freed: Condvar,
}

thread_local! {
    static HOLDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A granted reservation; dropping it returns the memory.
pub struct Reservation<'a> {
    gate: &'a MemoryGate,
    amount: u64,
    outer: bool,
}

impl MemoryGate {
    /// The process-wide gate of diff memory.
    pub fn global() -> &'static MemoryGate {
        static GATE: OnceLock<MemoryGate> = OnceLock::new();
        GATE.get_or_init(|| MemoryGate {
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// Waits until `amount` bytes fit in `budget` beside the current reservations.
    pub fn reserve(&self, amount: u64, budget: u64) -> Reservation<'_> {
        let amount = amount.min(budget);
        if HOLDING.with(|h| h.get()) {
            return Reservation {
                gate: self,
                amount: 0,
                outer: false,
            };
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + amount > budget {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += amount;
        HOLDING.with(|h| h.set(true));
        Reservation {
            gate: self,
            amount,
            outer: true,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        HOLDING.with(|h| h.set(false));
        let mut used = self.gate.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.amount;
        self.gate.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fits_its_budget() {
        for budget in [256u64 << 20, 1 << 30, 4 << 30, 16 << 30] {
            for jobs in [1, 2, 8] {
                let p = WindowPlan::for_budget(budget, jobs);
                assert!(p.new_window >= MIN_WINDOW);
                if budget >= 1 << 30 {
                    assert!(
                        p.peak() <= budget,
                        "{budget} {jobs}: {p:?} peak {}",
                        p.peak()
                    );
                }
            }
        }
        let p = WindowPlan::for_budget(1 << 30, 2);
        assert!(p.new_window >= 32 << 20, "{p:?}");
    }
}
