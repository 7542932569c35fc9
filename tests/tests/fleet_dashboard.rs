//! The web dashboard (issue 19) end to end: a real `patch-server`, simulated devices over real
//! HTTP, a signed repository made by `patch-create` (with a signed yank), accounts made with the
//! real CLI, and a real headless Chromium over WebDriver (`e2e_tests::browser`).
//!
//! With `PATCHKIT_SCREENSHOTS=1` the test also saves `docs/screenshots/*.png`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_tests::browser::Browser;
use e2e_tests::fleet::{add_user, checkin_body, Backend, Device, Server};
use e2e_tests::{cmd, ok, World};
use serde_json::json;

const SECRET: &str = "correct horse battery staple";
const ALICE_PW: &str = "alice password 1";
const BOB_PW: &str = "bob password 22";
/// What the hostile device puts in its host name and state document.
const XSS: &str = "<script>window.pwned=1;document.title='pwned'</script>";

/// Releases 1.0.0, 2.0.0 (notes and a link) and 3.0.0, then 3.0.0 yanked with a reason.
fn world() -> World {
    let w = World::with_sizes(3, 32 << 10, 16 << 10);
    w.release(1, &[]);
    let notes = w.path("NOTES.md");
    std::fs::write(&notes, "Faster saves.\n<b>not bold</b>\n").expect("notes");
    let notes_s = notes.display().to_string();
    w.release(
        2,
        &[
            "--notes",
            &notes_s,
            "--link",
            "https://tracker.example/issues/42",
        ],
    );
    w.release(3, &[]);
    ok(cmd("patch-create")
        .args(["yank", "--repo"])
        .arg(&w.repo)
        .args(["--version", "3.0.0", "--key"])
        .arg(&w.key)
        .args(["--reason", "corrupts saves on Windows (#123)"]));
    w
}

/// Every file under `dir`.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A dashboard POST with the session cookie, as a form.
fn post_form(url: &str, session: &str, form: &[(&str, &str)]) -> (u16, String) {
    let r = http()
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
}

/// Saves `docs/screenshots/NAME.png` when asked to (from the SQLite run only).
fn shot(b: &Browser, backend: &Backend, name: &str) {
    if std::env::var("PATCHKIT_SCREENSHOTS").as_deref() == Ok("1")
        && matches!(backend, Backend::Sqlite)
    {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/screenshots")
            .join(format!("{name}.png"));
        b.screenshot(&p);
    }
}

#[test]
fn dashboard_in_a_real_browser_sqlite() {
    dashboard_in_a_real_browser(&Backend::start("sqlite"));
}

#[test]
fn dashboard_in_a_real_browser_postgres() {
    dashboard_in_a_real_browser(&Backend::start("postgres"));
}

