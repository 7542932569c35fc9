//! The fleet agent: the device side of `docs/fleet.md`. It enrolls with a `patch-server`,
//! checks in on a jittered interval (conditional, so an idle poll costs the server almost
//! nothing), reports what is installed and how every update attempt went, carries out the
//! server's commands, and installs the release the server names under the device's own rules.
//!
//! **The server only names releases.** The agent installs a named release through
//! [`Updater`] with [`Config::target`] set, so only a release the verified repository offers is
//! ever installed, never a downgrade unless [`Config::allow_downgrade`] says so; a refusal is
//! reported like any other attempt (`error_kind: "refused"`). A server that is down, slow or
//! answers garbage costs the app a log line ([`AgentEvent::Unreachable`]) and a backoff, never
//! a panic or a blocked thread of the app.
//!
//! Folder `agent/`: this file (the [`Agent`] loop, its configuration and events), `policy`
//! (install policy, maintenance window, interval, jitter and backoff; pure), `identity` (device
//! id and token in `.patchkit/agent/`), `client` (the protocol over HTTP, bounded answers,
//! [`AgentError`]), `collect` (state document, log and crash files), `watch` (offline bundles
//! dropped in a directory), `supervise` (runs the app as a child, an [`AppControl`]). Order
//! inside: `policy`, `identity`, `collect` < `client` < this file < `watch`, `supervise`. May use: everything in the crate; it sits on
//! top of [`crate::updater`] and nothing in the crate uses it.
//!
//! # Example: an app running the agent in a thread and answering an offer
//!
//! ```no_run
//! use patch_apply::agent::{Agent, AgentConfig, AgentEvent, InstallPolicy, OfferDecision};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let key = formats::keys::KeyPair::generate()?.public();
//! let updater = patch_apply::Config::new("/opt/mygame", "https://updates.example.com/mygame", key);
//! let mut config = AgentConfig::new("https://fleet.example.com", updater);
//! config.enroll_secret = Some(std::fs::read_to_string("/etc/mygame/enroll.secret")?);
//! config.install = InstallPolicy::Ask;
//! let agent = Agent::new(config, |event: &AgentEvent| {
//!     // A real app logs these; `Installed` with `restart_required: false` means "reload".
//!     eprintln!("{event:?}");
//! })?
//! .on_offer(|offer| {
//!     // Ask the player; here: take small updates now, ask again later for big ones.
//!     if offer.download_bytes < 50 << 20 {
//!         OfferDecision::Accept
//!     } else {
//!         OfferDecision::Defer
//!     }
//! });
//! let stop = agent.stop_handle();
//! let thread = std::thread::spawn(move || agent.run());
//! // ... the app runs ...
//! stop.stop();
//! thread.join().ok();
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod collect;
pub mod identity;
pub mod policy;
#[cfg(unix)]
pub mod supervise;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use formats::fleet::{
    CheckIn, CheckInResponse, Command, CommandKind, CommandOutcome, CommandResult, DeviceStatus,
    Directive, EnrollRequest, UpdateResult, MAX_RESULTS, MAX_SHORT, MAX_TEXT,
};
use formats::Version;
use serde::Serialize;

use crate::events::Event;
use crate::state::StateDir;
use crate::updater::{error_kind, Config, Updater};
use formats::fleet::clip;

pub use client::{AgentError, CheckInAnswer, FleetClient};
pub use collect::StateSource;
use identity::IdentityStore;
pub use policy::{InstallPolicy, Minute, Window};

/// How the agent runs.
#[derive(Clone)]
pub struct AgentConfig {
    /// The fleet server (`https://fleet.example.com`); empty for an agent without one, which
    /// only applies the bundles dropped in [`AgentConfig::watch_dir`].
    pub server: String,
    /// How to update the app: app dir, repository, pinned keys, channel, attributes,
    /// `allow_downgrade`. [`Config::target`] is set by the agent for each directive.
    pub updater: Config,
    /// The app's name on the server; by default the repository's (or the install record's).
    pub app: Option<String>,
    /// The app's enrollment secret (absent for approval mode).
    pub enroll_secret: Option<String>,
    /// Poll interval until the server names one.
    pub interval: Duration,
    /// First wait after a failed check-in (doubled for each further failure).
    pub backoff_initial: Duration,
    /// Longest wait between failed check-ins.
    pub backoff_cap: Duration,
    /// When to install what the server names.
    pub install: InstallPolicy,
    /// Where the state document comes from.
    pub state: StateSource,
    /// Globs of log files `upload-logs` sends.
    pub logs: Vec<String>,
    /// A directory of crash files `upload-logs` sends.
    pub crash_dir: Option<PathBuf>,
    /// Most bytes one `upload-logs` sends in total.
    pub upload_cap: u64,
    /// Timeout of each request to the server.
    pub request_timeout: Duration,
    /// The local time of day in minutes, for the maintenance window (tests move it); the
    /// system's local time when `None`.
    pub local_time: Option<Arc<dyn Fn() -> Minute + Send + Sync>>,
    /// A directory where offline bundles (`*.bundle`) are dropped: looked at every poll
    /// ([`watch`]); [`Config::allow_expired_bundle`] of `updater` applies to them.
    pub watch_dir: Option<PathBuf>,
}

impl AgentConfig {
    /// Defaults: poll every 60 s, back off from 5 s up to 10 min, install now, no state, no
    /// logs, uploads capped at 16 MiB, 30 s per request.
    pub fn new(server: impl Into<String>, updater: Config) -> Self {
        AgentConfig {
            server: server.into(),
            updater,
            app: None,
            enroll_secret: None,
            interval: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(600),
            install: InstallPolicy::Now,
            state: StateSource::None,
            logs: vec![],
            crash_dir: None,
            upload_cap: 16 << 20,
            request_timeout: Duration::from_secs(30),
            local_time: None,
            watch_dir: None,
        }
    }
}

/// A release the server names, offered to the app under [`InstallPolicy::Ask`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Offer {
    /// The release.
    pub version: String,
    /// What is installed now, if recognised.
    pub installed: Option<String>,
    /// Bytes the update downloads.
    pub download_bytes: u64,
    /// Whether the update changes code (the app must restart to run it).
    pub restart_required: bool,
    /// The method the update would use.
    pub method: String,
    /// Release notes of the offered release, when the release engineer wrote some
    /// (`patch-create release --notes`).
    pub notes: Option<String>,
}

