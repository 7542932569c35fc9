//! Fitting real apps and platforms (issue 21): the library called from async code, a Cancel
//! button that leaves the app at its old version, progress in bytes per phase, and `--notify`
//! running a program without a shell.
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use e2e_tests::{assert_same_tree, ok, ServedRepo, World};
use patch_apply::{Cancel, Config, Error, Event, Method, MethodChoice, Updater};

fn public_key(w: &World) -> formats::keys::PublicKey {
    let bytes = std::fs::read(&w.public).unwrap();
    formats::keys::PublicKey::from_json(&w.public.display().to_string(), &bytes).unwrap()
}

/// Whether `app` holds no journal of an unfinished update and no staged files: `.patchkit`
/// is consistent after a cancelled apply.
fn assert_no_update_in_progress(app: &Path) {
    let state = app.join(".patchkit");
    assert!(!state.join("journal.json").exists(), "a journal was left");
    let staging = state.join("staging");
    let staged = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staged, 0, "staged files were left in {}", staging.display());
}

/// The library inside `#[tokio::main]` (here the multi-threaded `#[tokio::test]`, like Tauri's
/// and axum's runtime): `check` and `apply` against a real served repository do not panic
/// (the blocking HTTP client used to panic when dropped on a runtime thread), and progress
/// arrives in bytes with a total for the download phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_apply_inside_a_tokio_runtime_do_not_panic() {
    let (w, app) = World::with_app_at_v1();
    let served = ServedRepo::start(&w.repo);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let u = Updater::new(
        Config::new(&app, served.url.clone(), public_key(&w)),
        move |e: &Event| sink.lock().unwrap().push(e.clone()),
    );
    let c = u.check().unwrap();
    assert_eq!(c.installed.as_deref(), Some("1.0.0"));
    assert_eq!(c.latest.as_deref(), Some("2.0.0"));
    // Also from inside a task, as a handler would.
    let r = tokio::spawn(async move { u.apply().map(|r| r.to) })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, "2.0.0");
    assert_same_tree(&app, &w.releases[1]);
    let ev = events.lock().unwrap();
    let downloads: Vec<(u64, u64)> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Progress {
                phase: "download",
                done,
                total,
            } => Some((*done, *total)),
            _ => None,
        })
        .collect();
    let (done, total) = *downloads.last().expect("download progress events");
    assert!(total > 0, "{downloads:?}");
    assert_eq!(done, total, "{downloads:?}");
    assert!(downloads.iter().all(|(d, t)| d <= t), "{downloads:?}");
}

/// The current-thread runtime (`#[tokio::main(flavor = "current_thread")]`) too.
#[tokio::test(flavor = "current_thread")]
async fn check_on_a_current_thread_runtime_does_not_panic() {
    let (w, app) = World::with_app_at_v1();
    let served = ServedRepo::start(&w.repo);
    let u = Updater::new(
        Config::new(&app, served.url.clone(), public_key(&w)),
        |_: &Event| {},
    );
    let c = u.check().unwrap();
    assert!(!c.up_to_date);
    assert_eq!(c.latest.as_deref(), Some("2.0.0"));
}

