//! Storage: one schema (`migrations/`) on SQLite or PostgreSQL through sqlx's `Any` driver.
//!
//! Every query here is portable SQL (`$1` placeholders, which SQLite accepts too; `ON
//! CONFLICT`; times as i64 unix milliseconds; ids made by the server). Whatever an instance
//! needs from another instance is in the database; nothing else is shared.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use crate::decide::Release;

pub mod batch;
pub mod rollouts;
pub mod rules;
pub use rollouts::{Offer, Participation, PinRow, PushRow, RolloutRow};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file (WAL mode).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The schema's migrations, compiled in, for one backend.
#[derive(Debug)]
struct Migrations(Backend);

/// The migrations: version, description, SQL for both backends, and SQL run after it on
/// PostgreSQL only (storage settings SQLite does not have). Every file of `migrations/` is
/// here (a test checks it).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (1, "fleet", include_str!("../migrations/0001_fleet.sql"), ""),
    (
        2,
        "history every",
        include_str!("../migrations/0002_history_every.sql"),
        "",
    ),
    (
        3,
        "release yank",
        include_str!("../migrations/0003_release_yank.sql"),
        "",
    ),
    (
        4,
        "rollouts",
        include_str!("../migrations/0004_rollouts.sql"),
        "",
    ),
    (
        5,
        "alerts",
        include_str!("../migrations/0005_alerts.sql"),
        "",
    ),
    (
        6,
        "dashboard",
        include_str!("../migrations/0006_dashboard.sql"),
        "",
    ),
    (
        8,
        "enroll limits",
        include_str!("../migrations/0008_enroll_limits.sql"),
        "",
    ),
    (
        9,
        "push expiry",
        include_str!("../migrations/0009_push_expiry.sql"),
        "",
    ),
    (
        10,
        "rules generation",
        include_str!("../migrations/0010_rules_generation.sql"),
        "",
    ),
    (
        11,
        "commands target",
        include_str!("../migrations/0011_commands_target.sql"),
        "",
    ),
    (
        12,
        "devices no last seen index",
        include_str!("../migrations/0012_devices_no_last_seen_index.sql"),
        "",
    ),
    (
        13,
        "devices hot updates",
        include_str!("../migrations/0013_devices_hot_updates.sql"),
        include_str!("../migrations/0013_devices_hot_updates.postgres.sql"),
    ),
    (
        14,
        "quiet devices",
        include_str!("../migrations/0014_quiet_devices.sql"),
        "",
    ),
];

impl MigrationSource<'static> for Migrations {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let backend = self.0;
        Box::pin(async move {
            Ok(MIGRATIONS
                .iter()
                .map(|(v, d, sql, pg)| {
                    let sql = if backend == Backend::Postgres && !pg.is_empty() {
                        Cow::Owned(format!("{sql}{pg}"))
                    } else {
                        Cow::Borrowed(*sql)
                    };
                    Migration::new(*v, Cow::Borrowed(*d), MigrationType::Simple, sql, false)
                })
                .collect())
        })
    }
}

/// The database and the queries the server runs on it.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// This instance's cache of each app's rules (see [`rules`]).
    rules: std::sync::Arc<rules::RulesCache>,
    /// PostgreSQL: the writer of idle check-ins' device rows (see [`batch`]).
    idle_writer: Option<batch::IdleWriter>,
}

/// A registered app.
#[derive(Debug, Clone, Serialize)]
pub struct App {
    /// Name devices enroll under.
    pub name: String,
    /// Repository URL (or local path) the server reads releases from.
    pub repo: String,
    /// Pinned public key (TUF key JSON).
    pub public_key: String,
    /// SHA-256 of the enrollment secret; `None` when devices wait for approval.
    #[serde(skip)]
    pub enroll_secret_sha256: Option<String>,
    /// Whether new devices wait for an administrator's approval.
    pub approve: bool,
    /// When it was registered (unix ms).
    pub created_ms: i64,
    /// Last successful refresh of its releases (unix ms).
    pub releases_refreshed_ms: Option<i64>,
    /// Error of the last refresh, if it failed.
    pub releases_error: Option<String>,
}

/// The device a token belongs to, as a check-in needs it.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    /// Device id.
    pub id: String,
    /// Its app.
    pub app: String,
    /// `active` or `pending`.
    pub status: String,
    /// Digest of the state document stored.
    pub state_digest: Option<String>,
    /// Poll interval chosen for this device, if any.
    pub poll_interval_secs: Option<i64>,
    /// Version at the last check-in.
    pub version: Option<String>,
    /// Channel at the last check-in.
    pub channel: Option<String>,
    /// When the last history row was written (unix ms).
    pub last_history_ms: Option<i64>,
    /// The release the last check-in's directive named (what the dashboard compares with the
    /// version to call a device "updating").
    pub directed_version: Option<String>,
    /// The highest update result seq stored (results of a check-in above it are new).
    pub last_result_seq: Option<i64>,
    /// Its app's rules generation (`apps.rules_gen`), for [`Db::app_rules`].
    pub rules_gen: i64,
    /// Its app's rules at (or after) `rules_gen`, as [`Db::device_by_token`] looked them up
    /// to know whether the app has an unfinished rollout; the check-in decides with them.
    pub rules: std::sync::Arc<rules::AppRules>,
    /// Its part in each of its app's unfinished rollouts (read with the token, so a check-in
    /// needs no read of its own for it).
    pub rollouts: Vec<Participation>,
    /// Whether a command may be waiting for it (queued for it and not answered, or queued
    /// for its app or one of its tags and not delivered to it): only then does a check-in
    /// look its commands up. Read with the token.
    pub commands_waiting: bool,
    /// The keys of its open alerts among those a check-in may change (read with the token).
    pub open_alerts: BTreeSet<String>,
    /// What its check-in writes to `devices.quiet_gen`: the sum of its own and its app's
    /// `extras_gen` as read with the token when it had no open alert and no waiting command,
    /// else `None`.
    pub quiet_gen: Option<i64>,
}

/// What [`Db::device_extras`] reads.
struct DeviceExtras {
    open_alerts: BTreeSet<String>,
    commands_waiting: bool,
    rollouts: Vec<Participation>,
}

