//! `patch-create serve`: a small static file server for a repository directory, for local
//! testing and demos, on axum with tower-http's `ServeDir`. `ServeDir` answers `GET` and
//! `HEAD` with `Content-Length`, single `Range` requests with `206` (or `416` when
//! unsatisfiable) and `If-Modified-Since` with `304`; hyper adds `Date`. A middleware in front
//! of it (`guard`) adds what `ServeDir` lacks:
//!
//! - refusing (`404`) any path that could leave the repository (`..`, backslashes, NUL, and
//!   symlinks pointing outside: `ServeDir` follows symlinks, [`resolve`] checks the real path);
//! - a strong `ETag` ([`entity_tag`]) and `If-None-Match` → `304` (whole-second
//!   `If-Modified-Since` alone would call a `timestamp.json` rewritten within the same second
//!   unchanged; when `If-None-Match` is present, `If-Modified-Since` is ignored, RFC 9110
//!   §13.1.3);
//! - the `Cache-Control` of docs/format.md §9 per path ([`cache_control`]), `no-cache` on 404s;
//! - a `Range` header that is not one usable range (several ranges, malformed) is ignored and
//!   the whole file served, as RFC 9110 allows (`ServeDir` would say `416`);
//! - at most [`MAX_CONNECTIONS`] requests in progress, *including the sending of the body*
//!   (a slot is held by the response body until it is dropped), `503` with `Retry-After: 1`
//!   beyond; tower's concurrency limit would free the slot when the headers are ready;
//! - one [`RequestLog`] per request, given when the body is finished or dropped, with the body
//!   bytes actually sent.
//!
//! The symlink check and the serving are two steps: a symlink swapped in between is followed.
//! It is no production server: put the repository on a static host or CDN for that.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::services::ServeDir;

use crate::error::{Error, IoContext, Result};

/// Requests served at once (until their body is sent); more are answered `503`.
pub const MAX_CONNECTIONS: usize = 64;

/// A bound server, not yet accepting.
pub struct Server {
    listener: TcpListener,
    root: PathBuf,
}

/// One served request, for the log.
#[derive(Clone, Debug)]
pub struct RequestLog {
    /// Client address.
    pub peer: String,
    /// `GET` or `HEAD` (or what the client sent).
    pub method: String,
    /// The path as requested.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Status sent.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
}

/// The request log callback.
type LogFn = dyn Fn(&RequestLog) + Send + Sync;

/// What every request's middleware shares.
struct Shared {
    root: PathBuf,
    slots: Arc<Semaphore>,
    log: Box<LogFn>,
}

impl Server {
    /// Binds `addr` (e.g. `127.0.0.1:8080`, or port 0 for any free port) to serve `root`.
    pub fn bind(root: &Path, addr: &str) -> Result<Server> {
        let meta = std::fs::metadata(root).at(root)?;
        if !meta.is_dir() {
            return Err(Error::Repo {
                path: root.to_path_buf(),
                reason: "is not a directory".into(),
            });
        }
        let root = root.canonicalize().at(root)?;
        let listener = TcpListener::bind(addr).map_err(|e| Error::Repo {
            path: root.clone(),
            reason: format!("cannot listen on {addr}: {e}"),
        })?;
        Ok(Server { listener, root })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io(&self.root, e))
    }

    /// Serves until the process ends (on a tokio runtime of its own); `log` receives one entry
    /// per request.
    pub fn run(self, log: impl Fn(&RequestLog) + Send + Sync + 'static) -> Result<()> {
        let root = self.root;
        let io = |e: std::io::Error| Error::io(&root, e);
        self.listener.set_nonblocking(true).map_err(io)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io)?;
        let app = router(Shared {
            root: root.clone(),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            log: Box::new(log),
        });
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::from_std(self.listener).map_err(io)?;
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .map_err(io)
        })
    }
}

/// The files of the repository behind [`guard`].
fn router(shared: Shared) -> Router {
    let files = ServeDir::new(&shared.root).append_index_html_on_directories(false);
    Router::new()
        .fallback_service(files)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(shared),
            guard,
        ))
}

