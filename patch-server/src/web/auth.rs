//! Accounts, sessions, CSRF and login throttling.
//!
//! A session is a random 256-bit id in a cookie (`HttpOnly`, `SameSite=Strict`, `Secure` when
//! the server speaks TLS, path `/ui`); the database stores only its SHA-256, so every instance
//! behind one address knows every session. Each session has its own CSRF token, put in a hidden
//! field of every form by the layout and compared in constant time on every POST by
//! [`ActForm`] / [`SessionForm`]: the one place a form is accepted. Failed logins are counted
//! per user name and client address in the database: [`MAX_FAILURES`] in [`FAILURE_WINDOW`]
//! lock that pair out until the window passes.

use std::net::SocketAddr;
use std::time::Duration;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use cookie::{Cookie, SameSite};
use serde::de::DeserializeOwned;

use super::error::{WebError, WebResult};
use super::store::Role;
use super::WebState;
use crate::util::{now_ms, random_hex, same_secret, sha256_hex};

/// Name of the session cookie.
pub const COOKIE: &str = "patchkit_session";
/// Failed logins of one user name from one address before it is locked out.
pub const MAX_FAILURES: i64 = 5;
/// The window failed logins are counted over (and the lockout lasts).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Largest form body accepted.
pub const MAX_FORM: usize = 64 * 1024;
/// Longest password accepted (argon2 time grows with it).
pub const MAX_PASSWORD: usize = 1024;

/// Errors of hashing a password.
#[derive(Debug, thiserror::Error)]
#[error("password hashing: {0}")]
pub struct HashError(String);

/// An argon2id hash (PHC string, default parameters, random salt) of `password`.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so that the answer takes as long
/// as for a real user (no user-name probing by timing).
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("no such user").unwrap_or_default())
}

/// The client address of a request (`unknown` when the server runs without connect info):
/// what login failures are counted by, with the user name.
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientIp, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string())
                .unwrap_or_else(|| "unknown".into()),
        ))
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse(v.to_string()))
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A logged-in user, from the session cookie. Extracting it redirects to the login page when
/// there is no live session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Login name.
    pub user: String,
    /// Role.
    pub role: Role,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    id_sha: String,
}

impl Session {
    /// The actor name written to the audit log.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user)
    }

    /// Whether the user may act (the templates hide forms otherwise).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

impl FromRequestParts<WebState> for Session {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, st: &WebState) -> WebResult<Session> {
        let id = cookie_value(&parts.headers).ok_or(WebError::Login)?;
        let id_sha = sha256_hex(&id);
        let row = st
            .app
            .db
            .session(&id_sha, now_ms())
            .await?
            .ok_or(WebError::Login)?;
        Ok(Session {
            user: row.user,
            role: row.role,
            csrf: row.csrf,
            id_sha,
        })
    }
}

/// Reads a bounded urlencoded body and checks its `csrf` field against the session's token.
async fn checked_form<T: DeserializeOwned>(req: Request, st: &WebState) -> WebResult<(Session, T)> {
    let (mut parts, body) = req.into_parts();
    let session = Session::from_request_parts(&mut parts, st).await?;
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| WebError::bad("body", format!("larger than {MAX_FORM} bytes")))?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| WebError::bad("body", format!("not a form: {e}")))?;
    let sent = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !same_secret(sent, &session.csrf) {
        return Err(WebError::Forbidden(
            "csrf: the form's token is missing or wrong; reload the page and try again".into(),
        ));
    }
    let form: T = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .split('`')
            .nth(1)
            .filter(|f| f.len() < 64)
            .unwrap_or("body")
            .to_string();
        WebError::bad(&field, msg)
    })?;
    Ok((session, form))
}

/// A form any logged-in user may post (log out): session + CSRF checked.
#[derive(Debug)]
pub struct SessionForm<T>(pub Session, pub T);

impl<T: DeserializeOwned + Send> FromRequest<WebState> for SessionForm<T> {
    type Rejection = WebError;

