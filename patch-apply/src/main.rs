//! `patch-apply`: update an installed app from a patch repository.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use patch_apply::{Config, Event, Method, MethodChoice, Updater};

#[derive(Parser)]
#[command(
    name = "patch-apply",
    version,
    about = "Update an installed app from a signed patch repository",
    after_help = cli_support::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    verbosity: cli_support::Verbosity,
}

/// How much goes to stderr besides errors.
use cli_support::Level as Verbosity;

#[derive(Subcommand)]
enum Cmd {
    /// Say what an update would do, without changing the app dir.
    Check(Common),
    /// Update the app dir to the newest release for this client.
    Apply {
        #[command(flatten)]
        common: Common,
        /// Which method to use.
        #[arg(long, value_enum, default_value = "auto")]
        method: MethodArg,
        /// Allow installing a version lower than the installed one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Do not refuse when processes run from the app dir.
        #[arg(long)]
        ignore_running: bool,
        /// Install into a non-empty directory that holds no release and no install record
        /// (refused otherwise): what is there is kept, or quarantined where the release needs
        /// its place, never deleted.
        #[arg(long)]
        adopt: bool,
        /// For an app updating itself: if the update changes code (restart required), stage and
        /// verify it, then hand it over to self-patcher and return; the app must exit, and
        /// self-patcher replaces its files, records the version and runs the relaunch command
        /// given after `--`. An update without code changes is applied in place (warm patch).
        #[arg(long)]
        hand_over: bool,
        /// The self-patcher executable [default: `self-patcher` next to this executable].
        #[arg(long, value_name = "PATH", requires = "hand_over")]
        self_patcher: Option<PathBuf>,
        /// The process self-patcher waits for before changing anything [default: the parent
        /// of this process, i.e. the app that runs `patch-apply`].
        #[arg(long, value_name = "PID", requires = "hand_over")]
        wait_pid: Option<u32>,
        /// How long self-patcher waits for that process to exit (30s, 5m).
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "60s",
            value_parser = humantime::parse_duration,
            requires = "hand_over"
        )]
        wait_timeout: std::time::Duration,
        /// Run PROGRAM once an update is in place without a hand-over, e.g. `--notify kill
        /// --notify-arg -HUP --notify-arg 1234` to make a running app reload its resources
        /// after a warm patch. No shell is involved: PROGRAM gets exactly the `--notify-arg`
        /// values as its arguments, on every platform.
        #[arg(long, value_name = "PROGRAM")]
        notify: Option<PathBuf>,
        /// One argument for the --notify program (repeat for more; passed unchanged).
        #[arg(
            long,
            value_name = "ARG",
            requires = "notify",
            allow_hyphen_values = true
        )]
        notify_arg: Vec<String>,
        /// With --hand-over: the command that relaunches the app, after `--`
        /// (`-- /opt/app/bin/app --flag`).
        #[arg(last = true, value_name = "RELAUNCH")]
        relaunch: Vec<String>,
    },
    /// Roll back an interrupted update, if any.
    Recover {
        /// The app directory.
        #[arg(long, env = "PATCHKIT_APP_DIR", hide_env_values = true)]
        app_dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Return to the version before the last update (while its backup is kept).
    Rollback {
        /// The app directory.
        #[arg(long, env = "PATCHKIT_APP_DIR", hide_env_values = true)]
        app_dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show or reset the signed metadata an app dir trusts (kept for rollback protection).
    Trust {
        #[command(subcommand)]
        cmd: TrustCmd,
    },
    /// Run the fleet agent: enroll with a patch-server, check in, report every update attempt,
    /// carry out commands, and install the release the server names (only if the verified
    /// repository offers it, and never a downgrade unless --allow-downgrade).
    Agent(Box<AgentArgs>),
    #[command(flatten)]
    Tool(cli_support::ToolCmd),
}

#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    common: Common,
    /// The fleet server's URL (optional with --watch-dir: an agent for machines without one).
    #[arg(
        long,
        env = "PATCHKIT_SERVER",
        hide_env_values = true,
        required_unless_present = "watch_dir"
    )]
    server: Option<String>,
    /// A directory to look in at every poll for offline bundles (`*.bundle`, from
    /// `patch-create bundle`): the newest usable one is applied, then each is moved to
    /// DIR/applied/ or DIR/rejected/ (with NAME.reason). Write bundles there under another name
    /// and rename them, or copy them in whole: a file still changing is left for the next poll.
    #[arg(long, value_name = "DIR")]
    watch_dir: Option<PathBuf>,
    /// The app's name on the server [default: the repository's].
    #[arg(long)]
    app: Option<String>,
    /// File holding the app's enrollment secret.
    #[arg(long, value_name = "FILE")]
    enroll_secret_file: Option<PathBuf>,
    /// Poll interval until the server names one (60s, 5m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    interval: std::time::Duration,
    /// Longest wait between check-ins while the server is unreachable.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    max_backoff: std::time::Duration,
    /// First wait after a failed check-in (doubled for each further failure).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    backoff: std::time::Duration,
    /// A targeting attribute KEY=VALUE sent to the server (repeatable; also --target).
    #[arg(long = "attr")]
    attrs: Vec<String>,
    /// A shell command whose output (JSON) is the app's state document (10 s, 64 KiB at most).
    #[arg(long, conflicts_with = "state_file")]
    state_cmd: Option<String>,
    /// A file holding the app's state document (JSON).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Log files `upload-logs` sends (a glob; repeatable).
    #[arg(long = "logs", value_name = "GLOB")]
    logs: Vec<String>,
    /// A directory of crash files `upload-logs` sends.
    #[arg(long)]
    crash_dir: Option<PathBuf>,
    /// Most bytes one `upload-logs` sends.
    #[arg(long, default_value_t = 16 << 20)]
    upload_cap: u64,
    /// When to install the release the server names: now, window=HH:MM-HH:MM (local time), or
    /// ask (runs --on-offer).
    #[arg(long, default_value = "now")]
    install: String,
    /// With --install ask: a shell command that decides on an offer (environment:
    /// PATCHKIT_OFFER_VERSION, PATCHKIT_OFFER_INSTALLED, PATCHKIT_OFFER_BYTES,
    /// PATCHKIT_OFFER_RESTART). Exit 0 accepts, 2 declines, anything else defers.
    #[arg(long, value_name = "CMD")]
    on_offer: Option<String>,
    /// Allow installing a release older than the installed one when the server names it.
    #[arg(long)]
    allow_downgrade: bool,
    /// One check-in cycle, then exit (non-zero if the server could not be reached).
    #[arg(long, conflicts_with = "supervise")]
    once: bool,
    /// Run the app given after `--` as a child: restart it when it exits on its own (with a
    /// growing delay; crashes are reported in the state document), stop it for cold patches
    /// (SIGTERM, SIGKILL after --grace) and start it again, send it SIGHUP after warm patches,
    /// and restart it on `restart-app`.
    #[arg(long)]
    supervise: bool,
    /// How long a stop waits after SIGTERM before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
    /// With --supervise: the app's command and arguments, after `--`.
    #[arg(last = true, value_name = "APP")]
    app_cmd: Vec<String>,
}

