//! `patch-server` end to end: the real binary on 127.0.0.1, simulated devices over real HTTP,
//! the admin CLI, and a real signed repository made by `patch-create`. Every test runs against
//! SQLite and against a throwaway PostgreSQL cluster (`e2e_tests::pg`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e_tests::agent_support::FakeServer;
use e2e_tests::fleet::{blake3_hex, checkin_body, post_raw, Backend, Device, Server};
use e2e_tests::World;
use serde_json::{json, Value};

const SECRET: &str = "correct horse battery staple";

/// A small signed repository with releases 1.0.0 and 2.0.0, and a beta 3.0.0-beta.1.
fn world() -> World {
    let w = World::with_sizes(3, 64 << 10, 32 << 10);
    w.release(1, &[]);
    w.release(2, &[]);
    w
}

/// A server with the app `game` (enrollment secret) and `kiosk` (approval) registered.
fn server_with_apps(w: &World, backend: &Backend, extra: &[&str]) -> Server {
    let s = Server::start(&w.path("server"), backend, extra);
    let secret = w.path("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let repo = w.repo.display().to_string();
    let public = w.public.display().to_string();
    let secret_s = secret.display().to_string();
    let out = s.admin(&[
        "app",
        "add",
        "game",
        "--repo",
        &repo,
        "--public-key",
        &public,
        "--enroll-secret-file",
        &secret_s,
    ]);
    assert!(out.contains("2 releases"), "{out}");
    s.admin(&[
        "app",
        "add",
        "kiosk",
        "--repo",
        &repo,
        "--public-key",
        &public,
        "--approve",
    ]);
    s
}

fn result(seq: u64, from: &str, to: &str, ok: bool) -> Value {
    let mut r = json!({"seq": seq, "finished_at": "2026-11-25T10:00:00Z", "from": from, "to": to,
        "method": "incremental", "bytes": 1234, "seconds": 0.5, "ok": ok, "started_by": "agent"});
    if !ok {
        r["error_kind"] = json!("verify");
        r["error_message"] = json!("hash mismatch in big.bin");
    }
    r
}

fn find<'a>(devices: &'a Value, id: &str) -> &'a Value {
    devices
        .as_array()
        .expect("array")
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("device {id} not listed: {devices}"))
}

