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
#[command(name = "patch-apply", version, about = "Update an installed app from a signed patch repository")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

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
    },
    /// Roll back an interrupted update, if any.
    Recover {
        /// The app directory.
        #[arg(long)]
        app_dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Return to the version before the last update (while its backup is kept).
    Rollback {
        /// The app directory.
        #[arg(long)]
        app_dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct Common {
    /// The app directory.
    #[arg(long)]
    app_dir: PathBuf,
    /// Repository path or URL; repeat for mirrors (first preferred).
    #[arg(long = "repo", required = true)]
    repos: Vec<String>,
    /// Pinned root public key file(s).
    #[arg(long = "public-key", required = true)]
    public_keys: Vec<PathBuf>,
    /// The client's channel.
    #[arg(long, default_value = "stable")]
    channel: String,
    /// The client's targeting attribute KEY=VALUE (repeatable).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Machine-readable output (JSON lines for apply, one object for check).
    #[arg(long)]
    json: bool,
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
        let bytes = std::fs::read(k).with_context(|| format!("cannot read public key {}", k.display()))?;
        keys.push(formats::keys::PublicKey::from_json(&k.display().to_string(), &bytes)?);
    }
    let mut attrs = BTreeMap::new();
    for t in &c.targets {
        let (k, v) = t.split_once('=').with_context(|| format!("--target {t:?} is not KEY=VALUE"))?;
        attrs.insert(k.to_string(), v.to_string());
    }
    let mut cfg = Config::new(&c.app_dir, c.repos[0].clone(), keys.remove(0));
    cfg.repos = c.repos.clone();
    cfg.public_keys.extend(keys);
    cfg.channel = c.channel.clone();
    cfg.attrs = attrs;
    Ok(cfg)
}

fn event_printer(json: bool) -> impl Fn(&Event) + Send + Sync + 'static {
    let bar: Option<Arc<Mutex<ProgressBar>>> = (!json && std::io::stderr().is_terminal()).then(|| {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Arc::new(Mutex::new(pb))
    });
    move |e: &Event| {
        if json {
            if let Ok(s) = serde_json::to_string(e) {
                println!("{s}");
            }
            return;
        }
        match (e, &bar) {
            (Event::Progress { phase, done, total }, Some(b)) => {
                if let Ok(b) = b.lock() {
                    b.set_message(*phase);
                    b.set_length(*total);
                    b.set_position(*done);
                }
            }
            (Event::Plan { method, bytes, .. }, _) => eprintln!("plan: {method}, {bytes} bytes to download"),
            (Event::Fallback { method, error }, _) => eprintln!("{method} failed ({error}); trying the next method"),
            (Event::Warning { message }, _) => eprintln!("warning: {message}"),
            _ => {}
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check(c) => {
            let u = Updater::new(config(&c)?, |_| {});
            let r = u.check()?;
            if c.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if r.up_to_date {
                println!("{} is up to date ({})", c.app_dir.display(), r.latest.unwrap_or_default());
            } else {
                println!(
                    "installed: {}, latest: {}; would use {} ({} bytes){}",
                    r.installed.as_deref().unwrap_or("none"),
                    r.latest.as_deref().unwrap_or("none"),
                    r.method,
                    r.download_bytes,
                    if r.restart_required { ", restart required" } else { "" }
                );
                if let Some(n) = r.note {
                    println!("note: {n}");
                }
            }
            Ok(())
        }
        Cmd::Apply { common, method, allow_downgrade, ignore_running } => {
            let mut cfg = config(&common)?;
            cfg.allow_downgrade = allow_downgrade;
            cfg.check_running = !ignore_running;
            cfg.method = match method {
                MethodArg::Auto => MethodChoice::Auto,
                MethodArg::Incremental => MethodChoice::Only(Method::Incremental),
                MethodArg::Repair => MethodChoice::Only(Method::Repair),
                MethodArg::Installer => MethodChoice::Only(Method::Installer),
            };
            let u = Updater::new(cfg, event_printer(common.json));
            let r = u.apply()?;
            if common.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if r.method == "none" {
                println!("{} is up to date ({})", common.app_dir.display(), r.to);
            } else {
                println!(
                    "updated {} from {} to {} by {} ({} bytes downloaded){}",
                    common.app_dir.display(),
                    r.from.as_deref().unwrap_or("nothing"),
                    r.to,
                    r.method,
                    r.downloaded_bytes,
                    if r.fallbacks.is_empty() { String::new() } else { format!("; fell back after: {}", r.fallbacks.join("; ")) }
                );
            }
            Ok(())
        }
        Cmd::Recover { app_dir, json } => {
            let state = patch_apply::state::StateDir::of(&app_dir);
            if !state.root.exists() {
                bail!("{} has no updater state", app_dir.display());
            }
            let _lock = state.lock()?;
            let r = patch_apply::commit::recover(&app_dir, &state)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{r:?}");
            }
            Ok(())
        }
        Cmd::Rollback { app_dir, json } => {
            let state = patch_apply::state::StateDir::of(&app_dir);
            let _lock = state.lock()?;
            let restored = patch_apply::commit::rollback(&app_dir, &state)?;
            if let (Some(v), Some(mut rec)) = (&restored, state.load_record()) {
                rec.previous = None;
                rec.version = v.clone();
                // The tree digest is re-derived on the next check.
                state.save_record(&rec)?;
            }
            let v = restored.map(|v| v.to_string());
            if json {
                println!("{}", serde_json::json!({ "restored": v }));
            } else {
                println!("rolled back to {}", v.as_deref().unwrap_or("the previous state"));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