#[derive(Subcommand)]
enum TrustCmd {
    /// Show the stored trust: root, timestamp and snapshot versions and expiry.
    Show {
        /// The app directory.
        #[arg(long, env = "PATCHKIT_APP_DIR", hide_env_values = true)]
        app_dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Forget the stored trust, so that the next check or apply trusts the repository anew
    /// from the pinned public key, as a fresh install does. For a repository that was
    /// re-created, or an app moved to another repository signed with the same key: this gives
    /// up the protection against older metadata (a rollback attack) for that one run.
    Reset {
        /// The app directory.
        #[arg(long, env = "PATCHKIT_APP_DIR", hide_env_values = true)]
        app_dir: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// The app directory.
    #[arg(long, env = "PATCHKIT_APP_DIR", hide_env_values = true)]
    app_dir: PathBuf,
    /// Repository path or URL; repeat for mirrors (first preferred). Required unless --bundle
    /// (or, for the agent, --watch-dir) is given.
    #[arg(long = "repo", env = "PATCHKIT_REPO", hide_env_values = true)]
    repos: Vec<String>,
    /// An offline bundle (`patch-create bundle`) to use instead of a repository: verified with
    /// the same signed-metadata checks, nothing fetched from the network.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// With --bundle (or the agent's --watch-dir): accept metadata that has expired by now if
    /// it was valid when the bundle was made, for machines offline for longer than the
    /// metadata lives. Rollback protection still holds; see docs/security.md.
    #[arg(long)]
    allow_expired_bundle: bool,
    /// Pinned root public key file(s). The variable holds a key file's path or its contents.
    #[arg(
        long = "public-key",
        required = true,
        env = PUBLIC_KEY_ENV,
        hide_env_values = true,
        value_parser = cli_support::KeySource::parse
    )]
    public_keys: Vec<cli_support::KeySource>,
    /// The client's channel.
    #[arg(long, default_value = "stable")]
    channel: String,
    /// The client's targeting attribute KEY=VALUE (repeatable).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Machine-readable output (JSON lines for apply, one object for check).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    net: NetArgs,
}

