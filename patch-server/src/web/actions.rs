//! The POST handlers. Each takes an [`ActForm`] (session + CSRF + admin role, checked before
//! the handler runs) or, for logging out, a [`SessionForm`]; validates the form, naming the
//! field at fault; acts through the same database calls as the admin API; writes the audit log
//! with the user's name; and redirects (303) back to the page it came from.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use formats::fleet::{check_id, Validate};
use serde::Deserialize;

use super::auth::{self, ActForm, ClientIp, Empty, LoginOutcome, SessionForm, MAX_PASSWORD};
use super::error::{WebError, WebResult};
use super::pages::login_failed;
use super::WebState;
use crate::api::admin::NewCommand;
use crate::util::{new_id, now_ms};

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
}

/// `POST /ui/login`: checks the password (argon2), counting failures per user and address;
/// sets the session cookie and goes to the overview.
pub async fn login(
    State(st): State<WebState>,
    ClientIp(ip): ClientIp,
    form: Result<Form<LoginForm>, FormRejection>,
) -> WebResult<Response> {
    let Form(f) = form.map_err(|_| WebError::bad("name", "the form needs name and password"))?;
    if f.name.is_empty() || f.name.len() > 64 || f.password.len() > MAX_PASSWORD {
        return login_failed(StatusCode::UNAUTHORIZED, "wrong user name or password");
    }
    match auth::login(&st, &f.name, &f.password, &ip).await? {
        LoginOutcome::Ok(id) => Ok((
            [(header::SET_COOKIE, auth::session_cookie(&st, Some(&id)))],
            Redirect::to("/ui"),
        )
            .into_response()),
        LoginOutcome::Denied => {
            login_failed(StatusCode::UNAUTHORIZED, "wrong user name or password")
        }
        LoginOutcome::Throttled => login_failed(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many failed logins for {} from your address: try again in {} minutes",
                f.name,
                auth::FAILURE_WINDOW.as_secs() / 60
            ),
        ),
    }
}

/// `POST /ui/logout`.
pub async fn logout(
    State(st): State<WebState>,
    SessionForm(s, _): SessionForm<Empty>,
) -> WebResult<Response> {
    auth::logout(&st, &s).await?;
    Ok((
        [(header::SET_COOKIE, auth::session_cookie(&st, None))],
        Redirect::to("/ui/login"),
    )
        .into_response())
}

/// The "queue a command" form of the device page.
#[derive(Debug, Deserialize)]
pub struct CommandForm {
    kind: String,
    /// Seconds, for `set-interval` (an empty field is absent).
    #[serde(default)]
    secs: Option<String>,
}

/// `POST /ui/devices/{id}/commands`: queues a command for the device, validated like
/// `POST /v1/admin/commands`.
pub async fn queue_command(
    State(st): State<WebState>,
    Path(id): Path<String>,
    ActForm(s, f): ActForm<CommandForm>,
) -> WebResult<Response> {
    check_id("id", &id)?;
    let secs = match f.secs.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| WebError::bad("secs", "must be a whole number of seconds"))?,
        ),
    };
    let c = NewCommand {
        device: Some(id.clone()),
        tag: None,
        app: None,
        kind: f.kind.clone(),
        args: secs.map(|s| serde_json::json!({ "secs": s })),
        expires_in_secs: None,
    };
    c.validate()?;
    if st.app.db.device(&id).await?.is_none() {
        return Err(WebError::NotFound(format!("no device {id}")));
    }
    let now = now_ms();
    let ttl = i64::try_from(st.app.settings.command_ttl.as_millis()).unwrap_or(i64::MAX);
    let args = c
        .args
        .clone()
        .unwrap_or_else(|| serde_json::json!({}))
        .to_string();
    let cmd = new_id();
    st.app
        .db
        .queue_command(
            &cmd,
            "device",
            &id,
            &c.kind,
            &args,
            now,
            now.saturating_add(ttl),
            &s.actor(),
        )
        .await?;
    st.app
        .db
        .audit(
            &s.actor(),
            "command.queue",
            &format!("device:{id}"),
            &c.kind,
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/devices/{id}#commands")).into_response())
}
