//! A CDN in front of the repository (issue 20): a real nginx with `proxy_cache`
//! (`tests/nginx-cdn.conf.in`), started by each test on a free loopback port in a temp dir,
//! proxies to a real `patch-create serve`. Whatever the edge serves (a stale cached
//! `timestamp.json`, a new timestamp before the files it pins, an old snapshot under a new
//! name), clients end at the old or the new release, byte-identical, or get a clear "try
//! again" error; their stored trust is not poisoned. Idle checks cost a 304 without a body.
//! Also the idle check and expiry straight against `patch-create serve`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::pg::free_port;
use e2e_tests::{assert_same_tree, copy_tree, fails, ok, run, ServedRepo, World};

const CONFIG: &str = include_str!("../nginx-cdn.conf.in");

/// `patch-create serve` on a free port; killed on drop.
struct Origin {
    _served: ServedRepo,
    port: u16,
}

impl Origin {
    fn start(repo: &Path) -> Origin {
        let served = ServedRepo::start(repo);
        Origin {
            port: served.port(),
            _served: served,
        }
    }
}

/// An nginx caching edge in front of an origin; killed on drop.
struct Edge {
    child: Child,
    dir: PathBuf,
    url: String,
}

/// How the edge caches.
struct EdgeConfig<'a> {
    /// How long a `timestamp.json` answer is served from the cache (`1h`, `1s`).
    timestamp_ttl: &'a str,
    /// How long a 404 is served from the cache.
    missing_ttl: &'a str,
    /// More `location` blocks, before the catch-all one.
    extra: String,
}

fn nginx_binary() -> PathBuf {
    for d in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let p = Path::new(d).join("nginx");
        if p.is_file() {
            return p;
        }
    }
    panic!("nginx is missing: install it with `apt-get install nginx` (Debian's package, with proxy_cache)");
}

