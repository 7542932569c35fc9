//! Choosing the smallest encoding of each changed file (docs/format.md §6.3, docs/encodings.md):
//! a split diff (bsdiff-style matches with the control, diff and extra streams compressed
//! separately), the new file compressed with the old one as a zstd reference prefix, or the whole
//! new file compressed. The plain bidiff stream is still produced on request (`Chosen::Bidiff`)
//! and decoded by every client, but the creator prefers the split diff, which is smaller.

use std::io::Write;

use crate::error::{Error, Result};

/// Largest window log of zstd frames in patch members and repair files: a client decoding them
/// never needs more than a 16 MiB window per frame.
pub const MAX_MEMBER_WINDOW_LOG: u32 = 24;

/// Largest `old + new` size for which the zstd reference-prefix encoding is tried: the client
/// must hold the whole old file in memory to decode it.
pub const ZSTD_REF_MAX: u64 = 24 << 20;

/// New files up to this size also try the costly candidates (zstd-ref, whole file at the patch
/// level) whatever the diff gives; larger ones only when the diff is poor.
pub const SMALL_FILE: usize = 2 << 20;

/// Settings of the encoders.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// zstd level for patch members.
    pub level: i32,
    /// Also try zstd with the old file as reference prefix.
    pub try_zstd_ref: bool,
    /// Threads used inside one diff (suffix sort partitions and scan chunks); 0 = all cores.
    pub threads: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            level: 19,
            try_zstd_ref: true,
            threads: 0,
        }
    }
}

impl EncodeOptions {
    fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// How a changed file was encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// zstd(bidiff stream).
    Bidiff,
    /// Split diff: control, diff and extra streams each zstd-compressed (docs/encodings.md).
    SplitDiff,
    /// zstd with the old file as reference prefix, needing this window log.
    ZstdRef {
        /// Window log the decoder must allow.
        window_log: u32,
    },
    /// zstd of the new file.
    Full,
}

/// An encoded member.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// Which encoding.
    pub chosen: Chosen,
    /// The member's bytes.
    pub bytes: Vec<u8>,
}

fn zerr(e: std::io::Error) -> Error {
    Error::io("<zstd>", e)
}

/// Compresses `data` with zstd at `level` (long-distance matching for large inputs; window at
/// most [`MAX_MEMBER_WINDOW_LOG`]).
pub fn compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    compress_window(data, level, MAX_MEMBER_WINDOW_LOG)
}

/// Compresses `data` with zstd at `level` with a window of at most `2^max_window_log` bytes.
/// Levels above 19 enable zstd's "ultra" range.
pub fn compress_window(data: &[u8], level: i32, max_window_log: u32) -> Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(data.len() / 3 + 64), level)
        .map_err(zerr)?;
    enc.set_pledged_src_size(Some(data.len() as u64))
        .map_err(zerr)?;
    enc.include_checksum(false).map_err(zerr)?;
    enc.include_contentsize(true).map_err(zerr)?;
    let wl = window_log_for(data.len() as u64).min(max_window_log);
    if data.len() > 8 << 20 {
        enc.long_distance_matching(true).map_err(zerr)?;
    }
    if level > 19 || data.len() > 8 << 20 {
        enc.window_log(wl).map_err(zerr)?;
    }
    enc.write_all(data).map_err(zerr)?;
    enc.finish().map_err(zerr)
}

/// The smallest window log covering `n` bytes (between 10 and 31).
pub fn window_log_for(n: u64) -> u32 {
    let mut log = 10;
    while log < 31 && (1u64 << log) < n {
        log += 1;
    }
    log
}

