//! Self-patching (docs/format.md §8.3): an app that updates itself.
//!
//! [`Updater::apply_with_handover`](crate::Updater::apply_with_handover) stages and verifies
//! the whole update, then:
//!
//! - **warm patch** (nothing marked as code changes, see [`crate::updater::restart_needed`]):
//!   commits it in place while the app runs (each file replaced by one rename) and emits
//!   [`Event::Installed`](crate::Event::Installed) so the app can reload its resources;
//! - **cold patch**: writes a [`SelfPatchPlan`] to `APP/.patchkit/self-patch.json`, starts
//!   `self-patcher --plan FILE` detached (its output goes to `APP/.patchkit/self-patcher.log`)
//!   and returns [`ApplyOutcome::HandedOver`]: the app should exit now; `self-patcher` waits
//!   for it, moves the staged files into place, records the version and relaunches it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use formats::self_plan::{
    plan_digest, Relaunch, SelfPatchPlan, TimedOut, SELF_PATCH_FORMAT, TIMED_OUT_FILE,
};
use formats::txn::{Action, InstallRecord, STAGING_DIR};
use formats::Version;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::report::ApplyReport;
use crate::state::StateDir;

/// How to hand a code update over to `self-patcher`.
#[derive(Clone, Debug)]
pub struct HandOver {
    /// The `self-patcher` executable (outside the app dir, or a copy that survives the update).
    pub self_patcher: PathBuf,
    /// The process `self-patcher` waits for: the app that asked for the update.
    pub wait_pid: u32,
    /// How long `self-patcher` waits for it to exit.
    pub wait_timeout: Duration,
    /// The command that starts the app again (program and arguments; empty: no relaunch).
    pub relaunch: Vec<String>,
    /// The relaunched app's working directory (`self-patcher`'s own when absent).
    pub relaunch_cwd: Option<PathBuf>,
}

impl HandOver {
    /// A hand-over to `self_patcher` waiting (at most 60 s) for `wait_pid`, then running
    /// `relaunch`.
    pub fn new(self_patcher: impl Into<PathBuf>, wait_pid: u32, relaunch: Vec<String>) -> Self {
        HandOver {
            self_patcher: self_patcher.into(),
            wait_pid,
            wait_timeout: Duration::from_secs(60),
            relaunch,
            relaunch_cwd: None,
        }
    }
}

/// What [`Updater::apply_with_handover`](crate::Updater::apply_with_handover) did.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// The update is in place (a warm patch, or nothing to do): the app keeps running.
    InPlace {
        /// The report.
        #[serde(flatten)]
        report: ApplyReport,
    },
    /// The update changes code: it is staged and `self-patcher` runs; the app must exit now.
    HandedOver {
        /// The report (`to` is the version `self-patcher` installs).
        #[serde(flatten)]
        report: ApplyReport,
        /// The plan file.
        plan: PathBuf,
        /// The `self-patcher` process.
        self_patcher_pid: u32,
    },
}

impl ApplyOutcome {
    /// The report, whichever way the update went.
    pub fn report(&self) -> &ApplyReport {
        match self {
            ApplyOutcome::InPlace { report } | ApplyOutcome::HandedOver { report, .. } => report,
        }
    }

    /// The report, whichever way the update went.
    pub fn into_report(self) -> ApplyReport {
        match self {
            ApplyOutcome::InPlace { report } | ApplyOutcome::HandedOver { report, .. } => report,
        }
    }
}

/// Everything the plan records about the update.
pub(crate) struct PlannedUpdate {
    pub app: String,
    pub from: Option<Version>,
    pub record: InstallRecord,
    pub actions: Vec<Action>,
}

