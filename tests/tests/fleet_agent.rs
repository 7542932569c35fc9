//! The fleet agent (`patch-apply agent`, `patch_apply::agent`) against the real `patch-server`
//! on 127.0.0.1, and against a scripted server where the point is a server that lies or
//! breaks. Real repositories built by `patch-create`, real app dirs, real processes.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::agent_support::*;
use e2e_tests::*;
use patch_apply::agent::{Agent, AgentConfig, AgentEvent, InstallPolicy, OfferDecision};
use serde_json::Value;

/// `patch-apply agent --json` for `app`, with the world's repository and key.
fn agent(w: &World, app: &Path, server: &str, secret: &Path) -> Command {
    let mut c = w.apply_cmd("agent", app);
    c.arg("--server")
        .arg(server)
        .arg("--enroll-secret-file")
        .arg(secret)
        .arg("--json");
    c
}

/// The JSON event lines of an agent's stdout.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has_event(ev: &[Value], kind: &str) -> bool {
    ev.iter().any(|e| e["event"] == kind)
}

fn device_id(app: &Path) -> String {
    std::fs::read_to_string(app.join(".patchkit/agent/device_id"))
        .expect("device id")
        .trim()
        .to_string()
}

fn queued(app: &Path) -> Value {
    std::fs::read(app.join(".patchkit/results.json"))
        .map(|b| serde_json::from_slice(&b).expect("queue JSON"))
        .unwrap_or(Value::Null)
}

/// A library agent for `app` against `server`.
fn lib_config(w: &World, app: &Path, server: &str) -> AgentConfig {
    let key = formats::keys::PublicKey::from_json(
        "release.pub",
        &std::fs::read(&w.public).expect("public key"),
    )
    .expect("key");
    let mut cfg = AgentConfig::new(
        server,
        patch_apply::Config::new(app, w.repo.to_str().expect("utf-8 path"), key),
    );
    cfg.enroll_secret = Some(SECRET.into());
    cfg
}

/// Collects an agent's events.
fn recorder() -> (
    Arc<Mutex<Vec<AgentEvent>>>,
    impl Fn(&AgentEvent) + Send + Sync + 'static,
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    (log, move |e: &AgentEvent| {
        sink.lock().expect("log").push(e.clone())
    })
}

#[test]
fn an_agent_enrolls_is_told_to_move_to_v2_installs_it_and_the_server_shows_it() {
    let (w, app) = World::with_app_at_v1();
    let srv = FleetServer::start(w.dir.path(), "srv", "60s");
    srv.add_app(&w.repo, &w.public);

    let out = ok(agent(&w, &app, &srv.url, &srv.secret_file).arg("--once"));
    let ev = events(&out);
    assert!(has_event(&ev, "enrolled"), "{out}");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "installed" && e["version"] == "2.0.0"),
        "{out}"
    );
    assert_same_tree(&app, &w.releases[1]);

    // Identity kept in .patchkit/agent, the token private.
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(app.join(".patchkit/agent/token")).expect("token");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    let id = device_id(&app);
    assert_eq!(id.len(), 32);

    // The server shows v2, its tree digest, and the result of the update.
    let d = srv.device(&id);
    assert_eq!(d["device"]["version"], "2.0.0", "{d:#}");
    assert_eq!(d["device"]["tree_digest"].as_str().map(str::len), Some(64));
    let r = &d["device"]["last_result"];
    assert_eq!(
        (&r["from"], &r["to"], &r["ok"], &r["started_by"]),
        (
            &Value::from("1.0.0"),
            &Value::from("2.0.0"),
            &Value::from(true),
            &Value::from("agent")
        ),
        "{d:#}"
    );
    assert!(r["bytes"].as_u64().unwrap_or(0) > 0, "{d:#}");
    // The server acknowledged it: nothing left in the queue.
    assert_eq!(queued(&app)["entries"], serde_json::json!([]));

    // An idle check-in, even from a new process, is conditional: 304, no body.
    let out = ok(agent(&w, &app, &srv.url, &srv.secret_file).arg("--once"));
    let ev = events(&out);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "checked_in" && e["http_status"] == 304),
        "{out}"
    );
    assert!(!has_event(&ev, "installing"), "{out}");
    assert!(!has_event(&ev, "enrolled"), "{out}");
}

#[test]
fn cli_updates_made_while_the_server_is_down_are_reported_later_in_order() {
    let (w, app) = World::with_app_at_v1();
    // Two attempts from the CLI: apply, roll back, apply again.
    ok(&mut w.apply_cmd("apply", &app));
    ok(cmd("patch-apply").args(["rollback", "--app-dir"]).arg(&app));
    ok(&mut w.apply_cmd("apply", &app));
    let q = queued(&app);
    assert_eq!(q["entries"].as_array().map(Vec::len), Some(2), "{q:#}");

    // Nobody listens on this port: the agent says so and exits non-zero; the reports stay.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let secret = w.path("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let err = fails(agent(&w, &app, &dead_url, &secret).arg("--once"));
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(queued(&app)["entries"].as_array().map(Vec::len), Some(2));

    let srv = FleetServer::start(w.dir.path(), "srv", "60s");
    srv.add_app(&w.repo, &w.public);
    ok(agent(&w, &app, &srv.url, &srv.secret_file).arg("--once"));
    let d = srv.device(&device_id(&app));
    let results = d["results"].as_array().expect("results");
    let mut seqs: Vec<u64> = results.iter().filter_map(|r| r["seq"].as_u64()).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2], "{d:#}");
    for r in results {
        assert_eq!(r["started_by"], "cli", "{r}");
        assert_eq!(r["to"], "2.0.0", "{r}");
        assert_eq!(r["ok"], true, "{r}");
    }
    assert_eq!(queued(&app)["entries"], serde_json::json!([]));
}

