//! Self-patching (issue 4) with a real running program: `tests/demo-app/main.rs`, compiled
//! here with `rustc` once per version, runs from the app dir, reads a resource in a loop and
//! runs `patch-apply apply --hand-over` when asked. Warm patches keep its PID; cold patches go
//! through `self-patcher`, which replaces the executable and relaunches it. `self-patcher` is
//! also killed at points spread over its run and re-run on the same plan, and given a plan
//! that fails half-way.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::*;

/// Compiles the demo app reporting `version` into `out`.
fn build_demo(version: &str, out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-app/main.rs");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let st = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=1",
            "-C",
            "strip=symbols",
            "-o",
        ])
        .arg(out)
        .arg(&src)
        .env("DEMO_VERSION", version)
        .status()
        .expect("rustc starts");
    assert!(st.success(), "rustc failed on {}", src.display());
}

/// A world with two releases of the demo app: `code_changes` says whether v2's executable
/// differs (cold) or only its resource (warm).
fn demo_world(code_changes: bool) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let rel = dir.path().join("rel");
    let v1 = rel.join("v1");
    let v2 = rel.join("v2");
    build_demo("1.0.0", &v1.join("bin/demo-app"));
    if code_changes {
        build_demo("2.0.0", &v2.join("bin/demo-app"));
    } else {
        std::fs::create_dir_all(v2.join("bin")).expect("mkdir");
        std::fs::copy(v1.join("bin/demo-app"), v2.join("bin/demo-app")).expect("copy");
    }
    for (v, text) in [(&v1, "hello from 1"), (&v2, "hello from 2")] {
        std::fs::create_dir_all(v.join("resources")).expect("mkdir");
        std::fs::write(v.join("resources/message.txt"), text).expect("write");
    }
    let keys = dir.path().join("keys");
    ok(cmd("patch-create").args(["keygen", "--out"]).arg(&keys));
    let w = World {
        repo: dir.path().join("repo"),
        key: keys.join("release.key"),
        public: keys.join("release.pub"),
        releases: vec![v1, v2],
        dir,
    };
    w.release_all(2);
    w
}

fn read_log(control: &Path) -> String {
    std::fs::read_to_string(control.join("log")).unwrap_or_default()
}

/// Waits until the demo's log has a line containing every one of `parts`; returns it.
fn wait_log(control: &Path, parts: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let log = read_log(control);
        if let Some(l) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no log line with {parts:?}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_demo(app: &Path, control: &Path) -> Child {
    std::fs::create_dir_all(control).expect("mkdir");
    Command::new(app.join("bin/demo-app"))
        .arg("--app-dir")
        .arg(app)
        .arg("--control")
        .arg(control)
        .stdin(Stdio::null())
        .spawn()
        .expect("demo starts")
}

/// Asks the demo to run `argv` (written atomically).
fn request_update(control: &Path, argv: &[String]) {
    let tmp = control.join("update.tmp");
    std::fs::write(&tmp, argv.join("\n")).expect("write");
    std::fs::rename(&tmp, control.join("update")).expect("rename");
}

fn update_argv(w: &World, app: &Path) -> Vec<String> {
    vec![
        bin("patch-apply").display().to_string(),
        "apply".into(),
        "--app-dir".into(),
        app.display().to_string(),
        "--repo".into(),
        w.repo.display().to_string(),
        "--public-key".into(),
        w.public.display().to_string(),
        "--json".into(),
        "--hand-over".into(),
        "--self-patcher".into(),
        bin("self-patcher").display().to_string(),
    ]
}

fn pid_in(line: &str) -> u32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("pid= in line")
}