/// Network settings (HTTP repositories).
#[derive(Args)]
struct NetArgs {
    /// Downloads that run at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// How long to wait for an answer or for the next bytes of a download (30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// How long to wait for a connection.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    connect_timeout: std::time::Duration,
    /// Retries per file and mirror after a failed attempt.
    #[arg(long, default_value_t = 4)]
    retries: u32,
    /// Wait before the first retry (doubled for each further one, with jitter; 500ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    retry_backoff: std::time::Duration,
    /// Slowest acceptable download speed in bytes per second (0: no minimum).
    #[arg(long, default_value_t = 1024)]
    min_speed: u64,
    /// The time over which the minimum speed is measured.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    min_speed_window: std::time::Duration,
}

/// The variable `--public-key` falls back to.
const PUBLIC_KEY_ENV: &str = "PATCHKIT_PUBLIC_KEY";

/// `check` and `apply` need a repository or a bundle, not both (a repository from
/// `PATCHKIT_REPO` gives way to `--bundle`).
fn need_repo(c: &Common) -> Result<()> {
    if c.repos.is_empty() && c.bundle.is_none() {
        return Err(cli_support::usage(
            "give the repository (--repo PATH_OR_URL) or an offline bundle (--bundle FILE)",
        ));
    }
    if c.bundle.is_some() && !repos_from_env_only(c) && !c.repos.is_empty() {
        return Err(cli_support::usage(
            "give either --repo or --bundle, not both",
        ));
    }
    Ok(())
}

/// Whether the repositories are exactly the one `PATCHKIT_REPO` names (so not given with
/// `--repo`, or given as the same).
fn repos_from_env_only(c: &Common) -> bool {
    std::env::var("PATCHKIT_REPO").is_ok_and(|r| c.repos == [r])
}

#[derive(Clone, Copy, ValueEnum)]
enum MethodArg {
    Auto,
    Incremental,
    Repair,
    Installer,
}

fn config(c: &Common) -> Result<Config> {
    let mut keys = Vec::new();
    for k in &c.public_keys {
        let bytes = k.bytes()?;
        keys.push(
            formats::keys::PublicKey::from_json(&k.label(PUBLIC_KEY_ENV), &bytes)
                .map_err(|e| k.error(e))?,
        );
    }
    let mut attrs = BTreeMap::new();
    for t in &c.targets {
        let (k, v) = t
            .split_once('=')
            .with_context(|| format!("--target {t:?} is not KEY=VALUE"))?;
        attrs.insert(k.to_string(), v.to_string());
    }
    let repos = match &c.bundle {
        Some(b) => {
            if !b.is_file() {
                bail!("--bundle {}: not a file", b.display());
            }
            vec![b.display().to_string()]
        }
        None => c.repos.clone(),
    };
    if keys.is_empty() {
        return Err(cli_support::usage(format!(
            "give the pinned public key (--public-key FILE or ${PUBLIC_KEY_ENV})"
        )));
    }
    let mut cfg = Config::new(&c.app_dir, String::new(), keys.remove(0));
    cfg.repos = repos;
    cfg.allow_expired_bundle = c.allow_expired_bundle;
    if c.allow_expired_bundle
        && c.bundle.is_none()
        && c.repos
            .iter()
            .any(|r| patch_apply::fetch::Location::parse(r).is_ok_and(|l| !l.is_bundle()))
    {
        bail!("--allow-expired-bundle applies to offline bundles only (--bundle or --watch-dir), not to --repo");
    }
    cfg.public_keys.extend(keys);
    cfg.channel = c.channel.clone();
    cfg.attrs = attrs;
    let n = &c.net;
    cfg.http = patch_apply::http::HttpOptions {
        connect_timeout: n.connect_timeout,
        read_timeout: n.timeout,
        min_speed: n.min_speed,
        min_speed_window: n.min_speed_window,
        retries: n.retries,
        backoff: n.retry_backoff,
        parallel: n.parallel.max(1),
        ..cfg.http.clone()
    };
    Ok(cfg)
}

/// Whether `e` is shown at verbosity `v`: quiet drops progress, warnings and retries; requests
/// (and, for people, phases) only with verbose.
fn shown(e: &Event, v: Verbosity) -> bool {
    match e {
        Event::Request { .. } => v == Verbosity::Verbose,
        Event::Progress { .. }
        | Event::Resumed { .. }
        | Event::Warning { .. }
        | Event::Retry { .. }
        | Event::Fallback { .. } => v != Verbosity::Quiet,
        _ => true,
    }
}

