//! The rollout, pin and alert pages and their forms. Every action calls the
//! [`crate::rollout`] service function with the user as actor (`user:NAME`), so the rules, the
//! validation and the audit-log entry are the same as for the admin API and the CLI. A refused
//! action (a 4xx from the service, e.g. resuming a rollout still past its failure threshold)
//! re-renders the page with the message and that status; success redirects (303) back.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use formats::fleet::check_id;
use serde::Deserialize;

use super::auth::{ActForm, Empty, Session};
use super::error::{WebError, WebResult};
use super::table::when;
use super::{render, Layout, WebState};
use crate::alerts::{AlertFilter, AlertView};
use crate::error::ApiError;
use crate::rollout::{self, RolloutView, StartRollout, Target};
use crate::util::now_ms;

/// Most alerts of each kind (open, resolved) the alerts page shows.
pub const ALERTS_SHOWN: i64 = 200;

/// One rollout as the page shows it.
#[derive(Debug, Clone)]
pub struct RolloutLine {
    /// The rollout and its counters.
    pub v: RolloutView,
    /// Started (RFC 3339).
    pub started: String,
    /// Max failure rate as a percentage.
    pub max_rate_pct: String,
    /// Timeout in seconds.
    pub timeout_secs: i64,
    /// Base of the rollout's action URLs.
    pub action: String,
}

/// One push or pin as the page shows it.
#[derive(Debug, Clone)]
pub struct RuleLine {
    /// The release it names.
    pub version: String,
    /// `device`, `tag` or `all`.
    pub target_kind: String,
    /// Device id or tag (`""` for all).
    pub target: String,
    /// `device dev-1`, `tag beta` or `every device`.
    pub to: String,
    /// Created (RFC 3339) and by whom.
    pub created: String,
    /// Who made it.
    pub created_by: String,
    /// A push's end (RFC 3339), or `never`; empty for a pin.
    pub expires: String,
    /// A push past its end.
    pub expired: bool,
}

impl RuleLine {
    /// A pin: no expiry column.
    fn pin(p: crate::db::PinRow) -> RuleLine {
        RuleLine {
            to: target_words(&p.target_kind, &p.target),
            created: when(Some(p.created_ms)),
            expires: String::new(),
            expired: false,
            target_kind: p.target_kind,
            target: p.target,
            version: p.version,
            created_by: p.created_by,
        }
    }

    /// A push, with its expiry as of `now`.
    fn push(p: crate::db::PushRow, now: i64) -> RuleLine {
        RuleLine {
            to: target_words(&p.target_kind, &p.target),
            created: when(Some(p.created_ms)),
            expires: p
                .expires_ms
                .map_or_else(|| "never".into(), |e| when(Some(e))),
            expired: p.expires_ms.is_some_and(|e| e <= now),
            target_kind: p.target_kind,
            target: p.target,
            version: p.version,
            created_by: p.created_by,
        }
    }
}

