//! The device endpoints: enroll, check in, post command results, upload files.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use formats::fleet::{
    check_id, check_short, CheckIn, CheckInResponse, Command, CommandKind, CommandOutcome,
    CommandResult, DeviceStatus, EnrollRequest, EnrollResponse, UploadReceipt, PROTOCOL,
};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::common::{device_auth, read_doc, AppState};
use crate::db::{i64_of, CheckinRow, DeviceAuth, UploadRow};
use crate::error::{ApiError, ApiResult};
use crate::util::{new_id, new_token, now_ms, rfc3339, same_secret, sha256_hex, state_digest};

/// The address the request came from (`unknown` when the server runs without connect info).
fn client_ip(ext: &axum::http::Extensions) -> String {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `POST /v1/enroll`. Bounded per app and source address (`--enroll-per-ip` per
/// `--enroll-window`, counted in the database so every instance shares it) and, in approval
/// mode, by the number of devices already waiting (`--max-pending`): over either, 429 with
/// `Retry-After`.
pub async fn enroll(
    State(st): State<AppState>,
    ext: axum::http::Extensions,
    body: Body,
) -> ApiResult<Json<EnrollResponse>> {
    let ip = client_ip(&ext);
    let req: EnrollRequest = read_doc(body).await?;
    let app = st
        .db
        .app(&req.app)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no app {:?} on this server", req.app)))?;
    let now = now_ms();
    let window = i64::try_from(st.settings.enroll_window.as_millis()).unwrap_or(i64::MAX);
    let attempts = st
        .db
        .enroll_attempt(
            &req.app,
            &ip,
            now,
            now.saturating_sub(window),
            i64::from(st.settings.enroll_per_ip) + 1,
        )
        .await?;
    if attempts > i64::from(st.settings.enroll_per_ip) {
        return Err(ApiError::TooMany {
            message: format!(
                "more than {} enrollments for app {} from {} within {} s",
                st.settings.enroll_per_ip,
                req.app,
                ip,
                st.settings.enroll_window.as_secs()
            ),
            retry_after_secs: st.settings.enroll_window.as_secs().max(1),
        });
    }
    if app.enroll_secret_sha256.is_none()
        && st.db.device_app(&req.device_id).await?.is_none()
        && st.db.pending_count(&req.app).await? >= i64::from(st.settings.max_pending)
    {
        return Err(ApiError::TooMany {
            message: format!(
                "app {} already has {} devices waiting for approval",
                req.app, st.settings.max_pending
            ),
            retry_after_secs: 3600,
        });
    }
    if let Some((other, _)) = st.db.device_app(&req.device_id).await? {
        if other != req.app {
            return Err(ApiError::Conflict(format!(
                "device id {:?} is enrolled under another app",
                req.device_id
            )));
        }
    }
    let status = match &app.enroll_secret_sha256 {
        Some(want) => {
            let given = req.secret.as_deref().unwrap_or("");
            if given.is_empty() || !same_secret(&sha256_hex(given), want) {
                return Err(ApiError::Denied {
                    field: "secret".into(),
                    reason: "wrong or missing enrollment secret".into(),
                });
            }
            DeviceStatus::Active
        }
        None => DeviceStatus::Pending,
    };
    let token = new_token();
    let status_str = match status {
        DeviceStatus::Active => "active",
        DeviceStatus::Pending => "pending",
    };
    st.db
        .enroll(
            &req.device_id,
            &req.app,
            &sha256_hex(&token),
            status_str,
            req.hostname.as_deref(),
        )
        .await?;
    Ok(Json(EnrollResponse {
        device_id: req.device_id,
        token,
        status,
        poll_interval_secs: st.settings.poll_interval_secs,
    }))
}

/// `POST /v1/checkin`: records the check-in, then answers with the directive and the
/// pending commands, or `304` when the answer equals the device's `If-None-Match`.
pub async fn checkin(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let dev = device_auth(&st, &headers).await?;
    let c: CheckIn = read_doc(body).await?;
    if let Some(state) = &c.state {
        crate::alerts::check_problem(state)?;
    }
    let now = now_ms();
    // Alerts look only at results stored by this check-in, not at ones sent again.
    let prev_seq = dev.last_result_seq;
    let row = CheckinRow {
        version: c.version.clone(),
        tree_digest: c.tree_digest.clone(),
        channel: c.channel.clone(),
        attrs: serde_json::to_string(&c.attrs).unwrap_or_else(|_| "{}".into()),
        free_disk: c.free_disk.map(i64_of),
        os: c.os.clone(),
        arch: c.arch.clone(),
        hostname: c.hostname.clone(),
        agent_version: c.agent_version.clone(),
        state: c.state.as_ref().map(|s| {
            (
                serde_json::to_string(s).unwrap_or_default(),
                state_digest(s),
            )
        }),
        results: c.results.clone(),
        quiet_gen: dev.quiet_gen,
    };
    let every = i64::try_from(st.settings.history_every.as_millis()).unwrap_or(i64::MAX);
    let history = keep_history(&dev, &c, now, every);
    let idle = !st.settings.durable_idle_checkins && c.results.is_empty() && c.state.is_none();
    let out = st.db.record_checkin(&dev, &row, now, history, idle).await?;
    let active = out.status == "active";
    let directive = if active {
        crate::rollout::directive_for_checkin(&st.db, &dev, &c, &dev.rules, now).await?
    } else {
        None
    };
    // What the dashboard calls "updating": directed to a version not reached yet. Written
    // only when it changed: an idle check-in then takes SQLite's write lock once, not twice.
    let directed = directive.as_ref().map(|d| d.version.as_str());
    if directed != dev.directed_version.as_deref() {
        st.db.set_directed(&dev.id, directed).await?;
    }
    if active {
        let new_results: Vec<_> = c
            .results
            .iter()
            .filter(|r| match prev_seq {
                Some(p) => i64_of(r.seq) > p,
                None => true,
            })
            .cloned()
            .collect();
        let facts = crate::alerts::CheckinFacts {
            app: &dev.app,
            device: &dev.id,
            new_results: &new_results,
            state: c.state.as_ref(),
            up_to_date: directive.is_none(),
        };
        // The check-in is stored; an alert that cannot be written now is logged, not
        // turned into an error the device would retry.
        if let Err(e) =
            crate::alerts::store::on_checkin(&st.db, &facts, &dev.open_alerts, now).await
        {
            tracing::warn!("alerts of device {}: {e}", dev.id);
        }
    }
    let commands = out
        .commands
        .iter()
        .filter_map(|p| {
            Some(Command {
                id: p.id.clone(),
                kind: CommandKind::parse(&p.kind)?,
                args: serde_json::from_str(&p.args).unwrap_or(serde_json::json!({})),
                expires_at: rfc3339(p.expires_ms),
            })
        })
        .collect();
    let resp = CheckInResponse {
        protocol: PROTOCOL,
        status: if active {
            DeviceStatus::Active
        } else {
            DeviceStatus::Pending
        },
        directive,
        commands,
        poll_interval_secs: dev
            .poll_interval_secs
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(st.settings.poll_interval_secs),
        acked_result_seq: out.acked_result_seq.and_then(|s| u64::try_from(s).ok()),
        state_digest: out.state_digest,
    };
    let body = serde_json::to_vec(&resp).map_err(|e| ApiError::Internal(e.to_string()))?;
    let etag = format!("\"{}\"", &blake3::hash(&body).to_hex()[..32]);
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.to_string()))?;
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (header::ETAG, etag_value),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response())
}

