//! The updater's state directory `APP/.patchkit/` (docs/format.md §8): the install record,
//! trusted metadata, the download cache, staging, the journal and backups, and the lock.
//! Nothing else is ever added to an app directory.
//!
//! Folder `state/`: this file, [`atomic`] (the one place that writes files atomically) and
//! [`results`] (the bounded queue of update attempts a fleet agent reports).
//! May use: `error`. Every stage may use it.

pub mod atomic;
pub mod results;

use std::path::{Path, PathBuf};

use formats::txn as names;

use crate::error::{Error, IoContext, Result};

/// Paths inside the state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    /// `APP/.patchkit`.
    pub root: PathBuf,
}

impl StateDir {
    /// The state directory of `app_dir`.
    pub fn of(app_dir: &Path) -> Self {
        StateDir {
            root: app_dir.join(formats::layout::STATE_DIR),
        }
    }
    /// Creates it, refusing a state directory that is a symbolic link.
    pub fn create(&self) -> Result<()> {
        self_patcher::fsio::create_dir_nofollow(&self.root).at(&self.root)
    }
    /// Install record file.
    pub fn record_file(&self) -> PathBuf {
        self.root.join(names::RECORD_FILE)
    }
    /// Trusted metadata directory.
    pub fn trust(&self) -> PathBuf {
        self.root.join("trust")
    }
    /// Download cache.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// Staging area (same file system as the app, so renames are atomic).
    pub fn staging(&self) -> PathBuf {
        self.root.join(names::STAGING_DIR)
    }
    /// The journal of the update being committed.
    pub fn journal(&self) -> PathBuf {
        self.root.join(names::JOURNAL_FILE)
    }
    /// Backups of replaced files.
    pub fn backup(&self) -> PathBuf {
        self.root.join(names::BACKUP_DIR)
    }
    /// The self-patch plan handed to `self-patcher`.
    pub fn self_patch_plan(&self) -> PathBuf {
        self.root.join(names::SELF_PATCH_PLAN_FILE)
    }
    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(names::LOCK_FILE)
    }

    /// The queue of update attempts not yet reported to a fleet server.
    pub fn results(&self) -> results::ResultsQueue {
        results::ResultsQueue::in_state_dir(&self.root)
    }

    /// The fleet agent's own directory (identity, token).
    pub fn agent(&self) -> PathBuf {
        self.root.join("agent")
    }

    /// The lock a running `self-patcher` holds.
    pub fn handover_lock_file(&self) -> PathBuf {
        self.root.join(names::HANDOVER_LOCK_FILE)
    }

    /// Loads the install record, if any (a corrupt record is treated as absent).
    pub fn load_record(&self) -> Option<InstallRecord> {
        let bytes = read_state_file(&self.record_file()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Saves the install record atomically.
    pub fn save_record(&self, r: &InstallRecord) -> Result<()> {
        self.create()?;
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| Error::Precondition(e.to_string()))?;
        crate::atomic::write_file(&self.record_file(), &bytes)
    }

    /// Takes the update lock: a second updater on the same app dir is refused with the owner's
    /// PID. The OS releases the lock when its owner dies, so a killed updater never leaves a
    /// stale lock behind.
    ///
    /// The lock refuses to be taken while any entry directly in the state directory is a
    /// symbolic link. Once held, write-permission probes a killed run left behind are removed.
    pub fn lock(&self) -> Result<UpdateLock> {
        self.create()?;
        let lock =
            self_patcher::lock::try_lock(&self.lock_file()).map_err(crate::error::txn_error)?;
        if let Some(app_dir) = self.root.parent() {
            remove_stale_probes(app_dir);
        }
        Ok(lock)
    }
}

/// Name prefix of the write-permission probe files.
pub(crate) const PROBE_PREFIX: &str = ".pk-write-probe-";

/// Removes the write-permission probes a killed run left behind: in the state directory, and
/// in the app dir itself, where earlier versions created them. Only regular files (or links)
/// with the probe's name prefix are removed; errors are ignored (a probe is harmless).
pub fn remove_stale_probes(app_dir: &Path) {
    let state = StateDir::of(app_dir).root;
    for dir in [app_dir, state.as_path()] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let is_probe = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(PROBE_PREFIX));
            if is_probe && e.file_type().is_ok_and(|t| !t.is_dir()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Reads the state file `path` without following a symbolic link at any component from
/// `.patchkit` down ([`self_patcher::fsio::read_nofollow`]).
pub fn read_state_file(path: &Path) -> std::io::Result<Vec<u8>> {
    self_patcher::fsio::read_nofollow(path)
}

/// Creates the state directory `dir` (at or below `.patchkit`) and its missing parents,
/// refusing a symbolic link at any component from `.patchkit` down.
pub fn create_state_dir(dir: &Path) -> Result<()> {
    self_patcher::fsio::create_dir_nofollow(dir).at(dir)
}

/// Opens the state file `path` with `opts` without following a symbolic link at any component
/// from `.patchkit` down ([`self_patcher::fsio::open_nofollow`]).
pub fn open_state_file(path: &Path, opts: &std::fs::OpenOptions) -> Result<std::fs::File> {
    self_patcher::fsio::open_nofollow(path, opts).at(path)
}

/// The app directory the user named, resolved once: a path that is a symbolic link to a
/// directory is replaced by the directory's canonical path, so that every command works on the
/// same directory whichever way it was named. Inside the app dir no symbolic link is ever
/// followed (docs/security.md, "Symbolic links"). Any other path is returned as it is.
pub fn resolve_app_dir(app_dir: &Path) -> PathBuf {
    match std::fs::symlink_metadata(app_dir) {
        Ok(m) if m.file_type().is_symlink() && app_dir.is_dir() => app_dir
            .canonicalize()
            .unwrap_or_else(|_| app_dir.to_path_buf()),
        _ => app_dir.to_path_buf(),
    }
}

/// Fails unless `app_dir` (as [`resolve_app_dir`] returned it) is a directory or does not exist
/// yet, with a message saying what is there instead.
pub fn check_app_dir(app_dir: &Path) -> Result<()> {
    let not = |what: &str| {
        Err(Error::Precondition(format!(
            "{}: {what}; the app dir must be a directory (or not exist yet, for a fresh install)",
            app_dir.display()
        )))
    };
    match std::fs::symlink_metadata(app_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(app_dir, e)),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => {
            not("is a symbolic link that does not lead to a directory")
        }
        Ok(_) => not("is a file, not a directory"),
    }
}

/// Held while an update runs.
pub type UpdateLock = self_patcher::lock::UpdateLock;

/// What the updater installed last.
pub use formats::txn::InstallRecord;