impl Edge {
    fn start(w: &World, name: &str, origin: &Origin, cfg: &EdgeConfig) -> Edge {
        let nginx = nginx_binary();
        let dir = w.path(name);
        std::fs::create_dir_all(dir.join("tmp")).expect("edge dir");
        let port = free_port();
        let conf = CONFIG
            .replace("{{DIR}}", &dir.display().to_string())
            .replace("{{PORT}}", &port.to_string())
            .replace("{{ORIGIN}}", &origin.port.to_string())
            .replace("{{TIMESTAMP_TTL}}", cfg.timestamp_ttl)
            .replace("{{MISSING_TTL}}", cfg.missing_ttl)
            .replace("{{EXTRA}}", &cfg.extra);
        std::fs::write(dir.join("nginx.conf"), conf).expect("edge config");
        let mut child = Command::new(&nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "nginx exited ({st}): {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nginx did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Edge {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// The access log: one `URI STATUS BODY_BYTES cache=STATUS` line per request.
    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A world of small releases with only the first `released` of them in the repository.
fn small_world(versions: usize, released: usize) -> World {
    let w = World::with_sizes(versions, 96 << 10, 32 << 10);
    w.release_all(released);
    w
}

/// A `patch-apply` command against `url`.
fn client(w: &World, sub: &str, app: &Path, url: &str) -> Command {
    let mut c = e2e_tests::cmd("patch-apply");
    c.arg(sub)
        .arg("--app-dir")
        .arg(app)
        .arg("--repo")
        .arg(url)
        .arg("--public-key")
        .arg(&w.public);
    c
}

/// An app dir holding release `i` (1-based) and an empty state directory.
fn app_at(w: &World, name: &str, i: usize) -> PathBuf {
    let app = w.path(name);
    copy_tree(&w.releases[i - 1], &app);
    std::fs::create_dir_all(app.join(".patchkit")).expect("state dir");
    app
}

/// The requests a `patch-apply -v` run logged: (URL, status).
fn requests(stderr: &str) -> Vec<(String, u16)> {
    stderr
        .lines()
        .filter_map(|l| {
            let (url, rest) = l.split_once(" HTTP ")?;
            let status = rest.split_whitespace().next()?.parse().ok()?;
            url.starts_with("http://")
                .then(|| (url.trim_end_matches(':').to_string(), status))
        })
        .collect()
}

/// Runs `patch-apply -v check` and returns the requests it made.
fn idle_check(w: &World, app: &Path, url: &str) -> Vec<(String, u16)> {
    let mut c = client(w, "check", app, url);
    c.arg("-v");
    let out = run(&mut c);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "check failed: {stderr}");
    requests(&stderr)
}

/// Copies every file of `from` into `to` that `to` lacks or that differs, except those `skip`
/// refuses (a publisher that has uploaded only part of a new release so far).
fn sync_repo(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).expect("below from");
        if skip(rel) {
            continue;
        }
        let dest = to.join(rel);
        if std::fs::read(&dest).ok() != std::fs::read(&e).ok() {
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            let tmp = dest.with_extension("sync-tmp");
            std::fs::copy(&e, &tmp).expect("copy");
            std::fs::rename(&tmp, &dest).expect("rename");
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A repository of release 1 (served) and, beside it, the same repository with release 2
/// added (not yet served): what a publisher uploads next.
fn two_repos(w: &World) -> PathBuf {
    let next = w.path("repo-next");
    copy_tree(&w.repo, &next);
    ok(e2e_tests::cmd("patch-create")
        .args(["release", "--name", "demo", "--level", "3", "--repo"])
        .arg(&next)
        .arg("--root")
        .arg(&w.releases[1])
        .args(["--version", "2.0.0", "--key"])
        .arg(&w.key));
    next
}

/// (a) The edge keeps `timestamp.json` for an hour. After a new release at the origin, clients
/// behind the edge see no update and stay at the old release; a client that updated straight
/// from the origin is refused by the edge's older timestamp with an error that names it and
/// keeps its app dir at the new release. Once the edge has the new timestamp, everyone updates.
#[test]
fn stale_cached_timestamp_means_no_update_yet_never_a_broken_app() {
    let w = small_world(2, 1);
    let origin = Origin::start(&w.repo);
    let slow_edge = EdgeConfig {
        timestamp_ttl: "1h",
        missing_ttl: "1h",
        extra: String::new(),
    };
    let edge = Edge::start(&w, "edge", &origin, &slow_edge);
    let app = app_at(&w, "app", 1);
    let out = ok(client(&w, "apply", &app, &edge.url).arg("--json"));
    assert!(out.contains("1.0.0"), "{out}");
    assert_same_tree(&app, &w.releases[0]);

    // Release 2 reaches the origin; the edge still serves the timestamp of release 1.
    w.release(2, &[]);
    for name in ["app", "fresh"] {
        let app = if name == "app" {
            app.clone()
        } else {
            app_at(&w, name, 1)
        };
        let check = ok(client(&w, "check", &app, &edge.url).arg("--json"));
        let check = e2e_tests::last_json(&check);
        assert_eq!(check["latest"], "1.0.0", "{check}");
        ok(client(&w, "apply", &app, &edge.url).arg("--json"));
        assert_same_tree(&app, &w.releases[0]);
    }

    // A client that updated from the origin, then asks the stale edge: refused, unchanged.
    let direct = app_at(&w, "direct", 1);
    let origin_url = format!("http://127.0.0.1:{}", origin.port);
    ok(client(&w, "apply", &direct, &origin_url).arg("--json"));
    assert_same_tree(&direct, &w.releases[1]);
    let err = fails(client(&w, "apply", &direct, &edge.url).arg("--json"));
    assert!(err.contains("timestamp.json"), "{err}");
    assert!(
        err.contains("cache"),
        "error does not mention a stale cache: {err}"
    );
    assert_same_tree(&direct, &w.releases[1]);

    // A new edge (the cache expired): both end at release 2, byte-identical.
    drop(edge);
    let edge = Edge::start(&w, "edge2", &origin, &slow_edge);
    for a in [&app, &direct] {
        ok(client(&w, "apply", a, &edge.url).arg("--json"));
        assert_same_tree(a, &w.releases[1]);
    }
}

/// (b) The edge has the new `timestamp.json` before the files it pins, as a publisher uploads
/// them: first the origin has only the new timestamp; then the new metadata but not the new
/// artifacts, while the edge still remembers its 404 for the new snapshot; then everything. At
/// each step the client gets a clear "try again" error naming the file and its app dir stays at
/// release 1; at the end the same client (same stored trust) updates to release 2.
#[test]
fn new_timestamp_before_the_files_it_pins_is_a_clear_try_again_and_trust_recovers() {
    let w = small_world(2, 1);
    let next = two_repos(&w);
    let origin = Origin::start(&w.repo);
    // The edge remembers a 404 for 8 s (long enough that a slow client run on a loaded machine
    // still sees it on the second try); `settle` waits until the edge asks the origin again,
    // counting from the end of the client run that made the edge cache the 404.
    let edge = Edge::start(
        &w,
        "edge",
        &origin,
        &EdgeConfig {
            timestamp_ttl: "1s",
            missing_ttl: "8s",
            extra: String::new(),
        },
    );
    let settle = |since: Instant| {
        std::thread::sleep(Duration::from_secs(9).saturating_sub(since.elapsed()));
    };
    let app = app_at(&w, "app", 1);
    let try_again = |file: &str| {
        let err = fails(&mut client(&w, "apply", &app, &edge.url));
        assert!(err.contains(file), "error does not name {file}: {err}");
        assert!(err.contains("try again"), "not a try-again error: {err}");
        assert!(
            err.contains("being updated") && err.contains("stale"),
            "error does not say why: {err}"
        );
        assert_same_tree(&app, &w.releases[0]);
    };
    let ts = Path::new("metadata/timestamp.json");
    let is_new_artifact =
        |p: &Path| (p.starts_with("targets") || p.starts_with("blobs")) && !w.repo.join(p).exists();

    // Only the new timestamp reached the origin.
    sync_repo(&next, &w.repo, &|p| p != ts);
    try_again(".snapshot.json");
    let first_404 = Instant::now();
    // The new metadata arrives (not the artifacts); the edge still has its 404.
    sync_repo(&next, &w.repo, &|p| p == ts || is_new_artifact(p));
    try_again(".snapshot.json");
    // The edge asks again: snapshot and targets are there, the manifest is not.
    settle(first_404);
    try_again("manifest.json");
    let second_404 = Instant::now();
    // Everything arrives; once the edge asks again, the same client updates.
    sync_repo(&next, &w.repo, &|_| false);
    settle(second_404);
    ok(&mut client(&w, "apply", &app, &edge.url));
    assert_same_tree(&app, &w.releases[1]);
    // And the stored trust is that of release 2: an idle check needs nothing new.
    let reqs = idle_check(&w, &app, &edge.url);
    assert!(reqs.len() <= 2, "{reqs:?}");
}

/// (b) The edge answers the new snapshot's name with the old snapshot's bytes (a cache keyed
/// wrongly, or a stale copy): its length and hash are not what the new timestamp pins, so the
/// client refuses it with a clear "try again" error; the app stays at release 1. With a
/// correct edge the same client updates to release 2.
#[test]
fn old_snapshot_served_under_the_new_name_is_a_clear_try_again() {
    let w = small_world(2, 1);
    let next = two_repos(&w);
    let versions = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("metadata"))
            .expect("metadata")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".snapshot.json"))
            .collect();
        v.sort();
        v
    };
    let old = versions(&w.repo).pop().expect("a snapshot");
    let new = versions(&next)
        .into_iter()
        .find(|n| !versions(&w.repo).contains(n))
        .expect("a new snapshot");
    sync_repo(&next, &w.repo, &|_| false);
    let origin = Origin::start(&w.repo);
    let wrong = EdgeConfig {
        timestamp_ttl: "1s",
        missing_ttl: "1s",
        extra: format!(
            "        location = /metadata/{new} {{\n            proxy_pass http://127.0.0.1:{}/metadata/{old};\n        }}\n",
            origin.port
        ),
    };
    let edge = Edge::start(&w, "edge", &origin, &wrong);
    let app = app_at(&w, "app", 1);
    for _ in 0..2 {
        let err = fails(&mut client(&w, "apply", &app, &edge.url));
        assert!(err.contains(&new), "{err}");
        assert!(err.contains("differs from signed"), "{err}");
        assert!(err.contains("try again"), "{err}");
        assert_same_tree(&app, &w.releases[0]);
    }
    drop(edge);
    let edge = Edge::start(
        &w,
        "edge2",
        &origin,
        &EdgeConfig {
            extra: String::new(),
            ..wrong
        },
    );
    ok(&mut client(&w, "apply", &app, &edge.url));
    assert_same_tree(&app, &w.releases[1]);
}