/// The app's answer to an [`Offer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfferDecision {
    /// Install it now.
    Accept,
    /// Not now: ask again at the next check-in ("upgrade later").
    Defer,
    /// Never this release: not asked again (until the agent restarts).
    Decline,
}

/// What the agent did, for the app's log.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Enrolled (again) with the server.
    Enrolled {
        /// The device id.
        device_id: String,
        /// `active` or `pending`.
        status: String,
    },
    /// A check-in was answered.
    CheckedIn {
        /// 200, or 304 when nothing changed.
        http_status: u16,
        /// The release the server names.
        directive: Option<String>,
        /// Commands in the answer.
        commands: usize,
        /// Update reports the server acknowledged.
        acked_result_seq: Option<u64>,
    },
    /// The server could not be reached or answered an error; the agent waits.
    Unreachable {
        /// What failed.
        error: String,
        /// Failed check-ins in a row.
        failures: u32,
        /// Seconds until the next try.
        retry_in_secs: f64,
    },
    /// An update to the named release starts.
    Installing {
        /// The release.
        version: String,
    },
    /// The named release is installed.
    Installed {
        /// The release.
        version: String,
        /// How.
        method: String,
        /// Bytes downloaded.
        bytes: u64,
        /// Whether the app must restart to run it (else it may reload its resources).
        restart_required: bool,
    },
    /// An update failed (reported to the server); it is tried again later.
    UpdateFailed {
        /// The release.
        version: String,
        /// The error kind.
        kind: String,
        /// The error.
        error: String,
    },
    /// The named release is refused by the device's policy or absent from the repository
    /// (reported to the server; not tried again).
    Refused {
        /// The release.
        version: String,
        /// Why.
        reason: String,
    },
    /// The named release was downloaded (and staged to check it) ahead of its maintenance
    /// window; only the commit waits for the window.
    Prefetched {
        /// The release.
        version: String,
        /// Bytes downloaded now.
        bytes: u64,
    },
    /// The named release waits (maintenance window closed, offer deferred).
    Waiting {
        /// The release.
        version: String,
        /// Why.
        reason: String,
    },
    /// The app declined the offer of this release.
    Declined {
        /// The release.
        version: String,
    },
    /// A command was carried out and its result posted.
    Command {
        /// The command id.
        id: String,
        /// Its kind.
        kind: String,
        /// `ok`, `failed` or `rejected`.
        outcome: String,
        /// Its message.
        message: Option<String>,
    },
    /// Something worth a log line.
    Warning {
        /// What.
        message: String,
    },
}

/// Stops a running [`Agent`] (from any thread); the agent finishes the step it is in.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<(Mutex<bool>, Condvar)>);

impl StopHandle {
    /// Asks the agent to stop; it wakes from its wait at once.
    pub fn stop(&self) {
        if let Ok(mut s) = self.0 .0.lock() {
            *s = true;
        }
        self.0 .1.notify_all();
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0 .0.lock().map(|s| *s).unwrap_or(true)
    }

    /// Waits `d` or until stopped; true when stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let Ok(mut s) = self.0 .0.lock() else {
            return true;
        };
        while !*s {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match self.0 .1.wait_timeout(s, deadline - now) {
                Ok((g, _)) => s = g,
                Err(_) => return true,
            }
        }
        true
    }
}

/// What one check-in cycle did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cycle {
    /// How long to wait before the next one (jittered).
    pub next_in: Duration,
    /// The release installed during the cycle, if any.
    pub installed: Option<String>,
    /// The release the server named, if any.
    pub directive: Option<String>,
}

/// What following a directive came to.
#[derive(Clone, Debug, PartialEq)]
enum Followed {
    /// Already there (or nothing to do).
    Nothing,
    /// Installed now.
    Installed,
    /// Refused and reported.
    Refused(String),
    /// Waits for the window or the app.
    Waiting(String),
    /// Tried and failed (reported); tried again later.
    Failed(String),
}

/// What the agent may do to the app it supervises ([`supervise::Supervisor`] implements it):
/// a cold patch stops the app, updates and starts it again; a warm patch updates while it runs
/// and tells it.
pub trait AppControl: Send {
    /// The running app's process id.
    fn pid(&self) -> Option<u32>;
    /// Stops the app (for a cold patch or a restart).
    fn stop(&mut self) -> Result<(), String>;
    /// Starts the app (after a cold patch or for a restart); returns its process id.
    fn start(&mut self) -> Result<u32, String>;
    /// Tells the running app its files changed (warm patch).
    fn updated_in_place(&mut self);
    /// What the supervisor reports in the state document (restarts, crashes).
    fn status(&self) -> Option<serde_json::Value>;
    /// Takes the crash files waiting to be uploaded (none by default).
    fn take_crash_uploads(&mut self) -> Vec<CrashUpload> {
        Vec::new()
    }
    /// Records how the upload of a crash file went: the server's upload id, or why not.
    fn crash_uploaded(&mut self, _upload: &CrashUpload, _result: Result<String, String>) {}
    /// Keeps a crash file whose upload failed for a passing reason (server unreachable or
    /// overloaded) for the next check-in.
    fn crash_upload_later(&mut self, _upload: CrashUpload) {}
}

/// A file attached to a crash report, waiting to be uploaded ([`AppControl::take_crash_uploads`]).
#[derive(Clone, Debug)]
pub struct CrashUpload {
    /// The crash report's id.
    pub crash: String,
    /// The file's name in the report (relative to the crash directory).
    pub name: String,
    /// The file as listed when the crash was recorded.
    pub file: collect::Candidate,
    /// Uploads tried so far that failed for a passing reason.
    pub attempts: u32,
}

/// Most tries of a crash file's upload that fail for a passing reason before the crash report
/// says it was not uploaded.
pub const CRASH_UPLOAD_TRIES: u32 = 5;

type EventFn = dyn Fn(&AgentEvent) + Send + Sync;
type OfferFn = dyn FnMut(&Offer) -> OfferDecision + Send;
type RestartFn = dyn FnMut() -> Result<String, String> + Send;

