//! Shared definitions of the `split-diff` encoding (docs/format.md §6.2.3): the carry
//! prediction of the diff bytes and the tag that says how each stream is compressed.

/// Tag byte of a zstd-compressed stream.
pub const TAG_ZSTD: u8 = 0;
/// Smallest dictionary log of an LZMA2 stream (its tag is the log itself).
pub const LZMA_MIN_DICT_LOG: u8 = 12;
/// Largest dictionary log a reader accepts (16 MiB: the client's memory bound per stream).
pub const LZMA_MAX_DICT_LOG: u8 = 24;

/// How one stream of a split-diff member is compressed, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamCodec {
    /// One zstd frame follows.
    Zstd,
    /// A raw LZMA2 stream (no .xz container) follows, with a dictionary of `2^dict_log` bytes.
    Lzma2 {
        /// log2 of the dictionary size.
        dict_log: u8,
    },
}

impl StreamCodec {
    /// The codec a tag byte names, or `None` for a tag the format does not define.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            TAG_ZSTD => Some(StreamCodec::Zstd),
            LZMA_MIN_DICT_LOG..=LZMA_MAX_DICT_LOG => Some(StreamCodec::Lzma2 { dict_log: tag }),
            _ => None,
        }
    }

    /// The tag byte of this codec.
    pub fn tag(self) -> u8 {
        match self {
            StreamCodec::Zstd => TAG_ZSTD,
            StreamCodec::Lzma2 { dict_log } => dict_log,
        }
    }
}

