//! What each repository file is to a publisher, decided from its key alone: whether its name
//! is immutable, in which stage it is uploaded, its `Cache-Control` and `Content-Type`, whether
//! pruning may ever delete it, and the grace-period bookkeeping of pruning (docs/hosting.md,
//! "Upload order" and "Pruning"). Pure functions of plain data; no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use formats::layout::{
    cache_control, is_immutable, versioned_role, IMMUTABLE_CACHE, MUTABLE_CACHE,
};

/// Name of the publisher's state object at the root of the destination prefix.
pub const STATE_OBJECT: &str = ".patchkit-publish.json";
/// `format` of the state object.
pub const STATE_FORMAT: &str = "patchkit-publish-state-1";

/// The stages of an upload, in the order they run: everything of one stage is in the
/// destination before anything of the next is written, so that a client reading at any moment
/// finds every file the metadata it can see refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Targets, repair blobs and anything else outside `metadata/`.
    Artifacts,
    /// `metadata/N.root.json`.
    RootVersions,
    /// `metadata/N.targets.json` and versioned delegated roles (`metadata/N.NAME.json`).
    TargetsMetadata,
    /// `metadata/N.snapshot.json`.
    Snapshot,
    /// Unversioned metadata other than the timestamp (`metadata/root.json`).
    Unversioned,
    /// `metadata/timestamp.json`, the file that makes everything else visible: always last.
    Timestamp,
}

impl Stage {
    /// Every stage, in upload order.
    pub const ALL: [Stage; 6] = [
        Stage::Artifacts,
        Stage::RootVersions,
        Stage::TargetsMetadata,
        Stage::Snapshot,
        Stage::Unversioned,
        Stage::Timestamp,
    ];
}

/// The file name of a `metadata/` key, if it is one (`metadata/3.snapshot.json` → `3.snapshot.json`).
fn metadata_name(key: &str) -> Option<&str> {
    key.strip_prefix("metadata/").filter(|n| !n.contains('/'))
}

/// In which stage `key` is uploaded.
pub fn stage_of(key: &str) -> Stage {
    let Some(name) = metadata_name(key) else {
        return Stage::Artifacts;
    };
    match versioned_role(name) {
        Some("root") => Stage::RootVersions,
        Some("snapshot") => Stage::Snapshot,
        Some(_) => Stage::TargetsMetadata,
        None if name == "timestamp.json" => Stage::Timestamp,
        None => Stage::Unversioned,
    }
}

/// The `Content-Type` an object is stored with.
pub fn content_type(key: &str) -> &'static str {
    if key.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// Whether pruning may delete `key` when the local repository no longer has it: only files of
/// the repository layout (`targets/`, `blobs/`, `metadata/`), never a root version (clients walk
/// the root chain from the one they trust), `root.json` or `timestamp.json`, and nothing else
/// under the prefix (it may not be ours).
pub fn may_prune(key: &str) -> bool {
    if let Some(name) = metadata_name(key) {
        return !matches!(
            stage_of(key),
            Stage::RootVersions | Stage::Unversioned | Stage::Timestamp
        ) && name.ends_with(".json");
    }
    key.starts_with("targets/") || key.starts_with("blobs/")
}

/// Whether a local repository file is the tool's own (lock, temporary files): any path
/// component starting with a dot (`.patch-create.lock`, `.tmp-release-*`, `.pk-tmp-*`).
pub fn is_private(rel: &str) -> bool {
    rel.split('/').any(|c| c.starts_with('.'))
}

/// The publisher's state kept in the destination: when each object the local repository no
/// longer has was first seen missing, so that a rerun from any machine continues the grace
/// period instead of restarting or skipping it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishState {
    /// Always [`STATE_FORMAT`].
    pub format: String,
    /// Key → RFC 3339 time it was first seen missing from the local repository.
    #[serde(default)]
    pub missing_since: BTreeMap<String, String>,
}

/// What pruning does with one object the local repository no longer has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PruneDecision {
    /// The grace period is over: delete it.
    Delete {
        /// The object's key.
        key: String,
    },
    /// Keep it until `due`.
    Keep {
        /// The object's key.
        key: String,
        /// When it was first seen missing.
        since: OffsetDateTime,
        /// When a publish may delete it.
        due: OffsetDateTime,
    },
}

