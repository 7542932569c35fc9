//! The supervisor (`patch-apply agent --supervise -- APP ARGS`): runs the app as a child
//! process, lets the agent stop and start it around cold patches and notify it (SIGHUP) after
//! warm ones, restarts it when it exits on its own (a crash) with a growing delay, and keeps
//! the crashes for the state document the agent reports.
//!
//! Uses [`super::AppControl`] and [`super::Agent`] only; the agent does not use this file.

use std::collections::VecDeque;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Agent, AppControl};

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
}

struct Inner {
    argv: Vec<String>,
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
    let c = Crash {
        at: formats::time_util::now()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        pid,
        code: status.code(),
        signal: status.signal(),
    };
    g.crash_count += 1;
    g.crashes.push_back(c.clone());
    while g.crashes.len() > KEPT_CRASHES {
        g.crashes.pop_front();
    }
    c
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
        let child = Command::new(prog)
            .args(args)
            .spawn()
            .map_err(|e| format!("{prog}: {e}"))?;
        let pid = child.id();
        g.child = Some(child);
        g.held = false;
        g.starts += 1;
        Ok(pid)
    }

    fn updated_in_place(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, rustix::process::Signal::HUP);
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
