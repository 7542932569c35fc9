//! Serializing split-diff streams into a member (docs/format.md §6.2.3): the control stream,
//! the diff stream as (zero run, value) pairs and the extra bytes, each compressed with
//! whichever of zstd and raw LZMA2 is smaller. LZMA2 is only tried on streams of at most
//! [`LZMA_MAX_INPUT`] bytes, so its slower decoding stays a small part of any apply.

use std::io::Write;

use formats::split_diff::{StreamCodec, LZMA_MIN_DICT_LOG};
use liblzma::stream::{Filters, LzmaOptions, MatchFinder, Mode, Stream};

use crate::diff::compress::{compress_window, MAX_MEMBER_WINDOW_LOG};
use crate::diff::streams::{put_varint, SplitStreams};
use crate::error::{Error, Result};

/// Largest stream compressed with LZMA2 as well as zstd.
pub const LZMA_MAX_INPUT: usize = 4 << 20;
/// Largest LZMA2 dictionary the creator uses (1 MiB: the streams are small, and the client
/// allocates the dictionary).
const LZMA_MAX_DICT_LOG: u8 = 20;

/// A member from its three streams, each empty or already tagged: three varint lengths, then
/// the streams.
pub fn frame_member(parts: &[Vec<u8>; 3]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum::<usize>() + 30);
    for p in parts {
        put_varint(&mut out, p.len() as u64);
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// LZMA2 literal coding per stream: (literal context bits, position bits). Control varints and
/// pairs have no alignment; extra bytes are mostly code and data with 4-byte structure.
#[derive(Clone, Copy)]
enum Kind {
    Ctrl,
    Pairs,
    Extra,
}

fn lzma_err(e: impl std::fmt::Display) -> Error {
    Error::io("<lzma2>", std::io::Error::other(e.to_string()))
}

/// Raw LZMA2 of `data` with a dictionary just large enough for it; the first byte is the tag.
fn lzma2(data: &[u8], kind: Kind) -> Result<Vec<u8>> {
    let mut dict_log = LZMA_MIN_DICT_LOG;
    while dict_log < LZMA_MAX_DICT_LOG && (1usize << dict_log) < data.len() {
        dict_log += 1;
    }
    let (lc, pb) = match kind {
        Kind::Ctrl => (1, 0),
        Kind::Pairs => (2, 0),
        Kind::Extra => (3, 2),
    };
    // Preset 6 "extreme" with nice length 128: on the corpus binaries both smaller and faster
    // than 273 (esbuild 207,390 -> 207,148 B, numpy 57,504 -> 57,384 B) and than 64.
    let mut opts =
        LzmaOptions::new_preset(6 | liblzma::stream::PRESET_EXTREME).map_err(lzma_err)?;
    opts.dict_size(1 << dict_log)
        .literal_context_bits(lc)
        .literal_position_bits(0)
        .position_bits(pb)
        .nice_len(128)
        .mode(Mode::Normal)
        .match_finder(MatchFinder::BinaryTree4);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let stream = Stream::new_raw_encoder(&filters).map_err(lzma_err)?;
    let mut out = vec![StreamCodec::Lzma2 { dict_log }.tag()];
    let mut w = liblzma::write::XzEncoder::new_stream(&mut out, stream);
    w.write_all(data).map_err(lzma_err)?;
    w.finish().map_err(lzma_err)?;
    Ok(out)
}

/// The smaller of the stream's zstd (`level`, window ≤ `max_window_log`) and LZMA2 encodings,
/// tag byte first; empty for an empty stream.
fn pack_stream(data: &[u8], kind: Kind, level: i32, max_window_log: u32) -> Result<Vec<u8>> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let zstd = || -> Result<Vec<u8>> {
        let mut out = vec![StreamCodec::Zstd.tag()];
        out.extend(compress_window(data, level, max_window_log)?);
        Ok(out)
    };
    if data.len() > LZMA_MAX_INPUT {
        return zstd();
    }
    let (z, x) = rayon::join(zstd, || lzma2(data, kind));
    let (z, x) = (z?, x?);
    Ok(if x.len() < z.len() { x } else { z })
}

/// Serializes split streams into a member: three varint lengths, then the three streams.
pub fn pack_split(s: &SplitStreams, level: i32) -> Result<Vec<u8>> {
    let strong = (level.max(19) + 3).min(22);
    let (c, (p, e)) = rayon::join(
        || pack_stream(&s.ctrl, Kind::Ctrl, strong, 22),
        || {
            rayon::join(
                || pack_stream(&s.pairs, Kind::Pairs, strong, 22),
                || pack_stream(&s.extra, Kind::Extra, strong, MAX_MEMBER_WINDOW_LOG),
            )
        },
    );
    Ok(frame_member(&[c?, p?, e?]))
}
