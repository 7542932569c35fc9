//! The routes and the bounds every request passes through, declared in one place: a global
//! concurrency limit that sheds load (503 with `Retry-After`) instead of queueing, a time
//! limit per request (408: a client that sends its headers and then trickles or stops cannot
//! hold a concurrency slot; streamed uploads instead get a limit per read, see
//! `device::upload`), and the body bounds of each handler (`common::read_doc`, the upload cap).

use axum::error_handling::HandleErrorLayer;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{BoxError, Json, Router};
use formats::fleet::ErrorBody;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;

use super::common::AppState;
use super::{admin, crash_files, device};
use crate::error::RETRY_AFTER_SECS;

async fn overloaded(e: BoxError) -> Response {
    let (status, msg) = if e.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy, try again later".to_string(),
        )
    } else if e.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::REQUEST_TIMEOUT,
            "request not received and answered within the server's request timeout".to_string(),
        )
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    };
    let mut resp = (
        status,
        Json(ErrorBody {
            error: msg,
            field: None,
        }),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    resp
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: "no such endpoint".into(),
            field: None,
        }),
    )
        .into_response()
}

/// The whole API, with at most `max_concurrent` requests in progress; one more is answered
/// 503 at once. Every request but an upload must be read and answered within
/// `Settings::request_timeout` (else 408), or `Settings::repo_timeout` for the routes that
/// read an app's repository.
pub fn router(state: AppState, max_concurrent: usize) -> Router {
    router_with(state, max_concurrent, Router::new(), Router::new())
}

/// [`router`] plus the routes of `extra` and `extra_repo` (the dashboard's, from
/// `crate::web::router`, merged by `server`), under the same bounds: `extra_repo` are the
/// routes that read an app's repository.
pub fn router_with(
    state: AppState,
    max_concurrent: usize,
    extra: Router<AppState>,
    extra_repo: Router<AppState>,
) -> Router {
    let request_timeout = state.settings.request_timeout;
    let repo_timeout = state.settings.repo_timeout;
    let bounded = |t| {
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .layer(TimeoutLayer::new(t))
    };
    // The routes that read an app's (possibly remote and slow) repository, under their own
    // limit: with the 30 s default of the others, `app add` of a far repository would get 408.
    let reads_repo = Router::new()
        .merge(extra_repo)
        .route("/v1/admin/apps", post(admin::add_app))
        .route("/v1/admin/apps/{name}/refresh", post(admin::refresh_app))
        .layer(bounded(repo_timeout));
    Router::new()
        .merge(extra)
        .route("/v1/enroll", post(device::enroll))
        .route("/v1/checkin", post(device::checkin))
        .route("/v1/commands/{id}/result", post(device::command_result))
        .route("/v1/admin/apps", get(admin::list_apps))
        .route("/v1/admin/devices", get(admin::list_devices))
        .route("/v1/admin/devices/{id}", get(admin::show_device))
        .route("/v1/admin/devices/{id}/approve", post(admin::approve))
        .route("/v1/admin/devices/{id}/tags", post(admin::tags))
        .route("/v1/admin/commands", post(admin::queue_command))
        .route("/v1/admin/uploads", get(admin::list_uploads))
        .route("/v1/admin/uploads/{id}", get(admin::get_upload))
        .route("/v1/admin/tokens", post(admin::create_token))
        .route(
            "/v1/admin/rollouts",
            post(admin::start_rollout).get(admin::list_rollouts),
        )
        .route("/v1/admin/rollouts/{id}", get(admin::show_rollout))
        .route(
            "/v1/admin/rollouts/{id}/percent",
            post(admin::set_rollout_percent),
        )
        .route("/v1/admin/rollouts/{id}/halt", post(admin::halt_rollout))
        .route(
            "/v1/admin/rollouts/{id}/resume",
            post(admin::resume_rollout),
        )
        .route(
            "/v1/admin/rollouts/{id}/finish",
            post(admin::finish_rollout),
        )
        .route("/v1/admin/pins", post(admin::set_pin).get(admin::list_pins))
        .route("/v1/admin/pins/remove", post(admin::remove_pin))
        .route("/v1/admin/pushes/remove", post(admin::remove_pushes))
        .route(
            "/v1/admin/pushes",
            post(admin::create_push).get(admin::list_pushes),
        )
        .route("/v1/admin/alerts", get(admin::list_alerts))
        .route(
            "/v1/admin/alert-destinations",
            get(admin::list_destinations).post(admin::add_destination),
        )
        .route(
            "/v1/admin/alert-destinations/{id}",
            delete(admin::remove_destination),
        )
        // Only the routes above get the whole-request limit (a layer applies to the routes
        // already added): an upload may take long on a slow link, it is bounded per read.
        .layer(bounded(request_timeout))
        .merge(reads_repo)
        .route("/v1/uploads", put(crash_files::upload_any))
        .fallback(not_found)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::new(max_concurrent.max(1))),
        )
        .with_state(state)
}
