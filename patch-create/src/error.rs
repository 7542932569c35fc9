//! The crate's error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can make a release, a verification or a key operation fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A format, signature or limit check failed.
    #[error(transparent)]
    Format(#[from] formats::Error),
    /// Reading or applying an artifact failed (shared code with the updater).
    #[error(transparent)]
    Apply(#[from] patch_apply::Error),
    /// An I/O error with its path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The release tree is unusable.
    #[error("release tree {}: {reason}", path.display())]
    Tree {
        /// The tree's root.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The repository refuses the operation (version not increasing, wrong key, wrong app...).
    #[error("repository {}: {reason}", path.display())]
    Repo {
        /// The repository.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Building the suffix array of an old file failed.
    #[error("suffix sorting {len} bytes failed: {source}")]
    SuffixSort {
        /// The length of the text.
        len: usize,
        /// libsais's error.
        source: libsais::LibsaisError,
    },
    /// Publishing refused or failed at an object of the destination (`publish`).
    #[error("{what}: {reason}")]
    Publish {
        /// The destination URL, with the object's key when one is at fault.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An object store call failed (`publish`).
    #[error("{what}: {source}")]
    Store {
        /// The operation and the object's URL.
        what: String,
        /// The store client's error.
        source: object_store::Error,
    },
    /// `verify` found problems; each names the artifact.
    #[error("verification failed with {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
    VerifyFailed(Vec<String>),
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds a path to `std::io::Result`s.
pub trait IoContext<T> {
    /// Maps the error to [`Error::Io`] with `path`.
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
