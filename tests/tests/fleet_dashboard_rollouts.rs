//! The dashboard's rollout, pin and alert pages (issue 19) end to end: a real `patch-server`
//! (SQLite), simulated devices over real HTTP, a signed repository made by `patch-create`,
//! accounts made with the real CLI, and a real headless Chromium over WebDriver. What the
//! browser did is checked through the admin CLI (`rollout status --json`) and the audit log.
//!
//! With `PATCHKIT_SCREENSHOTS=1` the test also saves `docs/screenshots/rollouts.png` and
//! `docs/screenshots/alerts.png`.

use std::time::Duration;

use e2e_tests::browser::Browser;
use e2e_tests::fleet::{add_user, checkin_body, Backend, Device, Server};
use e2e_tests::{cmd, ok, World};
use serde_json::{json, Value};

const SECRET: &str = "correct horse battery staple";
const ALICE_PW: &str = "alice password 1";
const BOB_PW: &str = "bob password 22";

/// A dashboard POST with the session cookie, as a form: `(status, body)`.
fn post_form(url: &str, session: &str, form: &[(&str, &str)]) -> (u16, String) {
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
        .post(url)
        .header("cookie", format!("patchkit_session={session}"))
        .form(form)
        .send()
        .expect("post");
    let st = r.status().as_u16();
    (st, r.text().unwrap_or_default())
}

fn login(b: &Browser, url: &str, name: &str, password: &str) {
    b.goto(&format!("{url}/ui/login"));
    b.fill("#name", name);
    b.fill("#password", password);
    b.click("#login");
    b.wait_url(&format!("{name}'s overview"), |u| u.ends_with("/ui"));
}

fn shot(b: &Browser, name: &str) {
    if std::env::var("PATCHKIT_SCREENSHOTS").as_deref() == Ok("1") {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/screenshots")
            .join(format!("{name}.png"));
        b.screenshot(&p);
    }
}

