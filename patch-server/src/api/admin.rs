//! The admin API (`/v1/admin/...`): bearer admin tokens with scopes `read` (GET only), `ci`
//! (apps, devices, commands) and `admin` (also tokens, rollouts, pins, pushes). The
//! `patch-server` CLI is its client.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use formats::fleet::{check_id, check_short, CommandKind, FleetError, Validate};
use serde::{Deserialize, Serialize};

use super::common::{admin_auth, read_doc, AppState, Scope};
use crate::db::{App, DeviceFilter};
use crate::error::{ApiError, ApiResult};
use crate::util::{new_id, new_token, now_ms, sha256_hex};

/// `POST /v1/admin/apps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    /// App name devices enroll under.
    pub name: String,
    /// Repository URL (or a local path the server can read).
    pub repo: String,
    /// The release public key (TUF key JSON object).
    pub public_key: serde_json::Value,
    /// Enrollment secret; absent with `approve`.
    #[serde(default)]
    pub enroll_secret: Option<String>,
    /// New devices wait for an administrator's approval.
    #[serde(default)]
    pub approve: bool,
}

impl Validate for NewApp {
    fn validate(&self) -> Result<(), FleetError> {
        check_id("name", &self.name)?;
        if self.repo.is_empty() || self.repo.len() > 1024 {
            return Err(FleetError {
                field: "repo".into(),
                reason: "must be 1 to 1024 bytes".into(),
                too_large: self.repo.len() > 1024,
            });
        }
        if let Some(s) = &self.enroll_secret {
            check_short("enroll_secret", s)?;
            if s.len() < 16 {
                return Err(bad("enroll_secret", "must be at least 16 bytes"));
            }
        }
        if self.enroll_secret.is_some() == self.approve {
            return Err(bad(
                "enroll_secret",
                "give exactly one of enroll_secret and approve",
            ));
        }
        Ok(())
    }
}

fn bad(field: &str, reason: &str) -> FleetError {
    FleetError {
        field: field.into(),
        reason: reason.into(),
        too_large: false,
    }
}

/// `POST /v1/admin/devices/{id}/tags`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagChange {
    /// Tags to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl Validate for TagChange {
    fn validate(&self) -> Result<(), FleetError> {
        if self.add.len() + self.remove.len() > 64 {
            return Err(FleetError {
                field: "add".into(),
                reason: "more than 64 tags in one change".into(),
                too_large: true,
            });
        }
        for (i, t) in self.add.iter().enumerate() {
            check_id(&format!("add[{i}]"), t)?;
        }
        for (i, t) in self.remove.iter().enumerate() {
            check_id(&format!("remove[{i}]"), t)?;
        }
        Ok(())
    }
}

/// `POST /v1/admin/commands`: exactly one of `device`, `tag`, `app`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCommand {
    /// One device.
    #[serde(default)]
    pub device: Option<String>,
    /// Every device with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Every device of this app.
    #[serde(default)]
    pub app: Option<String>,
    /// What to do (`report-state`, `upload-logs`, `update-now`, `restart-app`, `set-interval`).
    pub kind: String,
    /// Arguments (`{"secs": N}` for `set-interval`).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// Life of the command; the server's default (7 days) when absent.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