fn assert_alive(s: &mut Server) {
    let log = std::fs::read_to_string(s.data.join("server.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "server panicked: {log}");
    let (st, _) = s.admin_raw("GET", "/v1/admin/apps", Some(&s.admin_token.clone()), None);
    assert_eq!(st, 200, "server still answers");
}

fn enrollment_checkins_inventory(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let s = server_with_apps(&w, &backend, &[]);

    // Enrollment: a wrong or missing secret is refused, naming the field.
    for bad in [Some("wrong secret, long enough"), None] {
        let a = Device::try_enroll(&s.url, "game", "dev-x", bad);
        assert_eq!(a.status, 401, "{:?}", a.body);
        assert_eq!(a.body["field"], "secret");
    }
    assert_eq!(
        Device::try_enroll(&s.url, "nope", "dev-x", Some(SECRET)).status,
        404
    );

    // Several devices check in.
    let mut a = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    let mut b = Device::enroll(&s.url, "game", "dev-b", Some(SECRET));
    let mut c = Device::enroll(&s.url, "game", "dev-c", Some(SECRET));
    let ra = a.checkin(&checkin_body("1.0.0", None));
    assert_eq!(ra.status, 200, "{:?}", ra.body);
    assert_eq!(ra.body["status"], "active");
    assert_eq!(ra.body["directive"]["version"], "2.0.0", "{:?}", ra.body);
    assert_eq!(ra.body["directive"]["reason"], "channel");
    let mut body_b = checkin_body("2.0.0", None);
    body_b["results"] = json!([result(1, "1.0.0", "2.0.0", true)]);
    let rb = b.checkin(&body_b);
    assert_eq!(rb.body["acked_result_seq"], 1, "{:?}", rb.body);
    let mut body_c = checkin_body("1.0.0", None);
    body_c["results"] = json!([result(7, "1.0.0", "2.0.0", false)]);
    c.checkin(&body_c);
    // A re-sent result is stored once.
    c.etag = None;
    assert_eq!(c.checkin(&body_c).body["acked_result_seq"], 7);

    // `devices --json`: version, digest, last seen, last result of each device.
    let devices = s.admin_json(&["devices"]);
    assert_eq!(devices.as_array().map(Vec::len), Some(3), "{devices}");
    let da = find(&devices, "dev-a");
    assert_eq!(da["version"], "1.0.0");
    assert_eq!(da["tree_digest"], blake3_hex(b"1.0.0"));
    assert!(
        da["last_seen"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{da}"
    );
    assert!(da["last_result"].is_null());
    let db_ = find(&devices, "dev-b");
    assert_eq!(db_["version"], "2.0.0");
    assert_eq!(db_["last_result"]["ok"], true);
    let dc = find(&devices, "dev-c");
    assert_eq!(dc["last_result"]["ok"], false);
    assert_eq!(dc["last_result"]["error_kind"], "verify");
    // Filters.
    let failed = s.admin_json(&["devices", "--failed"]);
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "{failed}");
    assert_eq!(failed[0]["id"], "dev-c");
    let v2 = s.admin_json(&["devices", "--version", "2.0.0"]);
    assert_eq!(v2.as_array().map(Vec::len), Some(1));
    s.admin(&["tag", "dev-a", "lab", "eu"]);
    let lab = s.admin_json(&["devices", "--tag", "lab"]);
    assert_eq!(lab.as_array().map(Vec::len), Some(1));
    assert_eq!(lab[0]["tags"], json!(["eu", "lab"]));
    s.admin(&["untag", "dev-a", "lab"]);
    assert_eq!(s.admin_json(&["devices", "--tag", "lab"]), json!([]));
    assert_eq!(s.admin_json(&["devices", "--silent-for", "1h"]), json!([]));
    let table = s.admin(&["devices", "--app", "game"]);
    assert!(
        table.contains("dev-c") && table.contains("FAILED->2.0.0"),
        "{table}"
    );
    let show = s.admin_json(&["device", "show", "dev-c"]);
    assert_eq!(show["results"].as_array().map(Vec::len), Some(1), "{show}");
    assert_eq!(
        show["results"][0]["error_message"],
        "hash mismatch in big.bin"
    );

    // ETag: an idle check-in with If-None-Match gets 304 and no body, and is still recorded.
    let before = s.admin_json(&["device", "show", "dev-a"])["device"]["checkins"]
        .as_i64()
        .expect("checkins");
    let idle = a.checkin(&checkin_body("1.0.0", None));
    assert_eq!(idle.status, 304, "{:?}", idle.body);
    assert!(idle.body.is_null());
    let after = s.admin_json(&["device", "show", "dev-a"])["device"]["checkins"]
        .as_i64()
        .expect("checkins");
    assert_eq!(after, before + 1);
    // An idle check-in updates the device row but adds no history row (--history-every 15m).
    let history = s.admin_json(&["device", "show", "dev-a"])["checkins"].clone();
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    // One that reports another version or channel (still no result and no state) adds one.
    // (The answer may be 304: the directive does not depend on the reported version.)
    let answered = |status: u16| assert!(status == 200 || status == 304, "{status}");
    let mut moved = checkin_body("1.5.0", None);
    answered(a.checkin(&moved).status);
    moved["channel"] = json!("beta");
    answered(a.checkin(&moved).status);
    answered(a.checkin(&moved).status);
    let show = s.admin_json(&["device", "show", "dev-a"]);
    assert_eq!(show["checkins"].as_array().map(Vec::len), Some(3), "{show}");
    assert_eq!(show["device"]["version"], "1.5.0", "{show}");
    assert_eq!(show["device"]["channel"], "beta", "{show}");
    assert_eq!(
        show["device"]["checkins"].as_i64(),
        Some(after + 3),
        "{show}"
    );
    answered(a.checkin(&checkin_body("1.0.0", None)).status);

    // Approval mode: pending until approved, nothing directed meanwhile.
    let mut k = Device::enroll(&s.url, "kiosk", "kiosk-1", None);
    let rk = k.checkin(&checkin_body("1.0.0", None));
    assert_eq!(rk.body["status"], "pending");
    assert!(rk.body["directive"].is_null());
    assert_eq!(
        s.admin_json(&["device", "show", "kiosk-1"])["device"]["status"],
        "pending"
    );
    s.admin(&["device", "approve", "kiosk-1"]);
    let rk = k.checkin(&checkin_body("1.0.0", None));
    assert_eq!(rk.status, 200);
    assert_eq!(rk.body["status"], "active");
    assert_eq!(rk.body["directive"]["version"], "2.0.0");

    // Re-enrolling rotates the token: the old one stops working.
    let old = a.token.clone();
    let a2 = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    assert_ne!(a2.token, old);
    let r = post_raw(
        &format!("{}/v1/checkin", s.url),
        Some(&old),
        checkin_body("1.0.0", None).to_string().into_bytes(),
    );
    assert_eq!(r.status, 401);
    // A device id enrolled under one app cannot enroll under another.
    assert_eq!(
        Device::try_enroll(&s.url, "kiosk", "dev-a", None).status,
        409
    );

    // A new release reaches the directive after a refresh, on its channel only, and only
    // for devices whose attributes meet its targeting.
    w.release(3, &["--channel", "beta", "--target", "region=eu"]);
    s.admin(&["app", "refresh", "game"]);
    let apps = s.admin_json(&["apps"]);
    assert_eq!(
        apps[0]["releases"].as_array().map(Vec::len),
        Some(3),
        "{apps}"
    );
    let mut a3 = Device::from_token(&s.url, "dev-a", &a2.token);
    let ra = a3.checkin(&checkin_body("2.0.0", None));
    assert_eq!(
        ra.body["directive"]["version"], "2.0.0",
        "stable stays on 2.0.0"
    );
    let mut beta = checkin_body("2.0.0", None);
    beta["channel"] = json!("beta");
    assert!(
        a3.checkin(&beta).body["directive"].is_null(),
        "the beta release targets region=eu only"
    );
    beta["attrs"] = json!({"region": "eu"});
    assert_eq!(a3.checkin(&beta).body["directive"]["version"], "3.0.0");
}

fn commands_uploads_and_state(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let s = server_with_apps(&w, &backend, &[]);
    let mut a = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    let mut b = Device::enroll(&s.url, "game", "dev-b", Some(SECRET));
    let state = json!({"players": 3, "map": "dust", "mods": ["a", "b"]});
    let first = a.checkin(&checkin_body("1.0.0", Some(state.clone())));
    assert_eq!(
        first.body["state_digest"],
        blake3_hex(state.to_string().as_bytes())
    );
    b.checkin(&checkin_body("1.0.0", None));

    // upload-logs reaches the device at its next check-in; the file comes back identical.
    let out = s.admin(&["command", "--device", "dev-a", "upload-logs"]);
    assert!(out.contains("queued for 1 devices"), "{out}");
    let r = a.checkin(&checkin_body("1.0.0", None));
    assert_eq!(
        r.status, 200,
        "a queued command changes the answer, so no 304"
    );
    let cmds = r.body["commands"].as_array().expect("commands").clone();
    assert_eq!(cmds.len(), 1, "{:?}", r.body);
    assert_eq!(cmds[0]["kind"], "upload-logs");
    let cmd_id = cmds[0]["id"].as_str().expect("id").to_string();
    // dev-b got nothing.
    b.etag = None;
    assert_eq!(
        b.checkin(&checkin_body("1.0.0", None)).body["commands"],
        json!([])
    );

    let log: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let receipt = a.upload(&cmd_id, "app.log", log.clone());
    assert_eq!(receipt.status, 200, "{:?}", receipt.body);
    assert_eq!(receipt.body["size"], log.len());
    assert_eq!(receipt.body["blake3"], blake3_hex(&log));
    let upload_id = receipt.body["id"].as_str().expect("id").to_string();
    let done = a.result(
        &cmd_id,
        &json!({"outcome": "ok", "data": {"uploads": [receipt.body]}}),
    );
    assert_eq!(done.status, 200, "{:?}", done.body);
    // No second result, and no upload for a finished command.
    assert_eq!(a.result(&cmd_id, &json!({"outcome": "ok"})).status, 409);
    assert_eq!(a.upload(&cmd_id, "late.log", vec![1, 2, 3]).status, 409);
    let uploads = s.admin_json(&["uploads", "--device", "dev-a"]);
    assert_eq!(uploads.as_array().map(Vec::len), Some(1), "{uploads}");
    assert_eq!(uploads[0]["name"], "app.log");
    let got = w.path("got.log");
    s.admin(&[
        "upload",
        "get",
        &upload_id,
        "--out",
        &got.display().to_string(),
    ]);
    assert_eq!(std::fs::read(&got).expect("downloaded"), log);
    // The bytes are on disk under the server's own name, not in a row.
    assert!(s.data.join("uploads").join(&upload_id).exists());

    // Crash files: at most MAX_CRASH_UPLOADS_PER_HOUR per device in an hour, counted without
    // the command uploads (dev-a has one), and per device (dev-b still may).
    let max = formats::fleet::MAX_CRASH_UPLOADS_PER_HOUR;
    for i in 0..max {
        let r = a.upload_crash("c1", &format!("core.{i}"), vec![i as u8; 10]);
        assert_eq!(r.status, 200, "crash file {i}: {:?}", r.body);
    }
    let over = a.upload_crash("c1", "one-too-many", vec![0; 10]);
    assert_eq!(over.status, 429, "{:?}", over.body);
    assert!(
        over.body
            .to_string()
            .contains(&format!("limit of {max} crash files")),
        "{:?}",
        over.body
    );
    assert_eq!(b.upload_crash("c9", "core", vec![1; 10]).status, 200);
    let uploads = s.admin_json(&["uploads", "--device", "dev-a"]);
    assert_eq!(uploads.as_array().map(Vec::len), Some(max + 1), "{uploads}");

    // report-state returns the state document.
    s.admin(&["command", "--device", "dev-a", "report-state"]);
    let r = a.checkin(&checkin_body("1.0.0", None));
    let cmd = &r.body["commands"][0];
    assert_eq!(cmd["kind"], "report-state");
    let id = cmd["id"].as_str().expect("id");
    assert_eq!(
        a.result(id, &json!({"outcome": "ok", "data": state}))
            .status,
        200
    );
    let show = s.admin_json(&["device", "show", "dev-a"]);
    assert_eq!(show["state"], state);
    let c = show["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .find(|c| c["id"] == id)
        .expect("command listed");
    assert_eq!(c["status"], "ok");
    assert_eq!(c["data"], state);
    // Once answered, a command is no longer delivered.
    let r = a.checkin(&checkin_body("1.0.0", None));
    assert!(r.status == 304 || r.body["commands"] == json!([]), "{r:?}");

    // A command for a tag reaches every tagged device.
    s.admin(&["tag", "dev-a", "canary"]);
    s.admin(&["tag", "dev-b", "canary"]);
    let out = s.admin(&[
        "command",
        "--tag",
        "canary",
        "set-interval",
        "--interval",
        "30s",
    ]);
    assert!(out.contains("queued for 2 devices"), "{out}");
    for d in [&mut a, &mut b] {
        let r = d.checkin(&checkin_body("1.0.0", None));
        assert_eq!(r.body["commands"][0]["kind"], "set-interval", "{r:?}");
        assert_eq!(r.body["commands"][0]["args"]["secs"], 30);
    }
    // A command that expires is no longer offered.
    s.admin(&[
        "command",
        "--app",
        "game",
        "restart-app",
        "--expires-in",
        "1s",
    ]);
    std::thread::sleep(Duration::from_millis(1100));
    let r = b.checkin(&checkin_body("1.0.0", None));
    let kinds: Vec<&Value> = r.body["commands"]
        .as_array()
        .map(|c| c.iter().map(|c| &c["kind"]).collect())
        .unwrap_or_default();
    assert!(!kinds.contains(&&json!("restart-app")), "{r:?}");

    // Devices joining a group later get its open commands, once.
    let kinds_of = |r: &e2e_tests::fleet::Answer| -> Vec<String> {
        r.body["commands"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["kind"].as_str())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let out = s.admin(&["command", "--tag", "night", "report-state"]);
    assert!(out.contains("queued for 0 devices"), "{out}");
    let mut c = Device::enroll(&s.url, "game", "dev-c", Some(SECRET));
    let r = c.checkin(&checkin_body("1.0.0", None));
    assert!(!kinds_of(&r).contains(&"report-state".to_string()), "{r:?}");
    s.admin(&["tag", "dev-c", "night"]);
    let r = c.checkin(&checkin_body("1.0.0", None));
    assert_eq!(kinds_of(&r), ["report-state"], "{r:?}");
    let id = r.body["commands"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let done = c.result(&id, &json!({"outcome": "ok", "data": {"late": true}}));
    assert_eq!(done.status, 200, "{done:?}");
    c.etag = None;
    let r = c.checkin(&checkin_body("1.0.0", None));
    assert!(
        kinds_of(&r).is_empty(),
        "answered, not delivered again: {r:?}"
    );
    // An app command reaches a device enrolled after it was queued; a tagged device that
    // joins the tag afterwards gets the tag's command too.
    s.admin(&["command", "--app", "game", "restart-app"]);
    let mut d = Device::enroll(&s.url, "game", "dev-d", Some(SECRET));
    let r = d.checkin(&checkin_body("1.0.0", None));
    assert_eq!(kinds_of(&r), ["restart-app"], "{r:?}");
    s.admin(&["tag", "dev-d", "night"]);
    d.etag = None;
    let r = d.checkin(&checkin_body("1.0.0", None));
    assert_eq!(kinds_of(&r), ["report-state", "restart-app"], "{r:?}");
    let shown = s.admin_json(&["device", "show", "dev-d"]);
    assert!(shown.to_string().contains("report-state"), "{shown}");
}

fn security(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let mut s = server_with_apps(&w, &backend, &["--max-upload", "100000"]);
    let mut a = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    let mut b = Device::enroll(&s.url, "game", "dev-b", Some(SECRET));
    a.checkin(&checkin_body("1.0.0", None));
    b.checkin(&checkin_body("1.0.0", None));

    // A device token cannot act for another device.
    s.admin(&["command", "--device", "dev-a", "upload-logs"]);
    let r = a.checkin(&checkin_body("1.0.0", None));
    let cmd_a = r.body["commands"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let rb = b.checkin(&checkin_body("1.0.0", None));
    assert!(
        rb.status == 304 || rb.body["commands"] == json!([]),
        "{rb:?}"
    );
    let forged = b.result(&cmd_a, &json!({"outcome": "ok", "data": {"stolen": true}}));
    assert_eq!(forged.status, 404, "{:?}", forged.body);
    assert_eq!(b.upload(&cmd_a, "x.log", vec![0; 10]).status, 404);
    assert_eq!(s.admin_json(&["uploads", "--device", "dev-a"]), json!([]));
    assert_eq!(s.admin_json(&["uploads", "--device", "dev-b"]), json!([]));
    // Device tokens are not admin tokens, and vice versa.
    assert_eq!(
        s.admin_raw("GET", "/v1/admin/devices", Some(&a.token), None)
            .0,
        401
    );
    let r = post_raw(
        &format!("{}/v1/checkin", s.url),
        Some(&s.admin_token),
        b"{}".to_vec(),
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        post_raw(&format!("{}/v1/checkin", s.url), None, b"{}".to_vec()).status,
        401
    );

    // The admin API refuses missing, wrong and read-only tokens for writes.
    let tag = json!({"add": ["x"]});
    let path = "/v1/admin/devices/dev-a/tags";
    assert_eq!(s.admin_raw("POST", path, None, Some(tag.clone())).0, 401);
    assert_eq!(
        s.admin_raw(
            "POST",
            path,
            Some("0".repeat(64).as_str()),
            Some(tag.clone())
        )
        .0,
        401
    );
    assert_eq!(s.admin_raw("GET", "/v1/admin/devices", None, None).0, 401);
    let mut mk = e2e_tests::cmd("patch-server");
    mk.args(["token", "create", "--scope", "read", "--data"])
        .arg(&s.data)
        .args(backend.db_args());
    let read = e2e_tests::ok(&mut mk).trim().to_string();
    assert_eq!(
        s.admin_raw("GET", "/v1/admin/devices", Some(&read), None).0,
        200
    );
    let (st, body) = s.admin_raw("POST", path, Some(&read), Some(tag.clone()));
    assert_eq!(st, 403, "{body}");
    let (st, _) = s.admin_raw(
        "POST",
        "/v1/admin/commands",
        Some(&read),
        Some(json!({"device": "dev-a", "kind": "restart-app"})),
    );
    assert_eq!(st, 403);
    let (st, ci) = s.admin_raw(
        "POST",
        "/v1/admin/tokens",
        Some(&s.admin_token.clone()),
        Some(json!({"scope": "ci"})),
    );
    assert_eq!(st, 200);
    let ci = ci["token"].as_str().expect("token").to_string();
    assert_eq!(s.admin_raw("POST", path, Some(&ci), Some(tag)).0, 200);
    assert_eq!(
        s.admin_raw(
            "POST",
            "/v1/admin/tokens",
            Some(&ci),
            Some(json!({"scope": "admin"}))
        )
        .0,
        403
    );
    // The CLI reports the refusal.
    let out = e2e_tests::run(
        s.cli()
            .env("PATCHKIT_ADMIN_TOKEN", &read)
            .args(["device", "approve", "dev-a"]),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));

    // Oversized bodies: 413 naming the limit; malformed: 400 naming the field.
    let url = format!("{}/v1/checkin", s.url);
    let huge = vec![b' '; formats::fleet::MAX_BODY + 10];
    let r = post_raw(&url, Some(&a.token), huge);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.body["field"], "body");
    assert!(
        r.body["error"].as_str().expect("error").contains("262144"),
        "{r:?}"
    );
    let big_state = json!({"blob": "x".repeat(formats::fleet::MAX_STATE)});
    let r = post_raw(
        &url,
        Some(&a.token),
        checkin_body("1.0.0", Some(big_state))
            .to_string()
            .into_bytes(),
    );
    assert_eq!(
        (r.status, r.body["field"].clone()),
        (413, json!("state")),
        "{r:?}"
    );
    assert!(r.body["error"].as_str().expect("error").contains("65536"));
    for (body, field) in [
        (json!({"version": "one point oh"}), "version"),
        (json!({"tree_digest": "xyz"}), "tree_digest"),
        (json!({"attrs": {"bad key!": "v"}}), "attrs.bad key!"),
        (json!({"results": [{"seq": 1}]}), "body"),
        (json!({"version": "1.0.0", "typo": 1}), "body"),
    ] {
        let r = post_raw(&url, Some(&a.token), body.to_string().into_bytes());
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.body["field"], field, "{body}: {r:?}");
    }
    for raw in [
        &b"not json"[..],
        b"",
        b"[]",
        b"{\"version\": 1}",
        &[0xff, 0xfe, 0x00],
    ] {
        let r = post_raw(&url, Some(&a.token), raw.to_vec());
        assert_eq!(r.status, 400, "{raw:?}: {r:?}");
    }
    let r = post_raw(
        &format!("{}/v1/enroll", s.url),
        None,
        json!({"app": "../etc", "device_id": "d"})
            .to_string()
            .into_bytes(),
    );
    assert_eq!((r.status, r.body["field"].clone()), (400, json!("app")));
    let (st, body) = s.admin_raw(
        "POST",
        "/v1/admin/commands",
        Some(&s.admin_token.clone()),
        Some(json!({"device": "dev-a", "kind": "rm-rf"})),
    );
    assert_eq!((st, body["field"].clone()), (400, json!("kind")));

    // An upload over the server's cap: 413 naming the limit, nothing kept.
    let r = a.upload(&cmd_a, "big.log", vec![7; 150_000]);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(
        r.body["error"].as_str().expect("error").contains("100000"),
        "{r:?}"
    );
    // Also when the size is not announced (a chunked, streamed body).
    let streamed = reqwest::blocking::Client::new()
        .put(format!("{}/v1/uploads", s.url))
        .query(&[("command", cmd_a.as_str()), ("name", "big.log")])
        .bearer_auth(&a.token)
        .body(reqwest::blocking::Body::new(
            std::io::repeat(1).take(150_000),
        ))
        .send();
    // The server answers 413 as soon as the bound is passed and closes the connection; a client
    // still sending may see that as a reset before it reads the answer. Either way nothing is
    // kept (checked below).
    match streamed {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(
            (e.is_request() || e.is_body()) && !e.is_connect(),
            "only a cut connection may stand for the 413: {e:?}"
        ),
    }
    let left: Vec<_> = std::fs::read_dir(s.data.join("uploads"))
        .expect("uploads dir")
        .collect();
    assert!(left.is_empty(), "nothing kept: {left:?}");
    assert_eq!(s.admin_json(&["uploads", "--device", "dev-a"]), json!([]));
    // At most 32 files for one command.
    for i in 0..32 {
        assert_eq!(
            a.upload(&cmd_a, &format!("{i}.log"), vec![1; 10]).status,
            200
        );
    }
    let r = a.upload(&cmd_a, "33.log", vec![1; 10]);
    assert_eq!(
        (r.status, r.body["field"].clone()),
        (413, json!("command")),
        "{r:?}"
    );
    assert_alive(&mut s);
}

/// A reader that waits before giving its bytes: an upload that holds its request open.
struct Slow(Option<Duration>, std::io::Take<std::io::Repeat>);

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(d) = self.0.take() {
            std::thread::sleep(d);
        }
        self.1.read(buf)
    }
}

fn overload_answers_503(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let s = server_with_apps(&w, &backend, &["--max-concurrent", "1"]);
    let mut a = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    a.checkin(&checkin_body("1.0.0", None));
    s.admin(&["command", "--device", "dev-a", "upload-logs"]);
    let r = a.checkin(&checkin_body("1.0.0", None));
    let cmd = r.body["commands"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (url, token) = (s.url.clone(), a.token.clone());
    let slow = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .put(format!("{url}/v1/uploads"))
            .query(&[("command", cmd.as_str()), ("name", "slow.log")])
            .bearer_auth(&token)
            .body(reqwest::blocking::Body::new(Slow(
                Some(Duration::from_secs(3)),
                std::io::repeat(1).take(1000),
            )))
            .send()
            .expect("upload")
            .status()
            .as_u16()
    });
    std::thread::sleep(Duration::from_millis(1100));
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v1/checkin", s.url))
        .bearer_auth(&a.token)
        .body(checkin_body("1.0.0", None).to_string())
        .send()
        .expect("checkin");
    assert_eq!(r.status().as_u16(), 503);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry >= 1);
    assert_eq!(slow.join().expect("upload thread"), 200);
    // Once the slow request is done, check-ins go through again.
    a.etag = None;
    assert_eq!(a.checkin(&checkin_body("1.0.0", None)).status, 200);
}