/// An empty answer with `status` and `headers`.
fn empty(status: StatusCode, headers: &[(header::HeaderName, String)]) -> Response {
    let mut resp = status.into_response();
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            resp.headers_mut().insert(k.clone(), v);
        }
    }
    resp
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Takes a slot (or answers `503`), checks the path, answers `If-None-Match`, hands the rest to
/// `ServeDir`, sets the headers it lacks, and logs the request when its body is done.
async fn guard(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
        return empty(
            StatusCode::SERVICE_UNAVAILABLE,
            &[(header::RETRY_AFTER, "1".into())],
        );
    };
    let entry = RequestLog {
        peer: peer.to_string(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        range: header_str(req.headers(), header::RANGE),
        status: 0,
        bytes: 0,
    };
    let resp = answer(&shared.root, req, next).await;
    let (parts, body) = resp.into_parts();
    let mut entry = entry;
    entry.status = parts.status.as_u16();
    let body = Tracked {
        inner: body,
        sent: 0,
        entry: Some(entry),
        shared: shared.clone(),
        _slot: slot,
    };
    Response::from_parts(parts, Body::new(body))
}

/// The answer to one request.
async fn answer(root: &Path, mut req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return empty(
            StatusCode::METHOD_NOT_ALLOWED,
            &[(header::ALLOW, "GET, HEAD".into())],
        );
    }
    // A file that is not there yet may appear at any moment (a new root, a release being
    // published): a cache must not remember its absence.
    let not_found = || {
        empty(
            StatusCode::NOT_FOUND,
            &[(header::CACHE_CONTROL, "no-cache".into())],
        )
    };
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let Some(path) = resolve(root, &target) else {
        return not_found();
    };
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => m,
        _ => return not_found(),
    };
    let etag = entity_tag(&meta);
    let cache = cache_control(req.uri().path());
    let mut validators = vec![
        (header::CACHE_CONTROL, cache.to_string()),
        (header::ETAG, etag.clone()),
    ];
    if let Ok(m) = meta.modified() {
        validators.push((header::LAST_MODIFIED, httpdate::fmt_http_date(m)));
    }
    let headers = req.headers_mut();
    if let Some(inm) = header_str(headers, header::IF_NONE_MATCH) {
        headers.remove(header::IF_MODIFIED_SINCE);
        if not_modified(Some(&inm), None, &etag, None) {
            return empty(StatusCode::NOT_MODIFIED, &validators);
        }
    }
    if parse_range(header_str(headers, header::RANGE).as_deref(), meta.len()) == Ok(None) {
        headers.remove(header::RANGE);
    }
    let mut resp = next.run(req).await;
    match resp.status() {
        StatusCode::NOT_FOUND => return not_found(),
        StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED => {}
        _ => return resp,
    }
    let whole_or_part = resp.status() != StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    for (k, v) in validators {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    if whole_or_part {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(&path)),
        );
    }
    resp
}

/// A response body that counts the bytes sent, holds its request's slot, and logs the request
/// when it is dropped (sent in full, or the client went away).
struct Tracked {
    inner: Body,
    sent: u64,
    entry: Option<RequestLog>,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(data) = f.data_ref() {
                this.sent += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            entry.bytes = self.sent;
            (self.shared.log)(&entry);
        }
    }
}

/// The `Cache-Control` for a repository path (docs/format.md §9): versioned metadata
/// (`metadata/N.NAME.json`), targets (hash-prefixed) and blobs (named by their content) never
/// change, so caches may keep them for a year without asking again; everything else
/// (`timestamp.json`, `root.json`, files that are not there yet) must be revalidated.
pub fn cache_control(path: &str) -> &'static str {
    formats::layout::cache_control(path)
}

/// The strong entity tag of a file: its size, modification time (nanoseconds) and inode
/// number. The repository is changed only by writing new files and renaming them into place,
/// so a file with other content always has another inode or time.
pub fn entity_tag(m: &std::fs::Metadata) -> String {
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(m);
    #[cfg(not(unix))]
    let ino = 0u64;
    format!("\"{:x}-{mtime:x}-{ino:x}\"", m.len())
}

