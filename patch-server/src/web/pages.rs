//! The read-only pages. Each handler loads, builds a view model of plain strings and numbers,
//! and renders its template; every value is escaped by askama.

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use formats::fleet::check_id;
use serde::Deserialize;

use super::auth::Session;
use super::error::{WebError, WebResult};
use super::release_view::{self, ReleaseDetail};
use super::store::{DeviceQuery, DeviceRow, SortKey, StatusFilter};
use super::table::{page_number, param, url_with, when, Paging, SortHeader};
use super::{render, Layout, WebState};

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    message: Option<String>,
}

/// The login page (a logged-in user goes to the overview).
pub async fn login_page(session: Option<Session>) -> WebResult<Response> {
    if session.is_some() {
        return Ok(Redirect::to("/ui").into_response());
    }
    render(&LoginPage { message: None })
}

/// The login page with a message and status (wrong password, throttled).
pub fn login_failed(status: StatusCode, message: &str) -> WebResult<Response> {
    let mut r = render(&LoginPage {
        message: Some(message.to_string()),
    })?;
    *r.status_mut() = status;
    Ok(r)
}

// ---- overview ----

/// One bar of the versions chart.
struct Bar {
    version: String,
    devices: i64,
    /// Width in percent of the widest bar.
    width: u32,
    /// y of the bar in the SVG.
    y: u32,
    link: String,
}

struct AppOverview {
    name: String,
    total: i64,
    failed: i64,
    silent: i64,
    updating: i64,
    pending: i64,
    bars: Vec<Bar>,
    chart_height: u32,
    link_failed: String,
    link_silent: String,
    link_updating: String,
    link_pending: String,
    link_all: String,
    link_releases: String,
    releases_error: Option<String>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    apps: Vec<AppOverview>,
    silent_after: u32,
    /// Open alerts (up to [`super::rollouts::ALERTS_SHOWN`]).
    open_alerts: usize,
}

/// Bar height and gap in the chart, in SVG units.
const BAR_STEP: u32 = 26;

/// `GET /ui`: per app, devices per version and the counts that need attention.
pub async fn overview(State(st): State<WebState>, s: Session) -> WebResult<Response> {
    let silence = st.silence();
    let mut apps = Vec::new();
    for app in st.app.db.apps().await? {
        let c = st.app.db.app_counts(&app.name, silence).await?;
        let mut versions = c.versions.clone();
        versions.sort_by(|a, b| {
            let pa = a.0.as_deref().and_then(|v| formats::Version::parse(v).ok());
            let pb = b.0.as_deref().and_then(|v| formats::Version::parse(v).ok());
            pb.cmp(&pa).then_with(|| b.0.cmp(&a.0))
        });
        let max = versions.iter().map(|v| v.1).max().unwrap_or(1).max(1);
        let bars: Vec<Bar> = versions
            .iter()
            .enumerate()
            .map(|(i, (v, n))| Bar {
                version: v.clone().unwrap_or_else(|| "none".into()),
                devices: *n,
                width: u32::try_from((n * 100 / max).clamp(1, 100)).unwrap_or(100),
                y: u32::try_from(i).unwrap_or(0).saturating_mul(BAR_STEP),
                link: url_with(
                    "/ui/devices",
                    &[
                        ("app", app.name.clone()),
                        ("version", v.clone().unwrap_or_default()),
                    ],
                ),
            })
            .collect();
        let status_link = |f: StatusFilter| {
            url_with(
                "/ui/devices",
                &[("app", app.name.clone()), ("status", f.as_str().into())],
            )
        };
        apps.push(AppOverview {
            total: c.total,
            failed: c.failed,
            silent: c.silent,
            updating: c.updating,
            pending: c.pending,
            chart_height: u32::try_from(bars.len())
                .unwrap_or(0)
                .saturating_mul(BAR_STEP),
            bars,
            link_failed: status_link(StatusFilter::Failed),
            link_silent: status_link(StatusFilter::Silent),
            link_updating: status_link(StatusFilter::Updating),
            link_pending: status_link(StatusFilter::Pending),
            link_all: url_with("/ui/devices", &[("app", app.name.clone())]),
            link_releases: format!("/ui/apps/{}/releases", app.name),
            releases_error: app.releases_error.clone(),
            name: app.name,
        });
    }
    render(&OverviewPage {
        layout: Layout::new(&s, "Overview", "/ui"),
        open_alerts: super::rollouts::open_alerts(&st).await?,
        apps,
        silent_after: st.opts.silent_after,
    })
}