/// Whose counter [`bump_extras`] raises (migration 0014).
#[derive(Debug, Clone, Copy)]
pub enum ExtrasOf<'a> {
    /// That device's (`devices.extras_gen`).
    Device(&'a str),
    /// That of every app with a device that has that tag. (Not the devices' own: one
    /// statement locking many device rows could deadlock with the grouped idle writes.)
    AppsTagged(&'a str),
    /// That app's (`apps.extras_gen`), which every device of the app reads.
    App(&'a str),
}

/// Raises an `extras_gen` counter in `tx`, the transaction of a change that can give a device
/// an open alert or a waiting command (see [`Db::device_by_token`]). Must run in the same
/// transaction as the change, so that no check-in can read the change's absence at the new
/// count.
pub async fn bump_extras(tx: &mut Transaction<'_, Any>, of: ExtrasOf<'_>) -> sqlx::Result<()> {
    let q = match of {
        ExtrasOf::Device(id) => {
            sqlx::query("UPDATE devices SET extras_gen = extras_gen + 1 WHERE id = $1").bind(id)
        }
        ExtrasOf::AppsTagged(tag) => sqlx::query(
            "UPDATE apps SET extras_gen = extras_gen + 1 WHERE name IN \
             (SELECT d.app FROM devices d JOIN device_tags t ON t.device = d.id WHERE t.tag = $1)",
        )
        .bind(tag),
        ExtrasOf::App(app) => {
            sqlx::query("UPDATE apps SET extras_gen = extras_gen + 1 WHERE name = $1").bind(app)
        }
    };
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Fields of a check-in written to the device row.
#[derive(Debug, Clone, Default)]
pub struct CheckinRow {
    /// Installed version.
    pub version: Option<String>,
    /// Tree digest.
    pub tree_digest: Option<String>,
    /// Channel.
    pub channel: Option<String>,
    /// Attributes as JSON.
    pub attrs: String,
    /// Free disk bytes.
    pub free_disk: Option<i64>,
    /// OS.
    pub os: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Host name.
    pub hostname: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// New state document (JSON) and its digest, when the device sent one.
    pub state: Option<(String, String)>,
    /// Update results, stored idempotently by `(device, seq)`.
    pub results: Vec<formats::fleet::UpdateResult>,
    /// `devices.quiet_gen` to write ([`DeviceAuth::quiet_gen`]).
    pub quiet_gen: Option<i64>,
}

/// A command as delivered to a device.
#[derive(Debug, Clone)]
pub struct PendingCommand {
    /// Command id.
    pub id: String,
    /// Kind (kebab-case).
    pub kind: String,
    /// Arguments (JSON).
    pub args: String,
    /// Expiry (unix ms).
    pub expires_ms: i64,
}

/// What [`Db::record_checkin`] returns.
#[derive(Debug, Clone)]
pub struct CheckinOutcome {
    /// `active` or `pending`.
    pub status: String,
    /// Highest result seq stored for the device.
    pub acked_result_seq: Option<i64>,
    /// Commands to deliver (empty unless the device is active).
    pub commands: Vec<PendingCommand>,
    /// State digest now stored.
    pub state_digest: Option<String>,
}

/// Filters of the inventory query.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// App name.
    pub app: Option<String>,
    /// Installed version.
    pub version: Option<String>,
    /// Channel.
    pub channel: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Last seen before this time (unix ms), or never.
    pub silent_since_ms: Option<i64>,
    /// Only devices whose last update result failed.
    pub failed: bool,
    /// Device ids after this one (paging).
    pub after: Option<String>,
    /// Page size.
    pub limit: i64,
}

/// One row of the inventory.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeviceSummary {
    /// Device id.
    pub id: String,
    /// App.
    pub app: String,
    /// `active` or `pending`.
    pub status: String,
    /// Installed version.
    pub version: Option<String>,
    /// Installed tree digest.
    pub tree_digest: Option<String>,
    /// Channel.
    pub channel: Option<String>,
    /// Attributes.
    pub attrs: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Last check-in (unix ms).
    pub last_seen_ms: Option<i64>,
    /// Last check-in (RFC 3339).
    pub last_seen: Option<String>,
    /// Number of check-ins.
    pub checkins: i64,
    /// Host name.
    pub hostname: Option<String>,
    /// OS.
    pub os: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Free disk bytes.
    pub free_disk: Option<i64>,
    /// The last update result (as the device sent it).
    pub last_result: Option<serde_json::Value>,
    /// Digest of the stored state document.
    pub state_digest: Option<String>,
}

/// A stored upload's metadata.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UploadRow {
    /// Upload id (also its file name under `DATA/uploads/`).
    pub id: String,
    /// Device that sent it.
    pub device: String,
    /// Command that asked for it.
    pub command: Option<String>,
    /// Display name the device gave.
    pub name: String,
    /// Bytes.
    pub size: i64,
    /// BLAKE3, hex.
    pub blake3: String,
    /// When (unix ms).
    pub created_ms: i64,
}

/// A command and how each targeted device answered.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CommandView {
    /// Command id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Arguments.
    pub args: serde_json::Value,
    /// `pending`, `delivered`, `ok`, `failed`, `rejected` or `expired` (for this device).
    pub status: String,
    /// Queued (unix ms).
    pub created_ms: i64,
    /// Expires (unix ms).
    pub expires_ms: i64,
    /// Result message.
    pub message: Option<String>,
    /// Result data.
    pub data: Option<serde_json::Value>,
}

