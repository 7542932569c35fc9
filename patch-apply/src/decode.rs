//! Producing one file of a release from a patch op: copy, full content, bidiff or zstd with a
//! reference prefix (docs/format.md §6.3). Every produced byte is hashed on the way to disk
//! and nothing past the signed size is written.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use formats::hash::StreamCheck;
use formats::patch_info::{Encoding, PatchOp};
use formats::Pin;

use crate::error::{Error, IoContext, Result};

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
            check: StreamCheck::new(what, expected, None),
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

/// Produces `op`'s file at `out` (created or truncated). `source` is the old file the op reads
/// (checked against the op's old pin first); `member` is the archive member's bytes on disk.
/// `what` names the patch in errors.
pub fn produce(
    what: &str,
    op: &PatchOp,
    source: Option<&Path>,
    member: Option<&Path>,
    out: &Path,
) -> Result<()> {
    let file_what = format!("{what}: {}", op.path);
    if let (Some(src), Some(pin)) = (source, op.old) {
        let actual = formats::hash::pin_file(src)?;
        if actual != pin {
            return Err(Error::Verify {
                path: op.path.to_string(),
                reason: format!(
                    "source {} is not the version this patch was built for",
                    src.display()
                ),
            });
        }
    }
    let need_source = || {
        source.ok_or_else(|| Error::bad(&file_what, "op reads an old file that is not available"))
    };
    let need_member =
        || member.ok_or_else(|| Error::bad(&file_what, "archive member is missing"));
    let out_file = File::create(out).at(out)?;
    let mut w = CheckedWriter::new(BufWriter::with_capacity(1 << 16, out_file), &file_what, op.new);
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
        Encoding::ZstdRef { window_log, .. } => {
            let src = need_source()?;
            let m = need_member()?;
            let prefix = std::fs::read(src).at(src)?;
            let f = BufReader::new(File::open(m).at(m)?);
            let mut dec = zstd::stream::read::Decoder::with_ref_prefix(f, &prefix).map_err(bad_stream)?;
            dec.window_log_max(*window_log).map_err(bad_stream)?;
            let mut dec = LimitedReader::new(dec, op.new.size, &file_what);
            std::io::copy(&mut dec, &mut w).map_err(bad_stream)?;
        }
    }
    let mut inner = w.finish()?;
    inner.flush().at(out)?;
    inner
        .into_inner()
        .map_err(|e| Error::io(out, e.into_error()))?
        .sync_all()
        .at(out)?;
    Ok(())
}