/// Whether a check-in gets its own history row: the first one, a change of version or
/// channel, or `every_ms` since the last row. Idle check-ins in between only update the
/// device row (last seen, counters), so the history grows with changes, not with polling.
pub fn keep_history(dev: &DeviceAuth, c: &CheckIn, now: i64, every_ms: i64) -> bool {
    let due = match dev.last_history_ms {
        Some(last) => now.saturating_sub(last) >= every_ms,
        None => true,
    };
    due || dev.version != c.version || dev.channel != c.channel
}

/// `POST /v1/commands/{id}/result`: only the device the command was queued for may answer
/// it; any other device gets 404, so command ids do not leak.
pub async fn command_result(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let dev = device_auth(&st, &headers).await?;
    check_id("id", &id)?;
    let r: CommandResult = read_doc(body).await?;
    let outcome = match r.outcome {
        CommandOutcome::Ok => "ok",
        CommandOutcome::Failed => "failed",
        CommandOutcome::Rejected => "rejected",
    };
    let data = r.data.as_ref().map(|d| d.to_string());
    if st
        .db
        .command_result(&id, &dev.id, outcome, r.message.as_deref(), data)
        .await?
    {
        return Ok(Json(serde_json::json!({"id": id, "status": outcome})));
    }
    match st.db.command_for(&id, &dev.id).await? {
        None => Err(ApiError::NotFound(format!(
            "no command {id} for this device"
        ))),
        Some((_, status)) => Err(ApiError::Conflict(format!(
            "command {id} already has a result ({status})"
        ))),
    }
}

/// Most files one device may upload for one `upload-logs` command.
pub const MAX_UPLOADS_PER_COMMAND: i64 = 32;

/// Query of `PUT /v1/uploads`.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// The `upload-logs` command that asked for the file.
    pub command: Option<String>,
    /// Or the crash report the file belongs to (handled by `crash_files`).
    pub crash: Option<String>,
    /// Display name.
    pub name: Option<String>,
}

