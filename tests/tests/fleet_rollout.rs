//! Deciding what each device gets (issue 19): staged rollouts with automatic halt, pushes and
//! pins, end to end with a real `patch-server` on 127.0.0.1, the real admin CLI and real
//! agents (`patch-apply agent`) updating real app directories from a real signed repository.
//!
//! Device ids are chosen by the test (written to `.patchkit/agent/device_id` before the first
//! run) after the rollout exists, from the documented bucket rule (`docs/fleet.md`, "Rollout
//! selection"), so each percentage selects a known, non-trivial set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::agent_support::*;
use e2e_tests::*;
use serde_json::{json, Value};

/// The bucket of a device in a rollout, as `docs/fleet.md` defines it: the first 8 bytes of
/// BLAKE3(rollout_id ":" device_id), little-endian, modulo 10000.
fn bucket(rollout: &str, device: &str) -> u64 {
    let h = blake3::hash(format!("{rollout}:{device}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b) % 10_000
}

/// `n` device ids (32 hex digits, as the agent makes them) whose bucket in `rollout` is in
/// `lo..hi`, skipping those in `taken`.
fn ids_in(rollout: &str, lo: u64, hi: u64, n: usize, taken: &[String]) -> Vec<String> {
    (0u64..)
        .map(|i| format!("{:032x}", 0xd0_0000 + i))
        .filter(|d| !taken.contains(d) && (lo..hi).contains(&bucket(rollout, d)))
        .take(n)
        .collect()
}

/// A small world: v1 and v2 released, small files so twenty agents update quickly.
fn world() -> World {
    let w = World::with_sizes(2, 96 << 10, 32 << 10);
    w.release_all(2);
    w
}

/// An app dir at v1 whose agent will use `id` as its device id.
fn app_with_id(w: &World, id: &str) -> PathBuf {
    let app = w.path(&format!("app-{id}"));
    copy_tree(&w.releases[0], &app);
    let agent = app.join(".patchkit/agent");
    std::fs::create_dir_all(&agent).expect("agent dir");
    std::fs::write(agent.join("device_id"), id).expect("device id");
    app
}

/// `patch-apply agent --json` for `app` against `srv`.
fn agent(w: &World, app: &Path, srv: &FleetServer) -> Command {
    let mut c = w.apply_cmd("agent", app);
    c.arg("--server")
        .arg(&srv.url)
        .arg("--enroll-secret-file")
        .arg(&srv.secret_file)
        .arg("--json");
    c
}

/// One `--once` cycle of the agents of `apps`, in parallel; returns each one's stdout.
fn once_all(w: &World, srv: &FleetServer, apps: &[&PathBuf]) -> Vec<String> {
    let outs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = apps
            .iter()
            .map(|app| s.spawn(move || run(agent(w, app, srv).arg("--once"))))
            .collect();
        hs.into_iter()
            .map(|h| {
                let o = h.join().expect("agent thread");
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .collect()
    });
    outs
}

/// Whether `app` holds release `i` (0-based) exactly.
fn at(w: &World, app: &Path, i: usize) -> bool {
    tree_state(app) == tree_state(&w.releases[i])
}

/// The ids whose app dir holds v2.
fn on_v2(w: &World, apps: &[(String, PathBuf)]) -> Vec<String> {
    let mut v: Vec<String> = apps
        .iter()
        .filter(|(_, a)| at(w, a, 1))
        .map(|(id, _)| id.clone())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `rollout status --id ID --json`.
fn status(srv: &FleetServer, id: &str) -> Value {
    let out = ok(&mut srv.admin(&["rollout", "status", "--id", id, "--json"]));
    serde_json::from_str(&out).expect("status JSON")
}

/// Starts a rollout of 2.0.0 with `extra` options; returns its id.
fn start(srv: &FleetServer, extra: &[&str]) -> String {
    let mut c = srv.admin(&["rollout", "start"]);
    c.args(["--app", "demo", "--version", "2.0.0", "--json"])
        .args(extra);
    let v: Value = serde_json::from_str(&ok(&mut c)).expect("rollout JSON");
    assert_eq!(v["state"], "running", "{v:#}");
    v["id"].as_str().expect("id").to_string()
}

/// Makes a file the update to v2 replaces impossible to change (immutable for root, a
/// read-only directory otherwise); undone on drop.
struct Locked {
    undo: Vec<String>,
}

fn lock_update(w: &World, app: &Path) -> Locked {
    let old = tree_state(&w.releases[0]);
    let new = tree_state(&w.releases[1]);
    let victim = old
        .iter()
        .find(|(p, v)| v.starts_with("file") && new.get(*p).is_some_and(|n| n != *v))
        .map(|(p, _)| app.join(p))
        .expect("a file that changes");
    let root = run(Command::new("id").arg("-u")).stdout.starts_with(b"0\n");
    let (lock, undo) = if root {
        let p = victim.display().to_string();
        (
            vec!["chattr".to_string(), "+i".into(), p.clone()],
            vec!["chattr".to_string(), "-i".into(), p],
        )
    } else {
        let d = victim.parent().expect("parent").display().to_string();
        (
            vec!["chmod".to_string(), "a-w".into(), d.clone()],
            vec!["chmod".to_string(), "u+w".into(), d],
        )
    };
    let st = Command::new(&lock[0])
        .args(&lock[1..])
        .status()
        .expect("lock");
    assert!(st.success(), "{lock:?} failed");
    Locked { undo }
}

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = Command::new(&self.undo[0])
            .args(&self.undo[1..])
            .stderr(Stdio::null())
            .status();
    }
}

/// The audit log of a server on SQLite, one `actor action target` line per entry, read
/// straight from its database file.
fn audit_log(srv: &FleetServer) -> String {
    ok(Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print('\\n'.join(a+' '+b+' '+t for a,b,t in c.execute( \
             'SELECT actor, action, target FROM audit_log ORDER BY at_ms, rowid')))",
        )
        .arg(srv.data.join("fleet.db")))
}

