//! `patch-create`: the release engineer's command line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use cli_support::KeySource;
use indicatif::{ProgressBar, ProgressStyle};
use patch_create::encode::EncodeOptions;
use patch_create::progress::{NoProgress, Progress};
use patch_create::release::{PatchesFrom, ReleaseOptions};

#[derive(Parser)]
#[command(
    name = "patch-create",
    version,
    about = "Write and extend signed patch repositories from release trees",
    after_help = cli_support::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    verbosity: cli_support::Verbosity,
    /// Accept an --expires (or --resign-expires) shorter than a day.
    #[arg(long, global = true)]
    expires_short_ok: bool,
}

/// 0: quiet, 1: normal, 2: verbose.
static VERBOSITY: AtomicU8 = AtomicU8::new(1);
static EXPIRES_SHORT_OK: AtomicBool = AtomicBool::new(false);

/// Prints to stderr unless `--quiet`.
macro_rules! info {
    ($($t:tt)*) => {
        if VERBOSITY.load(Ordering::Relaxed) >= 1 {
            eprintln!($($t)*);
        }
    };
}

/// Prints to stderr with `--verbose` only.
macro_rules! detail {
    ($($t:tt)*) => {
        if VERBOSITY.load(Ordering::Relaxed) >= 2 {
            eprintln!($($t)*);
        }
    };
}