fn retention_summarises_history(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let s = server_with_apps(&w, &backend, &["--history-every", "0s"]);
    let mut a = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    for _ in 0..5 {
        a.etag = None;
        assert_eq!(a.checkin(&checkin_body("1.0.0", None)).status, 200);
    }
    assert_eq!(
        s.admin_json(&["device", "show", "dev-a"])["checkins"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    std::thread::sleep(Duration::from_millis(50));
    let mut prune = e2e_tests::cmd("patch-server");
    prune
        .args(["history", "prune", "--older-than", "10ms", "--data"])
        .arg(&s.data)
        .args(backend.db_args());
    let out = e2e_tests::ok(&mut prune);
    assert!(out.contains("5 check-ins summarised"), "{out}");
    let show = s.admin_json(&["device", "show", "dev-a"]);
    assert_eq!(show["checkins"], json!([]), "{show}");
    assert_eq!(show["checkin_days"][0]["count"], 5, "{show}");
    assert_eq!(show["checkin_days"][0]["last_version"], "1.0.0");
    // The device row keeps its totals.
    assert_eq!(show["device"]["checkins"], 5);
    // Pruning again folds new check-ins into the same day.
    a.etag = None;
    a.checkin(&checkin_body("2.0.0", None));
    std::thread::sleep(Duration::from_millis(50));
    e2e_tests::ok(&mut prune);
    let show = s.admin_json(&["device", "show", "dev-a"]);
    assert_eq!(show["checkin_days"][0]["count"], 6, "{show}");
    assert_eq!(show["checkin_days"][0]["last_version"], "2.0.0");
}

/// `kill -9` of the server while devices check in: every check-in that got a 200 is stored.
fn kill9_keeps_acknowledged_checkins(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let mut s = server_with_apps(&w, &backend, &["--history-every", "0s"]);
    let devices: Vec<Device> = (0..6)
        .map(|i| Device::enroll(&s.url, "game", &format!("dev-{i}"), Some(SECRET)))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = devices
        .into_iter()
        .map(|d| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked: Vec<u64> = Vec::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let mut body = checkin_body("1.0.0", None);
                    body["free_disk"] = json!(n); // a marker for this check-in
                    let r = reqwest::blocking::Client::new()
                        .post(format!("{}/v1/checkin", d.url))
                        .bearer_auth(&d.token)
                        .body(body.to_string())
                        .timeout(Duration::from_secs(5))
                        .send();
                    match r {
                        Ok(r) if r.status().as_u16() == 200 => acked.push(n),
                        Ok(_) => {}
                        Err(_) => break, // the server is gone
                    }
                }
                (d.id.clone(), acked)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<(String, Vec<u64>)> = workers
        .into_iter()
        .map(|t| t.join().expect("worker"))
        .collect();
    let total: usize = acked.iter().map(|(_, a)| a.len()).sum();
    assert!(
        total > 10,
        "devices got too few answers before the kill ({total})"
    );
    // A new server on the same database sees every acknowledged check-in.
    let s2 = Server::start_with_token(
        &w.path("server"),
        &backend,
        &["--history-every", "0s"],
        Some(&s.admin_token),
    );
    for (id, acks) in &acked {
        let show = s2.admin_json(&["device", "show", id]);
        let stored = show["device"]["checkins"].as_i64().expect("checkins");
        assert!(
            stored >= acks.len() as i64,
            "{id}: {stored} stored, {} acknowledged",
            acks.len()
        );
        if let Backend::Postgres(pg) = &backend {
            let rows = pg.psql(&format!(
                "SELECT free_disk FROM checkins WHERE device = '{id}' ORDER BY free_disk"
            ));
            let stored: std::collections::BTreeSet<u64> =
                rows.lines().filter_map(|l| l.parse().ok()).collect();
            for n in acks {
                assert!(
                    stored.contains(n),
                    "{id}: acknowledged check-in #{n} is not in the database"
                );
            }
        }
    }
}

/// Many devices checking in at once, each with results: every check-in is answered 200 (no
/// "database is locked", no lost update), and every result is stored once.
fn concurrent_checkins_all_succeed(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let s = server_with_apps(&w, &backend, &["--history-every", "0s"]);
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let mut d = Device::enroll(&s.url, "game", &format!("dev-{i}"), Some(SECRET));
            std::thread::spawn(move || {
                for n in 1..=25u64 {
                    let mut body = checkin_body("1.0.0", Some(json!({"n": n})));
                    body["results"] = json!([result(n, "1.0.0", "2.0.0", n % 5 != 0)]);
                    d.etag = None;
                    let r = d.checkin(&body);
                    assert_eq!(r.status, 200, "{}: check-in {n}: {:?}", d.id, r.body);
                    assert_eq!(r.body["acked_result_seq"], n);
                }
                d.id.clone()
            })
        })
        .collect();
    for t in workers {
        let id = t.join().expect("a device thread failed");
        let show = s.admin_json(&["device", "show", &id]);
        assert_eq!(show["device"]["checkins"], 25, "{id}");
        assert_eq!(show["checkins"].as_array().map(Vec::len), Some(25), "{id}");
        assert_eq!(show["state"], json!({"n": 25}));
        assert_eq!(show["device"]["last_result"]["seq"], 25);
        assert_eq!(show["device"]["last_result"]["ok"], false);
    }
    assert_eq!(
        s.admin_json(&["devices", "--failed"])
            .as_array()
            .map(Vec::len),
        Some(8)
    );
}