/// The stderr line of a retry.
fn retry_line(e: &Event) -> Option<String> {
    let Event::Retry {
        url,
        attempt,
        reason,
        delay_ms,
        retries_left,
    } = e
    else {
        return None;
    };
    Some(format!(
        "warning: {url}: attempt {attempt} failed ({reason}); retrying in {:.1} s ({retries_left} {} left)",
        *delay_ms as f64 / 1000.0,
        if *retries_left == 1 { "retry" } else { "retries" }
    ))
}

/// Events of a command whose stdout is one report (`check`): warnings, retries and requests
/// go to stderr as text, also with `--json`.
fn stderr_printer(v: Verbosity) -> impl Fn(&Event) + Send + Sync + 'static {
    move |e: &Event| {
        if !shown(e, v) {
            return;
        }
        match e {
            Event::Warning { message } => eprintln!("warning: {message}"),
            Event::Retry { .. } => eprintln!("{}", retry_line(e).unwrap_or_default()),
            Event::Request {
                url,
                status,
                from_byte,
            } => eprintln!("{url}: HTTP {status}{}", from_suffix(*from_byte)),
            Event::Phase { phase } if v == Verbosity::Verbose => eprintln!("phase: {phase}"),
            _ => {}
        }
    }
}

fn from_suffix(from_byte: u64) -> String {
    if from_byte > 0 {
        format!(" (from byte {from_byte})")
    } else {
        String::new()
    }
}

