//! Checks before anything is touched: free disk space, write permission, running instances.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use crate::state::remove_stale_probes;
use crate::state::PROBE_PREFIX;

/// Bytes free (for unprivileged users) on the file system holding `path`, or its nearest
/// existing ancestor: one `statvfs` of that path.
#[cfg(unix)]
pub fn free_space(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(canonical_existing(path)).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Bytes free on the file system holding `path` (the longest matching mount point).
#[cfg(not(unix))]
pub fn free_space(path: &Path) -> Option<u64> {
    let canon = canonical_existing(path);
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| canon.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}

fn canonical_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    loop {
        if let Ok(c) = p.canonicalize() {
            return c;
        }
        if !p.pop() {
            return path.to_path_buf();
        }
    }
}

/// Fails when fewer than `needed` bytes are free where `app_dir` lives.
pub fn check_space(app_dir: &Path, needed: u64) -> Result<()> {
    if let Some(free) = free_space(app_dir) {
        if free < needed {
            return Err(Error::Precondition(format!(
                "not enough disk space for {}: {} bytes needed (downloads, staging and backups), {} free",
                app_dir.display(),
                needed,
                free
            )));
        }
    }
    Ok(())
}

/// Fails when `app_dir` or its state dir is not writable. Nothing is written in the app dir
/// itself: its permission is asked of the OS (`access(2)` with the effective IDs, which also
/// reports a read-only file system), and the probe file that proves writes really work is
/// created in the state directory, on the same file system. A probe left by a killed run is
/// removed by the next one ([`remove_stale_probes`]).
pub fn check_writable(app_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(app_dir).map_err(|e| Error::io(app_dir, e))?;
    let cannot = |e: &dyn std::fmt::Display| {
        Error::Precondition(format!("cannot write to {}: {e}", app_dir.display()))
    };
    #[cfg(unix)]
    {
        use rustix::fs::{Access, AtFlags, CWD};
        let r = rustix::fs::accessat(CWD, app_dir, Access::WRITE_OK, AtFlags::EACCESS);
        let r = match r {
            // Kernels without faccessat2: the real IDs are the effective ones for an updater
            // that is not setuid.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
                rustix::fs::access(app_dir, Access::WRITE_OK)
            }
            r => r,
        };
        r.map_err(|e| cannot(&std::io::Error::from(e)))?;
    }
    let state = crate::state::StateDir::of(app_dir);
    state.create()?;
    let probe = tempfile::Builder::new()
        .prefix(PROBE_PREFIX)
        .tempfile_in(&state.root)
        .map_err(|e| cannot(&e))?;
    drop(probe);
    Ok(())
}

/// Processes whose executable lies inside `app_dir`, except `allow_pid`.
pub fn running_instances(app_dir: &Path, allow_pid: Option<u32>) -> Vec<(u32, PathBuf)> {
    let Ok(canon) = app_dir.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out: Vec<(u32, PathBuf)> = process_executables()
        .into_iter()
        .filter(|(pid, exe)| *pid != me && Some(*pid) != allow_pid && exe.starts_with(&canon))
        .collect();
    out.sort();
    out
}

/// Every process's PID and executable, from sysinfo (only the executable is refreshed; on
/// Linux sysinfo drops the ` (deleted)` suffix of an executable that was replaced, so a process
/// still running from a replaced file counts under its path).
fn process_executables() -> Vec<(u32, PathBuf)> {
    let mut sys = sysinfo::System::new();
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::All,
        true,
        sysinfo::ProcessRefreshKind::nothing().with_exe(sysinfo::UpdateKind::Always),
    );
    sys.processes()
        .iter()
        .filter_map(|(pid, p)| Some((pid.as_u32(), p.exe()?.to_path_buf())))
        .collect()
}

/// Fails when another process runs from `app_dir`.
pub fn check_not_running(app_dir: &Path, allow_pid: Option<u32>) -> Result<()> {
    let running = running_instances(app_dir, allow_pid);
    if let Some((pid, exe)) = running.first() {
        return Err(Error::Precondition(format!(
            "the app is running from {} (pid {pid}, {}); close it first{}",
            app_dir.display(),
            exe.display(),
            if running.len() > 1 {
                format!(" ({} processes)", running.len())
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn free_space_of_a_path_not_yet_created_is_its_ancestors() {
        let d = tempfile::tempdir().unwrap();
        let free = free_space(d.path()).unwrap();
        assert!(free > 0);
        assert!(free_space(&d.path().join("not/yet")).is_some());
    }

    #[test]
    fn the_write_probe_leaves_nothing_in_the_app_dir() {
        let d = tempfile::tempdir().unwrap();
        let app = d.path().join("app");
        std::fs::create_dir(&app).unwrap();
        std::fs::write(app.join("f"), b"x").unwrap();
        // What a run of an older version killed during its probe left behind.
        std::fs::write(app.join(".pk-write-probe-AbC123"), b"").unwrap();
        remove_stale_probes(&app);
        check_writable(&app).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&app)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".patchkit", "f"]);
        let state: Vec<_> = std::fs::read_dir(app.join(".patchkit")).unwrap().collect();
        assert!(state.is_empty(), "{state:?}");
    }
}