/// zstd of `new` with `old` as reference prefix.
pub fn compress_with_ref(old: &[u8], new: &[u8], level: i32) -> Result<(Vec<u8>, u32)> {
    let wl = window_log_for(old.len() as u64 + new.len() as u64);
    let mut enc =
        zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, old).map_err(zerr)?;
    enc.set_pledged_src_size(Some(new.len() as u64))
        .map_err(zerr)?;
    enc.include_checksum(false).map_err(zerr)?;
    enc.window_log(wl).map_err(zerr)?;
    if old.len() + new.len() > 8 << 20 {
        enc.long_distance_matching(true).map_err(zerr)?;
    }
    enc.write_all(new).map_err(zerr)?;
    Ok((enc.finish().map_err(zerr)?, wl))
}

/// The raw bidiff stream from `old` to `new`.
pub fn bidiff_raw(old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    bidiff::simple_diff(old, new, &mut raw).map_err(|e| Error::io("<bidiff>", e))?;
    Ok(raw)
}

/// The three uncompressed streams of a split diff (docs/encodings.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitStreams {
    /// Triples `seek` (zigzag varint), `add_len`, `copy_len` (varints).
    pub ctrl: Vec<u8>,
    /// `new - old` bytes (wrapping) of every add run, in order.
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

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

impl SplitStreams {
    /// Appends one control triple: move the old cursor by `seek`, add `add_len` bytes of old +
    /// diff, then copy `copy_len` bytes of extra.
    fn push(&mut self, seek: i64, add_len: u64, copy_len: u64) {
        put_varint(&mut self.ctrl, zigzag(seek));
        put_varint(&mut self.ctrl, add_len);
        put_varint(&mut self.ctrl, copy_len);
    }
}

/// Accumulates bsdiff-style matches (absolute old/new positions) into split streams. Matches
/// must come in increasing new order; gaps in the new file become copies.
struct SplitBuilder<'a> {
    old: &'a [u8],
    new: &'a [u8],
    /// Offset of `old` within the whole old file (windowed diffs).
    old_base: u64,
    new_pos: usize,
    old_cursor: u64,
    streams: SplitStreams,
}

impl<'a> SplitBuilder<'a> {
    fn add_match(&mut self, m: &bidiff::Match) -> std::io::Result<()> {
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
        self.streams
            .diff
            .extend(a.iter().zip(o).map(|(n, o)| n.wrapping_sub(*o)));
        self.streams
            .extra
            .extend_from_slice(&self.new[m.copy_start()..m.copy_end]);
        self.streams.push(
            seek,
            m.add_length as u64,
            (m.copy_end - m.copy_start()) as u64,
        );
        self.old_cursor = target + m.add_length as u64;
        self.new_pos = m.copy_end;
        Ok(())
    }

    fn copy_run(&mut self, from: usize, to: usize) {
        self.streams.extra.extend_from_slice(&self.new[from..to]);
        self.streams.push(0, 0, (to - from) as u64);
    }

    fn finish(mut self) -> SplitStreams {
        if self.new_pos < self.new.len() {
            self.copy_run(self.new_pos, self.new.len());
        }
        self.streams
    }
}

/// bidiff parameters for diffing `old` (`old_len` bytes) into `new_len` bytes on `threads`
/// threads: suffix sorting in one partition per thread and scanning in chunks, so both cores
/// work inside one large file too.
fn diff_params(old_len: usize, new_len: usize, threads: usize) -> bidiff::DiffParams {
    let parts = if old_len >= 1 << 20 {
        threads.max(1)
    } else {
        1
    };
    let chunk = if new_len >= 2 << 20 && threads > 1 {
        Some((new_len / (2 * threads)).max(1 << 20))
    } else {
        None
    };
    bidiff::DiffParams::new(parts, chunk).unwrap_or_default()
}

/// The split-diff streams from `old` to `new`.
pub fn split_streams(old: &[u8], new: &[u8], threads: usize) -> Result<SplitStreams> {
    let mut b = SplitBuilder {
        old,
        new,
        old_base: 0,
        new_pos: 0,
        old_cursor: 0,
        streams: SplitStreams::default(),
    };
    if !old.is_empty() && !new.is_empty() {
        let params = diff_params(old.len(), new.len(), threads);
        bidiff::diff(old, new, &params, |m| b.add_match(&m))
            .map_err(|e| Error::io("<bidiff>", e))?;
    }
    Ok(b.finish())
}

