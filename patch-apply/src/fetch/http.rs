//! The HTTP(S) transport: downloads from static hosts and CDNs over flaky networks.
//!
//! - **Resume**: a download continues the `.part` file it finds with a `Range` request; the
//!   bytes already on disk are hashed first (see [`PartialFile`]), so a download interrupted by
//!   a dropped connection or a killed process costs only the missing bytes. A server that
//!   answers `200` to a range request gets the file over from the first byte.
//! - **Bounded retries** with exponential backoff and jitter (honouring a short `Retry-After`)
//!   for connection errors, timeouts, truncated bodies, `408`, `429` and `5xx` answers, and
//!   `200` answers that are an HTML page (captive portals, "quota exceeded" and CDN error pages
//!   are usually gone a moment later); other failures (`404`, a length or hash that is not the
//!   signed one) move on to the next mirror at once. Every retry is reported as an
//!   [`Event::Retry`] to [`HttpOptions::events`] (the updater's event receiver), and every
//!   answer as an [`Event::Request`].
//! - **Slow retrieval**: a connect timeout, a read timeout (no byte for that long) and a
//!   minimum average speed over a window, so a stalled or trickling server cannot hang the
//!   updater; see [`HttpOptions`].
//! - **Endless data**: never more than the signed size is read ([`formats::hash::StreamCheck`]
//!   refuses the first extra byte) and a declared `Content-Length` other than the signed size
//!   is refused before the body is read.
//!
//! Every error names the URL at fault.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, CACHE_CONTROL, CONTENT_RANGE, CONTENT_TYPE, DATE, ETAG, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, RANGE, RETRY_AFTER,
};

use crate::cancel::Cancel;
use crate::error::{Error, IoContext, Result};
use crate::events::{Event, EventHook};
use crate::transport::{
    Conditional, Expected, PartialFile, Transport, Validators, DEFAULT_PARALLEL,
};

/// Network settings: timeouts, retries, and how many downloads run at once.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpOptions {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the answer's headers or for the next bytes of a body.
    pub read_timeout: Duration,
    /// Slowest acceptable average speed in bytes per second, measured over
    /// [`HttpOptions::min_speed_window`]; 0 turns the rule off.
    pub min_speed: u64,
    /// The window over which [`HttpOptions::min_speed`] is measured.
    pub min_speed_window: Duration,
    /// Further attempts after a failed one, per file and mirror.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one (with jitter).
    pub backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Downloads that run at once.
    pub parallel: usize,
    /// Where retries and requests are reported ([`Event::Retry`], [`Event::Request`]); without a
    /// receiver they go to `tracing`. [`crate::Updater::new`] sets its own receiver here.
    pub events: EventHook,
    /// Checked between chunks of every download: once cancelled, the download stops with
    /// [`Error::Cancelled`], keeping its `.part` file for a later resume.
    /// [`crate::Updater::new`] sets the updater's token ([`crate::Config::cancel`]) here.
    pub cancel: Cancel,
}

impl Default for HttpOptions {
    /// 15 s to connect, 30 s without a byte, at least 1 KiB/s over 30 s, 4 retries starting
    /// at 500 ms (at most 10 s apart), 4 parallel downloads.
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            min_speed: 1024,
            min_speed_window: Duration::from_secs(30),
            retries: 4,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            parallel: DEFAULT_PARALLEL,
            events: EventHook::default(),
            cancel: Cancel::default(),
        }
    }
}

impl HttpOptions {
    /// The wait before attempt number `attempt` (1 for the first retry): exponential, capped,
    /// with "equal jitter" (half fixed, half random) so clients do not retry in lockstep. A
    /// server's `Retry-After` is followed when it is not longer than the cap.
    pub fn backoff_for(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            if ra <= self.max_backoff {
                return ra;
            }
        }
        let exp = formats::retry::exponential(attempt, self.backoff, self.max_backoff);
        formats::retry::equal_jitter(exp, formats::retry::random_unit())
    }
}

/// A repository served over HTTP(S).
pub struct HttpTransport {
    base: String,
    client: Client,
    opts: HttpOptions,
}