fn stop(control: &Path, pid: u32) {
    std::fs::write(control.join("stop"), "").expect("write");
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

#[test]
fn warm_patch_changes_the_resource_while_the_app_keeps_running_and_notifies_it() {
    let w = demo_world(false);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let c = last_json(&ok(w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(c["restart_required"], false);
    let control = w.path("control");
    let mut child = start_demo(&app, &control);
    let pid = child.id();
    wait_log(
        &control,
        &["resource", &format!("pid={pid}"), "content=hello from 1"],
    );
    let mut argv = update_argv(&w, &app);
    argv.push("--notify".into());
    argv.push("touch".into());
    argv.push("--notify-arg".into());
    argv.push(control.join("reload").display().to_string());
    request_update(&control, &argv);
    let done = wait_log(&control, &["update-done"]);
    assert!(
        done.contains("outcome=in_place"),
        "{done}\n{}",
        read_log(&control)
    );
    // The notify command ran after the patch was in place: the app reloaded the new content.
    wait_log(
        &control,
        &["reloaded", &format!("pid={pid}"), "content=hello from 2"],
    );
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the app exited"
    );
    assert_same_tree(&app, &w.releases[1]);
    stop(&control, pid);
    let _ = child.wait();
}

#[test]
fn cold_patch_hands_over_to_self_patcher_which_replaces_the_executable_and_relaunches_it() {
    let w = demo_world(true);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let c = last_json(&ok(w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(c["restart_required"], true);
    let control = w.path("control");
    let mut child = start_demo(&app, &control);
    let pid = child.id();
    wait_log(&control, &["start", &format!("pid={pid}"), "version=1.0.0"]);
    let mut argv = update_argv(&w, &app);
    argv.push("--".into());
    argv.extend([
        app.join("bin/demo-app").display().to_string(),
        "--app-dir".into(),
        app.display().to_string(),
        "--control".into(),
        control.display().to_string(),
    ]);
    request_update(&control, &argv);
    let done = wait_log(&control, &["update-done"]);
    assert!(
        done.contains("outcome=handed_over"),
        "{done}\n{}",
        read_log(&control)
    );
    // The program exits; self-patcher replaces it and starts the new version.
    let st = child.wait().expect("wait");
    assert!(st.success());
    let line = wait_log(&control, &["start", "version=2.0.0"]);
    let new_pid = pid_in(&line);
    assert_ne!(new_pid, pid);
    wait_log(
        &control,
        &[
            "resource",
            &format!("pid={new_pid}"),
            "version=2.0.0",
            "content=hello from 2",
        ],
    );
    assert_same_tree(&app, &w.releases[1]);
    let c = last_json(&ok(w.apply_cmd("check", &app).arg("--json")));
    assert_eq!(c["up_to_date"], true);
    assert_eq!(c["installed"], "2.0.0");
    assert!(
        !app.join(".patchkit/self-patch.json").exists(),
        "the finished plan is removed"
    );
    stop(&control, new_pid);
    // The update can be rolled back like any other.
    ok(cmd("patch-apply").args(["rollback", "--app-dir"]).arg(&app));
    assert_same_tree(&app, &w.releases[0]);
}

#[test]
fn cold_update_outside_a_running_app_is_simply_applied() {
    let w = demo_world(true);
    let app = w.path("app");
    copy_tree(&w.releases[0], &app);
    let r = last_json(&ok(w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["restart_required"], true);
    assert_same_tree(&app, &w.releases[1]);
}

/// Two releases with many files, all changed, so that `self-patcher` runs long enough to be
/// killed at several points; and a plan for them, prepared by `patch-apply --hand-over`.
struct PlanWorld {
    w: World,
    /// An app dir at v1 holding the staged update and its plan (never run).
    template: PathBuf,
}

const PLAN_FILES: usize = 300;

fn plan_world() -> PlanWorld {
    let dir = tempfile::tempdir().expect("tempdir");
    let rel = dir.path().join("rel");
    let v1 = rel.join("v1");
    let v2 = rel.join("v2");
    for (v, tag) in [(&v1, "one"), (&v2, "two")] {
        for i in 0..PLAN_FILES {
            let p = v.join(format!("data/d{:02}/f{i:05}.txt", i / 20));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, format!("file {i} of version {tag}\n").repeat(8)).expect("write");
        }
        std::fs::create_dir_all(v.join("bin")).expect("mkdir");
        std::fs::write(v.join("bin/app"), format!("#!/bin/sh\necho {tag}\n")).expect("write");
        let _ = Command::new("chmod")
            .arg("755")
            .arg(v.join("bin/app"))
            .status();
    }
    let keys = dir.path().join("keys");
    ok(cmd("patch-create").args(["keygen", "--out"]).arg(&keys));
    let w = World {
        repo: dir.path().join("repo"),
        key: keys.join("release.key"),
        public: keys.join("release.pub"),
        releases: vec![v1, v2],
        dir,
    };
    w.release_all(2);
    let template = w.path("template");
    copy_tree(&w.releases[0], &template);
    // A process to wait for that is not running from the app dir; `true` stands in for
    // self-patcher so that the plan is written but not run.
    let mut sleeper = Command::new("sleep").arg("600").spawn().expect("sleep");
    let out = ok(w
        .apply_cmd("apply", &template)
        .args([
            "--json",
            "--hand-over",
            "--self-patcher",
            "/bin/true",
            "--wait-pid",
        ])
        .arg(sleeper.id().to_string()));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(last_json(&out)["outcome"], "handed_over");
    assert_same_tree(&template, &w.releases[0]);
    PlanWorld { w, template }
}

/// A copy of the template app at `app` whose plan points at it and waits for nothing.
fn plan_copy(pw: &PlanWorld, app: &Path) -> PathBuf {
    copy_tree(&pw.template, app);
    let plan = app.join(".patchkit/self-patch.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan).expect("plan")).expect("json");
    v["app_dir"] = serde_json::Value::String(app.display().to_string());
    v.as_object_mut().expect("object").remove("wait_pid");
    std::fs::write(&plan, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
    plan
}

fn old_or_new(
    now: &BTreeMap<String, String>,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) {
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).chain(now.keys()).collect();
    for p in paths {
        let (n, o, w) = (now.get(p), old.get(p), new.get(p));
        assert!(
            n == o || n == w,
            "{p}: {n:?} is neither old {o:?} nor new {w:?}"
        );
    }
}

#[test]
fn self_patcher_killed_at_points_spread_over_its_run_resumes_to_the_new_version() {
    let pw = plan_world();
    let old = tree_state(&pw.w.releases[0]);
    let new = tree_state(&pw.w.releases[1]);
    // Measure a whole run.
    let app = pw.w.path("measure");
    let plan = plan_copy(&pw, &app);
    let start = Instant::now();
    ok(cmd("self-patcher").arg("--plan").arg(&plan));
    let total = start.elapsed();
    assert_same_tree(&app, &pw.w.releases[1]);
    eprintln!("self-patcher moves {PLAN_FILES} files in {total:?}");
    let points = 8;
    let mut interrupted = 0;
    // Runs vary in length with the machine's load: a kill that comes after the end shortens
    // the later delays, and more attempts are made until enough kills have landed inside.
    let mut scale = 1.0;
    let mut attempts = 0;
    for k in (0..points).cycle().take(3 * points) {
        if interrupted >= points / 2 && attempts >= points {
            break;
        }
        attempts += 1;
        let delay = total.mul_f64(scale * (k as f64 + 0.5) / points as f64);
        let app = pw.w.path(&format!("kill-{attempts}"));
        let plan = plan_copy(&pw, &app);
        let mut child = cmd("self-patcher")
            .arg("--plan")
            .arg(&plan)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(delay);
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let st = child.wait().expect("wait");
        if st.success() {
            scale *= 0.7;
        } else {
            interrupted += 1;
        }
        old_or_new(&tree_state(&app), &old, &new);
        // Run again on the same plan (unless the first run had finished and removed it).
        if plan.exists() {
            let out = ok(cmd("self-patcher").arg("--plan").arg(&plan));
            assert!(out.contains("installed 2.0.0"), "{out}");
        }
        assert_same_tree(&app, &pw.w.releases[1]);
    }
    eprintln!("{interrupted} of {attempts} self-patcher runs were killed before finishing");
    assert!(
        interrupted >= points / 2,
        "too few kills landed inside the run"
    );
}

#[test]
fn self_patcher_plan_failing_half_way_restores_the_old_version_and_names_the_file() {
    let pw = plan_world();
    let app = pw.w.path("fail");
    let plan = plan_copy(&pw, &app);
    let victim = format!("data/d07/f{:05}.txt", 150);
    let path = app.join(&victim);
    // Root ignores permission bits: make the file immutable.
    let st = Command::new("chattr")
        .arg("+i")
        .arg(&path)
        .stderr(Stdio::null())
        .status();
    if !st.map(|s| s.success()).unwrap_or(false) {
        eprintln!("skipped: chattr +i is not supported here");
        return;
    }
    let out = run(cmd("self-patcher").arg("--plan").arg(&plan));
    let _ = Command::new("chattr").arg("-i").arg(&path).status();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "self-patcher succeeded over an immutable file"
    );
    assert!(
        err.contains(&victim),
        "the error does not name {victim}: {err}"
    );
    assert_same_tree(&app, &pw.w.releases[0]);
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(app.join(".patchkit/installed.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    assert_ne!(rec["version"], "2.0.0", "the new version was recorded");
}

/// The plan of `app` (a copy of the template) pointed at `app` and waiting for `wait_pid`.
fn plan_waiting_for(pw: &PlanWorld, app: &Path, wait_pid: u32) -> PathBuf {
    let plan = plan_copy(pw, app);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan).expect("plan")).expect("json");
    v["wait_pid"] = serde_json::Value::from(wait_pid);
    std::fs::write(&plan, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
    plan
}

#[test]
fn a_pending_hand_over_is_left_alone_and_an_abandoned_one_is_dropped() {
    let pw = plan_world();
    let app = pw.w.path("pending");
    let mut sleeper = Command::new("sleep").arg("600").spawn().expect("sleep");
    let plan = plan_waiting_for(&pw, &app, sleeper.id());
    // The app it waits for still runs (self-patcher may not have started yet): refused.
    let rollback = || {
        let mut c = cmd("patch-apply");
        c.args(["rollback", "--app-dir"]).arg(&app);
        c
    };
    for mut c in [pw.w.apply_cmd("apply", &app), rollback()] {
        let err = fails(&mut c);
        assert!(
            err.contains("handed over to self-patcher and is pending"),
            "{err}"
        );
        assert!(err.contains(&format!("process {}", sleeper.id())), "{err}");
    }
    assert!(plan.exists());
    assert!(app.join(".patchkit/staging").is_dir(), "staged files kept");
    assert_same_tree(&app, &pw.w.releases[0]);
    // A self-patcher waiting on it holds its lock: refused, naming it.
    let mut sp = cmd("self-patcher")
        .arg("--plan")
        .arg(&plan)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn self-patcher");
    let lock = app.join(".patchkit/self-patcher.lock");
    let start = Instant::now();
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != sp.id().to_string() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "self-patcher never took its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = fails(&mut pw.w.apply_cmd("apply", &app));
    assert!(
        err.contains(&format!("self-patcher (pid {}) is running it", sp.id())),
        "{err}"
    );
    // The app exits: self-patcher finishes the update it was given.
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(sp.wait().expect("wait").success());
    assert_same_tree(&app, &pw.w.releases[1]);
    assert!(!plan.exists());

    // Nobody will run this one (its app and its self-patcher are gone): the next update drops
    // it with its staged files and installs the release itself.
    let dead = sleeper.id();
    let app = pw.w.path("abandoned");
    let plan = plan_waiting_for(&pw, &app, dead);
    let r = last_json(&ok(pw.w.apply_cmd("apply", &app).arg("--json")));
    assert_eq!(r["to"], "2.0.0", "{r}");
    assert!(!plan.exists());
    assert_same_tree(&app, &pw.w.releases[1]);
}

/// Sets fields of the plan file `plan`.
fn edit_plan(plan: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plan).expect("plan")).expect("json");
    f(&mut v);
    std::fs::write(plan, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
}

fn installed_version(app: &Path) -> Option<String> {
    let b = std::fs::read(app.join(".patchkit/installed.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v["version"].as_str().map(str::to_string)
}

#[test]
fn plan_replaced_between_self_patcher_start_and_its_lock_is_not_run() {
    let pw = plan_world();
    let app = pw.w.path("replaced");
    let plan = plan_copy(&pw, &app);
    // The race is made certain with self-patcher's test-only pause point: it stops after
    // reading its plan and before taking its lock, until the file `go` exists.
    let go = pw.w.path("go");
    let mut sp = cmd("self-patcher")
        .arg("--plan")
        .arg(&plan)
        .env("PATCHKIT_TEST_PAUSE", "before-lock")
        .env("PATCHKIT_TEST_RESUME", &go)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn self-patcher");
    let mut err = BufReader::new(sp.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("test pause: before-lock") {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("read") > 0,
            "self-patcher never paused before its lock"
        );
    }
    // Meanwhile a second hand-over finds the plan unclaimed, drops it and writes its own (with
    // its own staged files), for a self-patcher that is not started (`/bin/true`).
    let mut sleeper = Command::new("sleep").arg("600").spawn().expect("sleep");
    let out = run(pw
        .w
        .apply_cmd("apply", &app)
        .args([
            "--json",
            "--hand-over",
            "--self-patcher",
            "/bin/true",
            "--wait-pid",
        ])
        .arg(sleeper.id().to_string()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        last_json(&String::from_utf8_lossy(&out.stdout))["outcome"],
        "handed_over"
    );
    let new_plan = std::fs::read(&plan).expect("the second plan");
    std::fs::write(&go, "").expect("go");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    let st = sp.wait().expect("wait");
    assert!(
        !st.success(),
        "the first self-patcher ran a plan that was replaced: {rest}"
    );
    assert!(
        rest.contains("was replaced by an update to 2.0.0"),
        "{rest}"
    );
    assert!(rest.contains("nothing was changed"), "{rest}");
    // Nothing changed: the app is at v1, the second plan and its staged files are intact.
    assert_same_tree(&app, &pw.w.releases[0]);
    assert_ne!(installed_version(&app).as_deref(), Some("2.0.0"));
    assert_eq!(std::fs::read(&plan).expect("plan"), new_plan);
    // The second plan's own self-patcher runs it once its app has exited.
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let out = ok(cmd("self-patcher").arg("--plan").arg(&plan));
    assert!(out.contains("installed 2.0.0"), "{out}");
    assert_same_tree(&app, &pw.w.releases[1]);
}

#[test]
fn timed_out_hand_over_is_dropped_with_a_warning_by_the_next_apply_and_rollback() {
    let pw = plan_world();
    // The app stays running, the self-patcher waiting for it gives up after 1 s.
    let mut sleeper = Command::new("sleep").arg("600").spawn().expect("sleep");
    let app = pw.w.path("timed-out");
    let plan = plan_waiting_for(&pw, &app, sleeper.id());
    edit_plan(&plan, |v| v["wait_timeout_secs"] = 1.into());
    let err = fails(cmd("self-patcher").arg("--plan").arg(&plan));
    assert!(err.contains("still running after 1s"), "{err}");
    assert_same_tree(&app, &pw.w.releases[0]);
    assert_ne!(installed_version(&app).as_deref(), Some("2.0.0"));
    // While the app still runs, the next apply drops the plan (none of it was applied) with a
    // warning naming it, and installs the update itself.
    let out = run(&mut pw.w.apply_cmd("apply", &app));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: dropped the update to 2.0.0 handed over to self-patcher"),
        "{stderr}"
    );
    assert!(stderr.contains(&plan.display().to_string()), "{stderr}");
    assert!(stderr.contains("gave up waiting for process"), "{stderr}");
    assert!(!plan.exists());
    assert_same_tree(&app, &pw.w.releases[1]);

    // Same for rollback: an app at v2 (a finished update to undo) with a timed-out hand-over.
    let app = pw.w.path("timed-out-rollback");
    copy_tree(&pw.w.releases[0], &app);
    ok(&mut pw.w.apply_cmd("apply", &app));
    let st = Command::new("cp")
        .arg("-a")
        .arg(pw.template.join(".patchkit/staging"))
        .arg(app.join(".patchkit/staging"))
        .status()
        .expect("cp");
    assert!(st.success());
    let plan = app.join(".patchkit/self-patch.json");
    std::fs::copy(pw.template.join(".patchkit/self-patch.json"), &plan).expect("plan");
    let canon = app.canonicalize().expect("canonical");
    edit_plan(&plan, |v| {
        v["app_dir"] = canon.display().to_string().into();
        v["wait_pid"] = sleeper.id().into();
        v["wait_timeout_secs"] = 1.into();
    });
    let err = fails(cmd("self-patcher").arg("--plan").arg(&plan));
    assert!(err.contains("still running after 1s"), "{err}");
    assert_same_tree(&app, &pw.w.releases[1]);
    let out = run(cmd("patch-apply").args(["rollback", "--app-dir"]).arg(&app));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: dropped the update to 2.0.0 handed over to self-patcher"),
        "{stderr}"
    );
    assert!(!plan.exists());
    assert_same_tree(&app, &pw.w.releases[0]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}
