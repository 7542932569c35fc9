//! Delivery failures a user meets on real networks, through the real `patch-apply` binary:
//! servers whose first answer for every path is an HTML page, a 503 or a truncated body (each
//! retried, then the update completes byte-identical), retries shown on stderr (and hidden by
//! `-q`), a server that is down (each retry shown, then one error naming the URL), and
//! repository locations that are not repositories (refused before anything is written).

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use e2e_tests::*;

/// What the server answers the first time each path is asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum First {
    /// `200 OK` with `Content-Type: text/html` and a "quota exceeded" page.
    Html,
    /// `503 Service Unavailable`.
    Unavailable,
    /// The right `Content-Length`, then half of the body and a closed connection.
    Truncated,
}

struct Shared {
    root: PathBuf,
    first: First,
    /// Requests per path so far.
    count: Mutex<HashMap<String, u32>>,
    /// Every answer: path and status.
    log: Mutex<Vec<(String, u16)>>,
    stop: AtomicBool,
}

/// A static file server on 127.0.0.1 (with `Range` support) whose first answer for every path
/// is a fault; stops when dropped.
struct FirstFaultServer {
    url: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FirstFaultServer {
    fn start(root: &Path, first: First) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            first,
            count: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let sh = sh.clone();
                        std::thread::spawn(move || answer(s, &sh));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FirstFaultServer {
            url,
            shared,
            accept: Some(accept),
        }
    }

    fn log(&self) -> Vec<(String, u16)> {
        self.shared.log.lock().expect("lock").clone()
    }

    /// Asserts that some path starting with `prefix` got the fault first and then `200` or
    /// `206`.
    fn assert_faulted_then_served(&self, prefix: &str, fault_status: u16) {
        let log = self.log();
        let ok = log.iter().any(|(p, st)| {
            p.starts_with(prefix) && *st == fault_status && {
                let after: Vec<u16> = log
                    .iter()
                    .filter(|(q, _)| q == p)
                    .map(|(_, s)| *s)
                    .collect();
                after.len() >= 2 && after[0] == fault_status && matches!(after[1], 200 | 206)
            }
        });
        assert!(
            ok,
            "no {prefix}... path answered {fault_status} then served: {log:?}"
        );
    }
}

impl Drop for FirstFaultServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn answer(mut s: TcpStream, sh: &Shared) {
    let Some(req) = read_test_request(&s) else {
        return;
    };
    let path = req.path;
    let range_from = req
        .range
        .as_deref()
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let n = {
        let mut c = sh.count.lock().expect("lock");
        let n = c.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let log = |status: u16| sh.log.lock().expect("lock").push((path.clone(), status));
    let data = std::fs::read(sh.root.join(path.trim_start_matches('/')));
    if n == 1 && sh.first == First::Html {
        // A captive portal answers every path, existing or not.
        log(200);
        let page = b"<html><body><h1>Bandwidth quota exceeded</h1></body></html>";
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            page.len()
        );
        let _ = s.write_all(page);
        return;
    }
    if n == 1 && sh.first == First::Unavailable {
        log(503);
        let _ = s.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let Ok(data) = data else {
        log(404);
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range_from.filter(|&f| f < data.len());
    let (status, from) = match start {
        Some(f) => (206, f),
        None => (200, 0),
    };
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        if status == 206 { "206 Partial Content" } else { "200 OK" },
        data.len() - from
    );
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {from}-{}/{}\r\n",
            data.len() - 1,
            data.len()
        ));
    }
    head.push_str("\r\n");
    let mut end = data.len();
    if n == 1 && sh.first == First::Truncated {
        end = from + (data.len() - from) / 2;
    }
    log(status);
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&data[from..end]);
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// Short network bounds so that retries are quick.
const FAST: &[&str] = &[
    "--timeout",
    "5s",
    "--connect-timeout",
    "2s",
    "--retries",
    "2",
    "--retry-backoff",
    "20ms",
];

fn patch_apply(sub: &str, w: &World, app: &Path, url: &str, extra: &[&str]) -> Command {
    let mut c = cmd("patch-apply");
    c.arg(sub)
        .arg("--app-dir")
        .arg(app)
        .arg("--repo")
        .arg(url)
        .arg("--public-key")
        .arg(&w.public)
        .args(FAST)
        .args(extra);
    c
}

