//! The conditions alerts are raised for, their keys, and the pure decision of what a check-in
//! opens or resolves (no clock, no database: plain data in, [`Change`]s out).

use std::collections::BTreeSet;

use formats::fleet::{FleetError, UpdateResult};
use serde::{Deserialize, Serialize};

/// Longest `problem` text a device may put in its state document, in bytes.
pub const MAX_PROBLEM: usize = 1024;

/// Longest detail stored with an alert, in bytes (longer text is cut).
pub const MAX_DETAIL: usize = 2048;

/// Something wrong that an alert is raised for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Condition {
    /// A device reported an update that failed.
    FailedUpdate {
        /// Its app.
        app: String,
        /// The device.
        device: String,
    },
    /// A device has not checked in for longer than N of its poll intervals.
    Silent {
        /// Its app.
        app: String,
        /// The device.
        device: String,
    },
    /// A device's state document carries a `problem` text.
    Problem {
        /// Its app.
        app: String,
        /// The device.
        device: String,
    },
    /// A rollout stopped offering its release (raised by the rollout code).
    RolloutHalted {
        /// The rollout's app.
        app: String,
        /// The rollout id.
        rollout: String,
    },
}

impl Condition {
    /// The condition's kind as stored and sent: `failed-update`, `silent`, `problem` or
    /// `rollout-halted`.
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::FailedUpdate { .. } => "failed-update",
            Condition::Silent { .. } => "silent",
            Condition::Problem { .. } => "problem",
            Condition::RolloutHalted { .. } => "rollout-halted",
        }
    }

    /// The stable key alerts are de-duplicated by: `<kind>:<device or rollout>`.
    pub fn key(&self) -> String {
        key_of(self.kind(), self.object())
    }

    /// The app the condition belongs to.
    pub fn app(&self) -> &str {
        match self {
            Condition::FailedUpdate { app, .. }
            | Condition::Silent { app, .. }
            | Condition::Problem { app, .. }
            | Condition::RolloutHalted { app, .. } => app,
        }
    }

    /// The device, for device conditions.
    pub fn device(&self) -> Option<&str> {
        match self {
            Condition::FailedUpdate { device, .. }
            | Condition::Silent { device, .. }
            | Condition::Problem { device, .. } => Some(device),
            Condition::RolloutHalted { .. } => None,
        }
    }

    /// The rollout, for `rollout-halted`.
    pub fn rollout(&self) -> Option<&str> {
        match self {
            Condition::RolloutHalted { rollout, .. } => Some(rollout),
            _ => None,
        }
    }

    fn object(&self) -> &str {
        self.device().or(self.rollout()).unwrap_or_default()
    }

    /// What the alert is about, for people: `device ID` or `rollout ID`.
    pub fn subject(&self) -> String {
        match self {
            Condition::RolloutHalted { rollout, .. } => format!("rollout {rollout}"),
            _ => format!("device {}", self.object()),
        }
    }
}

/// The key of the condition `kind` about `object` (a device or rollout id).
pub fn key_of(kind: &str, object: &str) -> String {
    format!("{kind}:{object}")
}

/// A condition's kind in words (`failed update`), for subject lines.
pub fn title(kind: &str) -> &'static str {
    match kind {
        "failed-update" => "failed update",
        "silent" => "silent device",
        "problem" => "device problem",
        "rollout-halted" => "rollout halted",
        _ => "alert",
    }
}

/// What the alert engine should do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Open an alert for the condition (nothing happens if one is open).
    Raise {
        /// The condition.
        condition: Condition,
        /// Why, for people.
        detail: String,
    },
    /// Resolve the open alert with this key (nothing happens if none is open).
    Clear {
        /// The condition key.
        key: String,
    },
}

/// What one check-in tells the alert engine.
#[derive(Debug, Clone)]
pub struct CheckinFacts<'a> {
    /// The device's app.
    pub app: &'a str,
    /// The device.
    pub device: &'a str,
    /// Update results the server had not stored before this check-in.
    pub new_results: &'a [UpdateResult],
    /// The state document, when the device sent one (absent = unchanged).
    pub state: Option<&'a serde_json::Value>,
    /// The server offers this device no other release (it reached its target).
    pub up_to_date: bool,
}

/// The kinds of the conditions about one device that a check-in may change, in the order of
/// [`device_keys`]. The device's open ones are read with its token (`Db::device_by_token`).
pub const DEVICE_KINDS: [&str; 3] = ["failed-update", "silent", "problem"];

/// The keys a check-in of `device` may change.
pub fn device_keys(device: &str) -> [String; 3] {
    DEVICE_KINDS.map(|kind| key_of(kind, device))
}

