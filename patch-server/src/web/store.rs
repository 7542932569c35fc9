//! The dashboard's queries: accounts, sessions, login failures, and the filtered, sorted and
//! paged devices table. Portable SQL like `db.rs` (`$n` placeholders, i64 unix ms, ids made
//! here); every value from a request is bound, never spliced, and the only SQL spliced in
//! (column names, `ASC`/`DESC`) comes from the closed enums below.

use sqlx::Row;

use crate::db::Db;

/// What a dashboard account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads and acts (every form).
    Admin,
    /// Reads only: no forms are shown and every POST is refused (403).
    Viewer,
}

impl Role {
    /// Parses `admin` or `viewer`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// A dashboard account as listed.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was made (unix ms).
    pub created_ms: i64,
}

/// A live session, as the request handlers see it.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Who.
    pub user: String,
    /// Their role (read from `users` on every request, so a role change is immediate).
    pub role: Role,
    /// The session's CSRF token.
    pub csrf: String,
    /// Expiry (unix ms).
    pub expires_ms: i64,
}

/// The device status filters of the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Active, last update not failed, not silent, not updating.
    Ok,
    /// The last update result failed.
    Failed,
    /// Not seen for longer than N poll intervals (or never).
    Silent,
    /// Directed to a version it has not reached.
    Updating,
    /// Waiting for approval.
    Pending,
}

impl StatusFilter {
    /// Every filter, in the order the form lists them.
    pub const ALL: [StatusFilter; 5] = [
        StatusFilter::Ok,
        StatusFilter::Failed,
        StatusFilter::Silent,
        StatusFilter::Updating,
        StatusFilter::Pending,
    ];

    /// Parses the query value.
    pub fn parse(s: &str) -> Option<StatusFilter> {
        StatusFilter::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Ok => "ok",
            StatusFilter::Failed => "failed",
            StatusFilter::Silent => "silent",
            StatusFilter::Updating => "updating",
            StatusFilter::Pending => "pending",
        }
    }
}

/// Sortable columns of the devices table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Device id.
    Id,
    /// App.
    App,
    /// Installed version.
    Version,
    /// Channel.
    Channel,
    /// Host name.
    Hostname,
    /// Last check-in.
    LastSeen,
}

impl SortKey {
    /// Every key.
    pub const ALL: [SortKey; 6] = [
        SortKey::Id,
        SortKey::App,
        SortKey::Version,
        SortKey::Channel,
        SortKey::Hostname,
        SortKey::LastSeen,
    ];

    /// Parses the query value.
    pub fn parse(s: &str) -> Option<SortKey> {
        SortKey::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::App => "app",
            SortKey::Version => "version",
            SortKey::Channel => "channel",
            SortKey::Hostname => "hostname",
            SortKey::LastSeen => "last_seen",
        }
    }

    fn column(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::App => "app",
            SortKey::Version => "version",
            SortKey::Channel => "channel",
            SortKey::Hostname => "hostname",
            SortKey::LastSeen => "last_seen_ms",
        }
    }
}

/// A validated devices-table query.
#[derive(Debug, Clone)]
pub struct DeviceQuery {
    /// App.
    pub app: Option<String>,
    /// Installed version.
    pub version: Option<String>,
    /// Channel (`stable` matches devices that name none).
    pub channel: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Status.
    pub status: Option<StatusFilter>,
    /// Substring of the id or host name (case-insensitive).
    pub text: Option<String>,
    /// Sort column.
    pub sort: SortKey,
    /// Descending.
    pub desc: bool,
    /// Rows skipped.
    pub offset: i64,
    /// Rows returned.
    pub limit: i64,
}

/// How "silent" is computed: not seen since `now - n * poll interval` (the device's own
/// interval, else the server's).
#[derive(Debug, Clone, Copy)]
pub struct Silence {
    /// Now (unix ms).
    pub now_ms: i64,
    /// N poll intervals.
    pub intervals: i64,
    /// The server's poll interval (seconds).
    pub default_poll_secs: i64,
}