/// The progress bar's look for bytes (downloads) or for entries (applying, extracting).
fn bar_style(bytes: bool) -> ProgressStyle {
    let template = if bytes {
        "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg:>8} [{bar:30}] {pos}/{len} files eta {eta}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn event_printer(json: bool, v: Verbosity) -> impl Fn(&Event) + Send + Sync + 'static {
    let bar: Option<Arc<Mutex<ProgressBar>>> =
        (!json && v != Verbosity::Quiet && std::io::stderr().is_terminal()).then(|| {
            let pb = ProgressBar::new(0);
            pb.set_style(bar_style(true));
            Arc::new(Mutex::new(pb))
        });
    let start = std::time::Instant::now();
    // A line printed while the bar is drawn goes above it.
    let line = {
        let bar = bar.clone();
        move |text: String| match bar.as_ref().and_then(|b| b.lock().ok()) {
            Some(b) => b.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    };
    move |e: &Event| {
        if !shown(e, v) {
            return;
        }
        if json {
            // Each event line carries `t`, seconds since the command started, so callers can
            // time the phases.
            if let Ok(mut v) = serde_json::to_value(e) {
                if let Some(o) = v.as_object_mut() {
                    o.insert("t".into(), serde_json::json!(start.elapsed().as_secs_f64()));
                }
                println!("{v}");
            }
            return;
        }
        match (e, &bar) {
            // One bar for the bytes of the download phase (totals cover parallel downloads).
            (
                Event::Progress {
                    phase: "download",
                    done,
                    total,
                },
                Some(b),
            ) => {
                if let Ok(b) = b.lock() {
                    b.set_message("download");
                    b.set_length(*total);
                    b.set_position(*done);
                }
            }
            // Bytes of a resumed file were counted at once: the speed starts over from here.
            (Event::Resumed { path, bytes }, Some(b)) => {
                if let Ok(b) = b.lock() {
                    b.reset_eta();
                    b.suspend(|| eprintln!("{path}: resumed, {bytes} bytes already on disk"));
                }
            }
            // A second bar for the entries applied (patch operations, installer entries).
            (
                Event::Progress {
                    phase: "apply",
                    done,
                    total,
                },
                Some(b),
            ) if *total > 0 => {
                if let Ok(mut b) = b.lock() {
                    if b.message() != "apply" || b.is_finished() {
                        if b.length().unwrap_or(0) > 0 && !b.is_finished() {
                            b.finish();
                            eprintln!();
                        }
                        *b = ProgressBar::new(*total);
                        b.set_style(bar_style(false));
                        b.set_message("apply");
                    }
                    b.set_length(*total);
                    b.set_position(*done);
                }
            }
            (Event::Phase { phase }, Some(b)) if *phase != "download" => {
                if let Ok(b) = b.lock() {
                    if b.length().unwrap_or(0) > 0 && !b.is_finished() {
                        b.finish();
                        eprintln!();
                    }
                }
            }
            (Event::Phase { phase: "download" }, Some(b)) => {
                if let Ok(mut b) = b.lock() {
                    if b.is_finished() || b.position() > 0 || b.message() == "apply" {
                        *b = ProgressBar::new(0);
                        b.set_style(bar_style(true));
                    }
                }
            }
            (Event::Plan { method, bytes, .. }, _) if v != Verbosity::Quiet => {
                line(format!("plan: {method}, {bytes} bytes to download"))
            }
            (Event::Fallback { method, error }, _) => {
                line(format!("{method} failed ({error}); trying the next method"))
            }
            (Event::Warning { message }, _) => line(format!("warning: {message}")),
            (Event::Retry { .. }, _) => line(retry_line(e).unwrap_or_default()),
            (
                Event::Request {
                    url,
                    status,
                    from_byte,
                },
                _,
            ) => line(format!("{url}: HTTP {status}{}", from_suffix(*from_byte))),
            (Event::Resumed { path, bytes }, _) => {
                line(format!("{path}: resumed, {bytes} bytes already on disk"))
            }
            (Event::Phase { phase }, _) if v == Verbosity::Verbose => {
                line(format!("phase: {phase}"))
            }
            (Event::Quarantined { path, to }, _) => line(format!(
                "quarantined {path} (in the way of the release; now {to})"
            )),
            _ => {}
        }
    }
}

fn run() -> Result<()> {
    let cli: Cli = cli_support::parse();
    cli_support::init_logging(&cli.verbosity, false);
    let verbosity = cli.verbosity.level();
    match cli.cmd {
        Cmd::Check(c) => {
            need_repo(&c)?;
            let u = Updater::new(config(&c)?, stderr_printer(verbosity));
            let r = u.check()?;
            if let (false, Some(m)) = (c.json, &r.maintenance) {
                println!(
                    "repository under maintenance{}; updates are paused{}",
                    if m.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", m.message)
                    },
                    if m.app_may_start {
                        ""
                    } else {
                        " and the app should not start"
                    }
                );
            }
            if c.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if r.up_to_date {
                println!(
                    "{} is up to date ({})",
                    c.app_dir.display(),
                    r.latest.unwrap_or_default()
                );
            } else {
                println!(
                    "installed: {}, latest: {}; would use {} ({} bytes){}",
                    r.install_state,
                    r.latest.as_deref().unwrap_or("none"),
                    r.method,
                    r.download_bytes,
                    if r.restart_required {
                        ", restart required"
                    } else {
                        ""
                    }
                );
                if let Some(n) = r.note {
                    println!("note: {n}");
                }
                println!("incremental: {}", r.incremental);
                if let Some(why) = &r.refused {
                    println!("apply would refuse: {why}");
                }
            }
            if !c.json {
                print_list("would delete", &r.would_delete);
                print_list("would replace", &r.would_replace);
                print_list(
                    "would quarantine (not the updater's, in the way)",
                    &r.would_quarantine,
                );
                print_list("would keep (not the updater's)", &r.would_keep);
            }
            Ok(())
        }
        Cmd::Apply {
            common,
            method,
            allow_downgrade,
            ignore_running,
            adopt,
            hand_over,
            self_patcher,
            wait_pid,
            wait_timeout,
            notify,
            notify_arg,
            relaunch,
        } => {
            need_repo(&common)?;
            let mut cfg = config(&common)?;
            cfg.started_by = "cli".into();
            cfg.allow_downgrade = allow_downgrade;
            cfg.check_running = !ignore_running;
            cfg.adopt = adopt;
            cfg.method = match method {
                MethodArg::Auto => MethodChoice::Auto,
                MethodArg::Incremental => MethodChoice::Only(Method::Incremental),
                MethodArg::Repair => MethodChoice::Only(Method::Repair),
                MethodArg::Installer => MethodChoice::Only(Method::Installer),
            };
            let u = Updater::new(cfg, event_printer(common.json, verbosity));
            let r = if hand_over {
                let h = patch_apply::HandOver {
                    self_patcher: match self_patcher {
                        Some(p) => p,
                        None => std::env::current_exe()
                            .context(
                                "cannot locate this executable to find self-patcher next to it",
                            )?
                            .with_file_name(format!(
                                "self-patcher{}",
                                std::env::consts::EXE_SUFFIX
                            )),
                    },
                    wait_pid: match wait_pid {
                        Some(p) => p,
                        None => parent_pid()?,
                    },
                    wait_timeout,
                    relaunch,
                    relaunch_cwd: None,
                };
                match u.apply_with_handover(&h)? {
                    patch_apply::ApplyOutcome::InPlace { report } => report,
                    out @ patch_apply::ApplyOutcome::HandedOver { .. } => {
                        if common.json {
                            println!("{}", serde_json::to_string(&out)?);
                        } else if let patch_apply::ApplyOutcome::HandedOver {
                            report,
                            self_patcher_pid,
                            plan,
                        } = &out
                        {
                            println!(
                                "update to {} staged; handed over to self-patcher (pid {self_patcher_pid}, plan {}); exit the app (pid {}) to finish it",
                                report.to,
                                plan.display(),
                                h.wait_pid
                            );
                        }
                        return Ok(());
                    }
                }
            } else {
                u.apply()?
            };
            if let (Some(program), false) = (&notify, r.method == "none") {
                let cmd = program.display();
                let st = std::process::Command::new(program)
                    .args(&notify_arg)
                    .status()
                    .with_context(|| {
                        format!(
                            "update to {} is in place, but --notify {cmd} could not start",
                            r.to
                        )
                    })?;
                if !st.success() {
                    bail!(
                        "update to {} is in place, but --notify {cmd} failed ({st})",
                        r.to
                    );
                }
            }
            if common.json && hand_over {
                println!(
                    "{}",
                    serde_json::to_string(&patch_apply::ApplyOutcome::InPlace { report: r })?
                );
            } else if common.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if r.method == "none" {
                println!("{} is up to date ({})", common.app_dir.display(), r.to);
                print_list("kept (not the updater's)", &r.kept);
            } else {
                println!(
                    "updated {} from {} to {} by {} ({} bytes downloaded){}",
                    common.app_dir.display(),
                    r.from_state,
                    r.to,
                    r.method,
                    r.downloaded_bytes,
                    if r.fallbacks.is_empty() {
                        String::new()
                    } else {
                        format!("; fell back after: {}", r.fallbacks.join("; "))
                    }
                );
                if !r.repaired.is_empty() {
                    print_list(
                        "from repair files (differed from the installed release)",
                        &r.repaired,
                    );
                }
                for q in &r.quarantined {
                    println!("quarantined: {} -> {}", q.path, q.to);
                }
                print_list("deleted", &r.deleted);
                print_list("kept (not the updater's)", &r.kept);
            }
            Ok(())
        }
        Cmd::Recover { app_dir, json } => {
            let app_dir = patch_apply::state::resolve_app_dir(&app_dir);
            let state = patch_apply::state::StateDir::of(&app_dir);
            if !state.root.exists() {
                bail!("{} has no updater state", app_dir.display());
            }
            let _lock = state.lock()?;
            let r = patch_apply::commit::recover(&app_dir, &state)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{r}");
            }
            Ok(())
        }
        Cmd::Rollback { app_dir, json } => {
            // Also restores the install record the update replaced.
            let r = patch_apply::updater::rollback_app_dir_report(&app_dir)?;
            for w in patch_apply::updater::rollback_warnings(&r) {
                eprintln!("warning: {w}");
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "rolled back {} to {}{}",
                    if r.interrupted_update {
                        format!("the interrupted update to {}", r.undone)
                    } else {
                        r.undone.clone()
                    },
                    r.restored.as_deref().unwrap_or("the previous state"),
                    match (r.resumed, r.kept.len()) {
                        (true, 0) => " (finished an interrupted rollback)".to_string(),
                        (true, n) => format!(
                            " (finished an interrupted rollback; {n} changed file(s) kept in {})",
                            r.quarantine
                                .as_ref()
                                .map(|q| q.display().to_string())
                                .unwrap_or_default()
                        ),
                        (false, 0) => String::new(),
                        (false, n) => format!(
                            " ({n} changed file(s) kept in {})",
                            r.quarantine
                                .as_ref()
                                .map(|q| q.display().to_string())
                                .unwrap_or_default()
                        ),
                    }
                );
            }
            Ok(())
        }
        Cmd::Trust { cmd } => trust(cmd, verbosity),
        Cmd::Agent(a) => agent(*a, verbosity),
        Cmd::Tool(t) => t.run::<Cli>(),
    }
}