// ---- devices ----

/// Query of `GET /ui/devices`. Every field is a string so that a bad value is a 400 naming
/// it, not a generic rejection.
#[derive(Debug, Default, Deserialize)]
pub struct DevicesQuery {
    app: Option<String>,
    version: Option<String>,
    channel: Option<String>,
    tag: Option<String>,
    status: Option<String>,
    q: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    page: Option<String>,
}

/// Rows per page of the devices table.
pub const DEVICES_PER_PAGE: u64 = 50;

struct DeviceLine {
    id: String,
    link: String,
    app: String,
    version: String,
    channel: String,
    hostname: String,
    last_seen: String,
    /// CSS classes of the row: `failed`, `silent` are red.
    class: String,
    flags: Vec<&'static str>,
}

fn device_line(d: DeviceRow) -> DeviceLine {
    let mut flags = Vec::new();
    if d.status == "pending" {
        flags.push("pending");
    }
    if d.failed {
        flags.push("failed");
    }
    if d.silent {
        flags.push("silent");
    }
    if d.updating_to.is_some() {
        flags.push("updating");
    }
    if flags.is_empty() {
        flags.push("ok");
    }
    DeviceLine {
        link: format!("/ui/devices/{}", d.id),
        class: flags.join(" "),
        version: match (&d.version, &d.updating_to) {
            (v, Some(to)) => format!("{} → {to}", v.as_deref().unwrap_or("none")),
            (v, None) => v.clone().unwrap_or_else(|| "none".into()),
        },
        channel: d.channel.unwrap_or_else(|| "stable".into()),
        hostname: d.hostname.unwrap_or_default(),
        last_seen: when(d.last_seen_ms),
        id: d.id,
        app: d.app,
        flags,
    }
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    layout: Layout,
    f_app: String,
    f_version: String,
    f_channel: String,
    f_tag: String,
    f_status: String,
    f_q: String,
    statuses: Vec<&'static str>,
    apps: Vec<String>,
    headers: Vec<SortHeader>,
    rows: Vec<DeviceLine>,
    paging: Paging,
}

