//! What the device and admin handlers share: the server state, reading a bounded JSON body,
//! and the two kinds of bearer token.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use formats::fleet::{parse, Validate, MAX_BODY};
use serde::de::DeserializeOwned;

use crate::db::{Db, DeviceAuth};
use crate::error::{ApiError, ApiResult};
use crate::util::sha256_hex;

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory (uploads, trust state; the SQLite file when that is the backend).
    pub data: PathBuf,
    /// Poll interval told to devices that have none of their own.
    pub poll_interval_secs: u64,
    /// Largest upload accepted, in bytes.
    pub max_upload: u64,
    /// Default life of a command nobody picked up.
    pub command_ttl: Duration,
    /// Idle check-ins add a history row at most this often.
    pub history_every: Duration,
    /// Commit idle check-ins (no result, no state document, no command delivered) with the
    /// WAL flush too (PostgreSQL `synchronous_commit`), instead of without waiting for it.
    pub durable_idle_checkins: bool,
    /// Time allowed to read a request (but an upload's body) and answer it.
    pub request_timeout: Duration,
    /// Time allowed for the requests that read an app's signed repository (adding an app,
    /// refreshing it, the dashboard's releases page), which may be far away and slow.
    pub repo_timeout: Duration,
    /// Longest wait for the next piece of an upload's body.
    pub upload_read_timeout: Duration,
    /// Enrollment attempts allowed per app and source address within `enroll_window`.
    pub enroll_per_ip: u32,
    /// The window of `enroll_per_ip`.
    pub enroll_window: Duration,
    /// Most devices of one app waiting for approval (approval mode).
    pub max_pending: u32,
}

/// State shared by every handler. Nothing in it is needed by another instance: durable state
/// is in the database, uploads in the upload directory.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Settings.
    pub settings: std::sync::Arc<Settings>,
}

impl AppState {
    /// Where uploads are stored.
    pub fn uploads_dir(&self) -> PathBuf {
        self.settings.data.join("uploads")
    }
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes and validates it, naming the field at
/// fault (400) or the limit exceeded (413).
pub async fn read_doc<T: DeserializeOwned + Validate>(body: Body) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large("body", MAX_BODY as u64))?;
    Ok(parse::<T>(&bytes)?)
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let v = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
    let v = v
        .to_str()
        .map_err(|_| ApiError::Unauthorized("unreadable Authorization header".into()))?;
    let t = v
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::Unauthorized("Authorization is not a Bearer token".into()))?
        .trim();
    if t.is_empty() || t.len() > 256 {
        return Err(ApiError::Unauthorized("malformed bearer token".into()));
    }
    Ok(t)
}

/// The device whose token the request carries (401 otherwise).
pub async fn device_auth(st: &AppState, headers: &HeaderMap) -> ApiResult<DeviceAuth> {
    let token = bearer(headers)?;
    st.db
        .device_by_token(
            &sha256_hex(token),
            crate::util::now_ms(),
            &crate::alerts::DEVICE_KINDS,
        )
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown device token".into()))
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// GET only.
    Read,
    /// Apps, commands, devices; no tokens.
    Ci,
    /// Everything.
    Admin,
}

impl Scope {
    /// Parses `read`, `ci` or `admin`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "ci" => Some(Scope::Ci),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ci => "ci",
            Scope::Admin => "admin",
        }
    }
}

/// Checks the admin token of a request: 401 when missing or unknown, 403 when its scope is
/// below `need`. Returns the token's scope and a short actor name for the audit log.
pub async fn admin_auth(st: &AppState, headers: &HeaderMap, need: Scope) -> ApiResult<String> {
    let token = bearer(headers)?;
    let sha = sha256_hex(token);
    let scope = st
        .db
        .admin_scope(&sha)
        .await?
        .and_then(|s| Scope::parse(&s))
        .ok_or_else(|| ApiError::Unauthorized("unknown admin token".into()))?;
    if scope < need {
        return Err(ApiError::Forbidden(format!(
            "a {} token may not do this (needs {})",
            scope.as_str(),
            need.as_str()
        )));
    }
    Ok(format!("{}:{}", scope.as_str(), &sha[..12]))
}
