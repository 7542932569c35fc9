//! The self-patch plan (docs/format.md §8.3): what `patch-apply` hands over to `self-patcher`
//! when an update changes the running app's own code.
//!
//! `patch-apply` stages and verifies every file, then writes this plan to
//! `APP/.patchkit/self-patch.json` and starts `self-patcher --plan FILE`, which waits for
//! `wait_pid` to exit, carries out `actions` under the app's journal (the same reversible steps
//! as an in-place update), records `record` as the install record, and runs `relaunch`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::txn::{Action, InstallRecord};
use crate::version::Version;

/// The `format` value of plans this build writes and reads.
pub const SELF_PATCH_FORMAT: &str = "patchkit-self-patch-1";

/// The file inside the state directory where a `self-patcher` that gave up waiting for the app
/// records it ([`TimedOut`]), so that the next updater can drop the plan instead of waiting
/// for it forever.
pub const TIMED_OUT_FILE: &str = "self-patch.timed-out.json";

/// A command to start once the update is in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relaunch {
    /// The program (a path or a name looked up in `PATH`).
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its working directory (the self-patcher's own when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

/// Everything `self-patcher` needs to finish an update after the app exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfPatchPlan {
    /// Always [`SELF_PATCH_FORMAT`].
    pub format: String,
    /// A name unique to this hand-over (so that two plans with the same actions differ).
    /// `self-patcher` re-reads the plan under its lock and runs it only if it is still the
    /// very plan it was started for (same bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// When the plan was written (seconds since the Unix epoch; 0: unknown). A plan that nobody
    /// runs past `created_unix + wait_timeout_secs` (plus a margin) is abandoned.
    #[serde(default)]
    pub created_unix: u64,
    /// The app directory (absolute).
    pub app_dir: PathBuf,
    /// The app.
    pub app: String,
    /// Version before (if known).
    pub from: Option<Version>,
    /// Version after.
    pub to: Version,
    /// The steps, in order: staged files moved into place, obsolete files removed, directories
    /// made and removed. Staged paths are relative to `APP/.patchkit`.
    pub actions: Vec<Action>,
    /// The process to wait for (the app that asked for the update), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_pid: Option<u32>,
    /// How long to wait for it, in seconds.
    pub wait_timeout_secs: u64,
    /// The install record to write once every action is done.
    pub record: InstallRecord,
    /// The command to run afterwards (also after a failed update, which leaves the old version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relaunch: Option<Relaunch>,
    /// Directories relative to `APP/.patchkit` to delete after success (the staging area).
    #[serde(default)]
    pub cleanup: Vec<String>,
}

impl SelfPatchPlan {
    /// Parses and checks a plan; `what` names the file.
    pub fn from_json(what: &str, bytes: &[u8]) -> Result<Self> {
        let p: SelfPatchPlan = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: what.into(),
            source: e,
        })?;
        if p.format != SELF_PATCH_FORMAT {
            return Err(Error::invalid(
                what,
                format!("unknown format {:?}", p.format),
            ));
        }
        if !p.app_dir.is_absolute() {
            return Err(Error::invalid(
                what,
                format!("app_dir {} is not absolute", p.app_dir.display()),
            ));
        }
        if p.record.version != p.to || p.record.app != p.app {
            return Err(Error::invalid(
                what,
                "the install record does not match the plan's app and version",
            ));
        }
        for a in &p.actions {
            match a {
                Action::Place { staged, .. } | Action::Quarantine { to: staged, .. } => {
                    crate::relpath::RelPath::new(staged.as_str())?;
                }
                _ => {}
            }
        }
        for c in &p.cleanup {
            crate::relpath::RelPath::new(c.as_str())?;
        }
        Ok(p)
    }
}

/// What a `self-patcher` that gave up waiting for the app writes to [`TIMED_OUT_FILE`]: the
/// plan it gave up on is never run by anyone, and the next updater drops it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedOut {
    /// The BLAKE3 digest (hex) of the plan file's bytes.
    pub plan_digest: String,
    /// The process it waited for.
    pub wait_pid: u32,
    /// How long it waited, in seconds.
    pub waited_secs: u64,
    /// When it gave up (seconds since the Unix epoch).
    pub at_unix: u64,
}

/// The digest identifying a plan file's bytes (hex BLAKE3), as recorded in [`TimedOut`].
pub fn plan_digest(bytes: &[u8]) -> String {
    crate::hash::Blake3::of(bytes).to_hex()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;
    use crate::hash::Blake3;
    use crate::relpath::RelPath;

    fn plan() -> SelfPatchPlan {
        let to = Version::parse("2.0.0").unwrap();
        SelfPatchPlan {
            format: SELF_PATCH_FORMAT.into(),
            id: "t1".into(),
            created_unix: 1,
            app_dir: PathBuf::from("/opt/demo"),
            app: "demo".into(),
            from: Some(Version::parse("1.0.0").unwrap()),
            to: to.clone(),
            actions: vec![Action::Place {
                path: RelPath::new("bin/app").unwrap(),
                staged: "staging/a/f0".into(),
                had_old: true,
            }],
            wait_pid: Some(42),
            wait_timeout_secs: 60,
            record: InstallRecord {
                app: "demo".into(),
                version: to,
                tree: Blake3::of(b"t"),
                previous: None,
            },
            relaunch: Some(Relaunch {
                program: "/opt/demo/bin/app".into(),
                args: vec!["--x".into()],
                cwd: None,
            }),
            cleanup: vec!["staging".into()],
        }
    }

    #[test]
    fn round_trip() {
        let p = plan();
        let b = serde_json::to_vec(&p).unwrap();
        assert_eq!(SelfPatchPlan::from_json("plan", &b).unwrap(), p);
    }

    #[test]
    fn staged_path_escaping_the_state_dir_is_refused() {
        let mut p = plan();
        p.actions = vec![Action::Place {
            path: RelPath::new("x").unwrap(),
            staged: "../../etc/passwd".into(),
            had_old: false,
        }];
        let b = serde_json::to_vec(&p).unwrap();
        assert!(SelfPatchPlan::from_json("plan", &b).is_err());
    }

    #[test]
    fn relative_app_dir_is_refused() {
        let mut p = plan();
        p.app_dir = PathBuf::from("demo");
        let b = serde_json::to_vec(&p).unwrap();
        assert!(SelfPatchPlan::from_json("plan", &b)
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
    }
}