/// `patch-apply agent`.
fn agent(a: AgentArgs, v: Verbosity) -> Result<()> {
    use patch_apply::agent::{
        Agent, AgentConfig, AgentEvent, InstallPolicy, OfferDecision, StateSource,
    };
    if a.common.bundle.is_some() {
        bail!("the agent takes bundles from --watch-dir, not --bundle");
    }
    if a.common.repos.is_empty() && a.server.is_some() {
        bail!("--repo is required with --server (the releases the server names come from it)");
    }
    let mut cfg = config(&a.common)?;
    for t in &a.attrs {
        let (k, val) = t
            .split_once('=')
            .with_context(|| format!("--attr {t:?} is not KEY=VALUE"))?;
        cfg.attrs.insert(k.to_string(), val.to_string());
    }
    cfg.allow_downgrade = a.allow_downgrade;
    let mut ac = AgentConfig::new(a.server.clone().unwrap_or_default(), cfg);
    ac.app = a.app.clone();
    ac.watch_dir = a.watch_dir.clone();
    if let Some(f) = &a.enroll_secret_file {
        ac.enroll_secret = Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .trim()
                .to_string(),
        );
    }
    ac.interval = a.interval;
    ac.backoff_initial = a.backoff;
    ac.backoff_cap = a.max_backoff;
    ac.install = InstallPolicy::parse(&a.install).map_err(anyhow::Error::msg)?;
    ac.state = match (&a.state_cmd, &a.state_file) {
        (Some(c), _) => StateSource::Command(c.clone()),
        (None, Some(f)) => StateSource::File(f.clone()),
        (None, None) => StateSource::None,
    };
    ac.logs = a.logs.clone();
    ac.crash_dir = a.crash_dir.clone();
    ac.upload_cap = a.upload_cap;
    // Tests (and people trying a window) set the local time of day: HH:MM.
    if let Ok(t) = std::env::var("PATCHKIT_AGENT_LOCAL_TIME") {
        let m = patch_apply::agent::policy::parse_hhmm(&t)
            .map_err(|e| anyhow::anyhow!("PATCHKIT_AGENT_LOCAL_TIME: {e}"))?;
        ac.local_time = Some(Arc::new(move || m));
    }
    if matches!(ac.install, InstallPolicy::Ask) && a.on_offer.is_none() {
        bail!("--install ask needs --on-offer CMD");
    }
    let json = a.common.json;
    let printer = move |e: &AgentEvent| {
        if json {
            if let Ok(s) = serde_json::to_string(e) {
                println!("{s}");
            }
            return;
        }
        if v == Verbosity::Quiet {
            return;
        }
        let quiet_kind = matches!(e, AgentEvent::CheckedIn { .. });
        if quiet_kind && v != Verbosity::Verbose {
            return;
        }
        eprintln!("agent: {}", describe_agent_event(e));
    };
    let mut agent = Agent::new(ac, printer)?;
    if let Some(cmd) = a.on_offer.clone() {
        agent = agent.on_offer(move |o| {
            let st = patch_apply::agent::collect::shell_command(&cmd)
                .env("PATCHKIT_OFFER_VERSION", &o.version)
                .env(
                    "PATCHKIT_OFFER_INSTALLED",
                    o.installed.clone().unwrap_or_default(),
                )
                .env("PATCHKIT_OFFER_BYTES", o.download_bytes.to_string())
                .env(
                    "PATCHKIT_OFFER_RESTART",
                    if o.restart_required { "1" } else { "0" },
                )
                .status();
            match st.map(|s| s.code()) {
                Ok(Some(0)) => OfferDecision::Accept,
                Ok(Some(2)) => OfferDecision::Decline,
                _ => OfferDecision::Defer,
            }
        });
    }
    if a.once {
        let c = agent.run_once()?;
        if json {
            println!(
                "{}",
                serde_json::json!({"event": "cycle", "installed": c.installed, "directive": c.directive, "next_in_secs": c.next_in.as_secs_f64()})
            );
        }
        return Ok(());
    }
    if a.supervise {
        if a.app_cmd.is_empty() {
            bail!("--supervise needs the app's command after `--`");
        }
        #[cfg(unix)]
        return patch_apply::agent::supervise::Supervisor::new(a.app_cmd.clone(), a.grace)
            .run(agent)
            .map_err(anyhow::Error::msg);
        #[cfg(not(unix))]
        bail!(
            "--supervise is available on Unix only (it stops the app with SIGTERM and tells it \
             to reload with SIGHUP); on Windows run the agent without it (docs/platforms.md)"
        );
    }
    // SIGTERM ends the process at once: every state file is written atomically, and an update
    // is journaled, so nothing is left half-done.
    agent.run();
    Ok(())
}