/// Opens an HTTP(S) repository with default options.
pub fn open(url: &str) -> Result<Box<dyn Transport>> {
    open_with(url, &HttpOptions::default())
}

/// Opens an HTTP(S) repository.
pub fn open_with(url: &str, opts: &HttpOptions) -> Result<Box<dyn Transport>> {
    Ok(Box::new(HttpTransport::new(url, opts.clone())?))
}

/// How one attempt failed.
enum Failure {
    /// Worth another attempt on the same mirror (after a pause, at least this long if given).
    Retry(Error, Option<Duration>),
    /// This mirror cannot serve the file: move on.
    Fatal(Error),
}

fn fetch_err(url: &str, reason: impl Into<String>) -> Error {
    Error::Fetch {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// Text of a reqwest error with its causes (reqwest's own `Display` omits them).
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s
}

/// Percent-encodes what is not safe in a URL path (target names are plain components, but
/// versions may hold `+`).
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/+".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn is_html(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"))
        .unwrap_or(false)
}

/// Parses `Content-Range: bytes START-END/TOTAL` into `(START, TOTAL)` (`TOTAL` `None` for `*`).
fn content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total.trim() == "*" {
        None
    } else {
        Some(total.trim().parse().ok()?)
    };
    Some((start.trim().parse().ok()?, total))
}

/// The validators of an answer from `url`: its `ETag`, and its `Last-Modified` only when it is
/// at least one second before the answer's `Date` (RFC 9110 §8.8.2.2: otherwise the file may
/// have changed again within that second, and a date could not tell the two copies apart).
fn validators_of(url: &str, h: &HeaderMap) -> Option<Validators> {
    let text = |name| {
        h.get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
    };
    let last_modified = text(LAST_MODIFIED).filter(|lm| {
        let date = text(DATE).and_then(|d| httpdate::parse_http_date(d).ok());
        let modified = httpdate::parse_http_date(lm).ok();
        match (date, modified) {
            (Some(d), Some(m)) => d.duration_since(m).is_ok_and(|gap| gap.as_secs() >= 1),
            _ => false,
        }
    });
    Validators::new(url, text(ETAG), last_modified)
}

/// Statuses worth a retry: the server may answer differently soon.
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500..=599)
}

/// Checks a response's status and headers common to both kinds of request.
fn check_status(url: &str, resp: &Response) -> std::result::Result<(), Failure> {
    let status = resp.status().as_u16();
    if status == 404 || status == 410 {
        return Err(Failure::Fatal(Error::NotFound {
            url: url.to_string(),
        }));
    }
    if retryable(status) {
        return Err(Failure::Retry(
            fetch_err(url, format!("server answered HTTP {}", resp.status())),
            retry_after(resp.headers()),
        ));
    }
    if !(200..300).contains(&status) {
        return Err(Failure::Fatal(fetch_err(
            url,
            format!("server answered HTTP {}", resp.status()),
        )));
    }
    if is_html(resp.headers()) {
        // A captive portal, a "quota exceeded" page or a CDN error page: often gone soon.
        return Err(Failure::Retry(
            fetch_err(
                url,
                "server sent an HTML page (content-type text/html) instead of the file",
            ),
            retry_after(resp.headers()),
        ));
    }
    Ok(())
}

