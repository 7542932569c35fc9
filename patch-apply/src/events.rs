//! Progress and decisions reported to the embedding app (and printed as JSON lines by the CLI).

use std::sync::Arc;

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
        alternatives: Vec<crate::report::MethodCost>,
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
    /// A download attempt failed and will be tried again on the same mirror after `delay_ms`
    /// (an HTML page instead of the file, an `HTTP 5xx`, a dropped connection, a timeout...).
    Retry {
        /// The URL that failed.
        url: String,
        /// The number of the attempt that failed (1 for the first request).
        attempt: u32,
        /// Why it failed.
        reason: String,
        /// The wait before the next attempt, in milliseconds.
        delay_ms: u64,
        /// How many more failures this mirror is allowed for this file.
        retries_left: u32,
    },
    /// A download continues a partial file kept from an earlier attempt: `bytes` of it were
    /// already on disk and are counted in the `download` progress at once (a progress display
    /// should leave them out of its speed).
    Resumed {
        /// The repository path of the file.
        path: String,
        /// Bytes already on disk.
        bytes: u64,
    },
    /// An HTTP request got an answer (for verbose logs).
    Request {
        /// The URL requested.
        url: String,
        /// The HTTP status of the answer.
        status: u16,
        /// The first byte asked for (above 0 when a download resumes).
        from_byte: u64,
    },
}

/// A receiver of events.
pub type EventSink = dyn Fn(&Event) + Send + Sync;

/// An optional receiver of events that can sit in a settings struct such as
/// [`crate::http::HttpOptions`], so that code below the [`crate::Updater`] (the transports)
/// reports to the same place. [`crate::Updater::new`] fills it with the updater's receiver
/// when it is empty.
#[derive(Clone, Default)]
pub struct EventHook(Option<Arc<EventSink>>);

impl EventHook {
    /// A hook that passes events to `sink`.
    pub fn new(sink: Arc<EventSink>) -> Self {
        EventHook(Some(sink))
    }

    /// Whether no receiver is set.
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// Passes `e` to the receiver, if any; returns whether there was one.
    pub fn emit(&self, e: Event) -> bool {
        match &self.0 {
            Some(sink) => {
                sink(&e);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for EventHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "EventHook(set)"
        } else {
            "EventHook(none)"
        })
    }
}

impl PartialEq for EventHook {
    /// Two hooks are equal when both are empty or both pass to the same receiver.
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
