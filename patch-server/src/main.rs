//! `patch-server`: serve the fleet API, or administer a server through its admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use patch_server::client::Client;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "patch-server",
    version,
    about = "The fleet server: check-ins, inventory, commands",
    after_help = cli_support::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    verbosity: cli_support::Verbosity,
}

#[derive(Args, Clone)]
struct Store {
    /// Data directory: uploads, trust state, admin.token, and the SQLite database
    /// (DATA/fleet.db) unless --db is given.
    #[arg(long)]
    data: PathBuf,
    /// Database URL (postgres://USER:PASS@HOST:PORT/DB); SQLite in DATA when absent.
    #[arg(long, env = "PATCHKIT_DB", hide_env_values = true)]
    db: Option<String>,
}

#[derive(Args, Clone)]
struct Remote {
    /// Server URL.
    #[arg(long, env = "PATCHKIT_SERVER", hide_env_values = true)]
    server: String,
    /// File holding an admin token (else PATCHKIT_ADMIN_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A PEM certificate to trust for an HTTPS server (e.g. a self-signed one).
    #[arg(long, env = "PATCHKIT_CA_CERT", hide_env_values = true)]
    ca_cert: Option<PathBuf>,
}

// Parsed once per run; boxing `Serve`'s options would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve {
        #[command(flatten)]
        store: Store,
        /// Address to listen on (port 0: any free port; the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:8443")]
        addr: SocketAddr,
        /// Also write the bound URL to this file.
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// Where the first admin token goes (default DATA/admin.token).
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// TLS certificate chain (PEM); with --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Poll interval told to devices.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
        /// Largest upload in bytes.
        #[arg(long, default_value_t = formats::fleet::MAX_UPLOAD)]
        max_upload: u64,
        /// Requests in progress at once; one more gets 503 with Retry-After.
        #[arg(long, default_value_t = 512)]
        max_concurrent: usize,
        /// Database connections.
        #[arg(long, default_value_t = 16)]
        db_connections: u32,
        /// Check-in history older than this is summarised per day.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        retain_history: Duration,
        /// How often each app's repository is read again.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        refresh_interval: Duration,
        /// Default life of a command nobody picked up.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        command_ttl: Duration,
        /// Idle check-ins add a history row at most this often (a change of version or
        /// channel always does); 0s records every check-in.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        history_every: Duration,
        /// On PostgreSQL, make idle check-ins (no update result, no state document, no command
        /// delivered) wait for their WAL flush too. By default they commit without waiting
        /// (`synchronous_commit = off` for that transaction): a crash may lose the last
        /// moments of last-seen times, never a result, a state document or a delivery.
        #[arg(long)]
        durable_idle_checkins: bool,
        /// Time allowed to receive a request and answer it (uploads: --upload-read-timeout);
        /// past it the client gets 408 and its concurrency slot is freed.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        request_timeout: Duration,
        /// Time allowed to the requests that read an app's repository (`app add`, `app
        /// refresh`, the dashboard's releases page); past it, 408.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        repo_timeout: Duration,
        /// Longest pause in an upload's body before it is cut off (408).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        upload_read_timeout: Duration,
        /// Enrollment attempts allowed per app and source address per --enroll-window; one
        /// more gets 429 with Retry-After.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        enroll_per_ip: u32,
        /// The window of --enroll-per-ip.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        enroll_window: Duration,
        /// Most devices of one app waiting for approval; one more enrollment gets 429.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        max_pending: u32,
        /// A device is silent after this many of its poll intervals (its own or --poll-interval)
        /// without a check-in: an alert, and red on the dashboard.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
        silent_after: u32,
        /// SMTP server for e-mail alerts: smtp://HOST:PORT (plain, local relay),
        /// smtp://HOST:587?tls=required (STARTTLS) or smtps://HOST:465 (TLS); the password
        /// comes from PATCHKIT_SMTP_PASSWORD.
        #[arg(long, requires = "smtp_from")]
        smtp_url: Option<String>,
        /// From address of e-mail alerts.
        #[arg(long, requires = "smtp_url")]
        smtp_from: Option<String>,
        /// PEM certificate(s) to trust for the SMTP server's TLS certificate besides the public
        /// roots (a private CA, a self-signed relay); needs a TLS --smtp-url.
        #[arg(long, requires = "smtp_url", value_name = "FILE")]
        smtp_ca_cert: Option<PathBuf>,
        /// Delay before an alert notification is retried; doubled after each failure.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        alert_retry_base: Duration,
        /// Attempts before an alert notification is marked failed (also after 24 h).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
        alert_max_attempts: u32,
        /// Life of a dashboard login session.
        #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
        session_ttl: Duration,
    },
    /// Alerts and where they are sent.
    Alerts {
        #[command(subcommand)]
        cmd: AlertsCmd,
    },
    /// Dashboard accounts (offline, against --data/--db).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Create an admin token directly in the database (offline) and print it.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Check-in history maintenance (offline, against --data/--db).
    History {
        #[command(subcommand)]
        cmd: HistoryCmd,
    },
    /// Manage apps.
    App {
        #[command(subcommand)]
        cmd: AppCmd,
    },
    /// List apps and the releases their signed repositories offer.
    Apps {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The inventory.
    Devices {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Not seen for at least this long (10m, 2h, 3d).
        #[arg(long)]
        silent_for: Option<String>,
        /// Only devices whose last update failed.
        #[arg(long)]
        failed: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One device.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Add tags to a device.
    Tag {
        #[command(flatten)]
        remote: Remote,
        id: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Remove tags from a device.
    Untag {
        #[command(flatten)]
        remote: Remote,
        id: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Queue a command for a device, a tag or an app.
    Command {
        #[command(flatten)]
        remote: Remote,
        #[arg(long, group = "target")]
        device: Option<String>,
        #[arg(long, group = "target")]
        tag: Option<String>,
        #[arg(long, group = "target")]
        app: Option<String>,
        /// report-state, upload-logs, update-now, restart-app or set-interval.
        kind: String,
        /// The new poll interval, for set-interval (30s, 5m, 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Option<Duration>,
        /// Life of the command (server default 7 days).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List uploads of a device.
    Uploads {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        device: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch an uploaded file.
    Upload {
        #[command(subcommand)]
        cmd: UploadCmd,
    },
    /// Direct devices to a release now: one device, a tag, or every device of the app (a
    /// one-off move for devices on an older release; a pin still wins).
    Push {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        version: String,
        #[command(flatten)]
        target: PushTarget,
        /// Stop applying after this long (`12h`, `7d`; at most a year); without it the push
        /// applies until removed with `unpush`.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// Remove the pushes to a device, a tag or the whole app (only those of one release with
    /// --version).
    Unpush {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        target: PushTarget,
    },
    /// List pushes, newest first, with when each expires.
    Pushes {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold a device, or every device with a tag, at a release (wins over pushes, rollouts
    /// and the channel).
    Pin {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        version: String,
        #[command(flatten)]
        target: PinTarget,
    },
    /// Remove the pin of a device or a tag.
    Unpin {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[command(flatten)]
        target: PinTarget,
    },
    /// List pins.
    Pins {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Staged rollouts: start, set, halt, resume, finish, status.
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
    },
    #[command(flatten)]
    Tool(cli_support::ToolCmd),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PushTarget {
    /// One device.
    #[arg(long)]
    device: Option<String>,
    /// Every device with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Every device of the app.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PinTarget {
    /// One device.
    #[arg(long)]
    device: Option<String>,
    /// Every device with this tag.
    #[arg(long)]
    tag: Option<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct WhichRollout {
    /// The app's only running or halted rollout.
    #[arg(long)]
    app: Option<String>,
    /// A rollout by id.
    #[arg(long)]
    id: Option<String>,
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Start offering a release to a percentage of the eligible devices.
    Start {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        version: String,
        /// Percentage of eligible devices (0..=100).
        #[arg(long)]
        percent: u32,
        /// Halt when failed / finished exceeds this fraction.
        #[arg(long, default_value_t = patch_server::rollout::DEFAULT_MAX_FAILURE_RATE)]
        max_failure_rate: f64,
        /// ... once this many devices finished.
        #[arg(long, default_value_t = patch_server::rollout::DEFAULT_MIN_DEVICES)]
        min_devices: u64,
        /// A device offered the release without success for this long counts as failed.
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Raise the percentage along a list every interval: 5,25,50,100@1d.
        #[arg(long)]
        schedule: Option<String>,
        /// Rate cap: at most N devices newly offered per --period.
        #[arg(long)]
        max_per_period: Option<u64>,
        /// The rate cap's period.
        #[arg(long, requires = "max_per_period", value_parser = humantime::parse_duration)]
        period: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set the percentage.
    Set {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        which: WhichRollout,
        /// New percentage (0..=100).
        percent: u32,
    },
    /// Stop offering the release (devices already on it stay).
    Halt {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        which: WhichRollout,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Offer the release again after a halt.
    Resume {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        which: WhichRollout,
    },
    /// End the rollout: its release becomes an ordinary channel release.
    Finish {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        which: WhichRollout,
    },
    /// Rollouts with their progress (of one app, or one rollout with its devices).
    Status {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: Option<String>,
        #[arg(long, conflicts_with = "app")]
        id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token with a scope (read, ci, admin).
    Create {
        #[command(flatten)]
        store: Store,
        #[arg(long)]
        scope: String,
        #[arg(long)]
        label: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add an account; the password is read from --password-file or standard input (never
    /// from the command line).
    Add {
        #[command(flatten)]
        store: Store,
        #[arg(long)]
        name: String,
        /// admin (acts) or viewer (reads only).
        #[arg(long)]
        role: String,
        /// File whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        store: Store,
    },
    /// Remove an account and end its sessions.
    Remove {
        #[command(flatten)]
        store: Store,
        #[arg(long)]
        name: String,
    },
}

/// The password of `user add`: the first line of the file, or of standard input.
fn read_password(file: Option<&Path>) -> Result<String> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read password file {}", f.display()))?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line
        }
    };
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.chars().count() < 8 {
        bail!("the password must have at least 8 characters");
    }
    if pw.len() > patch_server::web::auth::MAX_PASSWORD {
        bail!(
            "the password must have at most {} bytes",
            patch_server::web::auth::MAX_PASSWORD
        );
    }
    Ok(pw)
}

fn user_cmd(cmd: UserCmd) -> Result<()> {
    use patch_server::web::store::Role;
    runtime()?.block_on(async {
        match cmd {
            UserCmd::Add {
                store,
                name,
                role,
                password_file,
            } => {
                formats::fleet::check_id("name", &name).map_err(|e| anyhow::anyhow!("--{e}"))?;
                let role = Role::parse(&role)
                    .with_context(|| format!("--role must be admin or viewer, not {role:?}"))?;
                let pw = read_password(password_file.as_deref())?;
                let hash = patch_server::web::auth::hash_password(&pw)?;
                let db = patch_server::server::open_db(&store.data, store.db.as_deref(), 2).await?;
                if !db
                    .add_user(&name, &hash, role)
                    .await
                    .context("cannot store the account")?
                {
                    bail!("user {name} exists");
                }
                db.audit("cli", "user.add", &name, role.as_str())
                    .await
                    .context("cannot write the audit log")?;
                println!("user {name} added ({})", role.as_str());
            }
            UserCmd::List { store } => {
                let db = patch_server::server::open_db(&store.data, store.db.as_deref(), 2).await?;
                for u in db.users().await.context("cannot list accounts")? {
                    println!(
                        "{:<24} {:<7} {}",
                        u.name,
                        u.role.as_str(),
                        patch_server::util::rfc3339(u.created_ms)
                    );
                }
            }
            UserCmd::Remove { store, name } => {
                let db = patch_server::server::open_db(&store.data, store.db.as_deref(), 2).await?;
                if !db
                    .remove_user(&name)
                    .await
                    .context("cannot remove the account")?
                {
                    bail!("no user {name}");
                }
                db.audit("cli", "user.remove", &name, "")
                    .await
                    .context("cannot write the audit log")?;
                println!("user {name} removed");
            }
        }
        Ok(())
    })
}

#[derive(Subcommand)]
enum HistoryCmd {
    /// Summarise per day and delete check-ins older than --older-than (what the server does
    /// every minute with --retain-history).
    Prune {
        #[command(flatten)]
        store: Store,
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

#[derive(Subcommand)]
enum AppCmd {
    /// Register an app: its signed repository and release public key.
    Add {
        #[command(flatten)]
        remote: Remote,
        name: String,
        #[arg(long)]
        repo: String,
        #[arg(long)]
        public_key: PathBuf,
        /// File holding the enrollment secret devices present.
        #[arg(long, group = "enrollment", required = true)]
        enroll_secret_file: Option<PathBuf>,
        /// New devices wait for an administrator's approval instead.
        #[arg(long, group = "enrollment")]
        approve: bool,
    },
    /// Read an app's repository again now.
    Refresh {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// State document, history of check-ins and update results, commands, uploads.
    Show {
        #[command(flatten)]
        remote: Remote,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending device.
    Approve {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

#[derive(Subcommand)]
enum AlertsCmd {
    /// Open and recent alerts with the delivery state of their notifications.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only open alerts.
        #[arg(long)]
        open: bool,
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        device: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where alerts are sent.
    Destinations {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Webhook destinations (JSON POST signed with HMAC-SHA256).
    Webhook {
        #[command(subcommand)]
        cmd: WebhookCmd,
    },
    /// E-mail destinations (through serve --smtp-url).
    Email {
        #[command(subcommand)]
        cmd: EmailCmd,
    },
}

#[derive(Subcommand)]
enum WebhookCmd {
    /// Send alerts to a URL.
    Add {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        url: String,
        /// File holding the HMAC secret (16 to 512 bytes).
        #[arg(long)]
        secret_file: PathBuf,
        /// Only alerts of this app.
        #[arg(long)]
        app: Option<String>,
    },
    /// Stop sending to a webhook destination.
    Remove {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

#[derive(Subcommand)]
enum EmailCmd {
    /// Send alerts to an address.
    Add {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        to: String,
        /// Only alerts of this app.
        #[arg(long)]
        app: Option<String>,
    },
    /// Stop sending to an e-mail destination.
    Remove {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

#[derive(Subcommand)]
enum UploadCmd {
    /// Write an uploaded file to --out.
    Get {
        #[command(flatten)]
        remote: Remote,
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn client(r: &Remote) -> Result<Client> {
    let token = match &r.token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read token file {}", f.display()))?,
        None => std::env::var("PATCHKIT_ADMIN_TOKEN")
            .context("no admin token: give --token-file or set PATCHKIT_ADMIN_TOKEN")?,
    };
    let ca = match &r.ca_cert {
        Some(f) => Some(
            std::fs::read(f).with_context(|| format!("cannot read certificate {}", f.display()))?,
        ),
        None => None,
    };
    Ok(Client::new(&r.server, &token, ca.as_deref())?)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `GET path[?app=APP]` and prints the list: as JSON, or one `line` per item.
fn list_by_app(
    remote: &Remote,
    path: &str,
    app: Option<String>,
    json: bool,
    line: impl Fn(&Value) -> String,
) -> Result<()> {
    let q: Vec<(&str, String)> = app.map(|a| ("app", a)).into_iter().collect();
    let v = client(remote)?.get(path, &q)?;
    if json {
        print_json(&v);
    } else {
        for item in v.as_array().into_iter().flatten() {
            println!("{}", line(item));
        }
    }
    Ok(())
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn device_line(d: &Value) -> String {
    let result = match d.get("last_result") {
        Some(r) if !r.is_null() => {
            if r.get("ok").and_then(Value::as_bool) == Some(true) {
                format!("ok->{}", s(r, "to"))
            } else {
                format!("FAILED->{} ({})", s(r, "to"), s(r, "error_kind"))
            }
        }
        _ => "-".into(),
    };
    let digest = s(d, "tree_digest");
    format!(
        "{:<34} {:<10} {:<8} {:<14} {:<8} {:<12} {:<21} {}",
        s(d, "id"),
        s(d, "app"),
        s(d, "status"),
        s(d, "version"),
        s(d, "channel"),
        &digest[..digest.len().min(12)],
        s(d, "last_seen"),
        result
    )
}

fn rollout_line(r: &Value) -> String {
    let n = |k: &str| r.get(k).and_then(Value::as_i64).unwrap_or(0);
    format!(
        "{} {} {} {:<8} {:>3}% offered {} ok {} failed {} (timed out {}) pending {}{}",
        s(r, "id"),
        s(r, "app"),
        s(r, "version"),
        s(r, "state"),
        n("percent"),
        n("offered"),
        n("succeeded"),
        n("failed"),
        n("timed_out"),
        n("pending"),
        r.get("halt_reason")
            .and_then(Value::as_str)
            .map(|h| format!(" reason: {h}"))
            .unwrap_or_default()
    )
}

/// The id of the rollout `which` names (`--app`: its only running or halted rollout).
fn rollout_id(c: &Client, which: &WhichRollout) -> Result<String> {
    if let Some(id) = &which.id {
        return Ok(id.clone());
    }
    let app = which.app.clone().unwrap_or_default();
    let v = c.get("/v1/admin/rollouts", &[("app", app.clone())])?;
    let active: Vec<&Value> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| matches!(r["state"].as_str(), Some("running" | "halted")))
        .collect();
    match active.as_slice() {
        [] => bail!("app {app} has no running or halted rollout"),
        [one] => Ok(s(one, "id").to_string()),
        many => bail!(
            "app {app} has {} unfinished rollouts ({}); give --id",
            many.len(),
            many.iter()
                .map(|r| format!("{} {}", s(r, "id"), s(r, "version")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve {
            store,
            addr,
            addr_file,
            admin_token_file,
            tls_cert,
            tls_key,
            poll_interval,
            max_upload,
            max_concurrent,
            db_connections,
            retain_history,
            refresh_interval,
            command_ttl,
            history_every,
            durable_idle_checkins,
            request_timeout,
            repo_timeout,
            upload_read_timeout,
            enroll_per_ip,
            enroll_window,
            max_pending,
            silent_after,
            smtp_url,
            smtp_from,
            smtp_ca_cert,
            alert_retry_base,
            alert_max_attempts,
            session_ttl,
        } => {
            let ca_pem = match &smtp_ca_cert {
                Some(f) => {
                    Some(std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?)
                }
                None => None,
            };
            let smtp =
                smtp_url
                    .zip(smtp_from)
                    .map(|(url, from)| patch_server::alerts::SmtpConfig {
                        url,
                        from,
                        password: std::env::var("PATCHKIT_SMTP_PASSWORD").ok(),
                        ca_pem,
                    });
            let alerts = patch_server::alerts::AlertOptions {
                silent_after,
                retain: retain_history,
                delivery: patch_server::alerts::DeliveryOptions {
                    smtp,
                    retry_base: alert_retry_base.max(Duration::from_millis(100)),
                    max_attempts: alert_max_attempts,
                    ..Default::default()
                },
                ..Default::default()
            };
            let opts = patch_server::server::ServeOptions {
                data: store.data,
                db_url: store.db,
                addr,
                addr_file,
                admin_token_file,
                tls: tls_cert.zip(tls_key),
                poll_interval,
                max_upload: max_upload.min(formats::fleet::MAX_UPLOAD),
                max_concurrent,
                db_connections,
                retain_history,
                refresh_interval,
                command_ttl,
                history_every,
                durable_idle_checkins,
                request_timeout: request_timeout.max(Duration::from_millis(100)),
                repo_timeout: repo_timeout.max(Duration::from_millis(100)),
                upload_read_timeout: upload_read_timeout.max(Duration::from_millis(100)),
                enroll_per_ip,
                enroll_window: enroll_window.max(Duration::from_secs(1)),
                max_pending,
                alerts,
                silent_after,
                session_ttl,
            };
            runtime()?.block_on(patch_server::server::serve(opts))
        }
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    store,
                    scope,
                    label,
                },
        } => {
            if patch_server::api::common::Scope::parse(&scope).is_none() {
                bail!("--scope must be read, ci or admin, not {scope:?}");
            }
            runtime()?.block_on(async {
                let db = patch_server::server::open_db(&store.data, store.db.as_deref(), 2).await?;
                let token = patch_server::util::new_token();
                db.add_admin_token(
                    &patch_server::util::sha256_hex(&token),
                    &scope,
                    label.as_deref().unwrap_or(""),
                )
                .await
                .context("cannot store the token")?;
                println!("{token}");
                Ok(())
            })
        }
        Cmd::User { cmd } => user_cmd(cmd),
        Cmd::History {
            cmd: HistoryCmd::Prune { store, older_than },
        } => runtime()?.block_on(async {
            let db = patch_server::server::open_db(&store.data, store.db.as_deref(), 2).await?;
            let n = patch_server::retention::prune(&db, older_than, patch_server::util::now_ms())
                .await
                .context("cannot prune the check-in history")?;
            println!("{n} check-ins summarised");
            Ok(())
        }),
        Cmd::App {
            cmd:
                AppCmd::Add {
                    remote,
                    name,
                    repo,
                    public_key,
                    enroll_secret_file,
                    approve,
                },
        } => {
            let key: Value = serde_json::from_slice(
                &std::fs::read(&public_key)
                    .with_context(|| format!("cannot read {}", public_key.display()))?,
            )
            .with_context(|| format!("{} is not a key file", public_key.display()))?;
            let secret = match &enroll_secret_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            let repo = absolute_if_local(&repo);
            let v = client(&remote)?.post(
                "/v1/admin/apps",
                &json!({"name": name, "repo": repo, "public_key": key,
                        "enroll_secret": secret, "approve": approve}),
            )?;
            let n = v
                .get("releases")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            println!("app {name} added: {n} releases in {repo}");
            Ok(())
        }
        Cmd::App {
            cmd: AppCmd::Refresh { remote, name },
        } => {
            let v = client(&remote)?.post(&format!("/v1/admin/apps/{name}/refresh"), &json!({}))?;
            print_json(&v);
            Ok(())
        }
        Cmd::Apps { remote, json } => {
            let v = client(&remote)?.get("/v1/admin/apps", &[])?;
            if json {
                print_json(&v);
            } else {
                for a in v.as_array().into_iter().flatten() {
                    let rel: Vec<&str> = a["releases"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["version"].as_str())
                        .collect();
                    println!(
                        "{} {} releases: {}",
                        s(a, "name"),
                        s(a, "repo"),
                        rel.join(" ")
                    );
                }
            }
            Ok(())
        }
        Cmd::Devices {
            remote,
            app,
            version,
            channel,
            tag,
            silent_for,
            failed,
            json,
        } => {
            let c = client(&remote)?;
            let mut q: Vec<(&str, String)> = Vec::new();
            for (k, v) in [
                ("app", app),
                ("version", version),
                ("channel", channel),
                ("tag", tag),
                ("silent_for", silent_for),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            if failed {
                q.push(("failed", "true".into()));
            }
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut page_q = q.clone();
                if let Some(a) = &after {
                    page_q.push(("after", a.clone()));
                }
                let page = c.get("/v1/admin/devices", &page_q)?;
                all.extend(page["devices"].as_array().cloned().unwrap_or_default());
                match page["next_after"].as_str() {
                    Some(a) => after = Some(a.to_string()),
                    None => break,
                }
            }
            if json {
                print_json(&Value::Array(all));
            } else {
                println!(
                    "{:<34} {:<10} {:<8} {:<14} {:<8} {:<12} {:<21} LAST RESULT",
                    "ID", "APP", "STATUS", "VERSION", "CHANNEL", "DIGEST", "LAST SEEN"
                );
                for d in &all {
                    println!("{}", device_line(d));
                }
                println!("{} devices", all.len());
            }
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Show { remote, id, json },
        } => {
            let v = client(&remote)?.get(&format!("/v1/admin/devices/{id}"), &[])?;
            if json {
                print_json(&v);
            } else {
                println!("{}", device_line(&v["device"]));
                println!("tags: {}", v["device"]["tags"]);
                println!("attrs: {}", v["device"]["attrs"]);
                println!("state: {}", v["state"]);
                for r in v["results"].as_array().into_iter().flatten() {
                    println!(
                        "result #{} {} -> {} ok={} {}",
                        r["seq"],
                        s(r, "from"),
                        s(r, "to"),
                        r["ok"],
                        s(r, "error_message")
                    );
                }
                for c in v["commands"].as_array().into_iter().flatten() {
                    println!("command {} {} {}", s(c, "id"), s(c, "kind"), s(c, "status"));
                }
                for u in v["uploads"].as_array().into_iter().flatten() {
                    println!("upload {} {} {} bytes", s(u, "id"), s(u, "name"), u["size"]);
                }
            }
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Approve { remote, id },
        } => {
            client(&remote)?.post(&format!("/v1/admin/devices/{id}/approve"), &json!({}))?;
            println!("device {id} approved");
            Ok(())
        }
        Cmd::Tag { remote, id, tags } => {
            let v = client(&remote)?.post(
                &format!("/v1/admin/devices/{id}/tags"),
                &json!({"add": tags}),
            )?;
            println!("{id}: tags {}", v["tags"]);
            Ok(())
        }
        Cmd::Untag { remote, id, tags } => {
            let v = client(&remote)?.post(
                &format!("/v1/admin/devices/{id}/tags"),
                &json!({"remove": tags}),
            )?;
            println!("{id}: tags {}", v["tags"]);
            Ok(())
        }
        Cmd::Command {
            remote,
            device,
            tag,
            app,
            kind,
            interval,
            expires_in,
        } => {
            if device.is_none() && tag.is_none() && app.is_none() {
                bail!("give one of --device, --tag, --app");
            }
            let args = interval.map(|d| json!({"secs": d.as_secs().max(1)}));
            let v = client(&remote)?.post(
                "/v1/admin/commands",
                &json!({"device": device, "tag": tag, "app": app, "kind": kind, "args": args,
                        "expires_in_secs": expires_in.map(|d| d.as_secs().max(1))}),
            )?;
            println!(
                "command {} queued for {} devices",
                s(&v, "id"),
                v["targets"]
            );
            Ok(())
        }
        Cmd::Uploads {
            remote,
            device,
            json,
        } => {
            let q: Vec<(&str, String)> = device.map(|d| ("device", d)).into_iter().collect();
            let v = client(&remote)?.get("/v1/admin/uploads", &q)?;
            if json {
                print_json(&v);
            } else {
                for u in v.as_array().into_iter().flatten() {
                    println!(
                        "{} {} {} {} bytes blake3 {}",
                        s(u, "id"),
                        s(u, "device"),
                        s(u, "name"),
                        u["size"],
                        s(u, "blake3")
                    );
                }
            }
            Ok(())
        }
        Cmd::Alerts { cmd } => alerts_cmd(cmd),
        Cmd::Upload {
            cmd: UploadCmd::Get { remote, id, out },
        } => {
            let n = client(&remote)?.download(&format!("/v1/admin/uploads/{id}"), &out)?;
            println!("{n} bytes written to {}", out.display());
            Ok(())
        }
        Cmd::Push {
            remote,
            app,
            version,
            target,
            expires_in,
        } => {
            let v = client(&remote)?.post(
                "/v1/admin/pushes",
                &json!({"app": app, "version": version, "device": target.device,
                        "tag": target.tag, "all": target.all,
                        "expires_in_secs": expires_in.map(|d| d.as_secs().max(1))}),
            )?;
            println!(
                "pushed {app} {} to {} {}{}",
                s(&v, "version"),
                s(&v, "target_kind"),
                s(&v, "target"),
                v["expires_ms"]
                    .as_i64()
                    .map(|ms| format!(" until {}", patch_server::util::rfc3339(ms)))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Unpush {
            remote,
            app,
            version,
            target,
        } => {
            let v = client(&remote)?.post(
                "/v1/admin/pushes/remove",
                &json!({"app": app, "version": version, "device": target.device,
                        "tag": target.tag, "all": target.all}),
            )?;
            println!("{} push(es) removed", v["removed"].as_u64().unwrap_or(0));
            Ok(())
        }
        Cmd::Pushes { remote, app, json } => {
            list_by_app(&remote, "/v1/admin/pushes", app, json, |p| {
                format!(
                    "{} {} -> {} {} by {} at {}, {}",
                    s(p, "app"),
                    s(p, "version"),
                    s(p, "target_kind"),
                    s(p, "target"),
                    s(p, "created_by"),
                    patch_server::util::rfc3339(p["created_ms"].as_i64().unwrap_or(0)),
                    p["expires_ms"]
                        .as_i64()
                        .map(|ms| format!("expires {}", patch_server::util::rfc3339(ms)))
                        .unwrap_or_else(|| "until removed".into())
                )
            })
        }
        Cmd::Pin {
            remote,
            app,
            version,
            target,
        } => {
            let v = client(&remote)?.post(
                "/v1/admin/pins",
                &json!({"app": app, "version": version, "device": target.device,
                        "tag": target.tag}),
            )?;
            println!(
                "pinned {} {} of {app} at {}",
                s(&v, "target_kind"),
                s(&v, "target"),
                s(&v, "version")
            );
            Ok(())
        }
        Cmd::Unpin {
            remote,
            app,
            target,
        } => {
            client(&remote)?.post(
                "/v1/admin/pins/remove",
                &json!({"app": app, "device": target.device, "tag": target.tag}),
            )?;
            println!("pin removed");
            Ok(())
        }
        Cmd::Pins { remote, app, json } => list_by_app(&remote, "/v1/admin/pins", app, json, |p| {
            format!(
                "{} {} {} at {}",
                s(p, "app"),
                s(p, "target_kind"),
                s(p, "target"),
                s(p, "version")
            )
        }),
        Cmd::Rollout { cmd } => rollout(cmd),
        Cmd::Tool(t) => t.run::<Cli>(),
    }
}

fn rollout(cmd: RolloutCmd) -> Result<()> {
    match cmd {
        RolloutCmd::Start {
            remote,
            app,
            version,
            percent,
            max_failure_rate,
            min_devices,
            timeout,
            schedule,
            max_per_period,
            period,
            json,
        } => {
            let v = client(&remote)?.post(
                "/v1/admin/rollouts",
                &json!({"app": app, "version": version, "percent": percent,
                        "max_failure_rate": max_failure_rate, "min_devices": min_devices,
                        "timeout_secs": timeout.as_secs().max(1), "schedule": schedule,
                        "max_per_period": max_per_period,
                        "period_secs": period.map(|p| p.as_secs().max(1))}),
            )?;
            if json {
                print_json(&v);
            } else {
                println!("rollout started: {}", rollout_line(&v));
            }
            Ok(())
        }
        RolloutCmd::Set {
            remote,
            which,
            percent,
        } => {
            let c = client(&remote)?;
            let id = rollout_id(&c, &which)?;
            let v = c.post(
                &format!("/v1/admin/rollouts/{id}/percent"),
                &json!({ "percent": percent }),
            )?;
            println!("{}", rollout_line(&v));
            Ok(())
        }
        RolloutCmd::Halt {
            remote,
            which,
            reason,
        } => {
            let c = client(&remote)?;
            let id = rollout_id(&c, &which)?;
            let v = c.post(
                &format!("/v1/admin/rollouts/{id}/halt"),
                &json!({ "reason": reason }),
            )?;
            println!("{}", rollout_line(&v));
            Ok(())
        }
        RolloutCmd::Resume { remote, which } => {
            let c = client(&remote)?;
            let id = rollout_id(&c, &which)?;
            let v = c.post(&format!("/v1/admin/rollouts/{id}/resume"), &json!({}))?;
            println!("{}", rollout_line(&v));
            Ok(())
        }
        RolloutCmd::Finish { remote, which } => {
            let c = client(&remote)?;
            let id = rollout_id(&c, &which)?;
            let v = c.post(&format!("/v1/admin/rollouts/{id}/finish"), &json!({}))?;
            println!("{}", rollout_line(&v));
            Ok(())
        }
        RolloutCmd::Status {
            remote,
            app,
            id,
            json,
        } => {
            if let Some(id) = id {
                let v = client(&remote)?.get(&format!("/v1/admin/rollouts/{id}"), &[])?;
                if json {
                    print_json(&v);
                } else {
                    println!("{}", rollout_line(&v["rollout"]));
                    for d in v["devices"].as_array().into_iter().flatten() {
                        println!("  {} {}", s(d, "device"), s(d, "result"));
                    }
                }
                return Ok(());
            }
            list_by_app(&remote, "/v1/admin/rollouts", app, json, rollout_line)
        }
    }
}

fn alerts_cmd(cmd: AlertsCmd) -> Result<()> {
    match cmd {
        AlertsCmd::List {
            remote,
            open,
            app,
            device,
            json,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
            if open {
                q.push(("open", "true".into()));
            }
            for (k, v) in [("app", app), ("device", device)] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let v = client(&remote)?.get("/v1/admin/alerts", &q)?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<32} {:<9} {:<40} {:<21} {:<21} NOTIFICATIONS",
                "ID", "STATE", "KEY", "OPENED", "RESOLVED"
            );
            for a in v.as_array().into_iter().flatten() {
                let notes: Vec<String> = a["deliveries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        format!(
                            "{} {} {} ({} attempts)",
                            s(d, "event"),
                            s(d, "kind"),
                            s(d, "status"),
                            d["attempts"]
                        )
                    })
                    .collect();
                println!(
                    "{:<32} {:<9} {:<40} {:<21} {:<21} {}",
                    s(a, "id"),
                    s(a, "state"),
                    s(a, "key"),
                    s(a, "opened_at"),
                    s(a, "resolved_at"),
                    notes.join("; ")
                );
                println!("    {}", s(a, "detail"));
            }
            Ok(())
        }
        AlertsCmd::Destinations { remote, json } => {
            let v = client(&remote)?.get("/v1/admin/alert-destinations", &[])?;
            if json {
                print_json(&v);
            } else {
                for d in v.as_array().into_iter().flatten() {
                    println!(
                        "{} {} {} app={}",
                        s(d, "id"),
                        s(d, "kind"),
                        s(d, "target"),
                        d["app"].as_str().unwrap_or("*")
                    );
                }
            }
            Ok(())
        }
        AlertsCmd::Webhook {
            cmd:
                WebhookCmd::Add {
                    remote,
                    url,
                    secret_file,
                    app,
                },
        } => {
            let secret = std::fs::read_to_string(&secret_file)
                .with_context(|| format!("cannot read {}", secret_file.display()))?
                .trim()
                .to_string();
            let v = client(&remote)?.post(
                "/v1/admin/alert-destinations",
                &json!({"kind": "webhook", "url": url, "secret": secret, "app": app}),
            )?;
            println!("webhook {} added: {}", s(&v, "id"), s(&v, "target"));
            Ok(())
        }
        AlertsCmd::Email {
            cmd: EmailCmd::Add { remote, to, app },
        } => {
            let v = client(&remote)?.post(
                "/v1/admin/alert-destinations",
                &json!({"kind": "email", "to": to, "app": app}),
            )?;
            println!("e-mail {} added: {}", s(&v, "id"), s(&v, "target"));
            Ok(())
        }
        AlertsCmd::Webhook {
            cmd: WebhookCmd::Remove { remote, id },
        }
        | AlertsCmd::Email {
            cmd: EmailCmd::Remove { remote, id },
        } => {
            client(&remote)?.delete(&format!("/v1/admin/alert-destinations/{id}"))?;
            println!("destination {id} removed");
            Ok(())
        }
    }
}

/// A local repository path made absolute (the server may run in another directory).
fn absolute_if_local(repo: &str) -> String {
    if repo.contains("://") {
        return repo.to_string();
    }
    std::path::absolute(Path::new(repo))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| repo.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn main() -> std::process::ExitCode {
    let cli: Cli = cli_support::parse();
    // The server's log lines carry their time; a command's lines do not need it.
    cli_support::init_logging(&cli.verbosity, matches!(cli.cmd, Cmd::Serve { .. }));
    cli_support::finish(run(cli), cli_support::no_kind)
}