/// (c) An idle check through the edge: the second check makes at most two requests, the root
/// probe (404) and `timestamp.json` answered 304, and the edge sends no body bytes for either.
#[test]
fn idle_check_through_the_edge_is_a_304_without_body() {
    let w = small_world(1, 1);
    let origin = Origin::start(&w.repo);
    let edge = Edge::start(
        &w,
        "edge",
        &origin,
        &EdgeConfig {
            timestamp_ttl: "1h",
            missing_ttl: "1m",
            extra: String::new(),
        },
    );
    let app = app_at(&w, "app", 1);
    let first = idle_check(&w, &app, &edge.url);
    assert!(first
        .iter()
        .any(|(u, s)| u.ends_with("/metadata/timestamp.json") && *s == 200));
    let before = edge.access_log().lines().count();
    let second = idle_check(&w, &app, &edge.url);
    assert!(second.len() <= 2, "{second:?}");
    assert!(
        second
            .iter()
            .any(|(u, s)| u.ends_with("/metadata/timestamp.json") && *s == 304),
        "{second:?}"
    );
    assert!(
        second.iter().all(|(_, s)| *s == 304 || *s == 404),
        "{second:?}"
    );
    let log = edge.access_log();
    let lines: Vec<&str> = log.lines().skip(before).collect();
    assert_eq!(lines.len(), second.len(), "{log}");
    for l in &lines {
        let body: u64 = l
            .split_whitespace()
            .nth(2)
            .and_then(|b| b.parse().ok())
            .unwrap_or(u64::MAX);
        // A 404's body is nginx's error page when nginx makes it; ours has none.
        assert_eq!(body, 0, "the edge sent a body: {l}");
    }
}