/// Parses the metadata lifetime given to `--{opt}`; one shorter than a day is refused unless
/// `--expires-short-ok`: clients stop accepting the metadata after it and cannot update until
/// someone re-signs.
fn lifetime(opt: &str, s: &str) -> Result<time::Duration> {
    let d = formats::time_util::parse_duration(s)?;
    if d < time::Duration::days(1) && !EXPIRES_SHORT_OK.load(Ordering::Relaxed) {
        bail!(
            "--{opt} {s} = {}: clients refuse metadata that old and cannot update until it is \
             re-signed; give a lifetime of a day or more (e.g. 30d), or pass --expires-short-ok \
             if so short a lifetime is meant",
            patch_create::verify::duration_words(d)
        );
    }
    Ok(d)
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
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Add a release to a repository (created if it does not exist).
    Release(Box<ReleaseArgs>),
    /// Manage the root and release keys of a repository (docs/keys.md).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Sign the current release metadata again with a new expiry, without a new release.
    Resign {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Release secret key file(s); repeat to reach the threshold. The variable holds a
        /// key file's path or its contents (for CI without key files on disk).
        #[arg(long = "key", required = true, env = SIGNING_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
        keys: Vec<KeySource>,
        /// Lifetime of the re-signed metadata (e.g. 90d, 12h, 2s).
        #[arg(long, default_value = "90d")]
        expires: String,
    },
    /// Put the repository under maintenance (clients report it and do not update), or end it.
    Maintenance(MaintenanceArgs),
    /// Withdraw a release in signed metadata: clients never install it, and clients running it
    /// move to the newest release that is not yanked, even an older one. `--undo` lifts it.
    Yank(YankArgs),
    /// Set the mirrors clients try after the repository URL they were given.
    Mirrors {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Release secret key file(s); repeat to reach the threshold. The variable holds a
        /// key file's path or its contents (for CI without key files on disk).
        #[arg(long = "key", required = true, env = SIGNING_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
        keys: Vec<KeySource>,
        /// Mirror base URL (repeat; none clears the list).
        #[arg(long = "mirror")]
        mirrors: Vec<String>,
        /// Lifetime of the new metadata (e.g. 90d, 12h).
        #[arg(long, default_value = "90d")]
        expires: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Serve a repository over HTTP (GET, HEAD, Range) for local tests and demos.
    Serve {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Address to listen on (port 0: any free port, printed at start). `--quiet` does not
        /// log each request.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
    },
    /// Copy a repository to object storage or a directory (docs/hosting.md): only what the
    /// destination lacks, in an order clients always see as consistent (timestamp.json last);
    /// objects the repository no longer has are deleted after a grace period.
    Publish(PublishArgs),
    /// Write an offline bundle: one file with the signed metadata and exactly the artifacts
    /// that take installs of the --from versions to the newest release, for `patch-apply apply
    /// --bundle` or an agent's --watch-dir on machines without network.
    Bundle(BundleArgs),
    /// Check every signature, hash and patch of a repository and print a size report.
    Verify {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The root public key clients pin. The variable holds a key file's path or its
        /// contents.
        #[arg(long, env = PUBLIC_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
        public_key: KeySource,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Tool(cli_support::ToolCmd),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a repository whose root key(s) name separate release signing key(s).
    Init {
        /// The repository directory (must have no root yet).
        #[arg(long)]
        repo: PathBuf,
        /// Root secret key file(s) (keep offline); repeat for several. The variable holds a
        /// key file's path or its contents.
        #[arg(long = "root-key", required = true, env = ROOT_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
        root_keys: Vec<KeySource>,
        /// Root signatures required on later root versions.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// Release public key file(s) allowed to sign releases; repeat for several.
        #[arg(long = "release-key", required = true)]
        release_keys: Vec<PathBuf>,
        /// Release signatures required on release metadata.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Lifetime of the root metadata.
        #[arg(long, default_value = "365d")]
        expires: String,
    },
    /// Write a new root version: add, revoke or re-threshold release keys, rotate root keys,
    /// or just extend the root's expiry.
    Update(KeysUpdateArgs),
}

#[derive(clap::Args)]
struct KeysUpdateArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// Root secret key file(s) signing the new root: the current root key(s) and, when
    /// rotating, the new one(s). The variable holds a key file's path or its contents.
    #[arg(long = "root-key", required = true, env = ROOT_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
    root_keys: Vec<KeySource>,
    /// Release public key file to allow (repeatable).
    #[arg(long = "add-release-key")]
    add: Vec<PathBuf>,
    /// Release public key file to revoke (repeatable).
    #[arg(long = "revoke-release-key")]
    revoke: Vec<PathBuf>,
    /// New release threshold.
    #[arg(long)]
    threshold: Option<u32>,
    /// Replace the root keys by these public key files (repeatable): root key rotation.
    #[arg(long = "new-root-key")]
    new_root_keys: Vec<PathBuf>,
    /// Root threshold (with --new-root-key).
    #[arg(long, default_value_t = 1)]
    root_threshold: u32,
    /// Lifetime of the new root metadata.
    #[arg(long, default_value = "365d")]
    expires: String,
    /// Release secret key file(s): re-sign the release metadata under the new root right away
    /// (needed after a revocation, so clients accept the repository again). Not read from
    /// PATCHKIT_SIGNING_KEY: re-signing here is asked for explicitly.
    #[arg(long = "key", value_parser = KeySource::parse)]
    resign_keys: Vec<KeySource>,
    /// Lifetime of the re-signed release metadata (with --key).
    #[arg(long, default_value = "90d")]
    resign_expires: String,
}

/// The variable `--key` (release signing keys) falls back to.
const SIGNING_KEY_ENV: &str = "PATCHKIT_SIGNING_KEY";
/// The variable `--root-key` falls back to.
const ROOT_KEY_ENV: &str = "PATCHKIT_ROOT_KEY";
/// The variable `--public-key` falls back to.
const PUBLIC_KEY_ENV: &str = "PATCHKIT_PUBLIC_KEY";

/// Loads secret keys (`env` is the variable they may come from), naming the file or variable
/// that cannot be used, never a key's contents.
fn load_secrets(keys: &[KeySource], env: &str) -> Result<Vec<formats::keys::KeyPair>> {
    keys.iter()
        .map(|k| {
            // The key error names the file or variable; a parser's quote of the contents is
            // redacted.
            let bytes = k.bytes()?;
            formats::keys::KeyPair::from_json(&k.label(env), &bytes).map_err(|e| k.error(e))
        })
        .collect()
}

/// Loads public keys given as files or through `PATCHKIT_PUBLIC_KEY`.
fn load_public_sources(keys: &[KeySource]) -> Result<Vec<formats::keys::PublicKey>> {
    keys.iter()
        .map(|k| {
            let bytes = k.bytes()?;
            formats::keys::PublicKey::from_json(&k.label(PUBLIC_KEY_ENV), &bytes)
                .map_err(|e| k.error(e))
        })
        .collect()
}

fn load_publics(paths: &[PathBuf]) -> Result<Vec<formats::keys::PublicKey>> {
    paths
        .iter()
        .map(|k| {
            patch_create::keyfile::load_public(k)
                .with_context(|| format!("cannot read public key {}", k.display()))
        })
        .collect()
}

fn keys_cmd(cmd: KeysCmd) -> Result<()> {
    use patch_create::keys_admin::{self, KeyChange};
    let now = formats::time_util::now();
    let report = match cmd {
        KeysCmd::Init {
            repo,
            root_keys,
            root_threshold,
            release_keys,
            threshold,
            expires,
        } => {
            let roots = load_secrets(&root_keys, ROOT_KEY_ENV)?;
            let refs: Vec<&formats::keys::KeyPair> = roots.iter().collect();
            let release = load_publics(&release_keys)?;
            let exp = now + lifetime("expires", &expires)?;
            keys_admin::init(&repo, &refs, root_threshold, &release, threshold, exp)?
        }
        KeysCmd::Update(a) => {
            let roots = load_secrets(&a.root_keys, ROOT_KEY_ENV)?;
            let refs: Vec<&formats::keys::KeyPair> = roots.iter().collect();
            let mut changes = vec![KeyChange::Extend];
            changes.extend(
                load_publics(&a.add)?
                    .into_iter()
                    .map(KeyChange::AddReleaseKey),
            );
            changes.extend(
                load_publics(&a.revoke)?
                    .into_iter()
                    .map(KeyChange::RevokeReleaseKey),
            );
            if let Some(t) = a.threshold {
                changes.push(KeyChange::SetReleaseThreshold(t));
            }
            if !a.new_root_keys.is_empty() {
                changes.push(KeyChange::SetRootKeys(
                    load_publics(&a.new_root_keys)?,
                    a.root_threshold,
                ));
            }
            let exp = now + lifetime("expires", &a.expires)?;
            let rexp = if a.resign_keys.is_empty() {
                None
            } else {
                Some(now + lifetime("resign-expires", &a.resign_expires)?)
            };
            let r = keys_admin::update_root(&a.repo, &refs, &changes, exp)?;
            if let Some(rexp) = rexp {
                let keys = load_secrets(&a.resign_keys, SIGNING_KEY_ENV)?;
                let krefs: Vec<&formats::keys::KeyPair> = keys.iter().collect();
                let rs = keys_admin::resign(&a.repo, &krefs, rexp)?;
                info!(
                    "re-signed release metadata: timestamp version {}",
                    rs.timestamp_version
                );
            }
            r
        }
    };
    info!(
        "root version {}: root keys {} (threshold {}), release keys {} (threshold {}), expires {}",
        report.root_version,
        report
            .root_keys
            .iter()
            .map(|k| &k[..12])
            .collect::<Vec<_>>()
            .join(","),
        report.root_threshold,
        report
            .release_keys
            .iter()
            .map(|k| &k[..12])
            .collect::<Vec<_>>()
            .join(","),
        report.release_threshold,
        report.expires
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
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
    /// Secret key file(s); repeat when roles need several signatures. The variable holds a key
    /// file's path or its contents (for CI without key files on disk).
    #[arg(long = "key", required = true, env = SIGNING_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
    keys: Vec<KeySource>,
    /// Application name (default: the repository's, or the repository directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Tree of an earlier release to read old contents from (default: the repository itself).
    #[arg(long = "prev-root")]
    prev_roots: Vec<PathBuf>,
    /// Glob of user paths that are neither shipped nor deleted by updates (repeatable). The
    /// previous release's patterns are kept too unless dropped.
    #[arg(long = "ignore")]
    ignore: Vec<String>,
    /// Glob of stray paths clients may delete although no release lists them, such as caches
    /// the app writes (`*.pyc`); anything else unknown in an app dir is kept (repeatable).
    #[arg(long = "owned", value_name = "GLOB")]
    owned: Vec<String>,
    /// Do not carry the previous release's --ignore patterns forward (clients may then delete
    /// users' files they covered).
    #[arg(long)]
    no_inherit_ignore: bool,
    /// Drop this --ignore pattern of the previous release (repeatable; clients may then delete
    /// users' files it covered).
    #[arg(long = "drop-ignore", value_name = "PATTERN")]
    drop_ignore: Vec<String>,
    /// Glob of paths that are code: changing them needs a restart (repeatable).
    #[arg(long = "code")]
    code: Vec<String>,
    /// Glob of paths that are resources: never need a restart (repeatable).
    #[arg(long = "resource")]
    resources: Vec<String>,
    /// Mark the release as needing a restart whatever changes.
    #[arg(long)]
    restart_required: bool,
    /// Release notes for people (a text or Markdown file, at most 16 KiB), shown by `check`,
    /// the library's offer and the fleet dashboard.
    #[arg(long, value_name = "FILE")]
    notes: Option<PathBuf>,
    /// A link for people, e.g. the issue the release fixes (repeat, at most 16).
    #[arg(long = "link", value_name = "URL")]
    links: Vec<String>,
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
    /// Memory the diffs may hold at once (e.g. 512MiB, 2GiB; 512M means 512 × 10^6 bytes):
    /// pairs whose whole-file diff needs more are diffed in windows sized from it
    /// (docs/encodings.md, "Bounded memory"). Default: 4 × the pair's larger file, between
    /// 256MiB and 4GiB.
    #[arg(long, value_parser = parse_size)]
    memory_budget: Option<u64>,
    /// Do not try the executable-aware candidates (`exe-project-diff` and `exe-split-diff`,
    /// docs/format.md §6.2.5-6) on ELF, PE and Mach-O files: diffing them takes about half the
    /// time, patches of changed executables may be much larger.
    #[arg(long)]
    no_exe_diff: bool,
    /// Build the installer by compressing the whole tree as one frame, as before the installer
    /// reused repair files (for measurements: bench/release-time.sh).
    #[arg(long, hide = true)]
    solid_installer: bool,
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
    if std::io::stderr().is_terminal() && VERBOSITY.load(Ordering::Relaxed) >= 1 {
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
    let keys = load_secrets(&a.keys, SIGNING_KEY_ENV)?;
    let opts = ReleaseOptions {
        repo: a.repo,
        root: a.root,
        version,
        keys,
        name: a.name,
        prev_roots: a.prev_roots,
        ignore: a.ignore,
        owned: a.owned,
        ignore_carry: patch_create::release::IgnoreCarry {
            inherit: !a.no_inherit_ignore,
            drop: a.drop_ignore,
        },
        code: a.code,
        resources: a.resources,
        restart_required: a.restart_required,
        notes: match &a.notes {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading release notes {}", f.display()))?,
            ),
            None => None,
        },
        links: a.links,
        patches_from: if a.patches_from_all {
            PatchesFrom::All
        } else {
            PatchesFrom::Previous
        },
        keep: a.keep,
        expires: lifetime("expires", &a.expires)?,
        level: a.level,
        encode: EncodeOptions {
            level: a.patch_level,
            memory_budget: a.memory_budget,
            try_exe: !a.no_exe_diff,
            ..EncodeOptions::default()
        },
        channel: a.channel,
        targeting: parse_targets(&a.targets)?,
        solid_installer: a.solid_installer,
    };
    detail!(
        "signing with key(s) {}",
        opts.keys
            .iter()
            .map(|k| k.public().key_id()[..12].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let p = progress();
    let report = patch_create::release::release(&opts, p.as_ref())?;
    let ig = &report.ignore;
    let prev = ig.previous.as_deref().unwrap_or("?");
    for pat in &ig.inherited {
        info!(
            "note: keeping --ignore {pat:?} of release {prev} (pass --drop-ignore {pat:?} to \
             stop ignoring it)"
        );
    }
    for pat in &ig.dropped {
        info!(
            "warning: --ignore {pat:?} of release {prev} is dropped: clients updating to {} \
             will delete users' files there that the release does not ship",
            report.version
        );
    }
    detail!(
        "ignore patterns of {}: {}",
        report.version,
        if ig.patterns.is_empty() {
            "none".to_string()
        } else {
            ig.patterns.join(", ")
        }
    );
    detail!(
        "timings: scan {:.2}s, repair files {:.2}s, diff {:.2}s, installer {:.2}s, total {:.2}s",
        report.timings.scan_s,
        report.timings.repair_s,
        report.timings.diff_s,
        report.timings.installer_s,
        report.timings.total_s
    );
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(peak), Some(obj)) = (peak_rss_bytes(), v.as_object_mut()) {
            obj.insert("peak_rss_bytes".into(), peak.into());
        }
        println!("{v}");
    } else {
        info!(
            "released {} {}: {} files, {} bytes; installer {} bytes",
            report.app, report.version, report.files, report.file_bytes, report.installer.bytes
        );
        for pr in &report.patches {
            let encodings = pr
                .encodings
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            info!(
                "  patch {} -> {}: {} bytes ({encodings})",
                pr.from, pr.to, pr.bytes
            );
        }
        info!(
            "  repair files: {} ({} new, {} bytes new)",
            report.repair.files, report.repair.new_files, report.repair.new_bytes
        );
    }
    Ok(())
}

#[derive(clap::Args)]
struct PublishArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// Destination: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or
    /// file:///DIR. Credentials from the environment (AWS_ACCESS_KEY_ID, ..., or
    /// ~/.aws/credentials; GOOGLE_SERVICE_ACCOUNT; AZURE_STORAGE_ACCOUNT_NAME, ...).
    #[arg(long)]
    to: String,
    /// S3 endpoint of an S3-compatible store (e.g. http://127.0.0.1:3900).
    #[arg(long)]
    endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1; Garage: garage).
    #[arg(long)]
    region: Option<String>,
    /// Path-style S3 requests (ENDPOINT/BUCKET/KEY): the default.
    #[arg(long, conflicts_with = "virtual_hosted")]
    path_style: bool,
    /// Virtual-hosted-style S3 requests (BUCKET.ENDPOINT/KEY).
    #[arg(long)]
    virtual_hosted: bool,
    /// How long objects the repository no longer has stay in the destination (e.g. 7d, 2s):
    /// clients in the middle of an update may still fetch them.
    #[arg(long, default_value = "7d")]
    prune_grace: String,
    /// Uploads at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// List what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace objects under immutable names that hold other bytes (normally an error).
    #[arg(long)]
    replace_mismatched: bool,
    /// Print one JSON object (uploaded, skipped, deleted, pending deletes, bytes, changes).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BundleArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// A version installs start from (repeat for several).
    #[arg(long = "from", required = true)]
    from: Vec<String>,
    /// The release to reach [default: the newest release that is not yanked].
    #[arg(long)]
    to: Option<String>,
    /// The bundle file to write (replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Root public key file(s) to check the repository against [default: its own first root].
    /// The variable holds a key file's path or its contents.
    #[arg(long = "public-key", env = PUBLIC_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
    public_keys: Vec<KeySource>,
    /// Also carry the repair file of every file of the release, so that installs whose files
    /// were modified can be updated too, and a failed patch falls back to them (about the size
    /// of the installer).
    #[arg(long)]
    with_repair_files: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Test hook, not a user setting: sleep this many milliseconds after each object, so that the
/// end-to-end tests can kill a publish between two given objects.
const PUBLISH_PAUSE_ENV: &str = "PATCHKIT_PUBLISH_TEST_PAUSE_MS";

fn publish(a: PublishArgs) -> Result<()> {
    use patch_create::publish::{Op, PublishEvent, PublishOptions};
    let prune_grace = formats::time_util::parse_duration(&a.prune_grace)
        .with_context(|| format!("--prune-grace {}", a.prune_grace))?;
    let pause = std::env::var(PUBLISH_PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(std::time::Duration::from_millis);
    let opts = PublishOptions {
        repo: a.repo,
        destination: patch_create::publish::DestinationSpec {
            url: a.to,
            endpoint: a.endpoint,
            region: a.region,
            virtual_hosted: a.virtual_hosted,
        },
        prune_grace,
        dry_run: a.dry_run,
        concurrency: usize::from(a.concurrency),
        replace_mismatched: a.replace_mismatched,
        now: formats::time_util::now(),
    };
    let on_event = |e: &PublishEvent<'_>| {
        match e {
            PublishEvent::Uploaded { key, bytes } => detail!("uploaded {key} ({bytes} bytes)"),
            PublishEvent::Deleted { key } => detail!("deleted {key}"),
        }
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
    };
    let p = progress();
    let report = patch_create::publish::publish(&opts, p.as_ref(), &on_event)?;
    for w in &report.warnings {
        info!("warning: {w}");
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let would = if report.dry_run { "would " } else { "" };
    for c in &report.changes {
        match c.op {
            Op::Upload if report.dry_run => info!(
                "would upload {} ({} bytes, {})",
                c.key,
                c.bytes.unwrap_or(0),
                c.reason.unwrap_or("new")
            ),
            Op::Delete if report.dry_run => info!("would delete {}", c.key),
            Op::Keep => detail!(
                "keeping {} (missing since {}) until {}",
                c.key,
                c.missing_since.as_deref().unwrap_or("?"),
                c.delete_after.as_deref().unwrap_or("?")
            ),
            _ => {}
        }
    }
    info!(
        "{}: {would}upload {} object(s), {} bytes; {} already there ({} bytes); {would}delete {}; \
         {} pruned object(s) kept through the grace period",
        report.destination,
        report.uploaded,
        report.uploaded_bytes,
        report.skipped,
        report.skipped_bytes,
        report.deleted,
        report.pending_deletes
    );
    Ok(())
}

fn bundle(a: BundleArgs) -> Result<()> {
    let from = a
        .from
        .iter()
        .map(|v| formats::Version::parse(v).with_context(|| format!("--from {v:?}")))
        .collect::<Result<Vec<_>>>()?;
    let to =
        a.to.as_deref()
            .map(|v| formats::Version::parse(v).with_context(|| format!("--to {v:?}")))
            .transpose()?;
    let s = patch_create::bundle::bundle(&patch_create::bundle::BundleOptions {
        repo: a.repo.clone(),
        from,
        to,
        out: a.out.clone(),
        public_keys: load_public_sources(&a.public_keys)?,
        with_repair_files: a.with_repair_files,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    info!(
        "wrote {} ({} bytes, {} files): to {}, metadata valid until {}",
        s.out.display(),
        s.size,
        s.files,
        s.to,
        s.expires
    );
    for p in &s.paths {
        info!(
            "  from {}: {}{} ({} bytes)",
            p.from,
            p.method,
            if p.chain.is_empty() {
                String::new()
            } else {
                format!(" via {}", p.chain.join(" -> "))
            },
            p.bytes
        );
    }
    Ok(())
}

#[derive(clap::Args)]
struct MaintenanceArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// Release secret key file(s); repeat to reach the threshold. The variable holds a key
    /// file's path or its contents (for CI without key files on disk).
    #[arg(long = "key", required = true, env = SIGNING_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
    keys: Vec<KeySource>,
    /// Start maintenance.
    #[arg(long, conflicts_with = "off", required_unless_present = "off")]
    on: bool,
    /// End maintenance.
    #[arg(long)]
    off: bool,
    /// Message clients show to the user.
    #[arg(long, requires = "on")]
    message: Option<String>,
    /// The app may still start while updates are paused.
    #[arg(long, requires = "on")]
    app_may_start: bool,
    /// Lifetime of the new metadata (e.g. 90d, 12h).
    #[arg(long, default_value = "90d")]
    expires: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct YankArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// Release secret key file(s); repeat to reach the threshold. The variable holds a key
    /// file's path or its contents (for CI without key files on disk).
    #[arg(long = "key", required = true, env = SIGNING_KEY_ENV, hide_env_values = true, value_parser = KeySource::parse)]
    keys: Vec<KeySource>,
    /// The release to withdraw.
    #[arg(long)]
    version: String,
    /// Why, for people (shown by clients and the fleet server).
    #[arg(long, required_unless_present = "undo", conflicts_with = "undo")]
    reason: Option<String>,
    /// Lift the yank instead.
    #[arg(long)]
    undo: bool,
    /// Lifetime of the new metadata (e.g. 90d, 12h).
    #[arg(long, default_value = "90d")]
    expires: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn yank(a: YankArgs) -> Result<()> {
    let version = formats::Version::parse(&a.version)?;
    let keys = load_secrets(&a.keys, SIGNING_KEY_ENV)?;
    patch_create::yank::yank(
        &a.repo,
        &keys,
        lifetime("expires", &a.expires)?,
        &version,
        a.reason.as_deref(),
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"repo": a.repo, "version": version.to_string(), "yanked": a.reason.is_some(), "reason": a.reason})
        );
    }
    match &a.reason {
        Some(r) => info!(
            "{}: release {version} yanked ({r}); clients running it will move to the newest release that is not yanked",
            a.repo.display()
        ),
        None => info!("{}: release {version} is offered again", a.repo.display()),
    }
    Ok(())
}

fn maintenance(a: MaintenanceArgs) -> Result<()> {
    let keys = load_secrets(&a.keys, SIGNING_KEY_ENV)?;
    let m = a.on.then(|| formats::layout::Maintenance {
        message: a.message.clone().unwrap_or_default(),
        app_may_start: a.app_may_start,
    });
    patch_create::maintenance::set_maintenance(
        &a.repo,
        &keys,
        lifetime("expires", &a.expires)?,
        m,
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"repo": a.repo, "maintenance": a.on, "message": a.message, "app_may_start": a.app_may_start})
        );
    }
    if a.on {
        info!(
            "{}: under maintenance; clients will not update",
            a.repo.display()
        );
    } else {
        info!("{}: maintenance ended", a.repo.display());
    }
    Ok(())
}