/// The diff stream as zero runs and non-zero values: for every non-zero byte, the number of
/// zero bytes before it (varint) in `runs` and the byte in `vals`. Bytes after the last non-zero
/// one are zeros.
pub fn zero_runs(diff: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut runs = Vec::new();
    let mut vals = Vec::new();
    let mut zeros = 0u64;
    for &b in diff {
        if b == 0 {
            zeros += 1;
        } else {
            put_varint(&mut runs, zeros);
            zeros = 0;
            vals.push(b);
        }
    }
    (runs, vals)
}

/// Serializes split streams into a member (docs/encodings.md): four varint lengths, then four
/// zstd frames: control, zero runs and non-zero values of the diff stream, extra. All four are
/// small next to the file, so they use zstd's strongest levels.
pub fn pack_split(s: &SplitStreams, level: i32) -> Result<Vec<u8>> {
    let strong = (level.max(19) + 3).min(22);
    let (runs, vals) = zero_runs(&s.diff);
    let ((c, r), (v, e)) = rayon::join(
        || {
            rayon::join(
                || compress_window(&s.ctrl, strong, 22),
                || compress_window(&runs, strong, 22),
            )
        },
        || {
            rayon::join(
                || compress_window(&vals, strong, 22),
                || compress_window(&s.extra, strong, MAX_MEMBER_WINDOW_LOG),
            )
        },
    );
    let parts = [c?, r?, v?, e?];
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum::<usize>() + 40);
    for p in &parts {
        put_varint(&mut out, p.len() as u64);
    }
    for p in &parts {
        out.extend_from_slice(p);
    }
    Ok(out)
}

/// The split-diff member from `old` to `new`.
pub fn split_diff(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Result<Vec<u8>> {
    let s = split_streams(old, new, opts.threads())?;
    pack_split(&s, opts.level)
}

/// Encodes `new` against `old`, returning the smallest candidate. Costly candidates are only
/// tried where they can win: zstd-ref and the whole file at the patch level for small files, or
/// when the diff is poor.
pub fn encode_change(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Result<Encoded> {
    if old.is_empty() || new.is_empty() {
        return Ok(Encoded {
            chosen: Chosen::Full,
            bytes: compress(new, opts.level)?,
        });
    }
    let sd = split_diff(old, new, opts)?;
    let mut best = Encoded {
        chosen: Chosen::SplitDiff,
        bytes: sd,
    };
    let small = new.len() <= SMALL_FILE;
    let poor = best.bytes.len() > new.len() / 16;
    if opts.try_zstd_ref && (old.len() + new.len()) as u64 <= ZSTD_REF_MAX && (small || poor) {
        let (zr, window_log) = compress_with_ref(old, new, opts.level.max(19))?;
        if zr.len() < best.bytes.len() {
            best = Encoded {
                chosen: Chosen::ZstdRef { window_log },
                bytes: zr,
            };
        }
    }
    if small || poor {
        let full = compress(new, opts.level)?;
        if full.len() < best.bytes.len() {
            best = Encoded {
                chosen: Chosen::Full,
                bytes: full,
            };
        }
    }
    Ok(best)
}

/// Encodes `new` against `old` as `chosen` (tests and tools).
pub fn encode_as(old: &[u8], new: &[u8], chosen: &Chosen, opts: &EncodeOptions) -> Result<Vec<u8>> {
    match chosen {
        Chosen::Bidiff => compress(&bidiff_raw(old, new)?, opts.level),
        Chosen::SplitDiff => split_diff(old, new, opts),
        Chosen::ZstdRef { .. } => Ok(compress_with_ref(old, new, opts.level)?.0),
        Chosen::Full => compress(new, opts.level),
    }
}
