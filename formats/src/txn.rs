//! The app directory's transaction records (docs/format.md §8): the journal of an update being
//! moved into place, the install record, and the names of the files in the state directory.
//!
//! These are plain data types. Carrying out a journal (renames, `mkdir`, `rmdir`) is the job
//! of the `self-patcher` crate's library, used by both `patch-apply` and the `self-patcher`
//! binary, so that there is exactly one implementation of each reversible step.

use serde::{Deserialize, Serialize};

use crate::hash::Blake3;
use crate::relpath::RelPath;
use crate::version::Version;

/// The install record file inside the state directory.
pub const RECORD_FILE: &str = "installed.json";
/// The journal file inside the state directory.
pub const JOURNAL_FILE: &str = "journal.json";
/// The progress record of a resumable run (number of actions done) inside the state directory.
pub const PROGRESS_FILE: &str = "progress";
/// The quarantine directory inside the state directory: things the updater does not own that
/// were in the way of a release, one subdirectory per transaction.
pub const QUARANTINE_DIR: &str = "quarantine";
/// The backup directory inside the state directory.
pub const BACKUP_DIR: &str = "backup";
/// The staging directory inside the state directory.
pub const STAGING_DIR: &str = "staging";
/// The update lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";
/// The self-patch plan written by `patch-apply` for `self-patcher`.
pub const SELF_PATCH_PLAN_FILE: &str = "self-patch.json";
/// The lock a running `self-patcher` holds for its whole run (its PID inside), so that an
/// updater can tell a pending hand-over from an abandoned one.
pub const HANDOVER_LOCK_FILE: &str = "self-patcher.lock";

/// Where a journaled transaction stands: whether the tree as a whole is old, new or in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxnState {
    /// Actions are being carried out: the tree is in between.
    Committing,
    /// Every action is done: the tree is the new version; the backup holds the old files.
    Committed,
    /// The transaction was undone: the tree is the old version.
    RolledBack,
    /// A rollback of the committed transaction is under way (or was interrupted): paths are
    /// at their old or their new version, and the backup and the saved install record are
    /// kept until it is finished. Running the rollback (or recovery) again finishes it.
    #[serde(rename = "rolling_back")]
    RollingBack,
}

/// One reversible step of a transaction.
///
/// The `i`-th action of a journal keeps whatever it replaces or removes in `backup/i`, so
/// actions never collide in the backup, even when a journal is extended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    /// Move an old file or symlink to the backup.
    Remove {
        /// The path.
        path: RelPath,
    },
    /// Remove an old directory that must become something else or disappear (only when
    /// empty; a directory still holding ignored files is kept).
    RemoveDir {
        /// The path.
        path: RelPath,
    },
    /// Create a directory.
    MakeDir {
        /// The path.
        path: RelPath,
    },
    /// Put a staged file or symlink in place (one rename), keeping what was there in the
    /// backup (a hard link made before the rename, so the path is never missing).
    Place {
        /// The path.
        path: RelPath,
        /// The staged file, relative to the state directory.
        staged: String,
        /// Whether something existed at `path` before.
        had_old: bool,
    },
    /// Move something the updater does not own out of the way of the release (one rename,
    /// whatever it is: a user file, a directory with what is left in it, a symlink, a FIFO)
    /// into the quarantine, where it is kept across later updates; undone by renaming back.
    Quarantine {
        /// The path in the app dir.
        path: RelPath,
        /// Where it goes, relative to the state directory
        /// (`quarantine/<transaction>/<path>`).
        to: String,
    },
}

impl Action {
    /// The app-relative path the action changes.
    pub fn path(&self) -> &RelPath {
        match self {
            Action::Remove { path }
            | Action::RemoveDir { path }
            | Action::MakeDir { path }
            | Action::Place { path, .. }
            | Action::Quarantine { path, .. } => path,
        }
    }
}

/// The journal of one update (`journal.json`), written and fsynced before the first change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The app.
    pub app: String,
    /// Version before (if known).
    pub from: Option<Version>,
    /// Version after.
    pub to: Version,
    /// Where the transaction stands.
    pub state: TxnState,
    /// The actions, in execution order.
    pub actions: Vec<Action>,
}

/// What the updater installed last (`installed.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// The app.
    pub app: String,
    /// The installed version.
    pub version: Version,
    /// Its tree digest.
    pub tree: Blake3,
    /// The version before it (for rollback), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Version>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_keeps_the_documented_shape() {
        let j = Journal {
            app: "demo".into(),
            from: Some(Version::parse("1.0.0").unwrap()),
            to: Version::parse("2.0.0").unwrap(),
            state: TxnState::Committing,
            actions: vec![
                Action::Remove {
                    path: RelPath::new("a").unwrap(),
                },
                Action::Place {
                    path: RelPath::new("b/c").unwrap(),
                    staged: "staging/x".into(),
                    had_old: true,
                },
            ],
        };
        let s = serde_json::to_string(&j).unwrap();
        assert!(s.contains(r#""state":"committing""#), "{s}");
        assert!(s.contains(r#""op":"place""#), "{s}");
        let mut rb = j.clone();
        rb.state = TxnState::RollingBack;
        let s2 = serde_json::to_string(&rb).unwrap();
        assert!(s2.contains(r#""state":"rolling_back""#), "{s2}");
        assert_eq!(serde_json::from_str::<Journal>(&s).unwrap(), j);
        assert_eq!(j.actions[1].path().as_str(), "b/c");
    }
}