/// `GET /ui/devices`: the filtered, sorted, paged devices table.
pub async fn devices(
    State(st): State<WebState>,
    s: Session,
    q: Result<Query<DevicesQuery>, axum::extract::rejection::QueryRejection>,
) -> WebResult<Response> {
    let Query(q) = q.map_err(|e| WebError::bad("query", e.body_text()))?;
    let app = param("app", &q.app)?;
    let version = param("version", &q.version)?;
    let channel = param("channel", &q.channel)?;
    let tag = param("tag", &q.tag)?;
    let text = param("q", &q.q)?;
    for (f, v) in [("app", &app), ("channel", &channel), ("tag", &tag)] {
        if let Some(v) = v {
            check_id(f, v)?;
        }
    }
    let status = match param("status", &q.status)? {
        None => None,
        Some(v) => Some(StatusFilter::parse(&v).ok_or_else(|| {
            WebError::bad("status", "must be ok, failed, silent, updating or pending")
        })?),
    };
    let sort = match param("sort", &q.sort)? {
        None => SortKey::Id,
        Some(v) => SortKey::parse(&v).ok_or_else(|| {
            WebError::bad(
                "sort",
                "must be id, app, version, channel, hostname or last_seen",
            )
        })?,
    };
    let desc = match param("dir", &q.dir)?.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(WebError::bad("dir", "must be asc or desc")),
    };
    let page = page_number(&q.page)?;
    let query = DeviceQuery {
        app: app.clone(),
        version: version.clone(),
        channel: channel.clone(),
        tag: tag.clone(),
        status,
        text: text.clone(),
        sort,
        desc,
        offset: Paging::offset(page, DEVICES_PER_PAGE),
        limit: i64::try_from(DEVICES_PER_PAGE).unwrap_or(50),
    };
    let (rows, total) = st.app.db.device_page(&query, st.silence()).await?;
    let filters: Vec<(&str, String)> = vec![
        ("app", app.clone().unwrap_or_default()),
        ("version", version.clone().unwrap_or_default()),
        ("channel", channel.clone().unwrap_or_default()),
        ("tag", tag.clone().unwrap_or_default()),
        (
            "status",
            status.map(|f| f.as_str().to_string()).unwrap_or_default(),
        ),
        ("q", text.clone().unwrap_or_default()),
    ];
    let headers = [
        ("Device", SortKey::Id),
        ("App", SortKey::App),
        ("Version", SortKey::Version),
        ("Channel", SortKey::Channel),
        ("Host", SortKey::Hostname),
        ("Last seen", SortKey::LastSeen),
    ]
    .into_iter()
    .map(|(label, k)| {
        SortHeader::new(
            "/ui/devices",
            &filters,
            label,
            k.as_str(),
            sort.as_str(),
            desc,
        )
    })
    .collect();
    let mut paging_params = filters.clone();
    if sort != SortKey::Id {
        paging_params.push(("sort", sort.as_str().into()));
    }
    if desc {
        paging_params.push(("dir", "desc".into()));
    }
    let apps = st
        .app
        .db
        .apps()
        .await?
        .into_iter()
        .map(|a| a.name)
        .collect();
    render(&DevicesPage {
        layout: Layout::new(&s, "Devices", "/ui/devices"),
        f_app: app.unwrap_or_default(),
        f_version: version.unwrap_or_default(),
        f_channel: channel.unwrap_or_default(),
        f_tag: tag.unwrap_or_default(),
        f_status: status.map(|f| f.as_str().to_string()).unwrap_or_default(),
        f_q: text.unwrap_or_default(),
        statuses: StatusFilter::ALL.iter().map(|f| f.as_str()).collect(),
        apps,
        headers,
        rows: rows.into_iter().map(device_line).collect(),
        paging: Paging::new("/ui/devices", &paging_params, page, DEVICES_PER_PAGE, total),
    })
}

// ---- one device ----

struct ResultLine {
    seq: i64,
    finished_at: String,
    from: String,
    to: String,
    method: String,
    bytes: i64,
    ok: bool,
    error: String,
}

struct CommandLine {
    id: String,
    kind: String,
    args: String,
    status: String,
    created: String,
    message: String,
    data: String,
}