/// One row of the devices table.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Id.
    pub id: String,
    /// App.
    pub app: String,
    /// `active` or `pending`.
    pub status: String,
    /// Installed version.
    pub version: Option<String>,
    /// Channel.
    pub channel: Option<String>,
    /// Host name.
    pub hostname: Option<String>,
    /// Last check-in (unix ms).
    pub last_seen_ms: Option<i64>,
    /// Whether the last update result failed.
    pub failed: bool,
    /// Not seen for longer than N poll intervals.
    pub silent: bool,
    /// The version it is directed to, when it has not reached it.
    pub updating_to: Option<String>,
}

/// Bound values of a generated WHERE clause.
enum Arg {
    Text(String),
    Int(i64),
}

struct Where {
    conds: Vec<String>,
    args: Vec<Arg>,
}

impl Where {
    fn new() -> Self {
        Where {
            conds: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds a bound value and returns its placeholder.
    fn bind(&mut self, a: Arg) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }

    fn sql(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conds.join(" AND "))
        }
    }

    fn apply<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(s.as_str()),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// The SQL condition "silent", with its values bound into `w`.
fn silent_cond(w: &mut Where, s: Silence) -> String {
    let now = w.bind(Arg::Int(s.now_ms));
    let n = w.bind(Arg::Int(s.intervals.saturating_mul(1000)));
    let def = w.bind(Arg::Int(s.default_poll_secs));
    format!("(last_seen_ms IS NULL OR last_seen_ms < {now} - {n} * COALESCE(poll_interval_secs, {def}))")
}

const UPDATING: &str =
    "(directed_version IS NOT NULL AND (version IS NULL OR version <> directed_version))";

fn device_where(q: &DeviceQuery, s: Silence) -> Where {
    let mut w = Where::new();
    if let Some(v) = &q.app {
        let p = w.bind(Arg::Text(v.clone()));
        w.conds.push(format!("app = {p}"));
    }
    if let Some(v) = &q.version {
        let p = w.bind(Arg::Text(v.clone()));
        w.conds.push(format!("version = {p}"));
    }
    if let Some(v) = &q.channel {
        let p = w.bind(Arg::Text(v.clone()));
        w.conds.push(format!("COALESCE(channel, 'stable') = {p}"));
    }
    if let Some(v) = &q.tag {
        let p = w.bind(Arg::Text(v.clone()));
        w.conds.push(format!(
            "id IN (SELECT device FROM device_tags WHERE tag = {p})"
        ));
    }
    if let Some(t) = &q.text {
        let escaped = t
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let p = w.bind(Arg::Text(format!("%{escaped}%")));
        w.conds.push(format!(
            "(LOWER(id) LIKE {p} ESCAPE '\\' OR LOWER(COALESCE(hostname, '')) LIKE {p} ESCAPE '\\')"
        ));
    }
    match q.status {
        None => {}
        Some(StatusFilter::Failed) => w.conds.push("last_result_ok = 0".into()),
        Some(StatusFilter::Pending) => w.conds.push("status = 'pending'".into()),
        Some(StatusFilter::Updating) => w.conds.push(UPDATING.into()),
        Some(StatusFilter::Silent) => {
            let c = silent_cond(&mut w, s);
            w.conds.push(c);
        }
        Some(StatusFilter::Ok) => {
            let c = silent_cond(&mut w, s);
            w.conds.push(format!(
                "status = 'active' AND COALESCE(last_result_ok, 1) = 1 AND NOT {c} AND NOT {UPDATING}"
            ));
        }
    }
    w
}

/// Per-app counts for the overview.
#[derive(Debug, Clone, Default)]
pub struct AppCounts {
    /// Devices.
    pub total: i64,
    /// Last update failed.
    pub failed: i64,
    /// Silent.
    pub silent: i64,
    /// Updating.
    pub updating: i64,
    /// Pending approval.
    pub pending: i64,
    /// `(version, devices)`; `None` = no version reported.
    pub versions: Vec<(Option<String>, i64)>,
}

/// One audit log row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// When (unix ms).
    pub at_ms: i64,
    /// Who (`user:NAME`, `admin:HASH`, `cli`).
    pub actor: String,
    /// What (`device.tags`, `command.queue`, `login.failed`...).
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// Details.
    pub detail: Option<String>,
}