/// A scripted server that names `version` in every check-in answer.
fn lying(version: &'static str) -> FakeServer {
    FakeServer::start(move |r| match r.path.as_str() {
        "/v1/enroll" => enroll_answer(r),
        "/v1/checkin" => checkin_answer(Some(version)),
        _ => (404, vec![], b"{\"error\": \"no\"}".to_vec()),
    })
}

/// The update results the agent sent in its check-ins.
fn sent_results(s: &FakeServer) -> Vec<Value> {
    s.requests("/v1/checkin")
        .iter()
        .flat_map(|r| r.json()["results"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn a_version_absent_from_the_repository_is_refused_reported_and_nothing_installed() {
    let (w, app) = World::with_app_at_v1();
    let s = lying("9.9.9");
    let secret = w.path("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let out = ok(agent(&w, &app, &s.url, &secret).arg("--once"));
    assert!(has_event(&events(&out), "refused"), "{out}");
    assert_same_tree(&app, &w.releases[0]);
    let sent = sent_results(&s);
    let r = sent
        .iter()
        .find(|r| r["to"] == "9.9.9")
        .unwrap_or_else(|| panic!("no report of 9.9.9 in {sent:?}"));
    assert_eq!(
        (&r["ok"], &r["error_kind"]),
        (&Value::from(false), &Value::from("refused"))
    );
    assert!(
        r["error_message"]
            .as_str()
            .unwrap_or("")
            .contains("not in the repository"),
        "{r}"
    );
    // Refused once: the next cycle neither tries again nor reports it twice.
    let out = ok(agent(&w, &app, &s.url, &secret).arg("--once"));
    assert!(!has_event(&events(&out), "installing"), "{out}");
}

#[test]
fn an_older_version_is_refused_unless_the_device_allows_downgrades() {
    let w = World::new(2);
    w.release_all(2);
    let app = w.path("app");
    copy_tree(&w.releases[1], &app);
    let s = lying("1.0.0");
    let secret = w.path("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let out = ok(agent(&w, &app, &s.url, &secret).arg("--once"));
    assert!(has_event(&events(&out), "refused"), "{out}");
    assert_same_tree(&app, &w.releases[1]);
    let sent = sent_results(&s);
    let r = sent
        .iter()
        .find(|r| r["to"] == "1.0.0")
        .unwrap_or_else(|| panic!("no report of 1.0.0 in {sent:?}"));
    assert_eq!(
        (&r["ok"], &r["error_kind"]),
        (&Value::from(false), &Value::from("refused"))
    );
    assert_eq!(r["from"], "2.0.0");

    // The device's own policy may allow it.
    let out = ok(agent(&w, &app, &s.url, &secret).args(["--once", "--allow-downgrade"]));
    assert!(has_event(&events(&out), "installed"), "{out}");
    assert_same_tree(&app, &w.releases[0]);
}

#[test]
fn garbage_answers_cost_a_log_line_and_a_growing_backoff_never_a_panic() {
    let (w, app) = World::with_app_at_v1();
    let s = FakeServer::start(|r| match r.path.as_str() {
        "/v1/enroll" => enroll_answer(r),
        _ => (200, vec![], b"<html>surprise</html>".to_vec()),
    });
    let mut cfg = lib_config(&w, &app, &s.url);
    cfg.backoff_initial = Duration::from_millis(100);
    cfg.backoff_cap = Duration::from_millis(800);
    let (log, sink) = recorder();
    let agent = Agent::new(cfg, sink).expect("agent");
    let stop = agent.stop_handle();
    let t = std::thread::spawn(move || agent.run());
    std::thread::sleep(Duration::from_millis(2500));
    let asked = Instant::now();
    stop.stop();
    t.join().expect("the agent thread does not panic");
    assert!(asked.elapsed() < Duration::from_secs(2), "stop is prompt");

    let waits: Vec<f64> = log
        .lock()
        .expect("log")
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Unreachable {
                error,
                retry_in_secs,
                ..
            } => {
                assert!(error.contains("bad answer"), "{error}");
                Some(*retry_in_secs)
            }
            _ => None,
        })
        .collect();
    // 0.1, 0.2, 0.4, 0.8 (capped) ... with 10 % jitter: a handful of tries, not a flood.
    assert!((3..=9).contains(&waits.len()), "{waits:?}");
    assert!(waits[0] < 0.12 && waits[2] > 0.35, "{waits:?}");
    assert!(waits.iter().all(|w| *w <= 0.8), "{waits:?}");
    assert_same_tree(&app, &w.releases[0]);
}

#[test]
fn retry_after_of_a_503_is_honoured() {
    let (w, app) = World::with_app_at_v1();
    let s = FakeServer::start(|r| match r.path.as_str() {
        "/v1/enroll" => enroll_answer(r),
        _ => (
            503,
            vec![("Retry-After".into(), "3".into())],
            b"{\"error\": \"overloaded\"}".to_vec(),
        ),
    });
    let mut cfg = lib_config(&w, &app, &s.url);
    cfg.backoff_initial = Duration::from_millis(100);
    let (log, sink) = recorder();
    let agent = Agent::new(cfg, sink).expect("agent");
    let stop = agent.stop_handle();
    let t = std::thread::spawn(move || agent.run());
    std::thread::sleep(Duration::from_millis(2000));
    stop.stop();
    t.join().expect("no panic");
    assert_eq!(s.requests("/v1/checkin").len(), 1, "waited for Retry-After");
    let log = log.lock().expect("log");
    let wait = log.iter().find_map(|e| match e {
        AgentEvent::Unreachable { retry_in_secs, .. } => Some(*retry_in_secs),
        _ => None,
    });
    assert!(wait.is_some_and(|w| w >= 3.0), "{log:?}");
}

#[test]
fn a_maintenance_window_keeps_the_commit_outside_and_lets_it_in_inside() {
    let (w, app) = World::with_app_at_v1();
    let srv = FleetServer::start(w.dir.path(), "srv", "60s");
    srv.add_app(&w.repo, &w.public);
    let out = ok(agent(&w, &app, &srv.url, &srv.secret_file)
        .args(["--once", "--install", "window=02:00-05:00"])
        .env("PATCHKIT_AGENT_LOCAL_TIME", "01:30"));
    let ev = events(&out);
    assert!(
        ev.iter().any(|e| e["event"] == "waiting"
            && e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("opens in 30 min")),
        "{out}"
    );
    // Downloaded (and staged to check it) before the window opens; the app dir unchanged.
    let fetched = ev
        .iter()
        .find(|e| e["event"] == "prefetched")
        .and_then(|e| e["bytes"].as_u64());
    assert!(fetched.is_some_and(|b| b > 0), "{out}");
    assert_same_tree(&app, &w.releases[0]);
    assert!(
        !app.join(".patchkit/journal.json").exists(),
        "nothing committed"
    );

    let out = ok(agent(&w, &app, &srv.url, &srv.secret_file)
        .args(["--once", "--install", "window=02:00-05:00"])
        .env("PATCHKIT_AGENT_LOCAL_TIME", "03:00"));
    let ev = events(&out);
    let installed = ev
        .iter()
        .find(|e| e["event"] == "installed")
        .cloned()
        .unwrap_or(Value::Null);
    // Inside the window only the commit is left: no artifact is downloaded again.
    assert_eq!(installed["bytes"], 0, "{out}");
    assert!(!has_event(&ev, "prefetched"), "{out}");
    assert_same_tree(&app, &w.releases[1]);
    assert_eq!(srv.device(&device_id(&app))["device"]["version"], "2.0.0");
}

#[test]
fn ask_through_the_library_defer_then_accept() {
    let (w, app) = World::with_app_at_v1();
    let srv = FleetServer::start(w.dir.path(), "srv", "60s");
    srv.add_app(&w.repo, &w.public);
    let mut cfg = lib_config(&w, &app, &srv.url);
    cfg.install = InstallPolicy::Ask;
    let offers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&offers);
    let (_log, sink) = recorder();
    let mut agent = Agent::new(cfg, sink).expect("agent").on_offer(move |o| {
        let mut s = seen.lock().expect("offers");
        s.push(o.clone());
        if s.len() == 1 {
            OfferDecision::Defer
        } else {
            OfferDecision::Accept
        }
    });
    let c = agent.run_once().expect("first cycle");
    assert_eq!(c.installed, None);
    assert_same_tree(&app, &w.releases[0]);
    {
        let o = offers.lock().expect("offers");
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].version, "2.0.0");
        assert_eq!(o[0].installed.as_deref(), Some("1.0.0"));
        assert!(o[0].download_bytes > 0);
    }
    let c = agent.run_once().expect("second cycle");
    assert_eq!(c.installed.as_deref(), Some("2.0.0"));
    assert_same_tree(&app, &w.releases[1]);
    assert_eq!(offers.lock().expect("offers").len(), 2);
    let d = srv.device(&device_id(&app));
    assert_eq!(d["device"]["version"], "2.0.0");
    assert_eq!(d["device"]["last_result"]["started_by"], "agent");
}

