//! Producing one file of a release from a patch op: copy, full content, bidiff, split diff or
//! zstd with a reference prefix (docs/format.md §6.3, docs/encodings.md). Everything streams
//! with bounded buffers except zstd-ref, whose old file (at most 24 MiB when written by
//! patch-create) is held in memory: its signed size must be within
//! [`Limits::max_ref_prefix`], and the frame's window within [`Limits::max_window_log`], both
//! checked before anything is allocated. Every produced byte is hashed on the way to disk
//! and nothing past the signed size is written.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use formats::exe_filter::{self, Direction, ExeFilter, Filter};
use formats::exe_project::{self, EqMap, Projection};
use formats::hash::StreamCheck;
use formats::limits::Limits;
use formats::patch_info::{Encoding, PatchOp};
use formats::split_diff::{self, StreamCodec};
use formats::Pin;
use liblzma::stream::{Filters, LzmaOptions, Stream};

use crate::error::{Error, IoContext, Result};
use crate::writeback::EarlyWriteback;

/// A writer that hashes everything and refuses bytes past the expected size.
pub struct CheckedWriter<W: Write> {
    inner: W,
    check: StreamCheck,
}

impl<W: Write> CheckedWriter<W> {
    /// Wraps `inner`; `what` names the file in errors.
    pub fn new(inner: W, what: &str, expected: Pin) -> Self {
        CheckedWriter {
            inner,
            check: StreamCheck::new(what, &expected.into()),
        }
    }

    /// Checks size and hash and returns the inner writer.
    pub fn finish(self) -> Result<W> {
        self.check.finish()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for CheckedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check
            .update(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A staged output file being written: every byte hashed against its pin, buffered, and
/// flushed to disk along the way when large ([`EarlyWriteback`]).
pub type StagedOutput = CheckedWriter<BufWriter<EarlyWriteback>>;

/// Creates (or empties) the staged file `out`, refusing a symbolic link there or at any
/// directory of its path from `.patchkit` down.
pub(crate) fn create_output(out: &Path) -> Result<File> {
    crate::state::open_state_file(out, File::options().write(true).create(true).truncate(true))
}

/// Starts writing the staged output `file` at `path`, which must end up as `expected`; `what`
/// names it in errors.
pub fn staged_output(file: File, path: &Path, what: &str, expected: Pin) -> StagedOutput {
    CheckedWriter::new(
        BufWriter::with_capacity(1 << 16, EarlyWriteback::new(file, path)),
        what,
        expected,
    )
}

/// Checks the size and hash of a staged output and waits for its early writeback. It is not
/// fsynced here: staged files are synced together (in parallel) by the commit before its
/// journal is written, and intermediate files of a patch chain are never placed.
pub fn finish_staged_output(w: StagedOutput, path: &Path) -> Result<()> {
    let mut inner = w.finish()?;
    inner.flush().at(path)?;
    inner
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?
        .finish()
}

/// A reader that fails once more than `limit` bytes have been read (decompression bombs).
pub struct LimitedReader<R: Read> {
    inner: R,
    left: u64,
    what: String,
}

impl<R: Read> LimitedReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, limit: u64, what: impl Into<String>) -> Self {
        LimitedReader {
            inner,
            left: limit,
            what: what.into(),
        }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // Allow a clean EOF, refuse more data.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: decompressed data exceeds its bound", self.what),
                )),
            };
        }
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

/// Bound on the decompressed size of a bidiff stream producing `new_size` bytes: the data bytes
/// equal the output; control triples add a few bytes each.
pub fn bidiff_stream_bound(new_size: u64) -> u64 {
    new_size.saturating_mul(4).saturating_add(1 << 20)
}

/// Produces `op`'s file at `out` (created or truncated, not synced). `source` is the old file the op reads
/// and the pin it must have; `member` holds the op's bytes from the archive. `what` names the
/// patch in errors.
///
/// The source is not hashed up front: every produced byte is checked against the op's pin, so a
/// wrong source cannot go unnoticed, and it was hashed by the scan moments before. Only when
/// producing fails is the source hashed, to report a changed source as such rather than as a
/// bad patch.
pub fn produce(
    what: &str,
    op: &PatchOp,
    source: Option<(&Path, Pin)>,
    member: Option<&Path>,
    out: &Path,
) -> Result<()> {
    produce_with(what, op, source, member, out, &Limits::default())
}

/// [`produce`] within `limits` (the zstd-ref reference size and every zstd window).
pub fn produce_with(
    what: &str,
    op: &PatchOp,
    source: Option<(&Path, Pin)>,
    member: Option<&Path>,
    out: &Path,
    limits: &Limits,
) -> Result<()> {
    let result = produce_unchecked(what, op, source, member, out, limits);
    if let (Err(_), Some((src, pin))) = (&result, source) {
        if formats::hash::pin_file(src).ok() != Some(pin) {
            return Err(Error::Verify {
                path: op.path.to_string(),
                reason: format!(
                    "source {} is not the version this patch was built for",
                    src.display()
                ),
            });
        }
    }
    result
}

