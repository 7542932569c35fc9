//! The one place that writes files atomically: temp file in the same directory, fsync,
//! rename, fsync of the directory. Nothing else in the crate calls `std::fs::rename` on files
//! inside an app directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` atomically: readers see the old content or the new, never a mix.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".pk-tmp-")
        .tempfile_in(dir)
        .at(dir)?;
    tmp.write_all(bytes).at(tmp.path())?;
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(path).map_err(|e| crate::Error::io(path, e.error))?;
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
    File::open(path).at(path)?.sync_all().at(path)
}

/// Flushes a directory entry table to disk (no-op where directories cannot be opened).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir).at(dir)?.sync_all().at(dir)?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