/// Cancel pressed while the installer downloads over HTTP: the download stops between two
/// chunks of the file, `apply` fails with [`Error::Cancelled`], the app is at 1.0.0, nothing is
/// half done; a later apply (token reset) resumes and finishes.
#[test]
fn cancel_mid_download_leaves_the_old_version_and_a_later_apply_finishes() {
    // A big file that compresses badly, so that the installer takes many chunks.
    let w = World::with_sizes(2, 3 << 20, 64 << 10);
    w.release_all(2);
    let app = w.path("app");
    e2e_tests::copy_tree(&w.releases[0], &app);
    let served = ServedRepo::start(&w.repo);
    let cancel = Cancel::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fired = Arc::new(AtomicBool::new(false));
    let (c2, seen2, fired2) = (cancel.clone(), Arc::clone(&seen), Arc::clone(&fired));
    let mut cfg = Config::new(&app, served.url.clone(), public_key(&w));
    cfg.method = MethodChoice::Only(Method::Installer);
    cfg.cancel = cancel.clone();
    let extracted = Arc::new(Mutex::new(Vec::new()));
    let extracted2 = Arc::clone(&extracted);
    let u = Updater::new(cfg, move |e: &Event| {
        if let Event::Progress {
            phase: "apply",
            done,
            total,
        } = e
        {
            extracted2.lock().unwrap().push((*done, *total));
        }
        if let Event::Progress {
            phase: "download",
            done,
            total,
        } = e
        {
            let mut seen = seen2.lock().unwrap();
            seen.push((*done, *total));
            // Only the first attempt is cancelled, once part of the file arrived.
            if *done > 0 && done < total && !fired2.swap(true, Ordering::SeqCst) {
                c2.cancel();
            }
        }
    });
    let e = u.apply().unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let (last, total) = *seen.last().expect("download progress");
    assert!(
        last < total,
        "the download finished before the cancel: {seen:?}"
    );
    assert_same_tree(&app, &w.releases[0]);
    assert_no_update_in_progress(&app);
    assert!(matches!(
        u.recover().unwrap(),
        patch_apply::report::Recovery::Clean
    ));
    // A cancelled token stops a check at once too, until it is reset.
    assert!(matches!(u.check(), Err(Error::Cancelled)));
    cancel.reset();
    let c = u.check().unwrap();
    assert_eq!(c.installed.as_deref(), Some("1.0.0"));
    let r = u.apply().unwrap();
    assert_eq!(r.to, "2.0.0");
    assert_same_tree(&app, &w.releases[1]);
    // Extracting the installer reports entries done out of the release's entries (it used to
    // report nothing, leaving a progress bar at 0/0).
    let extracted = extracted.lock().unwrap();
    let (done, total) = *extracted
        .last()
        .expect("progress while the installer is extracted");
    assert!(total > 1 && done == total, "{extracted:?}");
    assert!(
        extracted.windows(2).all(|p| p[0].0 < p[1].0),
        "{extracted:?}"
    );
}

/// Cancel pressed while patches are applied into the staging area: the updater stops at its
/// last safe point before the commit; the app is untouched; a later apply finishes.
#[test]
fn cancel_mid_apply_leaves_the_old_version_and_a_later_apply_finishes() {
    let (w, app) = World::with_app_at_v1();
    let cancel = Cancel::new();
    let phases = Arc::new(Mutex::new(Vec::new()));
    let fired = Arc::new(AtomicBool::new(false));
    let (c2, phases2, fired2) = (cancel.clone(), Arc::clone(&phases), Arc::clone(&fired));
    let mut cfg = Config::new(&app, w.repo.display().to_string(), public_key(&w));
    cfg.method = MethodChoice::Only(Method::Incremental);
    cfg.cancel = cancel.clone();
    let u = Updater::new(cfg, move |e: &Event| match e {
        Event::Phase { phase } => phases2.lock().unwrap().push(*phase),
        // Only the first attempt is cancelled.
        Event::Progress { phase: "apply", .. } if !fired2.swap(true, Ordering::SeqCst) => {
            c2.cancel()
        }
        _ => {}
    });
    let e = u.apply().unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(
        !phases.lock().unwrap().contains(&"commit"),
        "{:?}",
        phases.lock().unwrap()
    );
    assert_same_tree(&app, &w.releases[0]);
    assert_no_update_in_progress(&app);
    cancel.reset();
    let r = u.apply().unwrap();
    assert_eq!((r.to.as_str(), r.method.as_str()), ("2.0.0", "incremental"));
    assert_same_tree(&app, &w.releases[1]);
}

/// `--notify` runs a program with its arguments as given: no shell splits, unquotes or
/// expands them (`printf` echoes each argument between bars).
#[test]
fn notify_passes_arguments_with_spaces_and_quotes_unchanged() {
    let (w, app) = World::with_app_at_v1();
    let tricky = r#"two  words "double" 'single' $HOME `id` ; | \ *"#;
    let out = ok(w
        .apply_cmd("apply", &app)
        .args([
            "--notify",
            "printf",
            "--notify-arg",
            "[%s]\n",
            "--notify-arg",
        ])
        .arg(tricky)
        .args(["--notify-arg", "-x"]));
    assert!(out.contains(&format!("[{tricky}]\n[-x]\n")), "{out}");
    assert_same_tree(&app, &w.releases[1]);
}