fn run() -> Result<()> {
    let cli: Cli = cli_support::parse();
    cli_support::init_logging(&cli.verbosity, false);
    let level = match cli.verbosity.level() {
        cli_support::Level::Quiet => 0,
        cli_support::Level::Normal => 1,
        cli_support::Level::Verbose => 2,
    };
    VERBOSITY.store(level, Ordering::Relaxed);
    EXPIRES_SHORT_OK.store(cli.expires_short_ok, Ordering::Relaxed);
    match cli.cmd {
        Cmd::Keygen { out, name, json } => {
            let (s, p) = patch_create::keyfile::generate(&out, &name)?;
            if json {
                println!("{}", serde_json::json!({"secret": s, "public": p}));
            }
            info!(
                "wrote {} (secret, keep it safe) and {}",
                s.display(),
                p.display()
            );
            Ok(())
        }
        Cmd::Release(a) => release(*a),
        Cmd::Maintenance(a) => maintenance(a),
        Cmd::Yank(a) => yank(a),
        Cmd::Bundle(a) => bundle(a),
        Cmd::Mirrors {
            repo,
            keys,
            mirrors,
            expires,
            json,
        } => {
            let keys = load_secrets(&keys, SIGNING_KEY_ENV)?;
            let info = patch_create::maintenance::set_mirrors(
                &repo,
                &keys,
                lifetime("expires", &expires)?,
                mirrors,
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"repo": repo, "mirrors": info.mirrors})
                );
            }
            info!(
                "{}: mirrors set to [{}]",
                repo.display(),
                info.mirrors.join(", ")
            );
            Ok(())
        }
        Cmd::Serve { repo, addr } => {
            let quiet = cli.verbosity.quiet;
            let server = patch_create::serve::Server::bind(&repo, &addr)?;
            let bound = server.local_addr()?;
            eprintln!("serving {} at http://{bound}/", repo.display());
            server.run(move |r| {
                if !quiet {
                    eprintln!(
                        "{} {} {} {} {}{}",
                        r.peer,
                        r.method,
                        r.path,
                        r.status,
                        r.bytes,
                        r.range
                            .as_deref()
                            .map(|x| format!(" ({x})"))
                            .unwrap_or_default()
                    );
                }
            })?;
            Ok(())
        }
        Cmd::Publish(a) => publish(a),
        Cmd::Keys(k) => keys_cmd(k),
        Cmd::Tool(t) => t.run::<Cli>(),
        Cmd::Resign {
            repo,
            keys,
            expires,
        } => {
            let keys = load_secrets(&keys, SIGNING_KEY_ENV)?;
            let refs: Vec<&formats::keys::KeyPair> = keys.iter().collect();
            let exp = formats::time_util::now() + lifetime("expires", &expires)?;
            let r = patch_create::keys_admin::resign(&repo, &refs, exp)?;
            info!(
                "re-signed {}: targets {}, snapshot {}, timestamp {}, expires {}",
                repo.display(),
                r.targets_version,
                r.snapshot_version,
                r.timestamp_version,
                r.expires
            );
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::Verify {
            repo,
            public_key,
            json,
        } => {
            let key = load_public_sources(std::slice::from_ref(&public_key))?.remove(0);
            let report = patch_create::verify::verify(&repo, &key)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else if VERBOSITY.load(Ordering::Relaxed) >= 1 || !report.problems.is_empty() {
                print!("{}", report.to_text());
            }
            for e in report
                .expiry
                .iter()
                .filter(|e| e.near && e.seconds_left >= 0)
            {
                let how = if e.role == "root" {
                    "extend it with `patch-create keys update --root-key ... --expires 365d`"
                } else {
                    "release or run `patch-create resign` before then"
                };
                info!(
                    "warning: {} metadata (version {}) of {} expires at {} ({}): clients refuse \
                     it after that; {how}",
                    e.role,
                    e.version,
                    repo.display(),
                    e.expires,
                    e.left_words()
                );
            }
            if !report.problems.is_empty() {
                bail!(
                    "{} problem(s) found in {}",
                    report.problems.len(),
                    repo.display()
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    cli_support::finish(run(), error_kind)
}

/// The `kind` of a JSON error: which part of writing the repository failed.
fn error_kind(e: &anyhow::Error) -> Option<&'static str> {
    use patch_create::error::Error as E;
    let e = e.chain().find_map(|c| c.downcast_ref::<E>())?;
    Some(match e {
        E::Format(_) => "format",
        E::Apply(_) => "apply",
        E::Io { .. } => "io",
        E::Tree { .. } => "tree",
        E::Repo { .. } => "repo",
        E::SuffixSort { .. } => "suffix_sort",
        E::Publish { .. } => "publish",
        E::Store { .. } => "store",
        E::VerifyFailed(_) => "verify",
        _ => "error",
    })
}

/// Parses a byte count such as `512MiB`, `2GiB` or `4096` (`bytesize`: K, M, G are powers
/// of 1000, KiB, MiB, GiB powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size such as 512MiB or 2GiB: {e}"))
}

/// The process's peak resident set size so far (Linux: `VmHWM` of /proc/self/status).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
