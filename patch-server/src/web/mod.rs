//! The web dashboard under `/ui/`: server-rendered HTML from the same binary, for people.
//!
//! - [`auth`]: accounts (argon2), database sessions, CSRF, login throttling, and the two form
//!   extractors every POST goes through ([`auth::ActForm`] checks session, CSRF and the
//!   `admin` role; a viewer gets 403).
//! - [`pages`]: the read-only pages (overview, devices, device, releases, audit log).
//! - [`actions`]: the POST handlers; each writes the audit log with the user's name.
//! - [`table`]: filters, sortable headers and paging shared by the table pages.
//! - [`store`]: the dashboard's queries.
//! - [`release_view`]: what each release changed, read from the signed manifests.
//! - [`rollouts`]: the rollouts page, the device page's pin forms and the alerts page; every
//!   action goes through the [`crate::rollout`] service with the user as actor.
//!
//! Templates live in `patch-server/templates/` and are compiled in by askama with HTML
//! auto-escaping; every page extends `base.html` (nav, user, logout form). There is no
//! JavaScript: the Content-Security-Policy forbids scripts, so an injected `<script>` could
//! not run even if escaping failed. To add a page: a template extending `base.html`, a
//! handler building [`Layout`] with [`Layout::new`], a route in [`router`], a line in [`NAV`].

pub mod actions;
pub mod auth;
pub mod error;
pub mod pages;
pub mod release_view;
pub mod rollouts;
pub mod store;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::common::AppState;
use auth::Session;

/// Settings of the dashboard.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// A device is "silent" when not seen for longer than this many poll intervals.
    pub silent_after: u32,
    /// Mark the session cookie `Secure` (the server speaks TLS).
    pub secure_cookies: bool,
    /// Life of a session.
    pub session_ttl: Duration,
}

impl Default for WebOptions {
    fn default() -> Self {
        WebOptions {
            silent_after: 3,
            secure_cookies: false,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// State of the dashboard handlers: the API's state plus the dashboard settings.
#[derive(Debug, Clone)]
pub struct WebState {
    /// Database and server settings.
    pub app: AppState,
    /// Dashboard settings.
    pub opts: Arc<WebOptions>,
}

impl WebState {
    /// How "silent" is computed now.
    pub fn silence(&self) -> store::Silence {
        store::Silence {
            now_ms: crate::util::now_ms(),
            intervals: i64::from(self.opts.silent_after.max(1)),
            default_poll_secs: i64::try_from(self.app.settings.poll_interval_secs)
                .unwrap_or(i64::MAX),
        }
    }
}

/// The navigation bar: `(label, link)`; a new page adds its line here.
pub const NAV: &[(&str, &str)] = &[
    ("Overview", "/ui"),
    ("Devices", "/ui/devices"),
    ("Releases", "/ui/releases"),
    ("Rollouts", "/ui/rollouts"),
    ("Alerts", "/ui/alerts"),
    ("Audit log", "/ui/audit"),
];

/// One entry of the nav bar.
#[derive(Debug, Clone)]
pub struct NavItem {
    /// Label.
    pub label: &'static str,
    /// Link.
    pub href: &'static str,
    /// Whether it is the page shown.
    pub current: bool,
}

/// Renders a template into a response (every page handler ends here).
pub fn render<T: askama::Template>(t: &T) -> error::WebResult<Response> {
    Ok(axum::response::Html(t.render()?).into_response())
}

/// The page listing the apps, each linking to its `/ui/apps/{app}/{section}` page (the index of
/// the releases and of the rollouts pages).
#[derive(askama::Template)]
#[template(path = "releases_index.html")]
struct AppsIndex {
    layout: Layout,
    apps: Vec<(String, String)>,
}

/// Renders [`AppsIndex`] for `section` (`releases`, `rollouts`) under the nav entry `title`
/// at `path`.
async fn apps_index(
    st: &WebState,
    s: &Session,
    title: &'static str,
    path: &'static str,
    section: &str,
) -> error::WebResult<Response> {
    let apps = st
        .app
        .db
        .apps()
        .await?
        .into_iter()
        .map(|a| (format!("/ui/apps/{}/{section}", a.name), a.name))
        .collect();
    render(&AppsIndex {
        layout: Layout::new(s, title, path),
        apps,
    })
}

/// What `base.html` needs: the title, the nav, the user and the CSRF token of the logout
/// form (and of every other form on the page).
#[derive(Debug, Clone)]
pub struct Layout {
    /// Page title.
    pub title: String,
    /// The nav entries.
    pub nav: Vec<NavItem>,
    /// Who is logged in.
    pub user: String,
    /// Their role name.
    pub role: &'static str,
    /// Whether forms that act are shown.
    pub can_act: bool,
    /// CSRF token for every form.
    pub csrf: String,
}

impl Layout {
    /// The layout of a page titled `title` under nav entry `current` for session `s`.
    pub fn new(s: &Session, title: impl Into<String>, current: &'static str) -> Self {
        Layout {
            title: title.into(),
            nav: NAV
                .iter()
                .map(|(label, href)| NavItem {
                    label,
                    href,
                    current: *href == current,
                })
                .collect(),
            user: s.user.clone(),
            role: s.role.as_str(),
            can_act: s.is_admin(),
            csrf: s.csrf.clone(),
        }
    }
}

/// The dashboard's one stylesheet.
pub const STYLE_CSS: &str = include_str!("../../static/style.css");

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE_CSS,
    )
        .into_response()
}

/// Headers on every dashboard answer: no scripts at all, no framing, no sniffing, no
/// caching of pages (they hold the CSRF token).
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The `/ui` routes, ready to merge into the API router: `.0` answers from the database
/// alone, `.1` (the releases page) also reads the app's signed repository, so the API router
/// gives it the longer repository timeout.
pub fn router<S>(app: AppState, opts: WebOptions) -> (Router<S>, Router<S>) {
    let st = WebState {
        app,
        opts: Arc::new(opts),
    };
    let reads_repo = Router::new()
        .route("/ui/apps/{app}/releases", get(pages::releases))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(st.clone());
    let quick = Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/static/style.css", get(style))
        .route("/ui/login", get(pages::login_page).post(actions::login))
        .route("/ui/logout", post(actions::logout))
        .route("/ui/devices", get(pages::devices))
        .route("/ui/devices/{id}", get(pages::device))
        .route("/ui/devices/{id}/commands", post(actions::queue_command))
        .route("/ui/uploads/{id}", get(pages::upload))
        .route("/ui/releases", get(pages::releases_index))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/rollouts", get(rollouts::index))
        .route(
            "/ui/apps/{app}/rollouts",
            get(rollouts::rollouts).post(rollouts::start),
        )
        .route(
            "/ui/apps/{app}/rollouts/{id}/percent",
            post(rollouts::set_percent),
        )
        .route("/ui/apps/{app}/rollouts/{id}/halt", post(rollouts::halt))
        .route(
            "/ui/apps/{app}/rollouts/{id}/resume",
            post(rollouts::resume),
        )
        .route(
            "/ui/apps/{app}/rollouts/{id}/finish",
            post(rollouts::finish),
        )
        .route("/ui/apps/{app}/pushes", post(rollouts::push))
        .route("/ui/apps/{app}/pushes/remove", post(rollouts::unpush))
        .route("/ui/apps/{app}/pins/remove", post(rollouts::unpin_target))
        .route("/ui/devices/{id}/pin", post(rollouts::pin))
        .route("/ui/devices/{id}/unpin", post(rollouts::unpin))
        .route("/ui/alerts", get(rollouts::alerts))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(st);
    (quick, reads_repo)
}
