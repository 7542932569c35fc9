//! Which targets role lists which target (docs/format.md §7.2): the one place that splits the
//! repository's targets between top-level `targets`, the delegated role `recent` (the newest
//! releases) and the archive chunks `archive-NNNN` (the older ones).
//!
//! A pure function of the targets, the archive chunks as they are and two sizes, so that every
//! writer (release, yank, resign, settings, keys) gets the same split from the same input.
//! Uses nothing else of the crate.

use std::collections::{BTreeMap, BTreeSet};

use formats::layout;
use formats::tuf::{TargetFile, TargetKind};
use formats::Version;

/// How many releases `recent` and each archive chunk hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleSizes {
    /// The newest this many releases are listed by `recent` (at least 1).
    pub recent: usize,
    /// An archive chunk takes releases until it holds this many (at least 1).
    pub chunk: usize,
}

impl Default for RoleSizes {
    fn default() -> Self {
        RoleSizes {
            recent: layout::DEFAULT_RECENT_RELEASES,
            chunk: layout::DEFAULT_ARCHIVE_CHUNK,
        }
    }
}

/// The environment variable that overrides [`RoleSizes::recent`] (tests and benchmarks).
pub const RECENT_ENV: &str = "PATCHKIT_RECENT_RELEASES";
/// The environment variable that overrides [`RoleSizes::chunk`] (tests and benchmarks).
pub const CHUNK_ENV: &str = "PATCHKIT_ARCHIVE_CHUNK";

impl RoleSizes {
    /// The defaults, overridden by `PATCHKIT_RECENT_RELEASES` and `PATCHKIT_ARCHIVE_CHUNK`
    /// when they hold a positive number (anything else is ignored).
    pub fn from_env() -> Self {
        let get = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let d = RoleSizes::default();
        RoleSizes {
            recent: get(RECENT_ENV, d.recent),
            chunk: get(CHUNK_ENV, d.chunk),
        }
    }
}

/// The targets of each role after a change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleSplit {
    /// Top-level `targets`: `repository.json` and every target that belongs to no release.
    pub top: BTreeMap<String, TargetFile>,
    /// `recent`: every target of the newest releases.
    pub recent: BTreeMap<String, TargetFile>,
    /// The archive chunks by number, oldest first (a chunk that became empty is kept, empty:
    /// clients refuse a snapshot that drops a role they trusted).
    pub archives: Vec<(u32, BTreeMap<String, TargetFile>)>,
}

/// The release a target belongs to: the `version` of a manifest, installer or patch (a patch
/// belongs to the release it leads to). `None` for `repository.json` and targets that are not
/// ours.
pub fn release_of(name: &str, t: &TargetFile) -> Option<Version> {
    let c = t.patchkit(name).ok()?;
    match c.kind {
        TargetKind::Manifest | TargetKind::Installer | TargetKind::Patch => c.version,
        TargetKind::Repository => None,
    }
}

