//! `patch-create serve` on its own, over raw HTTP on loopback: paths (and symlinks) that leave
//! the repository are refused, `If-None-Match` decides over `If-Modified-Since`, and requests
//! beyond the limit are answered `503` while earlier ones are still sending their body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use e2e_tests::ServedRepo;

/// A response head: status and headers (names lower-case).
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET target` with `extra` header lines; returns the open stream, positioned after the
/// response head.
fn request(srv: &ServedRepo, target: &str, extra: &str) -> (BufReader<TcpStream>, Head) {
    let mut s = TcpStream::connect(("127.0.0.1", srv.port())).expect("connect to serve");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
    )
    .expect("send request");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).expect("header line");
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    (r, Head { status, headers })
}

/// `GET target`: the head and the whole body.
fn fetch(srv: &ServedRepo, target: &str, extra: &str) -> (Head, Vec<u8>) {
    let (mut r, head) = request(srv, target, extra);
    let mut body = Vec::new();
    r.read_to_end(&mut body).expect("body");
    (head, body)
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, data).expect("write");
}

#[test]
fn paths_and_symlinks_leaving_the_repository_are_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let repo = d.path().join("repo");
    write(&repo.join("metadata/timestamp.json"), b"{\"t\":1}");
    write(&d.path().join("outside/secret"), b"secret");
    std::os::unix::fs::symlink(d.path().join("outside/secret"), repo.join("leak"))
        .expect("symlink");
    std::os::unix::fs::symlink("../outside", repo.join("outdir")).expect("symlink");
    std::os::unix::fs::symlink("metadata/timestamp.json", repo.join("inside")).expect("symlink");
    let srv = ServedRepo::start(&repo);

    let (head, body) = fetch(&srv, "/metadata/timestamp.json", "");
    assert_eq!((head.status, body.as_slice()), (200, &b"{\"t\":1}"[..]));
    assert_eq!(head.get("cache-control"), Some("no-cache"));
    assert!(head.get("date").is_some(), "every answer has a Date");
    assert_eq!(head.get("content-type"), Some("application/json"));
    // A symlink that stays inside is served.
    let (head, body) = fetch(&srv, "/inside", "");
    assert_eq!((head.status, body.as_slice()), (200, &b"{\"t\":1}"[..]));

    for bad in [
        "/leak",
        "/outdir/secret",
        "/../outside/secret",
        "/%2e%2e/outside/secret",
        "/metadata/../../outside/secret",
        "/a%5c..%5coutside",
        "/metadata/",
        "/missing.json",
    ] {
        let (head, body) = fetch(&srv, bad, "");
        assert_eq!(head.status, 404, "{bad}");
        assert_eq!(head.get("cache-control"), Some("no-cache"), "{bad}");
        assert!(
            !String::from_utf8_lossy(&body).contains("secret"),
            "{bad}: {body:?}"
        );
    }
}

#[test]
fn if_none_match_decides_over_if_modified_since_and_ranges_work() {
    let d = tempfile::tempdir().expect("tempdir");
    let repo = d.path().to_path_buf();
    let ts = repo.join("metadata/timestamp.json");
    write(&ts, b"version one");
    let srv = ServedRepo::start(&repo);

    let (first, _) = fetch(&srv, "/metadata/timestamp.json", "");
    let etag = first.get("etag").expect("an ETag").to_string();
    let lm = first
        .get("last-modified")
        .expect("Last-Modified")
        .to_string();
    let (head, body) = fetch(
        &srv,
        "/metadata/timestamp.json",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!((head.status, body.len()), (304, 0));
    assert_eq!(head.get("etag"), Some(etag.as_str()));

    // Replaced within the same second (a new file renamed into place): the date alone would
    // say "not modified"; the entity tag differs, and it decides.
    write(&repo.join("metadata/new.tmp"), b"version two!");
    std::fs::rename(repo.join("metadata/new.tmp"), &ts).expect("rename");
    let (head, body) = fetch(
        &srv,
        "/metadata/timestamp.json",
        &format!("If-None-Match: {etag}\r\nIf-Modified-Since: {lm}\r\n"),
    );
    assert_eq!((head.status, body.as_slice()), (200, &b"version two!"[..]));
    assert_ne!(head.get("etag"), Some(etag.as_str()));

    // One range: 206; several or malformed: the whole file; past the end: 416.
    let (head, body) = fetch(&srv, "/metadata/timestamp.json", "Range: bytes=8-\r\n");
    assert_eq!((head.status, body.as_slice()), (206, &b"two!"[..]));
    assert_eq!(head.get("content-range"), Some("bytes 8-11/12"));
    for whole in ["bytes=0-1,4-5", "bytes=5-2", "items=1-2"] {
        let (head, body) = fetch(
            &srv,
            "/metadata/timestamp.json",
            &format!("Range: {whole}\r\n"),
        );
        assert_eq!((head.status, body.len()), (200, 12), "{whole}");
    }
    let (head, _) = fetch(&srv, "/metadata/timestamp.json", "Range: bytes=12-\r\n");
    assert_eq!(head.status, 416);
    assert_eq!(head.get("content-range"), Some("bytes */12"));

    // Immutable paths get a year of caching.
    write(&repo.join("metadata/2.root.json"), b"{}");
    let (head, _) = fetch(&srv, "/metadata/2.root.json", "");
    assert_eq!(
        head.get("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
}

#[test]
fn requests_beyond_the_limit_get_503_until_a_body_is_done() {
    const LIMIT: usize = 64; // patch_create::serve::MAX_CONNECTIONS
    let d = tempfile::tempdir().expect("tempdir");
    // Larger than what the loopback socket buffers hold (a few MB): a reader that stops
    // reading keeps its request in progress.
    let big = vec![7u8; 16 << 20];
    write(&d.path().join("blobs/big"), &big);
    write(&d.path().join("small"), b"small");
    let srv = ServedRepo::start(d.path());

    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let (r, head) = request(&srv, "/blobs/big", "");
        assert_eq!(head.status, 200);
        held.push(r);
    }
    let (head, body) = fetch(&srv, "/small", "");
    assert_eq!((head.status, body.len()), (503, 0));
    assert_eq!(head.get("retry-after"), Some("1"));

    // One slow reader finishes: its slot is free again.
    let mut r = held.pop().expect("one held");
    let mut sink = Vec::new();
    r.read_to_end(&mut sink).expect("whole body");
    assert_eq!(sink.len(), big.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (head, body) = fetch(&srv, "/small", "");
        if head.status == 200 {
            assert_eq!(body, b"small");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {} after a body finished",
            head.status
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
}