/// One line for a person.
fn describe_agent_event(e: &patch_apply::agent::AgentEvent) -> String {
    use patch_apply::agent::AgentEvent as E;
    match e {
        E::Enrolled { device_id, status } => format!("enrolled as {device_id} ({status})"),
        E::CheckedIn {
            http_status,
            directive,
            commands,
            ..
        } => format!(
            "checked in (HTTP {http_status}); release named: {}; {commands} command(s)",
            directive.as_deref().unwrap_or("none")
        ),
        E::Unreachable {
            error,
            retry_in_secs,
            ..
        } => format!("{error}; next try in {retry_in_secs:.1} s"),
        E::Installing { version } => format!("installing {version}"),
        E::Installed {
            version,
            method,
            bytes,
            ..
        } => format!("installed {version} by {method} ({bytes} bytes downloaded)"),
        E::UpdateFailed {
            version,
            kind,
            error,
        } => format!("update to {version} failed ({kind}): {error}"),
        E::Refused { version, reason } => format!("refused {version}: {reason}"),
        E::Prefetched { version, bytes } => {
            format!("downloaded {version} ahead of the window ({bytes} bytes)")
        }
        E::Waiting { version, reason } => format!("{version} waits: {reason}"),
        E::Declined { version } => format!("the offer of {version} was declined"),
        E::Command {
            id,
            kind,
            outcome,
            message,
        } => format!(
            "command {kind} ({id}): {outcome}{}",
            message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        E::Warning { message } => format!("warning: {message}"),
    }
}

/// Prints `label: a, b, c` (the first few), nothing for an empty list.
fn print_list(label: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    const SHOWN: usize = 10;
    let mut line = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        line.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    println!("{label}: {line}");
}

/// `trust show` and `trust reset`.
fn trust(cmd: TrustCmd, v: Verbosity) -> Result<()> {
    match cmd {
        TrustCmd::Show { app_dir, json } => {
            let s = patch_apply::trust::summary(&app_dir)?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else if s.files.is_empty() {
                println!(
                    "{} trusts no stored metadata: the next run starts from the pinned public key",
                    app_dir.display()
                );
            } else {
                println!(
                    "{} trusts (stored in {}):",
                    app_dir.display(),
                    s.dir.display()
                );
                for f in &s.files {
                    println!("  {}", describe_stored(f));
                }
                if !s.anchor.is_empty() {
                    println!("  under pinned key(s) {}", s.anchor.join(", "));
                }
            }
            Ok(())
        }
        TrustCmd::Reset { app_dir } => {
            let s = patch_apply::trust::summary(&app_dir)?;
            if s.files.is_empty() && !s.dir.exists() {
                println!(
                    "{} has no stored trust; nothing to reset",
                    app_dir.display()
                );
                return Ok(());
            }
            if v != Verbosity::Quiet {
                eprintln!(
                    "removing the metadata {} trusts, stored in {}:",
                    app_dir.display(),
                    s.dir.display()
                );
                for f in &s.files {
                    eprintln!("  {}", describe_stored(f));
                }
            }
            let removed = patch_apply::trust::reset(&app_dir)?;
            println!(
                "removed {} file(s) of stored trust from {}; the next check or apply trusts the repository anew from the pinned public key",
                removed.len(),
                s.dir.display()
            );
            Ok(())
        }
    }
}

fn describe_stored(f: &patch_apply::trust::StoredFile) -> String {
    format!(
        "{}: version {}{}",
        f.path.display(),
        f.version
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unreadable".into()),
        f.expires
            .as_deref()
            .map(|e| format!(", expires {e}"))
            .unwrap_or_default()
    )
}

fn main() -> ExitCode {
    cli_support::finish(run(), error_kind)
}

/// The `kind` of a JSON error: which check of the updater failed.
fn error_kind(e: &anyhow::Error) -> Option<&'static str> {
    use patch_apply::Error as E;
    let e = e.chain().find_map(|c| c.downcast_ref::<E>())?;
    Some(match e {
        E::Format(_) => "format",
        E::Io { .. } => "io",
        E::Fetch { .. } => "fetch",
        E::NotFound { .. } => "not_found",
        E::BadArtifact { .. } => "bad_artifact",
        E::Verify { .. } => "verify",
        E::Precondition(_) => "precondition",
        E::Refused(_) => "refused",
        E::AllMethodsFailed(_) => "all_methods_failed",
        E::BadLocation { .. } => "bad_location",
        E::Cancelled => "cancelled",
        E::StuckTrust { .. } => "stuck_trust",
        _ => "error",
    })
}

/// The PID of the process that started this one (the app running `patch-apply`), through
/// sysinfo so that it works the same on every OS.
fn parent_pid() -> Result<u32> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let me = Pid::from_u32(std::process::id());
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[me]),
        true,
        ProcessRefreshKind::nothing(),
    );
    sys.process(me)
        .and_then(|p| p.parent())
        .map(|p| p.as_u32())
        .context("cannot find the parent process to wait for; give --wait-pid")
}
