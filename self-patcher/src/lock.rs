//! The update lock `APP/.patchkit/lock`: an OS file lock whose file holds the owner's PID.
//! A second updater is refused with that PID; the OS releases the lock when its owner dies,
//! so a killed updater never leaves a stale lock behind.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// Held while an update runs; dropping it releases the lock.
#[derive(Debug)]
pub struct UpdateLock {
    file: File,
    path: PathBuf,
}

impl Drop for UpdateLock {
    /// Unlocks explicitly rather than relying on close: a child forked by another thread
    /// shares the open file description until it execs, and would keep a close-only lock alive.
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl UpdateLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the lock at `path` or fails at once with [`Error::Locked`] naming the owner's PID.
pub fn try_lock(path: &Path) -> Result<UpdateLock> {
    if let Some(parent) = path.parent() {
        crate::fsio::create_dir_nofollow(parent).at(parent)?;
        // Whoever holds the lock writes in the state directory: nothing planted there as a
        // symbolic link may redirect those writes.
        if parent.file_name() == Some(std::ffi::OsStr::new(formats::layout::STATE_DIR)) {
            crate::fsio::check_state_dir(parent).at(parent)?;
        }
    }
    let mut f = crate::fsio::open_nofollow(
        path,
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
    )
    .at(path)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut owner = String::new();
            let _ = f.read_to_string(&mut owner);
            let owner = owner.trim();
            return Err(Error::Locked {
                path: path.to_path_buf(),
                owner: if owner.is_empty() {
                    "unknown".into()
                } else {
                    owner.to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
    }
    f.set_len(0).at(path)?;
    f.rewind().at(path)?;
    write!(f, "{}", std::process::id()).at(path)?;
    Ok(UpdateLock {
        file: f,
        path: path.to_path_buf(),
    })
}

/// Takes the lock, retrying while another process holds it, for at most `timeout`.
pub fn lock_wait(path: &Path, timeout: Duration) -> Result<UpdateLock> {
    let start = Instant::now();
    loop {
        match try_lock(path) {
            Err(Error::Locked { .. }) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_owner_pid_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let l = try_lock(&p).unwrap();
        let e = try_lock(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(l);
        try_lock(&p).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_lock_file_planted_as_a_symlink_is_refused_and_its_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("precious");
        std::fs::write(&outside, b"keep me").unwrap();
        let state = d.path().join("app").join(formats::layout::STATE_DIR);
        std::fs::create_dir_all(&state).unwrap();
        std::os::unix::fs::symlink(&outside, state.join("lock")).unwrap();
        let e = try_lock(&state.join("lock")).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("lock"), "{e}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_anywhere_directly_in_the_state_dir_refuses_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("app").join(formats::layout::STATE_DIR);
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir(d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), state.join("backup")).unwrap();
        let e = try_lock(&state.join("lock")).unwrap_err().to_string();
        assert!(e.contains("backup") && e.contains("symbolic link"), "{e}");
    }
}