/// Submits a form by clicking `css` and waits until the answer's page is shown (the click
/// returns before the navigation ends).
fn submit(b: &Browser, css: &str) {
    b.eval("document.documentElement.dataset.old = '1'; return 0;");
    b.click(css);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while b
        .eval("return document.readyState === 'complete' && !document.documentElement.dataset.old;")
        != json!(true)
    {
        assert!(std::time::Instant::now() < deadline, "no page after {css}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rollouts of `game` as `rollout status --json` prints them.
fn status(s: &Server) -> Vec<Value> {
    let v = s.admin_json(&["rollout", "status", "--app", "game"]);
    v.as_array().cloned().unwrap_or_else(|| panic!("{v:#}"))
}

#[test]
fn rollouts_pins_and_alerts_in_a_real_browser() {
    let backend = Backend::start("sqlite");
    // Releases 1.0.0, 2.0.0 and 3.0.0, with 3.0.0 yanked (never offered in the forms).
    let w = World::with_sizes(3, 16 << 10, 8 << 10);
    for v in 1..=3 {
        w.release(v, &[]);
    }
    ok(cmd("patch-create")
        .args(["yank", "--repo"])
        .arg(&w.repo)
        .args(["--version", "3.0.0", "--key"])
        .arg(&w.key)
        .args(["--reason", "bad build"]));
    let s = Server::start(&w.path("server"), &backend, &["--poll-interval", "60s"]);
    let url = s.url.clone();
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
    add_user(&s, &backend, "alice", "admin", ALICE_PW);
    add_user(&s, &backend, "bob", "viewer", BOB_PW);

    // Two devices on 1.0.0; one reports a failed update, which opens an alert.
    let mut good = Device::enroll(&url, "game", "dev-good", Some(SECRET));
    assert_eq!(good.checkin(&checkin_body("1.0.0", None)).status, 200);
    let mut bad = Device::enroll(&url, "game", "dev-bad", Some(SECRET));
    let mut body = checkin_body("1.0.0", None);
    body["results"] = json!([{"seq": 1, "finished_at": "2026-11-25T10:00:00Z", "from": "1.0.0",
        "to": "2.0.0", "method": "incremental", "bytes": 10, "seconds": 0.1, "ok": false,
        "error_kind": "verify", "error_message": "hash mismatch <b>x</b>",
        "started_by": "agent"}]);
    assert_eq!(bad.checkin(&body).status, 200);

    let b = Browser::start();
    login(&b, &url, "alice", ALICE_PW);

    // The overview counts the open alert in red and links to the alerts page.
    assert_eq!(b.text("#open-alerts .n-alerts"), "1");
    assert_eq!(
        b.css("#open-alerts b", "color"),
        "rgba(179, 38, 30, 1)",
        "open alerts are red"
    );
    b.click("#open-alerts a");
    b.wait_url("the alerts page", |u| u.ends_with("/ui/alerts"));
    let open = b.text("#open-alerts");
    assert!(
        open.contains("failed update") && open.contains("dev-bad"),
        "{open}"
    );
    assert!(
        open.contains("hash mismatch <b>x</b>"),
        "details are text: {open}"
    );
    assert!(b
        .text("#open-alerts .deliveries")
        .contains("no destinations"));
    shot(&b, "alerts");

    // Start a rollout of 2.0.0 at 10 % from the rollouts page; 3.0.0 (yanked) is not offered.
    b.goto(&format!("{url}/ui/rollouts"));
    b.click("a[href='/ui/apps/game/rollouts']");
    assert_eq!(b.count("#start-version option"), 2, "1.0.0 and 2.0.0 only");
    assert_eq!(b.count("#start-version option[value='3.0.0']"), 0);
    b.select("#start-version", "2.0.0");
    b.fill("#start-percent", "10");
    b.fill("#start-min-devices", "5");
    b.fill("#start-timeout", "10m");
    submit(&b, "#start-rollout");
    assert_eq!(b.count("#message"), 0, "started: {}", b.text("main"));
    let row = "#rollout-list tr[data-version='2.0.0']";
    assert_eq!(b.text(&format!("{row} .percent")), "10%");
    assert_eq!(b.text(&format!("{row} .state")), "running");
    let rs = status(&s);
    assert_eq!(rs.len(), 1, "{rs:#?}");
    let id = rs[0]["id"].as_str().expect("id").to_string();
    assert_eq!(
        (
            &rs[0]["state"],
            &rs[0]["percent"],
            &rs[0]["min_devices"],
            &rs[0]["timeout_ms"]
        ),
        (&json!("running"), &json!(10), &json!(5), &json!(600_000)),
        "{rs:#?}"
    );
    assert_eq!(rs[0]["created_by"], "user:alice");

    // Starting the same release again is refused with a message on the page, not a 500.
    b.select("#start-version", "2.0.0");
    b.fill("#start-percent", "10");
    submit(&b, "#start-rollout");
    assert!(
        b.text("#message").contains("resume, set or finish it"),
        "{}",
        b.text("#message")
    );
    // A bad percentage (the browser's own check bypassed) names the field.
    let session = b.cookie("patchkit_session").expect("session cookie");
    let csrf = b
        .attr("form.logout input[name=csrf]", "value")
        .expect("csrf field");
    let (st, text) = post_form(
        &format!("{url}/ui/apps/game/rollouts/{id}/percent"),
        &session,
        &[("percent", "150"), ("csrf", &csrf)],
    );
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("percent: must be"), "{text}");
    assert_eq!(status(&s)[0]["percent"], 10);

    // Raise it to 50 %, then halt it with a reason: the reason is on the page, in red.
    b.goto(&format!("{url}/ui/apps/game/rollouts"));
    b.fill(&format!("{row} .set-percent"), "50");
    submit(&b, &format!("{row} button.set"));
    assert_eq!(b.text(&format!("{row} .percent")), "50%");
    assert_eq!(status(&s)[0]["percent"], 50);
    b.fill(
        &format!("{row} .halt-reason-input"),
        "crash reports from beta",
    );
    submit(&b, &format!("{row} button.halt"));
    let reason = b.text(&format!("{row} .halt-reason"));
    assert!(
        reason.contains("crash reports from beta") && reason.contains("user:alice"),
        "{reason}"
    );
    assert_eq!(
        b.css(&format!("{row} .halt-reason"), "color"),
        "rgba(179, 38, 30, 1)"
    );
    shot(&b, "rollouts");
    let rs = status(&s);
    assert_eq!(rs[0]["state"], "halted", "{rs:#?}");
    assert!(rs[0]["halt_reason"]
        .as_str()
        .unwrap_or_default()
        .contains("crash reports from beta"));

    // Push 2.0.0 to dev-good for 7 days from the rollouts page: the halted rollout offers it
    // to no one, the push does (push > rollout), until it is removed.
    b.goto(&format!("{url}/ui/apps/game/rollouts"));
    assert_eq!(b.count("#no-pushes"), 1);
    assert_eq!(b.count("#push-version option[value='3.0.0']"), 0, "yanked");
    good.etag = None;
    let r = good.checkin(&checkin_body("1.0.0", None));
    assert_eq!(r.body["directive"]["version"], "1.0.0", "{:?}", r.body);
    b.select("#push-version", "2.0.0");
    b.select("#push-kind", "device");
    b.fill("#push-target", "dev-good");
    b.fill("#push-expires", "7d");
    submit(&b, "#push-release");
    assert_eq!(b.count("#message"), 0, "pushed: {}", b.text("main"));
    let push_row = "#push-list tr.push[data-target='dev-good']";
    assert_eq!(b.text(&format!("{push_row} .to")), "device dev-good");
    assert_eq!(b.text(&format!("{push_row} .version")), "2.0.0");
    let expires = b.text(&format!("{push_row} .expires"));
    assert!(
        expires.starts_with("20") && !expires.contains("expired"),
        "{expires}"
    );
    let pushes = s.admin_json(&["pushes", "--app", "game"]);
    assert_eq!(pushes[0]["target"], "dev-good", "{pushes:#}");
    assert_eq!(pushes[0]["created_by"], "user:alice", "{pushes:#}");
    let left = pushes[0]["expires_ms"].as_i64().expect("expiry")
        - pushes[0]["created_ms"].as_i64().expect("created");
    assert_eq!(left, 7 * 86_400_000, "{pushes:#}");
    good.etag = None;
    let r = good.checkin(&checkin_body("1.0.0", None));
    assert_eq!(
        (
            &r.body["directive"]["version"],
            &r.body["directive"]["reason"]
        ),
        (&json!("2.0.0"), &json!("push")),
        "{:?}",
        r.body
    );
    // A bad lifetime and an unknown device are refused on the page, naming the field.
    b.select("#push-kind", "all");
    b.fill("#push-expires", "soon");
    submit(&b, "#push-release");
    assert!(
        b.text("#message").contains("expires_in"),
        "{}",
        b.text("#message")
    );
    b.select("#push-kind", "device");
    b.fill("#push-target", "no-such-device");
    submit(&b, "#push-release");
    assert!(
        b.text("#message").contains("no-such-device"),
        "{}",
        b.text("#message")
    );
    assert_eq!(
        s.admin_json(&["pushes", "--app", "game"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Remove it: dev-good is offered nothing again.
    submit(&b, &format!("{push_row} button.unpush"));
    assert_eq!(b.count("#no-pushes"), 1, "{}", b.text("main"));
    good.etag = None;
    let r = good.checkin(&checkin_body("1.0.0", None));
    assert_eq!(r.body["directive"]["version"], "1.0.0", "{:?}", r.body);
    // A tag's pin is listed on the same page and removed there.
    s.admin(&["tag", "dev-bad", "canary"]);
    s.admin(&[
        "pin",
        "--app",
        "game",
        "--version",
        "1.0.0",
        "--tag",
        "canary",
    ]);
    b.goto(&format!("{url}/ui/apps/game/rollouts"));
    let pin_row = "#pin-list tr.pin[data-target='canary']";
    assert_eq!(b.text(&format!("{pin_row} .to")), "tag canary");
    submit(&b, &format!("{pin_row} button.unpin"));
    assert_eq!(b.count("#no-pins"), 1, "{}", b.text("main"));
    assert_eq!(s.admin_json(&["pins", "--app", "game"]), json!([]));

    // Pin dev-good at 1.0.0 from its page, see it, and the decision holds it; then unpin.
    b.goto(&format!("{url}/ui/devices/dev-good"));
    assert_eq!(b.text("#pin-state"), "Not pinned.");
    assert_eq!(b.count("#unpin-form"), 0);
    b.select("#pin-version", "1.0.0");
    submit(&b, "#pin-button");
    assert!(b.url().contains("/ui/devices/dev-good"), "{}", b.url());
    assert_eq!(b.text("#pin-state .pinned-version"), "1.0.0");
    assert!(b.text("#pin-state").contains("user:alice"));
    let pins = s.admin_json(&["pins", "--app", "game"]);
    assert!(pins.to_string().contains("dev-good"), "{pins:#}");
    submit(&b, "#unpin-button");
    assert_eq!(b.text("#pin-state"), "Not pinned.");
    let pins = s.admin_json(&["pins", "--app", "game"]);
    assert!(!pins.to_string().contains("dev-good"), "{pins:#}");

    // Resume, then finish, from the page.
    b.goto(&format!("{url}/ui/apps/game/rollouts"));
    submit(&b, &format!("{row} button.resume"));
    assert_eq!(b.text(&format!("{row} .state")), "running");
    submit(&b, &format!("{row} button.finish"));
    assert!(b.text(&format!("{row} .state")).starts_with("finished"));
    assert_eq!(
        b.count(&format!("{row} button.set")),
        0,
        "finished: no forms"
    );
    assert_eq!(status(&s)[0]["state"], "finished");

    // The audit log names the user for each action.
    b.goto(&format!("{url}/ui/audit"));
    let audit = b.text("#audit");
    for action in [
        "rollout.start",
        "rollout.set",
        "rollout.halt",
        "rollout.resume",
        "rollout.finish",
        "pin.set",
        "pin.remove",
        "push",
        "push.remove",
    ] {
        assert!(audit.contains(action), "{action} in {audit}");
    }
    assert!(audit.contains("user:alice"), "{audit}");

    // CSRF: the new actions refuse a form without the token.
    let base = format!("{url}/ui/apps/game/rollouts");
    for (path, form) in [
        (base.clone(), vec![("version", "2.0.0"), ("percent", "5")]),
        (format!("{base}/{id}/percent"), vec![("percent", "5")]),
        (format!("{base}/{id}/halt"), vec![("reason", "x")]),
        (format!("{base}/{id}/resume"), vec![]),
        (format!("{base}/{id}/finish"), vec![]),
        (
            format!("{url}/ui/devices/dev-good/pin"),
            vec![("version", "1.0.0")],
        ),
        (format!("{url}/ui/devices/dev-good/unpin"), vec![]),
        (
            format!("{url}/ui/apps/game/pushes"),
            vec![("version", "2.0.0"), ("target_kind", "all")],
        ),
        (
            format!("{url}/ui/apps/game/pushes/remove"),
            vec![("target_kind", "all")],
        ),
        (
            format!("{url}/ui/apps/game/pins/remove"),
            vec![("target_kind", "tag"), ("target", "canary")],
        ),
    ] {
        let (st, _) = post_form(&path, &session, &form);
        assert_eq!(st, 403, "{path} without CSRF");
    }

    // A viewer reads the pages but sees none of the forms, and cannot act.
    b.click("form.logout button");
    login(&b, &url, "bob", BOB_PW);
    b.goto(&format!("{url}/ui/apps/game/rollouts"));
    assert_eq!(b.count(row), 1);
    assert_eq!(b.count("#start-form"), 0);
    assert_eq!(b.count("#rollout-list form"), 0);
    assert_eq!(b.count("#push-form"), 0);
    b.goto(&format!("{url}/ui/devices/dev-good"));
    assert_eq!(b.text("#pin-state"), "Not pinned.");
    assert_eq!(b.count("#pin-form"), 0);
    b.goto(&format!("{url}/ui/alerts"));
    assert!(b.text("#open-alerts").contains("dev-bad"));
    let bob = b.cookie("patchkit_session").expect("bob's session");
    let bob_csrf = b
        .attr("form.logout input[name=csrf]", "value")
        .expect("csrf");
    let (st, text) = post_form(
        &format!("{url}/ui/devices/dev-good/pin"),
        &bob,
        &[("version", "1.0.0"), ("csrf", &bob_csrf)],
    );
    assert_eq!(st, 403, "{text}");
    assert!(
        !s.admin_json(&["pins", "--app", "game"])
            .to_string()
            .contains("dev-good"),
        "a viewer cannot pin"
    );

    let log = std::fs::read_to_string(s.data.join("server.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}
