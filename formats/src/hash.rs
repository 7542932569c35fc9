//! Digests (BLAKE3 for our own pins, SHA-256 for TUF interoperability) and [`Pin`], the
//! signed size and hash of a byte string (docs/format.md §3).

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

macro_rules! digest_type {
    ($name:ident, $algo:literal) => {
        #[doc = concat!("A 32-byte ", $algo, " digest, written as lowercase hex.")]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lowercase hex form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                let mut out = [0u8; 32];
                if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(Error::invalid(
                        concat!($algo, " digest"),
                        format!("{s:?} is not 64 lowercase hex digits"),
                    ));
                }
                hex::decode_to_slice(s, &mut out).map_err(|e| {
                    Error::invalid(concat!($algo, " digest"), format!("{s:?}: {e}"))
                })?;
                Ok($name(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", $algo, self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_type!(Blake3, "blake3");
digest_type!(Sha256, "sha256");

impl Blake3 {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Blake3(*blake3::hash(data).as_bytes())
    }
}

impl Sha256 {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(data).into())
    }
}

/// The digest of `data` under a TUF hash algorithm name (`sha256`, `sha512`), lowercase hex;
/// `None` for an algorithm this implementation does not know.
pub fn tuf_digest_hex(algorithm: &str, data: &[u8]) -> Option<String> {
    use sha2::Digest;
    match algorithm {
        "sha256" => Some(hex::encode(sha2::Sha256::digest(data))),
        "sha512" => Some(hex::encode(sha2::Sha512::digest(data))),
        _ => None,
    }
}

/// Checks `data` against TUF `hashes` (algorithm name to hex digest): every listed digest must
/// match, at least one must be listed, and an algorithm this implementation does not know is
/// refused (it cannot be checked). `what` names the file in errors.
pub fn check_tuf_hashes(
    what: &str,
    data: &[u8],
    hashes: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    if hashes.is_empty() {
        return Err(Error::invalid(what, "lists no hashes"));
    }
    for (algorithm, expected) in hashes {
        let actual = tuf_digest_hex(algorithm, data).ok_or_else(|| {
            Error::invalid(
                what,
                format!("uses hash algorithm {algorithm:?}, which this client cannot check (sha256 and sha512 are supported)"),
            )
        })?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::HashMismatch {
                what: what.to_string(),
                algorithm: if algorithm == "sha256" {
                    "sha256"
                } else {
                    "sha512"
                },
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// The size and BLAKE3 digest that fix a byte string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Length in bytes.
    pub size: u64,
    /// BLAKE3 of the bytes.
    pub blake3: Blake3,
}

impl Pin {
    /// The pin of `data`.
    pub fn of(data: &[u8]) -> Self {
        Pin {
            size: data.len() as u64,
            blake3: Blake3::of(data),
        }
    }

    /// Checks `data` against this pin; `what` names the artifact in the error.
    pub fn check(&self, what: &str, data: &[u8]) -> Result<()> {
        if data.len() as u64 != self.size {
            return Err(Error::LengthMismatch {
                what: what.to_string(),
                expected: self.size,
                actual: data.len() as u64,
            });
        }
        let actual = Blake3::of(data);
        if actual != self.blake3 {
            return Err(Error::HashMismatch {
                what: what.to_string(),
                algorithm: "blake3",
                expected: self.blake3.to_hex(),
                actual: actual.to_hex(),
            });
        }
        Ok(())
    }
}

/// Read buffer of [`pin_file`]: one chunk per rayon task.
const PIN_CHUNK: usize = 1 << 20;

/// Hashes a file with BLAKE3 and returns its pin. The file is read with a bounded buffer (never
/// memory-mapped: mapped pages count in the process's resident set, so hashing a large file
/// would cost its size in RSS); each 1 MiB read is hashed on all cores.
pub fn pin_file(path: &Path) -> Result<Pin> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Small files get a buffer of their own size (+1 to see the end in one read).
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let buf_len = usize::try_from(len.saturating_add(1)).map_or(PIN_CHUNK, |n| n.min(PIN_CHUNK));
    hash_with_buffer(&mut f, buf_len).map_err(|e| Error::io(path, e))
}

/// Hashes everything `r` yields with BLAKE3 (1 MiB buffer) and returns its pin.
pub fn pin_reader<R: Read>(r: &mut R) -> std::io::Result<Pin> {
    hash_with_buffer(r, PIN_CHUNK)
}

/// A writer that passes bytes on to `inner` and hashes exactly the bytes `inner` took: the
/// [`Pin`] of everything written, without reading it again.
pub struct PinningWriter<W: std::io::Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: std::io::Write> PinningWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        PinningWriter {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }

    /// The pin (size and BLAKE3) of what was written so far.
    pub fn pin(&self) -> Pin {
        Pin {
            size: self.hasher.count(),
            blake3: Blake3(*self.hasher.finalize().as_bytes()),
        }
    }

    /// The wrapped writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The wrapped writer, giving up the hash.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for PinningWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads from `r` until `buf` is full or the input ends (retrying interrupted reads); the
/// number of bytes read.
pub fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn hash_with_buffer<R: Read>(r: &mut R, buf_len: usize) -> std::io::Result<Pin> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; buf_len.max(1)];
    loop {
        let filled = read_full(r, &mut buf)?;
        if filled == 0 {
            break;
        }
        if filled >= 128 << 10 {
            hasher.update_rayon(&buf[..filled]);
        } else {
            hasher.update(&buf[..filled]);
        }
        if filled < buf.len() {
            break;
        }
    }
    Ok(Pin {
        size: hasher.count(),
        blake3: Blake3(*hasher.finalize().as_bytes()),
    })
}