impl HttpTransport {
    /// A transport for the repository at `base` (an `http://` or `https://` URL).
    pub fn new(base: &str, opts: HttpOptions) -> Result<Self> {
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| fetch_err(base, format!("not a valid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(fetch_err(
                base,
                "only http:// and https:// URLs are served over the network",
            ));
        }
        let client = Client::builder()
            .connect_timeout(opts.connect_timeout)
            // For the blocking client this bounds sending the request and receiving the
            // headers, and then each single read of the body.
            .timeout(opts.read_timeout)
            .user_agent(concat!("patch-apply/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                fetch_err(
                    base,
                    format!("cannot start an HTTP client: {}", describe(&e)),
                )
            })?;
        Ok(HttpTransport {
            base: base.trim_end_matches('/').to_string(),
            client,
            opts,
        })
    }

    fn url(&self, path: &str) -> Result<String> {
        formats::layout::check_target_name(path)?;
        Ok(format!("{}/{}", self.base, encode_path(path)))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are used up. An
    /// attempt that brought at least `progress_reset` new bytes does not count as a failure.
    fn with_retries<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> (std::result::Result<T, Failure>, u64),
    ) -> Result<T> {
        let mut failures = 0u32;
        let mut total_attempts = 0u32;
        let max_attempts = self.opts.retries.saturating_add(1).saturating_mul(10);
        loop {
            total_attempts += 1;
            let (res, gained) = attempt();
            let (err, after) = match res {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e, after)) => (e, after),
            };
            if gained < 64 * 1024 {
                failures += 1;
            }
            if failures > self.opts.retries || total_attempts >= max_attempts {
                let reason = match err {
                    Error::Fetch { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(fetch_err(
                    url,
                    format!("gave up after {total_attempts} attempt(s): {reason}"),
                ));
            }
            let wait = self.opts.backoff_for(failures.max(1), after);
            let reason = match err {
                Error::Fetch { reason, .. } => reason,
                other => other.to_string(),
            };
            let event = Event::Retry {
                url: url.to_string(),
                attempt: total_attempts,
                reason,
                delay_ms: wait.as_millis().min(u64::MAX as u128) as u64,
                retries_left: self.opts.retries.saturating_sub(failures),
            };
            if !self.opts.events.emit(event) {
                tracing::warn!("{url}: attempt {total_attempts} failed; retrying in {wait:?}");
            }
            std::thread::sleep(wait);
        }
    }

    /// Reports an answer's status ([`Event::Request`]).
    fn answered(&self, url: &str, resp: &Response, from_byte: u64) {
        let status = resp.status().as_u16();
        let event = Event::Request {
            url: url.to_string(),
            status,
            from_byte,
        };
        if !self.opts.events.emit(event) {
            tracing::debug!("{url}: HTTP {status} (from byte {from_byte})");
        }
    }

    /// One attempt at reading a small file; `known` (validators for this very URL) makes it a
    /// conditional request.
    fn attempt_small(
        &self,
        url: &str,
        path: &str,
        max_len: u64,
        known: Option<&Validators>,
    ) -> std::result::Result<Conditional, Failure> {
        let mut req = self.client.get(url);
        if path.ends_with("timestamp.json") || path.ends_with("root.json") {
            // The files that change in place (or appear): never a stale cached copy.
            req = req.header(CACHE_CONTROL, "no-cache");
        }
        if let Some(v) = known {
            if let Some(etag) = &v.etag {
                req = req.header(IF_NONE_MATCH, etag.as_str());
            }
            if let Some(lm) = &v.last_modified {
                req = req.header(IF_MODIFIED_SINCE, lm.as_str());
            }
        }
        let resp = req
            .send()
            .map_err(|e| Failure::Retry(fetch_err(url, describe(&e.without_url())), None))?;
        self.answered(url, &resp, 0);
        if resp.status().as_u16() == 304 {
            return match known {
                Some(_) => Ok(Conditional::NotModified),
                None => Err(Failure::Fatal(fetch_err(
                    url,
                    "server answered 304 Not Modified to a request without validators \
                     (If-None-Match or If-Modified-Since)",
                ))),
            };
        }
        match check_status(url, &resp) {
            Err(Failure::Fatal(Error::NotFound { .. })) => return Ok(Conditional::Missing),
            Err(f) => return Err(f),
            Ok(()) => {}
        }
        let validators = validators_of(url, resp.headers());
        if let Some(len) = resp.content_length() {
            if len > max_len {
                return Err(Failure::Fatal(Error::Format(formats::Error::TooLarge {
                    what: url.to_string(),
                    limit: max_len,
                    actual: len,
                })));
            }
        }
        let mut buf = Vec::new();
        resp.take(max_len + 1).read_to_end(&mut buf).map_err(|e| {
            Failure::Retry(
                fetch_err(url, format!("reading the body: {}", describe(&e))),
                None,
            )
        })?;
        if buf.len() as u64 > max_len {
            return Err(Failure::Fatal(Error::Format(formats::Error::TooLarge {
                what: url.to_string(),
                limit: max_len,
                actual: buf.len() as u64,
            })));
        }
        Ok(Conditional::Fetched(buf, validators))
    }

    /// One attempt at downloading `url` into `dest`; returns the outcome and the bytes received.
    fn attempt_download(
        &self,
        url: &str,
        expected: &Expected,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> (std::result::Result<(), Failure>, u64) {
        let mut received = 0u64;
        let res = self.attempt_download_inner(url, expected, dest, progress, &mut received);
        (res, received)
    }

    fn attempt_download_inner(
        &self,
        url: &str,
        expected: &Expected,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
        received: &mut u64,
    ) -> std::result::Result<(), Failure> {
        let fatal = Failure::Fatal;
        let size = expected.size;
        let mut part = PartialFile::open(dest, expected, url).map_err(fatal)?;
        if part.offset == size {
            let check = std::mem::replace(
                &mut part.check,
                formats::hash::StreamCheck::new(url, expected),
            );
            if check.finish().is_ok() {
                return part.file.sync_all().at(dest).map_err(fatal);
            }
            part.restart(dest, expected, url).map_err(fatal)?;
        }
        let resumed_from = part.offset;
        let mut req = self.client.get(url);
        if part.offset > 0 {
            req = req.header(RANGE, format!("bytes={}-", part.offset));
        }
        let mut resp = req
            .send()
            .map_err(|e| Failure::Retry(fetch_err(url, describe(&e.without_url())), None))?;
        self.answered(url, &resp, resumed_from);
        let status = resp.status().as_u16();
        if status == 416 {
            // The server disagrees about what we hold: start over on the next attempt.
            part.restart(dest, expected, url).map_err(fatal)?;
            return Err(Failure::Retry(
                fetch_err(url, "server refused the range request (HTTP 416)"),
                None,
            ));
        }
        check_status(url, &resp)?;
        if status == 206 {
            match content_range(resp.headers()) {
                Some((start, total)) if start == part.offset && total.unwrap_or(size) == size => {}
                other => {
                    part.restart(dest, expected, url).map_err(fatal)?;
                    return Err(Failure::Retry(
                        fetch_err(
                            url,
                            format!(
                                "server answered range {other:?} to a request from byte {} of {size}",
                                resumed_from
                            ),
                        ),
                        None,
                    ));
                }
            }
        } else if part.offset > 0 {
            // 200 to a range request: the body is the whole file.
            tracing::info!(
                "{url}: server ignored the range request; downloading the whole file again"
            );
            part.restart(dest, expected, url).map_err(fatal)?;
        }
        let remaining = size - part.offset;
        if let Some(len) = resp.content_length() {
            if len != remaining {
                return Err(Failure::Fatal(fetch_err(
                    url,
                    format!(
                        "server declares {len} bytes where the signed size leaves {remaining} (of {size}); not the file the metadata signs"
                    ),
                )));
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut window_start = Instant::now();
        let mut window_bytes = 0u64;
        loop {
            if self.opts.cancel.is_cancelled() {
                return Err(Failure::Fatal(Error::Cancelled));
            }
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let text = describe(&e);
                    let how =
                        if e.kind() == std::io::ErrorKind::TimedOut || text.contains("timed out") {
                            format!("no data for {:?} ({text})", self.opts.read_timeout)
                        } else {
                            text
                        };
                    return Err(Failure::Retry(
                        fetch_err(
                            url,
                            format!(
                                "transfer interrupted at byte {} of {size}: {how}",
                                part.check.seen()
                            ),
                        ),
                        None,
                    ));
                }
            };
            if let Err(e) = part.check.update(&buf[..n]) {
                drop(part);
                let _ = std::fs::remove_file(dest);
                return Err(Failure::Fatal(e.into()));
            }
            part.file.write_all(&buf[..n]).at(dest).map_err(fatal)?;
            *received += n as u64;
            progress(n as u64);
            window_bytes += n as u64;
            let elapsed = window_start.elapsed();
            if self.opts.min_speed > 0 && elapsed >= self.opts.min_speed_window {
                let need = (self.opts.min_speed as f64 * elapsed.as_secs_f64()) as u64;
                if window_bytes < need {
                    return Err(Failure::Retry(
                        fetch_err(
                            url,
                            format!(
                                "too slow: {window_bytes} bytes in {:.1} s, below the minimum of {} bytes/s",
                                elapsed.as_secs_f64(),
                                self.opts.min_speed
                            ),
                        ),
                        None,
                    ));
                }
                window_start = Instant::now();
                window_bytes = 0;
            }
        }
        if part.check.seen() < size {
            return Err(Failure::Retry(
                fetch_err(
                    url,
                    format!("body ended at byte {} of {size}", part.check.seen()),
                ),
                None,
            ));
        }
        let PartialFile { file, check, .. } = part;
        if let Err(e) = check.finish() {
            drop(file);
            let _ = std::fs::remove_file(dest);
            // A kept prefix may have been the bad part: one more attempt from scratch.
            return Err(if resumed_from > 0 {
                Failure::Retry(e.into(), None)
            } else {
                Failure::Fatal(e.into())
            });
        }
        file.sync_all().at(dest).map_err(fatal)
    }
}