fn dashboard_in_a_real_browser(backend: &Backend) {
    let w = world();
    let s = Server::start(
        &w.path("server"),
        backend,
        &["--poll-interval", "60s", "--silent-after", "3"],
    );
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
    add_user(&s, backend, "alice", "admin", ALICE_PW);
    let bob_pw = w.path("bob.pw");
    std::fs::write(&bob_pw, format!("{BOB_PW}\n")).expect("pw file");
    ok(cmd("patch-server")
        .args(["user", "add", "--data"])
        .arg(&s.data)
        .args(backend.db_args())
        .args(["--name", "bob", "--role", "viewer", "--password-file"])
        .arg(&bob_pw));
    let users = ok(cmd("patch-server")
        .args(["user", "list", "--data"])
        .arg(&s.data)
        .args(backend.db_args()));
    assert!(
        users.contains("alice") && users.contains("viewer"),
        "{users}"
    );

    // The fleet: a healthy device, one whose update failed, one that never checked in
    // (silent), and a hostile one.
    let mut good = Device::enroll(&url, "game", "dev-good", Some(SECRET));
    assert_eq!(good.checkin(&checkin_body("2.0.0", None)).status, 200);
    let mut bad = Device::enroll(&url, "game", "dev-bad", Some(SECRET));
    let mut body = checkin_body("1.0.0", None);
    body["results"] = json!([{"seq": 1, "finished_at": "2026-11-25T10:00:00Z", "from": "1.0.0",
        "to": "2.0.0", "method": "incremental", "bytes": 10, "seconds": 0.1, "ok": false,
        "error_kind": "verify", "error_message": "hash mismatch", "started_by": "agent"}]);
    assert_eq!(bad.checkin(&body).status, 200);
    let _silent = Device::enroll(&url, "game", "dev-silent", Some(SECRET));
    let mut evil = Device::enroll(&url, "game", "dev-evil", Some(SECRET));
    let mut body = checkin_body("2.0.0", Some(json!({"note": XSS})));
    body["hostname"] = json!(XSS);
    assert_eq!(evil.checkin(&body).status, 200);

    let b = Browser::start();

    // Not logged in: every page sends the browser to the login page.
    b.goto(&format!("{url}/ui/devices"));
    assert!(b.url().ends_with("/ui/login"), "{}", b.url());

    // Log in; the overview counts the failed and silent devices in red.
    login(&b, &url, "alice", ALICE_PW);
    b.wait_url("the overview", |u| u.ends_with("/ui"));
    assert_eq!(b.text("#app-game .n-failed"), "1");
    assert_eq!(b.text("#app-game .n-silent"), "1");
    assert_eq!(
        b.count("#app-game svg.chart rect.bar"),
        3,
        "2.0.0, 1.0.0, none"
    );
    shot(&b, backend, "overview");

    // The devices table: the failed and the silent device are red.
    b.goto(&format!("{url}/ui/devices"));
    assert_eq!(b.count("#devices tbody tr"), 4);
    assert!(b.count("tr.failed[data-id='dev-bad']") == 1);
    assert!(b.count("tr.silent[data-id='dev-silent']") == 1);
    assert_eq!(
        b.css("tr[data-id='dev-bad'] td", "color"),
        "rgba(179, 38, 30, 1)",
        "failed rows are red"
    );
    assert_ne!(
        b.css("tr[data-id='dev-good'] td", "color"),
        "rgba(179, 38, 30, 1)"
    );
    shot(&b, backend, "devices");

    // Filter: failed only, then by id text; sort by version descending.
    b.select("#f-status", "failed");
    b.click("#apply");
    b.wait_url("the filtered list", |u| u.contains("failed"));
    assert_eq!(b.count("#devices tbody tr"), 1);
    assert!(b.text("#devices tbody").contains("dev-bad"));
    b.goto(&format!("{url}/ui/devices?q=GOOD"));
    assert_eq!(b.count("#devices tbody tr"), 1);
    b.goto(&format!("{url}/ui/devices?sort=version&dir=desc"));
    let first = b.attr("#devices tbody tr", "data-id").unwrap_or_default();
    assert!(first == "dev-evil" || first == "dev-good", "{first}");
    b.goto(&format!("{url}/ui/devices?status=bogus"));
    assert!(
        b.text("#error").contains("status"),
        "bad filters name the field"
    );

    // A hostile host name and state document are shown as text and never run.
    b.goto(&format!("{url}/ui/devices/dev-evil"));
    assert_eq!(b.title(), "Device dev-evil · patchkit fleet");
    assert_eq!(b.eval("return typeof window.pwned;"), json!("undefined"));
    assert!(b.text("#state").contains(XSS), "{}", b.text("#state"));
    assert!(b.text("#facts").contains(XSS));
    b.goto(&format!("{url}/ui/devices?q=evil"));
    assert!(b.text("td.host").contains("<script>"));
    assert_eq!(b.eval("return typeof window.pwned;"), json!("undefined"));

    // Queue upload-logs from the device page; the device uploads, and the file is listed
    // and downloads as an attachment.
    b.goto(&format!("{url}/ui/devices/dev-good"));
    b.select("#command-kind", "upload-logs");
    b.click("#queue");
    assert!(b.text("#command-list").contains("upload-logs"));
    let a = good.checkin(&checkin_body("2.0.0", None));
    let cmd_id = a.body["commands"][0]["id"]
        .as_str()
        .expect("the device got the command")
        .to_string();
    assert_eq!(a.body["commands"][0]["kind"], "upload-logs");
    let log = b"line 1\n<script>alert(1)</script>\n".to_vec();
    assert_eq!(good.upload(&cmd_id, "app.log", log.clone()).status, 200);
    assert_eq!(
        good.result(&cmd_id, &json!({"outcome": "ok", "message": "1 file"}))
            .status,
        200
    );
    b.goto(&format!("{url}/ui/devices/dev-good"));
    assert!(b.text("#upload-list").contains("app.log"));
    assert!(b.text("#command-list").contains("ok"));
    shot(&b, backend, "device");
    let href = b.attr("#upload-list a.download", "href").expect("link");
    let session = b.cookie("patchkit_session").expect("session cookie");
    let r = http()
        .get(format!("{url}{href}"))
        .header("cookie", format!("patchkit_session={session}"))
        .send()
        .expect("download");
    assert_eq!(r.status().as_u16(), 200);
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(cd, "attachment; filename=\"app.log\"");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().expect("body").to_vec(), log);

    // The releases page: notes, the link, the signed yank with its reason, changes.
    b.goto(&format!("{url}/ui/apps/game/releases"));
    assert_eq!(b.count("section.release"), 3);
    assert!(b
        .text("#release-3\\.0\\.0 .yank")
        .contains("corrupts saves on Windows (#123)"));
    assert_eq!(b.count("#release-2\\.0\\.0.yanked"), 0);
    assert!(b
        .text("#release-2\\.0\\.0 .notes")
        .contains("<b>not bold</b>"));
    assert_eq!(
        b.attr("#release-2\\.0\\.0 .links a", "href").as_deref(),
        Some("https://tracker.example/issues/42")
    );
    assert!(b.text("#release-2\\.0\\.0 .changes").contains("From 1.0.0"));
    assert!(b.text("#release-2\\.0\\.0 h2").contains("2 devices"));
    shot(&b, backend, "releases");
    // Manifests that verified are kept by their signed hashes: with every manifest file gone
    // from the repository, the page still shows the notes (only metadata is read again).
    let hidden: Vec<(PathBuf, PathBuf)> = walk_files(&w.repo.join("targets"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .map(|p| (p.clone(), p.with_extension("json.hidden")))
        .collect();
    assert!(hidden.len() >= 3, "{hidden:?}");
    for (from, to) in &hidden {
        std::fs::rename(from, to).expect("hide manifest");
    }
    b.goto(&format!("{url}/ui/apps/game/releases"));
    assert!(b
        .text("#release-2\\.0\\.0 .notes")
        .contains("<b>not bold</b>"));
    assert_eq!(b.count(".release .error"), 0, "{}", b.text("body"));
    for (from, to) in &hidden {
        std::fs::rename(to, from).expect("restore manifest");
    }

    // CSRF: the same form posted without the token, or with a wrong one, is refused.
    let dev_url = format!("{url}/ui/devices/dev-good/commands");
    let (st, _) = post_form(&dev_url, &session, &[("kind", "report-state")]);
    assert_eq!(st, 403, "no CSRF token");
    let (st, _) = post_form(
        &dev_url,
        &session,
        &[("kind", "report-state"), ("csrf", &"0".repeat(64))],
    );
    assert_eq!(st, 403, "wrong CSRF token");
    let csrf = b
        .attr("form.logout input[name=csrf]", "value")
        .expect("csrf field");
    let (st, _) = post_form(
        &dev_url,
        &session,
        &[("kind", "set-interval"), ("secs", "1"), ("csrf", &csrf)],
    );
    assert_eq!(st, 400, "bad values are refused naming the field");
    let (st, _) = post_form(
        &dev_url,
        &session,
        &[("kind", "report-state"), ("csrf", &csrf)],
    );
    assert_eq!(st, 303, "with the token the same form is accepted");

    // The audit log names the user.
    b.goto(&format!("{url}/ui/audit"));
    let audit = b.text("#audit");
    assert!(
        audit.contains("user:alice") && audit.contains("command.queue"),
        "{audit}"
    );

    // Log out; the old session cookie is dead.
    b.click("form.logout button");
    b.wait_url("the login page after logging out", |u| {
        u.ends_with("/ui/login")
    });
    let r = http()
        .get(format!("{url}/ui/devices"))
        .header("cookie", format!("patchkit_session={session}"))
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 303);

    // A viewer reads but sees no forms and cannot act.
    login(&b, &url, "bob", BOB_PW);
    b.goto(&format!("{url}/ui/devices/dev-good"));
    assert!(b.text("#command-list").contains("upload-logs"));
    assert_eq!(b.count("#command-form"), 0);
    let bob = b.cookie("patchkit_session").expect("bob's session");
    let bob_csrf = b
        .attr("form.logout input[name=csrf]", "value")
        .expect("csrf");
    let (st, text) = post_form(
        &dev_url,
        &bob,
        &[("kind", "report-state"), ("csrf", &bob_csrf)],
    );
    assert_eq!(st, 403, "{text}");
    assert!(text.contains("viewer"), "{text}");

    // Login throttling: five wrong passwords lock alice out from this address, even with
    // the right one, and say so.
    for _ in 0..5 {
        let r = http()
            .post(format!("{url}/ui/login"))
            .form(&[("name", "alice"), ("password", "wrong")])
            .send()
            .expect("login");
        assert_eq!(r.status().as_u16(), 401);
    }
    b.click("form.logout button");
    b.wait_url("the login page after logging out", |u| {
        u.ends_with("/ui/login")
    });
    login(&b, &url, "alice", ALICE_PW);
    b.wait_css("#login-error");
    assert!(b.url().ends_with("/ui/login"), "{}", b.url());
    assert!(
        b.text("#login-error").contains("too many failed logins"),
        "{}",
        b.text("#login-error")
    );
    // Bob, another user, is not locked out.
    login(&b, &url, "bob", BOB_PW);
    b.wait_url("bob's overview", |u| u.ends_with("/ui"));
    b.goto(&format!("{url}/ui/audit"));
    assert!(b.text("#audit").contains("login.failed"));

    let log = std::fs::read_to_string(s.data.join("server.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}
