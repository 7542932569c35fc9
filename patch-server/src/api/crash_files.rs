//! Uploads of crash files (`PUT /v1/uploads?crash=ID&name=NAME`): the agent's supervisor
//! attaches the files a crashed app left in its crash directory to the crash report of the
//! state document, without an `upload-logs` command. Same token, same cap per file and same
//! storage as `upload-logs` uploads ([`super::device::store_upload`]); the upload has no
//! command and its display name is the agent's (`crash-ID/NAME`). At most
//! [`MAX_CRASH_UPLOADS_PER_HOUR`] per device in any hour.
//!
//! `PUT /v1/uploads` is routed here ([`upload_any`]); an upload with a command goes on to
//! `device::upload`. Uses `device` (the shared storing) and `common`; only `router` uses it.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use formats::fleet::{check_id, check_short, UploadReceipt, MAX_CRASH_UPLOADS_PER_HOUR};

use super::common::{device_auth, AppState};
use super::device::{store_upload, UploadQuery};
use crate::db::DeviceAuth;
use crate::error::{ApiError, ApiResult};
use crate::util::now_ms;

/// `PUT /v1/uploads`: a crash file with `crash=ID`, else an `upload-logs` upload
/// (`device::upload`).
pub async fn upload_any(
    State(st): State<AppState>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadReceipt>> {
    match query {
        Ok(Query(q)) if q.crash.is_some() => {
            let dev = device_auth(&st, &headers).await?;
            upload(&st, &dev, q, &headers, body).await
        }
        query => super::device::upload(State(st), query, headers, body).await,
    }
}

/// Checks a crash upload of `dev` (`q.crash` set) and stores it.
pub async fn upload(
    st: &AppState,
    dev: &DeviceAuth,
    q: UploadQuery,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadReceipt>> {
    let crash = q.crash.unwrap_or_default();
    check_id("crash", &crash)?;
    if q.command.is_some() {
        return Err(ApiError::bad(
            "command",
            "a crash file answers no command: give crash or command, not both",
        ));
    }
    let name = q.name.ok_or_else(|| ApiError::bad("name", "missing"))?;
    if name.is_empty() {
        return Err(ApiError::bad("name", "must not be empty"));
    }
    check_short("name", &name)?;
    const HOUR_MS: i64 = 3_600_000;
    let now = now_ms();
    let (recent, oldest) = st.db.crash_uploads_since(&dev.id, now - HOUR_MS).await?;
    if recent >= MAX_CRASH_UPLOADS_PER_HOUR as i64 {
        // Room again once the oldest counted upload leaves the hour.
        let wait_ms = oldest
            .map_or(HOUR_MS, |o| o + HOUR_MS - now)
            .clamp(1_000, HOUR_MS);
        return Err(ApiError::TooMany {
            message: format!(
                "crash: more than the limit of {MAX_CRASH_UPLOADS_PER_HOUR} crash files per \
                 device in an hour"
            ),
            retry_after_secs: (wait_ms as u64).div_ceil(1000),
        });
    }
    store_upload(st, dev, None, name, headers, body).await
}