impl Validate for NewCommand {
    fn validate(&self) -> Result<(), FleetError> {
        let targets = [&self.device, &self.tag, &self.app];
        if targets.iter().filter(|t| t.is_some()).count() != 1 {
            return Err(bad("device", "give exactly one of device, tag and app"));
        }
        for (f, v) in [
            ("device", &self.device),
            ("tag", &self.tag),
            ("app", &self.app),
        ] {
            if let Some(v) = v {
                check_id(f, v)?;
            }
        }
        let kind = CommandKind::parse(&self.kind).ok_or_else(|| {
            bad(
                "kind",
                "unknown command (report-state, upload-logs, update-now, restart-app, set-interval)",
            )
        })?;
        let args_len = self.args.as_ref().map(|a| a.to_string().len()).unwrap_or(0);
        if args_len > 4096 {
            return Err(FleetError {
                field: "args".into(),
                reason: "longer than the limit of 4096 bytes".into(),
                too_large: true,
            });
        }
        if kind == CommandKind::SetInterval {
            let secs = self
                .args
                .as_ref()
                .and_then(|a| a.get("secs"))
                .and_then(serde_json::Value::as_u64);
            if !secs.is_some_and(|s| (5..=86_400).contains(&s)) {
                return Err(bad(
                    "args.secs",
                    "set-interval needs secs between 5 and 86400",
                ));
            }
        }
        if self
            .expires_in_secs
            .is_some_and(|s| s == 0 || s > 365 * 86_400)
        {
            return Err(bad("expires_in_secs", "must be 1 second to 365 days"));
        }
        Ok(())
    }
}

/// `POST /v1/admin/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// `read`, `ci` or `admin`.
    pub scope: String,
    /// A note on who holds it.
    #[serde(default)]
    pub label: Option<String>,
}

impl Validate for NewToken {
    fn validate(&self) -> Result<(), FleetError> {
        if Scope::parse(&self.scope).is_none() {
            return Err(bad("scope", "must be read, ci or admin"));
        }
        if let Some(l) = &self.label {
            check_short("label", l)?;
        }
        Ok(())
    }
}

/// One app and the releases its verified repository offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    /// The app.
    pub name: String,
    /// Repository.
    pub repo: String,
    /// Approval mode.
    pub approve: bool,
    /// Last refresh (unix ms).
    pub releases_refreshed_ms: Option<i64>,
    /// Error of the last refresh.
    pub releases_error: Option<String>,
    /// Releases: `{version, channel, targeting}`, oldest first.
    pub releases: Vec<serde_json::Value>,
}

async fn app_view(st: &AppState, app: &App) -> ApiResult<AppView> {
    let mut rel = st.db.releases(&app.name).await?;
    rel.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(AppView {
        name: app.name.clone(),
        repo: app.repo.clone(),
        approve: app.approve,
        releases_refreshed_ms: app.releases_refreshed_ms,
        releases_error: app.releases_error.clone(),
        releases: rel
            .iter()
            .map(|r| {
                serde_json::json!({
                    "version": r.version.to_string(),
                    "channel": r.channel,
                    "targeting": r.targeting,
                })
            })
            .collect(),
    })
}

/// `POST /v1/admin/apps`: registers an app after reading its repository under the given key
/// (a repository that does not verify is refused, 400 naming `repo`).
pub async fn add_app(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<AppView>> {
    let actor = admin_auth(&st, &headers, Scope::Ci).await?;
    let req: NewApp = read_doc(body).await?;
    let key_json = req.public_key.to_string();
    let key = crate::releases::parse_key(key_json.as_bytes())
        .map_err(|e| ApiError::bad("public_key", e))?;
    // Verify the repository before registering, so a typo is caught now.
    let dir = crate::releases::trust_dir(&st.settings.data, &req.name);
    let repo = req.repo.clone();
    let (key2, dir2) = (key.clone(), dir.clone());
    let releases =
        tokio::task::spawn_blocking(move || crate::releases::offered(&repo, &key2, &dir2))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::bad("repo", e))?;
    let app = App {
        name: req.name.clone(),
        repo: req.repo.clone(),
        public_key: key_json,
        enroll_secret_sha256: req.enroll_secret.as_deref().map(sha256_hex),
        approve: req.approve,
        created_ms: now_ms(),
        releases_refreshed_ms: None,
        releases_error: None,
    };
    if !st.db.insert_app(&app).await? {
        return Err(ApiError::Conflict(format!("app {} exists", req.name)));
    }
    st.db.set_releases(&app.name, &releases, now_ms()).await?;
    st.db.audit(&actor, "app.add", &app.name, &app.repo).await?;
    let app = st
        .db
        .app(&app.name)
        .await?
        .ok_or_else(|| ApiError::Internal("app vanished".into()))?;
    Ok(Json(app_view(&st, &app).await?))
}

