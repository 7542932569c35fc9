//! The supervisor (`patch-apply agent --supervise -- APP ARGS`): runs the app as a child
//! process, lets the agent stop and start it around cold patches and notify it (SIGHUP) after
//! warm ones, restarts it when it exits on its own (a crash) with a growing delay, and keeps
//! the crashes for the state document the agent reports.
//!
//! **A supervisor that dies** (SIGKILL, OOM) leaves its app running unsupervised: the child is
//! not tied to its parent (`PR_SET_PDEATHSIG` would need `unsafe` code, which the workspace
//! forbids). The supervisor keeps the app's PID and start time in
//! `.patchkit/agent/app.pid`; a supervisor started again stops that process first (SIGTERM,
//! SIGKILL after the grace) when it is still the same process, then recovers an interrupted
//! update, then starts the app: one app at a time, never running half-updated files.
//!
//! Uses [`super::AppControl`] and [`super::Agent`] only; the agent does not use this file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use formats::fleet::CrashFile;

use super::{collect, Agent, AppControl, CrashUpload};

/// Most crashes kept for the report.
const KEPT_CRASHES: usize = 10;

/// One exit of the app that nobody asked for.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Crash {
    /// When (RFC 3339).
    pub at: String,
    /// Its process id.
    pub pid: u32,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal ended it.
    pub signal: Option<i32>,
    /// The crash report's id (crash files are uploaded under it).
    pub id: String,
    /// Files that appeared or changed in the crash directory while the app ran (newest
    /// first, bounded), with their upload ids once uploaded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<CrashFile>,
    /// Files of the crash directory left out (symbolic links, over the bounds), with the
    /// reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Where crash files are looked for and how much of them is sent per crash.
#[derive(Clone, Debug)]
struct CrashFiles {
    dir: PathBuf,
    cap: u64,
}

/// Most crash files waiting for upload; older ones are dropped (still listed, never sent).
const MAX_PENDING_UPLOADS: usize = 32;

struct Inner {
    argv: Vec<String>,
    /// `.patchkit/agent/app.pid`, set by [`Supervisor::run`].
    pid_file: Option<PathBuf>,
    /// The agent's `--crash-dir` and upload cap, set by [`Supervisor::run`].
    crash_files: Option<CrashFiles>,
    /// When the running app was started (files changed since then are its crash files).
    started_at: SystemTime,
    /// Crash files waiting for the agent to upload them.
    pending: VecDeque<CrashUpload>,
    grace: Duration,
    child: Option<Child>,
    /// Set while the agent keeps the app stopped on purpose.
    held: bool,
    starts: u64,
    crashes: VecDeque<Crash>,
    crash_count: u64,
}

/// Runs the app and lets the agent control it. Clones share the same app.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Mutex<Inner>>,
}

