//! The updater's state directory `APP/.patchkit/` (docs/format.md §8): the install record,
//! trusted metadata, the download cache, staging, the journal and backups, and the lock.
//! Nothing else is ever added to an app directory.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use formats::{Blake3, Version};
use serde::{Deserialize, Serialize};

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
        self.root.join("installed.json")
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
        self.root.join("staging")
    }
    /// The journal of the update being committed.
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal.json")
    }
    /// Backups of replaced files.
    pub fn backup(&self) -> PathBuf {
        self.root.join("backup")
    }
    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
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
        let p = self.lock_file();
        let mut f = File::options().read(true).write(true).create(true).truncate(false).open(&p).at(&p)?;
        if f.try_lock().is_err() {
            let mut owner = String::new();
            let _ = f.read_to_string(&mut owner);
            return Err(Error::Precondition(format!(
                "another update is running on this app dir (pid {}, lock {})",
                owner.trim(),
                p.display()
            )));
        }
        f.set_len(0).at(&p)?;
        f.rewind().at(&p)?;
        let _ = write!(f, "{}", std::process::id());
        Ok(UpdateLock { _file: f })
    }
}

/// Held while an update runs.
pub struct UpdateLock {
    _file: File,
}

/// What the updater installed last.
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
