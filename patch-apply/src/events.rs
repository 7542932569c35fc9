//! Progress and decisions reported to the embedding app (and printed as JSON lines by the CLI).

use serde::Serialize;

/// Something the updater wants the app to know.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A phase started.
    Phase {
        /// `refresh`, `scan`, `plan`, `download`, `apply`, `commit`, `verify`, `repair`.
        phase: &'static str,
    },
    /// Work done in the current phase.
    Progress {
        /// The phase.
        phase: &'static str,
        /// Units done (bytes for downloads, files otherwise).
        done: u64,
        /// Units in total (0 if unknown).
        total: u64,
    },
    /// The method chosen and why.
    Plan {
        /// Chosen method.
        method: &'static str,
        /// Its download size.
        bytes: u64,
        /// Every method's cost.
        alternatives: Vec<crate::plan::MethodCost>,
    },
    /// A method failed and the next one is tried.
    Fallback {
        /// The method that failed.
        method: &'static str,
        /// Why.
        error: String,
    },
    /// The update is in place (emitted after every in-place apply). When `restart_required` is
    /// false this is a warm patch: the running app may reload its resources now.
    Installed {
        /// The version now installed.
        version: String,
        /// Whether the update changed code (the app must restart to run it).
        restart_required: bool,
    },
    /// Something the updater does not own was in the way of the release and was moved to
    /// the quarantine (rollback brings it back).
    Quarantined {
        /// Its path in the app dir.
        path: String,
        /// Where it is now, relative to the app dir.
        to: String,
    },
    /// Something worth a line in a log.
    Warning {
        /// The message.
        message: String,
    },
}

/// A receiver of events.
pub type EventSink = dyn Fn(&Event) + Send + Sync;