/// `GET /v1/admin/apps`.
pub async fn list_apps(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<AppView>>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    let mut out = Vec::new();
    for a in st.db.apps().await? {
        out.push(app_view(&st, &a).await?);
    }
    Ok(Json(out))
}

/// `POST /v1/admin/apps/{name}/refresh`: reads the repository again now.
pub async fn refresh_app(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<AppView>> {
    admin_auth(&st, &headers, Scope::Ci).await?;
    check_id("name", &name)?;
    let app = st
        .db
        .app(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no app {name}")))?;
    crate::releases::refresh_app(&st.db, &st.settings.data, &name)
        .await
        .map_err(|e| ApiError::bad("repo", e))?;
    let app = st.db.app(&app.name).await?.unwrap_or(app);
    Ok(Json(app_view(&st, &app).await?))
}

/// Query of `GET /v1/admin/devices`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DevicesQuery {
    app: Option<String>,
    version: Option<String>,
    channel: Option<String>,
    tag: Option<String>,
    silent_for: Option<String>,
    failed: Option<bool>,
    limit: Option<i64>,
    after: Option<String>,
}

/// One page of the inventory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicePage {
    /// Devices, by id.
    pub devices: Vec<crate::db::DeviceSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

fn query_err(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::bad("query", e.body_text())
}

/// `GET /v1/admin/devices`.
pub async fn list_devices(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<DevicesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<DevicePage>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    let Query(q) = q.map_err(query_err)?;
    for (f, v) in [
        ("app", &q.app),
        ("channel", &q.channel),
        ("tag", &q.tag),
        ("after", &q.after),
    ] {
        if let Some(v) = v {
            check_id(f, v)?;
        }
    }
    if let Some(v) = &q.version {
        check_short("version", v)?;
    }
    let silent_since_ms = match &q.silent_for {
        Some(s) => {
            let d: Duration = humantime::parse_duration(s)
                .map_err(|e| ApiError::bad("silent_for", format!("not a duration: {e}")))?;
            Some(now_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        }
        None => None,
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let f = DeviceFilter {
        app: q.app,
        version: q.version,
        channel: q.channel,
        tag: q.tag,
        silent_since_ms,
        failed: q.failed.unwrap_or(false),
        after: q.after,
        limit,
    };
    let devices = st.db.devices(&f).await?;
    let next_after = if devices.len() as i64 == limit {
        devices.last().map(|d| d.id.clone())
    } else {
        None
    };
    Ok(Json(DevicePage {
        devices,
        next_after,
    }))
}

/// `GET /v1/admin/devices/{id}`: the inventory row, state document, check-in and update
/// history, commands and uploads.
pub async fn show_device(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    check_id("id", &id)?;
    let dev = st
        .db
        .device(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no device {id}")))?;
    let (state, state_ms) = st.db.device_state(&id).await?;
    let checkins: Vec<serde_json::Value> = st
        .db
        .checkin_history(&id, 50)
        .await?
        .into_iter()
        .map(|(at, v, c)| {
            serde_json::json!({"at_ms": at, "at": crate::util::rfc3339(at), "version": v, "channel": c})
        })
        .collect();
    let days: Vec<serde_json::Value> = st
        .db
        .checkin_days(&id, 60)
        .await?
        .into_iter()
        .map(|(day, n, v)| serde_json::json!({"day": day, "count": n, "last_version": v}))
        .collect();
    Ok(Json(serde_json::json!({
        "device": dev,
        "state": state,
        "state_ms": state_ms,
        "checkins": checkins,
        "checkin_days": days,
        "results": st.db.update_results(&id, 50).await?,
        "commands": st.db.device_commands(&id, 50).await?,
        "uploads": st.db.uploads(Some(&id), 100).await?,
    })))
}

/// `POST /v1/admin/devices/{id}/approve`.
pub async fn approve(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = admin_auth(&st, &headers, Scope::Ci).await?;
    check_id("id", &id)?;
    if !st.db.approve(&id).await? {
        return Err(ApiError::NotFound(format!("no device {id}")));
    }
    st.db.audit(&actor, "device.approve", &id, "").await?;
    Ok(Json(serde_json::json!({"id": id, "status": "active"})))
}

/// `POST /v1/admin/devices/{id}/tags`.
pub async fn tags(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = admin_auth(&st, &headers, Scope::Ci).await?;
    check_id("id", &id)?;
    let change: TagChange = read_doc(body).await?;
    if !st.db.tag(&id, &change.add, &change.remove).await? {
        return Err(ApiError::NotFound(format!("no device {id}")));
    }
    let detail = serde_json::to_string(&change).unwrap_or_default();
    st.db.audit(&actor, "device.tags", &id, &detail).await?;
    let dev = st.db.device(&id).await?;
    Ok(Json(
        serde_json::json!({"id": id, "tags": dev.map(|d| d.tags)}),
    ))
}

/// `POST /v1/admin/commands`: queues a command for a device, a tag or an app.
pub async fn queue_command(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = admin_auth(&st, &headers, Scope::Ci).await?;
    let c: NewCommand = read_doc(body).await?;
    let (target_kind, target) = match (&c.device, &c.tag, &c.app) {
        (Some(d), _, _) => ("device", d.clone()),
        (_, Some(t), _) => ("tag", t.clone()),
        (_, _, Some(a)) => ("app", a.clone()),
        _ => return Err(ApiError::bad("device", "no target")),
    };
    if target_kind == "device" && st.db.device(&target).await?.is_none() {
        return Err(ApiError::NotFound(format!("no device {target}")));
    }
    if target_kind == "app" && st.db.app(&target).await?.is_none() {
        return Err(ApiError::NotFound(format!("no app {target}")));
    }
    let now = now_ms();
    let ttl_ms = c
        .expires_in_secs
        .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
        .unwrap_or_else(|| i64::try_from(st.settings.command_ttl.as_millis()).unwrap_or(i64::MAX));
    let id = new_id();
    let args = c
        .args
        .clone()
        .unwrap_or_else(|| serde_json::json!({}))
        .to_string();
    let n = st
        .db
        .queue_command(
            &id,
            target_kind,
            &target,
            &c.kind,
            &args,
            now,
            now.saturating_add(ttl_ms),
            &actor,
        )
        .await?;
    st.db
        .audit(
            &actor,
            "command.queue",
            &format!("{target_kind}:{target}"),
            &c.kind,
        )
        .await?;
    Ok(Json(
        serde_json::json!({"id": id, "kind": c.kind, "targets": n}),
    ))
}

/// Query of `GET /v1/admin/uploads`.
#[derive(Debug, Clone, Deserialize)]
pub struct UploadsQuery {
    device: Option<String>,
}

/// `GET /v1/admin/uploads?device=`.
pub async fn list_uploads(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<UploadsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::db::UploadRow>>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    let Query(q) = q.map_err(query_err)?;
    if let Some(d) = &q.device {
        check_id("device", d)?;
    }
    Ok(Json(st.db.uploads(q.device.as_deref(), 1000).await?))
}

/// `GET /v1/admin/uploads/{id}`: the stored bytes, streamed.
pub async fn get_upload(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    admin_auth(&st, &headers, Scope::Read).await?;
    check_id("id", &id)?;
    let row = st
        .db
        .upload(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no upload {id}")))?;
    // The stored name is the server's own id, never the device's display name.
    let path = st.uploads_dir().join(&row.id);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("upload {id}: {e}")))?;
    let stream = tokio_util_free_stream(file);
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(row.size));
    if let Ok(v) = HeaderValue::from_str(&row.blake3) {
        h.insert("x-blake3", v);
    }
    Ok(resp)
}

/// A file as a stream of chunks.
pub(crate) fn tokio_util_free_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// `POST /v1/admin/tokens` (admin scope only).
pub async fn create_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let req: NewToken = read_doc(body).await?;
    let token = new_token();
    st.db
        .add_admin_token(
            &sha256_hex(&token),
            &req.scope,
            req.label.as_deref().unwrap_or(""),
        )
        .await?;
    st.db.audit(&actor, "token.create", &req.scope, "").await?;
    Ok(Json(
        serde_json::json!({"token": token, "scope": req.scope}),
    ))
}

// ---- rollouts, pins, pushes (Fleet 3): scope `admin` to change, `read` to see ----

/// `POST /v1/admin/rollouts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// App.
    pub app: String,
    /// Release (one of the app's verified, not yanked releases).
    pub version: String,
    /// First percentage, 0..=100.
    pub percent: u32,
    /// Halt when failed / finished exceeds this fraction (default 0.05).
    #[serde(default)]
    pub max_failure_rate: Option<f64>,
    /// ... once this many devices finished (default 20).
    #[serde(default)]
    pub min_devices: Option<u64>,
    /// A device offered the release and not successful within this many seconds counts as
    /// failed (default 7200).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// `5,25,50,100@1d`: raise along the list every interval while running.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Rate cap: at most this many devices newly offered per `period_secs`.
    #[serde(default)]
    pub max_per_period: Option<u64>,
    /// The rate cap's period (default 3600 with `max_per_period`).
    #[serde(default)]
    pub period_secs: Option<u64>,
}

