//! The one place that writes files atomically: temp file in the same directory, fsync, rename,
//! fsync of the directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: readers see the old content or the new, never a mix.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(Error::io(
            path,
            std::io::Error::other("not a file name that can be written atomically"),
        ));
    };
    write_files(dir, &[(name, bytes)])
}

/// Writes several files of `dir` atomically, each as [`write_file`] does (temp file in `dir`,
/// fsync, rename), with one directory sync after all the renames instead of one per file.
/// Each file is at its old or its new content at every moment; after a crash some may be new
/// and others old. `files` are (name directly in `dir`, content). On error no temp file is
/// left behind.
pub fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let temps: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .map(|(name, _)| {
            let tmp = dir.join(format!(
                ".pk-tmp-{name}-{}-{}",
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

/// Flushes a file's data to disk.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path).at(path)?.sync_all().at(path)
}

/// Flushes the data of many files, in parallel (concurrent fsyncs share journal commits).
pub fn sync_files(paths: &[PathBuf]) -> Result<()> {
    parallel(paths, sync_file)
}

/// Flushes many directories' entry tables, in parallel.
pub fn sync_dirs(dirs: &[PathBuf]) -> Result<()> {
    parallel(dirs, sync_dir)
}

fn parallel(paths: &[PathBuf], f: fn(&Path) -> Result<()>) -> Result<()> {
    const WORKERS: usize = 16;
    if paths.len() <= 1 {
        return paths.iter().try_for_each(|p| f(p));
    }
    let chunk = paths.len().div_ceil(WORKERS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().try_for_each(|p| f(p))))
            .collect();
        let mut first = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Precondition("a file sync thread panicked".into())));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
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

/// Whether anything (file, directory, symlink, even a dangling one) exists at `p`.
pub fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_file_error_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("x");
        let e = write_file(&p, b"x").unwrap_err().to_string();
        assert!(e.contains("missing-dir"), "{e}");
    }
}
