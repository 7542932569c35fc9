//! The crate's error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can make a transaction or a plan fail. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A journal, progress record or plan that cannot be read.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A staged file disappeared before it was moved into place.
    #[error("{}: staged file {} disappeared before it was moved into place", target.display(), staged.display())]
    StagedMissing {
        /// The file that was to be replaced.
        target: PathBuf,
        /// The staged file.
        staged: PathBuf,
    },
    /// Another process holds the update lock.
    #[error("another update is running on this app dir (pid {owner}, lock {})", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The PID written by the owner.
        owner: String,
    },
    /// The transaction cannot go on (nothing to roll back, a plan already rolled back, a
    /// process that does not exit).
    #[error("{0}")]
    Precondition(String),
    /// Undoing a transaction (a rollback, a recovery) could not undo some steps: each path
    /// named stays at the new version, every other path is back at the old one, and the
    /// journal is kept so that running it again finishes the job.
    #[error("{what} is incomplete: {}; every other path is back at {restored}; {hint}", failed.join("; "))]
    Incomplete {
        /// What was being undone.
        what: String,
        /// Each path left at the new version, with the reason.
        failed: Vec<String>,
        /// The version every other path is back at.
        restored: String,
        /// What the user can do.
        hint: String,
    },
    /// A step failed and undoing the steps done before it failed too: the journal is kept so
    /// that `recover` can finish the rollback.
    #[error("{first}; rolling back failed too: {undo}; run `patch-apply recover`")]
    UndoFailed {
        /// The error that stopped the transaction.
        first: Box<Error>,
        /// The error that stopped the rollback.
        undo: Box<Error>,
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