/// Decides pruning: `remote` are the destination's keys, `local` the repository's; `state` is
/// what earlier runs recorded. Returns the decisions and the state to store (entries of objects
/// that came back or are gone are dropped; a missing or unreadable time restarts the grace).
pub fn plan_prune(
    remote: &BTreeSet<String>,
    local: &BTreeSet<String>,
    state: &PublishState,
    now: OffsetDateTime,
    grace: time::Duration,
) -> (Vec<PruneDecision>, PublishState) {
    let mut next = PublishState {
        format: STATE_FORMAT.to_string(),
        missing_since: BTreeMap::new(),
    };
    let mut out = Vec::new();
    for key in remote {
        if local.contains(key) || !may_prune(key) {
            continue;
        }
        let since = state
            .missing_since
            .get(key)
            .and_then(|s| formats::time_util::parse_tuf(s).ok())
            .filter(|t| *t <= now)
            .unwrap_or(now);
        let due = since + grace;
        if due <= now {
            out.push(PruneDecision::Delete { key: key.clone() });
        } else {
            next.missing_since
                .insert(key.clone(), formats::time_util::format_tuf(since));
            out.push(PruneDecision::Keep {
                key: key.clone(),
                since,
                due,
            });
        }
    }
    (out, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn classes_of_keys() {
        // key, stage, immutable, may prune
        let cases = [
            (
                "targets/1.0.0/ab.installer.tar.zst",
                Stage::Artifacts,
                true,
                true,
            ),
            ("blobs/ab/abcd.zst", Stage::Artifacts, true, true),
            ("metadata/1.root.json", Stage::RootVersions, true, false),
            (
                "metadata/12.targets.json",
                Stage::TargetsMetadata,
                true,
                true,
            ),
            (
                "metadata/3.bins-0a.json",
                Stage::TargetsMetadata,
                true,
                true,
            ),
            ("metadata/7.snapshot.json", Stage::Snapshot, true, true),
            ("metadata/root.json", Stage::Unversioned, false, false),
            ("metadata/timestamp.json", Stage::Timestamp, false, false),
            ("metadata/x.snapshot.json", Stage::Unversioned, false, false),
            ("index.html", Stage::Artifacts, false, false),
        ];
        for (key, stage, immutable, prune) in cases {
            assert_eq!(stage_of(key), stage, "{key}");
            assert_eq!(is_immutable(key), immutable, "{key}");
            assert_eq!(may_prune(key), prune, "{key}");
        }
        assert_eq!(cache_control("metadata/timestamp.json"), MUTABLE_CACHE);
        assert_eq!(cache_control("metadata/2.root.json"), IMMUTABLE_CACHE);
        assert_eq!(content_type("metadata/2.root.json"), "application/json");
        assert_eq!(
            content_type("targets/1.0.0/ab.installer.tar.zst"),
            "application/octet-stream"
        );
        let mut sorted = Stage::ALL.to_vec();
        sorted.sort();
        assert_eq!(sorted, Stage::ALL, "stages run in their declared order");
        assert_eq!(Stage::ALL.last(), Some(&Stage::Timestamp));
    }

    #[test]
    fn private_files_are_never_published() {
        for p in [
            ".patch-create.lock",
            ".tmp-release-123/targets/x",
            "metadata/.pk-tmp-timestamp.json-1-2",
            ".patchkit-publish.json",
        ] {
            assert!(is_private(p), "{p}");
        }
        assert!(!is_private("metadata/timestamp.json"));
    }

    #[test]
    fn prune_keeps_through_grace_and_deletes_after() {
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        let grace = time::Duration::days(7);
        let remote: BTreeSet<String> = [
            "targets/1.0.0/a.patch",
            "metadata/timestamp.json",
            "metadata/1.root.json",
            "other/file",
            "blobs/aa/kept.zst",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let local: BTreeSet<String> = ["blobs/aa/kept.zst".to_string()].into();
        let (d, st) = plan_prune(&remote, &local, &PublishState::default(), t0, grace);
        assert_eq!(d.len(), 1, "only the pruned target is a candidate: {d:?}");
        assert!(matches!(&d[0], PruneDecision::Keep { key, .. } if key == "targets/1.0.0/a.patch"));
        // A day later: still kept, with the first time.
        let (d, st2) = plan_prune(&remote, &local, &st, t0 + time::Duration::days(1), grace);
        assert!(matches!(&d[0], PruneDecision::Keep { since, .. } if *since == t0));
        assert_eq!(st2, st);
        // After the grace: deleted, and forgotten by the state.
        let (d, st3) = plan_prune(&remote, &local, &st2, t0 + grace, grace);
        assert!(matches!(&d[0], PruneDecision::Delete { key } if key == "targets/1.0.0/a.patch"));
        assert!(st3.missing_since.is_empty());
        // A bad or future time restarts the grace rather than deleting early.
        let mut bad = st.clone();
        bad.missing_since
            .insert("targets/1.0.0/a.patch".into(), "yesterday".into());
        let (d, _) = plan_prune(&remote, &local, &bad, t0 + grace, grace);
        assert!(matches!(&d[0], PruneDecision::Keep { .. }));
        // Zero grace deletes at once.
        let (d, _) = plan_prune(
            &remote,
            &local,
            &PublishState::default(),
            t0,
            time::Duration::ZERO,
        );
        assert!(matches!(&d[0], PruneDecision::Delete { .. }));
    }
}