impl Supervisor {
    /// A supervisor of `argv` (program and arguments); `grace` is how long a stop waits after
    /// SIGTERM before SIGKILL.
    pub fn new(argv: Vec<String>, grace: Duration) -> Self {
        Supervisor {
            inner: Arc::new(Mutex::new(Inner {
                argv,
                pid_file: None,
                crash_files: None,
                started_at: SystemTime::now(),
                pending: VecDeque::new(),
                grace,
                child: None,
                held: false,
                starts: 0,
                crashes: VecDeque::new(),
                crash_count: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Rolls back an interrupted update, starts the app, runs `agent` in a thread, and watches the app until `agent` is stopped:
    /// an exit nobody asked for is a crash, recorded and followed by a restart after a delay
    /// that doubles with each crash in a row (1 s up to 60 s; a run of a minute resets it).
    pub fn run(self, agent: Agent) -> Result<(), String> {
        let mut control = self.clone();
        restore_default_actions();
        let pid_file = agent.state.agent().join(PID_FILE);
        // Killed while the app ran: that app runs on without a supervisor; stop it first.
        if let Some(pid) = orphan(&pid_file) {
            eprintln!("agent: stopping the app left running by an earlier supervisor (pid {pid})");
            let grace = self.lock().grace;
            stop_pid(pid, grace);
        }
        {
            let mut g = self.lock();
            g.pid_file = Some(pid_file);
            g.crash_files = agent.cfg.crash_dir.clone().map(|dir| CrashFiles {
                dir,
                cap: agent.cfg.upload_cap,
            });
        }
        // Killed during a cold patch last time: the journal rolls the half-applied update back
        // before the app runs (the agent installs it again at its next check-in).
        if let Err(e) = agent.recover() {
            eprintln!("agent: could not recover an interrupted update: {e}");
        }
        control.start()?;
        let stop = agent.stop_handle();
        let agent = agent.with_app_control(self.clone());
        let thread = std::thread::spawn(move || agent.run());
        let mut delay = Duration::from_secs(1);
        let mut started = Instant::now();
        while !stop.sleep(Duration::from_millis(100)) {
            let crashed = {
                let mut g = self.lock();
                match g.child.as_mut().map(|c| (c.id(), c.try_wait())) {
                    Some((pid, Ok(Some(status)))) if !g.held => {
                        g.child = None;
                        Some(record_crash(&mut g, pid, status))
                    }
                    _ => None,
                }
            };
            if let Some(c) = crashed {
                eprintln!(
                    "agent: the app (pid {}) exited on its own ({}); restarting in {} s",
                    c.pid,
                    c.code
                        .map(|n| format!("code {n}"))
                        .or(c.signal.map(|s| format!("signal {s}")))
                        .unwrap_or_default(),
                    delay.as_secs_f64()
                );
                if started.elapsed() > Duration::from_secs(60) {
                    delay = Duration::from_secs(1);
                }
                if stop.sleep(delay) {
                    break;
                }
                delay = (delay * 2).min(Duration::from_secs(60));
                if !self.lock().held {
                    if let Err(e) = control.start() {
                        eprintln!("agent: could not restart the app: {e}");
                    }
                    started = Instant::now();
                }
            }
        }
        let _ = control.stop();
        thread
            .join()
            .map_err(|_| "the agent thread panicked".to_string())
    }
}

fn record_crash(g: &mut Inner, pid: u32, status: std::process::ExitStatus) -> Crash {
    use std::os::unix::process::ExitStatusExt;
    let mut c = Crash {
        at: formats::time_util::now()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        pid,
        code: status.code(),
        signal: status.signal(),
        id: format!("{}-{pid}", unix_ms()),
        files: Vec::new(),
        skipped: Vec::new(),
    };
    if let Some(cf) = g.crash_files.clone() {
        let sel = collect::select_crash_files(&cf.dir, g.started_at, cf.cap);
        for f in sel.files {
            let name = f
                .path
                .strip_prefix(&cf.dir)
                .unwrap_or(&f.path)
                .display()
                .to_string();
            let hashed = collect::open_candidate(&f).and_then(|mut r| {
                let mut h = blake3::Hasher::new();
                std::io::copy(&mut r, &mut h)?;
                Ok(h.finalize().to_hex().to_string())
            });
            match hashed {
                Ok(blake3) => {
                    c.files.push(CrashFile {
                        name: name.clone(),
                        size: f.size,
                        blake3,
                        upload: None,
                        error: None,
                    });
                    g.pending.push_back(CrashUpload {
                        crash: c.id.clone(),
                        name,
                        file: f,
                        attempts: 0,
                    });
                }
                Err(e) => c.skipped.push(format!("{name}: {e}")),
            }
        }
        c.skipped.extend(
            sel.skipped
                .into_iter()
                .map(|(p, why)| format!("{p}: {why}")),
        );
        c.skipped.truncate(20);
        while g.pending.len() > MAX_PENDING_UPLOADS {
            g.pending.pop_front();
        }
    }
    g.crash_count += 1;
    g.crashes.push_back(c.clone());
    while g.crashes.len() > KEPT_CRASHES {
        g.crashes.pop_front();
    }
    c
}

/// The signals the app must receive with their default action, whatever the agent was
/// started with: SIGHUP is how a warm patch tells the app, and SIGINT/SIGQUIT/SIGTERM/SIGUSR*
/// are how people and service managers talk to it.
const DEFAULT_FOR_THE_APP: [i32; 6] = [
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGQUIT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGUSR1,
    signal_hook::consts::SIGUSR2,
];

/// Makes the app start with the default action of [`DEFAULT_FOR_THE_APP`] even when the agent
/// itself was started with some of them ignored (`nohup`, a background job of a script).
///
/// An ignored signal stays ignored across `exec`, and a shell script cannot even `trap` a
/// signal that was ignored when it started: without this, an app under a `nohup`ed agent
/// never hears of a warm patch. A *caught* signal is reset to its default by `exec`, so each
/// ignored one gets a handler that does nothing: the agent goes on ignoring it in effect, and
/// the app starts with the default. (Resetting the action in the child before `exec` would
/// need `unsafe` code, which the workspace forbids.) Signals not ignored are left as they are.
fn restore_default_actions() {
    let Some(ignored) = ignored_signals() else {
        return;
    };
    for sig in DEFAULT_FOR_THE_APP {
        if ignored & (1u64 << (sig - 1)) != 0 {
            let unread = Arc::new(std::sync::atomic::AtomicBool::new(false));
            if let Err(e) = signal_hook::flag::register(sig, unread) {
                eprintln!("agent: the app may start with signal {sig} ignored: {e}");
            }
        }
    }
}

/// The set of signals this process ignores (bit `n - 1` for signal `n`): `SigIgn` of
/// `/proc/self/status` on Linux, `ps -o sigignore=` elsewhere; `None` when unknown.
fn ignored_signals() -> Option<u64> {
    #[cfg(target_os = "linux")]
    let hex = {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))?
            .trim()
            .to_string()
    };
    #[cfg(not(target_os = "linux"))]
    let hex = {
        let out = Command::new("ps")
            .args(["-o", "sigignore=", "-p", &std::process::id().to_string()])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    u64::from_str_radix(&hex, 16).ok()
}

/// The file naming the running app, in the agent's state directory.
const PID_FILE: &str = "app.pid";

/// What `app.pid` holds: the app's process id and what identifies that process beyond its
/// (reusable) id.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPid {
    pid: u32,
    start: String,
}

/// When process `pid` started (an opaque token; `None` when it does not run): the start
/// time in clock ticks after boot from `/proc/PID/stat` on Linux, `ps -o lstart=` elsewhere.
fn start_token(pid: u32) -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command: state is the 3rd field, starttime the 22nd.
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        if matches!(f.first(), Some(&"Z") | Some(&"X")) {
            return None;
        }
        f.get(19).map(|s| s.to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let out = Command::new("ps")
            .args(["-o", "lstart=", "-p", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }
}

/// Records the app just started as `pid`.
fn save_pid(file: &Path, pid: u32) -> Result<(), String> {
    let start = start_token(pid).ok_or("the app exited at once")?;
    if let Some(dir) = file.parent() {
        crate::state::create_state_dir(dir).map_err(|e| e.to_string())?;
    }
    let bytes = serde_json::to_vec(&SavedPid { pid, start }).map_err(|e| e.to_string())?;
    crate::state::atomic::write_file(file, &bytes).map_err(|e| e.to_string())
}

/// The app an earlier supervisor started, if that very process still runs.
fn orphan(file: &Path) -> Option<u32> {
    let bytes = crate::state::read_state_file(file).ok()?;
    let saved: SavedPid = serde_json::from_slice(&bytes).ok()?;
    (saved.pid > 1
        && saved.pid != std::process::id()
        && start_token(saved.pid).as_deref() == Some(saved.start.as_str()))
    .then_some(saved.pid)
}

/// Stops a process that is not our child: SIGTERM, SIGKILL after `grace`.
fn stop_pid(pid: u32, grace: Duration) {
    signal(pid, rustix::process::Signal::TERM);
    let start = Instant::now();
    while self_patcher::runner::process_alive(pid) {
        if start.elapsed() >= grace {
            signal(pid, rustix::process::Signal::KILL);
            let _ = self_patcher::runner::wait_for_exit(pid, Duration::from_secs(5));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

impl AppControl for Supervisor {
    fn pid(&self) -> Option<u32> {
        self.lock().child.as_ref().map(Child::id)
    }

    fn stop(&mut self) -> Result<(), String> {
        let mut g = self.lock();
        g.held = true;
        let grace = g.grace;
        let Some(mut child) = g.child.take() else {
            return Ok(());
        };
        drop(g);
        signal(child.id(), rustix::process::Signal::TERM);
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if start.elapsed() < grace => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(());
                }
                Err(e) => return Err(format!("waiting for the app: {e}")),
            }
        }
    }

    fn start(&mut self) -> Result<u32, String> {
        let mut g = self.lock();
        let Some((prog, args)) = g.argv.split_first() else {
            return Err("no app command".into());
        };
        // A file written in the same instant as the start still counts as the run's.
        let started_at = SystemTime::now() - Duration::from_millis(10);
        let child = Command::new(prog)
            .args(args)
            .spawn()
            .map_err(|e| format!("{prog}: {e}"))?;
        let pid = child.id();
        if let Some(f) = &g.pid_file {
            if let Err(e) = save_pid(f, pid) {
                eprintln!("agent: {}: {e}", f.display());
            }
        }
        g.child = Some(child);
        g.started_at = started_at;
        g.held = false;
        g.starts += 1;
        Ok(pid)
    }

    fn updated_in_place(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, rustix::process::Signal::HUP);
        }
    }

    fn take_crash_uploads(&mut self) -> Vec<CrashUpload> {
        self.lock().pending.drain(..).collect()
    }

    fn crash_uploaded(&mut self, upload: &CrashUpload, result: Result<String, String>) {
        let mut g = self.lock();
        let Some(f) = g
            .crashes
            .iter_mut()
            .filter(|c| c.id == upload.crash)
            .flat_map(|c| c.files.iter_mut())
            .find(|f| f.name == upload.name)
        else {
            return;
        };
        match result {
            Ok(id) => f.upload = Some(id),
            Err(e) => f.error = Some(e),
        }
    }

    fn crash_upload_later(&mut self, upload: CrashUpload) {
        let mut g = self.lock();
        g.pending.push_back(upload);
        while g.pending.len() > MAX_PENDING_UPLOADS {
            g.pending.pop_front();
        }
    }

    fn status(&self) -> Option<serde_json::Value> {
        let g = self.lock();
        Some(serde_json::json!({
            "pid": g.child.as_ref().map(Child::id),
            "starts": g.starts,
            "crash_count": g.crash_count,
            "crashes": g.crashes,
        }))
    }
}