    async fn from_request(req: Request, st: &WebState) -> WebResult<Self> {
        let (s, f) = checked_form(req, st).await?;
        Ok(SessionForm(s, f))
    }
}

/// A form that acts: session + CSRF + the `admin` role (a viewer gets 403). Every dashboard
/// action takes one of these and writes the audit log with [`Session::actor`].
#[derive(Debug)]
pub struct ActForm<T>(pub Session, pub T);

impl<T: DeserializeOwned + Send> FromRequest<WebState> for ActForm<T> {
    type Rejection = WebError;

    async fn from_request(req: Request, st: &WebState) -> WebResult<Self> {
        let (s, f) = checked_form(req, st).await?;
        if !s.is_admin() {
            return Err(WebError::Forbidden(format!(
                "{} is a viewer: only an admin may do this",
                s.user
            )));
        }
        Ok(ActForm(s, f))
    }
}

/// What a login attempt came to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Logged in: the cookie value to set.
    Ok(String),
    /// Wrong name or password.
    Denied,
    /// Locked out for now.
    Throttled,
}

/// Checks a login, counting failures; on success makes a session.
pub async fn login(st: &WebState, name: &str, password: &str, ip: &str) -> WebResult<LoginOutcome> {
    let db = &st.app.db;
    let now = now_ms();
    let window = i64::try_from(FAILURE_WINDOW.as_millis()).unwrap_or(i64::MAX);
    if db.login_failures(name, ip, now - window).await? >= MAX_FAILURES {
        db.audit(&format!("user:{name}"), "login.throttled", name, ip)
            .await?;
        return Ok(LoginOutcome::Throttled);
    }
    let creds = db.user_credentials(name).await?;
    let (hash, known) = match &creds {
        Some((h, _)) => (h.clone(), true),
        None => (dummy_hash().to_string(), false),
    };
    let pw = password.to_string();
    let matches = tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    if !(known && matches) {
        db.add_login_failure(name, ip, now, now - window).await?;
        db.audit(&format!("user:{name}"), "login.failed", name, ip)
            .await?;
        return Ok(LoginOutcome::Denied);
    }
    db.clear_login_failures(name, ip).await?;
    let id = random_hex(32);
    let csrf = random_hex(32);
    let ttl = i64::try_from(st.opts.session_ttl.as_millis()).unwrap_or(i64::MAX);
    db.add_session(&sha256_hex(&id), name, &csrf, now, now.saturating_add(ttl))
        .await?;
    db.audit(&format!("user:{name}"), "login", name, ip).await?;
    Ok(LoginOutcome::Ok(id))
}

/// Ends the session.
pub async fn logout(st: &WebState, s: &Session) -> WebResult<()> {
    st.app.db.remove_session(&s.id_sha).await?;
    st.app.db.audit(&s.actor(), "logout", &s.user, "").await?;
    Ok(())
}

/// The `Set-Cookie` value of a session id (`None`: clear the cookie).
pub fn session_cookie(st: &WebState, id: Option<&str>) -> String {
    let mut c = Cookie::build((COOKIE, id.unwrap_or("").to_string()))
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(st.opts.secure_cookies);
    c = match id {
        Some(_) => c.max_age(cookie::time::Duration::seconds(
            i64::try_from(st.opts.session_ttl.as_secs()).unwrap_or(i64::MAX),
        )),
        None => c.max_age(cookie::time::Duration::ZERO),
    };
    c.build().to_string()
}

impl axum::extract::OptionalFromRequestParts<WebState> for Session {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, st: &WebState) -> WebResult<Option<Session>> {
        match <Session as FromRequestParts<WebState>>::from_request_parts(parts, st).await {
            Ok(s) => Ok(Some(s)),
            Err(WebError::Login) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A form with no field of its own (only the CSRF token the extractors check): logout, halt
/// without a reason, resume, finish, unpin.
#[derive(Debug, serde::Deserialize)]
pub struct Empty {}
