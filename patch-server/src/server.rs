//! Running the server: open the database, make the first admin token, start the background
//! tasks (release refresh, rollout evaluation, command expiry, history retention, alerts), and
//! serve HTTP or HTTPS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::common::{AppState, Settings};
use crate::db::Db;

/// Options of `patch-server serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Data directory.
    pub data: PathBuf,
    /// Database URL; `None` = SQLite at `DATA/fleet.db`.
    pub db_url: Option<String>,
    /// Where to listen (port 0 = any free port).
    pub addr: SocketAddr,
    /// Write the bound address here once listening.
    pub addr_file: Option<PathBuf>,
    /// Where to write the first admin token (default `DATA/admin.token`).
    pub admin_token_file: Option<PathBuf>,
    /// TLS certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Poll interval told to devices.
    pub poll_interval: Duration,
    /// Largest upload.
    pub max_upload: u64,
    /// Requests in progress at once before answering 503.
    pub max_concurrent: usize,
    /// Database connections.
    pub db_connections: u32,
    /// Check-in history older than this is summarised per day and pruned.
    pub retain_history: Duration,
    /// How often each app's repository is read again.
    pub refresh_interval: Duration,
    /// Default life of a command.
    pub command_ttl: Duration,
    /// Idle check-ins add a history row at most this often.
    pub history_every: Duration,
    /// Idle check-ins wait for the WAL flush too (see [`Settings::durable_idle_checkins`]).
    pub durable_idle_checkins: bool,
    /// See [`Settings::request_timeout`].
    pub request_timeout: Duration,
    /// See [`Settings::repo_timeout`].
    pub repo_timeout: Duration,
    /// See [`Settings::upload_read_timeout`].
    pub upload_read_timeout: Duration,
    /// See [`Settings::enroll_per_ip`].
    pub enroll_per_ip: u32,
    /// See [`Settings::enroll_window`].
    pub enroll_window: Duration,
    /// See [`Settings::max_pending`].
    pub max_pending: u32,
    /// The alert engine: silent-device threshold, SMTP, retries.
    pub alerts: crate::alerts::AlertOptions,
    /// The dashboard calls a device silent after this many poll intervals without a check-in.
    pub silent_after: u32,
    /// Life of a dashboard session.
    pub session_ttl: Duration,
}

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The database could not be opened or migrated.
    #[error("database {url}: {source}")]
    Db {
        /// The URL (without password).
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A URL with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Opens the database of `data`/`db_url` (creating the data directory for SQLite).
pub async fn open_db(data: &Path, db_url: Option<&str>, conns: u32) -> Result<Db, ServeError> {
    let url = match db_url {
        Some(u) => u.to_string(),
        None => {
            std::fs::create_dir_all(data).map_err(io(data))?;
            Db::sqlite_url(data)
        }
    };
    Db::connect(&url, conns)
        .await
        .map_err(|source| ServeError::Db {
            url: redact(&url),
            source,
        })
}

/// Writes `contents` to a new file readable only by its owner.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Creates the first `admin` token when the database has none; returns where it went.
pub async fn first_admin_token(db: &Db, file: &Path) -> Result<Option<PathBuf>, ServeError> {
    let db_err = |source| ServeError::Db {
        url: "admin_tokens".into(),
        source,
    };
    if db.admin_token_count().await.map_err(db_err)? > 0 {
        return Ok(None);
    }
    let token = crate::util::new_token();
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    write_private(file, &format!("{token}\n")).map_err(io(file))?;
    db.add_admin_token(&crate::util::sha256_hex(&token), "admin", "first")
        .await
        .map_err(db_err)?;
    Ok(Some(file.to_path_buf()))
}

/// Spawns the periodic tasks: release refresh, rollout evaluation (timeouts, schedule,
/// halts), command expiry, history retention, pruning of enrollment attempts older than
/// `enroll_window`.
pub fn spawn_background(
    db: Db,
    data: PathBuf,
    refresh: Duration,
    retain: Duration,
    enroll_window: Duration,
) {
    let (db2, data2) = (db.clone(), data);
    let db3 = db.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::rollout::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = crate::rollout::tick(&db3, crate::util::now_ms()).await {
                tracing::warn!("rollout evaluation: {e}");
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(refresh.max(Duration::from_secs(1)));
        tick.tick().await; // apps were refreshed when added
        loop {
            tick.tick().await;
            crate::releases::refresh_all(&db2, &data2).await;
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = db.expire_commands(crate::util::now_ms()).await {
                tracing::warn!("command expiry: {e}");
            }
            if let Err(e) = crate::retention::prune(&db, retain, crate::util::now_ms()).await {
                tracing::warn!("history retention: {e}");
            }
            let window = i64::try_from(enroll_window.as_millis()).unwrap_or(i64::MAX);
            let before = crate::util::now_ms().saturating_sub(window);
            if let Err(e) = db.prune_enroll_attempts(before).await {
                tracing::warn!("pruning enrollment attempts: {e}");
            }
        }
    });
}

/// Runs the server until the process is stopped. Prints `listening on URL` once bound.
pub async fn serve(o: ServeOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    let db = open_db(&o.data, o.db_url.as_deref(), o.db_connections).await?;
    std::fs::create_dir_all(o.data.join("uploads"))
        .with_context(|| format!("cannot create {}", o.data.join("uploads").display()))?;
    let token_file = o
        .admin_token_file
        .clone()
        .unwrap_or_else(|| o.data.join("admin.token"));
    if let Some(p) = first_admin_token(&db, &token_file).await? {
        println!("first admin token written to {}", p.display());
    }
    let state = AppState {
        db: db.clone(),
        settings: Arc::new(Settings {
            data: o.data.clone(),
            poll_interval_secs: o.poll_interval.as_secs().max(1),
            max_upload: o.max_upload,
            command_ttl: o.command_ttl,
            history_every: o.history_every,
            durable_idle_checkins: o.durable_idle_checkins,
            request_timeout: o.request_timeout,
            repo_timeout: o.repo_timeout,
            upload_read_timeout: o.upload_read_timeout,
            enroll_per_ip: o.enroll_per_ip,
            enroll_window: o.enroll_window,
            max_pending: o.max_pending,
        }),
    };
    crate::alerts::spawn(
        db.clone(),
        o.alerts.clone(),
        o.poll_interval.as_secs().max(1),
    )?;
    spawn_background(
        db,
        o.data.clone(),
        o.refresh_interval,
        o.retain_history,
        o.enroll_window,
    );
    let web = crate::web::WebOptions {
        silent_after: o.silent_after.max(1),
        // The session cookie is marked Secure whenever the server itself speaks TLS.
        secure_cookies: o.tls.is_some(),
        session_ttl: o.session_ttl,
    };
    let (dashboard, dashboard_repo) = crate::web::router(state.clone(), web);
    let app = crate::api::router::router_with(state, o.max_concurrent, dashboard, dashboard_repo);
    let listener = std::net::TcpListener::bind(o.addr)
        .with_context(|| format!("cannot listen on {}", o.addr))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let scheme = if o.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    if let Some(f) = &o.addr_file {
        std::fs::write(f, &url).with_context(|| format!("cannot write {}", f.display()))?;
    }
    println!("listening on {url}");
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        h2.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    match &o.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!("cannot load TLS {} / {}", cert.display(), key.display())
                })?;
            axum_server::from_tcp_rustls(listener, cfg)
                .handle(handle)
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await?;
        }
        None => {
            axum_server::from_tcp(listener)
                .handle(handle)
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await?;
        }
    }
    Ok(())
}