/// What a downloaded byte stream must be: its exact length and the digests it must have. Our
/// artifacts carry a BLAKE3 [`Pin`] (and the SHA-256 TUF lists); a plain TUF target, which no
/// pin of ours covers, is checked by the hashes its targets metadata lists (`sha256`,
/// `sha512`). At least one digest is always present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Length in bytes.
    pub size: u64,
    /// BLAKE3 (our pin), when there is one.
    pub blake3: Option<Blake3>,
    /// SHA-256, when the artifact is a TUF target listing one.
    pub sha256: Option<Sha256>,
    /// SHA-512, when the artifact is a TUF target listing one.
    pub sha512: Option<[u8; 64]>,
}

impl Expected {
    /// Our artifact: `pin`, and the SHA-256 its TUF entry lists when there is one.
    pub fn pinned(pin: Pin, sha256: Option<Sha256>) -> Self {
        Expected {
            size: pin.size,
            blake3: Some(pin.blake3),
            sha256,
            sha512: None,
        }
    }

    /// A plain TUF target: `size` and the `hashes` its metadata lists (algorithm name to hex).
    /// An unknown algorithm or a malformed digest is refused, like [`check_tuf_hashes`] does,
    /// and so is an empty list; `what` names the target in errors.
    pub fn of_tuf(
        what: &str,
        size: u64,
        hashes: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
        if hashes.is_empty() {
            return Err(Error::invalid(what, "lists no hashes"));
        }
        let mut out = Expected {
            size,
            blake3: None,
            sha256: None,
            sha512: None,
        };
        for (algorithm, digest) in hashes {
            let bad =
                |e: String| Error::invalid(what, format!("{algorithm} digest {digest:?}: {e}"));
            let digest = digest.to_ascii_lowercase();
            match algorithm.as_str() {
                "sha256" => out.sha256 = Some(digest.parse().map_err(|e: Error| bad(e.to_string()))?),
                "sha512" => {
                    let mut b = [0u8; 64];
                    hex::decode_to_slice(&digest, &mut b).map_err(|e| bad(e.to_string()))?;
                    out.sha512 = Some(b);
                }
                _ => {
                    return Err(Error::invalid(
                        what,
                        format!("uses hash algorithm {algorithm:?}, which this client cannot check (sha256 and sha512 are supported)"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The BLAKE3 pin, for our own artifacts.
    pub fn pin(&self) -> Option<Pin> {
        self.blake3.map(|blake3| Pin {
            size: self.size,
            blake3,
        })
    }

    /// A file name for the artifact in a download cache: its strongest digest in hex
    /// (the BLAKE3 alone for our artifacts, as before).
    pub fn cache_name(&self) -> String {
        match (&self.blake3, &self.sha512, &self.sha256) {
            (Some(b), _, _) => b.to_hex(),
            (None, Some(s), _) => format!("sha512-{}", hex::encode(s)),
            (None, None, Some(s)) => format!("sha256-{}", s.to_hex()),
            (None, None, None) => format!("size-{}", self.size),
        }
    }

    /// Whether the file at `path` is exactly this artifact (read with a bounded buffer).
    pub fn matches_file(&self, path: &Path) -> bool {
        if let Some(pin) = self.pin() {
            return pin_file(path).ok() == Some(pin);
        }
        let Ok(mut f) = std::fs::File::open(path) else {
            return false;
        };
        let mut check = StreamCheck::new(path.display().to_string(), self);
        let mut buf = vec![0u8; PIN_CHUNK];
        loop {
            match read_full(&mut f, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if check.update(&buf[..n]).is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        check.finish().is_ok()
    }
}

impl From<Pin> for Expected {
    fn from(pin: Pin) -> Self {
        Expected::pinned(pin, None)
    }
}

/// Incremental checker for a byte stream that must be an [`Expected`] artifact: refuses the
/// first byte past the signed size, so an endless stream is cut off, and checks every digest
/// the expectation names at the end.
pub struct StreamCheck {
    what: String,
    size: u64,
    blake3: Option<(Blake3, blake3::Hasher)>,
    sha256: Option<(Sha256, sha2::Sha256)>,
    sha512: Option<([u8; 64], sha2::Sha512)>,
    seen: u64,
}

impl StreamCheck {
    /// A checker for `expected`; `what` names the artifact in errors.
    pub fn new(what: impl Into<String>, expected: &Expected) -> Self {
        use sha2::Digest;
        StreamCheck {
            what: what.into(),
            size: expected.size,
            blake3: expected.blake3.map(|b| (b, blake3::Hasher::new())),
            sha256: expected.sha256.map(|s| (s, sha2::Sha256::new())),
            sha512: expected.sha512.map(|s| (s, sha2::Sha512::new())),
            seen: 0,
        }
    }

    /// Feeds bytes; fails as soon as more than the signed size has been seen.
    pub fn update(&mut self, data: &[u8]) -> Result<()> {
        use sha2::Digest;
        self.seen += data.len() as u64;
        if self.seen > self.size {
            return Err(Error::TooLarge {
                what: self.what.clone(),
                limit: self.size,
                actual: self.seen,
            });
        }
        if let Some((_, h)) = &mut self.blake3 {
            h.update(data);
        }
        if let Some((_, h)) = &mut self.sha256 {
            h.update(data);
        }
        if let Some((_, h)) = &mut self.sha512 {
            h.update(data);
        }
        Ok(())
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Checks the final length and digests.
    pub fn finish(self) -> Result<()> {
        use sha2::Digest;
        if self.seen != self.size {
            return Err(Error::LengthMismatch {
                what: self.what,
                expected: self.size,
                actual: self.seen,
            });
        }
        let what = &self.what;
        let mismatch = |algorithm: &'static str, expected: String, actual: String| {
            Err(Error::HashMismatch {
                what: what.clone(),
                algorithm,
                expected,
                actual,
            })
        };
        if let Some((expected, h)) = self.blake3 {
            let actual = Blake3(*h.finalize().as_bytes());
            if actual != expected {
                return mismatch("blake3", expected.to_hex(), actual.to_hex());
            }
        }
        if let Some((expected, h)) = self.sha256 {
            let actual = Sha256(h.finalize().into());
            if actual != expected {
                return mismatch("sha256", expected.to_hex(), actual.to_hex());
            }
        }
        if let Some((expected, h)) = self.sha512 {
            let actual: [u8; 64] = h.finalize().into();
            if actual != expected {
                return mismatch("sha512", hex::encode(expected), hex::encode(actual));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_reader_matches_pin_of_across_buffer_sizes() {
        for len in [
            0usize,
            1,
            1000,
            PIN_CHUNK - 1,
            PIN_CHUNK,
            PIN_CHUNK + 1,
            3 * PIN_CHUNK + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let got = pin_reader(&mut data.as_slice()).unwrap();
            assert_eq!(got, Pin::of(&data), "length {len}");
        }
    }

    #[test]
    fn hex_round_trip_and_refusals() {
        let h = Blake3::of(b"abc");
        assert_eq!(h.to_hex().parse::<Blake3>().unwrap(), h);
        assert!("zz".parse::<Blake3>().is_err());
        assert!(h.to_hex().to_uppercase().parse::<Blake3>().is_err());
    }

    #[test]
    fn stream_check_refuses_extra_and_missing_bytes() {
        let pin = Pin::of(b"hello");
        let both = Expected::pinned(pin, Some(Sha256::of(b"hello")));
        let mut c = StreamCheck::new("x", &both);
        c.update(b"hel").unwrap();
        c.update(b"lo").unwrap();
        c.finish().unwrap();
        let mut c = StreamCheck::new("x", &pin.into());
        assert!(c.update(b"hello!").is_err());
        let mut c = StreamCheck::new("x", &pin.into());
        c.update(b"hell").unwrap();
        assert!(c.finish().is_err());
        let mut c = StreamCheck::new("x", &Expected::pinned(pin, Some(Sha256::of(b"other"))));
        c.update(b"hello").unwrap();
        assert!(c.finish().is_err());
    }

    #[test]
    fn plain_tuf_targets_are_checked_by_their_listed_hashes() {
        use sha2::Digest;
        let data = b"a plain TUF target";
        let mut hashes = std::collections::BTreeMap::new();
        hashes.insert(
            "sha512".to_string(),
            hex::encode(sha2::Sha512::digest(data)),
        );
        let only512 = Expected::of_tuf("t", data.len() as u64, &hashes).unwrap();
        assert_eq!(only512.pin(), None);
        assert!(only512.cache_name().starts_with("sha512-"));
        let mut c = StreamCheck::new("t", &only512);
        c.update(data).unwrap();
        c.finish().unwrap();
        let mut c = StreamCheck::new("t", &only512);
        c.update(b"a plain TUF targeT").unwrap();
        let e = c.finish().unwrap_err().to_string();
        assert!(e.contains("sha512"), "{e}");
        // Upper-case hex is accepted (python-tuf compares case-insensitively too).
        hashes.insert("sha256".into(), Sha256::of(data).to_hex().to_uppercase());
        let both = Expected::of_tuf("t", data.len() as u64, &hashes).unwrap();
        assert_eq!(both.sha256, Some(Sha256::of(data)));
        hashes.insert("md5".into(), "00".into());
        let e = Expected::of_tuf("t", 1, &hashes).unwrap_err().to_string();
        assert!(e.contains("md5"), "{e}");
        let e = Expected::of_tuf("t", 1, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no hashes"), "{e}");
        let mut bad = std::collections::BTreeMap::new();
        bad.insert("sha256".to_string(), "xyz".to_string());
        assert!(Expected::of_tuf("t", 1, &bad).is_err());
    }
}
