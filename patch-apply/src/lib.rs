//! The updater that apps embed.
//!
//! An app pins the repository's root public key, then asks [`Updater::check`] what an update
//! would do and [`Updater::apply`] to do it. `apply` verifies the signed metadata (TUF), scans
//! the app directory, recognises the installed release from its files, picks the cheapest method
//! (a chain of incremental patches, repair of the differing files, or the installer), checks
//! disk space and running instances, stages and verifies every file, commits through a journal,
//! verifies the whole tree, and records the installed version. Progress and decisions arrive as
//! [`Event`]s. Call [`Updater::recover`] at start-up: it rolls back an update that was
//! interrupted (power loss, kill).
//!
//! # The API blocks; calling it from async code
//!
//! Every [`Updater`] method blocks the calling thread until it is done (network, hashing,
//! disk). Each runs its work on a thread of its own, so calling it from inside a tokio runtime
//! (`#[tokio::main]`, Tauri, axum) does not panic; but it still blocks the thread it is called
//! on, so an async app moves the call off its executor:
//!
//! ```no_run
//! # async fn demo(updater: std::sync::Arc<patch_apply::Updater>) -> Result<(), Box<dyn std::error::Error>> {
//! let u = std::sync::Arc::clone(&updater);
//! let report = tokio::task::spawn_blocking(move || u.apply()).await??;
//! println!("now at {}", report.to);
//! # Ok(()) }
//! ```
//!
//! **Progress** arrives through the event callback given to [`Updater::new`]:
//! [`Event::Phase`] when a phase starts (`refresh`, `scan`, `plan`, `download`, `apply`,
//! `commit`, `verify`...) and [`Event::Progress`] with `done`/`total` (bytes for `download`,
//! files for the other phases). The callback runs on the updater's threads: keep it short and
//! send the numbers to the UI thread.
//!
//! **Cancelling**: put a [`Cancel`] in [`Config::cancel`] and keep a clone; [`Cancel::cancel`]
//! (from any thread, e.g. a Cancel button) stops `check` or `apply` at the next safe point
//! (between download chunks, between files, before the commit) with [`Error::Cancelled`]. The
//! app dir then keeps its old version, and a later `apply` (after [`Cancel::reset`]) resumes the
//! downloads kept in the cache. Once the commit has started it is finished, so that the app is
//! never left between versions.
//!
//! # Example: an app that updates itself
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! # use patch_create::release::{release, PatchesFrom, ReleaseOptions};
//! # let dir = tempfile::tempdir().unwrap();
//! # let (repo, app) = (dir.path().join("repo"), dir.path().join("app"));
//! # let key = formats::keys::KeyPair::generate().unwrap();
//! # for (i, content) in [&b"hello 1"[..], &b"hello 2"[..]].iter().enumerate() {
//! #     let tree = dir.path().join(format!("v{i}"));
//! #     std::fs::create_dir_all(tree.join("data")).unwrap();
//! #     std::fs::write(tree.join("data/greeting.txt"), content).unwrap();
//! #     let opts = ReleaseOptions {
//! #         repo: repo.clone(), root: tree, version: formats::Version::parse(&format!("1.{i}.0")).unwrap(),
//! #         keys: vec![formats::keys::KeyPair::from_json("k", &key.to_json()).unwrap()],
//! #         name: Some("demo".into()), prev_roots: vec![], ignore: vec![], owned: vec![], code: vec![], resources: vec![],
//! #         restart_required: false, notes: None, links: vec![], patches_from: PatchesFrom::Previous, keep: None,
//! #         expires: time::Duration::days(30), level: 3, encode: Default::default(),
//! #         channel: None, targeting: Default::default(),
//! #         ignore_carry: Default::default(), solid_installer: false,
//! #     };
//! #     release(&opts, &patch_create::progress::NoProgress).unwrap();
//! # }
//! # let public_key = key.public();
//! // The app ships with the repository's root public key (`release.pub`) compiled in or next to it.
//! let config = patch_apply::Config::new(&app, repo.to_str().unwrap(), public_key);
//! let log = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&log);
//! let updater = patch_apply::Updater::new(config, move |event| {
//!     // A real app would drive its progress bar from `Event::Progress`.
//!     sink.lock().unwrap().push(format!("{event:?}"));
//! });
//! updater.recover().unwrap();
//! let check = updater.check().unwrap();
//! assert_eq!(check.latest.as_deref(), Some("1.1.0"));
//! if !check.up_to_date {
//!     let report = updater.apply().unwrap();
//!     assert_eq!(report.to, "1.1.0");
//! }
//! assert_eq!(std::fs::read(app.join("data/greeting.txt")).unwrap(), b"hello 2");
//! assert!(!log.lock().unwrap().is_empty());
//! ```
// The stages, each using only those before it: error, report, events, state, fetch, trust, inspect,
// plan, stage, commit; `updater` is the public façade over them; `agent` (the fleet agent) sits on
// top of `updater` (ARCHITECTURE.md).
pub mod agent;
pub mod cancel;
pub mod commit;
pub mod error;
pub mod events;
pub mod fetch;
pub mod inspect;
pub mod plan;
pub mod report;
pub mod stage;
pub mod state;
pub mod trust;
pub mod updater;

// The modules' paths before they were grouped by stage, kept so that code written against
// them (apps, tests, `patch-create`) still compiles.
pub use commit::{preflight, selfpatch};
pub use fetch::{http, transport};
pub use inspect::{ownership, scan, scan_cache};
pub use plan::repo_view;
pub use stage::{archive, decode, writeback};
pub use state::atomic;

pub use cancel::Cancel;
pub use error::{Error, Result};
pub use events::Event;
pub use plan::Method;
pub use selfpatch::{ApplyOutcome, HandOver};
pub use updater::{ApplyReport, CheckReport, Config, MethodChoice, Quarantined, Updater};
