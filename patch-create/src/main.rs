//! `patch-create`: the release engineer's command line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use patch_create::encode::EncodeOptions;
use patch_create::progress::{NoProgress, Progress};
use patch_create::release::{PatchesFrom, ReleaseOptions};

#[derive(Parser)]
#[command(name = "patch-create", version, about = "Write and extend signed patch repositories from release trees")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate an Ed25519 key pair: DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub.
    Keygen {
        /// Directory to write the key files into.
        #[arg(long)]
        out: PathBuf,
        /// Base name of the key files.
        #[arg(long, default_value = "release")]
        name: String,
    },
    /// Add a release to a repository (created if it does not exist).
    Release(ReleaseArgs),
    /// Check every signature, hash and patch of a repository and print a size report.
    Verify {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The root public key clients pin.
        #[arg(long)]
        public_key: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ReleaseArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// The release tree.
    #[arg(long)]
    root: PathBuf,
    /// The release's semantic version (e.g. 1.2.0, 2.0.0-beta.1).
    #[arg(long)]
    version: String,
    /// Secret key file(s); repeat when roles need several signatures.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Application name (default: the repository's, or the repository directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Tree of an earlier release to read old contents from (default: the repository itself).
    #[arg(long = "prev-root")]
    prev_roots: Vec<PathBuf>,
    /// Glob of user paths that are neither shipped nor deleted by updates (repeatable).
    #[arg(long = "ignore")]
    ignore: Vec<String>,
    /// Glob of paths that are code: changing them needs a restart (repeatable).
    #[arg(long = "code")]
    code: Vec<String>,
    /// Glob of paths that are resources: never need a restart (repeatable).
    #[arg(long = "resource")]
    resources: Vec<String>,
    /// Mark the release as needing a restart whatever changes.
    #[arg(long)]
    restart_required: bool,
    /// Build incremental patches from every earlier version, not only the previous one.
    #[arg(long)]
    patches_from_all: bool,
    /// Keep only the N newest versions; older ones are pruned.
    #[arg(long)]
    keep: Option<usize>,
    /// Lifetime of the signed metadata (e.g. 90d, 12h, 2s).
    #[arg(long, default_value = "90d")]
    expires: String,
    /// zstd level of installer and repair files (1-22).
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// zstd level of patch members (1-22).
    #[arg(long, default_value_t = 19)]
    patch_level: i32,
    /// Release channel (e.g. stable, beta).
    #[arg(long)]
    channel: Option<String>,
    /// Targeting constraint KEY=VALUE that clients must match (repeatable).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Print one JSON object describing what was written.
    #[arg(long)]
    json: bool,
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_message(phase.to_string());
    }
    fn advance(&self, amount: u64) {
        self.0.inc(amount);
    }
    fn finish(&self) {}
}

fn progress() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Box::new(Bar(pb))
    } else {
        Box::new(NoProgress)
    }
}

fn parse_targets(items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for t in items {
        let (k, v) = t
            .split_once('=')
            .with_context(|| format!("--target {t:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            bail!("--target {t:?} has an empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn release(a: ReleaseArgs) -> Result<()> {
    let version = formats::Version::parse(&a.version)?;
    let mut keys = Vec::new();
    for k in &a.keys {
        keys.push(patch_create::keyfile::load_secret(k).with_context(|| format!("cannot use key {}", k.display()))?);
    }
    let opts = ReleaseOptions {
        repo: a.repo,
        root: a.root,
        version,
        keys,
        name: a.name,
        prev_roots: a.prev_roots,
        ignore: a.ignore,
        code: a.code,
        resources: a.resources,
        restart_required: a.restart_required,
        patches_from: if a.patches_from_all { PatchesFrom::All } else { PatchesFrom::Previous },
        keep: a.keep,
        expires: formats::time_util::parse_duration(&a.expires)?,
        level: a.level,
        encode: EncodeOptions {
            level: a.patch_level,
            ..EncodeOptions::default()
        },
        channel: a.channel,
        targeting: parse_targets(&a.targets)?,
    };
    let p = progress();
    let report = patch_create::release::release(&opts, p.as_ref())?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!(
            "released {} {}: {} files, {} bytes; installer {} bytes",
            report.app, report.version, report.files, report.file_bytes, report.installer.bytes
        );
        for pr in &report.patches {
            eprintln!("  patch {} -> {}: {} bytes {:?}", pr.from, pr.to, pr.bytes, pr.encodings);
        }
        eprintln!(
            "  repair files: {} ({} new, {} bytes new)",
            report.repair.files, report.repair.new_files, report.repair.new_bytes
        );
    }
    Ok(())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Keygen { out, name } => {
            let (s, p) = patch_create::keyfile::generate(&out, &name)?;
            eprintln!("wrote {} (secret, keep it safe) and {}", s.display(), p.display());
            Ok(())
        }
        Cmd::Release(a) => release(a),
        Cmd::Verify { repo, public_key, json } => {
            let key = patch_create::keyfile::load_public(&public_key)?;
            let report = patch_create::verify::verify(&repo, &key)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.problems.is_empty() {
                bail!("{} problem(s) found in {}", report.problems.len(), repo.display());
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