impl Validate for NewRollout {
    fn validate(&self) -> Result<(), FleetError> {
        check_id("app", &self.app)?;
        check_short("version", &self.version)?;
        if self.percent > 100 {
            return Err(bad("percent", "must be within 0..=100"));
        }
        if let Some(s) = &self.schedule {
            check_short("schedule", s)?;
        }
        if self.period_secs.is_some() && self.max_per_period.is_none() {
            return Err(bad("period_secs", "only with max_per_period"));
        }
        Ok(())
    }
}

/// `POST /v1/admin/rollouts/{id}/percent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentChange {
    /// New percentage, 0..=100.
    pub percent: u32,
}

impl Validate for PercentChange {
    fn validate(&self) -> Result<(), FleetError> {
        if self.percent > 100 {
            return Err(bad("percent", "must be within 0..=100"));
        }
        Ok(())
    }
}

/// `POST /v1/admin/rollouts/{id}/halt`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltRequest {
    /// Why (shown in status and the audit log).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Validate for HaltRequest {
    fn validate(&self) -> Result<(), FleetError> {
        if let Some(r) = &self.reason {
            check_short("reason", r)?;
        }
        Ok(())
    }
}

/// `POST /v1/admin/pins`, `POST /v1/admin/pins/remove`, `POST /v1/admin/pushes`: exactly one
/// of `device`, `tag` and `all` (`all` for pushes only); `version` except for removal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetedRelease {
    /// App.
    pub app: String,
    /// Release.
    #[serde(default)]
    pub version: Option<String>,
    /// One device.
    #[serde(default)]
    pub device: Option<String>,
    /// Every device with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Every device of the app.
    #[serde(default)]
    pub all: bool,
    /// For a push: how long it applies, in seconds (until removed when absent).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

