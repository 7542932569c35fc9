//! zstd settings shared by every writer of compressed bytes: window sizes that clients can
//! decode within their limits, and match-finder tables capped for large inputs.

use std::io::Write;

use crate::error::{Error, Result};

/// Largest window log of zstd frames in patch members and repair files: a client decoding them
/// never needs more than a 16 MiB window per frame.
pub const MAX_MEMBER_WINDOW_LOG: u32 = 24;

pub(crate) fn zerr(e: std::io::Error) -> Error {
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

/// Caps the match-finder tables of a zstd encoder at `level` ≥ 16 (the binary-tree strategies)
/// whose window is at most `2^window_log`: chain table `2^(window_log - 2)` entries, at most
/// 2^24, and hash table `2^(window_log - 3)`, at most 2^22 (level 19's own). On the 10 MB
/// esbuild binary at level 19 (zstd CLI, `--zstd=clog=22,hlog=21`): encoder memory 100 → 43
/// MB, 17 % faster, output +0.13 %. Used for repair files, whole-file members and the
/// installer, whose inputs are whole files and trees.
pub fn cap_tables<W: Write>(
    enc: &mut zstd::stream::write::Encoder<'_, W>,
    level: i32,
    window_log: u32,
) -> Result<()> {
    use zstd::stream::raw::CParameter;
    if level < 16 {
        return Ok(());
    }
    let chain = window_log.saturating_sub(2).clamp(16, 24);
    let hash = window_log.saturating_sub(3).clamp(16, 22);
    enc.set_parameter(CParameter::ChainLog(chain))
        .map_err(zerr)?;
    enc.set_parameter(CParameter::HashLog(hash)).map_err(zerr)?;
    Ok(())
}

/// The smallest window log covering `n` bytes (between 10 and 31).
pub fn window_log_for(n: u64) -> u32 {
    let mut log = 10;
    while log < 31 && (1u64 << log) < n {
        log += 1;
    }
    log
}