/// How long after its deadline (`created_unix + wait_timeout_secs`) a plan that no
/// `self-patcher` holds counts as abandoned even though the app it waits for still runs: the
/// `self-patcher` started for it has given up (or died) by then.
const DEADLINE_MARGIN_SECS: u64 = 60;

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Refuses to go on while a hand-over is pending, and drops one that nothing will run,
/// returning a warning that names it.
///
/// A plan in the state dir is pending while a `self-patcher` holds the hand-over lock (it
/// takes it first thing and keeps it to the end) or while the app it waits for still runs
/// (`self-patcher` may not have taken the lock yet) and its deadline has not passed. Changing
/// the app dir then would pull the staged files from under it, or mix two updates. Otherwise
/// nothing will ever run the plan: its `self-patcher` recorded that it timed out
/// ([`TIMED_OUT_FILE`]), or the app exited and no `self-patcher` runs it, or the deadline
/// passed. It is then removed with its staged files while holding the hand-over lock (a
/// `self-patcher` that gets the lock afterwards finds its plan gone and changes nothing). None
/// of its actions was carried out without a journal (`self-patcher` commits under the update
/// lock, journaled), so the caller's recovery rolls back a half-done run. Call with the update
/// lock held.
pub(crate) fn check_pending(state: &StateDir) -> Result<Option<String>> {
    let file = state.self_patch_plan();
    let timed_out_file = state.root.join(TIMED_OUT_FILE);
    if !file.exists() {
        remove_if_present(&timed_out_file)?;
        return Ok(None);
    }
    // Held until the plan is withdrawn, so that no self-patcher starts on it meanwhile.
    let _probe = match self_patcher::lock::try_lock(&state.handover_lock_file()) {
        Ok(held) => held,
        Err(self_patcher::Error::Locked { owner, .. }) => {
            return Err(Error::Precondition(format!(
                "an update was handed over to self-patcher and is pending ({}): self-patcher \
                 (pid {owner}) is running it; try again when it is done",
                file.display()
            )))
        }
        Err(e) => return Err(crate::error::txn_error(e)),
    };
    // Read under the lock: a self-patcher that finished meanwhile removed it.
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            remove_if_present(&timed_out_file)?;
            return Ok(None);
        }
        Err(e) => return Err(Error::io(&file, e)),
    };
    // An unreadable plan cannot be run by self-patcher either.
    let plan: Option<SelfPatchPlan> = serde_json::from_slice(&bytes).ok();
    let to = plan
        .as_ref()
        .map_or_else(|| "?".to_string(), |p| p.to.to_string());
    let timed_out: Option<TimedOut> = std::fs::read(&timed_out_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|t: &TimedOut| t.plan_digest == plan_digest(&bytes));
    let why_dropped = if let Some(t) = timed_out {
        format!(
            "self-patcher gave up waiting for process {} to exit after {}s",
            t.wait_pid, t.waited_secs
        )
    } else {
        let waiting_for = plan
            .as_ref()
            .and_then(|p| p.wait_pid)
            .filter(|&pid| self_patcher::runner::process_alive(pid));
        match (waiting_for, plan.as_ref()) {
            (Some(pid), Some(p))
                if p.created_unix > 0
                    && now_unix()
                        > p.created_unix
                            .saturating_add(p.wait_timeout_secs)
                            .saturating_add(DEADLINE_MARGIN_SECS) =>
            {
                format!(
                    "no self-patcher runs it and its deadline ({}s of waiting for process {pid}) \
                     has passed",
                    p.wait_timeout_secs
                )
            }
            (Some(pid), _) => {
                return Err(Error::Precondition(format!(
                    "an update to {to} was handed over to self-patcher and is pending ({}): \
                     it runs once process {pid} (the app that asked for it) exits; try again \
                     when it is done",
                    file.display()
                )))
            }
            (None, _) => "no self-patcher runs it and the app it waited for has exited".into(),
        }
    };
    let staging = state.staging();
    match std::fs::remove_dir_all(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&staging, e)),
    }
    remove_if_present(&file)?;
    remove_if_present(&timed_out_file)?;
    Ok(Some(format!(
        "dropped the update to {to} handed over to self-patcher ({}): {why_dropped}; none of \
         it was applied",
        file.display()
    )))
}