impl Validate for TargetedRelease {
    fn validate(&self) -> Result<(), FleetError> {
        check_id("app", &self.app)?;
        if let Some(v) = &self.version {
            check_short("version", v)?;
        }
        let n = usize::from(self.device.is_some())
            + usize::from(self.tag.is_some())
            + usize::from(self.all);
        if n != 1 {
            return Err(bad("device", "give exactly one of device, tag and all"));
        }
        if let Some(d) = &self.device {
            check_id("device", d)?;
        }
        if let Some(t) = &self.tag {
            check_id("tag", t)?;
        }
        Ok(())
    }
}

impl TargetedRelease {
    fn target(&self) -> crate::rollout::Target {
        use crate::rollout::Target;
        match (&self.device, &self.tag) {
            (Some(d), _) => Target::Device(d.clone()),
            (_, Some(t)) => Target::Tag(t.clone()),
            _ => Target::All,
        }
    }

    fn version(&self) -> ApiResult<&str> {
        self.version
            .as_deref()
            .ok_or_else(|| ApiError::bad("version", "missing"))
    }
}

/// Query of the rollout, pin and push listings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AppQuery {
    app: Option<String>,
}

/// `POST /v1/admin/rollouts`: starts a rollout.
pub async fn start_rollout(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<crate::rollout::RolloutView>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let r: NewRollout = read_doc(body).await?;
    let schedule = match &r.schedule {
        Some(s) => {
            Some(crate::rollout::Schedule::parse(s).map_err(|e| ApiError::bad("schedule", e))?)
        }
        None => None,
    };
    let req = crate::rollout::StartRollout {
        app: r.app.clone(),
        version: r.version.clone(),
        percent: r.percent,
        max_failure_rate: r
            .max_failure_rate
            .unwrap_or(crate::rollout::DEFAULT_MAX_FAILURE_RATE),
        min_devices: r.min_devices.unwrap_or(crate::rollout::DEFAULT_MIN_DEVICES),
        timeout: r
            .timeout_secs
            .map_or(crate::rollout::DEFAULT_TIMEOUT, Duration::from_secs),
        schedule,
        rate_cap: r
            .max_per_period
            .map(|n| (n, Duration::from_secs(r.period_secs.unwrap_or(3600)))),
    };
    Ok(Json(
        crate::rollout::start(&st.db, &actor, &req, now_ms()).await?,
    ))
}

