//! The crate's error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can make an update fail. Each variant names the file, URL or version at
/// fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Repository data failed a format, signature, pin or limit check.
    #[error(transparent)]
    Format(#[from] formats::Error),
    /// An I/O error on a local file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A download failed.
    #[error("{url}: {reason}")]
    Fetch {
        /// What was being fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The file is not in the repository (HTTP 404 or a missing file).
    #[error("{url}: not found")]
    NotFound {
        /// What was being fetched.
        url: String,
    },
    /// An archive or diff stream is malformed or hostile.
    #[error("{artifact}: {reason}")]
    BadArtifact {
        /// The artifact (and member) at fault.
        artifact: String,
        /// What is wrong.
        reason: String,
    },
    /// A produced file does not have the signed content.
    #[error("{path}: produced content does not match the release ({reason})")]
    Verify {
        /// The file.
        path: String,
        /// What differs.
        reason: String,
    },
    /// The update cannot start: not enough disk space, no write permission, app running,
    /// maintenance, another update in progress.
    #[error("{0}")]
    Precondition(String),
    /// No release is available for this client (channel or targeting), or the repository
    /// belongs to another app, or a downgrade was refused.
    #[error("{0}")]
    Refused(String),
    /// Every method was tried and failed; each failure is listed.
    #[error("every update method failed: {0}")]
    AllMethodsFailed(String),
    /// A repository location that is neither an `http(s)://` URL, a `file://` URL nor a path.
    #[error("repository {location:?}: {reason}")]
    BadLocation {
        /// The location as given.
        location: String,
        /// Why it is refused, and what was probably meant.
        reason: String,
    },
    /// The app cancelled the update through its [`crate::Cancel`] token; the app dir keeps
    /// the version it had and downloads stay in the cache for the next attempt.
    #[error("the update was cancelled; the app dir keeps the version it had")]
    Cancelled,
    /// The repository offers older metadata than the app dir already trusts: a rollback attack,
    /// or a repository that was re-created, or another app's repository signed with the same
    /// key. Refused; the way out is a deliberate [`crate::trust::reset`].
    #[error(
        "{repo}: {refusal}: {app_dir} already trusts newer metadata signed by this key (stored in \
         {trust_dir}); refused because a rollback attack looks like this, but so does a \
         re-created repository, another app's repository signed with the same key, or a cache \
         in front of the repository that still serves older metadata (then it passes once the \
         cache has the new files: try again later); if you trust this repository, forget the stored trust with \
         `patch-apply trust reset --app-dir {app_dir}` and run again",
        app_dir = app_dir.display(),
        trust_dir = trust_dir.display()
    )]
    StuckTrust {
        /// The repository (its mirrors, comma-separated).
        repo: String,
        /// The app directory.
        app_dir: PathBuf,
        /// Where the trusted metadata is stored (`APP/.patchkit/trust`).
        trust_dir: PathBuf,
        /// The rollback check that failed (part of the message, not a separate cause).
        refusal: Box<formats::Error>,
    },
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::BadArtifact`].
    pub fn bad(artifact: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArtifact {
            artifact: artifact.into(),
            reason: reason.into(),
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

/// Maps the executor's errors to this crate's, keeping the path of I/O errors.
pub(crate) fn txn_error(e: self_patcher::Error) -> Error {
    match e {
        self_patcher::Error::Io { path, source } => Error::Io { path, source },
        self_patcher::Error::Locked { .. }
        | self_patcher::Error::Precondition(_)
        | self_patcher::Error::Incomplete { .. } => Error::Precondition(e.to_string()),
        other => Error::bad("update transaction", other.to_string()),
    }
}