struct UploadLine {
    link: String,
    name: String,
    size: i64,
    blake3: String,
    created: String,
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    layout: Layout,
    id: String,
    class: String,
    facts: Vec<(&'static str, String)>,
    attrs: Vec<(String, String)>,
    tags: Vec<String>,
    state: Option<String>,
    state_at: String,
    checkins: Vec<(String, String, String)>,
    days: Vec<(String, i64, String)>,
    results: Vec<ResultLine>,
    commands: Vec<CommandLine>,
    uploads: Vec<UploadLine>,
    kinds: Vec<&'static str>,
    action: String,
    pin: super::rollouts::PinInfo,
}

fn js(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `GET /ui/devices/{id}`: attributes, tags, state document, history, results, commands,
/// uploads, and (for an admin) the form that queues a command.
pub async fn device(
    State(st): State<WebState>,
    s: Session,
    Path(id): Path<String>,
) -> WebResult<Response> {
    check_id("id", &id)?;
    let db = &st.app.db;
    let d = db
        .device(&id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no device {id}")))?;
    // The table's row for the flags (failed, silent, updating).
    let row = db
        .device_page(
            &DeviceQuery {
                app: Some(d.app.clone()),
                version: None,
                channel: None,
                tag: None,
                status: None,
                text: Some(id.clone()),
                sort: SortKey::Id,
                desc: false,
                offset: 0,
                limit: 500,
            },
            st.silence(),
        )
        .await?
        .0
        .into_iter()
        .find(|r| r.id == id);
    let class = row.map(|r| device_line(r).class).unwrap_or_default();
    let (state, state_ms) = db.device_state(&id).await?;
    let facts = vec![
        ("App", d.app.clone()),
        ("Status", d.status.clone()),
        (
            "Version",
            d.version.clone().unwrap_or_else(|| "none".into()),
        ),
        ("Tree digest", d.tree_digest.clone().unwrap_or_default()),
        (
            "Channel",
            d.channel.clone().unwrap_or_else(|| "stable".into()),
        ),
        ("Host", d.hostname.clone().unwrap_or_default()),
        ("OS", d.os.clone().unwrap_or_default()),
        ("Architecture", d.arch.clone().unwrap_or_default()),
        ("Agent", d.agent_version.clone().unwrap_or_default()),
        (
            "Free disk",
            d.free_disk
                .map(|b| format!("{b} bytes"))
                .unwrap_or_default(),
        ),
        ("Last seen", when(d.last_seen_ms)),
        ("Check-ins", d.checkins.to_string()),
    ];
    let results = db
        .update_results(&id, 50)
        .await?
        .iter()
        .map(|r| ResultLine {
            seq: r["seq"].as_i64().unwrap_or(0),
            finished_at: js(r, "finished_at"),
            from: js(r, "from"),
            to: js(r, "to"),
            method: js(r, "method"),
            bytes: r["bytes"].as_i64().unwrap_or(0),
            ok: r["ok"].as_bool().unwrap_or(false),
            error: [js(r, "error_kind"), js(r, "error_message")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": "),
        })
        .collect();
    let commands = db
        .device_commands(&id, 50)
        .await?
        .into_iter()
        .map(|c| CommandLine {
            id: c.id,
            kind: c.kind,
            args: if c.args == serde_json::json!({}) {
                String::new()
            } else {
                c.args.to_string()
            },
            status: c.status,
            created: when(Some(c.created_ms)),
            message: c.message.unwrap_or_default(),
            data: c
                .data
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
                .unwrap_or_default(),
        })
        .collect();
    let uploads = db
        .uploads(Some(&id), 100)
        .await?
        .into_iter()
        .map(|u| UploadLine {
            link: format!("/ui/uploads/{}", u.id),
            name: u.name,
            size: u.size,
            blake3: u.blake3,
            created: when(Some(u.created_ms)),
        })
        .collect();
    render(&DevicePage {
        layout: Layout::new(&s, format!("Device {id}"), "/ui/devices"),
        class,
        facts,
        attrs: d.attrs.clone().into_iter().collect(),
        tags: d.tags.clone(),
        state: state.map(|v| serde_json::to_string_pretty(&v).unwrap_or_default()),
        state_at: when(state_ms),
        checkins: db
            .checkin_history(&id, 50)
            .await?
            .into_iter()
            .map(|(at, v, c)| (when(Some(at)), v.unwrap_or_default(), c.unwrap_or_default()))
            .collect(),
        days: db
            .checkin_days(&id, 60)
            .await?
            .into_iter()
            .map(|(day, n, v)| {
                (
                    crate::util::rfc3339(day.saturating_mul(86_400_000))
                        .chars()
                        .take(10)
                        .collect(),
                    n,
                    v.unwrap_or_default(),
                )
            })
            .collect(),
        results,
        commands,
        uploads,
        kinds: vec![
            "report-state",
            "upload-logs",
            "update-now",
            "restart-app",
            "set-interval",
        ],
        action: format!("/ui/devices/{id}/commands"),
        pin: super::rollouts::pin_info(&st, &d.app, &id).await?,
        id,
    })
}

/// `GET /ui/uploads/{id}`: the uploaded bytes as a download (`Content-Disposition:
/// attachment`, `application/octet-stream`, a file name of safe characters only), never
/// rendered by the browser.
pub async fn upload(
    State(st): State<WebState>,
    _s: Session,
    Path(id): Path<String>,
) -> WebResult<Response> {
    check_id("id", &id)?;
    let row = st
        .app
        .db
        .upload(&id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no upload {id}")))?;
    let path = st.app.uploads_dir().join(&row.id);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| WebError::Internal(format!("upload {id}: {e}")))?;
    let safe: String = row
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let safe = if safe.trim_matches('.').is_empty() {
        format!("upload-{id}")
    } else {
        safe
    };
    let mut resp = (
        StatusCode::OK,
        Body::from_stream(crate::api::admin::tokio_util_free_stream(file)),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(row.size));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

// ---- releases ----

/// `GET /ui/releases`: the apps, each linking to its releases page.
pub async fn releases_index(State(st): State<WebState>, s: Session) -> WebResult<Response> {
    super::apps_index(&st, &s, "Releases", "/ui/releases", "releases").await
}

struct ReleaseLine {
    d: ReleaseDetail,
    devices: i64,
    devices_link: String,
}

#[derive(Template)]
#[template(path = "releases.html")]
struct ReleasesPage {
    layout: Layout,
    app: String,
    repo: String,
    refreshed: String,
    error: Option<String>,
    releases: Vec<ReleaseLine>,
}

/// `GET /ui/apps/{app}/releases`: what the app's verified repository offers, newest first.
pub async fn releases(
    State(st): State<WebState>,
    s: Session,
    Path(app): Path<String>,
) -> WebResult<Response> {
    check_id("app", &app)?;
    let a = st
        .app
        .db
        .app(&app)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no app {app}")))?;
    let key = crate::releases::parse_key(a.public_key.as_bytes()).map_err(WebError::Internal)?;
    let dir = crate::releases::trust_dir(&st.app.settings.data, &app);
    let repo = a.repo.clone();
    let described = tokio::task::spawn_blocking(move || release_view::describe(&repo, &key, &dir))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let counts: std::collections::BTreeMap<String, i64> = st
        .app
        .db
        .versions_of(&app)
        .await?
        .into_iter()
        .filter_map(|(v, n)| Some((v?, n)))
        .collect();
    let (details, error) = match described {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let releases = details
        .into_iter()
        .map(|d| ReleaseLine {
            devices: counts.get(&d.version).copied().unwrap_or(0),
            devices_link: url_with(
                "/ui/devices",
                &[("app", app.clone()), ("version", d.version.clone())],
            ),
            d,
        })
        .collect();
    render(&ReleasesPage {
        layout: Layout::new(&s, format!("Releases of {app}"), "/ui/releases"),
        repo: a.repo,
        refreshed: when(a.releases_refreshed_ms),
        error: error.or(a.releases_error),
        releases,
        app,
    })
}

// ---- audit log ----

struct AuditLine {
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    rows: Vec<AuditLine>,
    paging: Paging,
}

/// Query of `GET /ui/audit`.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    page: Option<String>,
}

/// Rows per page of the audit log.
pub const AUDIT_PER_PAGE: u64 = 100;

/// `GET /ui/audit`: who did what, when, newest first.
pub async fn audit(
    State(st): State<WebState>,
    s: Session,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> WebResult<Response> {
    let Query(q) = q.map_err(|e| WebError::bad("query", e.body_text()))?;
    let page = page_number(&q.page)?;
    let (rows, total) = st
        .app
        .db
        .audit_page(
            Paging::offset(page, AUDIT_PER_PAGE),
            i64::try_from(AUDIT_PER_PAGE).unwrap_or(100),
        )
        .await?;
    render(&AuditPage {
        layout: Layout::new(&s, "Audit log", "/ui/audit"),
        rows: rows
            .into_iter()
            .map(|r| AuditLine {
                at: when(Some(r.at_ms)),
                actor: r.actor,
                action: r.action,
                target: r.target.unwrap_or_default(),
                detail: r.detail.unwrap_or_default(),
            })
            .collect(),
        paging: Paging::new("/ui/audit", &[], page, AUDIT_PER_PAGE, total),
    })
}
