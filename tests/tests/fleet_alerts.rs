//! Alerts end to end: the real `patch-server` on 127.0.0.1, simulated devices over real HTTP,
//! a webhook receiver in the test that checks every HMAC signature, and a real SMTP server
//! (Python's `aiosmtpd`). Each condition is announced exactly once on each destination, then
//! resolved exactly once; delivery never slows a check-in down.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e_tests::alerts_support::{wait_for, SmtpSink, WebhookSink};
use e2e_tests::fleet::{checkin_body, Backend, Device, Server};
use e2e_tests::World;
use serde_json::{json, Value};

const SECRET: &str = "correct horse battery staple";
const HOOK_SECRET: &str = "webhook-secret-0123456789";

/// A signed repository with releases 1.0.0 and 2.0.0.
fn world() -> World {
    let w = World::with_sizes(2, 16 << 10, 8 << 10);
    w.release(1, &[]);
    w.release(2, &[]);
    w
}

/// A server (data in `w/name`) with the app `game` registered.
fn server(w: &World, name: &str, backend: &Backend, extra: &[&str]) -> Server {
    let s = Server::start(&w.path(name), backend, extra);
    add_game(w, &s);
    s
}

fn add_game(w: &World, s: &Server) {
    let secret = w.path("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    s.admin(&[
        "app",
        "add",
        "game",
        "--repo",
        &w.repo.display().to_string(),
        "--public-key",
        &w.public.display().to_string(),
        "--enroll-secret-file",
        &secret.display().to_string(),
    ]);
}

fn add_webhook(w: &World, s: &Server, url: &str) -> String {
    let f = w.path("hook.secret");
    std::fs::write(&f, HOOK_SECRET).expect("hook secret");
    let out = s.admin(&[
        "alerts",
        "webhook",
        "add",
        "--url",
        url,
        "--secret-file",
        &f.display().to_string(),
    ]);
    assert!(out.starts_with("webhook "), "{out}");
    out.split_whitespace().nth(1).expect("id").to_string()
}

fn result(seq: u64, to: &str, ok: bool) -> Value {
    let mut r = json!({"seq": seq, "finished_at": "2026-11-25T10:00:00Z", "from": "1.0.0",
        "to": to, "method": "incremental", "bytes": 1234, "seconds": 0.5, "ok": ok,
        "started_by": "agent"});
    if !ok {
        r["error_kind"] = json!("verify");
        r["error_message"] = json!("hash mismatch in big.bin");
    }
    r
}

/// Checks in and asserts the answer came quickly and was 200.
fn timed_checkin(d: &mut Device, body: &Value) {
    d.etag = None;
    let t = Instant::now();
    let a = d.checkin(body);
    let took = t.elapsed();
    assert_eq!(a.status, 200, "check-in of {}: {:?}", d.id, a.body);
    assert!(
        took < Duration::from_secs(1),
        "check-in of {} took {took:?}",
        d.id
    );
}

fn alerts(s: &Server, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["alerts", "list"];
    args.extend_from_slice(extra);
    s.admin_json(&args)
        .as_array()
        .cloned()
        .expect("alerts list --json is an array")
}

fn alert<'a>(list: &'a [Value], key: &str) -> &'a Value {
    list.iter()
        .find(|a| a["key"] == key)
        .unwrap_or_else(|| panic!("no alert {key} in {list:?}"))
}

/// Waits up to `secs` for `cond` while `dev` keeps checking in at `version` (so it never
/// goes silent).
fn wait_checking(
    secs: u64,
    what: &str,
    dev: &mut Device,
    version: &str,
    mut cond: impl FnMut() -> bool,
) {
    let idle = checkin_body(version, None);
    wait_for(secs, what, || {
        timed_checkin(dev, &idle);
        cond()
    });
}

