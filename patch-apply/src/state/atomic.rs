//! The one place that writes files atomically: temp file in the same directory, fsync,
//! rename, fsync of the directory. Nothing else in the crate calls `std::fs::rename` on files
//! inside an app directory. Writes and syncs are [`self_patcher::fsio`]'s, shared with the
//! `self-patcher` binary, with errors mapped to this crate's.

use std::fs;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` atomically: readers see the old content or the new, never a mix.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    self_patcher::fsio::write_file(path, bytes).map_err(crate::error::txn_error)
}

/// Writes several files of `dir` atomically, each as [`write_file`] does, with one directory
/// sync after all the renames ([`self_patcher::fsio::write_files`]). `files` are (name
/// directly in `dir`, content).
pub fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    self_patcher::fsio::write_files(dir, files).map_err(crate::error::txn_error)
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
    self_patcher::fsio::sync_file(path).map_err(crate::error::txn_error)
}

/// Flushes a directory entry table to disk (no-op where directories cannot be opened).
pub fn sync_dir(dir: &Path) -> Result<()> {
    self_patcher::fsio::sync_dir(dir).map_err(crate::error::txn_error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn write_files_replaces_each_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        write_file(&d.path().join("a"), b"old a").unwrap();
        write_files(d.path(), &[("a", b"new a"), ("b", b"new b")]).unwrap();
        assert_eq!(fs::read(d.path().join("a")).unwrap(), b"new a");
        assert_eq!(fs::read(d.path().join("b")).unwrap(), b"new b");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn write_files_error_names_the_file_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("b")).unwrap();
        fs::write(d.path().join("b/x"), b"").unwrap();
        let e = write_files(d.path(), &[("a", b"new a"), ("b", b"new b")])
            .unwrap_err()
            .to_string();
        assert!(e.contains('b'), "{e}");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().starts_with(".pk-tmp")),
            "{names:?}"
        );
    }
}
