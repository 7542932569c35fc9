//! The admin API (`/v1/admin/...`): bearer admin tokens with scopes `read` (GET only), `ci`
//! (apps, devices, commands) and `admin` (also tokens). The `patch-server` CLI is its client.

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
