//! The one place that writes files atomically: temp file in the same directory, fsync,
//! rename, fsync of the directory. Nothing else in the crate calls `std::fs::rename` on files
//! inside an app directory. Single files and syncs are [`self_patcher::fsio`]'s, shared with
//! the `self-patcher` binary; [`write_files`] batches the directory sync of several files.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: readers see the old content or the new, never a mix.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    self_patcher::fsio::write_file(path, bytes).map_err(crate::commit::txn_error)
}

/// Writes several files of `dir` atomically, each as [`write_file`] does, with one directory
/// sync after all the renames instead of one per file. Each file is at its old or its new
/// content at every moment; after a crash some may be new and others old. `files` are
/// (name directly in `dir`, content).
pub fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let temps: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .map(|(name, _)| {
            let tmp = dir.join(format!(
                ".pk-tmp-{name}-{}-b{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            (tmp, dir.join(name))
        })
        .collect();
    let res = (|| -> Result<()> {
        for ((tmp, _), (_, bytes)) in temps.iter().zip(files) {
            let mut f = File::create(tmp).at(tmp)?;
            f.write_all(bytes).at(tmp)?;
            f.sync_all().at(tmp)?;
        }
        for (tmp, path) in &temps {
            fs::rename(tmp, path).at(path)?;
        }
        Ok(())
    })();
    if res.is_err() {
        for (tmp, _) in &temps {
            let _ = fs::remove_file(tmp);
        }
    }
    res?;
    sync_dir(dir)
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