/// `PUT /v1/uploads?command=ID&name=NAME`: streams the body to `DATA/uploads/`, capped and
/// hashed on the way; over the cap nothing is kept. (`crash=ID` instead of `command` is
/// `crash_files`', which routes the other uploads here.)
pub async fn upload(
    State(st): State<AppState>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadReceipt>> {
    let dev = device_auth(&st, &headers).await?;
    let Query(q) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let command = q.command.ok_or_else(|| {
        ApiError::bad("command", "missing: uploads answer an upload-logs command")
    })?;
    check_id("command", &command)?;
    let name = q.name.ok_or_else(|| ApiError::bad("name", "missing"))?;
    if name.is_empty() {
        return Err(ApiError::bad("name", "must not be empty"));
    }
    check_short("name", &name)?;
    match st.db.command_for(&command, &dev.id).await? {
        Some((kind, status))
            if kind == CommandKind::UploadLogs.as_str()
                && (status == "pending" || status == "delivered") => {}
        Some(_) => {
            return Err(ApiError::Conflict(format!(
                "command {command} is not an open upload-logs command"
            )))
        }
        None => {
            return Err(ApiError::NotFound(format!(
                "no command {command} for this device"
            )))
        }
    }
    if st.db.upload_count(&command, &dev.id).await? >= MAX_UPLOADS_PER_COMMAND {
        return Err(ApiError::Invalid(formats::fleet::FleetError {
            field: "command".into(),
            reason: format!(
                "more than the limit of {MAX_UPLOADS_PER_COMMAND} files for one command"
            ),
            too_large: true,
        }));
    }
    store_upload(&st, &dev, Some(command), name, &headers, body).await
}

/// Stores an upload of `dev` (tied to `command`, or to nothing for a crash file) whose
/// request was checked: streams it to `DATA/uploads/` under the upload cap and records it.
pub(super) async fn store_upload(
    st: &AppState,
    dev: &DeviceAuth,
    command: Option<String>,
    name: String,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadReceipt>> {
    let cap = st.settings.max_upload;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(ApiError::too_large("upload", cap));
    }
    let dir = st.uploads_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
    let id = new_id();
    let part = dir.join(format!(".{id}.part"));
    let written = stream_to(&part, body, cap, st.settings.upload_read_timeout).await;
    let (size, hash) = match written {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    let dest = dir.join(&id);
    if let Err(e) = tokio::fs::rename(&part, &dest).await {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(ApiError::Internal(format!("{}: {e}", dest.display())));
    }
    let row = UploadRow {
        id: id.clone(),
        device: dev.id.clone(),
        command,
        name,
        size: i64_of(size),
        blake3: hash.clone(),
        created_ms: now_ms(),
    };
    if let Err(e) = st.db.insert_upload(&row).await {
        let _ = tokio::fs::remove_file(&dest).await;
        return Err(e.into());
    }
    Ok(Json(UploadReceipt {
        id,
        size,
        blake3: hash,
    }))
}

/// Writes `body` to `path`, refusing the first byte past `cap` and a pause longer than
/// `idle` between two pieces; returns size and BLAKE3.
async fn stream_to(
    path: &std::path::Path,
    body: Body,
    cap: u64,
    idle: std::time::Duration,
) -> ApiResult<(u64, String)> {
    let io = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    loop {
        let Ok(next) = tokio::time::timeout(idle, stream.next()).await else {
            return Err(ApiError::Timeout(format!(
                "upload body: nothing received for {} s",
                idle.as_secs_f64()
            )));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::bad("body", format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        if size > cap {
            return Err(ApiError::too_large("upload", cap));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_rows_follow_changes_not_polling() {
        let dev = |last: Option<i64>, v: &str| DeviceAuth {
            id: "d".into(),
            app: "a".into(),
            status: "active".into(),
            state_digest: None,
            poll_interval_secs: None,
            version: Some(v.into()),
            channel: Some("stable".into()),
            last_history_ms: last,
            directed_version: None,
            last_result_seq: None,
            rules_gen: 0,
            rules: Default::default(),
            rollouts: Vec::new(),
            commands_waiting: false,
            open_alerts: Default::default(),
            quiet_gen: None,
        };
        let c = |v: &str, ch: &str| CheckIn {
            version: Some(v.into()),
            channel: Some(ch.into()),
            ..CheckIn::default()
        };
        let every = 900_000;
        let cases = [
            (dev(None, "1.0.0"), c("1.0.0", "stable"), 1_000, true),
            (dev(Some(0), "1.0.0"), c("1.0.0", "stable"), 1_000, false),
            (dev(Some(0), "1.0.0"), c("1.0.0", "stable"), 900_000, true),
            (dev(Some(0), "1.0.0"), c("2.0.0", "stable"), 1_000, true),
            (dev(Some(0), "1.0.0"), c("1.0.0", "beta"), 1_000, true),
        ];
        for (d, ci, now, want) in cases {
            assert_eq!(
                keep_history(&d, &ci, now, every),
                want,
                "{d:?} {ci:?} {now}"
            );
        }
    }
}
