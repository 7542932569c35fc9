//! Delivery over HTTP: the real `patch-apply` binary against HTTP servers on 127.0.0.1 that
//! the tests control, with injected faults (dropped connections, 503s, ignored ranges, wrong
//! lengths, HTML pages, stalls, a killed client). Each case ends byte-identical to the new
//! version, or with a clear error naming the URL and the app dir unchanged.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e_tests::*;

/// Faults the test server injects into answers for paths containing `path` ("" = every path).
#[derive(Clone, Debug, Default)]
struct Fault {
    path: String,
    /// Close the connection once this fraction of the file has been sent, this many times.
    drop_at: Option<(f64, u32)>,
    /// Answer 503 this many times.
    unavailable: u32,
    /// Answer 200 with the whole file to range requests.
    ignore_range: bool,
    /// Send the file and then more data, without Content-Length.
    longer: bool,
    /// Declare the right Content-Length but close 100 bytes before the end.
    shorter: bool,
    /// Answer 200 with an HTML page.
    html: bool,
    /// Send 30% of the file, then nothing.
    stall: bool,
    /// Bytes per second.
    throttle: Option<u64>,
    /// Wait this long before answering.
    delay: Option<Duration>,
}

/// One request the server saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
    status: u16,
}

struct State {
    root: PathBuf,
    fault: Mutex<Fault>,
    bytes: AtomicU64,
    log: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    /// Answers being prepared now (their fault's delay) for paths the fault applies to, and
    /// the most at once.
    active: AtomicU64,
    max_active: AtomicU64,
}

/// Counts an answer as active while it lives.
struct Active<'a>(&'a State);