/// How an update to `to` handed over to `self-patcher` ended, read from the state directory
/// alone: `None` while it is under way (its plan waits or runs), `Some(Ok)` when the install
/// record names `to` and the plan is gone, else `Some(Err((kind, message)))`: the
/// `self-patcher` gave up waiting for the app (`precondition`), its commit failed and was
/// rolled back (`disk`), or the plan was dropped before it ran (`precondition`).
pub fn hand_over_outcome(
    state: &StateDir,
    to: &str,
) -> Option<std::result::Result<(), (String, String)>> {
    let fail = |kind: &str, m: String| Some(Err((kind.to_string(), m)));
    if state.self_patch_plan().exists() {
        if state.root.join(TIMED_OUT_FILE).exists() {
            return fail(
                "precondition",
                format!(
                    "self-patcher gave up waiting for the app to exit; the update to {to} was not applied"
                ),
            );
        }
        let journal = crate::state::read_state_file(&state.journal())
            .ok()
            .and_then(|b| serde_json::from_slice::<formats::txn::Journal>(&b).ok());
        if journal.is_some_and(|j| {
            j.to.to_string() == to && j.state == formats::txn::TxnState::RolledBack
        }) {
            return fail(
                "disk",
                format!(
                    "self-patcher could not move the update to {to} into place and rolled it back (see {})",
                    state.root.join("self-patcher.log").display()
                ),
            );
        }
        return None;
    }
    match state.load_record() {
        Some(r) if r.version.to_string() == to => Some(Ok(())),
        r => fail(
            "precondition",
            format!(
                "the update to {to} handed over to self-patcher was dropped before it was applied (installed: {})",
                r.map_or_else(|| "nothing".to_string(), |r| r.version.to_string())
            ),
        ),
    }
}

fn remove_if_present(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// Writes the plan and starts `self-patcher` detached. Returns the plan file and its PID.
pub(crate) fn hand_over(
    app_dir: &Path,
    state: &StateDir,
    h: &HandOver,
    u: PlannedUpdate,
) -> Result<(PathBuf, u32)> {
    let app_dir = app_dir.canonicalize().at(app_dir)?;
    let relaunch = h.relaunch.split_first().map(|(program, args)| Relaunch {
        program: program.clone(),
        args: args.to_vec(),
        cwd: h.relaunch_cwd.clone(),
    });
    let plan = SelfPatchPlan {
        format: SELF_PATCH_FORMAT.into(),
        id: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ),
        created_unix: now_unix(),
        app_dir: app_dir.clone(),
        app: u.app,
        from: u.from,
        to: u.record.version.clone(),
        actions: u.actions,
        wait_pid: Some(h.wait_pid),
        wait_timeout_secs: h.wait_timeout.as_secs().max(1),
        record: u.record,
        relaunch,
        cleanup: vec![STAGING_DIR.into()],
    };
    let file = state.self_patch_plan();
    // A timed-out record of an earlier plan must not name this one (digests differ anyway).
    remove_if_present(&state.root.join(TIMED_OUT_FILE))?;
    let bytes = serde_json::to_vec_pretty(&plan).map_err(|e| Error::Precondition(e.to_string()))?;
    crate::atomic::write_file(&file, &bytes)?;
    let log_path = state.root.join("self-patcher.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .at(&log_path)?;
    let log2 = log.try_clone().at(&log_path)?;
    let mut c = Command::new(&h.self_patcher);
    c.arg("--plan")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a signal to the app's group does not reach it.
        c.process_group(0);
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        // CREATE_NEW_PROCESS_GROUP | DETACHED_PROCESS: a Ctrl-C in the app's console does not
        // reach it, and it outlives the app's console window (its output goes to the log).
        c.creation_flags(0x0000_0200 | 0x0000_0008);
    }
    let child = c.spawn().map_err(|e| {
        Error::Precondition(format!(
            "cannot start self-patcher {}: {e}",
            h.self_patcher.display()
        ))
    })?;
    Ok((file, child.id()))
}