/// The fleet agent of one app dir. [`Agent::run`] loops until stopped; [`Agent::run_once`]
/// does one check-in cycle.
pub struct Agent {
    cfg: AgentConfig,
    events: Arc<EventFn>,
    offer: Option<Box<OfferFn>>,
    restart: Option<Box<RestartFn>>,
    control: Option<Box<dyn AppControl>>,
    stop: StopHandle,
    /// `None` without a fleet server.
    client: Option<FleetClient>,
    store: IdentityStore,
    state: StateDir,
    /// The last full answer and its ETag.
    last: Option<(CheckInResponse, Option<String>)>,
    /// Set by `set-interval`.
    interval_override: Option<Duration>,
    failures: u32,
    /// Releases refused (absent, older): not tried again before the time (Unix seconds);
    /// kept in `.patchkit/agent/refused.json` so that a restarted agent does not report the
    /// same refusal again.
    refused: BTreeMap<String, u64>,
    /// Releases the app declined: not offered again while the agent runs.
    declined: BTreeSet<String>,
    /// Releases whose update failed: attempts so far and when to try again.
    retry_at: BTreeMap<String, (u32, Instant)>,
    /// Releases downloaded ahead of the maintenance window (or when to try again after a
    /// failed download).
    prefetched: BTreeMap<String, Option<Instant>>,
    /// Commands carried out whose result was posted.
    done_commands: BTreeSet<String>,
    /// The installed version recognised from the files, when there is no install record.
    recognised: Option<(Option<Version>, Option<String>)>,
    /// Bundles of the watch directory put away (or that could not be): not looked at again.
    watch_done: BTreeSet<PathBuf>,
    /// Bundles of the watch directory that failed for a passing reason: attempts so far.
    watch_transient: BTreeMap<PathBuf, u32>,
}

impl Agent {
    /// An agent with `cfg`, reporting to `events`. Nothing is contacted yet.
    pub fn new(
        cfg: AgentConfig,
        events: impl Fn(&AgentEvent) + Send + Sync + 'static,
    ) -> Result<Self, AgentError> {
        let client = if cfg.server.is_empty() {
            if cfg.watch_dir.is_none() {
                return Err(AgentError::Config(
                    "no fleet server and no watch directory: nothing to do".into(),
                ));
            }
            None
        } else {
            Some(FleetClient::new(&cfg.server, cfg.request_timeout)?)
        };
        let app_dir = crate::state::resolve_app_dir(&cfg.updater.app_dir);
        let state = StateDir::of(&app_dir);
        Ok(Agent {
            store: IdentityStore::new(state.agent()),
            state,
            client,
            events: Arc::new(events),
            offer: None,
            restart: None,
            control: None,
            stop: StopHandle::default(),
            last: None,
            interval_override: None,
            failures: 0,
            refused: BTreeMap::new(),
            declined: BTreeSet::new(),
            retry_at: BTreeMap::new(),
            prefetched: BTreeMap::new(),
            done_commands: BTreeSet::new(),
            recognised: None,
            watch_done: BTreeSet::new(),
            watch_transient: BTreeMap::new(),
            cfg,
        }
        .with_saved_answer())
    }

    /// The last answer and its ETag kept by an earlier run (`.patchkit/agent/last.json`), so
    /// that even the first check-in of a process (`--once` from cron) can be conditional.
    fn with_saved_answer(mut self) -> Self {
        if let Ok(bytes) = crate::state::read_state_file(&self.state.agent().join("refused.json")) {
            if bytes.len() <= 64 << 10 {
                self.refused = serde_json::from_slice(&bytes).unwrap_or_default();
            }
        }
        let path = self.state.agent().join("last.json");
        if let Ok(bytes) = crate::state::read_state_file(&path) {
            if bytes.len() <= formats::fleet::MAX_BODY {
                if let Ok(saved) = serde_json::from_slice::<SavedAnswer>(&bytes) {
                    if saved.server == self.cfg.server
                        && check_answer(&self.cfg.server, &saved.answer).is_ok()
                    {
                        self.last = Some((saved.answer, Some(saved.etag)));
                    }
                }
            }
        }
        self
    }