#[test]
fn upload_logs_skips_a_symlink_to_etc_shadow_and_a_1gb_file_and_says_so() {
    let (w, app) = World::with_app_at_v1();
    let srv = FleetServer::start(w.dir.path(), "srv", "60s");
    srv.add_app(&w.repo, &w.public);
    let logs = w.path("logs");
    std::fs::create_dir(&logs).expect("logs");
    std::fs::write(logs.join("app.log"), "started\nplayers: 3\n").expect("log");
    let big = std::fs::File::create(logs.join("huge.log")).expect("big");
    big.set_len(1 << 30).expect("1 GB, sparse");
    std::os::unix::fs::symlink("/etc/shadow", logs.join("shadow.log")).expect("link");
    let glob = format!("{}/*.log", logs.display());
    let run = || {
        ok(agent(&w, &app, &srv.url, &srv.secret_file)
            .args([
                "--once",
                "--install",
                "window=02:00-02:01",
                "--logs",
                &glob,
                "--upload-cap",
                "1048576",
            ])
            .env("PATCHKIT_AGENT_LOCAL_TIME", "12:00"))
    };
    run();
    let id = device_id(&app);
    ok(&mut srv.admin(&["command", "--device", &id, "upload-logs"]));
    let out = run();
    let ev = events(&out);
    let c = ev
        .iter()
        .find(|e| e["event"] == "command" && e["kind"] == "upload-logs")
        .unwrap_or_else(|| panic!("no upload-logs in {out}"));
    assert_eq!(c["outcome"], "ok", "{c}");
    let msg = c["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("shadow.log") && msg.contains("symbolic link"),
        "{msg}"
    );
    assert!(
        msg.contains("huge.log") && msg.contains("too large"),
        "{msg}"
    );

    let d = srv.device(&id);
    let cmd_row = d["commands"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["kind"] == "upload-logs"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(cmd_row["status"], "ok", "{d:#}");
    let uploads = cmd_row["data"]["uploads"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(uploads.len(), 1, "{cmd_row:#}");
    assert_eq!(uploads[0]["size"], 19);
    // Byte-identical on the server.
    let got = w.path("got.log");
    let got_s = got.to_str().expect("utf-8");
    let id0 = uploads[0]["id"].as_str().expect("id");
    ok(&mut srv.admin(&["upload", "get", id0, "--out", got_s]));
    assert_eq!(
        std::fs::read(&got).expect("download"),
        std::fs::read(logs.join("app.log")).expect("log")
    );
}

#[test]
fn report_state_and_set_interval_get_results_and_a_forgotten_token_re_enrolls() {
    let (w, app) = World::with_app_at_v1();
    let srv = FleetServer::start(w.dir.path(), "srv", "60s");
    srv.add_app(&w.repo, &w.public);
    let state = w.path("state.json");
    std::fs::write(&state, r#"{"players": 3, "map": "dust"}"#).expect("state");
    ok(agent(&w, &app, &srv.url, &srv.secret_file)
        .args(["--once", "--install", "window=02:00-02:01"])
        .env("PATCHKIT_AGENT_LOCAL_TIME", "12:00"));
    let id = device_id(&app);
    ok(&mut srv.admin(&["command", "--device", &id, "report-state"]));
    ok(&mut srv.admin(&[
        "command",
        "--device",
        &id,
        "set-interval",
        "--interval",
        "5s",
    ]));
    ok(&mut srv.admin(&["command", "--device", &id, "restart-app"]));

    // The server forgot this device's token (here: the device holds one it never issued).
    std::fs::write(app.join(".patchkit/agent/token"), "0".repeat(64)).expect("token");
    let out = ok(agent(&w, &app, &srv.url, &srv.secret_file)
        .args(["--once", "--install", "window=02:00-02:01", "--state-file"])
        .arg(&state)
        .env("PATCHKIT_AGENT_LOCAL_TIME", "12:00"));
    let ev = events(&out);
    assert!(has_event(&ev, "enrolled"), "enrolled again: {out}");
    assert_eq!(device_id(&app), id, "same device id");

    let d = srv.device(&id);
    let by_kind = |k: &str| {
        d["commands"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["kind"] == k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let rs = by_kind("report-state");
    assert_eq!(rs["status"], "ok", "{d:#}");
    assert_eq!(rs["data"], serde_json::json!({"players": 3, "map": "dust"}));
    assert_eq!(by_kind("set-interval")["status"], "ok", "{d:#}");
    // Not supervising: restart-app is rejected, with the reason.
    let ra = by_kind("restart-app");
    assert_eq!(ra["status"], "rejected", "{d:#}");
    assert!(ra["message"].as_str().unwrap_or("").contains("supervise"));
    // The state document went along with the check-in too.
    assert_eq!(
        d["device"]["state_digest"].as_str().map(str::len),
        Some(64),
        "{d:#}"
    );
    assert_same_tree(&app, &w.releases[0]);
}

/// Release trees of a tiny app: `app.sh` (code) writes `PID VERSION MESSAGE` to the status file
/// it is given, at start and on SIGHUP; `version.txt` and `msg.txt` are resources. With `cold`,
/// v2 changes `app.sh` too (a restart is needed); without, only the resources (a warm patch).
fn supervised_world(cold: bool) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let keys = d.path().join("keys");
    ok(cmd("patch-create").args(["keygen", "--out"]).arg(&keys));
    let repo = d.path().join("repo");
    for (i, msg) in [(1, "hello"), (2, "bye")] {
        let tree = d.path().join(format!("v{i}"));
        std::fs::create_dir_all(&tree).expect("tree");
        let mut script = String::from(
            "d=$(dirname \"$0\")\nreport() { echo \"$$ $(cat \"$d/version.txt\") $(cat \"$d/msg.txt\")\" > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; }\ntrap 'report \"$1\"' HUP\nreport \"$1\"\nwhile true; do sleep 0.1; done\n",
        );
        if cold && i == 2 {
            script.push_str("# build 2\n");
        }
        std::fs::write(tree.join("app.sh"), script).expect("app");
        std::fs::write(tree.join("version.txt"), i.to_string()).expect("version");
        std::fs::write(tree.join("msg.txt"), msg).expect("msg");
        ok(cmd("patch-create")
            .args([
                "release", "--name", "demo", "--level", "3", "--code", "*.sh",
            ])
            .arg("--repo")
            .arg(&repo)
            .arg("--root")
            .arg(&tree)
            .args(["--version", &format!("{i}.0.0"), "--key"])
            .arg(keys.join("release.key")));
    }
    let app = d.path().join("app");
    copy_tree(&d.path().join("v1"), &app);
    (d, repo, keys.join("release.pub"))
}

/// A child process killed when dropped, so that a failed assertion does not leave an agent
/// running after its test.
struct Killed(std::process::Child);

impl std::ops::Deref for Killed {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `patch-apply agent --supervise` of the tiny app, reporting to `status`.
fn supervise(app: &Path, repo: &Path, public: &Path, srv: &FleetServer, status: &Path) -> Killed {
    Killed(
        supervise_cmd(app, repo, public, srv, status)
            .spawn()
            .expect("agent"),
    )
}

/// The command [`supervise`] runs.
fn supervise_cmd(
    app: &Path,
    repo: &Path,
    public: &Path,
    srv: &FleetServer,
    status: &Path,
) -> Command {
    let mut c = Command::new(bin("patch-apply"));
    c.arg("agent")
        .arg("--app-dir")
        .arg(app)
        .arg("--repo")
        .arg(repo)
        .arg("--public-key")
        .arg(public)
        .arg("--server")
        .arg(&srv.url)
        .arg("--enroll-secret-file")
        .arg(&srv.secret_file)
        .args(["--supervise", "--grace", "2s", "--"])
        .arg("sh")
        .arg(app.join("app.sh"))
        .arg(status);
    c
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn supervised_app_is_stopped_updated_and_restarted_by_a_cold_patch() {
    let (d, repo, public) = supervised_world(true);
    let app = d.path().join("app");
    let status = d.path().join("status");
    let srv = FleetServer::start(d.path(), "srv", "1s");
    srv.add_app(&repo, &public);
    let mut child = supervise(&app, &repo, &public, &srv, &status);
    let read = || std::fs::read_to_string(&status).unwrap_or_default();
    wait_for("the app to start", 30, || !read().is_empty());
    let first: Vec<String> = read().split_whitespace().map(String::from).collect();
    wait_for("the app at v2", 60, || {
        read().split(' ').nth(1) == Some("2")
    });
    let after: Vec<String> = read().split_whitespace().map(String::from).collect();
    assert_eq!(after[2], "bye");
    assert_same_tree(&app, &d.path().join("v2"));
    // A new process runs the new version; the old one (if it was seen at v1) is gone.
    let pid: i32 = after[0].parse().expect("pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    if first[1] == "1" {
        assert_ne!(first[0], after[0]);
        assert!(!Path::new(&format!("/proc/{}", first[0])).exists());
    }
    wait_for("the server to see v2", 30, || {
        srv.device(&device_id(&app))["device"]["version"] == "2.0.0"
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

#[test]
fn a_warm_patch_updates_the_running_app_and_the_same_pid_reports_it() {
    warm_patch_reaches_the_running_app(false);
}

/// `nohup` starts the agent with SIGHUP ignored, and an ignored signal stays ignored across
/// `exec`: the app's shell could not even `trap` it. The agent must start its app with the
/// default action, and still not die of a hangup itself.
#[test]
fn a_warm_patch_reaches_the_app_of_an_agent_started_with_sighup_ignored() {
    warm_patch_reaches_the_running_app(true);
}

fn warm_patch_reaches_the_running_app(agent_ignores_signals: bool) {
    let (d, repo, public) = supervised_world(false);
    let app = d.path().join("app");
    let status = d.path().join("status");
    let srv = FleetServer::start(d.path(), "srv", "1s");
    srv.add_app(&repo, &public);
    let cmd = supervise_cmd(&app, &repo, &public, &srv, &status);
    let mut child = if agent_ignores_signals {
        // What `nohup` and a script's background job do, then `exec` of the agent.
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("trap '' HUP INT QUIT; exec \"$@\"")
            .arg("sh")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        Killed(sh.spawn().expect("agent"))
    } else {
        let mut cmd = cmd;
        Killed(cmd.spawn().expect("agent"))
    };
    let read = || std::fs::read_to_string(&status).unwrap_or_default();
    wait_for("the app to start", 30, || !read().is_empty());
    let first: Vec<String> = read().split_whitespace().map(String::from).collect();
    wait_for("the app to report v2", 60, || {
        read().split(' ').nth(1) == Some("2")
    });
    let after: Vec<String> = read().split_whitespace().map(String::from).collect();
    assert_eq!(after[2], "bye");
    assert_same_tree(&app, &d.path().join("v2"));
    assert_eq!(first[0], after[0], "the same process, notified by SIGHUP");
    if agent_ignores_signals {
        // The agent started with SIGHUP ignored (else it would not catch it: it has no use
        // for it) and caught it so that the app starts with the default.
        assert!(
            signal_set(child.0.id(), "SigCgt") & 1 != 0,
            "the agent does not catch SIGHUP"
        );
        assert_eq!(
            signal_set(after[0].parse().expect("the app's pid"), "SigIgn") & 1,
            0
        );
        // The agent itself still ignores a hangup in effect.
        let _ = Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.0.try_wait().expect("agent status").is_none(),
            "the agent died of SIGHUP"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("kill").arg(&after[0]).status();
}

/// One signal set of process `pid` (`SigIgn`, `SigCgt`… of `/proc/PID/status`; bit `n - 1`
/// for signal `n`).
fn signal_set(pid: u32, set: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(set)?.strip_prefix(':'))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {set} for process {pid}"))
}

#[test]
fn a_crashing_supervised_app_is_restarted_with_backoff_and_the_crashes_reach_the_server() {
    let (w, app) = World::with_app_at_v1();
    let srv = FleetServer::start(w.dir.path(), "srv", "1s");
    srv.add_app(&w.repo, &w.public);
    let runs = w.path("runs");
    let script = format!(
        "echo run >> '{}'; n=$(wc -l < '{}'); if [ $n -le 3 ]; then exit 3; fi; sleep 30",
        runs.display(),
        runs.display()
    );
    let start = Instant::now();
    let mut child = Killed(
        agent(&w, &app, &srv.url, &srv.secret_file)
            .args(["--install", "window=02:00-02:01", "--supervise", "--"])
            .args(["sh", "-c", &script])
            .env("PATCHKIT_AGENT_LOCAL_TIME", "12:00")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let count = || {
        std::fs::read_to_string(&runs)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_for("the fourth start", 30, || count() >= 4);
    // Restarted after 1, 2 and 4 s.
    assert!(
        start.elapsed() >= Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    wait_for("the crashes on the server", 30, || {
        srv.device(&device_id(&app))["state"]["supervisor"]["crash_count"] == 3
    });
    let d = srv.device(&device_id(&app));
    let crashes = d["state"]["supervisor"]["crashes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(crashes.len(), 3, "{d:#}");
    assert!(crashes.iter().all(|c| c["code"] == 3), "{d:#}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn on_offer_hook_decides_and_update_now_overrides_the_window() {
    let (w, app) = World::with_app_at_v1();
    let srv = FleetServer::start(w.dir.path(), "srv", "60s");
    srv.add_app(&w.repo, &w.public);
    // The hook declines (exit 2): nothing installed.
    let out = ok(agent(&w, &app, &srv.url, &srv.secret_file).args([
        "--once",
        "--install",
        "ask",
        "--on-offer",
        "exit 2",
    ]));
    assert!(has_event(&events(&out), "declined"), "{out}");
    assert_same_tree(&app, &w.releases[0]);
    // The hook sees the offer and accepts (exit 0).
    let out = ok(agent(&w, &app, &srv.url, &srv.secret_file).args([
        "--once",
        "--install",
        "ask",
        "--on-offer",
        "test \"$PATCHKIT_OFFER_VERSION\" = 2.0.0 && test \"$PATCHKIT_OFFER_INSTALLED\" = 1.0.0 && test \"$PATCHKIT_OFFER_BYTES\" -gt 0",
    ]));
    assert!(has_event(&events(&out), "installed"), "{out}");
    assert_same_tree(&app, &w.releases[1]);

    // Back to v1; outside the window only update-now installs.
    ok(cmd("patch-apply").args(["rollback", "--app-dir"]).arg(&app));
    assert_same_tree(&app, &w.releases[0]);
    let window = |c: &mut Command| {
        c.args(["--once", "--install", "window=02:00-02:01"])
            .env("PATCHKIT_AGENT_LOCAL_TIME", "12:00");
    };
    let mut c = agent(&w, &app, &srv.url, &srv.secret_file);
    window(&mut c);
    ok(&mut c);
    assert_same_tree(&app, &w.releases[0]);
    ok(&mut srv.admin(&["command", "--device", &device_id(&app), "update-now"]));
    let mut c = agent(&w, &app, &srv.url, &srv.secret_file);
    window(&mut c);
    let out = ok(&mut c);
    let ev = events(&out);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "command" && e["kind"] == "update-now" && e["outcome"] == "ok"),
        "{out}"
    );
    assert_same_tree(&app, &w.releases[1]);
}

/// A signed yank through the fleet: the server stops naming the yanked release, names the
/// newest one that is not yanked to a device running it although it is older, and the agent
/// installs it without `--allow-downgrade` because the yank is signed.
#[test]
fn a_yanked_release_is_left_through_the_fleet_without_allowing_downgrades() {
    let w = World::new(3);
    w.release_all(3);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let srv = FleetServer::start(w.dir.path(), "srv", "60s");
    srv.add_app(&w.repo, &w.public);
    ok(agent(&w, &app, &srv.url, &srv.secret_file).arg("--once"));
    assert_same_tree(&app, &w.releases[2]);

    ok(cmd("patch-create")
        .args(["yank", "--repo"])
        .arg(&w.repo)
        .args(["--version", "3.0.0", "--reason", "bad build", "--key"])
        .arg(&w.key));
    ok(&mut srv.admin(&["app", "refresh", "demo"]));
    let out = ok(agent(&w, &app, &srv.url, &srv.secret_file).arg("--once"));
    let ev = events(&out);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "installed" && e["version"] == "2.0.0"),
        "{out}"
    );
    assert_same_tree(&app, &w.releases[1]);
    let d = srv.device(&device_id(&app));
    assert_eq!(d["device"]["version"], "2.0.0", "{d:#}");

    // The updater, asked on its own, agrees: 2.0.0 is where this client belongs.
    let c = ok(w.apply_cmd("check", &app).arg("--json"));
    assert_eq!(last_json(&c)["latest"], "2.0.0", "{c}");
    assert_eq!(last_json(&c)["up_to_date"], true, "{c}");
}

/// Whether process `pid` runs (not a zombie).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

/// Starts the supervisor paused at test point `point`, waits until it is there, and returns
/// it (still paused).
fn supervise_until(c: &mut Command, point: &str) -> std::process::Child {
    let mut child = c
        .env("PATCHKIT_TEST_PAUSE", point)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("agent: {line}");
            let _ = tx.send(line);
        }
    });
    let want = format!("test pause: {point}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(&want) => return child,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the agent never reached the pause point {point}");
            }
        }
    }
}

/// A supervisor SIGKILLed at `point` of a cold patch, then started again: the app ends at
/// v2, byte-identical, running as a new process that reports v2; then a supervisor SIGKILLed
/// while the app runs leaves an orphan that the next supervisor stops before starting its own.
fn killed_supervisor_during_a_cold_patch_carries_on(point: &str) {
    let (d, repo, public) = supervised_world(true);
    let app = d.path().join("app");
    let v1 = d.path().join("v1");
    let v2 = d.path().join("v2");
    let status = d.path().join("status");
    let srv = FleetServer::start(d.path(), "srv", "1s");
    srv.add_app(&repo, &public);
    let read = || std::fs::read_to_string(&status).unwrap_or_default();
    let fields = || -> Vec<String> { read().split_whitespace().map(String::from).collect() };

    let mut first = supervise_until(
        &mut supervise_cmd(&app, &repo, &public, &srv, &status),
        point,
    );
    // The app ran at v1 and was stopped for the cold patch.
    let old = fields();
    assert_eq!(old.get(1).map(String::as_str), Some("1"), "{old:?}");
    assert!(!alive(&old[0]), "the app is stopped before the commit");
    let mid = tree_state(&app);
    if point.starts_with("commit-step") {
        assert!(
            mid != tree_state(&v1) && mid != tree_state(&v2),
            "paused in the middle of the commit: some files new, some old"
        );
    } else {
        assert_eq!(mid, tree_state(&v1), "nothing committed yet");
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");

    let mut second = supervise(&app, &repo, &public, &srv, &status);
    wait_for("the app at v2 after the restart", 60, || {
        read().split(' ').nth(1) == Some("2")
    });
    assert_same_tree(&app, &v2);
    let now = fields();
    assert_eq!(now[2], "bye");
    assert_ne!(now[0], old[0]);
    assert!(alive(&now[0]), "the new app process runs");
    assert!(
        !app.join(".patchkit/journal.json").exists() || {
            let j: Value = serde_json::from_slice(
                &std::fs::read(app.join(".patchkit/journal.json")).expect("journal"),
            )
            .expect("journal JSON");
            j["state"] != "committing"
        }
    );
    wait_for("the server to see v2", 30, || {
        srv.device(&device_id(&app))["device"]["version"] == "2.0.0"
    });

    // SIGKILL while the app runs: the app runs on, unsupervised, until the next supervisor
    // stops it and starts its own.
    second.kill().expect("SIGKILL");
    second.wait().expect("reaped");
    let orphan = now[0].clone();
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(&orphan), "an orphan is left (nothing could stop it)");
    std::fs::remove_file(&status).expect("status");
    let mut third = supervise(&app, &repo, &public, &srv, &status);
    wait_for("the next supervisor's app", 30, || !read().is_empty());
    let last = fields();
    assert!(!alive(&orphan), "the orphan was stopped");
    assert_ne!(last[0], orphan);
    assert_eq!(last[1], "2");
    assert!(alive(&last[0]));
    assert_same_tree(&app, &v2);
    let _ = third.kill();
    let _ = third.wait();
    let _ = Command::new("kill").arg(&last[0]).status();
}

#[test]
fn supervisor_sigkilled_while_the_app_is_stopped_for_a_cold_patch_carries_on() {
    killed_supervisor_during_a_cold_patch_carries_on("agent-app-stopped");
}

#[test]
fn supervisor_sigkilled_in_the_middle_of_a_cold_commit_carries_on() {
    killed_supervisor_during_a_cold_patch_carries_on("commit-step-1");
}

#[test]
fn a_crash_report_carries_the_crash_files_and_the_server_keeps_them_byte_identical() {
    let (w, app) = World::with_app_at_v1();
    let srv = FleetServer::start(w.dir.path(), "srv", "1s");
    srv.add_app(&w.repo, &w.public);
    let crashes = w.path("crashes");
    std::fs::create_dir_all(&crashes).expect("crash dir");
    // Written before the app ran: not this crash's.
    std::fs::write(crashes.join("old.core"), b"an earlier crash").expect("old");
    std::os::unix::fs::symlink("/etc/shadow", crashes.join("shadow")).expect("link");
    std::thread::sleep(Duration::from_millis(50));
    let runs = w.path("runs");
    // First run: writes a core-like file (64 KiB of varied bytes) and dies of SIGABRT.
    let script = format!(
        "echo run >> '{runs}'; n=$(wc -l < '{runs}'); if [ $n -le 1 ]; then \
         head -c 65536 /dev/urandom > '{dir}/core.$$'; kill -ABRT $$; fi; sleep 30",
        runs = runs.display(),
        dir = crashes.display()
    );
    let mut child = agent(&w, &app, &srv.url, &srv.secret_file)
        .arg("--crash-dir")
        .arg(&crashes)
        .args(["--install", "window=02:00-02:01", "--supervise", "--"])
        .args(["sh", "-c", &script])
        .env("PATCHKIT_AGENT_LOCAL_TIME", "12:00")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    let id = {
        wait_for("the agent's device id", 30, || {
            app.join(".patchkit/agent/device_id").exists()
        });
        device_id(&app)
    };
    let crash = || srv.device_once_enrolled(&id)["state"]["supervisor"]["crashes"][0].clone();
    wait_for("the crash file's upload on the server", 40, || {
        crash()["files"][0]["upload"].is_string()
    });
    let c = crash();
    assert_eq!(c["signal"], 6, "{c:#}");
    let files = c["files"].as_array().cloned().unwrap_or_default();
    assert_eq!(files.len(), 1, "only the file of this run: {c:#}");
    let f = &files[0];
    let name = f["name"].as_str().expect("name").to_string();
    assert!(name.starts_with("core."), "{c:#}");
    let local = std::fs::read(crashes.join(&name)).expect("core file");
    assert_eq!(f["size"], local.len());
    assert_eq!(f["blake3"], e2e_tests::fleet::blake3_hex(&local));
    assert!(
        c["skipped"].to_string().contains("symbolic link"),
        "the link is listed as skipped, not followed: {c:#}"
    );
    // The server lists it among the device's uploads, and gives it back byte-identical.
    let upload = f["upload"].as_str().expect("upload id");
    let listed: Value =
        serde_json::from_str(&ok(&mut srv.admin(&["uploads", "--device", &id, "--json"])))
            .expect("uploads JSON");
    let row = listed
        .as_array()
        .and_then(|l| l.iter().find(|u| u["id"] == upload))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(row["size"], local.len(), "{listed:#}");
    assert!(row["command"].is_null(), "{row:#}");
    assert!(
        row["name"].as_str().unwrap_or("").ends_with(&name),
        "{row:#}"
    );
    let got = w.path("got.core");
    ok(&mut srv.admin(&[
        "upload",
        "get",
        upload,
        "--out",
        got.to_str().expect("utf-8"),
    ]));
    assert_eq!(std::fs::read(&got).expect("download"), local);
    let _ = child.kill();
    let _ = child.wait();
}

/// `patch-apply apply --hand-over` of the tiny app's cold patch, `self-patcher` waiting for
/// `pid` at most `timeout` seconds.
fn hand_over(app: &Path, repo: &Path, public: &Path, pid: u32, timeout: u32) -> String {
    ok(Command::new(bin("patch-apply"))
        .arg("apply")
        .arg("--app-dir")
        .arg(app)
        .arg("--repo")
        .arg(repo)
        .arg("--public-key")
        .arg(public)
        .args(["--hand-over", "--wait-pid", &pid.to_string()])
        .args(["--wait-timeout", &format!("{timeout}s")]))
}

/// The device's update results on the server that go to `to`.
fn results_to(srv: &FleetServer, app: &Path, to: &str) -> Vec<Value> {
    srv.device(&device_id(app))["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["to"] == to)
        .collect()
}

#[test]
fn a_hand_over_to_self_patcher_is_reported_with_its_real_outcome_once_it_ends() {
    let (d, repo, public) = supervised_world(true);
    let srv = FleetServer::start(d.path(), "srv", "60s");
    srv.add_app(&repo, &public);
    // The agent only reports here: the window keeps it from installing by itself.
    let check_in = |app: &Path| {
        ok(Command::new(bin("patch-apply"))
            .arg("agent")
            .arg("--app-dir")
            .arg(app)
            .arg("--repo")
            .arg(&repo)
            .arg("--public-key")
            .arg(&public)
            .arg("--server")
            .arg(&srv.url)
            .arg("--enroll-secret-file")
            .arg(&srv.secret_file)
            .args(["--once", "--json", "--install", "window=02:00-02:01"])
            .env("PATCHKIT_AGENT_LOCAL_TIME", "12:00"))
    };

    // Success: handed over while the "app" runs, settled after self-patcher installed it.
    let app = d.path().join("app");
    let mut running = Command::new("sleep").arg("600").spawn().expect("sleep");
    hand_over(&app, &repo, &public, running.id(), 60);
    assert!(
        app.join(".patchkit/self-patch.json").exists(),
        "handed over"
    );
    check_in(&app);
    assert!(
        results_to(&srv, &app, "2.0.0").is_empty(),
        "not settled while pending"
    );
    let _ = running.kill();
    let _ = running.wait();
    wait_for("self-patcher to install 2.0.0", 30, || {
        !app.join(".patchkit/self-patch.json").exists()
    });
    assert_same_tree(&app, &d.path().join("v2"));
    check_in(&app);
    let r = results_to(&srv, &app, "2.0.0");
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["ok"], true, "{r:#?}");
    assert_eq!(r[0]["from"], "1.0.0", "{r:#?}");
    assert_eq!(r[0]["started_by"], "cli", "{r:#?}");
    assert!(r[0]["bytes"].as_u64().is_some_and(|b| b > 0), "{r:#?}");

    // Failure: self-patcher gives up waiting for an app that does not exit.
    let app2 = d.path().join("app2");
    copy_tree(&d.path().join("v1"), &app2);
    let mut stuck = Command::new("sleep").arg("600").spawn().expect("sleep");
    hand_over(&app2, &repo, &public, stuck.id(), 1);
    wait_for("self-patcher to give up", 30, || {
        app2.join(".patchkit")
            .join(formats::self_plan::TIMED_OUT_FILE)
            .exists()
    });
    check_in(&app2);
    let r = results_to(&srv, &app2, "2.0.0");
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["ok"], false, "{r:#?}");
    assert_eq!(r[0]["error_kind"], "precondition", "{r:#?}");
    assert!(
        r[0]["error_message"]
            .as_str()
            .unwrap_or("")
            .contains("gave up waiting"),
        "{r:#?}"
    );
    assert_same_tree(&app2, &d.path().join("v1"));
    let _ = stuck.kill();
    let _ = stuck.wait();
}