/// Idle check-ins of many devices at once, two at a time from each (on PostgreSQL their
/// device rows are written in batches, one row per device per batch): every one is answered
/// 200 and counted, and each device's row holds the fields of one and the same check-in.
fn concurrent_idle_checkins_are_all_counted(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let s = server_with_apps(&w, &backend, &[]);
    const ROUNDS: u64 = 15;
    let mut workers = Vec::new();
    let mut ids = Vec::new();
    for i in 0..12 {
        let mut d = Device::enroll(&s.url, "game", &format!("dev-{i}"), Some(SECRET));
        // The first check-in writes a history row; the ones below are idle.
        assert_eq!(d.checkin(&checkin_body("1.0.0", None)).status, 200);
        ids.push(d.id.clone());
        for t in 0..2u64 {
            let (url, token, id) = (d.url.clone(), d.token.clone(), d.id.clone());
            workers.push(std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                for n in 1..=ROUNDS {
                    let marker = t * 1000 + n;
                    let mut body = checkin_body("1.0.0", None);
                    body["free_disk"] = json!(marker);
                    body["arch"] = json!(format!("arch-{marker}"));
                    body["agent_version"] = json!(format!("0.{marker}"));
                    let r = client
                        .post(format!("{url}/v1/checkin"))
                        .bearer_auth(&token)
                        .body(body.to_string())
                        .timeout(Duration::from_secs(20))
                        .send()
                        .expect("check-in");
                    assert_eq!(r.status().as_u16(), 200, "{id}: check-in {marker}");
                }
            }));
        }
    }
    for t in workers {
        t.join().expect("a device thread failed");
    }
    for id in &ids {
        let show = s.admin_json(&["device", "show", id]);
        let dev = &show["device"];
        assert_eq!(dev["checkins"], 1 + 2 * ROUNDS, "{id}: {dev}");
        let marker = dev["free_disk"].as_u64().expect("free_disk");
        assert_eq!(dev["arch"], format!("arch-{marker}"), "{id}: {dev}");
        assert_eq!(dev["agent_version"], format!("0.{marker}"), "{id}: {dev}");
        assert_eq!(dev["version"], "1.0.0", "{id}: {dev}");
    }
}

