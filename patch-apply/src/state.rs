//! The updater's state directory `APP/.patchkit/` (docs/format.md §8): the install record,
//! trusted metadata, the download cache, staging, the journal and backups, and the lock.
//! Nothing else is ever added to an app directory.

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
    /// Creates it.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).at(&self.root)
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

    /// The lock a running `self-patcher` holds.
    pub fn handover_lock_file(&self) -> PathBuf {
        self.root.join(names::HANDOVER_LOCK_FILE)
    }

    /// Loads the install record, if any (a corrupt record is treated as absent).
    pub fn load_record(&self) -> Option<InstallRecord> {
        let bytes = std::fs::read(self.record_file()).ok()?;
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
    pub fn lock(&self) -> Result<UpdateLock> {
        self.create()?;
        self_patcher::lock::try_lock(&self.lock_file()).map_err(crate::commit::txn_error)
    }
}

/// Held while an update runs.
pub type UpdateLock = self_patcher::lock::UpdateLock;

/// What the updater installed last.
pub use formats::txn::InstallRecord;