/// `GET /v1/admin/rollouts?app=`: rollouts with progress, newest first.
pub async fn list_rollouts(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AppQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::rollout::RolloutView>>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    let Query(q) = q.map_err(query_err)?;
    Ok(Json(crate::rollout::list(&st.db, q.app.as_deref()).await?))
}

/// `GET /v1/admin/rollouts/{id}`: one rollout and its participants.
pub async fn show_rollout(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    let view = crate::rollout::status(&st.db, &id, now_ms()).await?;
    let devices = st.db.participants(&id, 10_000).await?;
    Ok(Json(
        serde_json::json!({"rollout": view, "devices": devices}),
    ))
}

/// `POST /v1/admin/rollouts/{id}/percent`.
pub async fn set_rollout_percent(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<crate::rollout::RolloutView>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let p: PercentChange = read_doc(body).await?;
    Ok(Json(
        crate::rollout::set_percent(&st.db, &actor, &id, p.percent, now_ms()).await?,
    ))
}

/// `POST /v1/admin/rollouts/{id}/halt`.
pub async fn halt_rollout(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<crate::rollout::RolloutView>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let h: HaltRequest = read_doc(body).await?;
    Ok(Json(
        crate::rollout::halt(&st.db, &actor, &id, h.reason.as_deref(), now_ms()).await?,
    ))
}

/// `POST /v1/admin/rollouts/{id}/resume`.
pub async fn resume_rollout(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<crate::rollout::RolloutView>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    Ok(Json(
        crate::rollout::resume(&st.db, &actor, &id, now_ms()).await?,
    ))
}

/// `POST /v1/admin/rollouts/{id}/finish`.
pub async fn finish_rollout(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<crate::rollout::RolloutView>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    Ok(Json(
        crate::rollout::finish(&st.db, &actor, &id, now_ms()).await?,
    ))
}

