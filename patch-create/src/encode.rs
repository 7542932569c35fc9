//! Choosing the smallest encoding of each changed file (docs/format.md §6.3): a bidiff stream
//! compressed with zstd, the new file compressed with the old one as a zstd reference prefix,
//! or the whole new file compressed.

use std::io::Write;

use crate::error::{Error, Result};

/// Settings of the encoders.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// zstd level for patch members.
    pub level: i32,
    /// Also try zstd with the old file as reference prefix.
    pub try_zstd_ref: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            level: 19,
            try_zstd_ref: true,
        }
    }
}

/// How a changed file was encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// zstd(bidiff stream).
    Bidiff,
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

/// Compresses `data` with zstd at `level` (long-distance matching for large inputs).
pub fn compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(data.len() / 3 + 64), level)
        .map_err(zerr)?;
    enc.set_pledged_src_size(Some(data.len() as u64)).map_err(zerr)?;
    enc.include_checksum(false).map_err(zerr)?;
    if data.len() > 8 << 20 {
        enc.long_distance_matching(true).map_err(zerr)?;
        enc.window_log(window_log_for(data.len() as u64)).map_err(zerr)?;
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
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, old).map_err(zerr)?;
    enc.set_pledged_src_size(Some(new.len() as u64)).map_err(zerr)?;
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

/// Encodes `new` against `old`, returning the smallest candidate.
pub fn encode_change(old: &[u8], new: &[u8], opts: &EncodeOptions) -> Result<Encoded> {
    let full = compress(new, opts.level)?;
    let mut best = Encoded {
        chosen: Chosen::Full,
        bytes: full,
    };
    if !old.is_empty() && !new.is_empty() {
        let raw = bidiff_raw(old, new)?;
        let bd = compress(&raw, opts.level)?;
        if bd.len() < best.bytes.len() {
            best = Encoded {
                chosen: Chosen::Bidiff,
                bytes: bd,
            };
        }
        if opts.try_zstd_ref {
            let (zr, window_log) = compress_with_ref(old, new, opts.level)?;
            if zr.len() < best.bytes.len() {
                best = Encoded {
                    chosen: Chosen::ZstdRef { window_log },
                    bytes: zr,
                };
            }
        }
    }
    Ok(best)
}
