//! Checks before anything is touched: free disk space, write permission, running instances.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes free on the file system holding `path` (the longest matching mount point).
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

/// Fails when `app_dir` (or its state dir) is not writable.
pub fn check_writable(app_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(app_dir).map_err(|e| Error::io(app_dir, e))?;
    let probe = tempfile::Builder::new()
        .prefix(".pk-write-probe-")
        .tempfile_in(app_dir)
        .map_err(|e| Error::Precondition(format!("cannot write to {}: {e}", app_dir.display())))?;
    drop(probe);
    Ok(())
}

/// Processes whose executable lies inside `app_dir`, except `allow_pid`.
pub fn running_instances(app_dir: &Path, allow_pid: Option<u32>) -> Vec<(u32, PathBuf)> {
    let Ok(canon) = app_dir.canonicalize() else {
        return Vec::new();
    };
    let mut sys = sysinfo::System::new();
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::All,
        true,
        sysinfo::ProcessRefreshKind::nothing().with_exe(sysinfo::UpdateKind::Always),
    );
    let me = std::process::id();
    let mut out: Vec<(u32, PathBuf)> = sys
        .processes()
        .iter()
        .filter_map(|(pid, p)| {
            let pid = pid.as_u32();
            if pid == me || Some(pid) == allow_pid {
                return None;
            }
            let exe = p.exe()?;
            exe.starts_with(&canon).then(|| (pid, exe.to_path_buf()))
        })
        .collect();
    out.sort();
    out
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