/// `POST /v1/admin/pins`: pins a device or tag at a release.
pub async fn set_pin(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<crate::db::PinRow>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let p: TargetedRelease = read_doc(body).await?;
    if p.expires_in_secs.is_some() {
        return Err(ApiError::bad(
            "expires_in_secs",
            "only a push expires; remove a pin with unpin",
        ));
    }
    Ok(Json(
        crate::rollout::pin(&st.db, &actor, &p.app, &p.target(), p.version()?, now_ms()).await?,
    ))
}

/// `POST /v1/admin/pins/remove`: removes the pin of a device or tag.
pub async fn remove_pin(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let p: TargetedRelease = read_doc(body).await?;
    crate::rollout::unpin(&st.db, &actor, &p.app, &p.target()).await?;
    Ok(Json(serde_json::json!({"removed": true})))
}

/// `GET /v1/admin/pins?app=`.
pub async fn list_pins(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AppQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::db::PinRow>>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    let Query(q) = q.map_err(query_err)?;
    if let Some(a) = &q.app {
        check_id("app", a)?;
    }
    Ok(Json(st.db.pins(q.app.as_deref()).await?))
}

/// `POST /v1/admin/pushes`: pushes a release to a device, a tag or the whole app.
pub async fn create_push(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<crate::db::PushRow>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let p: TargetedRelease = read_doc(body).await?;
    Ok(Json(
        crate::rollout::push(
            &st.db,
            &actor,
            &p.app,
            &p.target(),
            p.version()?,
            p.expires_in_secs,
            now_ms(),
        )
        .await?,
    ))
}

/// `POST /v1/admin/pushes/remove`: removes the pushes to a device, a tag or the whole app
/// (only those of `version` when given).
pub async fn remove_pushes(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let p: TargetedRelease = read_doc(body).await?;
    let n =
        crate::rollout::unpush(&st.db, &actor, &p.app, &p.target(), p.version.as_deref()).await?;
    Ok(Json(serde_json::json!({"removed": n})))
}

/// `GET /v1/admin/pushes?app=`.
pub async fn list_pushes(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AppQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::db::PushRow>>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    let Query(q) = q.map_err(query_err)?;
    if let Some(a) = &q.app {
        check_id("app", a)?;
    }
    Ok(Json(st.db.pushes(q.app.as_deref()).await?))
}

// ---- alerts ----

/// Longest webhook URL accepted, in bytes.
pub const MAX_WEBHOOK_URL: usize = 2048;

/// `POST /v1/admin/alert-destinations`: a webhook (`url`, `secret`) or an e-mail address
/// (`to`), for every app or one (`app`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDestination {
    /// `webhook` or `email`.
    pub kind: String,
    /// Webhook URL (`http` or `https`).
    #[serde(default)]
    pub url: Option<String>,
    /// Webhook HMAC secret, 16 to 512 bytes.
    #[serde(default)]
    pub secret: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub to: Option<String>,
    /// Only alerts of this app.
    #[serde(default)]
    pub app: Option<String>,
}

impl NewDestination {
    /// The destination's target: the URL or the address.
    pub fn target(&self) -> &str {
        self.url.as_deref().or(self.to.as_deref()).unwrap_or("")
    }
}

