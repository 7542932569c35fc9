//! `patch-create publish` against a real Garage (S3 API for the publisher, its web endpoint for
//! the clients) and a local directory: only new objects move, clients see the old or the new
//! release at every moment (SIGKILLs at several points), pruning waits for its grace period,
//! `--dry-run` changes nothing (docs/hosting.md).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::garage::Garage;
use e2e_tests::{assert_same_tree, cmd, copy_tree, fails, last_json, ok, tree_state, World};

/// `patch-apply SUB` against the repository at `url`.
fn client(w: &World, sub: &str, app: &Path, url: &str) -> Command {
    let mut c = cmd("patch-apply");
    c.arg(sub)
        .arg("--app-dir")
        .arg(app)
        .args(["--repo", url])
        .arg("--public-key")
        .arg(&w.public);
    c
}

fn publish_json(c: &mut Command) -> serde_json::Value {
    last_json(&ok(c.arg("--json")))
}

fn get(url: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A key the report says was uploaded, with the given suffix.
fn uploaded_key(report: &serde_json::Value, suffix: &str) -> String {
    report["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["op"] == "upload")
        .filter_map(|c| c["key"].as_str())
        .find(|k| k.ends_with(suffix))
        .unwrap_or_else(|| panic!("no uploaded key ending in {suffix}: {report}"))
        .to_string()
}

#[test]
fn three_releases_published_to_garage_update_an_app_over_its_web_endpoint() {
    let g = Garage::start();
    let w = World::with_sizes(3, 256 << 10, 128 << 10);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let url = g.web_url("apps/demo");

    let mut reports = Vec::new();
    for i in 1..=3 {
        w.release(i, &[]);
        if i == 3 {
            // A dry run lists the new objects and changes nothing.
            let ts = || {
                get(&format!("{url}/metadata/timestamp.json"))
                    .bytes()
                    .unwrap()
            };
            let before = ts();
            let dry = publish_json(g.publish_cmd(&w.repo, "apps/demo").arg("--dry-run"));
            assert_eq!(dry["dry_run"], true);
            assert!(dry["uploaded"].as_u64() > Some(0), "{dry}");
            assert_eq!(ts(), before, "the dry run replaced timestamp.json");
            let again = publish_json(g.publish_cmd(&w.repo, "apps/demo").arg("--dry-run"));
            assert_eq!(
                again["changes"], dry["changes"],
                "the dry run changed something"
            );
            let check = last_json(&ok(client(&w, "check", &app, &url).arg("--json")));
            assert_eq!(check["latest"], "2.0.0", "{check}");
        }
        let r = publish_json(&mut g.publish_cmd(&w.repo, "apps/demo"));
        assert_eq!(r["dry_run"], false);
        assert!(r["uploaded"].as_u64() > Some(0), "{r}");
        assert_eq!(r["deleted"], 0);
        let changes = r["changes"].as_array().unwrap();
        assert_eq!(
            changes.last().and_then(|c| c["key"].as_str()),
            Some("metadata/timestamp.json"),
            "timestamp.json is uploaded last: {r}"
        );
        if i > 1 {
            // Only the new release's objects moved: every earlier one was skipped.
            assert!(r["skipped"].as_u64() > Some(0), "{r}");
            assert!(
                changes.iter().all(|c| c["key"]
                    .as_str()
                    .is_some_and(|k| !k.contains(&format!("/{}.0.0/", i - 1)))),
                "an object of release {} was uploaded again: {r}",
                i - 1
            );
        }
        reports.push(r);
    }

    // Nothing new: nothing moves.
    let r = publish_json(&mut g.publish_cmd(&w.repo, "apps/demo"));
    assert_eq!(
        (r["uploaded"].as_u64(), r["deleted"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert!(r["skipped"].as_u64() > Some(10), "{r}");

    // Headers: mutable files are revalidated, the rest cached for a year.
    let ts = get(&format!("{url}/metadata/timestamp.json"));
    assert_eq!(ts.status(), 200);
    assert_eq!(ts.headers()["cache-control"], "no-cache");
    assert_eq!(ts.headers()["content-type"], "application/json");
    let installer = uploaded_key(&reports[2], "installer.tar.zst");
    let inst = get(&format!("{url}/{installer}"));
    assert_eq!(inst.status(), 200);
    assert_eq!(
        inst.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(inst.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        inst.bytes().unwrap().as_ref(),
        std::fs::read(w.repo.join(&installer)).unwrap().as_slice()
    );
    // The tool's own files never leave the machine.
    assert!(w.repo.join(".patch-create.lock").exists());
    assert_eq!(get(&format!("{url}/.patch-create.lock")).status(), 404);

    // The app updates from 1.0.0 to 3.0.0 over HTTP from Garage, byte-identical.
    ok(&mut client(&w, "apply", &app, &url));
    assert_same_tree(&app, &w.releases[2]);
    // And a second app installs 3.0.0 from nothing.
    let fresh = w.path("fresh");
    ok(&mut client(&w, "apply", &fresh, &url));
    assert_same_tree(&fresh, &w.releases[2]);
    drop(g);
}

/// Runs a publish with `--concurrency 1`, pausing after each object, and SIGKILLs it once
/// `kill_after` objects are complete (`None`: lets it finish). Returns the objects completed.
fn publish_killed(g: &Garage, w: &World, kill_after: Option<usize>) -> usize {
    let mut c = g.publish_cmd(&w.repo, "r");
    c.args(["-v", "--concurrency", "1"])
        .env("PATCHKIT_PUBLISH_TEST_PAUSE_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start publish");
    let stderr = child.stderr.take().expect("stderr");
    let mut done = 0;
    let mut log = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        if line.starts_with("uploaded ") {
            done += 1;
            if Some(done) == kill_after {
                child.kill().expect("SIGKILL publish");
                break;
            }
        }
        log.push(line);
    }
    let st = child.wait().expect("wait");
    if kill_after.is_none() || Some(done) != kill_after {
        assert!(st.success(), "publish failed: {}", log.join("\n"));
    }
    done
}

/// What a client checking at this moment sees: a fresh copy of 1.0.0 updates to the old or
/// the new published release, never fails.
fn client_sees(w: &World, url: &str, n: usize, allowed: &[usize]) -> usize {
    let app = w.path(&format!("client-{n}"));
    copy_tree(&w.releases[0], &app);
    let check = last_json(&ok(client(w, "check", &app, url).arg("--json")));
    let latest = check["latest"].as_str().unwrap_or_default().to_string();
    ok(&mut client(w, "apply", &app, url));
    let state = tree_state(&app);
    let at = allowed
        .iter()
        .copied()
        .find(|v| state == tree_state(&w.releases[v - 1]))
        .unwrap_or_else(|| panic!("client {n} ended at none of {allowed:?} (check said {latest})"));
    assert_eq!(latest, format!("{at}.0.0"), "check and apply disagree");
    at
}

#[test]
fn publish_killed_at_several_points_leaves_clients_at_the_old_or_the_new_release() {
    let g = Garage::start();
    let w = World::with_sizes(3, 64 << 10, 32 << 10);
    let url = g.web_url("r");
    w.release(1, &[]);
    publish_killed(&g, &w, None);
    assert_eq!(client_sees(&w, &url, 0, &[1]), 1);
    w.release(2, &[]);
    w.release(3, &[]);
    let todo = publish_json(g.publish_cmd(&w.repo, "r").arg("--dry-run"))["uploaded"]
        .as_u64()
        .unwrap() as usize;
    assert!(todo >= 6, "too few objects to kill in between: {todo}");

    // Kill after the first object, half way, just before the timestamp, and right after it.
    let mut remaining = todo;
    let mut seen = Vec::new();
    for (n, kill_at) in [1, remaining / 2, 0, 0].into_iter().enumerate() {
        let kill_at = match n {
            2 => remaining - 1,
            3 => remaining,
            _ => kill_at,
        };
        let done = publish_killed(&g, &w, Some(kill_at));
        assert_eq!(done, kill_at);
        remaining -= done;
        let left = publish_json(g.publish_cmd(&w.repo, "r").arg("--dry-run"))["uploaded"]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(
            left, remaining,
            "a rerun would upload exactly what is missing"
        );
        let at = client_sees(&w, &url, n + 1, &[1, 3]);
        // Before the timestamp the client sees 1.0.0; once it is up, 3.0.0.
        assert_eq!(at, if remaining == 0 { 3 } else { 1 }, "kill {n}");
        seen.push(at);
    }
    assert_eq!(seen, [1, 1, 1, 3]);
    // The rerun after the last kill has nothing left but is harmless; the final app update is
    // byte-identical.
    let r = publish_json(&mut g.publish_cmd(&w.repo, "r"));
    assert_eq!(r["uploaded"], 0, "{r}");
    assert_eq!(client_sees(&w, &url, 9, &[3]), 3);
}

#[test]
fn pruned_objects_stay_through_the_grace_period_and_go_after_it() {
    let g = Garage::start();
    let w = World::with_sizes(2, 64 << 10, 32 << 10);
    let url = g.web_url("p");
    w.release(1, &[]);
    let first = publish_json(&mut g.publish_cmd(&w.repo, "p"));
    let v1_installer = uploaded_key(&first, "installer.tar.zst");
    // 2.0.0 keeping one release: 1.0.0's artifacts leave the local repository.
    w.release(2, &["--keep", "1"]);
    assert!(!w.repo.join(&v1_installer).exists());

    let grace = ["--prune-grace", "3s"];
    let r = publish_json(g.publish_cmd(&w.repo, "p").args(grace));
    let pending = r["pending_deletes"].as_u64().unwrap();
    assert!(pending > 0, "{r}");
    assert_eq!(r["deleted"], 0);
    assert_eq!(get(&format!("{url}/{v1_installer}")).status(), 200);
    // The first-seen times live in the destination, so a rerun continues the same grace.
    let state = get(&format!("{url}/.patchkit-publish.json"));
    assert_eq!(state.status(), 200);
    let state: serde_json::Value = serde_json::from_slice(&state.bytes().unwrap()).unwrap();
    assert!(state["missing_since"][&v1_installer].is_string(), "{state}");
    let r = publish_json(g.publish_cmd(&w.repo, "p").args(grace));
    assert_eq!(
        (r["pending_deletes"].as_u64(), r["deleted"].as_u64()),
        (Some(pending), Some(0))
    );
    assert_eq!(r["uploaded"], 0);

    std::thread::sleep(Duration::from_millis(3500));
    let dry = publish_json(g.publish_cmd(&w.repo, "p").args(grace).arg("--dry-run"));
    assert_eq!(dry["deleted"].as_u64(), Some(pending), "{dry}");
    assert_eq!(
        get(&format!("{url}/{v1_installer}")).status(),
        200,
        "dry run deleted"
    );
    let r = publish_json(g.publish_cmd(&w.repo, "p").args(grace));
    assert_eq!(
        (r["deleted"].as_u64(), r["pending_deletes"].as_u64()),
        (Some(pending), Some(0))
    );
    assert_eq!(get(&format!("{url}/{v1_installer}")).status(), 404);
    // Root versions, root.json and the timestamp are never pruned; the app still updates.
    for f in [
        "metadata/1.root.json",
        "metadata/root.json",
        "metadata/timestamp.json",
    ] {
        assert_eq!(get(&format!("{url}/{f}")).status(), 200, "{f}");
    }
    let app = w.path("app");
    ok(&mut client(&w, "apply", &app, &url));
    assert_same_tree(&app, &w.releases[1]);
}

#[test]
fn publish_to_a_directory_skips_what_is_there_and_refuses_mismatched_objects() {
    let w = World::with_sizes(2, 64 << 10, 32 << 10);
    w.release_all(2);
    let dest = w.path("site");
    let to = format!("file://{}", dest.display());
    let publish = || {
        let mut c = cmd("patch-create");
        c.args(["publish", "--repo"])
            .arg(&w.repo)
            .args(["--to", &to]);
        c
    };
    // A dry run on a directory that does not exist creates nothing.
    let dry = publish_json(publish().arg("--dry-run"));
    assert!(dry["uploaded"].as_u64() > Some(0));
    assert!(!dest.exists(), "the dry run created the destination");
    let r = publish_json(&mut publish());
    assert_eq!(r["uploaded"], dry["uploaded"]);
    // The copy is the repository without the tool's own files.
    let mut expected = tree_state(&w.repo);
    expected.retain(|k, _| !k.starts_with('.'));
    assert_eq!(tree_state(&dest), expected);
    assert_eq!(publish_json(&mut publish())["uploaded"], 0);

    // An object under an immutable name with other bytes: an error naming it, nothing written.
    let key = uploaded_key(&r, "manifest.json");
    let obj = dest.join(&key);
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes.push(b'\n');
    std::fs::write(&obj, &bytes).unwrap();
    let err = fails(&mut publish());
    assert!(
        err.contains(&key) && err.contains("--replace-mismatched"),
        "{err}"
    );
    assert_eq!(std::fs::read(&obj).unwrap(), bytes);
    let out = ok(publish().args(["--replace-mismatched", "--json"]));
    assert!(out.contains("\"uploaded\":1"), "{out}");
    assert_eq!(tree_state(&dest), expected);

    // Not a repository, or an unknown scheme: refused with the reason.
    let err = fails(
        cmd("patch-create")
            .args(["publish", "--repo"])
            .arg(w.path("rel"))
            .args(["--to", &to]),
    );
    assert!(err.contains("timestamp.json"), "{err}");
    let err = fails(
        cmd("patch-create")
            .args(["publish", "--repo"])
            .arg(&w.repo)
            .args(["--to", "ftp://x/y"]),
    );
    assert!(err.contains("unsupported scheme"), "{err}");
}