/// [`produce`] without the diagnosis of a changed source.
fn produce_unchecked(
    what: &str,
    op: &PatchOp,
    source: Option<(&Path, Pin)>,
    member: Option<&Path>,
    out: &Path,
    limits: &Limits,
) -> Result<()> {
    let file_what = format!("{what}: {}", op.path);
    let need_source_pin = || {
        source.ok_or_else(|| Error::bad(&file_what, "op reads an old file that is not available"))
    };
    let need_source = || need_source_pin().map(|(p, _)| p);
    let need_member = || member.ok_or_else(|| Error::bad(&file_what, "archive member is missing"));
    let out_file = create_output(out)?;
    let mut w = staged_output(out_file, out, &file_what, op.new);
    let bad_stream = |e: std::io::Error| Error::bad(&file_what, e.to_string());
    match &op.encoding {
        Encoding::Copy { .. } => {
            let src = need_source()?;
            let mut f = File::open(src).at(src)?;
            std::io::copy(&mut f, &mut w).map_err(bad_stream)?;
        }
        Encoding::Full { .. } => {
            let m = need_member()?;
            let f = BufReader::new(File::open(m).at(m)?);
            let dec = zstd::stream::read::Decoder::new(f).map_err(bad_stream)?;
            let mut dec = LimitedReader::new(dec, op.new.size, &file_what);
            std::io::copy(&mut dec, &mut w).map_err(bad_stream)?;
        }
        Encoding::Bidiff { .. } => {
            let src = need_source()?;
            let m = need_member()?;
            let f = BufReader::new(File::open(m).at(m)?);
            let dec = zstd::stream::read::Decoder::new(f).map_err(bad_stream)?;
            let dec = LimitedReader::new(dec, bidiff_stream_bound(op.new.size), &file_what);
            let old = BufReader::with_capacity(1 << 16, File::open(src).at(src)?);
            let mut reader = bipatch::Reader::new(dec, old)
                .map_err(|e| Error::bad(&file_what, format!("bad bidiff stream: {e:?}")))?;
            std::io::copy(&mut reader, &mut w).map_err(bad_stream)?;
        }
        Encoding::SplitDiff { member_size, .. } => {
            let src = need_source()?;
            let m = need_member()?;
            apply_split(&file_what, (m, 0), *member_size, src, op.new.size, &mut w)?;
        }
        Encoding::ExeSplitDiff {
            member_size,
            filter,
            ..
        } => {
            let (src, pin) = need_source_pin()?;
            let m = need_member()?;
            apply_exe_split(
                &file_what,
                m,
                *member_size,
                (src, pin),
                filter,
                out,
                op.new.size,
                &mut w,
            )?;
        }
        Encoding::ExeProjectDiff {
            member_size,
            project,
            ..
        } => {
            let (src, pin) = need_source_pin()?;
            let m = need_member()?;
            apply_exe_project(
                &file_what,
                m,
                *member_size,
                (src, pin),
                project,
                out,
                op.new.size,
                &mut w,
            )?;
        }
        Encoding::ZstdRef { window_log, .. } => {
            let (src, pin) = need_source_pin()?;
            let m = need_member()?;
            let max_log = (*window_log).min(limits.max_window_log);
            check_frame_window(&file_what, m, max_log, limits)?;
            let prefix = read_reference(&file_what, src, pin.size, limits)?;
            let f = BufReader::new(File::open(m).at(m)?);
            let mut dec =
                zstd::stream::read::Decoder::with_ref_prefix(f, &prefix).map_err(bad_stream)?;
            dec.window_log_max(max_log).map_err(bad_stream)?;
            let mut dec = LimitedReader::new(dec, op.new.size, &file_what);
            std::io::copy(&mut dec, &mut w).map_err(bad_stream)?;
        }
    }
    finish_staged_output(w, out)
}

/// Reads the old file `src` of a zstd-ref op, whose signed size is `size`, into memory:
/// refused before reading when `size` exceeds [`Limits::max_ref_prefix`], and never more than
/// `size` bytes are read (a file that grew or shrank is an error).
fn read_reference(what: &str, src: &Path, size: u64, limits: &Limits) -> Result<Vec<u8>> {
    if size > limits.max_ref_prefix {
        return Err(Error::bad(
            what,
            format!(
                "zstd-ref reference {} has {size} bytes, more than the limit of {} bytes held in memory",
                src.display(),
                limits.max_ref_prefix
            ),
        ));
    }
    let cap = usize::try_from(size).map_err(|_| Error::bad(what, "reference too large"))?;
    let mut prefix = Vec::with_capacity(cap);
    File::open(src)
        .at(src)?
        .take(size.saturating_add(1))
        .read_to_end(&mut prefix)
        .at(src)?;
    if prefix.len() as u64 != size {
        return Err(Error::bad(
            what,
            format!(
                "zstd-ref reference {} does not have its signed size of {size} bytes",
                src.display()
            ),
        ));
    }
    Ok(prefix)
}

/// The window a zstd frame header (`header`: the frame's first bytes, at least 18 unless the
/// file is shorter) declares, in bytes; `None` when it is not a zstd frame header (RFC 8878
/// §3.1.1.1).
fn frame_window(header: &[u8]) -> Option<u64> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if header.get(..4)? != MAGIC {
        return None;
    }
    let fhd = *header.get(4)?;
    if fhd & 0x08 != 0 {
        return None; // reserved bit
    }
    let single_segment = fhd & 0x20 != 0;
    let mut at = 5;
    let mut window = None;
    if !single_segment {
        let wd = *header.get(at)?;
        at += 1;
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64 << log;
        window = Some(base + (base / 8) * u64::from(wd & 7));
    }
    at += [0, 1, 2, 4][usize::from(fhd & 3)];
    if let Some(w) = window {
        return Some(w);
    }
    // Single segment: the window is the content size.
    let fcs_len = [1, 2, 4, 8][usize::from(fhd >> 6)];
    let bytes = header.get(at..at + fcs_len)?;
    let mut v = [0u8; 8];
    v[..fcs_len].copy_from_slice(bytes);
    let fcs = u64::from_le_bytes(v);
    Some(if fcs_len == 2 { fcs + 256 } else { fcs })
}

/// Checks, before a decoder is created, that the zstd frame at the start of `member` needs a
/// window of at most `2^max_log` bytes (`max_log` is already within
/// [`Limits::max_window_log`]).
fn check_frame_window(what: &str, member: &Path, max_log: u32, limits: &Limits) -> Result<()> {
    let mut header = Vec::with_capacity(18);
    File::open(member)
        .at(member)?
        .take(18)
        .read_to_end(&mut header)
        .at(member)?;
    let window = frame_window(&header)
        .ok_or_else(|| Error::bad(what, "zstd-ref data is not a zstd frame"))?;
    let allowed = 1u64 << max_log;
    if window > allowed {
        return Err(Error::bad(
            what,
            format!(
                "zstd frame needs a window of {window} bytes, more than the {allowed} bytes allowed \
                 (the op's window log and the limit of 2^{})",
                limits.max_window_log
            ),
        ));
    }
    Ok(())
}