fn assert_no_panic(s: &Server) {
    let log = std::fs::read_to_string(s.data.join("server.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "server panicked: {log}");
}

#[test]
fn failed_update_and_problem_alert_once_by_webhook_and_email_then_resolve_once() {
    let w = world();
    let smtp = SmtpSink::start(&w.path("."));
    let hook = WebhookSink::start(HOOK_SECRET);
    let s = server(
        &w,
        "server",
        &Backend::Sqlite,
        &[
            "--poll-interval",
            "60s",
            "--smtp-url",
            &smtp.url,
            "--smtp-from",
            "patchkit@example.com",
            "--alert-retry-base",
            "1s",
        ],
    );
    add_webhook(&w, &s, &format!("{}/alerts", hook.url));
    let out = s.admin(&["alerts", "email", "add", "--to", "ops@example.com"]);
    assert!(out.starts_with("e-mail "), "{out}");
    let dests = s.admin_json(&["alerts", "destinations"]);
    assert_eq!(dests.as_array().map(Vec::len), Some(2), "{dests}");
    assert!(
        !dests.to_string().contains(HOOK_SECRET),
        "secret shown: {dests}"
    );

    // Bad destinations are refused, naming the field.
    let token = s.admin_token.clone();
    for (body, field) in [
        (
            json!({"kind": "webhook", "url": "ftp://x/y", "secret": HOOK_SECRET}),
            "url",
        ),
        (
            json!({"kind": "webhook", "url": "not a url", "secret": HOOK_SECRET}),
            "url",
        ),
        (
            json!({"kind": "webhook", "url": "http://127.0.0.1:1/", "secret": "short"}),
            "secret",
        ),
        (
            json!({"kind": "webhook", "url": format!("http://h/{}", "a".repeat(3000)), "secret": HOOK_SECRET}),
            "url",
        ),
        (json!({"kind": "email", "to": "not an address"}), "to"),
        (json!({"kind": "pager", "to": "ops@example.com"}), "kind"),
        (
            json!({"kind": "email", "to": "ops@example.com", "app": "nope"}),
            "app",
        ),
        (
            json!({"kind": "email", "to": "ops@example.com", "extra": 1}),
            "body",
        ),
    ] {
        let (st, b) = s.admin_raw(
            "POST",
            "/v1/admin/alert-destinations",
            Some(&token),
            Some(body.clone()),
        );
        assert!(st == 400 || st == 413, "{body}: {st} {b}");
        assert_eq!(b["field"], field, "{body}: {b}");
    }
    let (st, _) = s.admin_raw(
        "DELETE",
        "/v1/admin/alert-destinations/nope",
        Some(&token),
        None,
    );
    assert_eq!(st, 404);
    let (st, b) = s.admin_raw("GET", "/v1/admin/alerts?limit=0", Some(&token), None);
    assert_eq!((st, b["field"].as_str()), (400, Some("limit")), "{b}");
    let (st, b) = s.admin_raw("GET", "/v1/admin/alerts?open=maybe", Some(&token), None);
    assert_eq!((st, b["field"].as_str()), (400, Some("query")), "{b}");

    // A failed update opens one alert, announced once by webhook and once by e-mail.
    let mut dev = Device::enroll(&s.url, "game", "dev-fail", Some(SECRET));
    let mut body = checkin_body("1.0.0", None);
    body["results"] = json!([result(1, "2.0.0", false)]);
    timed_checkin(&mut dev, &body);
    wait_for(20, "the failed-update webhook and e-mail", || {
        hook.events("failed-update:dev-fail", "opened").len() == 1
            && smtp
                .with_subject(&["opened", "failed update", "dev-fail"])
                .len()
                == 1
    });
    let ev = &hook.events("failed-update:dev-fail", "opened")[0];
    assert_eq!(ev["condition"], "failed-update");
    assert_eq!(ev["app"], "game");
    assert_eq!(ev["device"], "dev-fail");
    assert_eq!(ev["subject"], "device dev-fail");
    assert!(
        ev["detail"]
            .as_str()
            .unwrap()
            .contains("hash mismatch in big.bin"),
        "{ev}"
    );
    assert!(
        ev["opened_at"].is_string() && ev["resolved_ms"].is_null(),
        "{ev}"
    );
    let mail = &smtp.with_subject(&["opened", "failed update", "dev-fail"])[0];
    assert!(mail.subject.contains("(game)"), "{mail:?}");
    assert!(mail.to.contains("ops@example.com"), "{mail:?}");
    assert!(mail.from.contains("patchkit@example.com"), "{mail:?}");
    assert!(mail.body.contains("hash mismatch in big.bin"), "{mail:?}");

    // Another failure while open, and the old result sent again: nothing more is sent.
    body["results"] = json!([result(1, "2.0.0", false), result(2, "2.0.0", false)]);
    timed_checkin(&mut dev, &body);
    body["results"] = json!([result(2, "2.0.0", false)]);
    timed_checkin(&mut dev, &body);

    // A device reports a problem in its state document; the same problem again is no news.
    let mut sick = Device::enroll(&s.url, "game", "dev-sick", Some(SECRET));
    let problem = json!({"problem": "disk almost full", "free": 12});
    timed_checkin(&mut sick, &checkin_body("2.0.0", Some(problem)));
    timed_checkin(
        &mut sick,
        &checkin_body(
            "2.0.0",
            Some(json!({"problem": "disk almost full", "free": 11})),
        ),
    );
    // An oversized or non-text problem is refused, naming the field.
    for bad in [
        json!({"problem": "x".repeat(2000)}),
        json!({"problem": {"a": 1}}),
    ] {
        sick.etag = None;
        let a = sick.checkin(&checkin_body("2.0.0", Some(bad)));
        assert!(a.status == 400 || a.status == 413, "{:?}", a.body);
        assert_eq!(a.body["field"], "state.problem", "{:?}", a.body);
    }
    wait_for(20, "the problem webhook and e-mail", || {
        hook.events("problem:dev-sick", "opened").len() == 1
            && smtp
                .with_subject(&["opened", "device problem", "dev-sick"])
                .len()
                == 1
    });
    assert_eq!(
        hook.events("problem:dev-sick", "opened")[0]["detail"],
        "disk almost full"
    );
    std::thread::sleep(Duration::from_secs(3)); // several delivery rounds
    assert_eq!(hook.events("failed-update:dev-fail", "opened").len(), 1);
    assert_eq!(hook.events("problem:dev-sick", "opened").len(), 1);
    let open = alerts(&s, &["--open"]);
    assert_eq!(open.len(), 2, "{open:?}");

    // Success resolves the failed update; a state without a problem resolves the problem.
    let mut ok = checkin_body("2.0.0", None);
    ok["results"] = json!([result(3, "2.0.0", true)]);
    timed_checkin(&mut dev, &ok);
    timed_checkin(
        &mut sick,
        &checkin_body("2.0.0", Some(json!({"free": 500}))),
    );
    wait_for(20, "the resolved webhooks and e-mails", || {
        hook.events("failed-update:dev-fail", "resolved").len() == 1
            && hook.events("problem:dev-sick", "resolved").len() == 1
            && smtp.with_subject(&["resolved"]).len() == 2
    });
    let resolved = &hook.events("failed-update:dev-fail", "resolved")[0];
    assert_eq!(
        resolved["alert_id"],
        hook.events("failed-update:dev-fail", "opened")[0]["alert_id"]
    );
    assert!(resolved["resolved_ms"].is_i64(), "{resolved}");
    // Check-ins after the resolution change nothing.
    timed_checkin(&mut dev, &ok);
    timed_checkin(
        &mut sick,
        &checkin_body("2.0.0", Some(json!({"free": 400}))),
    );
    std::thread::sleep(Duration::from_secs(3));

    // Exactly four notifications on each destination, every webhook correctly signed.
    let hooks = hook.hooks();
    assert_eq!(hooks.len(), 4, "{hooks:?}");
    assert!(
        hooks.iter().all(|h| h.signed && h.path == "/alerts"),
        "{hooks:?}"
    );
    assert_eq!(smtp.messages().len(), 4, "{:?}", smtp.messages());

    // The list shows both alerts resolved with every notification delivered.
    let list = alerts(&s, &[]);
    assert_eq!(list.len(), 2, "{list:?}");
    for key in ["failed-update:dev-fail", "problem:dev-sick"] {
        let a = alert(&list, key);
        assert_eq!(a["state"], "resolved", "{a}");
        let d = a["deliveries"].as_array().expect("deliveries");
        assert_eq!(d.len(), 4, "{a}");
        assert!(d.iter().all(|d| d["status"] == "done"), "{a}");
    }
    assert!(alerts(&s, &["--open"]).is_empty());
    let text = s.admin(&["alerts", "list"]);
    assert!(
        text.contains("failed-update:dev-fail") && text.contains("resolved"),
        "{text}"
    );

    // A removed destination gets nothing more.
    let email_id = dests
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "email")
        .expect("email destination")["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.admin(&["alerts", "email", "remove", &email_id]);
    body["results"] = json!([result(4, "2.0.0", false)]);
    timed_checkin(&mut dev, &body);
    wait_for(20, "the second failed-update webhook", || {
        hook.events("failed-update:dev-fail", "opened").len() == 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smtp.messages().len(), 4);
    assert_no_panic(&s);
}

#[test]
fn silent_device_alerts_after_n_intervals_and_resolves_on_checkin() {
    let w = world();
    let hook = WebhookSink::start(HOOK_SECRET);
    let s = server(
        &w,
        "server",
        &Backend::Sqlite,
        &["--poll-interval", "1s", "--silent-after", "2"],
    );
    add_webhook(&w, &s, &format!("{}/hook", hook.url));
    let mut quiet = Device::enroll(&s.url, "game", "dev-quiet", Some(SECRET));
    let mut busy = Device::enroll(&s.url, "game", "dev-busy", Some(SECRET));
    let idle = checkin_body("2.0.0", None);
    timed_checkin(&mut quiet, &idle);
    let last = Instant::now();
    // dev-busy checks in every half interval and is never silent.
    let started = Instant::now();
    while hook.events("silent:dev-quiet", "opened").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no silent alert"
        );
        timed_checkin(&mut busy, &idle);
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = last.elapsed();
    assert!(
        after >= Duration::from_secs(2),
        "silent after only {after:?}"
    );
    let ev = &hook.events("silent:dev-quiet", "opened")[0];
    assert_eq!(ev["condition"], "silent");
    assert!(
        ev["detail"].as_str().unwrap().contains("poll intervals"),
        "{ev}"
    );
    // Still silent: no second alert.
    for _ in 0..6 {
        timed_checkin(&mut busy, &idle);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(hook.events("silent:dev-quiet", "opened").len(), 1);
    // Its next check-in resolves it, once.
    timed_checkin(&mut quiet, &idle);
    wait_for(10, "the silent alert resolved", || {
        hook.events("silent:dev-quiet", "resolved").len() == 1
    });
    timed_checkin(&mut quiet, &idle);
    timed_checkin(&mut busy, &idle);
    std::thread::sleep(Duration::from_millis(1500));
    let hooks = hook.hooks();
    assert_eq!(hooks.len(), 2, "only dev-quiet's alert: {hooks:?}");
    assert!(hooks.iter().all(|h| h.signed), "{hooks:?}");
    assert!(hook.events("silent:dev-busy", "opened").is_empty());
    assert_no_panic(&s);
}

#[test]
fn unreachable_webhook_is_retried_and_checkins_stay_fast() {
    let w = world();
    let later = e2e_tests::pg::free_port();
    let never = e2e_tests::pg::free_port();
    let s = server(
        &w,
        "server",
        &Backend::Sqlite,
        &[
            "--poll-interval",
            "60s",
            "--alert-retry-base",
            "1s",
            "--alert-max-attempts",
            "5",
        ],
    );
    add_webhook(&w, &s, &format!("http://127.0.0.1:{later}/hook"));
    add_webhook(&w, &s, &format!("http://127.0.0.1:{never}/hook"));
    let mut dev = Device::enroll(&s.url, "game", "dev-x", Some(SECRET));
    let mut body = checkin_body("1.0.0", None);
    body["results"] = json!([result(1, "2.0.0", false)]);
    timed_checkin(&mut dev, &body);
    // While nothing listens the deliveries fail and are retried; check-ins stay fast.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        timed_checkin(&mut dev, &checkin_body("1.0.0", None));
        std::thread::sleep(Duration::from_millis(200));
    }
    let list = alerts(&s, &[]);
    let a = alert(&list, "failed-update:dev-x");
    let d = a["deliveries"].as_array().expect("deliveries");
    assert_eq!(d.len(), 2, "{a}");
    for n in d {
        assert_eq!(n["status"], "pending", "{n}");
        assert!(n["attempts"].as_i64().unwrap() >= 1, "{n}");
        assert!(n["last_error"].is_string(), "{n}");
    }
    // The receiver comes up on that port: the notification arrives, once.
    let hook = WebhookSink::start_on(later, HOOK_SECRET);
    wait_for(20, "the retried webhook", || {
        hook.events("failed-update:dev-x", "opened").len() == 1
    });
    // The other gives up after 5 attempts and is shown failed.
    wait_for(30, "the dead webhook marked failed", || {
        let list = alerts(&s, &[]);
        let a = alert(&list, "failed-update:dev-x");
        a["deliveries"]
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n["status"] == "failed"))
    });
    let list = alerts(&s, &[]);
    let a = alert(&list, "failed-update:dev-x");
    let by_target = |port: u16| {
        a["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["target"].as_str().unwrap().contains(&format!(":{port}")))
            .cloned()
            .unwrap_or_else(|| panic!("no delivery to port {port}: {a}"))
    };
    let ok = by_target(later);
    assert_eq!(ok["status"], "done", "{ok}");
    assert!(ok["attempts"].as_i64().unwrap() >= 2, "{ok}");
    let dead = by_target(never);
    assert_eq!(dead["status"], "failed", "{dead}");
    assert_eq!(dead["attempts"], 5, "{dead}");
    let hooks = hook.hooks();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert!(hooks[0].signed);
    assert_no_panic(&s);
}

#[test]
fn two_servers_on_one_postgres_send_each_alert_once() {
    let w = world();
    let backend = Backend::start("postgres");
    let hook = WebhookSink::start(HOOK_SECRET);
    let extra = [
        "--poll-interval",
        "1s",
        "--silent-after",
        "2",
        "--alert-retry-base",
        "1s",
    ];
    let a = server(&w, "server-a", &backend, &extra);
    let b = Server::start_with_token(&w.path("server-b"), &backend, &extra, Some(&a.admin_token));
    add_webhook(&w, &a, &format!("{}/hook", hook.url));
    // Failures reported to A, success to B; a problem raised through B, cleared through A.
    let mut via_a = Device::enroll(&a.url, "game", "dev-pg", Some(SECRET));
    let mut via_b = Device::from_token(&b.url, "dev-pg", &via_a.token);
    let mut body = checkin_body("1.0.0", Some(json!({"problem": "camera offline"})));
    body["results"] = json!([result(1, "2.0.0", false)]);
    timed_checkin(&mut via_b, &body);
    body["results"] = json!([result(2, "2.0.0", false)]);
    timed_checkin(&mut via_a, &body);
    wait_checking(
        20,
        "opened on one of the servers",
        &mut via_a,
        "1.0.0",
        || {
            hook.events("failed-update:dev-pg", "opened").len() == 1
                && hook.events("problem:dev-pg", "opened").len() == 1
        },
    );
    let mut ok = checkin_body("2.0.0", Some(json!({})));
    ok["results"] = json!([result(3, "2.0.0", true)]);
    timed_checkin(&mut via_b, &ok);
    wait_checking(20, "resolved", &mut via_a, "2.0.0", || {
        hook.events("failed-update:dev-pg", "resolved").len() == 1
            && hook.events("problem:dev-pg", "resolved").len() == 1
    });
    // Silence is swept by both instances and still announced once.
    wait_for(20, "the silent alert", || {
        hook.events("silent:dev-pg", "opened").len() == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    timed_checkin(&mut via_a, &checkin_body("2.0.0", None));
    wait_for(20, "silence resolved", || {
        hook.events("silent:dev-pg", "resolved").len() == 1
    });
    // Time for a duplicate to show up, with the device checking in meanwhile (idle for two
    // intervals it would rightly be silent again).
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(500));
        via_a.etag = None;
        let a = via_a.checkin(&checkin_body("2.0.0", None));
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let hooks = hook.hooks();
    let mut seen: Vec<String> = hooks
        .iter()
        .map(|h| {
            format!(
                "{} {}",
                h.body["key"].as_str().unwrap(),
                h.body["event"].as_str().unwrap()
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "failed-update:dev-pg opened",
            "failed-update:dev-pg resolved",
            "problem:dev-pg opened",
            "problem:dev-pg resolved",
            "silent:dev-pg opened",
            "silent:dev-pg resolved",
        ],
        "{hooks:?}"
    );
    assert!(hooks.iter().all(|h| h.signed));
    // The destination change is in the audit log.
    let Backend::Postgres(pg) = &backend else {
        unreachable!()
    };
    let audit = pg.psql("SELECT action FROM audit_log WHERE action LIKE 'alert.%'");
    assert_eq!(audit.trim(), "alert.destination.add", "{audit}");
    assert_no_panic(&a);
    assert_no_panic(&b);
}

/// A server whose e-mail alerts go to `smtp_url` (with `extra` flags), with one e-mail
/// destination, and a device whose failed update opens an alert.
fn mail_after_failed_update(w: &World, name: &str, smtp_url: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--poll-interval",
        "60s",
        "--smtp-url",
        smtp_url,
        "--smtp-from",
        "patchkit@example.com",
        "--alert-retry-base",
        "1s",
    ];
    args.extend_from_slice(extra);
    let s = server(w, name, &Backend::Sqlite, &args);
    let out = s.admin(&["alerts", "email", "add", "--to", "ops@example.com"]);
    assert!(out.starts_with("e-mail "), "{out}");
    let mut dev = Device::enroll(&s.url, "game", &format!("dev-{name}"), Some(SECRET));
    let mut body = checkin_body("1.0.0", None);
    body["results"] = json!([result(1, "2.0.0", false)]);
    timed_checkin(&mut dev, &body);
    s
}

/// The e-mail delivery of the one alert of `s` once it has been tried: (status, last error).
fn mail_delivery(s: &Server, device: &str) -> (String, String) {
    let mut out = (String::new(), String::new());
    wait_for(30, "an e-mail delivery attempt", || {
        let list = alerts(s, &[]);
        let a = alert(&list, &format!("failed-update:{device}"));
        let d = &a["deliveries"][0];
        out = (
            d["status"].as_str().unwrap_or("").to_string(),
            d["last_error"].as_str().unwrap_or("").to_string(),
        );
        out.0 == "done" || !out.1.is_empty()
    });
    out
}

/// E-mail over STARTTLS and over TLS from the first byte, to a relay whose self-signed
/// certificate is trusted with `--smtp-ca-cert`. Both relays refuse mail that is not
/// encrypted (aiosmtpd requires STARTTLS before MAIL when given a certificate), so a delivered
/// message went over TLS. An unknown certificate or a relay without STARTTLS is never sent to
/// in clear: the delivery fails with the reason and is retried.
#[test]
fn email_goes_over_starttls_or_tls_and_never_in_clear() {
    let w = world();
    let (cert, key) = e2e_tests::fleet::self_signed_cert(&w.path("."));
    let ca = cert.display().to_string();
    let starttls = SmtpSink::start_tls(&w.path("starttls"), (&cert, &key), false);
    let smtps = SmtpSink::start_tls(&w.path("smtps"), (&cert, &key), true);
    let plain = SmtpSink::start(&w.path("plain"));
    assert!(starttls.url.ends_with("?tls=required") && smtps.url.starts_with("smtps://"));

    let a = mail_after_failed_update(&w, "a", &starttls.url, &["--smtp-ca-cert", &ca]);
    let b = mail_after_failed_update(&w, "b", &smtps.url, &["--smtp-ca-cert", &ca]);
    // The relay's certificate is not trusted without the CA.
    let c = mail_after_failed_update(&w, "c", &starttls.url, &[]);
    // A relay that offers no STARTTLS gets nothing when TLS is required.
    let plain_required = format!("{}?tls=required", plain.url);
    let d = mail_after_failed_update(&w, "d", &plain_required, &["--smtp-ca-cert", &ca]);

    for (s, sink, dev) in [(&a, &starttls, "dev-a"), (&b, &smtps, "dev-b")] {
        wait_for(30, "the e-mail over TLS", || {
            sink.with_subject(&["opened", "failed update", dev]).len() == 1
        });
        let (status, err) = mail_delivery(s, dev);
        assert_eq!((status.as_str(), err.as_str()), ("done", ""), "{dev}");
        let mail = &sink.with_subject(&["opened", dev])[0];
        assert!(mail.body.contains("hash mismatch in big.bin"), "{mail:?}");
    }
    let (status, err) = mail_delivery(&c, "dev-c");
    assert_eq!(status, "pending", "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let (status, err) = mail_delivery(&d, "dev-d");
    assert_eq!(status, "pending", "{err}");
    assert!(err.to_lowercase().contains("tls"), "{err}");
    // Only the two trusted relays received anything, one message each.
    assert_eq!(starttls.messages().len(), 1, "{:?}", starttls.messages());
    assert_eq!(smtps.messages().len(), 1);
    assert!(plain.messages().is_empty(), "{:?}", plain.messages());

    // A CA with a plain URL, or a CA file that holds no certificate, stops the server at start.
    for (url, ca_file) in [
        (plain.url.as_str(), ca.clone()),
        (smtps.url.as_str(), w.path("secret").display().to_string()),
    ] {
        let out = e2e_tests::run(
            Command::new(e2e_tests::bin("patch-server"))
                .args(["serve", "--data"])
                .arg(w.path("refused"))
                .args(["--addr", "127.0.0.1:0", "--smtp-url", url])
                .args(["--smtp-from", "a@b.c", "--smtp-ca-cert", &ca_file]),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: started");
        assert!(err.contains("--smtp-ca-cert"), "{url}: {err}");
    }
    for s in [&a, &b, &c, &d] {
        assert_no_panic(s);
    }
}
