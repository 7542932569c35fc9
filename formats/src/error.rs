//! The crate's error type: one enum with structured variants.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while parsing, checking or signing repository formats.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A path inside a release tree is not acceptable.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// The offending path, lossily printed.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A JSON document could not be parsed or does not have the expected shape.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// What was being parsed (a file name or role).
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A document is well-formed JSON but breaks a rule of the format.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being checked.
        what: String,
        /// The rule that was broken.
        reason: String,
    },
    /// Fewer valid signatures than the role's threshold.
    #[error("{what}: {valid} valid signature(s) from {role} keys, threshold is {threshold}")]
    ThresholdNotMet {
        /// The document.
        what: String,
        /// The role whose keys were counted.
        role: String,
        /// Distinct keys with a valid signature.
        valid: usize,
        /// Signatures required.
        threshold: u32,
    },
    /// Metadata whose expiry lies in the past (a freeze attack or a stale repository).
    #[error("{what}: metadata expired at {expires}")]
    Expired {
        /// The document.
        what: String,
        /// Its expiry date.
        expires: String,
    },
    /// Metadata whose version is lower than one already trusted (a rollback attack).
    #[error("{what}: version {offered} is older than trusted version {trusted}")]
    Rollback {
        /// The document.
        what: String,
        /// The version already trusted.
        trusted: u64,
        /// The version offered.
        offered: u64,
    },
    /// Bytes whose length differs from the signed length.
    #[error("{what}: length {actual} differs from signed length {expected}")]
    LengthMismatch {
        /// The artifact.
        what: String,
        /// Signed length.
        expected: u64,
        /// Observed length.
        actual: u64,
    },
    /// Bytes whose digest differs from the signed digest.
    #[error("{what}: {algorithm} {actual} differs from signed {expected}")]
    HashMismatch {
        /// The artifact.
        what: String,
        /// `blake3` or `sha256`.
        algorithm: &'static str,
        /// Signed digest (hex).
        expected: String,
        /// Observed digest (hex).
        actual: String,
    },
    /// An input exceeds a bound of [`crate::limits::Limits`].
    #[error("{what}: {actual} exceeds the limit of {limit}")]
    TooLarge {
        /// What was measured.
        what: String,
        /// The bound.
        limit: u64,
        /// The measured value.
        actual: u64,
    },
    /// A binary artifact does not start with the expected magic, or has an unknown format version.
    #[error("{what}: {reason}")]
    BadContainer {
        /// The artifact.
        what: String,
        /// What is wrong with its header.
        reason: String,
    },
    /// A key file or key material is unusable.
    #[error("key {what}: {reason}")]
    Key {
        /// The key file or key id.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A version string is not semver.
    #[error("version {value:?} is not a semantic version: {reason}")]
    BadVersion {
        /// The offending string.
        value: String,
        /// The parser's reason.
        reason: String,
    },
    /// A glob pattern does not parse.
    #[error("pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// The parser's reason.
        reason: String,
    },
    /// An I/O error, with the path it concerns.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// An error and its causes on one line, `outer: cause: cause`, leaving out a cause whose text
/// the message before it already ends with (error types that print their source *and* return it
/// from `source()` would otherwise say it twice). The one place the binaries turn an error
/// chain into the line they print.
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.ends_with(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    use super::chain_text;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Outer {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_printed_is_not_repeated() {
        let e = Outer {
            path: "release.key".into(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists"),
        };
        assert_eq!(chain_text(&e), "release.key: exists");
        let io = std::io::Error::other(e);
        assert_eq!(chain_text(&io), "release.key: exists");
    }
}