    /// Keeps the answer in force and its ETag for the next run (best effort).
    fn save_answer(&self) {
        let Some((answer, Some(etag))) = &self.last else {
            return;
        };
        let saved = SavedAnswer {
            server: self.cfg.server.clone(),
            etag: etag.clone(),
            answer: answer.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec(&saved) {
            let _ = crate::state::atomic::write_file(&self.state.agent().join("last.json"), &bytes);
        }
    }

    /// Sets the app's answer to offers ([`InstallPolicy::Ask`]). Without one, every offer is
    /// deferred.
    pub fn on_offer(mut self, f: impl FnMut(&Offer) -> OfferDecision + Send + 'static) -> Self {
        self.offer = Some(Box::new(f));
        self
    }

    /// Sets what `restart-app` does (the supervisor restarts its child). Without one the
    /// command is rejected.
    pub fn on_restart(
        mut self,
        f: impl FnMut() -> Result<String, String> + Send + 'static,
    ) -> Self {
        self.restart = Some(Box::new(f));
        self
    }

    /// Lets the agent stop, start and notify the app it supervises: cold patches stop and
    /// restart it, warm patches notify it, `restart-app` restarts it, and its status goes into
    /// the state document as `{"app": ..., "supervisor": ...}`.
    pub fn with_app_control(mut self, c: impl AppControl + 'static) -> Self {
        self.control = Some(Box::new(c));
        self
    }

    /// Rolls back an update that was interrupted (a supervisor killed during a cold patch):
    /// called before the supervised app starts, so that it never runs half-updated files.
    pub fn recover(&self) -> Result<crate::report::Recovery, AgentError> {
        Ok(Updater::new(self.cfg.updater.clone(), |_| {}).recover()?)
    }

    /// A handle that stops [`Agent::run`].
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    fn emit(&self, e: AgentEvent) {
        (self.events)(&e);
    }

    /// Checks in until stopped: on the server's interval (jittered) while it answers, backing
    /// off exponentially (at most [`AgentConfig::backoff_cap`], at least its `Retry-After`)
    /// while it does not. Never panics; failures are [`AgentEvent`]s.
    pub fn run(mut self) {
        while !self.stop.is_stopped() {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_once()));
            let wait = match r {
                Ok(Ok(c)) => c.next_in,
                Ok(Err(e)) => self.failed(&e),
                Err(_) => {
                    let e = AgentError::Config("a check-in cycle panicked".into());
                    self.failed(&e)
                }
            };
            if self.stop.sleep(wait) {
                break;
            }
        }
    }

    /// Counts a failed cycle and returns the wait before the next.
    fn failed(&mut self, e: &AgentError) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = policy::backoff(
            self.failures,
            self.cfg.backoff_initial,
            self.cfg.backoff_cap,
            e.retry_after(),
            policy::random_unit(),
        );
        self.emit(AgentEvent::Unreachable {
            error: e.to_string(),
            failures: self.failures,
            retry_in_secs: wait.as_secs_f64(),
        });
        wait
    }

    /// One cycle: check in, carry out the commands, follow the directive, and check in again
    /// at once when something happened worth reporting.
    pub fn run_once(&mut self) -> Result<Cycle, AgentError> {
        // Bundles first: they need no server, and their reports go with this check-in.
        let mut installed = self.watch_cycle();
        if self.client.is_none() {
            self.failures = 0;
            return Ok(Cycle {
                next_in: policy::jittered(self.interval(), policy::random_unit()),
                installed,
                directive: None,
            });
        }
        let resp = self.check_in()?;
        self.failures = 0;
        let mut report_now = self.upload_crash_files();
        for c in &resp.commands {
            if self.done_commands.contains(&c.id) {
                continue;
            }
            let result = self.command(c, &resp);
            report_now |= c.kind == CommandKind::UpdateNow;
            let outcome = match result.outcome {
                CommandOutcome::Ok => "ok",
                CommandOutcome::Failed => "failed",
                CommandOutcome::Rejected => "rejected",
            };
            match self.with_token(|cl, t| cl.post_result(t, &c.id, &result)) {
                Ok(()) => {
                    self.done_commands.insert(c.id.clone());
                    self.emit(AgentEvent::Command {
                        id: c.id.clone(),
                        kind: c.kind.as_str().into(),
                        outcome: outcome.into(),
                        message: result.message.clone(),
                    });
                }
                Err(e) => self.emit(AgentEvent::Warning {
                    message: format!("result of command {}: {e}", c.id),
                }),
            }
        }
        if let (DeviceStatus::Active, Some(d)) = (resp.status, &resp.directive) {
            match self.follow(d, false) {
                Followed::Installed => {
                    installed = Some(d.version.clone());
                    report_now = true;
                }
                Followed::Refused(_) | Followed::Failed(_) => report_now = true,
                Followed::Nothing | Followed::Waiting(_) => {}
            }
        }
        if report_now {
            // Report the attempt now rather than a poll interval later.
            if let Err(e) = self.check_in() {
                self.emit(AgentEvent::Warning {
                    message: format!("reporting the update: {e}"),
                });
            }
        }
        Ok(Cycle {
            next_in: policy::jittered(self.interval(), policy::random_unit()),
            installed,
            directive: resp.directive.as_ref().map(|d| d.version.clone()),
        })
    }

    /// The poll interval now: `set-interval`'s, else the server's, else the configured one.
    fn interval(&self) -> Duration {
        let server = self
            .last
            .as_ref()
            .map(|(r, _)| Duration::from_secs(r.poll_interval_secs))
            .filter(|d| !d.is_zero());
        policy::clamp_interval(
            self.interval_override
                .or(server)
                .unwrap_or(self.cfg.interval),
        )
    }

    /// The fleet server's client.
    fn client(&self) -> Result<&FleetClient, AgentError> {
        self.client
            .as_ref()
            .ok_or_else(|| AgentError::Config("no fleet server configured".into()))
    }

    /// The device id and token, enrolling first when there is no token.
    fn credentials(&mut self) -> Result<(String, String), AgentError> {
        let id = self.store.load_or_create()?;
        if let Some(t) = id.token {
            return Ok((id.device_id, t));
        }
        let app = self.app_name()?;
        let resp = self.client()?.enroll(&EnrollRequest {
            app,
            device_id: id.device_id.clone(),
            secret: self
                .cfg
                .enroll_secret
                .as_ref()
                .map(|s| s.trim().to_string()),
            hostname: hostname(),
        })?;
        self.store.save_token(&resp.token)?;
        self.emit(AgentEvent::Enrolled {
            device_id: id.device_id.clone(),
            status: match resp.status {
                DeviceStatus::Active => "active".into(),
                DeviceStatus::Pending => "pending".into(),
            },
        });
        Ok((id.device_id, resp.token))
    }

    /// Runs a request with the token; on 401 enrolls again once and retries.
    fn with_token<T>(
        &mut self,
        f: impl Fn(&FleetClient, &str) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        let (_, token) = self.credentials()?;
        match f(self.client()?, &token) {
            Err(AgentError::Unauthorized { message, .. }) => {
                self.emit(AgentEvent::Warning {
                    message: format!(
                        "the server does not know this device's token ({message}); enrolling again"
                    ),
                });
                self.store.forget_token()?;
                self.last = None;
                let (_, token) = self.credentials()?;
                f(self.client()?, &token)
            }
            r => r,
        }
    }

    /// The app's name for enrollment: configured, or the install record's, or the
    /// repository's.
    fn app_name(&self) -> Result<String, AgentError> {
        if let Some(a) = &self.cfg.app {
            return Ok(a.clone());
        }
        if let Some(r) = self.state.load_record() {
            return Ok(r.app);
        }
        let u = Updater::new(self.cfg.updater.clone(), |_| {});
        u.check()?.app.ok_or_else(|| {
            AgentError::Config(
                "the repository does not name its app; set the app name (--app)".into(),
            )
        })
    }

    /// The installed version and tree digest: the install record's, else what the updater
    /// recognises from the files (asked once, until the agent installs something).
    fn installed(&mut self) -> (Option<Version>, Option<String>) {
        if let Some(r) = self.state.load_record() {
            return (Some(r.version), Some(r.tree.to_hex()));
        }
        if let Some(r) = &self.recognised {
            return r.clone();
        }
        let u = Updater::new(self.cfg.updater.clone(), |_| {});
        match u.check() {
            Ok(c) => {
                let v = c.installed.as_deref().and_then(|v| Version::parse(v).ok());
                let r = (v, c.installed_tree);
                self.recognised = Some(r.clone());
                r
            }
            Err(_) => (None, None),
        }
    }

    /// Settles an update handed over to `self-patcher` once its outcome shows in the state
    /// directory: the attempt joins the queue with its real outcome.
    fn settle_hand_over(&mut self) {
        let state = self.state.clone();
        let r = self
            .state
            .results()
            .settle_hand_over(|a| crate::selfpatch::hand_over_outcome(&state, &a.to));
        match r {
            Ok(Some(_)) => self.recognised = None,
            Ok(None) => {}
            Err(e) => self.emit(AgentEvent::Warning {
                message: format!("update reports: {e}"),
            }),
        }
    }

    /// The check-in document.
    fn checkin_body(&mut self) -> CheckIn {
        self.settle_hand_over();
        let (version, tree) = self.installed();
        let state = match collect::read_state(&self.cfg.state) {
            Ok(s) => s,
            Err(e) => {
                self.emit(AgentEvent::Warning {
                    message: format!("state document: {e}"),
                });
                None
            }
        };
        let state = match self.control.as_ref().and_then(|c| c.status()) {
            Some(sup) => Some(serde_json::json!({"app": state, "supervisor": sup})),
            None => state,
        };
        let state_digest = state.as_ref().map(|s| {
            blake3::hash(&serde_json::to_vec(s).unwrap_or_default())
                .to_hex()
                .to_string()
        });
        let server_has = self.last.as_ref().and_then(|(r, _)| r.state_digest.clone());
        let state = state.filter(|_| state_digest != server_has);
        let short = |s: &str| clip(s, MAX_SHORT);
        CheckIn {
            version: version.map(|v| v.to_string()),
            tree_digest: tree,
            channel: Some(self.cfg.updater.channel.clone()),
            attrs: self.cfg.updater.attrs.clone(),
            results: self.state.results().pending(MAX_RESULTS),
            free_disk: crate::preflight::free_space(&self.cfg.updater.app_dir),
            os: Some(short(std::env::consts::OS)),
            arch: Some(short(std::env::consts::ARCH)),
            hostname: hostname(),
            agent_version: Some(env!("CARGO_PKG_VERSION").into()),
            state,
            state_digest,
        }
    }

    /// Checks in (conditionally when an earlier answer is held) and returns the answer in
    /// force; drops the update reports the server acknowledged.
    fn check_in(&mut self) -> Result<CheckInResponse, AgentError> {
        let body = self.checkin_body();
        // What the server would refuse with 400 is refused here, naming the field (an attribute
        // with a bad name would otherwise fail every check-in).
        formats::fleet::Validate::validate(&body)
            .map_err(|e| AgentError::Config(format!("check-in document: {e}")))?;
        let etag = self.last.as_ref().and_then(|(_, e)| e.clone());
        let answer = self.with_token(|cl, t| cl.checkin(t, &body, etag.as_deref()))?;
        let (resp, status) = match answer {
            CheckInAnswer::NotModified => match &self.last {
                Some((r, _)) => (r.clone(), 304),
                None => {
                    return Err(AgentError::BadAnswer {
                        url: self.cfg.server.clone(),
                        reason: "304 Not Modified to a check-in without If-None-Match".into(),
                    })
                }
            },
            CheckInAnswer::New(r, etag) => {
                check_answer(&self.cfg.server, &r)?;
                self.last = Some((*r.clone(), etag));
                self.save_answer();
                (*r, 200)
            }
        };
        if let (Some(acked), Some(sent)) = (resp.acked_result_seq, body.results.last()) {
            // A server cannot make the device forget reports it has not been sent.
            if let Err(e) = self.state.results().ack(acked.min(sent.seq)) {
                self.emit(AgentEvent::Warning {
                    message: format!("update reports: {e}"),
                });
            }
        }
        self.emit(AgentEvent::CheckedIn {
            http_status: status,
            directive: resp.directive.as_ref().map(|d| d.version.clone()),
            commands: resp.commands.len(),
            acked_result_seq: resp.acked_result_seq,
        });
        Ok(resp)
    }

    /// The local time of day in minutes.
    fn minute_now(&self) -> Minute {
        match &self.cfg.local_time {
            Some(f) => f() % 1440,
            None => {
                use chrono::Timelike;
                let t = chrono::Local::now();
                t.hour() * 60 + t.minute()
            }
        }
    }

    /// Whether `version` was refused within the last [`REFUSAL_HOLD`].
    fn is_refused(&self, version: &str) -> bool {
        self.refused
            .get(version)
            .is_some_and(|until| unix_now() < *until)
    }

    /// Remembers a refusal of `version` for [`REFUSAL_HOLD`] (a release published after the
    /// server named it, or metadata cached on the way, is looked at again later).
    fn hold_refusal(&mut self, version: &str) {
        let now = unix_now();
        self.refused.retain(|_, until| *until > now);
        self.refused
            .insert(version.to_string(), now + REFUSAL_HOLD.as_secs());
        while self.refused.len() > 64 {
            let Some(k) = self.refused.keys().next().cloned() else {
                break;
            };
            self.refused.remove(&k);
        }
        if let Ok(bytes) = serde_json::to_vec(&self.refused) {
            let _ =
                crate::state::atomic::write_file(&self.state.agent().join("refused.json"), &bytes);
        }
    }

    /// Queues a refusal the updater never saw (the agent's own policy said no).
    fn report_refusal(&mut self, from: Option<&Version>, to: &Version, why: &str) {
        let r = UpdateResult {
            seq: 0,
            finished_at: formats::time_util::now()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            from: from.map(|v| v.to_string()),
            to: to.to_string(),
            method: "none".into(),
            bytes: 0,
            seconds: 0.0,
            ok: false,
            error_kind: Some("refused".into()),
            error_message: Some(clip(why, MAX_TEXT)),
            started_by: Some("agent".into()),
        };
        if let Err(e) = self.state.results().append(r) {
            self.emit(AgentEvent::Warning {
                message: format!("could not queue the refusal report: {e}"),
            });
        }
    }

    /// Moves towards the release `d` names, if the device's policy allows it now. `forced`
    /// (an `update-now` command) ignores the maintenance window and earlier failures.
    fn follow(&mut self, d: &Directive, forced: bool) -> Followed {
        let Ok(want) = Version::parse(&d.version) else {
            let why = format!("the server named {:?}, which is not a version", d.version);
            self.emit(AgentEvent::Refused {
                version: clip(&d.version, MAX_SHORT),
                reason: why.clone(),
            });
            return Followed::Refused(why);
        };
        let (installed, _) = self.installed();
        if installed.as_ref() == Some(&want) {
            return Followed::Nothing;
        }
        if forced {
            self.retry_at.remove(&d.version);
        }
        if let Some((_, at)) = self.retry_at.get(&d.version) {
            if Instant::now() < *at {
                return Followed::Waiting("retrying after a failed attempt".into());
            }
        }
        if let Some(inst) = installed.as_ref().filter(|i| **i > want) {
            let key = format!("{} below {inst}", d.version);
            if !self.cfg.updater.allow_downgrade && self.is_refused(&key) {
                return Followed::Nothing;
            }
            // The one downgrade the device's policy never needs to allow: away from a release
            // the release engineer yanked in signed metadata (the updater checks it again).
            let yanked = !self.cfg.updater.allow_downgrade
                && Updater::new(self.cfg.updater.clone(), |_| {})
                    .check()
                    .is_ok_and(|c| c.installed_yanked.is_some());
            if !self.cfg.updater.allow_downgrade && !yanked {
                let why = format!(
                    "the server named {want}, older than the installed {inst}; this device's policy does not allow downgrades"
                );
                self.report_refusal(Some(inst), &want, &why);
                self.hold_refusal(&key);
                self.emit(AgentEvent::Refused {
                    version: d.version.clone(),
                    reason: why.clone(),
                });
                return Followed::Refused(why);
            }
        }
        if self.is_refused(&d.version) || self.declined.contains(&d.version) {
            return Followed::Nothing;
        }
        let mut cfg = self.cfg.updater.clone();
        cfg.target = Some(want.clone());
        cfg.started_by = "agent".into();
        if cfg.allow_running_pid.is_none() {
            // An app running the agent in a thread may update its own files.
            cfg.allow_running_pid = Some(std::process::id());
        }
        match self.cfg.install {
            InstallPolicy::Now => {}
            InstallPolicy::Window(w) => {
                let m = self.minute_now();
                if !forced && !w.contains(m) {
                    self.prefetch(&d.version, &cfg);
                    let why = format!(
                        "maintenance window {w} opens in {} min",
                        w.minutes_until_open(m)
                    );
                    self.emit(AgentEvent::Waiting {
                        version: d.version.clone(),
                        reason: why.clone(),
                    });
                    return Followed::Waiting(why);
                }
            }
            InstallPolicy::Ask => {
                let u = Updater::new(cfg.clone(), |_| {});
                let offer = match u.check() {
                    Ok(c) => Offer {
                        version: d.version.clone(),
                        installed: c.installed.clone(),
                        download_bytes: c.download_bytes,
                        restart_required: c.restart_required,
                        method: c.method.clone(),
                        notes: c.notes.clone(),
                    },
                    Err(e @ crate::Error::Refused(_)) => {
                        let why = e.to_string();
                        self.report_refusal(installed.as_ref(), &want, &why);
                        self.hold_refusal(&d.version);
                        self.emit(AgentEvent::Refused {
                            version: d.version.clone(),
                            reason: why.clone(),
                        });
                        return Followed::Refused(why);
                    }
                    Err(e) => {
                        let why = format!("could not prepare the offer: {e}");
                        self.emit(AgentEvent::Waiting {
                            version: d.version.clone(),
                            reason: why.clone(),
                        });
                        return Followed::Waiting(why);
                    }
                };
                let decision = match self.offer.as_mut() {
                    Some(f) => f(&offer),
                    None => OfferDecision::Defer,
                };
                match decision {
                    OfferDecision::Accept => {}
                    OfferDecision::Defer => {
                        let why = "the app deferred the offer".to_string();
                        self.emit(AgentEvent::Waiting {
                            version: d.version.clone(),
                            reason: why.clone(),
                        });
                        return Followed::Waiting(why);
                    }
                    OfferDecision::Decline => {
                        self.declined.insert(d.version.clone());
                        self.emit(AgentEvent::Declined {
                            version: d.version.clone(),
                        });
                        return Followed::Waiting("the app declined the offer".into());
                    }
                }
            }
        }
        let cold = match self.prepare_app(&mut cfg) {
            Ok(cold) => cold,
            Err(why) => return Followed::Failed(why),
        };
        self.emit(AgentEvent::Installing {
            version: d.version.clone(),
        });
        match self.run_update(cfg, cold) {
            Ok(r) => {
                self.recognised = None;
                self.retry_at.remove(&d.version);
                self.emit(AgentEvent::Installed {
                    version: r.to.clone(),
                    method: r.method.clone(),
                    bytes: r.downloaded_bytes,
                    restart_required: r.restart_required,
                });
                Followed::Installed
            }
            Err(e) => {
                let kind = error_kind(&e);
                let why = e.to_string();
                if kind == "refused" {
                    self.hold_refusal(&d.version);
                    self.emit(AgentEvent::Refused {
                        version: d.version.clone(),
                        reason: why.clone(),
                    });
                    return Followed::Refused(why);
                }
                let n = self.retry_at.get(&d.version).map_or(0, |(n, _)| *n) + 1;
                let wait = self
                    .interval()
                    .saturating_mul(1 << n.min(8))
                    .min(Duration::from_secs(6 * 3600));
                self.retry_at
                    .insert(d.version.clone(), (n, Instant::now() + wait));
                self.emit(AgentEvent::UpdateFailed {
                    version: d.version.clone(),
                    kind: kind.into(),
                    error: why.clone(),
                });
                Followed::Failed(why)
            }
        }
    }

    /// Downloads `version` ahead of the maintenance window ([`Updater::prefetch`]: into the
    /// download cache, staged to check it, the app dir untouched), once per release; a failed
    /// download is tried again after [`PREFETCH_RETRY`].
    fn prefetch(&mut self, version: &str, cfg: &Config) {
        match self.prefetched.get(version) {
            Some(None) => return,
            Some(Some(at)) if Instant::now() < *at => return,
            _ => {}
        }
        let events = Arc::clone(&self.events);
        let r = Updater::new(cfg.clone(), move |e| {
            if let Event::Warning { message } = e {
                events(&AgentEvent::Warning {
                    message: message.clone(),
                });
            }
        })
        .prefetch();
        match r {
            Ok(r) => {
                self.prefetched.insert(version.to_string(), None);
                self.emit(AgentEvent::Prefetched {
                    version: version.to_string(),
                    bytes: r.downloaded_bytes,
                });
            }
            Err(e) => {
                self.prefetched
                    .insert(version.to_string(), Some(Instant::now() + PREFETCH_RETRY));
                self.emit(AgentEvent::Warning {
                    message: format!("downloading {version} ahead of the window: {e}"),
                });
            }
        }
        while self.prefetched.len() > 16 {
            let Some(k) = self.prefetched.keys().next().cloned() else {
                break;
            };
            self.prefetched.remove(&k);
        }
    }

    /// Readies a supervised app for the update `cfg` describes: a cold patch (one that replaces
    /// files the running app holds) stops it first, a warm one lets the update replace files
    /// of the running process. `Ok(true)` for a cold patch; `Err` says why the app could not be
    /// stopped. Without a supervised app, `Ok(false)` and nothing happens.
    fn prepare_app(&mut self, cfg: &mut Config) -> Result<bool, String> {
        let cold = self.control.is_some()
            && Updater::new(cfg.clone(), |_| {})
                .check()
                .map(|c| c.restart_required)
                .unwrap_or(true);
        if let Some(c) = self.control.as_mut() {
            if cold {
                c.stop()
                    .map_err(|e| format!("could not stop the app: {e}"))?;
                self_patcher::testhook::pause("agent-app-stopped");
            } else {
                cfg.allow_running_pid = c.pid();
            }
        }
        Ok(cold)
    }

    /// Runs one update, the updater's warnings forwarded as agent events, then starts the
    /// supervised app again after a cold patch or tells it its files changed after a warm one.
    fn run_update(&mut self, cfg: Config, cold: bool) -> crate::Result<crate::report::ApplyReport> {
        let events = Arc::clone(&self.events);
        let applied = Updater::new(cfg, move |e| {
            if let Event::Warning { message } = e {
                events(&AgentEvent::Warning {
                    message: message.clone(),
                });
            }
        })
        .apply();
        if let Some(c) = self.control.as_mut() {
            if cold {
                if let Err(e) = c.start() {
                    self.emit(AgentEvent::Warning {
                        message: format!("could not start the app again: {e}"),
                    });
                }
            } else if applied.is_ok() {
                c.updated_in_place();
            }
        }
        applied
    }

    /// Carries out one command.
    fn command(&mut self, c: &Command, resp: &CheckInResponse) -> CommandResult {
        let res = |outcome, message: String, data| CommandResult {
            outcome,
            message: Some(clip(&message, MAX_TEXT)),
            data,
        };
        match c.kind {
            CommandKind::ReportState => match collect::read_state(&self.cfg.state) {
                Ok(Some(v)) => res(CommandOutcome::Ok, "state document".into(), Some(v)),
                Ok(None) => res(
                    CommandOutcome::Failed,
                    "no state source configured (--state-cmd or --state-file)".into(),
                    None,
                ),
                Err(e) => res(CommandOutcome::Failed, e, None),
            },
            CommandKind::UploadLogs => self.upload_logs(&c.id),
            CommandKind::SetInterval => {
                match c.args.get("secs").and_then(serde_json::Value::as_u64) {
                    Some(s)
                        if (policy::MIN_INTERVAL.as_secs()..=policy::MAX_INTERVAL.as_secs())
                            .contains(&s) =>
                    {
                        self.interval_override = Some(Duration::from_secs(s));
                        res(CommandOutcome::Ok, format!("polling every {s} s"), None)
                    }
                    _ => res(
                        CommandOutcome::Rejected,
                        format!(
                            "args.secs must be a number of seconds from {} to {}",
                            policy::MIN_INTERVAL.as_secs(),
                            policy::MAX_INTERVAL.as_secs()
                        ),
                        None,
                    ),
                }
            }
            CommandKind::RestartApp if self.control.is_some() => {
                let r = self
                    .control
                    .as_mut()
                    .map(|c| c.stop().and_then(|()| c.start()));
                match r {
                    Some(Ok(pid)) => {
                        res(CommandOutcome::Ok, format!("restarted (pid {pid})"), None)
                    }
                    Some(Err(e)) => res(CommandOutcome::Failed, e, None),
                    None => res(CommandOutcome::Failed, "no app".into(), None),
                }
            }
            CommandKind::RestartApp => match self.restart.as_mut() {
                Some(f) => match f() {
                    Ok(m) => res(CommandOutcome::Ok, m, None),
                    Err(m) => res(CommandOutcome::Failed, m, None),
                },
                None => res(
                    CommandOutcome::Rejected,
                    "this agent does not supervise the app (--supervise)".into(),
                    None,
                ),
            },
            CommandKind::UpdateNow => {
                let Some(d) = resp
                    .directive
                    .clone()
                    .filter(|_| resp.status == DeviceStatus::Active)
                else {
                    return res(
                        CommandOutcome::Ok,
                        "the server names no release; nothing to do".into(),
                        None,
                    );
                };
                match self.follow(&d, true) {
                    Followed::Nothing => res(
                        CommandOutcome::Ok,
                        format!("{} is installed", d.version),
                        None,
                    ),
                    Followed::Installed => {
                        res(CommandOutcome::Ok, format!("installed {}", d.version), None)
                    }
                    Followed::Refused(why) => res(CommandOutcome::Rejected, why, None),
                    Followed::Waiting(why) | Followed::Failed(why) => {
                        res(CommandOutcome::Failed, why, None)
                    }
                }
            }
        }
    }

    /// Uploads the files of the supervised app's crashes (`PUT /v1/uploads?crash=ID`) and
    /// notes each upload id (or why not) in the crash report; true when there were any.
    fn upload_crash_files(&mut self) -> bool {
        let Some(mut control) = self.control.take() else {
            return false;
        };
        let pending = control.take_crash_uploads();
        let mut down = false;
        for mut u in pending.iter().cloned() {
            if down {
                // The server is unreachable: the rest waits for the next check-in.
                control.crash_upload_later(u);
                continue;
            }
            let name = clip(&format!("crash-{}/{}", u.crash, u.name), MAX_SHORT);
            let sent = collect::open_candidate(&u.file)
                .map_err(|e| (false, format!("{}: {e}", u.file.path.display())))
                .and_then(|reader| {
                    let first = Mutex::new(Some(reader));
                    self.with_token(|cl, t| {
                        let r = match first.lock().ok().and_then(|mut g| g.take()) {
                            Some(r) => r,
                            None => collect::open_candidate(&u.file)
                                .map_err(|e| AgentError::Config(e.to_string()))?,
                        };
                        cl.upload_crash_file(t, &u.crash, &name, r, u.file.size)
                    })
                    .map(|r| r.id)
                    .map_err(|e| {
                        let passing = matches!(
                            e,
                            AgentError::Unreachable { .. }
                                | AgentError::Status {
                                    status: 429 | 500..,
                                    ..
                                }
                        );
                        (passing, clip(&e.to_string(), MAX_TEXT))
                    })
                });
            match sent {
                Err((true, e)) if u.attempts + 1 < CRASH_UPLOAD_TRIES => {
                    self.emit(AgentEvent::Warning {
                        message: format!("crash file {} (tried again later): {e}", u.name),
                    });
                    u.attempts += 1;
                    down = true;
                    control.crash_upload_later(u);
                }
                Err((_, e)) => {
                    self.emit(AgentEvent::Warning {
                        message: format!("crash file {}: {e}", u.name),
                    });
                    control.crash_uploaded(&u, Err(e));
                }
                Ok(id) => control.crash_uploaded(&u, Ok(id)),
            }
        }
        self.control = Some(control);
        !pending.is_empty()
    }

    /// `upload-logs`: sends the selected files, newest first, and says what was skipped.
    fn upload_logs(&mut self, command: &str) -> CommandResult {
        if self.cfg.logs.is_empty() && self.cfg.crash_dir.is_none() {
            return CommandResult {
                outcome: CommandOutcome::Failed,
                message: Some("no log files configured (--logs or --crash-dir)".into()),
                data: None,
            };
        }
        let sel = collect::select_files(
            &self.cfg.logs,
            self.cfg.crash_dir.as_deref(),
            self.cfg.upload_cap,
        );
        let mut skipped = sel.skipped.clone();
        let mut receipts = Vec::new();
        for f in &sel.files {
            let name = clip(&f.path.display().to_string(), MAX_SHORT);
            let sent = collect::open_candidate(f)
                .map_err(|e| e.to_string())
                .and_then(|reader| {
                    // The reader is consumed by the request: open again on a retry.
                    let first = std::sync::Mutex::new(Some(reader));
                    self.with_token(|cl, t| {
                        let r = match first.lock().ok().and_then(|mut g| g.take()) {
                            Some(r) => r,
                            None => collect::open_candidate(f)
                                .map_err(|e| AgentError::Config(e.to_string()))?,
                        };
                        cl.upload(t, command, &name, r, f.size)
                    })
                    .map_err(|e| e.to_string())
                });
            match sent {
                Ok(r) => receipts.push(serde_json::json!({
                    "name": name, "id": r.id, "size": r.size, "blake3": r.blake3,
                })),
                Err(e) => {
                    skipped.push((f.path.display().to_string(), format!("upload failed: {e}")))
                }
            }
        }
        let message = if skipped.is_empty() {
            format!("uploaded {} file(s)", receipts.len())
        } else {
            format!(
                "uploaded {} file(s); skipped {}: {}",
                receipts.len(),
                skipped.len(),
                skipped
                    .iter()
                    .map(|(p, r)| format!("{p} ({r})"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        let skipped_json: Vec<_> = skipped
            .iter()
            .take(100)
            .map(|(p, r)| serde_json::json!({"path": clip(p, 512), "reason": clip(r, 512)}))
            .collect();
        CommandResult {
            outcome: if receipts.is_empty() && !sel.files.is_empty() {
                CommandOutcome::Failed
            } else {
                CommandOutcome::Ok
            },
            message: Some(clip(&message, MAX_TEXT)),
            data: Some(serde_json::json!({"uploads": receipts, "skipped": skipped_json})),
        }
    }
}

/// How long after a failed download ahead of the window the agent tries again.
pub const PREFETCH_RETRY: Duration = Duration::from_secs(600);

/// How long a refused release is left alone before the agent looks at it again.
pub const REFUSAL_HOLD: Duration = Duration::from_secs(3600);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The answer kept between runs.
#[derive(serde::Deserialize, Serialize)]
struct SavedAnswer {
    /// The server it came from (another server's answer is not used).
    server: String,
    etag: String,
    answer: CheckInResponse,
}

/// Rejects an answer that breaks the protocol (wrong version, bad ids) as a whole.
fn check_answer(url: &str, r: &CheckInResponse) -> Result<(), AgentError> {
    let bad = |reason: String| AgentError::BadAnswer {
        url: url.to_string(),
        reason,
    };
    if r.protocol != formats::fleet::PROTOCOL {
        return Err(bad(format!(
            "protocol {} (this agent speaks 1)",
            r.protocol
        )));
    }
    if r.commands.len() > 100 {
        return Err(bad("more than 100 commands".into()));
    }
    for c in &r.commands {
        formats::fleet::check_id("commands[].id", &c.id).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// This machine's host name, if it can be read.
fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())?;
    let h = h.trim();
    (!h.is_empty() && formats::fleet::check_short("hostname", h).is_ok()).then(|| h.to_string())
}