/// Decides what a check-in changes, given the keys of the alerts open now:
/// - the newest new update result failed: raise `failed-update`; it succeeded, or the device
///   is on the release the server offers: clear it;
/// - any check-in clears `silent`;
/// - a state document with a `problem` text raises `problem`; one without clears it; no state
///   document (unchanged) changes nothing.
pub fn checkin_changes(f: &CheckinFacts<'_>, open: &BTreeSet<String>) -> Vec<Change> {
    let [failed, silent, problem] = device_keys(f.device);
    let device_condition =
        |make: fn(String, String) -> Condition| make(f.app.to_string(), f.device.to_string());
    let mut out = Vec::new();
    let failed_open = open.contains(&failed);
    match (f.new_results.iter().max_by_key(|r| r.seq), failed_open) {
        (Some(r), false) if !r.ok => out.push(Change::Raise {
            condition: device_condition(|app, device| Condition::FailedUpdate { app, device }),
            detail: failure_detail(r),
        }),
        (Some(r), true) if r.ok => out.push(Change::Clear { key: failed }),
        (None, true) if f.up_to_date => out.push(Change::Clear { key: failed }),
        _ => {}
    }
    if open.contains(&silent) {
        out.push(Change::Clear { key: silent });
    }
    if let Some(state) = f.state {
        match problem_of(state) {
            Some(text) if !open.contains(&problem) => out.push(Change::Raise {
                condition: device_condition(|app, device| Condition::Problem { app, device }),
                detail: text,
            }),
            None if open.contains(&problem) => out.push(Change::Clear { key: problem }),
            _ => {}
        }
    }
    out
}

/// The `problem` text of a state document: a non-empty string at the top level; absent, null
/// or empty means the app reports no problem.
pub fn problem_of(state: &serde_json::Value) -> Option<String> {
    let text = state.get("problem")?.as_str()?.trim();
    (!text.is_empty()).then(|| cut(text, MAX_PROBLEM))
}

/// Checks the `problem` field of a state document a device sent: a string of at most
/// [`MAX_PROBLEM`] bytes, or null (400/413 naming `state.problem` otherwise).
pub fn check_problem(state: &serde_json::Value) -> Result<(), FleetError> {
    match state.get("problem") {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::String(s)) if s.len() <= MAX_PROBLEM => Ok(()),
        Some(serde_json::Value::String(_)) => Err(FleetError {
            field: "state.problem".into(),
            reason: format!("longer than the limit of {MAX_PROBLEM} bytes"),
            too_large: true,
        }),
        Some(_) => Err(FleetError {
            field: "state.problem".into(),
            reason: "must be a string or null".into(),
            too_large: false,
        }),
    }
}

/// The detail of a failed update: `update 1.0.0 -> 2.0.0 failed (verify): hash mismatch`.
pub fn failure_detail(r: &UpdateResult) -> String {
    let text = format!(
        "update {} -> {} failed ({}): {}",
        r.from.as_deref().unwrap_or("-"),
        r.to,
        r.error_kind.as_deref().unwrap_or("error"),
        r.error_message.as_deref().unwrap_or("no message")
    );
    cut(&text, MAX_DETAIL)
}

/// `s` cut to at most `max` bytes at a character boundary.
pub use formats::fleet::clip as cut;

/// An alert event as a webhook receives it (the JSON body) and an e-mail describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// `opened` or `resolved`.
    pub event: String,
    /// The alert's id (the same for its `opened` and `resolved` events).
    pub alert_id: String,
    /// This notification's id: the same on every retry, so receivers can drop duplicates.
    pub delivery_id: String,
    /// `failed-update`, `silent`, `problem` or `rollout-halted`.
    pub condition: String,
    /// The condition key.
    pub key: String,
    /// The app.
    pub app: Option<String>,
    /// The device, for device conditions.
    pub device: Option<String>,
    /// The rollout, for `rollout-halted`.
    pub rollout: Option<String>,
    /// `device ID` or `rollout ID`.
    pub subject: String,
    /// Why, for people.
    pub detail: String,
    /// When the alert opened (unix ms).
    pub opened_ms: i64,
    /// When the alert opened (RFC 3339).
    pub opened_at: String,
    /// When it was resolved (unix ms), if it was.
    pub resolved_ms: Option<i64>,
    /// When it was resolved (RFC 3339), if it was.
    pub resolved_at: Option<String>,
}

impl AlertEvent {
    /// The e-mail subject line: `[patchkit] opened: failed update on device dev-1 (game)`.
    pub fn mail_subject(&self) -> String {
        let app = self
            .app
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        format!(
            "[patchkit] {}: {} on {}{app}",
            self.event,
            title(&self.condition),
            self.subject
        )
    }

