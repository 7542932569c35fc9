//! The dashboard's error type: each variant is one status code and a small HTML page naming
//! the field or the reason; a missing or expired session is a redirect to the login page.

use askama::Template;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use formats::fleet::FleetError;

use crate::error::ApiError;

/// Why a dashboard request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// No valid session: redirect to `/ui/login` (303).
    #[error("log in first")]
    Login,
    /// A malformed form or query (400), naming the field.
    #[error("{field}: {reason}")]
    Bad {
        /// The field at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A viewer tried to act, or the CSRF token is missing or wrong (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such object (404).
    #[error("{0}")]
    NotFound(String),
    /// Too many failed logins (429).
    #[error("{0}")]
    TooMany(String),
    /// The database is unreachable or busy (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
}

impl WebError {
    /// A 400 naming `field`.
    pub fn bad(field: &str, reason: impl Into<String>) -> Self {
        WebError::Bad {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::Login => StatusCode::SEE_OTHER,
            WebError::Bad { .. } => StatusCode::BAD_REQUEST,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            WebError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<FleetError> for WebError {
    fn from(e: FleetError) -> Self {
        WebError::Bad {
            field: e.field.clone(),
            reason: e.reason,
        }
    }
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(f) => f.into(),
            ApiError::NotFound(m) => WebError::NotFound(m),
            ApiError::Forbidden(m) => WebError::Forbidden(m),
            ApiError::Db(d) => d.into(),
            other if other.status() == StatusCode::SERVICE_UNAVAILABLE => {
                WebError::Unavailable(other.to_string())
            }
            other => WebError::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for WebError {
    fn from(e: sqlx::Error) -> Self {
        let api = ApiError::Db(e);
        if api.status() == StatusCode::SERVICE_UNAVAILABLE {
            WebError::Unavailable("database unavailable, try again later".into())
        } else {
            tracing::warn!("dashboard: {api}");
            WebError::Internal("internal database error".into())
        }
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> Self {
        WebError::Internal(format!("template: {e}"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if let WebError::Login = self {
            return Redirect::to("/ui/login").into_response();
        }
        let status = self.status();
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("error"),
            message: self.to_string(),
        };
        let body = page.render().unwrap_or_else(|_| "error".to_string());
        let mut resp = (status, Html(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(crate::error::RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// Result of a dashboard handler.
pub type WebResult<T> = Result<T, WebError>;
