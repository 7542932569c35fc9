//! `patch-create serve`: a small static file server for a repository directory, for local
//! testing and demos. It answers `GET` and `HEAD` with `Content-Length`, single `Range`
//! requests with `206` (or `416` when unsatisfiable), conditional requests (`If-None-Match`
//! against a strong `ETag`, else `If-Modified-Since` against `Last-Modified`) with `304`, and
//! refuses any path that could leave the repository (`..`, backslashes, NUL, symlinks pointing
//! outside). Every answer carries a `Date` and the `Cache-Control` of docs/format.md §9
//! ([`cache_control`]). One thread per connection, a bounded number of connections, and
//! `Connection: close` after each answer.
//!
//! It is no production server: put the repository on a static host or CDN for that.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};

/// Connections served at once; more are answered `503`.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

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

    /// Accepts connections until the process ends; `log` receives one entry per request.
    pub fn run(self, log: impl Fn(&RequestLog) + Send + Sync + 'static) -> Result<()> {
        let log = Arc::new(log);
        let active = Arc::new(AtomicUsize::new(0));
        let root = Arc::new(self.root);
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(_) => continue, // e.g. a connection reset before accept: keep serving
            };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                let _ = busy(stream);
                continue;
            }
            let (log, active, root) = (log.clone(), active.clone(), root.clone());
            std::thread::spawn(move || {
                if let Some(entry) = handle(stream, &root) {
                    log(&entry);
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Ok(())
    }
}

fn busy(mut s: TcpStream) -> io::Result<()> {
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    range: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - total) as u64 + 1)
            .read_line(&mut line)?;
        if n == 0 {
            return Ok(None);
        }
        total += n;
        if total > MAX_HEAD {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let Some(first) = lines.first() else {
        return Ok(None);
    };
    let mut parts = first.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let header = |name: &str| {
        lines[1..].iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        range: header("range"),
        if_none_match: header("if-none-match"),
        if_modified_since: header("if-modified-since"),
    }))
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

/// Serves one request; returns its log entry (none when the client sent nothing usable).
fn handle(stream: TcpStream, root: &Path) -> Option<RequestLog> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut out = stream;
    let head = read_head(&mut reader).ok()??;
    let mut entry = RequestLog {
        peer,
        method: head.method.clone(),
        path: head.target.clone(),
        range: head.range.clone(),
        status: 200,
        bytes: 0,
    };
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let simple = |out: &mut TcpStream, status: &str, extra: &str| {
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\nDate: {date}\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n"
        );
    };
    let head_only = match head.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            entry.status = 405;
            simple(&mut out, "405 Method Not Allowed", "Allow: GET, HEAD\r\n");
            return Some(entry);
        }
    };
    let file = resolve(root, &head.target).and_then(|p| {
        let f = std::fs::File::open(&p).ok()?;
        let m = f.metadata().ok()?;
        m.is_file().then_some((p, f, m))
    });
    let Some((path, mut f, meta)) = file else {
        entry.status = 404;
        // A file that is not there yet may appear at any moment (a new root, a release being
        // published): a cache must not remember its absence.
        simple(&mut out, "404 Not Found", "Cache-Control: no-cache\r\n");
        return Some(entry);
    };
    let len = meta.len();
    let etag = entity_tag(&meta);
    let modified = meta.modified().ok();
    let url_path = head.target.split(['?', '#']).next().unwrap_or("");
    let mut cache = format!(
        "Cache-Control: {}\r\nETag: {etag}\r\n",
        cache_control(url_path)
    );
    if let Some(m) = modified {
        cache.push_str(&format!(
            "Last-Modified: {}\r\n",
            httpdate::fmt_http_date(m)
        ));
    }
    if not_modified(
        head.if_none_match.as_deref(),
        head.if_modified_since.as_deref(),
        &etag,
        modified,
    ) {
        entry.status = 304;
        let _ = write!(
            out,
            "HTTP/1.1 304 Not Modified\r\nDate: {date}\r\n{cache}Connection: close\r\n\r\n"
        );
        return Some(entry);
    }
    let (status, start, count, range_hdr) = match parse_range(head.range.as_deref(), len) {
        Ok(None) => ("200 OK", 0, len, String::new()),
        Ok(Some((a, b))) => (
            "206 Partial Content",
            a,
            b - a + 1,
            format!("Content-Range: bytes {a}-{b}/{len}\r\n"),
        ),
        Err(()) => {
            entry.status = 416;
            simple(
                &mut out,
                "416 Range Not Satisfiable",
                &format!("Content-Range: bytes */{len}\r\n"),
            );
            return Some(entry);
        }
    };
    entry.status = if start == 0 && count == len && range_hdr.is_empty() {
        200
    } else {
        206
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nDate: {date}\r\nContent-Length: {count}\r\nContent-Type: {}\r\nAccept-Ranges: bytes\r\n{range_hdr}{cache}Connection: close\r\n\r\n",
        content_type(&path)
    );
    if out.write_all(header.as_bytes()).is_err() || head_only {
        return Some(entry);
    }
    if f.seek(SeekFrom::Start(start)).is_ok() {
        entry.bytes = io::copy(&mut f.take(count), &mut out).unwrap_or(0);
    }
    let _ = out.flush();
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

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
