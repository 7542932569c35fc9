//! The one place that writes files atomically: temp file in the same directory, fsync, rename,
//! fsync of the directory; and the opening of state files without following symbolic links.
//!
//! **State paths.** Every path at or below an app's state directory `APP/.patchkit` is a state
//! path. The app dir may be writable by a less privileged user than the updater, so no
//! component of a state path from `.patchkit` down is ever followed when it is a symbolic link:
//! [`open_nofollow`], [`read_nofollow`] and [`create_dir_nofollow`] refuse such a link with an
//! error naming it, files are opened with `O_NOFOLLOW`, and temporary files are created with
//! `O_CREAT | O_EXCL` (which never follows a link either). A rename over a link replaces the
//! link itself. These checks protect against links planted while no updater runs; the update
//! lock ([`crate::lock::try_lock`]) also refuses to start while any entry directly in the state
//! directory is a link.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The error for a symbolic link found at `link` in a state path.
pub fn symlink_refused(link: &Path) -> std::io::Error {
    std::io::Error::other(format!(
        "{} is a symbolic link, and the updater never follows links inside its state directory \
         (remove the link and run again)",
        link.display()
    ))
}

/// The components of `path` from its state directory (`.patchkit`) down to `path` itself,
/// outermost first; empty when `path` is not a state path.
fn state_components(path: &Path) -> Vec<&Path> {
    let mut out = Vec::new();
    for a in path.ancestors() {
        out.push(a);
        if a.file_name() == Some(std::ffi::OsStr::new(formats::layout::STATE_DIR)) {
            out.reverse();
            return out;
        }
    }
    Vec::new()
}

/// Fails when a component of the state path `path` from `.patchkit` down (`path` itself
/// included) is a symbolic link. Components that do not exist end the check; paths that are
/// not state paths are only checked themselves.
pub fn check_no_symlinks(path: &Path) -> std::io::Result<()> {
    let mut comps = state_components(path);
    if comps.is_empty() {
        comps.push(path);
    }
    for c in comps {
        match fs::symlink_metadata(c) {
            Ok(m) if m.file_type().is_symlink() => return Err(symlink_refused(c)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes `opts` refuse a symbolic link as the last component (`O_NOFOLLOW` on unix).
fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW);
    }
    opts
}

/// Opens the state file `path` with `opts` without following a symbolic link at any component
/// from `.patchkit` down: a link is refused with an error naming it.
pub fn open_nofollow(path: &Path, opts: &OpenOptions) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        check_no_symlinks(parent)?;
    }
    #[cfg(not(unix))]
    check_no_symlinks(path)?;
    let mut opts = opts.clone();
    match no_follow(&mut opts).open(path) {
        Ok(f) => Ok(f),
        Err(e) => match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => Err(symlink_refused(path)),
            _ => Err(e),
        },
    }
}

/// Reads the whole state file `path` as [`open_nofollow`] opens it.
pub fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = open_nofollow(path, OpenOptions::new().read(true))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Creates the state directory `dir` and its missing parents, as `create_dir_all` does, but
/// refuses a symbolic link at any component from `.patchkit` down instead of following it.
pub fn create_dir_nofollow(dir: &Path) -> std::io::Result<()> {
    let comps = state_components(dir);
    let Some(top) = comps.first() else {
        check_no_symlinks(dir)?;
        return fs::create_dir_all(dir);
    };
    if let Some(app) = top.parent() {
        fs::create_dir_all(app)?;
    }
    for c in comps {
        match fs::symlink_metadata(c) {
            Ok(m) if m.file_type().is_symlink() => return Err(symlink_refused(c)),
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    c.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::create_dir(c) {
                Ok(()) => {}
                // Created meanwhile by another thread: checked again below.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let m = fs::symlink_metadata(c)?;
                    if m.file_type().is_symlink() {
                        return Err(symlink_refused(c));
                    }
                    if !m.is_dir() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fails when an entry directly in the state directory `dir` (or `dir` itself) is a symbolic
/// link, naming the first one found. A missing `dir` is fine.
pub fn check_state_dir(dir: &Path) -> std::io::Result<()> {
    check_no_symlinks(dir)?;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_symlink() {
            return Err(symlink_refused(&e.path()));
        }
    }
    Ok(())
}

/// Creates a new file at `path` (`O_CREAT | O_EXCL`: fails if anything, even a dangling link,
/// is there; never follows a link), for writing.
pub fn create_new(path: &Path) -> std::io::Result<File> {
    open_nofollow(path, OpenOptions::new().write(true).create_new(true))
}

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
    check_no_symlinks(dir).at(dir)?;
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
    let mut created = Vec::new();
    let res = (|| -> Result<()> {
        for ((tmp, _), (_, bytes)) in temps.iter().zip(files) {
            // A new file: whatever is at the temp name (a planted link) is neither followed
            // nor removed.
            let mut f = create_new(tmp).at(tmp)?;
            created.push(tmp);
            f.write_all(bytes).at(tmp)?;
            f.sync_all().at(tmp)?;
        }
        for (tmp, path) in &temps {
            fs::rename(tmp, path).at(path)?;
        }
        Ok(())
    })();
    if res.is_err() {
        for tmp in created {
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