/// Runs a command that must succeed; returns (stdout, stderr).
fn ok_with_stderr(c: &mut Command) -> (String, String) {
    let out = run(c);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "command failed: {c:?}\nstatus: {}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[test]
fn html_page_first_for_every_path_is_retried_and_the_update_completes() {
    let (w, app) = World::with_app_at_v1();
    let srv = FirstFaultServer::start(&w.repo, First::Html);
    let r = last_json(&ok(&mut patch_apply(
        "apply",
        &w,
        &app,
        &srv.url,
        &["--json"],
    )));
    assert_eq!(r["to"], "2.0.0", "{r}");
    assert_same_tree(&app, &w.releases[1]);
    // Metadata and artifacts alike got the page first, then the file.
    srv.assert_faulted_then_served("/metadata/", 200);
    srv.assert_faulted_then_served("/targets/", 200);
    // The installer (one large artifact, downloaded with resume) too.
    let fresh = w.path("fresh");
    copy_tree(&w.releases[0], &fresh);
    let srv = FirstFaultServer::start(&w.repo, First::Html);
    ok(&mut patch_apply(
        "apply",
        &w,
        &fresh,
        &srv.url,
        &["--json", "--method", "installer"],
    ));
    assert_same_tree(&fresh, &w.releases[1]);
    assert!(
        srv.log()
            .iter()
            .any(|(p, _)| p.ends_with(".installer.tar.zst")),
        "{:?}",
        srv.log()
    );
}

#[test]
fn unavailable_503_first_for_every_path_is_retried_and_the_update_completes() {
    let (w, app) = World::with_app_at_v1();
    let srv = FirstFaultServer::start(&w.repo, First::Unavailable);
    ok(&mut patch_apply("apply", &w, &app, &srv.url, &["--json"]));
    assert_same_tree(&app, &w.releases[1]);
    srv.assert_faulted_then_served("/metadata/", 503);
    srv.assert_faulted_then_served("/targets/", 503);
}

#[test]
fn truncated_first_body_for_every_path_is_retried_and_the_update_completes() {
    let (w, app) = World::with_app_at_v1();
    let srv = FirstFaultServer::start(&w.repo, First::Truncated);
    let (_, stderr) = ok_with_stderr(&mut patch_apply("apply", &w, &app, &srv.url, &[]));
    assert_same_tree(&app, &w.releases[1]);
    // The metadata was fetched again; an artifact continued from the bytes it kept.
    let log = srv.log();
    assert!(
        log.iter()
            .filter(|(p, _)| p == "/metadata/timestamp.json")
            .count()
            >= 2,
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|(p, st)| p.starts_with("/targets/") && *st == 206),
        "no artifact download resumed: {log:?}"
    );
    assert!(stderr.contains("attempt 1 failed"), "{stderr}");
}

#[test]
fn retries_are_printed_on_stderr_naming_the_url_and_quiet_hides_them() {
    let (w, app) = World::with_app_at_v1();
    let srv = FirstFaultServer::start(&w.repo, First::Html);
    let (stdout, stderr) = ok_with_stderr(&mut patch_apply("apply", &w, &app, &srv.url, &[]));
    assert!(stdout.contains("to 2.0.0"), "{stdout}");
    let root_url = format!("{}/metadata/1.root.json", srv.url);
    let line = stderr
        .lines()
        .find(|l| l.contains(&root_url))
        .unwrap_or_else(|| panic!("no retry line names {root_url}: {stderr}"));
    assert!(
        line.starts_with("warning: ")
            && line.contains("attempt 1 failed")
            && line.contains("HTML page")
            && line.contains("retrying in"),
        "{line}"
    );
    // One retry line per path fetched.
    let retries = stderr.lines().filter(|l| l.contains("attempt 1")).count();
    assert!(retries >= 4, "{stderr}");

    // -q: the same faults, the same result, nothing on stderr.
    let quiet = w.path("quiet");
    copy_tree(&w.releases[0], &quiet);
    let srv = FirstFaultServer::start(&w.repo, First::Html);
    let (_, stderr) = ok_with_stderr(&mut patch_apply("apply", &w, &quiet, &srv.url, &["-q"]));
    assert_same_tree(&quiet, &w.releases[1]);
    assert!(stderr.trim().is_empty(), "-q printed: {stderr}");

    // -v: each request with its answer.
    let verbose = w.path("verbose");
    copy_tree(&w.releases[0], &verbose);
    let srv = FirstFaultServer::start(&w.repo, First::Html);
    let (_, stderr) = ok_with_stderr(&mut patch_apply(
        "check",
        &w,
        &verbose,
        &srv.url,
        &["--verbose"],
    ));
    assert!(
        stderr.contains(&format!("{}/metadata/timestamp.json: HTTP 200", srv.url)),
        "{stderr}"
    );
    assert!(stderr.contains("attempt 1 failed"), "{stderr}");
}

