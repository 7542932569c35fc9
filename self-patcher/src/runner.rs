//! Running a self-patch plan (docs/format.md §8.3): wait for the app to exit, carry out the
//! plan's actions as a resumable transaction, record the new version, relaunch the app.
//!
//! Running the same plan again after a crash resumes it: a `committing` journal with the plan's
//! actions carries on from its progress record, a `committed` one only records and relaunches.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use formats::self_plan::{plan_digest, Relaunch, SelfPatchPlan, TimedOut, TIMED_OUT_FILE};
use formats::txn::{Journal, TxnState};

use crate::error::{Error, IoContext, Result};
use crate::txn::{self, Mode, StatePaths};

/// What a successful run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The version now installed.
    pub version: String,
    /// Actions carried out by this run (fewer than the plan's when resuming).
    pub actions_run: usize,
    /// Whether an earlier, interrupted run of the same plan was resumed.
    pub resumed: bool,
    /// The PID of the relaunched app, if any.
    pub relaunched: Option<u32>,
}

/// Reads and checks a plan file.
pub fn load_plan(path: &Path) -> Result<SelfPatchPlan> {
    let bytes = std::fs::read(path).at(path)?;
    parse_plan(path, &bytes)
}

fn parse_plan(path: &Path, bytes: &[u8]) -> Result<SelfPatchPlan> {
    SelfPatchPlan::from_json(&path.display().to_string(), bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks, under the hand-over lock, that `plan_file` still holds the plan this run was
/// started for (`digest` of the bytes read at the start): an updater may have withdrawn it, or
/// withdrawn it and handed over another update, before this run held the lock.
fn check_still_ours(plan_file: &Path, plan: &SelfPatchPlan, digest: &str) -> Result<()> {
    let now = match std::fs::read(plan_file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Precondition(format!(
                "{}: the plan was withdrawn by an updater before this run started; nothing was changed",
                plan_file.display()
            )))
        }
        Err(e) => return Err(Error::io(plan_file, e)),
    };
    if plan_digest(&now) != digest {
        let other = parse_plan(plan_file, &now)
            .map(|p| format!("an update to {}", p.to))
            .unwrap_or_else(|_| "an unreadable plan".into());
        return Err(Error::Precondition(format!(
            "{}: the plan this run was started for (update to {}) was replaced by {other} \
             before this run took its lock; nothing was changed (the new plan is left to its \
             own self-patcher)",
            plan_file.display(),
            plan.to
        )));
    }
    Ok(())
}

/// Whether process `pid` still runs (a zombie counts as exited), asked of the OS through
/// sysinfo (one refresh of that PID only), the same way on Linux, macOS and Windows.
pub fn process_alive(pid: u32) -> bool {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
    let pid = Pid::from_u32(pid);
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    sys.process(pid)
        .is_some_and(|p| !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead))
}