#[test]
fn a_rollout_offers_exactly_the_hashed_devices_raising_only_adds_and_failures_halt_it() {
    let w = world();
    let srv = FleetServer::start(w.dir.path(), "srv", "1s");
    srv.add_app(&w.repo, &w.public);
    let rid = start(
        &srv,
        &[
            "--percent",
            "25",
            "--max-failure-rate",
            "0.25",
            "--min-devices",
            "8",
            "--timeout",
            "1h",
        ],
    );
    // 5 devices in the first 25 %, 5 more between 25 and 50 %, 10 above 50 %.
    let a = ids_in(&rid, 0, 2500, 5, &[]);
    let b = ids_in(&rid, 2500, 5000, 5, &a);
    let c = ids_in(&rid, 5000, 10_000, 10, &[a.clone(), b.clone()].concat());
    let all: Vec<(String, PathBuf)> = [a.clone(), b.clone(), c.clone()]
        .concat()
        .into_iter()
        .map(|id| {
            let app = app_with_id(&w, &id);
            (id, app)
        })
        .collect();
    assert_eq!(all.len(), 20);
    let app_of = |id: &str| &all.iter().find(|(i, _)| i == id).expect("app").1;

    // 25 %: exactly the devices whose bucket is below 2500 update; the others stay on v1,
    // although v2 is the newest release of their channel (the rollout holds it back).
    let apps: Vec<&PathBuf> = all.iter().map(|(_, a)| a).collect();
    for o in once_all(&w, &srv, &apps) {
        assert!(o.contains("\"checked_in\""), "{o}");
    }
    assert_eq!(on_v2(&w, &all), sorted(a.clone()));
    assert!(all
        .iter()
        .filter(|(id, _)| !a.contains(id))
        .all(|(_, p)| at(&w, p, 0)));
    let st = status(&srv, &rid);
    let r = &st["rollout"];
    assert_eq!(
        (&r["offered"], &r["succeeded"], &r["failed"], &r["pending"]),
        (&json!(5), &json!(5), &json!(0), &json!(0)),
        "{st:#}"
    );
    let offered: Vec<String> = st["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["device"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(sorted(offered), sorted(a.clone()));
    // The server shows each device on what it runs.
    let d = srv.device(&a[0]);
    assert_eq!(d["device"]["version"], "2.0.0", "{d:#}");

    // Pin one device of the next 25 % at v1; make three others fail to install.
    let pinned = b[0].clone();
    let failing = [b[1].clone(), b[2].clone(), b[3].clone()];
    let good = b[4].clone();
    let out = ok(&mut srv.admin(&[
        "pin",
        "--app",
        "demo",
        "--version",
        "1.0.0",
        "--device",
        &pinned,
    ]));
    assert!(out.contains("pinned"), "{out}");
    let locks: Vec<Locked> = failing
        .iter()
        .map(|id| lock_update(&w, app_of(id)))
        .collect();

    // 50 %: only additions. The good device first, then the failing ones.
    ok(&mut srv.admin(&["rollout", "set", "--app", "demo", "50"]));
    once_all(&w, &srv, &[app_of(&good)]);
    assert!(at(&w, app_of(&good), 1));
    let outs = once_all(
        &w,
        &srv,
        &failing.iter().map(|id| app_of(id)).collect::<Vec<_>>(),
    );
    for o in &outs {
        assert!(o.contains("update_failed"), "{o}");
    }
    // Past the threshold (3 failed of 9 finished > 25 %, at least 8 finished): halted by
    // itself, with a reason naming the numbers.
    let st = status(&srv, &rid);
    let r = &st["rollout"];
    assert_eq!(r["state"], "halted", "{st:#}");
    assert_eq!(
        (&r["offered"], &r["succeeded"], &r["failed"]),
        (&json!(9), &json!(6), &json!(3)),
        "{st:#}"
    );
    let reason = r["halt_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("3/9") && reason.contains("25.0%"),
        "{reason}"
    );
    let log = audit_log(&srv);
    assert!(
        log.lines()
            .any(|l| l.starts_with("server rollout.halt") && l.contains(&rid)),
        "{log}"
    );
    let text = ok(&mut srv.admin(&["rollout", "status", "--app", "demo"]));
    assert!(text.contains("halted") && text.contains("3/9"), "{text}");
    // The automatic halt opened one rollout-halted alert, with the reason as its detail.
    let alerts: serde_json::Value =
        serde_json::from_str(&ok(&mut srv.admin(&["alerts", "list", "--open", "--json"])))
            .expect("alerts list --json");
    let halted: Vec<_> = alerts
        .as_array()
        .expect("alerts array")
        .iter()
        .filter(|a| a["condition"] == "rollout-halted" && a["rollout"] == rid.as_str())
        .collect();
    assert_eq!(halted.len(), 1, "{alerts:#}");
    assert!(
        halted[0]["detail"].as_str().unwrap_or("").contains("3/9"),
        "{alerts:#}"
    );

    // The pinned device, selected by 50 %, stays on v1 (pin > rollout) and was never offered.
    let outs = once_all(&w, &srv, &[app_of(&pinned)]);
    assert!(at(&w, app_of(&pinned), 0), "{outs:?}");
    assert!(outs[0].contains("\"checked_in\""), "{}", outs[0]);

    // After the halt no further device is offered v2, even at 100 % and with the failing
    // devices fixed; the devices already on v2 stay.
    drop(locks);
    ok(&mut srv.admin(&["rollout", "set", "--id", &rid, "100"]));
    once_all(&w, &srv, &apps);
    let mut expected = a.clone();
    expected.push(good.clone());
    assert_eq!(on_v2(&w, &all), sorted(expected));
    let st = status(&srv, &rid);
    assert_eq!(st["rollout"]["offered"], 9, "{st:#}");
    assert_eq!(st["rollout"]["state"], "halted", "{st:#}");
    // Resuming is refused while the failures are past the threshold.
    let err = fails(&mut srv.admin(&["rollout", "resume", "--app", "demo"]));
    assert!(err.contains("409") && err.contains("3/9"), "{err}");
}

#[test]
fn an_agent_killed_after_the_offer_counts_failed_after_the_timeout_without_any_checkin() {
    let w = world();
    let srv = FleetServer::start(w.dir.path(), "srv", "1s");
    srv.add_app(&w.repo, &w.public);
    let rid = start(
        &srv,
        &[
            "--percent",
            "100",
            "--timeout",
            "3s",
            "--min-devices",
            "2",
            "--max-failure-rate",
            "0.6",
        ],
    );
    let silent = ids_in(&rid, 0, 10_000, 1, &[])[0].clone();
    let other = ids_in(&rid, 0, 10_000, 1, std::slice::from_ref(&silent))[0].clone();
    let silent_app = app_with_id(&w, &silent);
    let other_app = app_with_id(&w, &other);

    // A long-running agent that defers the offer (its user says "later"), then dies for good.
    let mut child: Child = agent(&w, &silent_app, &srv)
        .args(["--install", "ask", "--on-offer", "exit 3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let t0 = Instant::now();
    loop {
        let st = status(&srv, &rid);
        if st["rollout"]["offered"] == 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never offered: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(at(&w, &silent_app, 0));
    let st = status(&srv, &rid);
    assert_eq!(st["rollout"]["pending"], 1, "{st:#}");
    assert_eq!(st["rollout"]["failed"], 0, "{st:#}");

    // Nobody checks in; past the 3 s timeout the server's background evaluation counts it
    // failed (the listing itself evaluates nothing).
    std::thread::sleep(Duration::from_secs(5));
    let list = ok(&mut srv.admin(&["rollout", "status", "--json"]));
    let list: Value = serde_json::from_str(&list).expect("JSON");
    let r = &list[0];
    assert_eq!(
        (&r["offered"], &r["failed"], &r["timed_out"], &r["pending"]),
        (&json!(1), &json!(1), &json!(1), &json!(0)),
        "{list:#}"
    );
    let parts = status(&srv, &rid);
    assert_eq!(parts["devices"][0]["result"], "timeout", "{parts:#}");
    // One failure of one finished is below min-devices 2: still running; another device
    // updates, 1 of 2 failed = 50 % <= 60 %: still running.
    assert_eq!(r["state"], "running");
    once_all(&w, &srv, &[&other_app]);
    assert!(at(&w, &other_app, 1));
    let st = status(&srv, &rid);
    assert_eq!(
        (
            &st["rollout"]["succeeded"],
            &st["rollout"]["failed"],
            &st["rollout"]["state"]
        ),
        (&json!(1), &json!(1), &json!("running")),
        "{st:#}"
    );
}

#[test]
fn push_to_a_tag_and_a_pin_win_and_bad_requests_name_the_field() {
    let w = world();
    let srv = FleetServer::start(w.dir.path(), "srv", "1s");
    srv.add_app(&w.repo, &w.public);
    // A rollout at 0 % holds v2 back from everyone.
    let rid = start(&srv, &["--percent", "0"]);
    let ids: Vec<String> = (0..5).map(|i| format!("{:032x}", 0xab_0000 + i)).collect();
    let all: Vec<(String, PathBuf)> = ids
        .iter()
        .map(|id| (id.clone(), app_with_id(&w, id)))
        .collect();
    let apps: Vec<&PathBuf> = all.iter().map(|(_, a)| a).collect();
    once_all(&w, &srv, &apps);
    assert_eq!(on_v2(&w, &all), Vec::<String>::new());

    // Push v2 to the devices tagged canary: they move, the others stay.
    for id in &ids[..2] {
        ok(&mut srv.admin(&["tag", id, "canary"]));
    }
    let out = ok(&mut srv.admin(&[
        "push",
        "--app",
        "demo",
        "--version",
        "2.0.0",
        "--tag",
        "canary",
    ]));
    assert!(out.contains("pushed"), "{out}");
    once_all(&w, &srv, &apps);
    assert_eq!(on_v2(&w, &all), sorted(ids[..2].to_vec()));

    // Pin one device at v1, then finish the rollout: v2 is the channel default, the rest move,
    // the pinned devices stay; unpinned, they move too.
    ok(&mut srv.admin(&[
        "pin",
        "--app",
        "demo",
        "--version",
        "1.0.0",
        "--device",
        &ids[4],
    ]));
    // And a tag: every device with it is held too.
    ok(&mut srv.admin(&["tag", &ids[3], "frozen"]));
    ok(&mut srv.admin(&[
        "pin",
        "--app",
        "demo",
        "--version",
        "1.0.0",
        "--tag",
        "frozen",
    ]));
    let pins = ok(&mut srv.admin(&["pins", "--app", "demo", "--json"]));
    assert!(pins.contains(&ids[4]) && pins.contains("frozen"), "{pins}");
    // Halted by hand with a reason, resumed, then finished.
    let out = ok(&mut srv.admin(&["rollout", "halt", "--app", "demo", "--reason", "looks bad"]));
    assert!(out.contains("halted") && out.contains("looks bad"), "{out}");
    let err = fails(&mut srv.admin(&["rollout", "halt", "--id", &rid]));
    assert!(err.contains("409"), "{err}");
    let out = ok(&mut srv.admin(&["rollout", "resume", "--id", &rid]));
    assert!(out.contains("running"), "{out}");
    // The hand-made halt opened an alert; resuming resolved it.
    let alerts = ok(&mut srv.admin(&["alerts", "list", "--json"]));
    let alerts: serde_json::Value = serde_json::from_str(&alerts).expect("alerts list --json");
    let mine: Vec<_> = alerts
        .as_array()
        .expect("alerts array")
        .iter()
        .filter(|a| a["condition"] == "rollout-halted" && a["rollout"] == rid.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{alerts:#}");
    assert_eq!(mine[0]["state"], "resolved", "{alerts:#}");
    assert!(
        mine[0]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("looks bad"),
        "{alerts:#}"
    );
    ok(&mut srv.admin(&["rollout", "finish", "--id", &rid]));
    let err = fails(&mut srv.admin(&["rollout", "set", "--app", "demo", "10"]));
    assert!(err.contains("no running or halted rollout"), "{err}");
    once_all(&w, &srv, &apps);
    assert_eq!(on_v2(&w, &all), sorted(ids[..3].to_vec()));
    assert!(at(&w, &all[3].1, 0) && at(&w, &all[4].1, 0));
    ok(&mut srv.admin(&["unpin", "--app", "demo", "--device", &ids[4]]));
    ok(&mut srv.admin(&["unpin", "--app", "demo", "--tag", "frozen"]));
    let err = fails(&mut srv.admin(&["unpin", "--app", "demo", "--tag", "frozen"]));
    assert!(err.contains("404"), "{err}");
    once_all(&w, &srv, &[&all[3].1, &all[4].1]);
    assert!(at(&w, &all[3].1, 1) && at(&w, &all[4].1, 1));

    // Clear errors: an unknown version is named with the known ones; bounds name the field.
    let err = fails(&mut srv.admin(&[
        "rollout",
        "start",
        "--app",
        "demo",
        "--version",
        "9.9.9",
        "--percent",
        "5",
    ]));
    assert!(
        err.contains("9.9.9") && err.contains("1.0.0, 2.0.0") && err.contains("field version"),
        "{err}"
    );
    let err = fails(&mut srv.admin(&["push", "--app", "demo", "--version", "7.0.0", "--all"]));
    assert!(err.contains("7.0.0") && err.contains("known"), "{err}");
    let err = fails(&mut srv.admin(&[
        "pin",
        "--app",
        "demo",
        "--version",
        "1.0.0",
        "--device",
        "nosuchdevice",
    ]));
    assert!(err.contains("404"), "{err}");
    let token = std::fs::read_to_string(&srv.token).expect("token");
    let token = token.trim();
    let post = |path: &str, tok: &str, body: Value| -> (u16, Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}{path}", srv.url))
            .bearer_auth(tok)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("request");
        let st = r.status().as_u16();
        (
            st,
            serde_json::from_str(&r.text().unwrap_or_default()).unwrap_or(Value::Null),
        )
    };
    for (body, field) in [
        (
            json!({"app": "demo", "version": "2.0.0", "percent": 101}),
            "percent",
        ),
        (
            json!({"app": "demo", "version": "2.0.0", "percent": 5, "schedule": "5,x@1d"}),
            "schedule",
        ),
        (
            json!({"app": "demo", "version": "2.0.0", "percent": 5, "max_failure_rate": 2.0}),
            "max_failure_rate",
        ),
        (
            json!({"app": "demo", "version": "2.0.0", "percent": 5, "timeout_secs": 0}),
            "timeout_secs",
        ),
        (
            json!({"app": "demo", "version": "2.0.0", "percent": 5, "bogus": 1}),
            "body",
        ),
        (
            json!({"app": "../x", "version": "2.0.0", "percent": 5}),
            "app",
        ),
    ] {
        let (st, b) = post("/v1/admin/rollouts", token, body.clone());
        assert_eq!(
            (st, b["field"].as_str()),
            (400, Some(field)),
            "{body} -> {b}"
        );
    }
    for body in [
        json!({"app": "demo", "version": "2.0.0"}),
        json!({"app": "demo", "version": "2.0.0", "device": ids[0], "tag": "canary"}),
    ] {
        let (st, b) = post("/v1/admin/pins", token, body.clone());
        assert_eq!(
            (st, b["field"].as_str()),
            (400, Some("device")),
            "{body} -> {b}"
        );
    }
    let (st, b) = post(
        "/v1/admin/rollouts/nosuch/percent",
        token,
        json!({"percent": 5}),
    );
    assert_eq!(st, 404, "{b}");

    // Scopes: read sees, only admin changes (ci neither).
    let mk = |scope: &str| {
        ok(Command::new(bin("patch-server"))
            .args(["token", "create", "--scope", scope, "--data"])
            .arg(&srv.data))
        .trim()
        .to_string()
    };
    let (read, ci) = (mk("read"), mk("ci"));
    for tok in [&read, &ci] {
        for (path, body) in [
            (
                "/v1/admin/rollouts",
                json!({"app": "demo", "version": "2.0.0", "percent": 5}),
            ),
            (
                "/v1/admin/pins",
                json!({"app": "demo", "version": "1.0.0", "tag": "t"}),
            ),
            ("/v1/admin/pins/remove", json!({"app": "demo", "tag": "t"})),
            (
                "/v1/admin/pushes",
                json!({"app": "demo", "version": "2.0.0", "all": true}),
            ),
            (format!("/v1/admin/rollouts/{rid}/halt").as_str(), json!({})),
            (
                format!("/v1/admin/rollouts/{rid}/percent").as_str(),
                json!({"percent": 5}),
            ),
        ] {
            assert_eq!(post(path, tok, body).0, 403, "{path}");
        }
    }
    for path in [
        "/v1/admin/rollouts?app=demo",
        "/v1/admin/pins",
        "/v1/admin/pushes",
    ] {
        let r = reqwest::blocking::Client::new()
            .get(format!("{}{path}", srv.url))
            .bearer_auth(&read)
            .send()
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let pushes = reqwest::blocking::Client::new()
        .get(format!("{}/v1/admin/pushes?app=demo", srv.url))
        .bearer_auth(&read)
        .send()
        .expect("get")
        .text()
        .expect("body");
    let pushes: Value = serde_json::from_str(&pushes).expect("JSON");
    assert_eq!(pushes[0]["target"], "canary", "{pushes:#}");

    // Every action is in the audit log, with its actor (read straight from the SQLite file).
    let out = audit_log(&srv);
    for action in [
        "rollout.start",
        "push demo/tag:canary",
        "pin.set demo/device:",
        "rollout.halt",
        "rollout.resume",
        "rollout.finish",
        "pin.remove demo/device:",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("admin:") && l.contains(action)),
            "{action} not in the audit log:\n{out}"
        );
    }
}

/// Schedule, rate cap and yank against one backend, with protocol-level devices (real HTTP,
/// the real server and CLI) so the timing is exact.
fn schedule_rate_cap_and_yank(backend: &str) {
    use e2e_tests::fleet::{checkin_body, Backend, Device, Server};
    let backend = Backend::start(backend);
    let w = World::with_sizes(2, 64 << 10, 32 << 10);
    w.release_all(2);
    let s = Server::start(&w.path("server"), &backend, &["--poll-interval", "1s"]);
    demo_app(&w, &s);
    let v = s.admin_json(&[
        "rollout",
        "start",
        "--app",
        "demo",
        "--version",
        "2.0.0",
        "--percent",
        "0",
        "--schedule",
        "50,100@2s",
        "--max-per-period",
        "2",
        "--period",
        "1h",
        "--min-devices",
        "100",
    ]);
    let rid = v["id"].as_str().expect("id").to_string();
    let inside = ids_in(&rid, 0, 5000, 3, &[]);
    let outside = ids_in(&rid, 5000, 10_000, 1, &[]);
    let mut devs: Vec<Device> = inside
        .iter()
        .chain(&outside)
        .map(|id| Device::enroll(&s.url, "demo", id, Some(SECRET)))
        .collect();
    let directive = |d: &mut Device| {
        d.etag = None; // a full answer each time, not 304
        let a = d.checkin(&checkin_body("1.0.0", None));
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body["directive"].clone()
    };
    // 0 %: v2 is held back, everyone is told to stay on v1.
    for d in &mut devs {
        assert_eq!(directive(d)["version"], "1.0.0");
    }
    let status = |s: &Server| {
        s.admin_json(&["rollout", "status", "--app", "demo"])
            .as_array()
            .and_then(|a| a.first().cloned())
            .expect("one rollout")
    };
    let wait_for = |what: &dyn Fn(&Value) -> bool| {
        let t0 = Instant::now();
        loop {
            let r = status(&s);
            if what(&r) {
                return r;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{r:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // The schedule raises it to 50 % after 2 s, by itself.
    wait_for(&|r| r["percent"] == 50);
    // Rate cap 2 per hour: the first two selected devices are offered v2, the third waits.
    for d in devs.iter_mut().take(2) {
        let got = directive(d);
        assert_eq!(
            (&got["version"], &got["reason"], &got["rollout"]),
            (&json!("2.0.0"), &json!("rollout"), &json!(rid)),
            "{got}"
        );
    }
    assert_eq!(directive(&mut devs[2])["version"], "1.0.0");
    // One offered before keeps its offer although the cap is reached.
    assert_eq!(directive(&mut devs[0])["version"], "2.0.0");
    let r = wait_for(&|r| r["percent"] == 100);
    assert_eq!(r["offered"], 2, "{r:#}");
    assert_eq!(directive(&mut devs[3])["version"], "1.0.0");
    // A success is counted once, from the result the device reports.
    let mut body = checkin_body("2.0.0", None);
    body["results"] = json!([{"seq": 1, "finished_at": "2026-11-25T10:00:00Z", "from": "1.0.0",
        "to": "2.0.0", "method": "incremental", "bytes": 10, "seconds": 0.1, "ok": true}]);
    assert_eq!(devs[0].checkin(&body).status, 200);
    // Sent again (as after a lost answer): not counted twice.
    devs[0].etag = None;
    assert_eq!(devs[0].checkin(&body).status, 200);
    let r = status(&s);
    assert_eq!(
        (&r["succeeded"], &r["pending"]),
        (&json!(1), &json!(1)),
        "{r:#}"
    );

    // Yanking v2 in signed metadata halts the rollout (reason shown) and nothing names it.
    ok(cmd("patch-create")
        .args(["yank", "--repo"])
        .arg(&w.repo)
        .args(["--version", "2.0.0", "--reason", "corrupts saves", "--key"])
        .arg(&w.key));
    s.admin(&["app", "refresh", "demo"]);
    let r = wait_for(&|r| r["state"] == "halted");
    assert!(
        r["halt_reason"]
            .as_str()
            .unwrap_or("")
            .contains("yanked: corrupts saves"),
        "{r:#}"
    );
    assert_eq!(directive(&mut devs[1])["version"], "1.0.0");
    let out = run(s.cli().args(["rollout", "resume", "--id", &rid]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("yanked"), "{err}");
    let out = run(s.cli().args([
        "pin",
        "--app",
        "demo",
        "--version",
        "2.0.0",
        "--device",
        &inside[0],
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("yanked"), "{err}");
}

mod sqlite {
    #[test]
    fn schedule_rate_cap_and_yank() {
        super::schedule_rate_cap_and_yank("sqlite")
    }
}

mod postgres {
    #[test]
    fn schedule_rate_cap_and_yank() {
        super::schedule_rate_cap_and_yank("postgres")
    }

    #[test]
    fn the_rate_cap_holds_across_two_instances() {
        super::rate_cap_across_instances()
    }
}

/// An app `demo` with v1 and v2 released, on `s`, enrolling with [`SECRET`].
fn demo_app(w: &World, s: &e2e_tests::fleet::Server) {
    let secret = w.path("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let (repo, public) = (w.repo.display().to_string(), w.public.display().to_string());
    s.admin(&[
        "app",
        "add",
        "demo",
        "--repo",
        &repo,
        "--public-key",
        &public,
        "--enroll-secret-file",
        &secret.display().to_string(),
    ]);
}

/// Two instances on one PostgreSQL database, a rollout at 100 % capped at 3 offers per hour,
/// and 16 selected devices checking in at the same moment, alternating between the
/// instances, three rounds: exactly 3 devices are ever told 2.0.0, and the rollout counts 3
/// offers. (Before the offer locked the rollout's row, each instance counted the other's
/// offers only once committed, and the cap was exceeded by the check-ins in flight.)
fn rate_cap_across_instances() {
    use e2e_tests::fleet::{checkin_body, Backend, Device, Server};
    let backend = Backend::start("postgres");
    let w = World::with_sizes(2, 64 << 10, 32 << 10);
    w.release_all(2);
    let s1 = Server::start(&w.path("server1"), &backend, &[]);
    let s2 = Server::start_with_token(&w.path("server2"), &backend, &[], Some(&s1.admin_token));
    demo_app(&w, &s1);
    let v = s1.admin_json(&[
        "rollout",
        "start",
        "--app",
        "demo",
        "--version",
        "2.0.0",
        "--percent",
        "100",
        "--max-per-period",
        "3",
        "--period",
        "1h",
        "--min-devices",
        "100",
    ]);
    let rid = v["id"].as_str().expect("id").to_string();
    let devs: Vec<Device> = (0..16)
        .map(|i| {
            let url = if i % 2 == 0 { &s1.url } else { &s2.url };
            Device::enroll(url, "demo", &format!("{:032x}", 0xcab0 + i), Some(SECRET))
        })
        .collect();
    let told_v2 = std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _round in 0..3 {
        let gate = std::sync::Barrier::new(devs.len());
        std::thread::scope(|sc| {
            for d in &devs {
                let (gate, told_v2) = (&gate, &told_v2);
                let mut d = Device::from_token(&d.url, &d.id, &d.token);
                sc.spawn(move || {
                    gate.wait();
                    let a = d.checkin(&checkin_body("1.0.0", None));
                    assert_eq!(a.status, 200, "{}: {:?}", d.id, a.body);
                    if a.body["directive"]["version"] == "2.0.0" {
                        told_v2.lock().expect("lock").insert(d.id.clone());
                    }
                });
            }
        });
    }
    let told_v2 = told_v2.into_inner().expect("lock");
    let r = s2.admin_json(&["rollout", "status", "--id", &rid]);
    assert_eq!(
        (told_v2.len(), &r["rollout"]["offered"]),
        (3, &json!(3)),
        "devices told 2.0.0: {told_v2:?}; {r:#}"
    );
    let parts: Vec<&str> = r["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|p| p["device"].as_str())
        .collect();
    assert_eq!(
        parts,
        told_v2.iter().map(String::as_str).collect::<Vec<_>>(),
        "{r:#}"
    );
}

/// A device counted failed by the timeout that reports its outcome later is counted as it
/// went: a late success moves it from failed (and timed out) to succeeded, a late failure
/// stays failed but is no longer "timed out". The halt the timeout caused stays until
/// `resume`, which the corrected counts then allow.
#[test]
fn an_outcome_after_the_timeout_corrects_the_counts() {
    use e2e_tests::fleet::{checkin_body, Backend, Device, Server};
    let backend = Backend::start("sqlite");
    let w = World::with_sizes(2, 64 << 10, 32 << 10);
    w.release_all(2);
    let s = Server::start(&w.path("server"), &backend, &["--poll-interval", "1s"]);
    demo_app(&w, &s);
    let v = s.admin_json(&[
        "rollout",
        "start",
        "--app",
        "demo",
        "--version",
        "2.0.0",
        "--percent",
        "100",
        "--timeout",
        "1s",
        "--min-devices",
        "2",
        "--max-failure-rate",
        "0.5",
    ]);
    let rid = v["id"].as_str().expect("id").to_string();
    let mut slow = Device::enroll(&s.url, "demo", &format!("{:032x}", 0x510), Some(SECRET));
    let mut broken = Device::enroll(&s.url, "demo", &format!("{:032x}", 0x511), Some(SECRET));
    for d in [&mut slow, &mut broken] {
        let a = d.checkin(&checkin_body("1.0.0", None));
        assert_eq!(a.body["directive"]["version"], "2.0.0", "{:?}", a.body);
    }
    let counts = |s: &Server| {
        let r = s.admin_json(&["rollout", "status", "--id", &rid]);
        let r = &r["rollout"];
        (
            r["state"].as_str().unwrap_or("").to_string(),
            [
                &r["succeeded"],
                &r["failed"],
                &r["timed_out"],
                &r["pending"],
            ]
            .map(|v| v.as_i64().unwrap_or(-1)),
        )
    };
    // Both stay silent past the 1 s timeout: 2 of 2 failed, over 50 %: halted by itself.
    let t0 = Instant::now();
    while counts(&s).0 != "halted" {
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", counts(&s));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(counts(&s).1, [0, 2, 2, 0]);
    let out = run(s.cli().args(["rollout", "resume", "--id", &rid]));
    assert!(!out.status.success(), "resumed past the threshold");

    // The slow one finished after all: reported as installed (it lost its result).
    slow.etag = None;
    assert_eq!(slow.checkin(&checkin_body("2.0.0", None)).status, 200);
    assert_eq!(counts(&s), ("halted".to_string(), [1, 1, 1, 0]));
    // The broken one reports its failure: still failed, no longer unknown.
    let mut body = checkin_body("1.0.0", None);
    body["results"] = json!([{"seq": 1, "finished_at": "2026-11-25T10:00:00Z", "from": "1.0.0",
        "to": "2.0.0", "method": "incremental", "bytes": 10, "seconds": 0.1, "ok": false,
        "error_kind": "disk", "error_message": "no space left"}]);
    broken.etag = None;
    assert_eq!(broken.checkin(&body).status, 200);
    assert_eq!(counts(&s), ("halted".to_string(), [1, 1, 0, 0]));
    // Settled once: the same reports again change nothing.
    slow.etag = None;
    slow.checkin(&checkin_body("2.0.0", None));
    broken.etag = None;
    broken.checkin(&body);
    assert_eq!(counts(&s), ("halted".to_string(), [1, 1, 0, 0]));
    // 1 of 2 = 50 % is within the threshold now: resume is allowed.
    s.admin(&["rollout", "resume", "--id", &rid]);
    assert_eq!(counts(&s).0, "running");
}

/// Pushes expire and can be removed: a push that expired, or was removed, no longer moves its
/// devices; one that stands does; `pushes` lists each with its expiry; removing what is not
/// there is a 404; an expiry out of bounds names the field.
#[test]
fn a_push_expires_or_is_removed_and_then_moves_no_one() {
    let w = world();
    let srv = FleetServer::start(w.dir.path(), "srv", "1s");
    srv.add_app(&w.repo, &w.public);
    // A rollout at 0 % holds v2 back from everyone.
    start(&srv, &["--percent", "0"]);
    let ids: Vec<String> = (0..3).map(|i| format!("{:032x}", 0xcd_0000 + i)).collect();
    let all: Vec<(String, PathBuf)> = ids
        .iter()
        .map(|id| (id.clone(), app_with_id(&w, id)))
        .collect();
    let apps: Vec<&PathBuf> = all.iter().map(|(_, a)| a).collect();
    once_all(&w, &srv, &apps);
    let push = |extra: &[&str]| {
        let mut args = vec!["push", "--app", "demo", "--version", "2.0.0"];
        args.extend_from_slice(extra);
        ok(&mut srv.admin(&args))
    };
    // Device 0: a push that lasts one second, and lapses before the device polls again.
    let out = push(&["--device", &ids[0], "--expires-in", "1s"]);
    assert!(out.contains("until"), "{out}");
    // Device 1 (by its tag): a push removed before the device polls again.
    ok(&mut srv.admin(&["tag", &ids[1], "beta"]));
    push(&["--tag", "beta"]);
    // Device 2: a push that stands.
    push(&["--device", &ids[2], "--expires-in", "1h"]);
    let listed: Value =
        serde_json::from_str(&ok(&mut srv.admin(&["pushes", "--app", "demo", "--json"])))
            .expect("pushes --json");
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let of = |target: &str| {
        listed
            .iter()
            .find(|p| p["target"] == target)
            .unwrap_or_else(|| panic!("no push to {target}: {listed:?}"))
    };
    assert!(of(&ids[0])["expires_ms"].is_i64());
    assert!(of("beta")["expires_ms"].is_null());
    let out = ok(&mut srv.admin(&["unpush", "--app", "demo", "--tag", "beta"]));
    assert!(out.contains("1 push(es) removed"), "{out}");
    let err = fails(&mut srv.admin(&["unpush", "--app", "demo", "--tag", "beta"]));
    assert!(err.contains("404") && err.contains("no push"), "{err}");
    std::thread::sleep(Duration::from_millis(1500));
    once_all(&w, &srv, &apps);
    assert_eq!(on_v2(&w, &all), vec![ids[2].clone()]);
    // The lapsed push is still listed (with its expiry) until removed.
    let out = ok(&mut srv.admin(&["pushes", "--app", "demo"]));
    assert!(out.contains("expires"), "{out}");
    let out = ok(&mut srv.admin(&["unpush", "--app", "demo", "--device", &ids[0]]));
    assert!(out.contains("1 push(es) removed"), "{out}");
    // Bounds: at most a year; the error names the field.
    let err = fails(&mut srv.admin(&[
        "push",
        "--app",
        "demo",
        "--version",
        "2.0.0",
        "--all",
        "--expires-in",
        "400d",
    ]));
    assert!(err.contains("expires_in_secs"), "{err}");
    assert!(audit_log(&srv).contains("push.remove"));
}