#[test]
fn server_that_is_down_shows_each_retry_then_one_error_naming_the_url() {
    let (w, app) = World::with_app_at_v1();
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let before = tree_state(&app);
    let err = fails(&mut patch_apply("apply", &w, &app, &url, &[]));
    let want = format!("{url}/metadata/1.root.json");
    let retries: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("warning: ") && l.contains("retrying in"))
        .collect();
    assert_eq!(retries.len(), 2, "{err}");
    assert!(retries[0].contains(&want) && retries[0].contains("attempt 1 failed"));
    assert!(retries[1].contains(&want) && retries[1].contains("attempt 2 failed"));
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(&want) && errors[0].contains("gave up after 3 attempt(s)"),
        "{err}"
    );
    assert_eq!(tree_state(&app), before);
}

#[test]
fn mirror_that_is_down_is_named_when_the_next_mirror_takes_over() {
    let (w, app) = World::with_app_at_v1();
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let down = format!("http://127.0.0.1:{port}");
    let good = FirstFaultServer::start(&w.repo, First::Unavailable);
    let (_, stderr) = ok_with_stderr(
        patch_apply("apply", &w, &app, &down, &[])
            .arg("--repo")
            .arg(&good.url),
    );
    assert_same_tree(&app, &w.releases[1]);
    let switch = stderr
        .lines()
        .find(|l| l.contains("trying the next mirror"))
        .unwrap_or_else(|| panic!("no mirror change on stderr: {stderr}"));
    assert!(
        switch.starts_with("warning: ") && switch.contains(&down) && switch.contains(&good.url),
        "{switch}"
    );
    // The good mirror's own 503s were retried and shown too.
    assert!(
        stderr.contains(&format!("{}/metadata/", good.url)) && stderr.contains("HTTP 503"),
        "{stderr}"
    );
}

#[test]
fn repo_given_as_host_port_or_with_another_scheme_is_refused_before_writing_anything() {
    let (w, app) = World::with_app_at_v1();
    let before = tree_state(&app);
    for sub in ["apply", "check"] {
        for (repo, expect) in [
            ("127.0.0.1:18080", "did you mean http://127.0.0.1:18080?"),
            (
                "localhost:8080/repo",
                "did you mean http://localhost:8080/repo?",
            ),
            ("ftp://x/y", "URL scheme ftp:// is not supported"),
        ] {
            let err = fails(&mut patch_apply(sub, &w, &app, repo, &[]));
            assert!(
                err.contains(repo) && err.contains(expect),
                "{sub} --repo {repo}: {err}"
            );
            assert_eq!(tree_state(&app), before, "{sub} --repo {repo}");
            assert!(
                !app.join(".patchkit").exists(),
                "{sub} --repo {repo} created .patchkit"
            );
            // An app dir that does not exist yet is not created either.
            let missing = w.path("not-there");
            fails(&mut patch_apply(sub, &w, &missing, repo, &[]));
            assert!(!missing.exists(), "{sub} --repo {repo} created the app dir");
        }
    }
    // A file:// URL still works.
    let url = format!("file://{}", w.repo.display());
    ok(&mut patch_apply("apply", &w, &app, &url, &["--json"]));
    assert_same_tree(&app, &w.releases[1]);
}
