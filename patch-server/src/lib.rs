//! `patch-server`: the server that knows every install of an app.
//!
//! Devices (the agent inside `patch-apply`) enroll, check in with what they run, receive the
//! release they should be on and queued commands, post command results and upload log files;
//! release engineers query the fleet through the admin API and the `patch-server` CLI. The
//! protocol is `docs/fleet.md`, its wire types `formats::fleet`.
//!
//! The server only *names* releases: it reads each app's signed repository with the
//! updater's verified code ([`releases`]) and never holds a release key, so a compromised
//! server can at most withhold updates or pick among signed releases.
//!
//! People use the web dashboard under `/ui/` ([`web`]): server-rendered pages, accounts with
//! roles, database sessions and CSRF-checked forms.
//!
//! Storage is one schema on SQLite (embedded default) or PostgreSQL (several instances) via
//! sqlx ([`db`]); everything durable is in the database, uploaded bytes on disk.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let db = patch_server::db::Db::connect("sqlite://fleet.db?mode=rwc", 4).await?;
//! let devices = db.devices(&patch_server::db::DeviceFilter { limit: 100, ..Default::default() }).await?;
//! for d in devices {
//!     println!("{} {:?}", d.id, d.version);
//! }
//! # Ok(()) }
//! ```

pub mod alerts;
pub mod api;
pub mod client;
pub mod db;
pub mod decide;
pub mod error;
pub mod releases;
pub mod retention;
pub mod rollout;
pub mod server;
pub mod util;
pub mod web;