impl Transport for HttpTransport {
    fn get_small(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        match self.get_if_changed(path, max_len, None)? {
            Conditional::Fetched(b, _) => Ok(Some(b)),
            Conditional::Missing => Ok(None),
            // Refused in `attempt_small` without validators; never reached.
            Conditional::NotModified => Err(fetch_err(
                &self.url(path)?,
                "server answered 304 Not Modified to a request without validators",
            )),
        }
    }

    /// Sends `known`'s `ETag` as `If-None-Match` and its `Last-Modified` as
    /// `If-Modified-Since` when they came from this same URL; validators of another URL (another
    /// mirror) are not sent. A `304` is [`Conditional::NotModified`] only when validators were
    /// sent, and an error naming the URL otherwise.
    fn get_if_changed(
        &self,
        path: &str,
        max_len: u64,
        known: Option<&Validators>,
    ) -> Result<Conditional> {
        let url = self.url(path)?;
        let known = known.filter(|v| v.url == url);
        self.with_retries(&url, || (self.attempt_small(&url, path, max_len, known), 0))
    }

    fn download(
        &self,
        path: &str,
        expected: &Expected,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let url = self.url(path)?;
        self.with_retries(&url, || {
            self.attempt_download(&url, expected, dest, progress)
        })
    }

    fn describe(&self) -> String {
        self.base.clone()
    }