/// Whether a conditional `GET`/`HEAD` may be answered `304 Not Modified` (RFC 9110 §13.2.2):
/// `If-None-Match` decides when present (weak comparison, `*` matches any file); otherwise
/// `If-Modified-Since` when the file was not modified after that date (whole seconds).
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: &str,
    modified: Option<std::time::SystemTime>,
) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
    if let Some(list) = if_none_match {
        return list
            .split(',')
            .any(|t| t.trim() == "*" || opaque(t) == opaque(etag));
    }
    let (Some(since), Some(modified)) = (
        if_modified_since.and_then(|d| httpdate::parse_http_date(d).ok()),
        modified,
    ) else {
        return false;
    };
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    secs(modified) <= secs(since)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file a request target names below `root`, refusing anything that could leave it.
pub fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let path = percent_decode(path)?;
    let rel = path.strip_prefix('/')?;
    let mut out = root.to_path_buf();
    for c in rel.split('/') {
        if c.is_empty() || c == "." || c == ".." || c.contains('\\') || c.contains('\0') {
            return None;
        }
        out.push(c);
    }
    // Symlinks must not lead out of the repository.
    let real = out.canonicalize().ok()?;
    real.starts_with(root).then_some(real)
}

/// A single byte range of a file of `len` bytes: `Ok(None)` to serve the whole file (no or
/// unusable header), `Err(())` when unsatisfiable.
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: Option<&str>, len: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole file is a valid answer
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(());
        }
        return Ok(Some((len - n.min(len), len - 1)));
    }
    let Ok(start) = a.parse::<u64>() else {
        return Ok(None);
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return Ok(None),
        }
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=2-"), 10), Ok(Some((2, 9))));
        assert_eq!(parse_range(Some("bytes=2-4"), 10), Ok(Some((2, 4))));
        assert_eq!(parse_range(Some("bytes=2-40"), 10), Ok(Some((2, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=1-2"), 10), Ok(None));
    }

    #[test]
    fn cache_control_by_path() {
        let immutable = "public, max-age=31536000, immutable";
        for (path, want) in [
            ("/metadata/timestamp.json", "no-cache"),
            ("/metadata/root.json", "no-cache"),
            ("/metadata/2.root.json", immutable),
            ("/metadata/12.snapshot.json", immutable),
            ("/metadata/3.targets.json", immutable),
            ("/metadata/4.bins-0f.json", immutable),
            ("/metadata/x.targets.json", "no-cache"),
            ("/metadata/.json", "no-cache"),
            ("/targets/1.0.0/ab.manifest.json", immutable),
            ("/blobs/ab/abcd.zst", immutable),
            ("/other.txt", "no-cache"),
            ("/", "no-cache"),
        ] {
            assert_eq!(cache_control(path), want, "{path}");
        }
    }

    #[test]
    fn conditional_requests() {
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |secs: u64| httpdate::fmt_http_date(t0 + Duration::from_secs(secs));
        let etag = "\"a-b-c\"";
        let cases: &[(Option<&str>, Option<String>, bool)] = &[
            (None, None, false),
            (Some("\"a-b-c\""), None, true),
            (Some("W/\"a-b-c\""), None, true),
            (Some("\"x\", \"a-b-c\""), None, true),
            (Some("*"), None, true),
            (Some("\"other\""), None, false),
            // If-None-Match decides when present, whatever the date says.
            (Some("\"other\""), Some(at(10)), false),
            (None, Some(at(0)), true),
            (None, Some(at(10)), true),
            (None, Some(at(0).replace("2023", "2022")), false),
            (None, Some("yesterday".into()), false),
        ];
        for (inm, ims, want) in cases {
            let got = not_modified(*inm, ims.as_deref(), etag, Some(t0));
            assert_eq!(got, *want, "{inm:?} {ims:?}");
        }
        assert!(!not_modified(None, Some(&at(0)), etag, None));
    }

    #[test]
    fn paths_cannot_leave_the_root() {
        let d = tempfile::tempdir().expect("test setup");
        let root = d.path().canonicalize().expect("test setup");
        std::fs::create_dir_all(root.join("metadata")).expect("test setup");
        std::fs::write(root.join("metadata/1.root.json"), b"{}").expect("test setup");
        assert_eq!(
            resolve(&root, "/metadata/1.root.json?x=1"),
            Some(root.join("metadata/1.root.json"))
        );
        assert_eq!(
            resolve(&root, "/metadata/%31.root.json"),
            Some(root.join("metadata/1.root.json"))
        );
        for bad in [
            "/../etc/passwd",
            "/metadata/../../x",
            "/%2e%2e/x",
            "metadata/1.root.json",
            "/a\\b",
            "/%00",
        ] {
            assert_eq!(resolve(&root, bad), None, "{bad}");
        }
    }
}