impl<'a> Active<'a> {
    fn new(st: &'a State) -> Self {
        let now = st.active.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_active.fetch_max(now, Ordering::SeqCst);
        Active(st)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A static file server on 127.0.0.1 with fault injection; stops when dropped.
struct TestServer {
    url: String,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(root: &Path) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State {
            root: root.to_path_buf(),
            fault: Mutex::new(Fault::default()),
            bytes: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            active: AtomicU64::new(0),
            max_active: AtomicU64::new(0),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || serve(s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestServer {
            url,
            state,
            accept: Some(accept),
        }
    }

    fn set(&self, f: Fault) {
        *self.state.fault.lock().expect("lock") = f;
    }

    fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::SeqCst)
    }

    fn reset_counters(&self) {
        self.state.bytes.store(0, Ordering::SeqCst);
        self.state.log.lock().expect("lock").clear();
    }

    fn log(&self) -> Vec<Seen> {
        self.state.log.lock().expect("lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(mut s: TcpStream, st: &State) {
    let Some(TestRequest { path, range }) = read_test_request(&s) else {
        return;
    };
    let mut fault = st.fault.lock().expect("lock");
    let applies = fault.path.is_empty() || path.contains(&fault.path);
    let log = |status: u16| {
        st.log.lock().expect("lock").push(Seen {
            path: path.clone(),
            range: range.clone(),
            status,
        })
    };
    if applies && fault.unavailable > 0 {
        fault.unavailable -= 1;
        drop(fault);
        log(503);
        let _ = s.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let f = if applies {
        fault.clone()
    } else {
        Fault::default()
    };
    let active = (applies && !fault.path.is_empty()).then(|| Active::new(st));
    let drop_at = match fault.drop_at {
        Some((frac, n)) if applies && n > 0 => {
            fault.drop_at = Some((frac, n - 1));
            Some(frac)
        }
        _ => None,
    };
    drop(fault);
    if let Some(d) = f.delay {
        std::thread::sleep(d);
    }
    // An answer stops counting before it is sent: a client that waits for it can only ask
    // again after that, so one download at a time never counts as two (counting until this
    // thread ends did, on a loaded machine, when the client read the answer and asked again
    // before the thread got to run).
    drop(active);
    let file = st.root.join(path.trim_start_matches('/'));
    let Ok(data) = std::fs::read(&file) else {
        log(404);
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    if f.html {
        log(200);
        let page = b"<html><body><h1>Welcome to our hosting!</h1></body></html>";
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", page.len());
        let _ = s.write_all(page);
        return;
    }
    let start = match (&range, f.ignore_range) {
        (Some(r), false) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < data.len()),
        _ => None,
    };
    let (status, body_start) = match start {
        Some(n) => (206, n),
        None => (200, 0),
    };
    log(status);
    let mut head = format!(
        "HTTP/1.1 {} \r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
        if status == 206 {
            "206 Partial Content"
        } else {
            "200 OK"
        }
    );
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {body_start}-{}/{}\r\n",
            data.len() - 1,
            data.len()
        ));
    }
    if !f.longer {
        head.push_str(&format!("Content-Length: {}\r\n", data.len() - body_start));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut body = data[body_start..].to_vec();
    let mut end = data.len();
    if f.longer {
        body.extend(std::iter::repeat_n(0x5au8, 4 << 20));
        end = data.len() + (4 << 20);
    }
    if f.shorter {
        end = data.len().saturating_sub(100).max(body_start);
    }
    if let Some(frac) = drop_at {
        end = end.min((data.len() as f64 * frac) as usize).max(body_start);
    }
    let stall_at = f.stall.then_some((data.len() as f64 * 0.3) as usize);
    let t0 = Instant::now();
    let mut pos = body_start;
    let mut sent = 0u64;
    while pos < end {
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
        if stall_at.is_some_and(|a| pos >= a) {
            // Stop sending, keep the connection open (bounded).
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until && !st.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        // Throttled answers go out in small chunks (about 20 a second).
        let chunk_max = f
            .throttle
            .map_or(64 * 1024, |r| (r as usize / 20).clamp(1, 64 * 1024));
        let mut n = (end - pos).min(chunk_max);
        if let Some(a) = stall_at.filter(|&a| a > pos) {
            n = n.min(a - pos);
        }
        let chunk = &body[pos - body_start..pos - body_start + n];
        if s.write_all(chunk).is_err() {
            return;
        }
        pos += n;
        sent += n as u64;
        st.bytes.fetch_add(n as u64, Ordering::SeqCst);
        if let Some(rate) = f.throttle {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// Short network bounds so failing cases end quickly.
const FAST: &[&str] = &[
    "--timeout",
    "2s",
    "--connect-timeout",
    "2s",
    "--retries",
    "2",
    "--retry-backoff",
    "50ms",
];

fn patch_apply(sub: &str, w: &World, app: &Path, urls: &[&str], extra: &[&str]) -> Command {
    let mut c = cmd("patch-apply");
    c.arg(sub).arg("--app-dir").arg(app);
    for u in urls {
        c.arg("--repo").arg(u);
    }
    c.arg("--public-key").arg(&w.public);
    // The fast defaults, unless `extra` sets the same option.
    for pair in FAST.chunks(2) {
        if !extra.contains(&pair[0]) {
            c.args(pair);
        }
    }
    c.args(extra);
    c
}

/// `apply --method installer`: the whole v2 archive is the one large body.
fn apply_installer(w: &World, app: &Path, urls: &[&str]) -> Command {
    apply_installer_with(w, app, urls, &[])
}

fn apply_installer_with(w: &World, app: &Path, urls: &[&str], extra: &[&str]) -> Command {
    let mut args = vec!["--json", "--method", "installer"];
    args.extend_from_slice(extra);
    patch_apply("apply", w, app, urls, &args)
}

/// Kills a child process when dropped (a failing test must not leave a server behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Repository path and size of the v2 installer.
fn installer(w: &World) -> (String, u64) {
    let dir = w.repo.join("targets/2.0.0");
    for e in std::fs::read_dir(&dir).expect("targets dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".installer.tar.zst") {
            return (
                format!("/targets/2.0.0/{name}"),
                e.metadata().expect("meta").len(),
            );
        }
    }
    panic!("no installer in {}", dir.display());
}

/// Asserts a failed apply left `app` as it was and named the URL.
fn assert_failed_cleanly(
    stderr: &str,
    before: &std::collections::BTreeMap<String, String>,
    app: &Path,
    url: &str,
) {
    assert!(stderr.contains(url), "error does not name {url}: {stderr}");
    assert_eq!(
        &tree_state(app),
        before,
        "app dir changed by a failed update"
    );
}

#[test]
fn update_through_patch_create_serve_and_maintenance_mode() {
    let (w, app) = World::with_app_at_v1();
    let serve = ServedRepo::start(&w.repo);
    let url = serve.url.clone();

    // Maintenance: reported by check, refused by apply, app unchanged.
    ok(cmd("patch-create")
        .args(["maintenance", "--on", "--message", "back at 5", "--repo"])
        .arg(&w.repo)
        .arg("--key")
        .arg(&w.key));
    let check = last_json(&ok(&mut patch_apply(
        "check",
        &w,
        &app,
        &[&url],
        &["--json"],
    )));
    assert_eq!(check["maintenance"]["message"], "back at 5");
    assert_eq!(check["maintenance"]["app_may_start"], false);
    let before = tree_state(&app);
    let err = fails(&mut patch_apply("apply", &w, &app, &[&url], &[]));
    assert!(
        err.contains("maintenance") && err.contains("back at 5"),
        "{err}"
    );
    assert_eq!(tree_state(&app), before);
    ok(cmd("patch-create")
        .args(["maintenance", "--off", "--repo"])
        .arg(&w.repo)
        .arg("--key")
        .arg(&w.key));
    let check = last_json(&ok(&mut patch_apply(
        "check",
        &w,
        &app,
        &[&url],
        &["--json"],
    )));
    assert!(check.get("maintenance").is_none(), "{check}");

    // Incremental update of v1, and a fresh install by repair files, 3 downloads at once.
    let r = last_json(&ok(&mut patch_apply(
        "apply",
        &w,
        &app,
        &[&url],
        &["--json"],
    )));
    assert_eq!(r["to"], "2.0.0");
    assert_same_tree(&app, &w.releases[1]);
    let fresh = w.path("fresh");
    let r = last_json(&ok(&mut patch_apply(
        "apply",
        &w,
        &fresh,
        &[&url],
        &["--json", "--method", "repair", "--parallel", "3"],
    )));
    assert_eq!(r["method"], "repair");
    assert_same_tree(&fresh, &w.releases[1]);
}

#[test]
fn connection_dropped_at_80_percent_resumes_with_a_range_request() {
    let (w, app) = World::with_app_at_v1();
    let srv = TestServer::start(&w.repo);
    let (inst, size) = installer(&w);
    // A clean run, for the byte count.
    let clean_app = w.path("clean");
    copy_tree(&w.releases[0], &clean_app);
    ok(&mut apply_installer(&w, &clean_app, &[&srv.url]));
    let clean = srv.bytes();
    srv.reset_counters();
    srv.set(Fault {
        path: inst.clone(),
        drop_at: Some((0.8, 1)),
        ..Fault::default()
    });
    let r = last_json(&ok(&mut apply_installer(&w, &app, &[&srv.url])));
    assert_eq!(r["method"], "installer");
    assert_same_tree(&app, &w.releases[1]);
    let faulty = srv.bytes();
    let log = srv.log();
    let resumed = log
        .iter()
        .find(|s| s.path == inst && s.range.is_some())
        .expect("a range request");
    assert_eq!(resumed.status, 206);
    let from: u64 = resumed
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .expect("range");
    assert!(from > size / 2, "resumed from {from} of {size}");
    eprintln!(
        "clean run served {clean} bytes, run with a dropped connection {faulty} ({:.3}x)",
        faulty as f64 / clean as f64
    );
    assert!(
        (faulty as f64) < 1.2 * clean as f64,
        "{faulty} bytes served vs {clean} for a clean run"
    );
}

#[test]
fn unavailable_mirror_is_retried_then_the_next_mirror_serves() {
    let (w, app) = World::with_app_at_v1();
    let bad = TestServer::start(&w.repo);
    let good = TestServer::start(&w.repo);
    bad.set(Fault {
        unavailable: u32::MAX,
        ..Fault::default()
    });
    let r = last_json(&ok(&mut apply_installer(&w, &app, &[&bad.url, &good.url])));
    assert_eq!(r["to"], "2.0.0");
    assert_same_tree(&app, &w.releases[1]);
    // The first file was tried 1 + 2 retries times on the bad mirror, which was then skipped.
    let seen = bad.log();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen
        .iter()
        .all(|s| s.path == seen[0].path && s.status == 503));

    // Two 503s on the large file of a single mirror: retried, then served.
    let (inst, _) = installer(&w);
    let again = w.path("again");
    copy_tree(&w.releases[0], &again);
    good.reset_counters();
    good.set(Fault {
        path: inst.clone(),
        unavailable: 2,
        ..Fault::default()
    });
    ok(&mut apply_installer(&w, &again, &[&good.url]));
    assert_same_tree(&again, &w.releases[1]);
    let statuses: Vec<u16> = good
        .log()
        .iter()
        .filter(|s| s.path == inst)
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, vec![503, 503, 200]);
}

#[test]
fn server_ignoring_range_gets_the_file_over() {
    let (w, app) = World::with_app_at_v1();
    let srv = TestServer::start(&w.repo);
    let (inst, size) = installer(&w);
    srv.set(Fault {
        path: inst.clone(),
        drop_at: Some((0.5, 1)),
        ignore_range: true,
        ..Fault::default()
    });
    ok(&mut apply_installer(&w, &app, &[&srv.url]));
    assert_same_tree(&app, &w.releases[1]);
    let tries: Vec<Seen> = srv.log().into_iter().filter(|s| s.path == inst).collect();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert!(
        tries[1].range.is_some() && tries[1].status == 200,
        "{tries:?}"
    );
    assert!(srv.bytes() >= size + size / 2 - 64 * 1024);
}

#[test]
fn body_longer_or_shorter_than_declared_is_an_error_naming_the_url() {
    let (w, app) = World::with_app_at_v1();
    let srv = TestServer::start(&w.repo);
    let (inst, size) = installer(&w);
    let before = tree_state(&app);
    // Endless data: cut off after the signed size, no retry on this mirror.
    srv.set(Fault {
        path: inst.clone(),
        longer: true,
        ..Fault::default()
    });
    let err = fails(&mut apply_installer(&w, &app, &[&srv.url]));
    assert_failed_cleanly(&err, &before, &app, &format!("{}{inst}", srv.url));
    assert!(
        err.contains("larger")
            || err.contains("too large")
            || err.contains("exceeds")
            || err.contains(&size.to_string()),
        "{err}"
    );
    assert_eq!(srv.log().iter().filter(|s| s.path == inst).count(), 1);
    // Shorter than declared, every time: resumed, retried, then a clear error.
    srv.reset_counters();
    srv.set(Fault {
        path: inst.clone(),
        shorter: true,
        ..Fault::default()
    });
    let err = fails(&mut apply_installer(&w, &app, &[&srv.url]));
    assert_failed_cleanly(&err, &before, &app, &format!("{}{inst}", srv.url));
    assert!(err.contains("gave up"), "{err}");
    assert!(srv
        .log()
        .iter()
        .any(|s| s.path == inst && s.range.is_some()));
    // With a healthy second mirror the update completes from the bytes kept.
    let good = TestServer::start(&w.repo);
    ok(&mut apply_installer(&w, &app, &[&srv.url, &good.url]));
    assert_same_tree(&app, &w.releases[1]);
    assert!(
        good.bytes() < size / 10,
        "the second mirror served {} of {size} bytes",
        good.bytes()
    );
}

/// An HTML page every time (not only the first): retried like a 5xx (it may be a captive
/// portal that goes away), then an error naming the URL; a second mirror serves the file.
#[test]
fn html_page_every_time_is_retried_then_refused_and_the_next_mirror_serves() {
    let (w, app) = World::with_app_at_v1();
    let srv = TestServer::start(&w.repo);
    let (inst, _) = installer(&w);
    let before = tree_state(&app);
    srv.set(Fault {
        path: inst.clone(),
        html: true,
        ..Fault::default()
    });
    let err = fails(&mut apply_installer(&w, &app, &[&srv.url]));
    assert_failed_cleanly(&err, &before, &app, &format!("{}{inst}", srv.url));
    assert!(err.contains("HTML"), "{err}");
    // One attempt and the two retries of FAST.
    assert!(err.contains("gave up after 3 attempt(s)"), "{err}");
    assert_eq!(srv.log().iter().filter(|s| s.path == inst).count(), 3);
    let good = TestServer::start(&w.repo);
    ok(&mut apply_installer(&w, &app, &[&srv.url, &good.url]));
    assert_same_tree(&app, &w.releases[1]);
}

#[test]
fn stalled_server_times_out_within_the_configured_bound() {
    let (w, app) = World::with_app_at_v1();
    let srv = TestServer::start(&w.repo);
    let (inst, _) = installer(&w);
    let before = tree_state(&app);
    srv.set(Fault {
        path: inst.clone(),
        stall: true,
        ..Fault::default()
    });
    let t0 = Instant::now();
    let err = fails(&mut apply_installer_with(
        &w,
        &app,
        &[&srv.url],
        &["--timeout", "1s", "--retries", "1"],
    ));
    let took = t0.elapsed();
    assert_failed_cleanly(&err, &before, &app, &format!("{}{inst}", srv.url));
    assert!(err.contains("no data for"), "{err}");
    // Two attempts of at most 1 s without data, one short pause, plus the rest of the run.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // The minimum-speed rule: a server sending 2 KiB/s fails a 4 KiB/s minimum over 1 s.
    srv.set(Fault {
        path: inst.clone(),
        throttle: Some(2048),
        ..Fault::default()
    });
    let t0 = Instant::now();
    let err = fails(&mut apply_installer_with(
        &w,
        &app,
        &[&srv.url],
        &[
            "--retries",
            "0",
            "--min-speed",
            "4096",
            "--min-speed-window",
            "1s",
        ],
    ));
    assert!(err.contains("too slow"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(8));
    assert_eq!(tree_state(&app), before);
}

#[test]
fn download_killed_with_sigkill_resumes_on_the_next_run() {
    let (w, app) = World::with_app_at_v1();
    let srv = TestServer::start(&w.repo);
    let (inst, size) = installer(&w);
    // About 4 s for the whole file: the kill lands mid-download.
    srv.set(Fault {
        path: inst.clone(),
        throttle: Some(size / 4 + 1),
        ..Fault::default()
    });
    let mut child = KillOnDrop(
        apply_installer(&w, &app, &[&srv.url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let t0 = Instant::now();
    while srv.bytes() < size * 2 / 5 && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().expect("SIGKILL"); // std's kill sends SIGKILL on Unix
    let _ = child.0.wait();
    let killed_at = srv.bytes();
    assert!(
        killed_at < size,
        "download finished before the kill ({killed_at} of {size})"
    );
    let cache = app.join(".patchkit/cache");
    let part: u64 = std::fs::read_dir(&cache)
        .expect("cache dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(part > 0, "no partial download kept");
    assert_same_tree(&app, &w.releases[0]);
    srv.reset_counters();
    srv.set(Fault::default());
    let out = ok(&mut apply_installer(&w, &app, &[&srv.url]));
    assert_same_tree(&app, &w.releases[1]);
    // The event stream says what was resumed (a progress display leaves it out of the speed).
    let resumed: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "resumed")
        .collect();
    assert_eq!(resumed.len(), 1, "{out}");
    assert_eq!(resumed[0]["bytes"], part, "{out}");
    assert_eq!(
        resumed[0]["path"].as_str(),
        Some(inst.trim_start_matches('/')),
        "{out}"
    );
    let log = srv.log();
    let req = log
        .iter()
        .find(|s| s.path == inst)
        .expect("installer requested");
    assert_eq!(
        req.range.as_deref(),
        Some(format!("bytes={part}-").as_str()),
        "{log:?}"
    );
    assert_eq!(req.status, 206);
    let second: u64 = srv.bytes();
    eprintln!("killed after {killed_at} of {size} bytes ({part} kept); the next run fetched {second} bytes");
    // The rest of the installer, plus the metadata and manifest (well under 256 KiB).
    assert!(
        second <= size - part + 256 * 1024,
        "second run fetched {second} bytes"
    );
}

#[test]
fn unreachable_repository_is_an_error_naming_the_url() {
    let (w, app) = World::with_app_at_v1();
    let err = fails(&mut patch_apply(
        "check",
        &w,
        &app,
        &["http://127.0.0.1:1/"],
        &["--connect-timeout", "1s", "--retries", "0"],
    ));
    assert!(err.contains("http://127.0.0.1:1"), "{err}");
}

#[test]
fn parallel_downloads_follow_the_setting_and_progress_covers_them_all() {
    let w = World::new(1);
    w.release_all(1);
    let srv = TestServer::start(&w.repo);
    // Every repair file answers after 40 ms: downloads overlap as much as allowed.
    srv.set(Fault {
        path: "/blobs/".into(),
        delay: Some(Duration::from_millis(40)),
        ..Fault::default()
    });
    for (parallel, name) in [(4u64, "four"), (1, "one")] {
        srv.state.max_active.store(0, Ordering::SeqCst);
        let app = w.path(name);
        let out = ok(&mut patch_apply(
            "apply",
            &w,
            &app,
            &[&srv.url],
            &[
                "--json",
                "--method",
                "repair",
                "--parallel",
                &parallel.to_string(),
            ],
        ));
        assert_same_tree(&app, &w.releases[0]);
        assert_eq!(
            srv.state.max_active.load(Ordering::SeqCst),
            parallel,
            "downloads at once with --parallel {parallel}"
        );
        // Byte progress: one total for the whole phase, never exceeded, reached at the end.
        let progress: Vec<(u64, u64)> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "progress" && v["phase"] == "download")
            .map(|v| {
                (
                    v["done"].as_u64().unwrap_or(0),
                    v["total"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let total = progress.first().expect("progress events").1;
        assert!(
            progress.iter().all(|&(d, t)| t == total && d <= total),
            "{progress:?}"
        );
        assert_eq!(progress.iter().map(|p| p.0).max(), Some(total));
    }
}