/// Splits `targets` (every target of the repository) between the roles.
///
/// `recent` takes the newest `sizes.recent` releases. Every older release stays in the archive
/// chunk `previous` puts it in (chunk number → its releases); one that is in none (it just
/// left `recent`, or the repository had no chunks yet) joins the newest chunk while that holds
/// fewer than `sizes.chunk` releases, else starts the next chunk. So a full chunk changes only
/// when one of its releases is yanked or pruned, and releases never move between chunks.
pub fn split(
    targets: &BTreeMap<String, TargetFile>,
    previous: &BTreeMap<u32, BTreeSet<Version>>,
    sizes: RoleSizes,
) -> RoleSplit {
    let recent_n = sizes.recent.max(1);
    let chunk_n = sizes.chunk.max(1);
    let mut releases: BTreeSet<Version> = BTreeSet::new();
    for (name, t) in targets {
        if let Some(v) = release_of(name, t) {
            releases.insert(v);
        }
    }
    let cut = releases.len().saturating_sub(recent_n);
    let older: Vec<&Version> = releases.iter().take(cut).collect();
    let mut chunk_of: BTreeMap<Version, u32> = BTreeMap::new();
    let mut members: BTreeMap<u32, usize> = previous.keys().map(|n| (*n, 0)).collect();
    let mut was_in: BTreeMap<&Version, u32> = BTreeMap::new();
    for (n, vs) in previous {
        for v in vs {
            was_in.entry(v).or_insert(*n);
        }
    }
    let mut unplaced = Vec::new();
    for v in &older {
        match was_in.get(v) {
            Some(n) => {
                chunk_of.insert((*v).clone(), *n);
                *members.entry(*n).or_default() += 1;
            }
            None => unplaced.push(*v),
        }
    }
    for v in unplaced {
        let last = members.last_key_value().map(|(n, count)| (*n, *count));
        let n = match last {
            Some((n, count)) if count < chunk_n => n,
            Some((n, _)) => n.saturating_add(1),
            None => 1,
        };
        chunk_of.insert(v.clone(), n);
        *members.entry(n).or_default() += 1;
    }
    let mut out = RoleSplit {
        archives: members.keys().map(|n| (*n, BTreeMap::new())).collect(),
        ..RoleSplit::default()
    };
    for (name, t) in targets {
        let role = match release_of(name, t) {
            None => &mut out.top,
            Some(v) => match chunk_of.get(&v) {
                None => &mut out.recent,
                Some(n) => match out.archives.iter_mut().find(|(m, _)| m == n) {
                    Some((_, map)) => map,
                    None => &mut out.recent,
                },
            },
        };
        role.insert(name.clone(), t.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use formats::tuf::TargetCustom;
    use formats::Blake3;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn target(kind: TargetKind, version: Option<&str>) -> TargetFile {
        let mut c = TargetCustom::new(kind, Blake3::of(b"x"));
        c.version = version.map(v);
        TargetFile {
            length: 1,
            hashes: BTreeMap::from([("sha256".into(), "00".repeat(32))]),
            custom: serde_json::to_value(c).ok(),
        }
    }

    /// A repository with releases 1.0.0 .. N.0.0, each with a manifest and a patch from the
    /// one before.
    fn repo(n: u32) -> BTreeMap<String, TargetFile> {
        let mut t = BTreeMap::new();
        t.insert(
            "repository.json".to_string(),
            target(TargetKind::Repository, None),
        );
        for i in 1..=n {
            let ver = format!("{i}.0.0");
            t.insert(
                format!("{ver}/manifest.json"),
                target(TargetKind::Manifest, Some(&ver)),
            );
            if i > 1 {
                t.insert(
                    format!("{ver}/patch-from-{}.0.0.patch", i - 1),
                    target(TargetKind::Patch, Some(&ver)),
                );
            }
        }
        t
    }

    fn versions(m: &BTreeMap<String, TargetFile>) -> Vec<String> {
        let mut out: Vec<String> = m
            .iter()
            .filter_map(|(n, t)| release_of(n, t).map(|v| v.to_string()))
            .collect();
        out.dedup();
        out
    }

    fn assignment(s: &RoleSplit) -> BTreeMap<u32, BTreeSet<Version>> {
        s.archives
            .iter()
            .map(|(n, m)| {
                (
                    *n,
                    m.iter()
                        .filter_map(|(name, t)| release_of(name, t))
                        .collect(),
                )
            })
            .collect()
    }

    const SIZES: RoleSizes = RoleSizes {
        recent: 2,
        chunk: 3,
    };

    #[test]
    fn small_repository_has_everything_in_recent() {
        let s = split(&repo(2), &BTreeMap::new(), SIZES);
        assert_eq!(s.top.keys().collect::<Vec<_>>(), vec!["repository.json"]);
        assert_eq!(versions(&s.recent), vec!["1.0.0", "2.0.0"]);
        assert!(s.archives.is_empty());
    }

    #[test]
    fn conversion_fills_chunks_in_version_order() {
        let s = split(&repo(9), &BTreeMap::new(), SIZES);
        assert_eq!(versions(&s.recent), vec!["8.0.0", "9.0.0"]);
        let chunks: Vec<(u32, Vec<String>)> =
            s.archives.iter().map(|(n, m)| (*n, versions(m))).collect();
        assert_eq!(
            chunks,
            vec![
                (1, vec!["1.0.0".into(), "2.0.0".into(), "3.0.0".into()]),
                (2, vec!["4.0.0".into(), "5.0.0".into(), "6.0.0".into()]),
                (3, vec!["7.0.0".into()]),
            ]
        );
    }

    #[test]
    fn a_release_leaving_recent_joins_the_newest_chunk_and_full_chunks_stay() {
        let before = split(&repo(9), &BTreeMap::new(), SIZES);
        let after = split(&repo(10), &assignment(&before), SIZES);
        assert_eq!(versions(&after.recent), vec!["10.0.0", "9.0.0"]);
        assert_eq!(after.archives[0], before.archives[0]);
        assert_eq!(after.archives[1], before.archives[1]);
        assert_eq!(versions(&after.archives[2].1), vec!["7.0.0", "8.0.0"]);
        // Two more releases fill chunk 3 and start chunk 4.
        let more = split(&repo(12), &assignment(&after), SIZES);
        assert_eq!(
            versions(&more.archives[2].1),
            vec!["7.0.0", "8.0.0", "9.0.0"]
        );
        assert_eq!(more.archives[3].0, 4);
        assert_eq!(versions(&more.archives[3].1), vec!["10.0.0"]);
    }

    #[test]
    fn pruned_releases_leave_their_chunk_and_empty_chunks_are_kept() {
        let before = split(&repo(9), &BTreeMap::new(), SIZES);
        let mut pruned = repo(9);
        pruned.retain(|n, t| release_of(n, t).is_none_or(|v| v > self::v("3.0.0")));
        let after = split(&pruned, &assignment(&before), SIZES);
        assert_eq!(after.archives.len(), 3);
        assert!(after.archives[0].1.is_empty());
        assert_eq!(after.archives[1], before.archives[1]);
    }

    #[test]
    fn sizes_come_from_the_environment_only_when_positive() {
        // Not set in the test environment: the defaults.
        let d = RoleSizes::default();
        assert_eq!(d.recent, layout::DEFAULT_RECENT_RELEASES);
        assert_eq!(d.chunk, layout::DEFAULT_ARCHIVE_CHUNK);
    }
}