/// Waits until `pid` exits, for at most `timeout`.
pub fn wait_for_exit(pid: u32, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while process_alive(pid) {
        if start.elapsed() >= timeout {
            return Err(Error::Precondition(format!(
                "process {pid} is still running after {}s; nothing was changed and the plan is given up (the next update drops it; or close the app and run self-patcher again)",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts the relaunch command, detached (its own process group), without waiting for it.
pub fn relaunch(r: &Relaunch) -> Result<u32> {
    let mut c = Command::new(&r.program);
    c.args(&r.args).stdin(Stdio::null());
    if let Some(cwd) = &r.cwd {
        c.current_dir(cwd);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        // CREATE_NEW_PROCESS_GROUP: a Ctrl-C to self-patcher's console does not reach the app.
        c.creation_flags(0x0000_0200);
    }
    let child = c.spawn().at(Path::new(&r.program))?;
    Ok(child.id())
}

fn same_plan(j: &Journal, plan: &SelfPatchPlan) -> bool {
    j.app == plan.app && j.to == plan.to && j.from == plan.from && j.actions == plan.actions
}

/// Runs the plan at `plan_file`; `log` receives one line per step. On failure the app dir is
/// back at the old version (unless the error says rolling back failed too) and the app is
/// relaunched anyway, so it is never left without a runnable version.
pub fn run_plan(plan_file: &Path, log: &dyn Fn(&str)) -> Result<Outcome> {
    let bytes = std::fs::read(plan_file).at(plan_file)?;
    let digest = plan_digest(&bytes);
    let plan = parse_plan(plan_file, &bytes)?;
    crate::testhook::pause("before-lock");
    let state = StatePaths::of(&plan.app_dir);
    // Held to the end: an updater seeing the plan knows it is being run (a second
    // self-patcher on the same app dir is refused here).
    let _running = crate::lock::try_lock(&state.handover_lock())?;
    // Only the plan as it is now, under the lock, counts: an updater that found it abandoned
    // (before this run held the lock) withdrew it, and may have handed over another since.
    check_still_ours(plan_file, &plan, &digest)?;
    let timed_out_file = state.state_dir.join(TIMED_OUT_FILE);
    // A run started again by hand on a plan that timed out before: it is live again.
    let _ = std::fs::remove_file(&timed_out_file);
    let timeout = Duration::from_secs(plan.wait_timeout_secs);
    if let Some(pid) = plan.wait_pid {
        log(&format!("waiting for process {pid} to exit"));
        if let Err(e) = wait_for_exit(pid, timeout) {
            // Recorded (under the lock) so that the next updater drops the plan instead of
            // waiting for an app that may run for days; nothing was changed.
            let t = TimedOut {
                plan_digest: digest,
                wait_pid: pid,
                waited_secs: plan.wait_timeout_secs,
                at_unix: now_unix(),
            };
            match serde_json::to_vec_pretty(&t) {
                Ok(b) => {
                    if let Err(w) = crate::fsio::write_file(&timed_out_file, &b) {
                        log(&format!("could not record the timeout: {w}"));
                    }
                }
                Err(w) => log(&format!("could not record the timeout: {w}")),
            }
            return Err(e);
        }
    }
    let paths = StatePaths::of(&plan.app_dir);
    let lock = crate::lock::lock_wait(&paths.lock(), timeout.max(Duration::from_secs(5)))?;
    let result = apply_plan(&plan, &paths, log);
    // The record is written and the lock released before the app starts again.
    drop(lock);
    let relaunched = match &plan.relaunch {
        Some(r) => {
            let pid = relaunch(r);
            match (&result, pid) {
                (_, Ok(pid)) => {
                    log(&format!("relaunched {} (pid {pid})", r.program));
                    Some(pid)
                }
                (Ok(_), Err(e)) => return Err(e),
                (Err(_), Err(e)) => {
                    log(&format!("could not relaunch the app: {e}"));
                    None
                }
            }
        }
        None => None,
    };
    let (actions_run, resumed) = result?;
    if let Err(e) = std::fs::remove_file(plan_file) {
        log(&format!(
            "could not remove the finished plan {}: {e}",
            plan_file.display()
        ));
    }
    Ok(Outcome {
        version: plan.to.to_string(),
        actions_run,
        resumed,
        relaunched,
    })
}

/// `1.0.0 -> 2.0.0` (`nothing -> 2.0.0` for a fresh install).
fn plan_span(plan: &SelfPatchPlan) -> String {
    let from = plan
        .from
        .as_ref()
        .map_or("nothing".into(), |v| v.to_string());
    format!("{from} -> {}", plan.to)
}

fn apply_plan(
    plan: &SelfPatchPlan,
    paths: &StatePaths,
    log: &dyn Fn(&str),
) -> Result<(usize, bool)> {
    let existing = txn::load_journal(paths)?;
    let (actions_run, resumed) = match existing {
        Some(mut j) if same_plan(&j, plan) => match j.state {
            TxnState::Committing => {
                let done = txn::read_progress(paths).min(j.actions.len());
                log(&format!(
                    "resuming an interrupted run: {done} of {} steps were done",
                    j.actions.len()
                ));
                txn::resume(paths, &mut j)?;
                (j.actions.len() - done, true)
            }
            TxnState::Committed => {
                log("every step was done by an earlier run");
                (0, true)
            }
            TxnState::RolledBack => {
                return Err(Error::Precondition(format!(
                    "{}: this plan ({}) was rolled back; run the update again",
                    paths.journal().display(),
                    plan_span(plan)
                )))
            }
            TxnState::RollingBack => {
                return Err(Error::Precondition(format!(
                    "{}: this plan ({}) is being rolled back; run `patch-apply rollback` to finish that, then the update again",
                    paths.journal().display(),
                    plan_span(plan)
                )))
            }
        },
        other => {
            if other.is_some_and(|j| matches!(j.state, TxnState::Committing | TxnState::RollingBack)) {
                log("finishing another interrupted update or rollback first");
                txn::recover(paths)?;
            }
            let mut j = Journal {
                app: plan.app.clone(),
                from: plan.from.clone(),
                to: plan.to.clone(),
                state: TxnState::Committing,
                actions: plan.actions.clone(),
            };
            log(&format!(
                "moving {} staged changes into place",
                j.actions.len()
            ));
            txn::begin(paths, &mut j)?;
            txn::run(paths, &mut j, 0, Mode::Resumable)?;
            (j.actions.len(), false)
        }
    };
    let bytes = serde_json::to_vec_pretty(&plan.record).map_err(|e| Error::Corrupt {
        path: paths.record(),
        reason: e.to_string(),
    })?;
    crate::fsio::write_file(&paths.record(), &bytes)?;
    for c in &plan.cleanup {
        let d = paths.state_dir.join(c);
        let _ = std::fs::remove_dir_all(&d);
    }
    log(&format!("installed {}", plan.to));
    Ok((actions_run, resumed))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut c = Command::new(std::env::current_exe().unwrap())
            .arg("--list")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!process_alive(pid));
    }

    /// A real process (not our child's exit status: its PID, looked up through sysinfo) is
    /// waited for until it exits; an exited but not yet reaped process (a zombie) counts as
    /// gone.
    #[cfg(unix)]
    #[test]
    fn waits_for_a_real_process_until_it_exits() {
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = c.id();
        assert!(process_alive(pid));
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            wait_for_exit(pid, Duration::from_secs(20)).map(|()| t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(!waiter.is_finished(), "returned while the process ran");
        c.kill().unwrap();
        // Not reaped yet: a zombie, which no longer runs.
        let waited = waiter.join().unwrap().unwrap();
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        assert!(!process_alive(pid));
        c.wait().unwrap();
    }

    #[test]
    fn waiting_for_a_running_process_times_out_with_a_clear_error() {
        let e = wait_for_exit(std::process::id(), Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("still running"), "{e}");
    }
}