/// Bound on the decompressed size of a split diff's control stream for a `new_size`-byte file:
/// every triple the creator writes produces at least one byte and takes at most 30 bytes.
pub fn split_ctrl_bound(new_size: u64) -> u64 {
    new_size.saturating_mul(32).saturating_add(1 << 16)
}

fn read_varint<R: Read>(r: &mut R, what: &str) -> Result<Option<u64>> {
    let mut v: u64 = 0;
    let mut shift = 0u32;
    let mut byte = [0u8; 1];
    loop {
        let n = r
            .read(&mut byte)
            .map_err(|e| Error::bad(what, e.to_string()))?;
        if n == 0 {
            if shift == 0 {
                return Ok(None);
            }
            return Err(Error::bad(what, "truncated varint"));
        }
        if shift >= 64 || (shift == 63 && byte[0] > 1) {
            return Err(Error::bad(what, "varint overflows 64 bits"));
        }
        v |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
        shift += 7;
    }
}

fn need_varint<R: Read>(r: &mut R, what: &str) -> Result<u64> {
    read_varint(r, what)?.ok_or_else(|| Error::bad(what, "truncated split-diff stream"))
}

/// One stream of a split-diff member: bytes `[start, start + len)` of `member` (a tag byte,
/// then a zstd frame or a raw LZMA2 stream; nothing when `len` is 0), decompressing to at most
/// `bound` bytes.
fn split_part(what: &str, member: &Path, start: u64, len: u64, bound: u64) -> Result<Part> {
    if len == 0 {
        return Ok(Box::new(std::io::empty()));
    }
    let mut f = File::open(member).at(member)?;
    f.seek(SeekFrom::Start(start)).at(member)?;
    let mut tag = [0u8; 1];
    f.read_exact(&mut tag).at(member)?;
    let body = BufReader::with_capacity(1 << 14, f.take(len - 1));
    let err = |e: std::io::Error| Error::bad(what, e.to_string());
    Ok(match StreamCodec::from_tag(tag[0]) {
        Some(StreamCodec::Zstd) => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(body).map_err(err)?;
            dec.window_log_max(MAX_WINDOW_LOG).map_err(err)?;
            Box::new(LimitedReader::new(dec, bound, what))
        }
        Some(StreamCodec::Lzma2 { dict_log }) => {
            let mut opts =
                LzmaOptions::new_preset(6).map_err(|e| Error::bad(what, e.to_string()))?;
            opts.dict_size(1 << dict_log);
            let mut filters = Filters::new();
            filters.lzma2(&opts);
            let stream = Stream::new_raw_decoder(&filters)
                .map_err(|e| Error::bad(what, format!("lzma2: {e}")))?;
            let dec = liblzma::bufread::XzDecoder::new_stream(body, stream);
            Box::new(LimitedReader::new(dec, bound, what))
        }
        None => {
            return Err(Error::bad(
                what,
                format!("split-diff stream has unknown codec tag {}", tag[0]),
            ))
        }
    })
}

/// Largest zstd window a split-diff stream may need (the creator uses at most 2^24).
const MAX_WINDOW_LOG: u32 = 24;

/// A decompressing reader over one stream of a split-diff member.
type Part = Box<dyn Read + Send>;

/// Pairs decoded per batch handed from the pair decoder to [`ZeroRunDiff`].
const PAIR_BATCH: usize = 8192;
/// Batches in flight between them (bounds the memory to about 0.5 MiB).
const PAIR_BATCHES_IN_FLIGHT: usize = 4;

/// A batch of (zero run, value) pairs, or why the pair stream could not be decoded.
type PairBatch = Result<Vec<(u64, u8)>>;