impl Validate for NewDestination {
    fn validate(&self) -> Result<(), FleetError> {
        if let Some(a) = &self.app {
            check_id("app", a)?;
        }
        match self.kind.as_str() {
            "webhook" => {
                if self.to.is_some() {
                    return Err(bad("to", "only for kind email"));
                }
                let url = self
                    .url
                    .as_deref()
                    .ok_or_else(|| bad("url", "missing: a webhook needs a URL"))?;
                if url.len() > MAX_WEBHOOK_URL {
                    return Err(FleetError {
                        field: "url".into(),
                        reason: format!("longer than the limit of {MAX_WEBHOOK_URL} bytes"),
                        too_large: true,
                    });
                }
                let u =
                    reqwest::Url::parse(url).map_err(|e| bad("url", &format!("not a URL: {e}")))?;
                if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                    return Err(bad("url", "must be an http:// or https:// URL with a host"));
                }
                let secret = self
                    .secret
                    .as_deref()
                    .ok_or_else(|| bad("secret", "missing: webhooks are signed with it"))?;
                if !(16..=512).contains(&secret.len()) {
                    return Err(bad("secret", "must be 16 to 512 bytes"));
                }
                Ok(())
            }
            "email" => {
                if self.url.is_some() || self.secret.is_some() {
                    return Err(bad("url", "url and secret are only for kind webhook"));
                }
                let to = self
                    .to
                    .as_deref()
                    .ok_or_else(|| bad("to", "missing: an e-mail destination needs an address"))?;
                if to.len() > 254 {
                    return Err(FleetError {
                        field: "to".into(),
                        reason: "longer than the limit of 254 bytes".into(),
                        too_large: true,
                    });
                }
                to.parse::<lettre::Address>()
                    .map_err(|e| bad("to", &format!("not an e-mail address: {e}")))?;
                Ok(())
            }
            _ => Err(bad("kind", "must be webhook or email")),
        }
    }
}

/// `POST /v1/admin/alert-destinations` (admin scope; audited).
pub async fn add_destination(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<crate::alerts::Destination>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    let req: NewDestination = read_doc(body).await?;
    if let Some(a) = &req.app {
        if st.db.app(a).await?.is_none() {
            return Err(ApiError::bad("app", format!("no app {a} on this server")));
        }
    }
    let now = now_ms();
    let id = crate::alerts::add_destination(
        &st.db,
        &req.kind,
        req.target(),
        req.secret.as_deref(),
        req.app.as_deref(),
        &actor,
        now,
    )
    .await?;
    let shown = crate::alerts::store::redact_target(&req.kind, req.target());
    let detail = format!(
        "{} {shown} app={}",
        req.kind,
        req.app.as_deref().unwrap_or("*")
    );
    st.db
        .audit(&actor, "alert.destination.add", &id, &detail)
        .await?;
    Ok(Json(crate::alerts::Destination {
        id,
        kind: req.kind.clone(),
        target: req.target().to_string(),
        app: req.app.clone(),
        created_ms: now,
        created_by: actor,
    }))
}

/// `GET /v1/admin/alert-destinations` (admin scope: webhook URLs may hold secrets).
pub async fn list_destinations(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::alerts::Destination>>> {
    admin_auth(&st, &headers, Scope::Admin).await?;
    Ok(Json(crate::alerts::destinations(&st.db).await?))
}

/// `DELETE /v1/admin/alert-destinations/{id}` (admin scope; audited): its pending
/// notifications are marked failed.
pub async fn remove_destination(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let actor = admin_auth(&st, &headers, Scope::Admin).await?;
    check_id("id", &id)?;
    if !crate::alerts::remove_destination(&st.db, &id, now_ms()).await? {
        return Err(ApiError::NotFound(format!("no alert destination {id}")));
    }
    st.db
        .audit(&actor, "alert.destination.remove", &id, "")
        .await?;
    Ok(Json(serde_json::json!({"id": id, "removed": true})))
}

/// Query of `GET /v1/admin/alerts`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AlertsQuery {
    open: Option<bool>,
    app: Option<String>,
    device: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/admin/alerts?open=true&app=A&device=D&limit=N`: open and recent alerts, newest
/// first, with each notification's delivery state.
pub async fn list_alerts(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::alerts::AlertView>>> {
    admin_auth(&st, &headers, Scope::Read).await?;
    let Query(q) = q.map_err(query_err)?;
    for (f, v) in [("app", &q.app), ("device", &q.device)] {
        if let Some(v) = v {
            check_id(f, v)?;
        }
    }
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad("limit", "must be 1 to 1000"));
    }
    let f = crate::alerts::AlertFilter {
        open_only: q.open.unwrap_or(false),
        app: q.app,
        device: q.device,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(crate::alerts::list(&st.db, &f).await?))
}