/// Appends `v` as an unsigned LEB128 varint (the varints of split-diff streams, of the
/// `exe-project-diff` map and of member headers).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 varint at `b[*at..]`, advancing `at`. An error when it runs out
/// or does not fit in 64 bits (at most 10 bytes, the 10th at most 1).
pub fn read_varint(b: &[u8], at: &mut usize) -> Result<u64, &'static str> {
    let (mut v, mut shift) = (0u64, 0u32);
    loop {
        let byte = *b.get(*at).ok_or("truncated varint")?;
        *at += 1;
        if shift >= 64 || (shift == 63 && byte > 1) {
            return Err("varint overflows 64 bits");
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

/// Maps a signed seek to the unsigned value its control varint holds: `(s << 1) ^ (s >> 63)`.
pub fn zigzag(s: i64) -> u64 {
    ((s << 1) ^ (s >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// The carry predicted into the next byte of an add run after old byte `o` became new byte
/// `n`: +1 when the byte difference is small and positive (below 0x80) but wrapped (`n < o`),
/// −1 (0xFF) when it is negative (0x80 or more) but borrowed (`n > o`), else 0. A little-endian
/// number moved by a small amount (a pointer, a relative branch) then leaves a single non-zero
/// diff byte instead of a chain of carries.
#[inline]
pub fn carry(n: u8, o: u8) -> u8 {
    let d = n.wrapping_sub(o);
    if d != 0 && d < 0x80 && n < o {
        1
    } else if d >= 0x80 && n > o {
        0xFF
    } else {
        0
    }
}

/// Diff bytes of one add run: `diff[i] = new[i] − old[i] − carry(new[i−1], old[i−1])`, with no
/// carry into the first byte. Appends to `out`.
pub fn encode_run(new: &[u8], old: &[u8], out: &mut Vec<u8>) {
    let mut c = 0u8;
    out.extend(new.iter().zip(old).map(|(&n, &o)| {
        let d = n.wrapping_sub(o).wrapping_sub(c);
        c = carry(n, o);
        d
    }));
}

/// Inverse of [`encode_run`] for a run continued in pieces: turns the diff bytes in `buf` into
/// new bytes in place, given the old bytes, and carries `c` (0 at the start of a run) across
/// calls. Zero diff bytes with no carry pending (most of a typical diff) are copied from `old`
/// in bulk.
pub fn decode_run(buf: &mut [u8], old: &[u8], c: &mut u8) {
    let n = buf.len().min(old.len());
    let mut i = 0;
    while i < n {
        if *c == 0 {
            // A zero diff byte without carry leaves the old byte and predicts no carry.
            let zeros = buf[i..n].iter().position(|&d| d != 0).unwrap_or(n - i);
            buf[i..i + zeros].copy_from_slice(&old[i..i + zeros]);
            i += zeros;
            if i == n {
                break;
            }
        }
        let o = old[i];
        let v = o.wrapping_add(buf[i]).wrapping_add(*c);
        *c = carry(v, o);
        buf[i] = v;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_little_endian_number_leaves_one_diff_byte() {
        // 0x0000_10F0 + 0x20 = 0x0000_1110: plain subtraction gives two non-zero bytes.
        let old = 0x0000_10F0u32.to_le_bytes();
        let new = 0x0000_1110u32.to_le_bytes();
        let mut d = Vec::new();
        encode_run(&new, &old, &mut d);
        assert_eq!(d, [0x20, 0, 0, 0]);
        // And back, in two pieces.
        let mut c = 0;
        let (a, b) = d.split_at_mut(1);
        decode_run(a, &old[..1], &mut c);
        decode_run(b, &old[1..], &mut c);
        assert_eq!(d, new);
    }

    #[test]
    fn runs_round_trip_on_every_byte_pair() {
        let old: Vec<u8> = (0..=255u8).flat_map(|a| [a; 256]).collect();
        let new: Vec<u8> = (0..=255u8).flat_map(|_| 0..=255u8).collect();
        let mut d = Vec::new();
        encode_run(&new, &old, &mut d);
        let mut c = 0;
        decode_run(&mut d, &old, &mut c);
        assert_eq!(d, new);
    }

    #[test]
    fn decoding_in_pieces_matches_encoding_on_sparse_changes() {
        // Mostly equal bytes with scattered small changes, decoded in uneven pieces.
        let old: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut new = old.clone();
        for i in (0..new.len()).step_by(37) {
            new[i] = new[i].wrapping_add((i % 251) as u8);
        }
        let mut d = Vec::new();
        encode_run(&new, &old, &mut d);
        let mut c = 0;
        let mut at = 0;
        for piece in [1, 0, 7, 300, 1000, 4000] {
            let end = (at + piece).min(d.len());
            decode_run(&mut d[at..end], &old[at..end], &mut c);
            at = end;
        }
        assert_eq!(d, new);
    }

    #[test]
    fn varints_round_trip_and_bad_ones_are_refused() {
        let values = [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX];
        let mut buf = Vec::new();
        for v in values {
            put_varint(&mut buf, v);
        }
        let mut at = 0;
        for v in values {
            assert_eq!(read_varint(&buf, &mut at), Ok(v));
        }
        assert_eq!(at, buf.len());
        assert_eq!(read_varint(&buf, &mut at), Err("truncated varint"));
        // u64::MAX takes 10 bytes, the last 1; a 10th byte of 2 or an 11th byte overflow.
        let mut at = 0;
        let mut too_big = vec![0xFF; 9];
        too_big.push(2);
        assert_eq!(
            read_varint(&too_big, &mut at),
            Err("varint overflows 64 bits")
        );
        let mut at = 0;
        assert_eq!(
            read_varint(&[0x80; 11], &mut at),
            Err("varint overflows 64 bits")
        );
        let mut at = 0;
        assert_eq!(read_varint(&[0x80, 0x80], &mut at), Err("truncated varint"));
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
    }

    #[test]
    fn tags() {
        assert_eq!(StreamCodec::from_tag(0), Some(StreamCodec::Zstd));
        assert_eq!(
            StreamCodec::from_tag(20),
            Some(StreamCodec::Lzma2 { dict_log: 20 })
        );
        for t in [1, 11, 25, 255] {
            assert_eq!(StreamCodec::from_tag(t), None);
        }
        assert_eq!(StreamCodec::Lzma2 { dict_log: 13 }.tag(), 13);
    }
}