/// Decodes the pair stream `part` on a thread of `scope` (decompression, LZMA2 in particular,
/// then overlaps applying the diff) and returns the receiving end. The thread stops at the end
/// of the stream, at its first error (sent on), or when the receiver is dropped.
fn decode_pairs_in<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    part: Part,
    what: String,
) -> std::sync::mpsc::Receiver<PairBatch> {
    let (tx, rx) = std::sync::mpsc::sync_channel(PAIR_BATCHES_IN_FLIGHT);
    scope.spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, part);
        let mut batch = Vec::with_capacity(PAIR_BATCH);
        let read_pair = |r: &mut BufReader<Part>| -> Result<Option<(u64, u8)>> {
            let Some(z) = read_varint(r, &what)? else {
                return Ok(None);
            };
            let mut b = [0u8; 1];
            r.read_exact(&mut b)
                .map_err(|_| Error::bad(&what, "split-diff pair stream is truncated"))?;
            Ok(Some((z, b[0])))
        };
        loop {
            match read_pair(&mut r) {
                Ok(Some(p)) => {
                    batch.push(p);
                    if batch.len() == PAIR_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(PAIR_BATCH));
                        if tx.send(Ok(full)).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {
                    if !batch.is_empty() {
                        let _ = tx.send(Ok(batch));
                    }
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// The diff stream of a split diff, rebuilt from its (zero run, value) pairs.
struct ZeroRunDiff {
    batches: std::sync::mpsc::Receiver<PairBatch>,
    batch: std::vec::IntoIter<(u64, u8)>,
    zeros_left: u64,
    pending: Option<u8>,
    pairs_done: bool,
}

impl ZeroRunDiff {
    fn new(batches: std::sync::mpsc::Receiver<PairBatch>) -> Self {
        ZeroRunDiff {
            batches,
            batch: Vec::new().into_iter(),
            zeros_left: 0,
            pending: None,
            pairs_done: false,
        }
    }

    /// The next pair, `None` at the end of the stream.
    fn next_pair(&mut self) -> Result<Option<(u64, u8)>> {
        loop {
            if let Some(p) = self.batch.next() {
                return Ok(Some(p));
            }
            match self.batches.recv() {
                Ok(b) => self.batch = b?.into_iter(),
                // The decoder is done (it sends its error before stopping).
                Err(_) => return Ok(None),
            }
        }
    }

    /// Turns the old bytes in `buf` into new bytes in place with the next `buf.len()` diff bytes,
    /// carrying `c` as [`split_diff::decode_run`] does. Only non-zero diff bytes and bytes with a
    /// carry pending are touched: a zero diff byte without carry keeps the old byte, so the
    /// zero runs (most of a typical diff) cost nothing.
    fn apply_in_place(&mut self, buf: &mut [u8], c: &mut u8) -> Result<()> {
        let mut i = 0;
        while i < buf.len() {
            if self.zeros_left > 0 || self.pairs_done {
                let run = if self.pairs_done {
                    buf.len() - i
                } else {
                    self.zeros_left.min((buf.len() - i) as u64) as usize
                };
                let end = i + run;
                while *c != 0 && i < end {
                    apply_byte(&mut buf[i], 0, c);
                    i += 1;
                }
                if !self.pairs_done {
                    self.zeros_left -= run as u64;
                }
                i = end;
            } else if let Some(v) = self.pending.take() {
                apply_byte(&mut buf[i], v, c);
                i += 1;
            } else {
                match self.next_pair()? {
                    None => self.pairs_done = true,
                    Some((z, v)) => {
                        self.zeros_left = z;
                        self.pending = Some(v);
                    }
                }
            }
        }
        Ok(())
    }
}

/// One byte of [`split_diff::decode_run`]: old byte `b` plus diff byte `d` plus carry `c`.
#[inline]
fn apply_byte(b: &mut u8, d: u8, c: &mut u8) {
    let o = *b;
    let v = o.wrapping_add(d).wrapping_add(*c);
    *c = split_diff::carry(v, o);
    *b = v;
}

/// Applies a split-diff member (docs/encodings.md) to the old file `source`, writing the new
/// file (`new_size` bytes) to `w`. Memory: three decoders (zstd windows ≤ 16 MiB, LZMA2
/// dictionaries ≤ 16 MiB, in practice ≤ 1 MiB) and 64 KiB buffers.
/// The member starts at byte `base` of the file `member` (0 but for `exe-project-diff`).
pub fn apply_split<W: Write>(
    what: &str,
    (member, base): (&Path, u64),
    member_size: u64,
    source: &Path,
    new_size: u64,
    w: &mut W,
) -> Result<()> {
    let parts = open_split(what, (member, base), member_size, new_size)?;
    let old = File::open(source).at(source)?;
    let old_size = old.metadata().at(source)?.len();
    run_split(what, parts, &OldFile::Disk(old, old_size), new_size, w)
}

/// The old file a split diff reads from: on disk (with its size), read where the diff says,
/// or in memory.
enum OldFile<'a> {
    Disk(File, u64),
    Memory(&'a [u8]),
}

impl OldFile<'_> {
    fn len(&self) -> u64 {
        match self {
            OldFile::Disk(_, n) => *n,
            OldFile::Memory(b) => b.len() as u64,
        }
    }

    /// Fills `buf` with the bytes at `at` (the caller checked they are inside the file).
    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        match self {
            OldFile::Disk(f, _) => read_exact_at(f, buf, at),
            OldFile::Memory(b) => {
                let src = usize::try_from(at)
                    .ok()
                    .and_then(|a| b.get(a..a.checked_add(buf.len())?))
                    .ok_or_else(|| std::io::Error::other("read past the old file"))?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// The three decompressing streams of a split-diff member.
struct SplitParts {
    ctrl: Part,
    pairs: Part,
    extra: Part,
}

/// Opens the streams of the split-diff member of `member_size` bytes at byte `base` of
/// `member`, after checking that their lengths add up to the member.
fn open_split(
    what: &str,
    (member, base): (&Path, u64),
    member_size: u64,
    new_size: u64,
) -> Result<SplitParts> {
    let bad = |reason: &str| Error::bad(what, reason.to_string());
    let (lens, header) = {
        let mut file = File::open(member).at(member)?;
        file.seek(SeekFrom::Start(base)).at(member)?;
        let mut hdr = BufReader::with_capacity(64, file);
        let mut counting = CountingReader {
            inner: &mut hdr,
            n: 0,
        };
        let mut lens = [0u64; 3];
        for l in &mut lens {
            *l = need_varint(&mut counting, what)?;
        }
        (lens, counting.n)
    };
    let total = lens.iter().try_fold(header, |t, l| t.checked_add(*l));
    let on_disk = std::fs::metadata(member).at(member)?.len();
    if total != Some(member_size) || base.checked_add(member_size) != Some(on_disk) {
        return Err(bad(
            "split-diff stream lengths do not add up to the member size",
        ));
    }
    let mut start = base + header;
    let mut part = |i: usize, bound: u64| {
        let p = split_part(what, member, start, lens[i], bound);
        start += lens[i];
        p
    };
    Ok(SplitParts {
        ctrl: part(0, split_ctrl_bound(new_size))?,
        pairs: part(1, split_ctrl_bound(new_size))?,
        extra: part(2, new_size)?,
    })
}

/// Decodes up to `limit` bytes of `part` now and returns a part that yields them, then the
/// rest of the stream.
fn prefetch(what: &str, mut part: Part, limit: u64) -> Result<Part> {
    let mut head = Vec::new();
    (&mut part)
        .take(limit)
        .read_to_end(&mut head)
        .map_err(|e| Error::bad(what, e.to_string()))?;
    Ok(Box::new(std::io::Cursor::new(head).chain(part)))
}

/// Applies the split diff whose streams are `parts` to `old`, writing the new file
/// (`new_size` bytes) to `w`.
fn run_split<W: Write>(
    what: &str,
    parts: SplitParts,
    old: &OldFile,
    new_size: u64,
    w: &mut W,
) -> Result<()> {
    let bad = |reason: &str| Error::bad(what, reason.to_string());
    let SplitParts { ctrl, pairs, extra } = parts;
    let mut ctrl = BufReader::with_capacity(1 << 14, ctrl);
    let mut extra = extra;
    let old_size = old.len();
    // The pair stream is decoded on another thread while this one applies it.
    std::thread::scope(|scope| {
        let mut diff = ZeroRunDiff::new(decode_pairs_in(scope, pairs, what.to_string()));
        let mut cursor: u64 = 0;
        let mut produced: u64 = 0;
        let mut buf = vec![0u8; 1 << 16];
        let io = |e: std::io::Error| Error::bad(what, e.to_string());
        while let Some(zz) = read_varint(&mut ctrl, what)? {
            let seek = split_diff::unzigzag(zz);
            let add = need_varint(&mut ctrl, what)?;
            let copy = need_varint(&mut ctrl, what)?;
            let target = i128::from(cursor) + i128::from(seek);
            if target < 0 || target > i128::from(old_size) {
                return Err(bad("split-diff seeks outside the old file"));
            }
            let target = target as u64;
            match target.checked_add(add) {
                Some(end) if end <= old_size => {}
                _ => return Err(bad("split-diff reads past the end of the old file")),
            }
            match produced.checked_add(add).and_then(|p| p.checked_add(copy)) {
                Some(p) if p <= new_size => produced = p,
                _ => return Err(bad("split-diff produces more than the new file's size")),
            }
            // Positional reads of exactly the bytes needed: a buffered reader would refill (and
            // mostly waste) its whole buffer after every seek.
            let mut at = target;
            cursor = target + add;
            let mut carry = 0u8;
            while at < cursor {
                let n = (cursor - at).min(buf.len() as u64) as usize;
                old.read_at(&mut buf[..n], at).map_err(io)?;
                diff.apply_in_place(&mut buf[..n], &mut carry)?;
                w.write_all(&buf[..n]).map_err(io)?;
                at += n as u64;
            }
            let copied = std::io::copy(&mut (&mut extra).take(copy), w).map_err(io)?;
            if copied != copy {
                return Err(bad("split-diff extra stream is truncated"));
            }
        }
        if produced != new_size {
            return Err(bad(
                "split-diff produces fewer bytes than the new file's size",
            ));
        }
        Ok(())
    })
}

/// Applies an `exe-split-diff` member (docs/format.md §6.2.5): the old file `source` is run
/// through the branch filter into a temporary file beside `out` (deleted on return), the split
/// diff is applied to that, and its output runs through the filter backwards into `w`. Memory:
/// that of [`apply_split`] plus one 1 MiB buffer; the old file's code ranges come from the
/// signed patch info and are checked against its signed size before anything is read.
#[allow(clippy::too_many_arguments)] // One call site; the arguments are the op's parts.
pub fn apply_exe_split<W: Write>(
    what: &str,
    member: &Path,
    member_size: u64,
    (source, pin): (&Path, Pin),
    filter: &ExeFilter,
    out: &Path,
    new_size: u64,
    w: &mut W,
) -> Result<()> {
    filter.validate(what, new_size)?;
    exe_filter::check_ranges(&format!("{what}: old_code"), &filter.old_code, pin.size)?;
    let dir = out.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".exe-old-")
        .tempfile_in(dir)
        .at(dir)?;
    {
        let mut src = File::open(source)
            .at(source)?
            .take(pin.size.saturating_add(1));
        let mut dst = BufWriter::with_capacity(1 << 16, tmp.as_file());
        let mut f = Filter::new(
            filter.arch,
            filter.span_log,
            &filter.old_code,
            Direction::Encode,
        );
        let mut buf = vec![0u8; 1 << 20];
        let (mut filled, mut at) = (0usize, 0u64);
        loop {
            let n = src.read(&mut buf[filled..]).at(source)?;
            filled += n;
            let last = n == 0;
            if at + filled as u64 > pin.size {
                break;
            }
            let done = f.run(&mut buf[..filled], at, last);
            dst.write_all(&buf[..done]).at(tmp.path())?;
            buf.copy_within(done..filled, 0);
            filled -= done;
            at += done as u64;
            if last {
                break;
            }
        }
        if at != pin.size || filled != 0 {
            return Err(Error::Verify {
                path: what.to_string(),
                reason: format!(
                    "source {} is not the version this patch was built for (size)",
                    source.display()
                ),
            });
        }
        dst.flush().at(tmp.path())?;
    }
    let mut unfilter = Unfilter {
        filter: Filter::new(
            filter.arch,
            filter.span_log,
            &filter.new_code,
            Direction::Decode,
        ),
        pending: Vec::with_capacity(1 << 17),
        at: 0,
        inner: w,
    };
    apply_split(
        what,
        (member, 0),
        member_size,
        tmp.path(),
        new_size,
        &mut unfilter,
    )?;
    unfilter
        .finish()
        .map_err(|e| Error::bad(what, e.to_string()))?;
    tmp.close().at(dir)
}

/// Largest old file an `exe-project-diff` apply keeps in memory, projected, while the split
/// diff reads it; a larger one (patch-create offers the encoding up to 48 MiB, the format
/// accepts [`exe_project::MAX_OLD_SIZE`]) is written to a temporary file and freed first, so
/// that the decoders of the split diff do not add to it.
pub const PROJECTED_IN_MEMORY_MAX: u64 = 36 << 20;

/// Bytes of the control stream and of the extra stream (each) of an `exe-project-diff` decoded
/// ahead on another core while the old file is read and projected.
const PREFETCH_MAX: u64 = 4 << 20;

/// Applies an `exe-project-diff` member (docs/format.md §6.2.6): the equivalence map at its
/// start is read (its compressed and decompressed sizes bounded), the old file `source` is read
/// into memory (its signed size at most [`exe_project::MAX_OLD_SIZE`]) and projected through
/// the map while another thread decodes the first [`PREFETCH_MAX`] bytes of the split diff's
/// control and extra streams; then the split diff after the map is applied to the projected
/// file, read from memory up to [`PROJECTED_IN_MEMORY_MAX`] bytes, beyond that from a temporary
/// file beside `out` (deleted on return). Memory: the old file, 8 MiB of prefetched streams
/// and the decoders of [`apply_split`] (the old file is freed first when it is written out).
#[allow(clippy::too_many_arguments)] // One call site; the arguments are the op's parts.
pub fn apply_exe_project<W: Write>(
    what: &str,
    member: &Path,
    member_size: u64,
    (source, pin): (&Path, Pin),
    project: &Projection,
    out: &Path,
    new_size: u64,
    w: &mut W,
) -> Result<()> {
    project
        .validate("project", pin.size)
        .map_err(|e| Error::bad(what, e.to_string()))?;
    let on_disk = std::fs::metadata(member).at(member)?.len();
    if on_disk != member_size {
        return Err(Error::bad(what, "member size differs from the patch info"));
    }
    let mut f = BufReader::with_capacity(1 << 16, File::open(member).at(member)?);
    let mut counting = CountingReader {
        inner: &mut f,
        n: 0,
    };
    let map_len = need_varint(&mut counting, what)?;
    let header = counting.n;
    let map_end = header
        .checked_add(map_len)
        .filter(|&e| e <= member_size)
        .ok_or_else(|| Error::bad(what, "equivalence map longer than the member"))?;
    let mut map_bytes = Vec::new();
    {
        let err = |e: std::io::Error| Error::bad(what, format!("equivalence map: {e}"));
        let mut dec =
            zstd::stream::read::Decoder::with_buffer((&mut f).take(map_len)).map_err(err)?;
        dec.window_log_max(MAX_WINDOW_LOG).map_err(err)?;
        LimitedReader::new(dec, exe_project::MAX_MAP_BYTES, what)
            .read_to_end(&mut map_bytes)
            .map_err(err)?;
    }
    let map = EqMap::decode("exe-project-diff", &map_bytes, pin.size)
        .map_err(|e| Error::bad(what, e.to_string()))?;
    drop(map_bytes);
    let SplitParts { ctrl, pairs, extra } =
        open_split(what, (member, map_end), member_size - map_end, new_size)?;
    let (old, (ctrl, extra)) = std::thread::scope(|scope| {
        let ahead = scope.spawn(move || -> Result<(Part, Part)> {
            Ok((
                prefetch(what, ctrl, PREFETCH_MAX)?,
                prefetch(what, extra, PREFETCH_MAX)?,
            ))
        });
        let old = read_projected(what, (source, pin), project, &map);
        let ahead = ahead
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok::<_, Error>((old?, ahead?))
    })?;
    drop(map);
    let parts = SplitParts { ctrl, pairs, extra };
    if pin.size <= PROJECTED_IN_MEMORY_MAX {
        return run_split(what, parts, &OldFile::Memory(&old), new_size, w);
    }
    let dir = out.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".exe-old-")
        .tempfile_in(dir)
        .at(dir)?;
    tmp.as_file().write_all(&old).at(tmp.path())?;
    drop(old);
    let projected = tmp.as_file().try_clone().at(tmp.path())?;
    run_split(
        what,
        parts,
        &OldFile::Disk(projected, pin.size),
        new_size,
        w,
    )?;
    tmp.close().at(dir)
}

/// The old file `source` (pinned `pin`: its size is checked) read into memory and projected
/// through `map`, on [`PROJECT_THREADS`] threads (read again and projected on one when the
/// pieces could not be stitched, which takes contrived code).
fn read_projected(
    what: &str,
    (source, pin): (&Path, Pin),
    project: &Projection,
    map: &EqMap,
) -> Result<Vec<u8>> {
    let read = |old: &mut Vec<u8>| -> Result<()> {
        old.clear();
        File::open(source)
            .at(source)?
            .take(pin.size.saturating_add(1))
            .read_to_end(old)
            .at(source)?;
        if old.len() as u64 != pin.size {
            return Err(Error::Verify {
                path: what.to_string(),
                reason: format!(
                    "source {} is not the version this patch was built for (size)",
                    source.display()
                ),
            });
        }
        Ok(())
    };
    let mut old = Vec::with_capacity(usize::try_from(pin.size).unwrap_or(0));
    read(&mut old)?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(PROJECT_THREADS);
    if !exe_project::project_in_parallel(&mut old, project, map, threads) {
        read(&mut old)?;
        exe_project::project(&mut old, project, map, None);
    }
    Ok(old)
}

/// Most threads that project one old file.
const PROJECT_THREADS: usize = 4;

/// A writer that runs the branch filter backwards on what is written through it: bytes are
/// held until the filter has decided on them (a few bytes of lookahead past each write).
struct Unfilter<'a, W: Write> {
    filter: Filter,
    pending: Vec<u8>,
    at: u64,
    inner: &'a mut W,
}

impl<W: Write> Unfilter<'_, W> {
    fn push(&mut self, last: bool) -> std::io::Result<()> {
        let done = self.filter.run(&mut self.pending, self.at, last);
        self.inner.write_all(&self.pending[..done])?;
        self.pending.drain(..done);
        self.at += done as u64;
        Ok(())
    }

    /// Writes the last bytes.
    fn finish(mut self) -> std::io::Result<()> {
        self.push(true)
    }
}

impl<W: Write> Write for Unfilter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= 1 << 16 {
            self.push(false)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `buf.len()` bytes of `f` at `offset`.
#[cfg(unix)]
fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

/// Reads exactly `buf.len()` bytes of `f` at `offset`.
#[cfg(not(unix))]
fn read_exact_at(mut f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// Counts the bytes read through it.
struct CountingReader<'a, R: Read> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let got = self.inner.read(buf)?;
        self.n += got as u64;
        Ok(got)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn bad_exe_project_diff_members_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let (m, old, out) = (
            dir.path().join("m"),
            dir.path().join("old"),
            dir.path().join("o"),
        );
        std::fs::write(&old, [0xE8u8; 100]).unwrap();
        let pin = Pin::of(&[0xE8u8; 100]);
        let project = Projection {
            arch: exe_filter::Arch::X86_64,
            old_code: vec![[0, 100]],
            old_segments: vec![[0, 0x1000, 100]],
            new_segments: vec![[0, 0x1000, 100]],
            old_rela: None,
            old_eh_frame_hdr: None,
            new_eh_frame_hdr_addr: None,
            old_eh_frame: None,
            rules: 1,
        };
        let run = |member: &[u8], project: &Projection, pin: Pin| {
            std::fs::write(&m, member).unwrap();
            let mut w = Vec::new();
            let e = apply_exe_project(
                "p: bin/app",
                &m,
                member.len() as u64,
                (&old, pin),
                project,
                &out,
                10,
                &mut w,
            )
            .unwrap_err()
            .to_string();
            assert!(w.is_empty());
            assert!(e.contains("bin/app"), "{e}");
            e
        };
        // A map longer than the member.
        let e = run(&[200, 1, 0], &project, pin);
        assert!(e.contains("longer than the member"), "{e}");
        // A map that is not zstd.
        let e = run(&[2, 0xFF, 0xFF, 0, 0, 0], &project, pin);
        assert!(e.contains("equivalence map"), "{e}");
        // A map whose entry ends past the old file.
        let map = zstd::bulk::compress(&[0, 0xC8, 0x01, 0], 3).unwrap();
        let mut member = vec![map.len() as u8];
        member.extend_from_slice(&map);
        member.extend_from_slice(&[0, 0, 0]);
        let e = run(&member, &project, pin);
        assert!(e.contains("past the old file"), "{e}");
        // Code ranges past the old file, and a source shorter than its pin.
        let wide = Projection {
            old_code: vec![[50, 51]],
            ..project.clone()
        };
        let e = run(&[0, 0, 0, 0], &wide, pin);
        assert!(e.contains("past the end"), "{e}");
        let long_pin = Pin { size: 120, ..pin };
        let ok_map = zstd::bulk::compress(&[0, 10, 0], 3).unwrap();
        let mut member = vec![ok_map.len() as u8];
        member.extend_from_slice(&ok_map);
        member.extend_from_slice(&[0, 0, 0]);
        let e = run(&member, &project, long_pin);
        assert!(e.contains("not the version"), "{e}");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".exe-old-"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn exe_split_diff_ranges_past_the_old_file_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let (m, old, out) = (
            dir.path().join("m"),
            dir.path().join("old"),
            dir.path().join("o"),
        );
        std::fs::write(&m, [0u8; 3]).unwrap();
        std::fs::write(&old, [0xE8u8; 100]).unwrap();
        let filter = ExeFilter {
            arch: exe_filter::Arch::X86_64,
            span_log: 16,
            old_code: vec![[50, 51]],
            new_code: vec![],
        };
        let mut w = Vec::new();
        let pin = Pin::of(&[0xE8u8; 100]);
        let e = apply_exe_split("p: bin/app", &m, 3, (&old, pin), &filter, &out, 10, &mut w)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bin/app: old_code") && e.contains("past the end"),
            "{e}"
        );
        // A source shorter than its pin is named as the wrong version.
        let short = ExeFilter {
            old_code: vec![[0, 10]],
            ..filter
        };
        std::fs::write(&old, [0xE8u8; 60]).unwrap();
        let e = apply_exe_split("p: bin/app", &m, 3, (&old, pin), &short, &out, 10, &mut w)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the version"), "{e}");
        assert!(w.is_empty());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// The pair stream of `diff`: (zero run, value) for every non-zero byte; trailing zeros
    /// are implicit.
    fn pairs_of(diff: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut zeros = 0u64;
        for &d in diff {
            if d == 0 {
                zeros += 1;
                continue;
            }
            let mut v = zeros;
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
            out.push(d);
            zeros = 0;
        }
        out
    }

    fn check_in_place(old: &[u8], new: &[u8], pieces: &[usize]) {
        let mut diff = Vec::new();
        split_diff::encode_run(new, old, &mut diff);
        let part: Part = Box::new(std::io::Cursor::new(pairs_of(&diff)));
        let mut buf = old.to_vec();
        std::thread::scope(|scope| {
            let mut z = ZeroRunDiff::new(decode_pairs_in(scope, part, "test".into()));
            let mut c = 0;
            let mut at: usize = 0;
            for &p in pieces.iter().chain(std::iter::once(&usize::MAX)) {
                let end = at.saturating_add(p).min(buf.len());
                z.apply_in_place(&mut buf[at..end], &mut c).unwrap();
                at = end;
            }
        });
        assert_eq!(buf, new);
    }

    #[test]
    fn a_changed_source_is_reported_as_such_and_a_right_one_produces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("out"));
        std::fs::write(&src, b"old bytes").unwrap();
        let pin = formats::hash::pin_reader(&mut &b"old bytes"[..]).unwrap();
        let op = PatchOp {
            path: formats::RelPath::new("a/b").unwrap(),
            new: pin,
            encoding: Encoding::Copy {
                source: formats::RelPath::new("a/b").unwrap(),
            },
        };
        produce("p", &op, Some((&src, pin)), None, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"old bytes");

        std::fs::write(&src, b"changed!!").unwrap();
        let e = produce("p", &op, Some((&src, pin)), None, &out).unwrap_err();
        assert!(matches!(e, Error::Verify { .. }), "{e}");
        assert!(e.to_string().contains("not the version"), "{e}");

        // Right source, bad member: the patch is blamed, not the source.
        std::fs::write(&src, b"old bytes").unwrap();
        let member = dir.path().join("member");
        std::fs::write(&member, b"not zstd").unwrap();
        let bad = PatchOp {
            encoding: Encoding::ZstdRef {
                source: formats::RelPath::new("a/b").unwrap(),
                member_size: 8,
                window_log: 20,
            },
            ..op
        };
        let e = produce("p", &bad, Some((&src, pin)), Some(&member), &out).unwrap_err();
        assert!(!matches!(e, Error::Verify { .. }), "{e}");
        assert!(e.to_string().contains("p: a/b"), "{e}");
    }

    /// A zstd-ref op of `old` producing `new`, with its member written to `dir/member`.
    fn zstd_ref_op(dir: &Path, old: &[u8], new: &[u8], frame: Option<Vec<u8>>) -> PatchOp {
        let frame = frame.unwrap_or_else(|| {
            let mut enc =
                zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, old).unwrap();
            enc.write_all(new).unwrap();
            enc.finish().unwrap()
        });
        std::fs::write(dir.join("member"), &frame).unwrap();
        PatchOp {
            path: formats::RelPath::new("lib/data.bin").unwrap(),
            new: Pin::of(new),
            encoding: Encoding::ZstdRef {
                source: formats::RelPath::new("lib/data.bin").unwrap(),
                member_size: frame.len() as u64,
                window_log: 31,
            },
        }
    }

    #[test]
    fn a_zstd_ref_source_over_the_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("out"));
        let old = vec![7u8; 4096];
        std::fs::write(&src, &old).unwrap();
        let op = zstd_ref_op(dir.path(), &old, b"new bytes", None);
        let member = dir.path().join("member");
        let source = Some((src.as_path(), Pin::of(&old)));
        // Within the limits it decodes.
        produce("p", &op, source, Some(&member), &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new bytes");
        let limits = Limits {
            max_ref_prefix: 4095,
            ..Limits::default()
        };
        let e = produce_with("p", &op, source, Some(&member), &out, &limits)
            .unwrap_err()
            .to_string();
        assert!(e.contains("p: lib/data.bin"), "{e}");
        assert!(e.contains("4096 bytes, more than the limit of 4095"), "{e}");
    }

    #[test]
    fn a_zstd_ref_frame_asking_for_a_huge_window_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("out"));
        std::fs::write(&src, b"old").unwrap();
        // A crafted frame header: not single segment, window descriptor exponent 21 (2^31
        // bytes), no dictionary id, no content size; then a block that is never reached.
        let frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3, 0x01, 0x00, 0x00];
        assert_eq!(frame_window(&frame), Some(1 << 31));
        let op = zstd_ref_op(dir.path(), b"old", b"new", Some(frame));
        let member = dir.path().join("member");
        let e = produce("p", &op, Some((&src, Pin::of(b"old"))), Some(&member), &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("p: lib/data.bin"), "{e}");
        assert!(e.contains("window of 2147483648 bytes"), "{e}");
        // The op's own window log bounds it too, below the limit.
        let frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 10 << 3, 0x01, 0x00, 0x00];
        let mut op = zstd_ref_op(dir.path(), b"old", b"new", Some(frame));
        if let Encoding::ZstdRef { window_log, .. } = &mut op.encoding {
            *window_log = 19;
        }
        let e = produce("p", &op, Some((&src, Pin::of(b"old"))), Some(&member), &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("window of 1048576 bytes"), "{e}");
    }

    #[test]
    fn frame_windows_of_single_segment_frames_are_their_content_size() {
        // Single segment, 1-byte content size.
        assert_eq!(
            frame_window(&[0x28, 0xb5, 0x2f, 0xfd, 0x20, 200]),
            Some(200)
        );
        // Single segment, 2-byte content size (+256), 1-byte dictionary id.
        assert_eq!(
            frame_window(&[0x28, 0xb5, 0x2f, 0xfd, 0x61, 9, 0x00, 0x01]),
            Some(256 + 256)
        );
        assert_eq!(frame_window(b"not zstd"), None);
        assert_eq!(frame_window(&[0x28, 0xb5, 0x2f, 0xfd]), None);
    }

    #[test]
    fn a_truncated_pair_stream_is_an_error_not_an_early_end() {
        for bytes in [&[5u8][..], &[0x85], &[2, 7, 0x80]] {
            let part: Part = Box::new(std::io::Cursor::new(bytes.to_vec()));
            let mut buf = vec![0u8; 64];
            let r = std::thread::scope(|scope| {
                let mut z = ZeroRunDiff::new(decode_pairs_in(scope, part, "p: f".into()));
                z.apply_in_place(&mut buf, &mut 0)
            });
            let e = r.expect_err("truncated pairs must fail");
            assert!(e.to_string().contains("p: f"), "{e}");
        }
    }

    #[test]
    fn in_place_decoding_matches_the_encoder_with_carries_across_pieces() {
        let old: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut new = old.clone();
        for i in (0..new.len()).step_by(37) {
            new[i] = new[i].wrapping_add((i % 251) as u8);
        }
        // Little-endian numbers moved by small amounts: carries into zero diff bytes.
        for i in (5..new.len() - 8).step_by(101) {
            let v = u64::from_le_bytes(old[i..i + 8].try_into().unwrap());
            let moved = v.wrapping_add(0x1f0).to_le_bytes();
            new[i..i + 8].copy_from_slice(&moved);
        }
        check_in_place(&old, &new, &[]);
        check_in_place(&old, &new, &[1, 0, 7, 300, 1000, 4000, 3, 9000]);
        check_in_place(&old, &old, &[10, 10]);
        let all_new: Vec<u8> = old.iter().map(|b| b.wrapping_add(1)).collect();
        check_in_place(&old, &all_new, &[5, 5000]);
    }
}