/// Straight against `patch-create serve`: the second idle check is the root probe and a 304;
/// a check without stored validators fetches the timestamp whole; and once the trusted
/// timestamp has expired, a 304 still fails as expired.
#[test]
fn idle_check_against_serve_is_a_304_and_expiry_still_counts() {
    let w = World::with_sizes(1, 96 << 10, 32 << 10);
    w.release(1, &["--expires", "6s", "--expires-short-ok"]);
    let origin = Origin::start(&w.repo);
    let url = format!("http://127.0.0.1:{}", origin.port);
    let app = app_at(&w, "app", 1);
    let started = Instant::now();
    let first = idle_check(&w, &app, &url);
    assert!(
        first.iter().any(|(u, _)| u.ends_with(".repository.json")),
        "{first:?}"
    );
    let second = idle_check(&w, &app, &url);
    let statuses: Vec<u16> = second.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, vec![404, 304], "{second:?}");
    let trust = app.join(".patchkit/trust");
    assert!(trust.join("repository.json").is_file());
    // Without validators the timestamp comes whole; they are stored again.
    std::fs::remove_file(trust.join("timestamp.http.json")).expect("validators stored");
    let third = idle_check(&w, &app, &url);
    let statuses: Vec<u16> = third.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, vec![404, 200], "{third:?}");
    assert!(trust.join("timestamp.http.json").is_file());
    // A kept repository.json that does not match its pin is never used: fetched again.
    std::fs::write(trust.join("repository.json"), b"{}").expect("tamper");
    let fourth = idle_check(&w, &app, &url);
    assert!(
        fourth.iter().any(|(u, _)| u.ends_with(".repository.json")),
        "{fourth:?}"
    );
    // After expiry the server still says 304; the client still refuses.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(started.elapsed()));
    let mut c = client(&w, "check", &app, &url);
    c.arg("-v");
    let out = run(&mut c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expired metadata accepted: {stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    assert!(
        requests(&stderr)
            .iter()
            .any(|(u, s)| u.ends_with("/metadata/timestamp.json") && *s == 304),
        "{stderr}"
    );
}