impl Db {
    // ---- users ----

    /// Adds an account; `false` when the name is taken.
    pub async fn add_user(&self, name: &str, hash: &str, role: Role) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(hash)
        .bind(role.as_str())
        .bind(crate::util::now_ms())
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every account, by name.
    pub async fn users(&self) -> sqlx::Result<Vec<UserRow>> {
        let rows = sqlx::query("SELECT name, role, created_ms FROM users ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UserRow {
                    name: r.try_get("name")?,
                    role: Role::parse(&r.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Removes an account and its sessions; `false` when there is none.
    pub async fn remove_user(&self, name: &str) -> sqlx::Result<bool> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM sessions WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// The password hash and role of an account.
    pub async fn user_credentials(&self, name: &str) -> sqlx::Result<Option<(String, Role)>> {
        let row = sqlx::query("SELECT password_hash, role FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok((
                r.try_get("password_hash")?,
                Role::parse(&r.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
            ))
        })
        .transpose()
    }

    // ---- sessions ----

    /// Stores a new session (the SHA-256 of its id) and prunes expired ones.
    pub async fn add_session(
        &self,
        id_sha: &str,
        user: &str,
        csrf: &str,
        now: i64,
        expires_ms: i64,
    ) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM sessions WHERE expires_ms < $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO sessions (id_sha256, user_name, csrf, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_sha)
        .bind(user)
        .bind(csrf)
        .bind(now)
        .bind(expires_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The unexpired session with id hash `id_sha`.
    pub async fn session(&self, id_sha: &str, now: i64) -> sqlx::Result<Option<SessionRow>> {
        let row = sqlx::query(
            "SELECT s.user_name, s.csrf, s.expires_ms, u.role FROM sessions s \
             JOIN users u ON u.name = s.user_name WHERE s.id_sha256 = $1 AND s.expires_ms > $2",
        )
        .bind(id_sha)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(SessionRow {
                user: r.try_get("user_name")?,
                role: Role::parse(&r.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
                csrf: r.try_get("csrf")?,
                expires_ms: r.try_get("expires_ms")?,
            })
        })
        .transpose()
    }

    /// Ends a session.
    pub async fn remove_session(&self, id_sha: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_sha256 = $1")
            .bind(id_sha)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    // ---- login throttling ----

    /// Failed logins of `user` from `ip` since `since_ms`.
    pub async fn login_failures(&self, user: &str, ip: &str, since_ms: i64) -> sqlx::Result<i64> {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM login_failures WHERE user_name = $1 AND ip = $2 AND at_ms > $3",
        )
        .bind(user)
        .bind(ip)
        .bind(since_ms)
        .fetch_one(self.pool())
        .await?
        .try_get("n")
    }

    /// Records a failed login; prunes rows older than `prune_before_ms`.
    pub async fn add_login_failure(
        &self,
        user: &str,
        ip: &str,
        now: i64,
        prune_before_ms: i64,
    ) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE at_ms < $1")
            .bind(prune_before_ms)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO login_failures (id, user_name, ip, at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(crate::util::new_id())
        .bind(user)
        .bind(ip)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Forgets the failures of `user` from `ip` (after a successful login).
    pub async fn clear_login_failures(&self, user: &str, ip: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE user_name = $1 AND ip = $2")
            .bind(user)
            .bind(ip)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    // ---- devices ----

    /// Remembers the version the server directed a device to (`None`: none).
    pub async fn set_directed(&self, id: &str, version: Option<&str>) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE devices SET directed_version = $1 WHERE id = $2 \
             AND directed_version IS DISTINCT FROM $1",
        )
        .bind(version.map(str::to_string))
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// One page of the devices table and the number of rows matching the filters.
    pub async fn device_page(
        &self,
        q: &DeviceQuery,
        s: Silence,
    ) -> sqlx::Result<(Vec<DeviceRow>, i64)> {
        let w = device_where(q, s);
        let count_sql = format!("SELECT COUNT(*) AS n FROM devices {}", w.sql());
        let total: i64 = w
            .apply(sqlx::query(&count_sql))
            .fetch_one(self.pool())
            .await?
            .try_get("n")?;
        let dir = if q.desc { "DESC" } else { "ASC" };
        let order = match q.sort {
            SortKey::Id => format!("id {dir}"),
            // NULLS LAST on both backends (their defaults differ).
            k => format!("{} {dir} NULLS LAST, id {dir}", k.column()),
        };
        let sql = format!(
            "SELECT id, app, status, version, channel, hostname, last_seen_ms, last_result_ok, \
             poll_interval_secs, directed_version FROM devices {} ORDER BY {order} \
             LIMIT {} OFFSET {}",
            w.sql(),
            q.limit.clamp(1, 500),
            q.offset.max(0)
        );
        let rows = w.apply(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        let out = rows
            .iter()
            .map(|r| {
                let last_seen_ms: Option<i64> = r.try_get("last_seen_ms")?;
                let poll: Option<i64> = r.try_get("poll_interval_secs")?;
                let window = s
                    .intervals
                    .saturating_mul(1000)
                    .saturating_mul(poll.unwrap_or(s.default_poll_secs));
                let version: Option<String> = r.try_get("version")?;
                let directed: Option<String> = r.try_get("directed_version")?;
                Ok(DeviceRow {
                    id: r.try_get("id")?,
                    app: r.try_get("app")?,
                    status: r.try_get("status")?,
                    channel: r.try_get("channel")?,
                    hostname: r.try_get("hostname")?,
                    failed: r.try_get::<Option<i64>, _>("last_result_ok")? == Some(0),
                    silent: last_seen_ms.is_none_or(|t| t < s.now_ms.saturating_sub(window)),
                    updating_to: directed.filter(|d| version.as_deref() != Some(d.as_str())),
                    version,
                    last_seen_ms,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        Ok((out, total))
    }

    /// The overview counts of one app.
    pub async fn app_counts(&self, app: &str, s: Silence) -> sqlx::Result<AppCounts> {
        let mut w = Where::new();
        let p = w.bind(Arg::Text(app.to_string()));
        let silent = silent_cond(&mut w, s);
        let sql = format!(
            "SELECT COUNT(*) AS total, \
             COUNT(CASE WHEN last_result_ok = 0 THEN 1 END) AS failed, \
             COUNT(CASE WHEN {silent} THEN 1 END) AS silent, \
             COUNT(CASE WHEN {UPDATING} THEN 1 END) AS updating, \
             COUNT(CASE WHEN status = 'pending' THEN 1 END) AS pending \
             FROM devices WHERE app = {p}"
        );
        let r = w.apply(sqlx::query(&sql)).fetch_one(self.pool()).await?;
        let mut c = AppCounts {
            total: r.try_get("total")?,
            failed: r.try_get("failed")?,
            silent: r.try_get("silent")?,
            updating: r.try_get("updating")?,
            pending: r.try_get("pending")?,
            versions: Vec::new(),
        };
        c.versions = self.versions_of(app).await?;
        Ok(c)
    }

    /// `(version, devices)` of an app.
    pub async fn versions_of(&self, app: &str) -> sqlx::Result<Vec<(Option<String>, i64)>> {
        let rows = sqlx::query(
            "SELECT version, COUNT(*) AS n FROM devices WHERE app = $1 GROUP BY version",
        )
        .bind(app)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("version")?, r.try_get("n")?)))
            .collect()
    }

    /// One page of the audit log, newest first, and the number of rows.
    pub async fn audit_page(&self, offset: i64, limit: i64) -> sqlx::Result<(Vec<AuditRow>, i64)> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_log")
            .fetch_one(self.pool())
            .await?
            .try_get("n")?;
        let sql = format!(
            "SELECT at_ms, actor, action, target, detail FROM audit_log \
             ORDER BY at_ms DESC, id LIMIT {} OFFSET {}",
            limit.clamp(1, 500),
            offset.max(0)
        );
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        let out = rows
            .iter()
            .map(|r| {
                Ok(AuditRow {
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        Ok((out, total))
    }
}