fn target_words(kind: &str, target: &str) -> String {
    if kind == "all" {
        "every device".into()
    } else {
        format!("{kind} {target}")
    }
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct RolloutsPage {
    layout: Layout,
    app: String,
    rollouts: Vec<RolloutLine>,
    pushes: Vec<RuleLine>,
    pins: Vec<RuleLine>,
    versions: Vec<String>,
    message: Option<String>,
    start_action: String,
}

/// `GET /ui/rollouts`: the apps, each linking to its rollouts page.
pub async fn index(State(st): State<WebState>, s: Session) -> WebResult<Response> {
    super::apps_index(&st, &s, "Rollouts", "/ui/rollouts", "rollouts").await
}

/// The app's releases a rollout or a pin may name (not yanked), newest first.
async fn eligible_versions(st: &WebState, app: &str) -> WebResult<Vec<String>> {
    let mut rs = st.app.db.releases(app).await?;
    rs.sort_by(|a, b| b.version.cmp(&a.version));
    Ok(rs
        .into_iter()
        .filter(|r| r.yanked.is_none())
        .map(|r| r.version.to_string())
        .collect())
}

async fn rollouts_page(
    st: &WebState,
    s: &Session,
    app: &str,
    message: Option<(StatusCode, String)>,
) -> WebResult<Response> {
    check_id("app", app)?;
    if st.app.db.app(app).await?.is_none() {
        return Err(WebError::NotFound(format!("no app {app}")));
    }
    let rollouts = rollout::list(&st.app.db, Some(app))
        .await?
        .into_iter()
        .map(|v| RolloutLine {
            started: when(Some(v.rollout.created_ms)),
            max_rate_pct: format!("{}", v.rollout.max_failure_rate * 100.0),
            timeout_secs: v.rollout.timeout_ms / 1000,
            action: format!("/ui/apps/{app}/rollouts/{}", v.rollout.id),
            v,
        })
        .collect();
    let now = now_ms();
    let pushes = st.app.db.pushes(Some(app)).await?;
    let pins = st.app.db.pins(Some(app)).await?;
    let (status, message) = match message {
        Some((st, m)) => (st, Some(m)),
        None => (StatusCode::OK, None),
    };
    let page = RolloutsPage {
        layout: Layout::new(s, format!("Rollouts of {app}"), "/ui/rollouts"),
        app: app.to_string(),
        rollouts,
        pushes: pushes.into_iter().map(|p| RuleLine::push(p, now)).collect(),
        pins: pins.into_iter().map(RuleLine::pin).collect(),
        versions: eligible_versions(st, app).await?,
        message,
        start_action: format!("/ui/apps/{app}/rollouts"),
    };
    Ok((status, Html(page.render()?)).into_response())
}

/// `GET /ui/apps/{app}/rollouts`: every rollout of the app, newest first, with its forms.
pub async fn rollouts(
    State(st): State<WebState>,
    s: Session,
    Path(app): Path<String>,
) -> WebResult<Response> {
    rollouts_page(&st, &s, &app, None).await
}

/// After an action: back to the page (303), or the page with the refusal and its status.
async fn after<T>(
    st: &WebState,
    s: &Session,
    app: &str,
    r: Result<T, ApiError>,
) -> WebResult<Response> {
    match r {
        Ok(_) => Ok(Redirect::to(&format!("/ui/apps/{app}/rollouts")).into_response()),
        Err(e) if e.status().is_client_error() => {
            let msg = match &e {
                ApiError::Invalid(f) => format!("{}: {}", f.field, f.reason),
                other => other.to_string(),
            };
            rollouts_page(st, s, app, Some((e.status(), msg))).await
        }
        Err(e) => Err(e.into()),
    }
}

fn opt_field(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// An optional duration field such as `2h` or `30m` (empty: `None`), at most 64 characters.
fn duration_field(field: &str, v: &Option<String>) -> WebResult<Option<std::time::Duration>> {
    match opt_field(v) {
        None => Ok(None),
        Some(t) if t.len() <= 64 => humantime::parse_duration(t)
            .map(Some)
            .map_err(|e| WebError::bad(field, format!("{t:?}: {e} (e.g. 2h, 30m)"))),
        Some(_) => Err(WebError::bad(field, "at most 64 characters")),
    }
}

/// The "start a rollout" form.
#[derive(Debug, Deserialize)]
pub struct StartForm {
    version: String,
    percent: String,
    /// Halt above this failure rate, in percent (empty: the default).
    #[serde(default)]
    max_failure_pct: Option<String>,
    /// ... once this many devices finished (empty: the default).
    #[serde(default)]
    min_devices: Option<String>,
    /// Offer timeout, a humantime duration such as `2h` (empty: the default).
    #[serde(default)]
    timeout: Option<String>,
}

fn percent_of(field: &str, v: &str) -> WebResult<u32> {
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| WebError::bad(field, "must be a whole number within 0..=100"))
}

impl StartForm {
    fn request(&self, app: &str) -> WebResult<StartRollout> {
        let max_failure_rate = match opt_field(&self.max_failure_pct) {
            None => rollout::DEFAULT_MAX_FAILURE_RATE,
            Some(v) => {
                let p: f64 = v.parse().map_err(|_| {
                    WebError::bad("max_failure_pct", "must be a percentage such as 5 or 2.5")
                })?;
                if !p.is_finite() || !(0.0..=100.0).contains(&p) {
                    return Err(WebError::bad("max_failure_pct", "must be within 0..=100"));
                }
                p / 100.0
            }
        };
        let min_devices = match opt_field(&self.min_devices) {
            None => rollout::DEFAULT_MIN_DEVICES,
            Some(v) => v
                .parse()
                .map_err(|_| WebError::bad("min_devices", "must be a whole number"))?,
        };
        let timeout = duration_field("timeout", &self.timeout)?.unwrap_or(rollout::DEFAULT_TIMEOUT);
        Ok(StartRollout {
            app: app.to_string(),
            version: self.version.trim().to_string(),
            percent: percent_of("percent", &self.percent)?,
            max_failure_rate,
            min_devices,
            timeout,
            schedule: None,
            rate_cap: None,
        })
    }
}

/// `POST /ui/apps/{app}/rollouts`: starts a rollout ([`rollout::start`]).
pub async fn start(
    State(st): State<WebState>,
    Path(app): Path<String>,
    ActForm(s, f): ActForm<StartForm>,
) -> WebResult<Response> {
    check_id("app", &app)?;
    let req = match f.request(&app) {
        Ok(r) => r,
        Err(e) => {
            return rollouts_page(&st, &s, &app, Some((e.status(), e.to_string()))).await;
        }
    };
    let r = rollout::start(&st.app.db, &s.actor(), &req, now_ms()).await;
    after(&st, &s, &app, r).await
}

/// Checks that rollout `id` belongs to `app` (404 otherwise).
async fn of_app(st: &WebState, app: &str, id: &str) -> WebResult<()> {
    check_id("app", app)?;
    check_id("id", id)?;
    match st.app.db.rollout(id).await? {
        Some(r) if r.app == app => Ok(()),
        _ => Err(WebError::NotFound(format!("no rollout {id} of app {app}"))),
    }
}

/// The "set percent" form.
#[derive(Debug, Deserialize)]
pub struct PercentForm {
    percent: String,
}

/// `POST /ui/apps/{app}/rollouts/{id}/percent` ([`rollout::set_percent`]).
pub async fn set_percent(
    State(st): State<WebState>,
    Path((app, id)): Path<(String, String)>,
    ActForm(s, f): ActForm<PercentForm>,
) -> WebResult<Response> {
    of_app(&st, &app, &id).await?;
    let p = match percent_of("percent", &f.percent) {
        Ok(p) => p,
        Err(e) => {
            return rollouts_page(&st, &s, &app, Some((e.status(), e.to_string()))).await;
        }
    };
    let r = rollout::set_percent(&st.app.db, &s.actor(), &id, p, now_ms()).await;
    after(&st, &s, &app, r).await
}

/// The "halt" form.
#[derive(Debug, Deserialize)]
pub struct HaltForm {
    #[serde(default)]
    reason: String,
}

/// `POST /ui/apps/{app}/rollouts/{id}/halt` ([`rollout::halt`]).
pub async fn halt(
    State(st): State<WebState>,
    Path((app, id)): Path<(String, String)>,
    ActForm(s, f): ActForm<HaltForm>,
) -> WebResult<Response> {
    of_app(&st, &app, &id).await?;
    let reason = Some(f.reason.trim()).filter(|r| !r.is_empty());
    let r = rollout::halt(&st.app.db, &s.actor(), &id, reason, now_ms()).await;
    after(&st, &s, &app, r).await
}

/// `POST /ui/apps/{app}/rollouts/{id}/resume` ([`rollout::resume`]).
pub async fn resume(
    State(st): State<WebState>,
    Path((app, id)): Path<(String, String)>,
    ActForm(s, _): ActForm<Empty>,
) -> WebResult<Response> {
    of_app(&st, &app, &id).await?;
    let r = rollout::resume(&st.app.db, &s.actor(), &id, now_ms()).await;
    after(&st, &s, &app, r).await
}

/// `POST /ui/apps/{app}/rollouts/{id}/finish` ([`rollout::finish`]).
pub async fn finish(
    State(st): State<WebState>,
    Path((app, id)): Path<(String, String)>,
    ActForm(s, _): ActForm<Empty>,
) -> WebResult<Response> {
    of_app(&st, &app, &id).await?;
    let r = rollout::finish(&st.app.db, &s.actor(), &id, now_ms()).await;
    after(&st, &s, &app, r).await
}

/// The "push a release" form.
#[derive(Debug, Deserialize)]
pub struct PushForm {
    version: String,
    /// `device`, `tag` or `all`.
    target_kind: String,
    #[serde(default)]
    target: String,
    /// How long the push applies, e.g. `7d` (empty: until removed).
    #[serde(default)]
    expires_in: Option<String>,
}

/// `POST /ui/apps/{app}/pushes`: pushes a release ([`rollout::push`]).
pub async fn push(
    State(st): State<WebState>,
    Path(app): Path<String>,
    ActForm(s, f): ActForm<PushForm>,
) -> WebResult<Response> {
    check_id("app", &app)?;
    let expires = match duration_field("expires_in", &f.expires_in) {
        Ok(e) => e.map(|d| d.as_secs().max(1)),
        Err(e) => return rollouts_page(&st, &s, &app, Some((e.status(), e.to_string()))).await,
    };
    let r = async {
        let t = Target::from_kind(&f.target_kind, &f.target)?;
        let v = f.version.trim();
        rollout::push(&st.app.db, &s.actor(), &app, &t, v, expires, now_ms()).await
    }
    .await;
    after(&st, &s, &app, r).await
}

/// The "remove" button of a push, or the "unpin" button of a pin.
#[derive(Debug, Deserialize)]
pub struct TargetForm {
    target_kind: String,
    #[serde(default)]
    target: String,
    /// A push's version (pins have none).
    #[serde(default)]
    version: Option<String>,
}

/// `POST /ui/apps/{app}/pushes/remove`: removes a push ([`rollout::unpush`]).
pub async fn unpush(
    State(st): State<WebState>,
    Path(app): Path<String>,
    ActForm(s, f): ActForm<TargetForm>,
) -> WebResult<Response> {
    check_id("app", &app)?;
    let r = async {
        let t = Target::from_kind(&f.target_kind, &f.target)?;
        rollout::unpush(&st.app.db, &s.actor(), &app, &t, opt_field(&f.version)).await
    }
    .await;
    after(&st, &s, &app, r).await
}

/// `POST /ui/apps/{app}/pins/remove`: removes a device's or a tag's pin ([`rollout::unpin`]).
pub async fn unpin_target(
    State(st): State<WebState>,
    Path(app): Path<String>,
    ActForm(s, f): ActForm<TargetForm>,
) -> WebResult<Response> {
    check_id("app", &app)?;
    let r = async {
        let t = Target::from_kind(&f.target_kind, &f.target)?;
        rollout::unpin(&st.app.db, &s.actor(), &app, &t).await
    }
    .await;
    after(&st, &s, &app, r).await
}

/// The device page's pin form.
#[derive(Debug, Deserialize)]
pub struct PinForm {
    version: String,
}

async fn device_app(st: &WebState, id: &str) -> WebResult<String> {
    check_id("id", id)?;
    Ok(st
        .app
        .db
        .device(id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no device {id}")))?
        .app)
}

/// `POST /ui/devices/{id}/pin`: holds the device at a release ([`rollout::pin`]).
pub async fn pin(
    State(st): State<WebState>,
    Path(id): Path<String>,
    ActForm(s, f): ActForm<PinForm>,
) -> WebResult<Response> {
    let app = device_app(&st, &id).await?;
    rollout::pin(
        &st.app.db,
        &s.actor(),
        &app,
        &Target::Device(id.clone()),
        f.version.trim(),
        now_ms(),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/devices/{id}#pin")).into_response())
}

/// `POST /ui/devices/{id}/unpin`: removes the device's pin ([`rollout::unpin`]).
pub async fn unpin(
    State(st): State<WebState>,
    Path(id): Path<String>,
    ActForm(s, _): ActForm<Empty>,
) -> WebResult<Response> {
    let app = device_app(&st, &id).await?;
    rollout::unpin(&st.app.db, &s.actor(), &app, &Target::Device(id.clone())).await?;
    Ok(Redirect::to(&format!("/ui/devices/{id}#pin")).into_response())
}

/// The pin part of the device page.
#[derive(Debug, Clone, Default)]
pub struct PinInfo {
    /// The device's own pin: version, by whom, when.
    pub own: Option<(String, String, String)>,
    /// Pins of its tags: tag, version.
    pub tags: Vec<(String, String)>,
    /// Versions the pin form offers (not yanked, newest first).
    pub versions: Vec<String>,
    /// The pin form's action.
    pub pin_action: String,
    /// The unpin form's action.
    pub unpin_action: String,
}

/// What the device page shows about pins of device `id` of `app`.
pub async fn pin_info(st: &WebState, app: &str, id: &str) -> WebResult<PinInfo> {
    let mut info = PinInfo {
        versions: eligible_versions(st, app).await?,
        pin_action: format!("/ui/devices/{id}/pin"),
        unpin_action: format!("/ui/devices/{id}/unpin"),
        ..PinInfo::default()
    };
    for p in st.app.db.pins_for(app, id).await? {
        if p.target_kind == "device" {
            info.own = Some((p.version, p.created_by, when(Some(p.created_ms))));
        } else {
            info.tags.push((p.target, p.version));
        }
    }
    Ok(info)
}

/// One alert as the page shows it.
#[derive(Debug, Clone)]
pub struct AlertLine {
    /// The alert.
    pub a: AlertView,
    /// What the condition is called.
    pub title: &'static str,
    /// Link to its device or its app's rollouts, if any.
    pub link: Option<String>,
    /// One line per notification: event, destination, status, attempts, last error.
    pub deliveries: Vec<String>,
}

fn alert_line(a: AlertView) -> AlertLine {
    let link = match (&a.device, &a.rollout, &a.app) {
        (Some(d), _, _) => Some(format!("/ui/devices/{d}")),
        (None, Some(_), Some(app)) => Some(format!("/ui/apps/{app}/rollouts")),
        _ => None,
    };
    let deliveries = a
        .deliveries
        .iter()
        .map(|d| {
            let mut s = format!(
                "{} to {} {}: {} after {} attempt{}",
                d.event,
                d.kind,
                d.target,
                d.status,
                d.attempts,
                if d.attempts == 1 { "" } else { "s" }
            );
            if let Some(e) = &d.last_error {
                s.push_str(" (");
                s.push_str(e);
                s.push(')');
            }
            s
        })
        .collect();
    AlertLine {
        title: crate::alerts::title(&a.condition),
        link,
        deliveries,
        a,
    }
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    layout: Layout,
    open: Vec<AlertLine>,
    resolved: Vec<AlertLine>,
}

/// `GET /ui/alerts`: open alerts first, then the recently resolved, newest first, each with
/// the delivery state of its notifications ([`crate::alerts::list`]).
pub async fn alerts(State(st): State<WebState>, s: Session) -> WebResult<Response> {
    let db = &st.app.db;
    let open = crate::alerts::list(
        db,
        &AlertFilter {
            open_only: true,
            limit: ALERTS_SHOWN,
            ..AlertFilter::default()
        },
    )
    .await?;
    let resolved: Vec<AlertView> = crate::alerts::list(
        db,
        &AlertFilter {
            limit: ALERTS_SHOWN,
            ..AlertFilter::default()
        },
    )
    .await?
    .into_iter()
    .filter(|a| a.state != "open")
    .collect();
    render(&AlertsPage {
        layout: Layout::new(&s, "Alerts", "/ui/alerts"),
        open: open.into_iter().map(alert_line).collect(),
        resolved: resolved.into_iter().map(alert_line).collect(),
    })
}

/// How many alerts are open (counted up to [`ALERTS_SHOWN`]), for the overview.
pub async fn open_alerts(st: &WebState) -> WebResult<usize> {
    Ok(crate::alerts::list(
        &st.app.db,
        &AlertFilter {
            open_only: true,
            limit: ALERTS_SHOWN,
            ..AlertFilter::default()
        },
    )
    .await?
    .len())
}
