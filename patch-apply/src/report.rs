//! What the updater reports: the methods and their costs, what `apply` did and what recovery
//! found. Plain data shared by the stages that fill it in (`plan`, `commit`) and by `events`
//! and `updater`, which hand it to the app; it uses no other module of the crate.

use std::path::PathBuf;

use serde::Serialize;

/// An update method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A chain of incremental patches.
    Incremental,
    /// Repair files of the differing files only.
    Repair,
    /// The whole installer archive.
    Installer,
}

impl Method {
    /// The method's name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Incremental => "incremental",
            Method::Repair => "repair",
            Method::Installer => "installer",
        }
    }
}

/// One method's cost, or why it cannot be used.
#[derive(Clone, Debug, Serialize)]
pub struct MethodCost {
    /// The method.
    pub method: Method,
    /// Bytes to download, when available.
    pub bytes: Option<u64>,
    /// Why it is unavailable, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// For incremental: the versions along the chain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Downloads (requests) the method makes, when available: one per patch of the chain, one
    /// per repair file, one for the installer. `plan::order` weighs each like
    /// `plan::REQUEST_COST_BYTES` bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// Something moved out of the way of the release.
#[derive(Clone, Debug, Serialize)]
pub struct Quarantined {
    /// Its path in the app dir.
    pub path: String,
    /// Where it is now (inside the app dir's state directory).
    pub to: String,
}

/// What `apply` did.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    /// Version before, if recognised.
    pub from: Option<String>,
    /// Version now installed.
    pub to: String,
    /// Method that succeeded (`none` when already up to date).
    pub method: String,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Methods that failed before, with their errors.
    pub fallbacks: Vec<String>,
    /// Files the final verification found wrong and repaired.
    pub repaired_after: Vec<String>,
    /// Whether the update changed code.
    pub restart_required: bool,
    /// What recovery did before this update, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Recovery>,
    /// What was installed before, in words (see
    /// [`CheckReport::install_state`](crate::CheckReport::install_state)).
    pub from_state: String,
    /// Things the updater does not own that were in the way, moved to the quarantine
    /// (brought back by rollback).
    pub quarantined: Vec<Quarantined>,
    /// Files and symlinks of earlier releases deleted (kept in the backup until the next
    /// update).
    pub deleted: Vec<String>,
    /// Unknown entries left in place.
    pub kept: Vec<String>,
    /// Files the incremental method took from their repair files because the install's copy
    /// (or the patch's source) differed from the recognised release.
    pub repaired: Vec<String>,
}

/// A file a rollback or recovery found changed or added since the update, in the way of the
/// old version: a copy is kept in the quarantine before the old version is put back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeptFile {
    /// The path in the app dir.
    pub path: String,
    /// Where the copy is kept.
    pub copy: PathBuf,
}

/// What [`recover`](crate::commit::recover) found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// No interrupted update.
    Clean,
    /// An interrupted update was rolled back to `from`.
    RolledBack {
        /// The version restored.
        from: Option<String>,
        /// The version the interrupted update aimed at.
        to: String,
        /// Files found in the way that were kept in the quarantine.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        kept: Vec<KeptFile>,
    },
    /// A rollback that was interrupted was finished: the app dir and the install record are
    /// at `restored`.
    FinishedRollback {
        /// The version restored.
        restored: Option<String>,
        /// The version rolled back.
        undone: String,
        /// Files changed since the update that were kept in the quarantine.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        kept: Vec<KeptFile>,
    },
}

impl std::fmt::Display for Recovery {
    /// One sentence for people (`patch-apply recover` prints it; `--json` gives the fields).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = |f: &mut std::fmt::Formatter<'_>, kept: &[KeptFile]| match kept.len() {
            0 => Ok(()),
            n => write!(f, "; {n} changed file(s) kept in the quarantine"),
        };
        match self {
            Recovery::Clean => write!(f, "nothing to recover: no update was interrupted"),
            Recovery::RolledBack { from, to, kept: k } => {
                write!(
                    f,
                    "rolled back the interrupted update to {to}; the app is at {}",
                    from.as_deref().unwrap_or("its previous state")
                )?;
                kept(f, k)
            }
            Recovery::FinishedRollback {
                restored,
                undone,
                kept: k,
            } => {
                write!(
                    f,
                    "finished the interrupted rollback of {undone}; the app is at {}",
                    restored.as_deref().unwrap_or("its previous state")
                )?;
                kept(f, k)
            }
        }
    }
}
