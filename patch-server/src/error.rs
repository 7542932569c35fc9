//! The one error type of the HTTP layer: each variant is one status code and an
//! [`ErrorBody`] naming the field or the limit at fault.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use formats::fleet::{ErrorBody, FleetError};

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A malformed (400) or oversized (413) document, with the field at fault.
    #[error(transparent)]
    Invalid(#[from] FleetError),
    /// Missing or unknown token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A credential in the request body is wrong (401, naming the field).
    #[error("{field}: {reason}")]
    Denied {
        /// The field holding the credential.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A valid token that may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such object, or not one this token may see (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (409).
    #[error("{0}")]
    Conflict(String),
    /// The client took too long to send its request (408).
    #[error("{0}")]
    Timeout(String),
    /// Too many requests of one kind (429 with `Retry-After` in seconds).
    #[error("{message}")]
    TooMany {
        /// What limit was reached.
        message: String,
        /// When to try again, in seconds.
        retry_after_secs: u64,
    },
    /// Overloaded or the database is unreachable (503 with `Retry-After`).
    #[error("{0}")]
    Unavailable(String),
    /// A database error.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn bad(field: &str, reason: impl Into<String>) -> Self {
        ApiError::Invalid(FleetError {
            field: field.into(),
            reason: reason.into(),
            too_large: false,
        })
    }

    /// A 413 naming `field` and its limit in bytes.
    pub fn too_large(field: &str, limit: u64) -> Self {
        ApiError::Invalid(FleetError {
            field: field.into(),
            reason: format!("longer than the limit of {limit} bytes"),
            too_large: true,
        })
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(e) if e.too_large => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) | ApiError::Denied { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Db(e) if db_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Db(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Whether a database error means "try again later" rather than a bug.
pub fn db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // SQLite's "database is locked" (SQLITE_BUSY) after the busy timeout.
        // PostgreSQL closing the connection as it shuts down or restarts (57P01-57P03): the
        // pool drops that connection and the device tries again later.
        sqlx::Error::Database(d) => {
            d.message().contains("locked")
                || matches!(
                    d.code().as_deref(),
                    Some("5") | Some("57P01") | Some("57P02") | Some("57P03")
                )
        }
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Invalid(e) => ErrorBody {
                error: e.to_string(),
                field: Some(e.field.clone()),
            },
            ApiError::Denied { field, .. } => ErrorBody {
                error: self.to_string(),
                field: Some(field.clone()),
            },
            ApiError::Db(e) => {
                tracing::warn!("database error: {e}");
                ErrorBody {
                    error: if status == StatusCode::SERVICE_UNAVAILABLE {
                        "database unavailable, try again later".into()
                    } else {
                        "internal database error".into()
                    },
                    field: None,
                }
            }
            other => ErrorBody {
                error: other.to_string(),
                field: None,
            },
        };
        let retry = match &self {
            ApiError::TooMany {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