fn json_or_null(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn app_from(r: &AnyRow) -> sqlx::Result<App> {
    Ok(App {
        name: r.try_get("name")?,
        repo: r.try_get("repo")?,
        public_key: r.try_get("public_key")?,
        enroll_secret_sha256: r.try_get("enroll_secret_sha256")?,
        approve: r.try_get::<i64, _>("approve")? != 0,
        created_ms: r.try_get("created_ms")?,
        releases_refreshed_ms: r.try_get("releases_refreshed_ms")?,
        releases_error: r.try_get("releases_error")?,
    })
}

const DEVICE_COLS: &str = "id, app, status, version, tree_digest, channel, attrs, last_seen_ms, \
    checkins, hostname, os, arch, agent_version, free_disk, last_result, state_digest";

fn summary_from(r: &AnyRow) -> sqlx::Result<DeviceSummary> {
    let last_seen_ms: Option<i64> = r.try_get("last_seen_ms")?;
    Ok(DeviceSummary {
        id: r.try_get("id")?,
        app: r.try_get("app")?,
        status: r.try_get("status")?,
        version: r.try_get("version")?,
        tree_digest: r.try_get("tree_digest")?,
        channel: r.try_get("channel")?,
        attrs: r
            .try_get::<Option<String>, _>("attrs")?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        tags: Vec::new(),
        last_seen_ms,
        last_seen: last_seen_ms.map(crate::util::rfc3339),
        checkins: r.try_get("checkins")?,
        hostname: r.try_get("hostname")?,
        os: r.try_get("os")?,
        arch: r.try_get("arch")?,
        agent_version: r.try_get("agent_version")?,
        free_disk: r.try_get("free_disk")?,
        last_result: json_or_null(r.try_get("last_result")?),
        state_digest: r.try_get("state_digest")?,
    })
}

fn upload_from(r: &AnyRow) -> sqlx::Result<UploadRow> {
    Ok(UploadRow {
        id: r.try_get("id")?,
        device: r.try_get("device")?,
        command: r.try_get("command")?,
        name: r.try_get("name")?,
        size: r.try_get("size")?,
        blake3: r.try_get("blake3")?,
        created_ms: r.try_get("created_ms")?,
    })
}

/// Clamps an unsigned count into a BIGINT column.
pub fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Db {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and runs the
    /// migrations. SQLite is switched to WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> sqlx::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // No ping before each use: on PostgreSQL it is one more round trip per statement.
            // A connection that broke is found by the statement itself, which then fails
            // (a 503 the device retries) and the pool drops that connection.
            .test_before_acquire(false);
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL: readers never block the writer; NORMAL sync is durable against a
                    // killed process (only a power loss may lose the last commits).
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        let migrator = Migrator::new(Migrations(backend))
            .await
            .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        let idle_writer =
            (backend == Backend::Postgres).then(|| batch::IdleWriter::start(pool.clone()));
        Ok(Db {
            pool,
            backend,
            rules: Default::default(),
            idle_writer,
        })
    }

    /// The URL of the SQLite database in a data directory.
    pub fn sqlite_url(data: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", data.join("fleet.db").display())
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for queries not wrapped here (tests, retention).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    // ---- enrollment limits ----

    /// Records an enrollment attempt for `app` from `ip` and returns how many there were since
    /// `since_ms`, this one included, counting no further than `cap` (the caller's limit plus
    /// one: an address that enrolled thousands of devices does not make each enrollment count
    /// them all). Old attempts are pruned by the background task
    /// ([`Db::prune_enroll_attempts`]), not here: concurrent enrollments each deleting the
    /// same old rows deadlocked on PostgreSQL, and the count does not need them gone.
    pub async fn enroll_attempt(
        &self,
        app: &str,
        ip: &str,
        now: i64,
        since_ms: i64,
        cap: i64,
    ) -> sqlx::Result<i64> {
        sqlx::query("INSERT INTO enroll_attempts (id, app, ip, at_ms) VALUES ($1, $2, $3, $4)")
            .bind(crate::util::new_id())
            .bind(app)
            .bind(ip)
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM enroll_attempts \
             WHERE app = $1 AND ip = $2 AND at_ms > $3 LIMIT $4) AS recent",
        )
        .bind(app)
        .bind(ip)
        .bind(since_ms)
        .bind(cap)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")
    }

    /// Deletes the enrollment attempts made at or before `before_ms` (of every app); returns
    /// how many.
    pub async fn prune_enroll_attempts(&self, before_ms: i64) -> sqlx::Result<u64> {
        let r = sqlx::query("DELETE FROM enroll_attempts WHERE at_ms <= $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Number of devices of `app` waiting for approval.
    pub async fn pending_count(&self, app: &str) -> sqlx::Result<i64> {
        sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE app = $1 AND status = 'pending'")
            .bind(app)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    // ---- admin tokens ----

    /// Stores a new admin token's hash with `scope`.
    pub async fn add_admin_token(&self, sha: &str, scope: &str, label: &str) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO admin_tokens (token_sha256, scope, label, created_ms) VALUES ($1, $2, $3, $4)")
            .bind(sha)
            .bind(scope)
            .bind(label)
            .bind(crate::util::now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Number of admin tokens.
    pub async fn admin_token_count(&self) -> sqlx::Result<i64> {
        sqlx::query("SELECT COUNT(*) AS n FROM admin_tokens")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    /// Scope of the admin token with hash `sha`.
    pub async fn admin_scope(&self, sha: &str) -> sqlx::Result<Option<String>> {
        let row = sqlx::query("SELECT scope FROM admin_tokens WHERE token_sha256 = $1")
            .bind(sha)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("scope")).transpose()
    }

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO audit_log (id, at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(crate::util::new_id())
            .bind(crate::util::now_ms())
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- apps and releases ----

    /// Registers an app; `false` if the name is taken.
    pub async fn insert_app(&self, app: &App) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "INSERT INTO apps (name, repo, public_key, enroll_secret_sha256, approve, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&app.name)
        .bind(&app.repo)
        .bind(&app.public_key)
        .bind(app.enroll_secret_sha256.clone())
        .bind(i64::from(app.approve))
        .bind(app.created_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// One app.
    pub async fn app(&self, name: &str) -> sqlx::Result<Option<App>> {
        let row = sqlx::query("SELECT * FROM apps WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(app_from).transpose()
    }

    /// All apps, by name.
    pub async fn apps(&self) -> sqlx::Result<Vec<App>> {
        let rows = sqlx::query("SELECT * FROM apps ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(app_from).collect()
    }

    /// Replaces the releases cached for `app` with what its repository offers now (instances
    /// refreshing at once both succeed: the inserts are upserts).
    pub async fn set_releases(
        &self,
        app: &str,
        releases: &[Release],
        now: i64,
    ) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE apps SET releases_refreshed_ms = $1, releases_error = NULL, \
             rules_gen = rules_gen + 1 WHERE name = $2",
        )
        .bind(now)
        .bind(app)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM releases WHERE app = $1")
            .bind(app)
            .execute(&mut *tx)
            .await?;
        for r in releases {
            sqlx::query(
                "INSERT INTO releases (app, version, channel, targeting, seen_ms, yanked) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (app, version) DO UPDATE SET channel = excluded.channel, \
                 targeting = excluded.targeting, seen_ms = excluded.seen_ms, yanked = excluded.yanked",
            )
            .bind(app)
            .bind(r.version.to_string())
            .bind(&r.channel)
            .bind(serde_json::to_string(&r.targeting).unwrap_or_default())
            .bind(now)
            .bind(r.yanked.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Records why the last refresh of `app` failed (the cached releases stay).
    pub async fn set_releases_error(&self, app: &str, error: &str) -> sqlx::Result<()> {
        sqlx::query("UPDATE apps SET releases_error = $1 WHERE name = $2")
            .bind(error)
            .bind(app)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The releases cached for `app`, in no particular order.
    pub async fn releases(&self, app: &str) -> sqlx::Result<Vec<Release>> {
        let rows =
            sqlx::query("SELECT version, channel, targeting, yanked FROM releases WHERE app = $1")
                .bind(app)
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::new();
        for r in rows {
            let v: String = r.try_get("version")?;
            let Ok(version) = formats::Version::parse(&v) else {
                continue;
            };
            out.push(Release {
                version,
                channel: r.try_get("channel")?,
                targeting: serde_json::from_str(&r.try_get::<String, _>("targeting")?)
                    .unwrap_or_default(),
                yanked: r.try_get("yanked")?,
            });
        }
        Ok(out)
    }

    // ---- devices ----

    /// App a device id is enrolled under, if any.
    pub async fn device_app(&self, id: &str) -> sqlx::Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT app, status FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("app")?, r.try_get("status")?)))
            .transpose()
    }

    /// Enrolls `id` (or rotates the token of a known id), with `status`: re-enrolling in
    /// approval mode makes a device pending again, so knowing a device id is not enough to
    /// take over its identity.
    pub async fn enroll(
        &self,
        id: &str,
        app: &str,
        token_sha: &str,
        status: &str,
        hostname: Option<&str>,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO devices (id, app, token_sha256, status, enrolled_ms, hostname) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256, \
             status = excluded.status, \
             hostname = COALESCE(excluded.hostname, devices.hostname)",
        )
        .bind(id)
        .bind(app)
        .bind(token_sha)
        .bind(status)
        .bind(crate::util::now_ms())
        .bind(hostname.map(str::to_string))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The device a token hash belongs to, with what its check-in needs to know beforehand:
    /// its app's rules generation, its part in the app's unfinished rollouts, whether a command
    /// may be waiting for it (at `now`), and which of its alerts of `alert_kinds` are open (keys
    /// `KIND:DEVICE`).
    ///
    /// The first statement reads the device row and its app's row only. The rest, a second
    /// statement ([`Db::device_extras`]), is read only when it can be non-empty:
    /// - alerts and commands: unless the device is quiet, i.e. a check-in read it had neither
    ///   at the current sum of its own and its app's `extras_gen` (`devices.quiet_gen`,
    ///   migration 0014). Every change that can give a device an open alert or a waiting
    ///   command raises one of the two in its own transaction ([`bump_extras`]), so a device
    ///   read quiet stays quiet until then;
    /// - rollouts: when the app's rules (exact at the generation read here) have a running or
    ///   halted rollout.
    ///
    /// A device of a quiet app thus costs one statement of two small index lookups instead of
    /// one that sets up every sub-plan (on PostgreSQL that set-up was a quarter of its CPU).
    pub async fn device_by_token(
        &self,
        sha: &str,
        now: i64,
        alert_kinds: &[&str; 3],
    ) -> sqlx::Result<Option<DeviceAuth>> {
        let row = sqlx::query(
            "SELECT d.id, d.app, d.status, d.state_digest, d.poll_interval_secs, d.version, \
             d.channel, d.last_history_ms, d.directed_version, d.last_result_seq, d.quiet_gen, \
             COALESCE(a.rules_gen, 0) AS rules_gen, \
             d.extras_gen + COALESCE(a.extras_gen, 0) AS extras_gen \
             FROM devices d LEFT JOIN apps a ON a.name = d.app WHERE d.token_sha256 = $1",
        )
        .bind(sha)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let mut dev = DeviceAuth {
            id: r.try_get("id")?,
            app: r.try_get("app")?,
            status: r.try_get("status")?,
            state_digest: r.try_get("state_digest")?,
            poll_interval_secs: r.try_get("poll_interval_secs")?,
            version: r.try_get("version")?,
            channel: r.try_get("channel")?,
            last_history_ms: r.try_get("last_history_ms")?,
            directed_version: r.try_get("directed_version")?,
            last_result_seq: r.try_get("last_result_seq")?,
            rules_gen: r.try_get("rules_gen")?,
            rules: Default::default(),
            rollouts: Vec::new(),
            commands_waiting: false,
            open_alerts: BTreeSet::new(),
            quiet_gen: None,
        };
        dev.rules = self.app_rules(&dev.app, dev.rules_gen).await?;
        let extras_gen: i64 = r.try_get("extras_gen")?;
        let quiet = r.try_get::<Option<i64>, _>("quiet_gen")? == Some(extras_gen);
        if !quiet || !dev.rules.rollouts.is_empty() {
            let e = self
                .device_extras(&dev.id, &dev.app, now, alert_kinds)
                .await?;
            dev.open_alerts = e.open_alerts;
            dev.commands_waiting = e.commands_waiting;
            dev.rollouts = e.rollouts;
        }
        if dev.open_alerts.is_empty() && !dev.commands_waiting {
            dev.quiet_gen = Some(extras_gen);
        }
        Ok(Some(dev))
    }

    /// The part of [`Db::device_by_token`] read only when needed: open alerts of
    /// `alert_kinds`, whether a command may be waiting (at `now`), rollout participation.
    async fn device_extras(
        &self,
        id: &str,
        app: &str,
        now: i64,
        alert_kinds: &[&str; 3],
    ) -> sqlx::Result<DeviceExtras> {
        let r = sqlx::query(
            "SELECT (SELECT string_agg(al.open_key, ',') FROM alerts al WHERE al.open_key IN \
                 ($3 || ':' || $1, $4 || ':' || $1, $5 || ':' || $1)) AS open_alerts, \
             CASE WHEN EXISTS (SELECT 1 FROM command_deliveries cd \
                     JOIN commands c ON c.id = cd.command \
                     WHERE cd.device = $1 AND cd.status IN ('pending', 'delivered') \
                     AND c.expires_ms > $6) \
                 OR EXISTS (SELECT 1 FROM commands c WHERE c.expires_ms > $6 \
                     AND ((c.target_kind = 'app' AND c.target = $2) \
                       OR (c.target_kind = 'tag' AND c.target IN \
                           (SELECT t.tag FROM device_tags t WHERE t.device = $1))) \
                     AND NOT EXISTS (SELECT 1 FROM command_deliveries x \
                                     WHERE x.command = c.id AND x.device = $1)) \
                 THEN 1 ELSE 0 END AS commands_waiting, \
             (SELECT string_agg(r.rollout || ' ' || r.result || ' ' || \
                 CAST(r.offered_ms AS TEXT) || ' ' || COALESCE(CAST(r.result_ms AS TEXT), '-'), \
                 ',') \
              FROM rollout_devices r WHERE r.device = $1 AND r.rollout IN \
                 (SELECT u.id FROM rollouts u WHERE u.app = $2 \
                  AND u.state IN ('running', 'halted'))) AS rollouts",
        )
        .bind(id)
        .bind(app)
        .bind(alert_kinds[0])
        .bind(alert_kinds[1])
        .bind(alert_kinds[2])
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let rollouts = r.try_get::<Option<String>, _>("rollouts")?;
        let open_alerts = r.try_get::<Option<String>, _>("open_alerts")?;
        Ok(DeviceExtras {
            open_alerts: open_alerts
                .iter()
                .flat_map(|l| l.split(','))
                .map(str::to_string)
                .collect(),
            commands_waiting: r.try_get::<i32, _>("commands_waiting")? != 0,
            rollouts: rollouts::parts_from_list(id, rollouts.as_deref().unwrap_or(""))?,
        })
    }

    /// Records a check-in (device row, a history row when `history`, results) and returns the
    /// commands to deliver.
    ///
    /// Writes are kept short, because SQLite has one writer at a time:
    /// - the device row is updated by one `UPDATE ... RETURNING`, which also records the
    ///   newest result. Without a history row or results, that statement is the whole write,
    ///   in autocommit: one round trip, and on SQLite the write lock is held for one
    ///   statement, not a transaction of several round trips;
    /// - the history row and results join it in one transaction that starts with that write,
    ///   so SQLite takes its write lock first and never fails to upgrade a read lock;
    /// - commands are looked up only when the token's read saw one that may be waiting
    ///   ([`DeviceAuth::commands_waiting`]), by a read. A write follows only when one is
    ///   delivered for the first time.
    ///
    /// An idle check-in thus costs two statements: the token's read and the device row. On
    /// PostgreSQL the device rows of idle check-ins are written together, one statement for
    /// all those waiting ([`batch`]); each still commits before its check-in is answered.
    ///
    /// `idle` (no result and no state document): on PostgreSQL the device row's commit does
    /// not wait for the WAL flush (`synchronous_commit` off for that transaction, set in the
    /// same statement): the next check-in writes the same row again. Anything else is durable
    /// before this returns.
    pub async fn record_checkin(
        &self,
        dev: &DeviceAuth,
        c: &CheckinRow,
        now: i64,
        history: bool,
        idle: bool,
    ) -> sqlx::Result<CheckinOutcome> {
        let batched = match &self.idle_writer {
            Some(w) if idle && !history && c.results.is_empty() => w.write(&dev.id, now, c).await?,
            _ => None,
        };
        let batch::Written {
            status,
            last_result_seq: acked_result_seq,
            state_digest,
        } = match batched {
            Some(w) => w,
            None => self.write_device_row(dev, c, now, history, idle).await?,
        };
        let commands = if status == "active" && dev.commands_waiting {
            self.deliver_commands(&dev.id, &dev.app, now).await?
        } else {
            Vec::new()
        };
        Ok(CheckinOutcome {
            status,
            acked_result_seq,
            commands,
            state_digest,
        })
    }

    /// [`Db::record_checkin`]'s write of the device row by this request itself (not the
    /// idle writer's), with the history row and results when there are any; returns what
    /// the `UPDATE ... RETURNING` returned.
    async fn write_device_row(
        &self,
        dev: &DeviceAuth,
        c: &CheckinRow,
        now: i64,
        history: bool,
        idle: bool,
    ) -> sqlx::Result<batch::Written> {
        let (state, state_digest) = match &c.state {
            Some((s, d)) => (Some(s.clone()), Some(d.clone())),
            None => (None, None),
        };
        let last = c.results.iter().max_by_key(|r| r.seq);
        // Every SET expression reads the row as it was, so the three last_result_* columns
        // test the same old last_result_seq. On PostgreSQL the `FROM` turns the WAL-flush wait
        // off for this transaction (`set_config(..., true)` is `SET LOCAL`) when `$19` is 1:
        // for an idle check-in without a transaction, in the same statement.
        macro_rules! device_update {
            ($from:literal) => {
                concat!(
                    "UPDATE devices SET last_seen_ms = $1, checkins = checkins + 1, \
                     version = $2, tree_digest = $3, channel = $4, attrs = $5, free_disk = $6, \
                     os = $7, arch = $8, hostname = COALESCE($9, hostname), \
                     agent_version = $10, \
                     state = COALESCE($11, state), state_digest = COALESCE($12, state_digest), \
                     state_ms = CASE WHEN $11 IS NULL THEN state_ms ELSE $1 END, \
                     last_history_ms = CASE WHEN $14 = 1 THEN $1 ELSE last_history_ms END, \
                     last_result_seq = CASE WHEN $15 > COALESCE(last_result_seq, -1) \
                         THEN $15 ELSE last_result_seq END, \
                     last_result_ok = CASE WHEN $15 > COALESCE(last_result_seq, -1) \
                         THEN $16 ELSE last_result_ok END, \
                     last_result = CASE WHEN $15 > COALESCE(last_result_seq, -1) \
                         THEN $17 ELSE last_result END, quiet_gen = $18",
                    $from,
                    " WHERE id = $13 RETURNING status, last_result_seq, state_digest"
                )
            };
        }
        let postgres = self.backend == Backend::Postgres;
        let sql = if postgres {
            device_update!(
                " FROM (SELECT CASE WHEN $19 = 1 \
                 THEN set_config('synchronous_commit', 'off', true) END AS sc) AS nosync"
            )
        } else {
            device_update!("")
        };
        let mut update = sqlx::query(sql)
            .bind(now)
            .bind(c.version.clone())
            .bind(c.tree_digest.clone())
            .bind(c.channel.clone())
            .bind(&c.attrs)
            .bind(c.free_disk)
            .bind(c.os.clone())
            .bind(c.arch.clone())
            .bind(c.hostname.clone())
            .bind(c.agent_version.clone())
            .bind(state)
            .bind(state_digest)
            .bind(&dev.id)
            .bind(i64::from(history))
            // -1 (below any seq) when there is no result: the CASEs then keep the old values.
            .bind(last.map_or(-1, |r| i64_of(r.seq)))
            .bind(last.map(|r| i64::from(r.ok)))
            .bind(last.map(|r| serde_json::to_string(r).unwrap_or_default()))
            .bind(c.quiet_gen);
        if postgres {
            update = update.bind(i64::from(idle));
        }
        let row = if !history && c.results.is_empty() {
            // One autocommit statement: on SQLite the write lock is held for it alone.
            update.fetch_one(&self.pool).await?
        } else {
            let mut tx = self.pool.begin().await?;
            let row = update.fetch_one(&mut *tx).await?;
            if history {
                sqlx::query(
                    "INSERT INTO checkins (id, device, at_ms, version, channel, free_disk) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(crate::util::new_id())
                .bind(&dev.id)
                .bind(now)
                .bind(c.version.clone())
                .bind(c.channel.clone())
                .bind(c.free_disk)
                .execute(&mut *tx)
                .await?;
            }
            for r in &c.results {
                sqlx::query(
                    "INSERT INTO update_results (device, seq, finished_at, from_version, \
                     to_version, method, bytes, seconds, ok, error_kind, error_message, \
                     started_by, received_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (device, seq) DO NOTHING",
                )
                .bind(&dev.id)
                .bind(i64_of(r.seq))
                .bind(&r.finished_at)
                .bind(r.from.clone())
                .bind(&r.to)
                .bind(&r.method)
                .bind(i64_of(r.bytes))
                .bind(r.seconds)
                .bind(i64::from(r.ok))
                .bind(r.error_kind.clone())
                .bind(r.error_message.clone())
                .bind(r.started_by.clone())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            row
        };
        Ok(batch::Written {
            status: row.try_get("status")?,
            last_result_seq: row.try_get("last_result_seq")?,
            state_digest: row.try_get("state_digest")?,
        })
    }

    /// The commands to deliver to `device` at a check-in: those queued for it and not
    /// answered, and those queued for its app or one of its tags, even when it enrolled or
    /// got the tag after they were queued (until they expire); a device that already has a
    /// delivery of one (answered or not) never gets it again. Found by a read; the write
    /// that marks them delivered happens only when one is delivered for the first time.
    async fn deliver_commands(
        &self,
        device: &str,
        app: &str,
        now: i64,
    ) -> sqlx::Result<Vec<PendingCommand>> {
        let rows = sqlx::query(
            "SELECT c.id, c.kind, c.args, c.expires_ms, c.created_ms, d.status AS delivery \
             FROM command_deliveries d JOIN commands c ON c.id = d.command \
             WHERE d.device = $1 AND d.status IN ('pending', 'delivered') \
             AND c.expires_ms > $2 \
             UNION ALL \
             SELECT c.id, c.kind, c.args, c.expires_ms, c.created_ms, 'new' AS delivery \
             FROM commands c \
             WHERE c.expires_ms > $2 \
             AND ((c.target_kind = 'app' AND c.target = $3) \
               OR (c.target_kind = 'tag' AND c.target IN \
                   (SELECT tag FROM device_tags WHERE device = $1))) \
             AND NOT EXISTS (SELECT 1 FROM command_deliveries d \
                             WHERE d.command = c.id AND d.device = $1) \
             ORDER BY created_ms, id LIMIT 100",
        )
        .bind(device)
        .bind(now)
        .bind(app)
        .fetch_all(&self.pool)
        .await?;
        let mut commands = Vec::with_capacity(rows.len());
        let mut fresh = Vec::new();
        let mut first_delivery = false;
        for r in rows {
            let id: String = r.try_get("id")?;
            match r.try_get::<String, _>("delivery")?.as_str() {
                "new" => fresh.push(id.clone()),
                "pending" => first_delivery = true,
                _ => {}
            }
            commands.push(PendingCommand {
                id,
                kind: r.try_get("kind")?,
                args: r.try_get("args")?,
                expires_ms: r.try_get("expires_ms")?,
            });
        }
        if first_delivery || !fresh.is_empty() {
            let mut tx = self.pool.begin().await?;
            for id in &fresh {
                // A concurrent check-in of the same device may have inserted it: kept once.
                sqlx::query(
                    "INSERT INTO command_deliveries (command, device, status, delivered_ms) \
                     VALUES ($1, $2, 'delivered', $3) ON CONFLICT (command, device) DO NOTHING",
                )
                .bind(id)
                .bind(device)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE command_deliveries SET status = 'delivered', delivered_ms = $1 \
                 WHERE device = $2 AND status = 'pending'",
            )
            .bind(now)
            .bind(device)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(commands)
    }

    /// Stores a command result posted by `device`. `Ok(false)`: no such command for this
    /// device (or it already has a result).
    pub async fn command_result(
        &self,
        command: &str,
        device: &str,
        outcome: &str,
        message: Option<&str>,
        data: Option<String>,
    ) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE command_deliveries SET status = $1, result_ms = $2, message = $3, data = $4 \
             WHERE command = $5 AND device = $6 AND status IN ('pending', 'delivered')",
        )
        .bind(outcome)
        .bind(crate::util::now_ms())
        .bind(message.map(str::to_string))
        .bind(data)
        .bind(command)
        .bind(device)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Whether `command` was queued for `device` (in any state), and its kind.
    pub async fn command_for(
        &self,
        command: &str,
        device: &str,
    ) -> sqlx::Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT c.kind, d.status FROM command_deliveries d JOIN commands c ON c.id = d.command \
             WHERE d.command = $1 AND d.device = $2",
        )
        .bind(command)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("kind")?, r.try_get("status")?)))
            .transpose()
    }

    /// Approves a pending device; `false` if there is no such device.
    pub async fn approve(&self, id: &str) -> sqlx::Result<bool> {
        let r = sqlx::query("UPDATE devices SET status = 'active' WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Adds and removes tags of a device; `false` if there is no such device.
    pub async fn tag(&self, id: &str, add: &[String], remove: &[String]) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("UPDATE devices SET checkins = checkins WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !exists {
            return Ok(false);
        }
        if !add.is_empty() {
            // a command queued for a tag reaches devices that get the tag later
            bump_extras(&mut tx, ExtrasOf::Device(id)).await?;
        }
        for t in add {
            sqlx::query("INSERT INTO device_tags (device, tag) VALUES ($1, $2) ON CONFLICT (device, tag) DO NOTHING")
                .bind(id)
                .bind(t)
                .execute(&mut *tx)
                .await?;
        }
        for t in remove {
            sqlx::query("DELETE FROM device_tags WHERE device = $1 AND tag = $2")
                .bind(id)
                .bind(t)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn tags_of(&self, ids: &[String]) -> sqlx::Result<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for chunk in ids.chunks(200) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT device, tag FROM device_tags WHERE device IN ({}) ORDER BY device, tag",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.entry(r.try_get("device")?)
                    .or_default()
                    .push(r.try_get("tag")?);
            }
        }
        Ok(out)
    }

    /// The inventory, paged by device id.
    pub async fn devices(&self, f: &DeviceFilter) -> sqlx::Result<Vec<DeviceSummary>> {
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<String> = Vec::new();
        let mut push = |cond: &str, v: &str, args: &mut Vec<String>| {
            args.push(v.to_string());
            conds.push(cond.replace('?', &format!("${}", args.len())));
        };
        if let Some(v) = &f.app {
            push("app = ?", v, &mut args);
        }
        if let Some(v) = &f.version {
            push("version = ?", v, &mut args);
        }
        if let Some(v) = &f.channel {
            push("COALESCE(channel, 'stable') = ?", v, &mut args);
        }
        if let Some(v) = &f.tag {
            push(
                "id IN (SELECT device FROM device_tags WHERE tag = ?)",
                v,
                &mut args,
            );
        }
        if let Some(v) = &f.after {
            push("id > ?", v, &mut args);
        }
        if f.failed {
            conds.push("last_result_ok = 0".into());
        }
        let silent = f.silent_since_ms;
        if silent.is_some() {
            let n = args.len() + 1;
            conds.push(format!("(last_seen_ms IS NULL OR last_seen_ms < ${n})"));
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {DEVICE_COLS} FROM devices {where_} ORDER BY id LIMIT {}",
            f.limit.clamp(1, 10_000)
        );
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a);
        }
        if let Some(ms) = silent {
            q = q.bind(ms);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut out: Vec<DeviceSummary> =
            rows.iter().map(summary_from).collect::<sqlx::Result<_>>()?;
        let ids: Vec<String> = out.iter().map(|d| d.id.clone()).collect();
        let mut tags = self.tags_of(&ids).await?;
        for d in &mut out {
            d.tags = tags.remove(&d.id).unwrap_or_default();
        }
        Ok(out)
    }

    /// One device's inventory row.
    pub async fn device(&self, id: &str) -> sqlx::Result<Option<DeviceSummary>> {
        let sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE id = $1");
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut d = summary_from(&row)?;
        d.tags = self
            .tags_of(&[d.id.clone()])
            .await?
            .remove(&d.id)
            .unwrap_or_default();
        Ok(Some(d))
    }

    /// One device's state document and when it was sent.
    pub async fn device_state(
        &self,
        id: &str,
    ) -> sqlx::Result<(Option<serde_json::Value>, Option<i64>)> {
        let row = sqlx::query("SELECT state, state_ms FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok((json_or_null(r.try_get("state")?), r.try_get("state_ms")?)),
            None => Ok((None, None)),
        }
    }

    /// The newest `limit` check-ins of a device: `(at_ms, version, channel)`.
    pub async fn checkin_history(
        &self,
        id: &str,
        limit: i64,
    ) -> sqlx::Result<Vec<(i64, Option<String>, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT at_ms, version, channel FROM checkins WHERE device = $1 ORDER BY at_ms DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("at_ms")?,
                    r.try_get("version")?,
                    r.try_get("channel")?,
                ))
            })
            .collect()
    }

    /// Per-day summaries of pruned check-ins: `(day, count, last_version)`, newest first.
    pub async fn checkin_days(
        &self,
        id: &str,
        limit: i64,
    ) -> sqlx::Result<Vec<(i64, i64, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT day, count, last_version FROM checkin_days WHERE device = $1 ORDER BY day DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("day")?,
                    r.try_get("count")?,
                    r.try_get("last_version")?,
                ))
            })
            .collect()
    }

    /// The newest `limit` update results of a device, as JSON objects.
    pub async fn update_results(
        &self,
        id: &str,
        limit: i64,
    ) -> sqlx::Result<Vec<serde_json::Value>> {
        let rows = sqlx::query(
            "SELECT seq, finished_at, from_version, to_version, method, bytes, seconds, ok, \
             error_kind, error_message, started_by FROM update_results WHERE device = $1 \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "seq": r.try_get::<i64, _>("seq")?,
                    "finished_at": r.try_get::<String, _>("finished_at")?,
                    "from": r.try_get::<Option<String>, _>("from_version")?,
                    "to": r.try_get::<String, _>("to_version")?,
                    "method": r.try_get::<String, _>("method")?,
                    "bytes": r.try_get::<i64, _>("bytes")?,
                    "seconds": r.try_get::<f64, _>("seconds")?,
                    "ok": r.try_get::<i64, _>("ok")? != 0,
                    "error_kind": r.try_get::<Option<String>, _>("error_kind")?,
                    "error_message": r.try_get::<Option<String>, _>("error_message")?,
                    "started_by": r.try_get::<Option<String>, _>("started_by")?,
                }))
            })
            .collect()
    }

    /// Commands queued for a device, newest first.
    pub async fn device_commands(&self, id: &str, limit: i64) -> sqlx::Result<Vec<CommandView>> {
        let rows = sqlx::query(
            "SELECT c.id, c.kind, c.args, c.created_ms, c.expires_ms, d.status, d.message, d.data \
             FROM command_deliveries d JOIN commands c ON c.id = d.command \
             WHERE d.device = $1 ORDER BY c.created_ms DESC, c.id LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CommandView {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    args: json_or_null(r.try_get("args")?).unwrap_or(serde_json::Value::Null),
                    status: r.try_get("status")?,
                    created_ms: r.try_get("created_ms")?,
                    expires_ms: r.try_get("expires_ms")?,
                    message: r.try_get("message")?,
                    data: json_or_null(r.try_get("data")?),
                })
            })
            .collect()
    }

    /// Queues a command for a device, every device with a tag, or every device of an app.
    /// Returns the number of devices it targets.
    #[allow(clippy::too_many_arguments)]
    pub async fn queue_command(
        &self,
        id: &str,
        target_kind: &str,
        target: &str,
        kind: &str,
        args: &str,
        now: i64,
        expires_ms: i64,
        created_by: &str,
    ) -> sqlx::Result<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO commands (id, app, target_kind, target, kind, args, created_ms, expires_ms, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(if target_kind == "app" { Some(target.to_string()) } else { None })
        .bind(target_kind)
        .bind(target)
        .bind(kind)
        .bind(args)
        .bind(now)
        .bind(expires_ms)
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
        let fill = match target_kind {
            "device" => "SELECT $1, id, 'pending' FROM devices WHERE id = $2",
            "tag" => "SELECT $1, device, 'pending' FROM device_tags WHERE tag = $2",
            _ => "SELECT $1, id, 'pending' FROM devices WHERE app = $2",
        };
        let n = sqlx::query(&format!(
            "INSERT INTO command_deliveries (command, device, status) {fill}"
        ))
        .bind(id)
        .bind(target)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let of = match target_kind {
            "device" => ExtrasOf::Device(target),
            "tag" => ExtrasOf::AppsTagged(target),
            _ => ExtrasOf::App(target),
        };
        bump_extras(&mut tx, of).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Marks deliveries of expired commands `expired`; returns how many.
    pub async fn expire_commands(&self, now: i64) -> sqlx::Result<u64> {
        let r = sqlx::query(
            "UPDATE command_deliveries SET status = 'expired' WHERE status IN ('pending', 'delivered') \
             AND command IN (SELECT id FROM commands WHERE expires_ms <= $1)",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    // ---- uploads ----

    /// Stores an upload's metadata.
    pub async fn insert_upload(&self, u: &UploadRow) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO uploads (id, device, command, name, size, blake3, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&u.id)
        .bind(&u.device)
        .bind(u.command.clone())
        .bind(&u.name)
        .bind(u.size)
        .bind(&u.blake3)
        .bind(u.created_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Number of uploads `device` made for `command`.
    pub async fn upload_count(&self, command: &str, device: &str) -> sqlx::Result<i64> {
        sqlx::query("SELECT COUNT(*) AS n FROM uploads WHERE command = $1 AND device = $2")
            .bind(command)
            .bind(device)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    /// The uploads `device` made without a command (crash files) since `since_ms`: how many,
    /// and when the oldest of them was made (index `uploads_device`).
    pub async fn crash_uploads_since(
        &self,
        device: &str,
        since_ms: i64,
    ) -> sqlx::Result<(i64, Option<i64>)> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_ms) AS oldest FROM uploads \
             WHERE device = $1 AND created_ms > $2 AND command IS NULL",
        )
        .bind(device)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("n")?, r.try_get("oldest")?))
    }

    /// Uploads, of one device or all, newest first.
    pub async fn uploads(&self, device: Option<&str>, limit: i64) -> sqlx::Result<Vec<UploadRow>> {
        let rows =
            match device {
                Some(d) => sqlx::query(
                    "SELECT * FROM uploads WHERE device = $1 ORDER BY created_ms DESC, id LIMIT $2",
                )
                .bind(d)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT * FROM uploads ORDER BY created_ms DESC, id LIMIT $1")
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        rows.iter().map(upload_from).collect()
    }

    /// One upload's metadata.
    pub async fn upload(&self, id: &str) -> sqlx::Result<Option<UploadRow>> {
        let row = sqlx::query("SELECT * FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(upload_from).transpose()
    }

    // ---- retention ----

    /// Folds check-ins older than `cutoff_ms` into per-device, per-day rows of
    /// `checkin_days` and deletes them. Returns how many check-ins were pruned.
    pub async fn prune_checkins(&self, cutoff_ms: i64) -> sqlx::Result<u64> {
        let mut tx = self.pool.begin().await?;
        // Start with a write (see record_checkin).
        sqlx::query("UPDATE checkin_days SET count = count WHERE day < 0")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT device, at_ms / 86400000 AS day, COUNT(*) AS n, MIN(at_ms) AS first_ms, \
             MAX(at_ms) AS last_ms FROM checkins WHERE at_ms < $1 GROUP BY device, at_ms / 86400000",
        )
        .bind(cutoff_ms)
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let device: String = r.try_get("device")?;
            let day: i64 = r.try_get("day")?;
            let n: i64 = r.try_get("n")?;
            let first: i64 = r.try_get("first_ms")?;
            let last: i64 = r.try_get("last_ms")?;
            let last_version: Option<String> = sqlx::query(
                "SELECT version FROM checkins WHERE device = $1 AND at_ms = $2 LIMIT 1",
            )
            .bind(&device)
            .bind(last)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("version"))
            .transpose()?
            .flatten();
            sqlx::query(
                "INSERT INTO checkin_days (device, day, count, first_ms, last_ms, last_version) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device, day) DO UPDATE SET \
                 count = checkin_days.count + excluded.count, \
                 first_ms = CASE WHEN excluded.first_ms < checkin_days.first_ms THEN excluded.first_ms ELSE checkin_days.first_ms END, \
                 last_version = CASE WHEN excluded.last_ms > checkin_days.last_ms THEN excluded.last_version ELSE checkin_days.last_version END, \
                 last_ms = CASE WHEN excluded.last_ms > checkin_days.last_ms THEN excluded.last_ms ELSE checkin_days.last_ms END",
            )
            .bind(&device)
            .bind(day)
            .bind(n)
            .bind(first)
            .bind(last)
            .bind(last_version)
            .execute(&mut *tx)
            .await?;
        }
        let r = sqlx::query("DELETE FROM checkins WHERE at_ms < $1")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    /// Number of rows in the check-in history (for tests and measurements).
    pub async fn checkin_count(&self, device: &str) -> sqlx::Result<(i64, i64)> {
        let a: i64 = sqlx::query("SELECT COUNT(*) AS n FROM checkins WHERE device = $1")
            .bind(device)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let b: i64 = sqlx::query("SELECT COUNT(*) AS n FROM checkin_days WHERE device = $1")
            .bind(device)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok((a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// A migration file that is not in [`MIGRATIONS`] is never run: every file of
    /// `migrations/` must be there, under its own version, with its exact text.
    #[test]
    fn every_migration_file_is_compiled_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let version: i64 = name[..4]
                .parse()
                .unwrap_or_else(|_| panic!("{name}: no version"));
            let text = std::fs::read_to_string(&path).unwrap();
            let postgres_only = name.ends_with(".postgres.sql");
            assert!(
                MIGRATIONS.iter().any(|(v, _, sql, pg)| *v == version
                    && if postgres_only {
                        *pg == text
                    } else {
                        *sql == text
                    }),
                "{name} is not in MIGRATIONS (or its text differs)"
            );
            files += 1;
        }
        let listed = MIGRATIONS
            .iter()
            .map(|(_, _, _, pg)| 1 + usize::from(!pg.is_empty()))
            .sum::<usize>();
        assert_eq!(
            files, listed,
            "MIGRATIONS lists a file that is not in {dir:?}"
        );
    }
}