    /// The e-mail body (plain text).
    pub fn mail_body(&self) -> String {
        let mut b = format!(
            "Alert {} {}: {} on {}.\n\n",
            self.alert_id,
            self.event,
            title(&self.condition),
            self.subject
        );
        b.push_str(&format!("Condition: {} ({})\n", self.condition, self.key));
        for (k, v) in [
            ("App", &self.app),
            ("Device", &self.device),
            ("Rollout", &self.rollout),
        ] {
            if let Some(v) = v {
                b.push_str(&format!("{k}: {v}\n"));
            }
        }
        b.push_str(&format!("Detail: {}\n", self.detail));
        b.push_str(&format!("Opened: {}\n", self.opened_at));
        if let Some(r) = &self.resolved_at {
            b.push_str(&format!("Resolved: {r}\n"));
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(seq: u64, ok: bool) -> UpdateResult {
        serde_json::from_value(json!({"seq": seq, "finished_at": "2026-11-25T10:00:00Z",
            "from": "1.0.0", "to": "2.0.0", "method": "incremental", "bytes": 1, "seconds": 0.1,
            "ok": ok, "error_kind": if ok { None } else { Some("verify") },
            "error_message": if ok { None } else { Some("hash mismatch") }}))
        .unwrap()
    }

    fn check(
        results: &[UpdateResult],
        state: Option<serde_json::Value>,
        up_to_date: bool,
        open: &[&str],
        want: &[&str],
    ) {
        let f = CheckinFacts {
            app: "game",
            device: "d1",
            new_results: results,
            state: state.as_ref(),
            up_to_date,
        };
        let open: BTreeSet<String> = open.iter().map(|s| s.to_string()).collect();
        let got: Vec<String> = checkin_changes(&f, &open)
            .iter()
            .map(|c| match c {
                Change::Raise { condition, .. } => format!("raise {}", condition.key()),
                Change::Clear { key } => format!("clear {key}"),
            })
            .collect();
        assert_eq!(
            got, want,
            "results {results:?} state {state:?} open {open:?}"
        );
    }

    #[test]
    fn checkin_decisions() {
        let (bad, good) = (result(2, false), result(3, true));
        // A failure opens failed-update once.
        check(
            std::slice::from_ref(&bad),
            None,
            false,
            &[],
            &["raise failed-update:d1"],
        );
        check(
            std::slice::from_ref(&bad),
            None,
            false,
            &["failed-update:d1"],
            &[],
        );
        // The newest result decides.
        check(&[bad.clone(), good.clone()], None, false, &[], &[]);
        check(
            &[good.clone(), bad.clone()],
            None,
            false,
            &["failed-update:d1"],
            &["clear failed-update:d1"],
        );
        // Success, or reaching the target, resolves.
        check(
            std::slice::from_ref(&good),
            None,
            false,
            &["failed-update:d1"],
            &["clear failed-update:d1"],
        );
        check(
            &[],
            None,
            true,
            &["failed-update:d1"],
            &["clear failed-update:d1"],
        );
        check(&[], None, false, &["failed-update:d1"], &[]);
        // Any check-in ends silence.
        check(&[], None, false, &["silent:d1"], &["clear silent:d1"]);
        // The problem field.
        check(
            &[],
            Some(json!({"problem": "disk full"})),
            false,
            &[],
            &["raise problem:d1"],
        );
        check(
            &[],
            Some(json!({"problem": "disk full"})),
            false,
            &["problem:d1"],
            &[],
        );
        for fine in [
            json!({}),
            json!({"problem": null}),
            json!({"problem": "  "}),
        ] {
            check(
                &[],
                Some(fine.clone()),
                false,
                &["problem:d1"],
                &["clear problem:d1"],
            );
            check(&[], Some(fine), false, &[], &[]);
        }
        // No state document: unchanged.
        check(&[], None, false, &["problem:d1"], &[]);
    }

    #[test]
    fn problem_field_is_bounded() {
        assert!(check_problem(&json!({"problem": "x".repeat(MAX_PROBLEM)})).is_ok());
        let e = check_problem(&json!({"problem": "x".repeat(MAX_PROBLEM + 1)})).unwrap_err();
        assert_eq!(e.field, "state.problem");
        assert!(e.too_large);
        let e = check_problem(&json!({"problem": 7})).unwrap_err();
        assert_eq!(e.field, "state.problem");
        assert!(check_problem(&json!({"problem": null})).is_ok());
        assert!(check_problem(&json!(["not", "an", "object"])).is_ok());
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(
            problem_of(&json!({"problem": " low disk "})).as_deref(),
            Some("low disk")
        );
    }

    #[test]
    fn keys_and_subjects() {
        let c = Condition::RolloutHalted {
            app: "game".into(),
            rollout: "r1".into(),
        };
        assert_eq!(c.key(), "rollout-halted:r1");
        assert_eq!(c.subject(), "rollout r1");
        assert_eq!(c.device(), None);
        let d = Condition::Silent {
            app: "game".into(),
            device: "d1".into(),
        };
        assert_eq!(d.key(), "silent:d1");
        assert_eq!(d.subject(), "device d1");
    }
}
