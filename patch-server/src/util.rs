//! Small helpers every module uses: the clock, random ids and tokens, hashes.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let t = OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `ms` (unix milliseconds) as RFC 3339 UTC, whole seconds.
pub fn rfc3339(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    formats::time_util::format_tuf(t)
}

/// `bytes` random bytes from the operating system, hex.
///
/// # Panics
/// If the operating system has no random source (nothing sensible can run then).
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut b).expect("operating system random source");
    hex::encode(b)
}

/// A new device or admin token: 256 random bits, hex.
pub fn new_token() -> String {
    random_hex(32)
}

/// A new object id (commands, uploads, check-ins): 128 random bits, hex.
pub fn new_id() -> String {
    random_hex(16)
}

/// SHA-256 of `s`, hex: how tokens and secrets are stored.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compares two strings in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// BLAKE3 of the compact JSON of `v`, hex: the state document's digest.
pub fn state_digest(v: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    blake3::hash(&bytes).to_hex().to_string()
}