/// Opens a connection to `url` and sends a request's headers declaring `len` body bytes, then
/// `sent` of them: a client that stalls in the middle of its request.
fn stalled_request(
    url: &str,
    method_path: &str,
    token: &str,
    len: usize,
    sent: &[u8],
) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut c = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "{method_path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    c.write_all(head.as_bytes()).expect("headers");
    c.write_all(sent).expect("first bytes");
    c
}

/// The status line of the answer read from `c` (waiting at most `within`).
fn status_line(c: &mut TcpStream, within: Duration) -> String {
    c.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A client that sends its headers and then stops, or trickles its body, is cut off with 408
/// after `--request-timeout`, freeing its concurrency slot; a stalled upload is cut off after
/// `--upload-read-timeout` and nothing of it is kept.
#[test]
fn slow_clients_are_cut_off() {
    let backend = Backend::start("sqlite");
    let w = world();
    let s = server_with_apps(
        &w,
        &backend,
        &[
            "--max-concurrent",
            "2",
            "--request-timeout",
            "2s",
            "--upload-read-timeout",
            "2s",
        ],
    );
    let mut a = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    assert_eq!(a.checkin(&checkin_body("1.0.0", None)).status, 200);
    let t0 = Instant::now();
    // One client stops after its headers, one trickles a byte every 200 ms.
    let mut stopped = stalled_request(&s.url, "POST /v1/checkin", &a.token, 400, b"{");
    let trickler = {
        let (url, token) = (s.url.clone(), a.token.clone());
        std::thread::spawn(move || {
            let mut c = stalled_request(&url, "POST /v1/checkin", &token, 400, b"{");
            for _ in 0..60 {
                std::thread::sleep(Duration::from_millis(200));
                if c.write_all(b" ").is_err() {
                    break;
                }
                c.set_nonblocking(true).expect("nonblocking");
                let mut probe = [0u8; 1];
                let answered = matches!(c.peek(&mut probe), Ok(n) if n > 0);
                c.set_nonblocking(false).expect("blocking");
                if answered {
                    break;
                }
            }
            status_line(&mut c, Duration::from_secs(10))
        })
    };
    std::thread::sleep(Duration::from_millis(600));
    // Both slots are held: one more request is shed.
    a.etag = None;
    assert_eq!(a.checkin(&checkin_body("1.0.0", None)).status, 503);
    let line = status_line(&mut stopped, Duration::from_secs(10));
    assert!(line.contains(" 408 "), "stopped client: {line:?}");
    let line = trickler.join().expect("trickler");
    assert!(line.contains(" 408 "), "trickling client: {line:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "cut off after {took:?}"
    );
    // The slots are free again: other devices check in.
    a.etag = None;
    assert_eq!(a.checkin(&checkin_body("1.0.0", None)).status, 200);
    let mut b = Device::enroll(&s.url, "game", "dev-b", Some(SECRET));
    assert_eq!(b.checkin(&checkin_body("1.0.0", None)).status, 200);

    // A stalled upload: cut off by the per-read limit, no file kept.
    s.admin(&["command", "--device", "dev-a", "upload-logs"]);
    a.etag = None;
    let r = a.checkin(&checkin_body("1.0.0", None));
    let cmd = r.body["commands"][0]["id"].as_str().expect("command id");
    let path = format!("PUT /v1/uploads?command={cmd}&name=stalled.log");
    let mut up = stalled_request(&s.url, &path, &a.token, 10_000, &[7u8; 100]);
    let line = status_line(&mut up, Duration::from_secs(10));
    assert!(line.contains(" 408 "), "stalled upload: {line:?}");
    let listed = s.admin_json(&["uploads", "--device", "dev-a"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let leftovers: Vec<_> = std::fs::read_dir(s.data.join("uploads"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "files left: {leftovers:?}");
    // A whole upload after that still works.
    let ok = a.upload(cmd, "good.log", b"fine".to_vec());
    assert_eq!(ok.status, 200, "{:?}", ok.body);

    // Reading an app's repository is bounded by --repo-timeout, not --request-timeout: an app
    // whose repository answers every request after 1.1 s is added and refreshed although
    // that takes longer than the 2 s that cut the clients above off.
    let repo = w.repo.clone();
    let slow = FakeServer::start(move |req| {
        std::thread::sleep(Duration::from_millis(1100));
        let name = req.path.trim_start_matches('/');
        match std::fs::read(repo.join(name)) {
            Ok(bytes) if !name.contains("..") => (200, Vec::new(), bytes),
            _ => (404, Vec::new(), Vec::new()),
        }
    });
    let public = w.public.display().to_string();
    let t0 = Instant::now();
    let out = s.admin(&[
        "app",
        "add",
        "far",
        "--repo",
        &slow.url,
        "--public-key",
        &public,
        "--approve",
    ]);
    let took = t0.elapsed();
    assert!(out.contains("2 releases"), "{out}");
    assert!(
        took > Duration::from_secs(2),
        "the slow repository took only {took:?}"
    );
    let t0 = Instant::now();
    let out = s.admin(&["app", "refresh", "far"]);
    assert!(out.contains("2.0.0"), "{out}");
    assert!(
        t0.elapsed() > Duration::from_secs(2),
        "refreshed in {:?}",
        t0.elapsed()
    );
    assert_alive(&mut { s });
}

/// Enrollment is rate limited per app and source address, and approval mode caps the devices
/// waiting: over either, 429 with `Retry-After`; devices already enrolled keep checking in.
fn enrollment_is_rate_limited(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let s = server_with_apps(
        &w,
        &backend,
        &[
            "--enroll-per-ip",
            "3",
            "--enroll-window",
            "1h",
            "--max-pending",
            "2",
        ],
    );
    let mut devs: Vec<Device> = (1..=3)
        .map(|i| Device::enroll(&s.url, "game", &format!("g{i}"), Some(SECRET)))
        .collect();
    let enroll = |app: &str, id: &str, secret: Option<&str>| {
        let mut body = json!({"app": app, "device_id": id});
        if let Some(x) = secret {
            body["secret"] = json!(x);
        }
        reqwest::blocking::Client::new()
            .post(format!("{}/v1/enroll", s.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("enroll")
    };
    let r = enroll("game", "g4", Some(SECRET));
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert_eq!(retry, 3600);
    let msg = r.text().expect("body");
    assert!(
        msg.contains("more than 3 enrollments for app game"),
        "{msg}"
    );
    // Devices already enrolled are not affected.
    for d in &mut devs {
        assert_eq!(d.checkin(&checkin_body("1.0.0", None)).status, 200);
    }
    // Approval mode: two devices may wait; a third is refused, counted per app.
    assert_eq!(enroll("kiosk", "k1", None).status().as_u16(), 200);
    assert_eq!(enroll("kiosk", "k2", None).status().as_u16(), 200);
    let r = enroll("kiosk", "k3", None);
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let msg = r.text().expect("body");
    assert!(msg.contains("2 devices waiting for approval"), "{msg}");
    let pending = s.admin_json(&["devices", "--app", "kiosk"]);
    assert_eq!(pending.as_array().map(Vec::len), Some(2), "{pending}");
    assert_alive(&mut { s });
}

/// A device whose check-ins skip the alert and command reads (it had none at its app's
/// current generation, `devices.quiet_gen`) still gets every command queued after it went
/// quiet: for itself, for its app, and for a tag it gets only after the command was queued.
/// And a command for one quiet device does not reach another.
fn quiet_devices_get_what_is_queued(backend: &str) {
    let backend = Backend::start(backend);
    let w = world();
    let s = server_with_apps(&w, &backend, &[]);
    let mut a = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    let mut b = Device::enroll(&s.url, "game", "dev-b", Some(SECRET));
    let idle = checkin_body("1.0.0", None);
    // two check-ins each: the second reads them quiet
    for d in [&mut a, &mut b] {
        d.checkin(&idle);
        assert_eq!(d.checkin(&idle).status, 304);
    }
    let kinds = |r: &e2e_tests::fleet::Answer| -> Vec<String> {
        r.body["commands"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| c["kind"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // for one device
    s.admin(&["command", "--device", "dev-b", "report-state"]);
    let r = b.checkin(&idle);
    assert_eq!(kinds(&r), ["report-state"], "{:?}", r.body);
    let id = r.body["commands"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(b.result(&id, &json!({"outcome": "ok"})).status, 200);
    let r = a.checkin(&idle);
    assert_eq!(r.status, 304, "dev-a got nothing: {:?}", r.body);
    // for a tag nobody has yet, then the tag given to dev-a (both quiet again first)
    let out = s.admin(&["command", "--tag", "lab", "restart-app"]);
    assert!(out.contains("queued for 0 devices"), "{out}");
    a.checkin(&idle);
    b.etag = None;
    b.checkin(&idle);
    assert_eq!(a.checkin(&idle).status, 304);
    s.admin(&["tag", "dev-a", "lab"]);
    let r = a.checkin(&idle);
    assert_eq!(kinds(&r), ["restart-app"], "{:?}", r.body);
    let r = b.checkin(&idle);
    assert!(kinds(&r).is_empty(), "dev-b has no tag lab: {:?}", r.body);
    // for the app: both, quiet or not
    s.admin(&["command", "--app", "game", "report-state"]);
    let r = b.checkin(&idle);
    assert_eq!(kinds(&r), ["report-state"], "{:?}", r.body);
    let r = a.checkin(&idle);
    assert_eq!(kinds(&r), ["restart-app", "report-state"], "{:?}", r.body);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name("sqlite") })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name("postgres") })*
        }
    };
}

on_both_backends!(
    enrollment_checkins_inventory,
    commands_uploads_and_state,
    security,
    overload_answers_503,
    retention_summarises_history,
    kill9_keeps_acknowledged_checkins,
    concurrent_checkins_all_succeed,
    concurrent_idle_checkins_are_all_counted,
    enrollment_is_rate_limited,
    quiet_devices_get_what_is_queued,
);

/// PostgreSQL restarts under a running server, whose pooled connections all break. The server
/// does not test a connection before each use, so check-ins may fail for a moment: with 503
/// and `Retry-After` (the device tries again later), never 500, and the pool replaces the
/// broken connections, so check-ins succeed again and the device's state was kept.
#[test]
fn postgres_restart_costs_retries_not_errors() {
    let backend = Backend::start("postgres");
    let Backend::Postgres(pg) = &backend else {
        unreachable!()
    };
    let w = world();
    let s = server_with_apps(&w, &backend, &[]);
    let mut a = Device::enroll(&s.url, "game", "dev-a", Some(SECRET));
    // several check-ins at once, so that the pool holds several connections
    let token = a.token.clone();
    let url = s.url.clone();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            std::thread::spawn(move || {
                let mut d = Device::from_token(&url, "dev-a", &token);
                d.checkin(&checkin_body("1.0.0", None)).status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread"), 200);
    }
    pg.restart();
    let (mut retries, mut ok_in_a_row) = (0, 0);
    for _ in 0..100 {
        a.etag = None;
        let r = a.checkin(&checkin_body("1.0.1", None));
        match r.status {
            200 => ok_in_a_row += 1,
            503 => {
                assert!(r.retry_after.is_some(), "503 without Retry-After");
                retries += 1;
                ok_in_a_row = 0;
            }
            other => panic!("check-in after the restart: {other} {:?}", r.body),
        }
        if ok_in_a_row == 5 {
            break;
        }
    }
    eprintln!("after the restart: {retries} check-ins answered 503");
    assert_eq!(
        ok_in_a_row, 5,
        "{retries} retries, never 5 check-ins in a row"
    );
    let devices = s.admin_json(&["devices"]);
    assert_eq!(find(&devices, "dev-a")["version"], "1.0.1");
}

/// Two `patch-server` processes on one PostgreSQL database: what one records the other sees.
#[test]
fn two_servers_share_one_postgres() {
    let backend = Backend::start("postgres");
    let w = world();
    let s1 = server_with_apps(&w, &backend, &[]);
    let s2 = Server::start_with_token(&w.path("server2"), &backend, &[], Some(&s1.admin_token));
    assert!(
        !w.path("server2").join("admin.token").exists(),
        "the database already had an admin token"
    );
    let mut a = Device::enroll(&s1.url, "game", "dev-a", Some(SECRET));
    assert_eq!(a.checkin(&checkin_body("1.0.0", None)).status, 200);
    let devices = s2.admin_json(&["devices"]);
    assert_eq!(find(&devices, "dev-a")["version"], "1.0.0");
    // The device may switch instances: its token works on the other one too.
    a.url = s2.url.clone();
    a.etag = None;
    let mut body = checkin_body("2.0.0", None);
    body["results"] = json!([result(1, "1.0.0", "2.0.0", true)]);
    let r = a.checkin(&body);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["directive"]["version"], "2.0.0");
    let seen = s1.admin_json(&["device", "show", "dev-a"]);
    assert_eq!(seen["device"]["version"], "2.0.0");
    assert_eq!(seen["device"]["checkins"], 2);
    // Commands queued through one instance are delivered through the other.
    s1.admin(&["command", "--device", "dev-a", "report-state"]);
    let r = a.checkin(&checkin_body("2.0.0", None));
    assert_eq!(r.body["commands"][0]["kind"], "report-state");
}

/// HTTPS served by the server itself (rustls): devices and the CLI over TLS.
#[test]
fn serves_https_with_rustls() {
    let backend = Backend::start("sqlite");
    let w = world();
    let (cert, key) = e2e_tests::fleet::self_signed_cert(&w.path("."));
    let s = Server::start(
        &w.path("server"),
        &backend,
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    );
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let pem = std::fs::read(&cert).expect("cert");
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let r = http
        .get(format!("{}/v1/admin/devices", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .expect("https request");
    assert_eq!(r.status().as_u16(), 200);
    // Plain HTTP to the TLS port gets no answer.
    let plain = s.url.replace("https://", "http://");
    assert!(reqwest::blocking::get(format!("{plain}/v1/admin/devices"))
        .map(|r| r.status().as_u16() != 200)
        .unwrap_or(true));
    // The CLI trusts the certificate it is given.
    let out = s.admin(&["devices", "--ca-cert", &cert.display().to_string()]);
    assert!(out.contains("0 devices"), "{out}");
}