    fn parallel(&self) -> usize {
        self.opts.parallel.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let o = HttpOptions {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..HttpOptions::default()
        };
        for attempt in 1..10 {
            let d = o.backoff_for(attempt, None);
            let full = Duration::from_millis(100 * (1u64 << (attempt - 1)))
                .min(Duration::from_millis(1000));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert_eq!(
            o.backoff_for(1, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert!(o.backoff_for(1, Some(Duration::from_secs(3600))) <= Duration::from_millis(100));
    }

    #[test]
    fn content_range_and_paths() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_RANGE,
            "bytes 100-199/200".parse().expect("test setup"),
        );
        assert_eq!(content_range(&h), Some((100, Some(200))));
        h.insert(CONTENT_RANGE, "bytes 5-9/*".parse().expect("test setup"));
        assert_eq!(content_range(&h), Some((5, None)));
        h.insert(CONTENT_RANGE, "bytes */200".parse().expect("test setup"));
        assert_eq!(content_range(&h), None);
        assert_eq!(
            encode_path("targets/1.0.0+b1/a b"),
            "targets/1.0.0+b1/a%20b"
        );
    }

    #[test]
    fn last_modified_is_a_validator_only_a_second_before_the_date() {
        let url = "http://h/metadata/timestamp.json";
        let headers = |pairs: &[(reqwest::header::HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(k.clone(), v.parse().expect("test setup"));
            }
            h
        };
        let lm = "Tue, 14 Nov 2023 22:13:20 GMT";
        let h = headers(&[
            (ETAG, "\"e1\""),
            (LAST_MODIFIED, lm),
            (DATE, "Tue, 14 Nov 2023 22:13:21 GMT"),
        ]);
        let v = validators_of(url, &h).expect("validators");
        assert_eq!(v.etag.as_deref(), Some("\"e1\""));
        assert_eq!(v.last_modified.as_deref(), Some(lm));
        // Same second (or no Date): the date cannot tell two versions apart.
        let h = headers(&[(LAST_MODIFIED, lm), (DATE, lm)]);
        assert_eq!(validators_of(url, &h), None);
        assert_eq!(validators_of(url, &headers(&[(LAST_MODIFIED, lm)])), None);
        // An overlong ETag is not kept.
        let long = format!("\"{}\"", "a".repeat(300));
        assert_eq!(validators_of(url, &headers(&[(ETAG, &long)])), None);
        let v = Validators::new(url, Some("\"e\""), None).expect("validators");
        assert_eq!(Validators::from_json(&v.to_json()), Some(v));
        assert_eq!(Validators::from_json(b"{\"url\":\"x\"}"), None);
        assert_eq!(Validators::from_json(b"not json"), None);
    }

    /// A server that answers every request with `answer` and records the request heads.
    fn fixed_server(answer: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup");
        let addr = listener.local_addr().expect("test setup");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let mut r = std::io::BufReader::new(s.try_clone().expect("test setup"));
                let mut head = String::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
                        break;
                    }
                    head.push_str(&l);
                }
                let _ = tx.send(head);
                let mut s = s;
                let _ = s.write_all(answer.as_bytes());
            }
        });
        (format!("http://{addr}"), rx)
    }

    #[test]
    fn a_304_counts_only_as_an_answer_to_validators_sent() {
        let (base, heads) = fixed_server("HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
        let opts = HttpOptions {
            retries: 0,
            ..HttpOptions::default()
        };
        let t = HttpTransport::new(&base, opts).expect("test setup");
        let name = "metadata/timestamp.json";
        let url = format!("{base}/{name}");
        let e = t.get_small(name, 1000).expect_err("304 without validators");
        assert!(e.to_string().contains(&url), "{e}");
        assert!(e.to_string().contains("without validators"), "{e}");
        let head = heads.recv().expect("a request").to_ascii_lowercase();
        assert!(!head.contains("if-none-match"), "{head}");
        let v = Validators::new(&url, Some("\"e1\""), Some("Tue, 14 Nov 2023 22:13:20 GMT"))
            .expect("validators");
        assert_eq!(
            t.get_if_changed(name, 1000, Some(&v)).expect("304"),
            Conditional::NotModified
        );
        let head = heads.recv().expect("a request").to_ascii_lowercase();
        assert!(head.contains("if-none-match: \"e1\""), "{head}");
        assert!(
            head.contains("if-modified-since: tue, 14 nov 2023"),
            "{head}"
        );
        // Validators of another URL (another mirror) are not sent, so a 304 is an error.
        let other = Validators::new(
            "http://elsewhere/metadata/timestamp.json",
            Some("\"e1\""),
            None,
        );
        let e = t
            .get_if_changed(name, 1000, other.as_ref())
            .expect_err("not sent");
        assert!(e.to_string().contains("without validators"), "{e}");
    }

    #[test]
    fn refuses_other_schemes_and_bad_paths() {
        assert!(HttpTransport::new("ftp://x/", HttpOptions::default()).is_err());
        let t = HttpTransport::new("http://127.0.0.1:9/repo/", HttpOptions::default())
            .expect("test setup");
        assert_eq!(
            t.url("metadata/1.root.json").expect("test setup"),
            "http://127.0.0.1:9/repo/metadata/1.root.json"
        );
        assert!(t.url("../etc/passwd").is_err());
    }
}
