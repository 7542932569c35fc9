//! The reversible action executor shared by `patch-apply` and the `self-patcher` binary, and
//! the runner of self-patch plans.
//!
//! - [`txn`] carries out a [`formats::txn::Journal`] in an app directory: every step is a
//!   rename (or `mkdir`/`rmdir`), whatever it replaces is kept in `APP/.patchkit/backup/`, the
//!   journal is fsynced before the first change, and [`txn::recover`] / [`txn::rollback`] undo
//!   a transaction from the file system state alone.
//! - [`lock`] is the update lock (an OS file lock holding the owner's PID).
//! - [`fsio`] is the one place that writes files atomically.
//! - [`runner`] runs a [`formats::self_plan::SelfPatchPlan`]: waits for the app to exit, moves
//!   the staged files into place (resuming after a crash), records the version, relaunches.
//!
//! **Invariant:** nothing here writes file contents inside the app dir except the state
//! directory's own records; an interrupted or failed transaction leaves every file at its old
//! or its new version.
//!
//! # Example
//! ```no_run
//! use self_patcher::txn::{self, StatePaths};
//! let paths = StatePaths::of(std::path::Path::new("/opt/demo"));
//! // At the app's start: undo an update that was interrupted half-way.
//! if let Some(u) = txn::recover(&paths).unwrap() {
//!     eprintln!("rolled back an interrupted update to {}", u.journal.to);
//! }
//! ```

pub mod error;
pub mod fsio;
pub mod lock;
pub mod runner;
#[doc(hidden)]
pub mod testhook;
pub mod txn;

pub use error::{Error, Result};
