//! The one place that writes files atomically: temp file in the same directory, fsync,
//! rename, fsync of the directory. Nothing else in the crate calls `std::fs::rename` on files
//! inside an app directory. The implementation is [`self_patcher::fsio`], shared with the
//! `self-patcher` binary.

use std::fs;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` atomically: readers see the old content or the new, never a mix.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    self_patcher::fsio::write_file(path, bytes).map_err(crate::commit::txn_error)
}

/// Renames `from` to `to` (same file system) and makes the rename durable.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).at(to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))?;
    if let Some(p) = from.parent() {
        if Some(p) != to.parent() {
            sync_dir(p)?;
        }
    }
    Ok(())
}

/// Flushes a file's data to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    self_patcher::fsio::sync_file(path).map_err(crate::commit::txn_error)
}

/// Flushes a directory entry table to disk (no-op where directories cannot be opened).
pub fn sync_dir(dir: &Path) -> Result<()> {
    self_patcher::fsio::sync_dir(dir).map_err(crate::commit::txn_error)
}
