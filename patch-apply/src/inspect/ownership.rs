//! What the updater owns in an app directory, and what it leaves alone (docs/security.md,
//! "What the updater owns and never touches").
//!
//! The updater deletes or replaces only what it can show it owns: paths listed by the manifest
//! of a release it recognised or installed in this app dir, and stray paths matching the
//! target release's `owned` globs (caches the app writes). Ignored paths are the user's. Anything
//! else is *unknown* and left in place; where it is in the way of the release (a user file at a
//! path the release needs, a symlink or a directory where the release has something else, an
//! ignored file inside a directory that becomes a file) it is moved into the quarantine
//! (`.patchkit/quarantine/<transaction>/<path>`), never deleted. Entries the scan cannot use
//! (FIFOs, symlinks leaving the app dir, names that are not UTF-8) count only when they are in
//! the way; they are never followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use formats::manifest::{Node, ReleaseManifest};
use formats::patterns::PathPatterns;
use formats::RelPath;
use serde::Serialize;

use crate::error::Result;
use crate::scan::Tree;

/// Who owns what: the paths of known releases and the release engineer's `owned` globs.
pub struct Owner {
    known: BTreeSet<RelPath>,
    globs: PathPatterns,
    ignore: PathPatterns,
}

impl Owner {
    /// The owner for an update to `target`, knowing the releases of `known` (the recognised
    /// release, the install record's release; the target itself when checking an install of
    /// it) and the paths `also` (the entries of an install whose tree digest matched a release
    /// exactly, whose manifest was not fetched). Ignored paths are the target's.
    pub fn new(
        target: &ReleaseManifest,
        known: &[&ReleaseManifest],
        also: impl IntoIterator<Item = RelPath>,
    ) -> Result<Self> {
        let mut globs: Vec<String> = target.owned.clone();
        let mut paths: BTreeSet<RelPath> = also.into_iter().collect();
        for m in known {
            globs.extend(m.owned.iter().cloned());
            paths.extend(m.entries.iter().map(|e| e.path.clone()));
        }
        globs.sort();
        globs.dedup();
        Ok(Owner {
            known: paths,
            globs: PathPatterns::new(&globs)?,
            ignore: PathPatterns::new(&target.ignore)?,
        })
    }

    /// Whether the updater may delete or replace what is at `p`.
    pub fn owns(&self, p: &RelPath) -> bool {
        !self.ignore.matches(p) && (self.known.contains(p) || self.globs.matches(p))
    }

    /// Whether `p` is one of the user's ignored paths.
    pub fn ignored(&self, p: &RelPath) -> bool {
        self.ignore.matches(p)
    }
}

/// What an update to a release would do with what is in the app dir now (no contents: the
/// commit plans those).
#[derive(Clone, Debug, Default)]
pub struct Survey {
    /// Things in the way of the release that the updater does not own, moved to the quarantine
    /// whole (a directory with everything left in it). Never nested.
    pub quarantine: Vec<RelPath>,
    /// Owned files and symlinks removed (kept in the transaction's backup).
    pub remove: Vec<RelPath>,
    /// Owned directories where the release has a file or symlink, removed (deepest first).
    pub remove_dirs_conflict: Vec<RelPath>,
    /// Owned directories the release no longer has and that hold nothing to keep.
    pub remove_dirs_obsolete: Vec<RelPath>,
    /// Paths of the release whose old owned file or symlink is replaced in place.
    pub replace: BTreeSet<RelPath>,
    /// Paths of the release that differ from what is there (missing, changed, or in the way).
    pub write: Vec<RelPath>,
    /// Unknown entries left in place (files, symlinks, unusable entries; not directories).
    pub keep: Vec<String>,
}

impl Survey {
    /// Whether the update has nothing to do.
    pub fn is_noop(&self) -> bool {
        self.quarantine.is_empty()
            && self.remove.is_empty()
            && self.remove_dirs_conflict.is_empty()
            && self.remove_dirs_obsolete.is_empty()
            && self.write.is_empty()
    }

    /// Paths deleted by the update (owned files and symlinks the release does not have).
    pub fn deletes(&self, target: &ReleaseManifest) -> Vec<String> {
        let want = target.by_path();
        self.remove
            .iter()
            .filter(|p| !want.contains_key(p))
            .map(|p| p.to_string())
            .collect()
    }

    /// Paths of the release whose current owned version is replaced.
    pub fn replaces(&self, target: &ReleaseManifest) -> Vec<String> {
        let want = target.by_path();
        let mut out: BTreeSet<String> = self.replace.iter().map(|p| p.to_string()).collect();
        out.extend(
            self.remove
                .iter()
                .chain(&self.remove_dirs_conflict)
                .filter(|p| want.contains_key(p))
                .map(|p| p.to_string()),
        );
        out.into_iter().collect()
    }
}

/// The parent paths of `p`, nearest last (`a`, `a/b` for `a/b/c`).
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/').map(move |(i, _)| &p[..i])
}

/// Whether `p` lies below one of `dirs`.
fn below(p: &str, dirs: &BTreeSet<String>) -> bool {
    !dirs.is_empty() && ancestors(p).any(|a| dirs.contains(a))
}

/// An entry the scan could not use, as a path relative to `app_dir` (lossy for names that
/// are not UTF-8).
pub fn foreign_rel(app_dir: &Path, abs: &Path) -> String {
    abs.strip_prefix(app_dir)
        .unwrap_or(abs)
        .to_string_lossy()
        .into_owned()
}

/// Whether the path `r` of an entry the scan could not use (lossy for names that are not
/// UTF-8) or one of its parents matches `ignore`.
pub fn ignored_lossy(ignore: &PathPatterns, r: &str) -> bool {
    RelPath::new(r).is_ok_and(|r| ignore.matches(&r))
        || ancestors(r).any(|a| RelPath::new(a).is_ok_and(|a| ignore.matches(&a)))
}

/// Surveys `current` (a scan of `app_dir`) against `target` as `owner` sees it.
pub fn survey(app_dir: &Path, current: &Tree, target: &ReleaseManifest, owner: &Owner) -> Survey {
    let want: BTreeMap<&RelPath, &Node> =
        target.entries.iter().map(|e| (&e.path, &e.node)).collect();
    let want_str: BTreeSet<&str> = target.entries.iter().map(|e| e.path.as_str()).collect();
    let foreign: Vec<String> = current
        .foreign
        .iter()
        .map(|f| foreign_rel(app_dir, f))
        .collect();
    // Directories holding something that stays: they are not removed, and one the release
    // needs as a file goes to the quarantine whole.
    let mut holds_kept: BTreeSet<String> = BTreeSet::new();
    let mark = |p: &str, holds: &mut BTreeSet<String>| {
        for a in ancestors(p) {
            holds.insert(a.to_string());
        }
    };
    for p in current.entries.keys() {
        // Ignored and unknown entries the release has no use for stay where they are.
        if !want.contains_key(p) && !owner.owns(p) {
            mark(p.as_str(), &mut holds_kept);
        }
    }
    for f in &foreign {
        if !want_str.contains(f.as_str()) {
            mark(f, &mut holds_kept);
        }
    }
    let mut s = Survey::default();
    // Directories the release needs as something else.
    let mut qdirs: BTreeSet<String> = BTreeSet::new();
    for (p, n) in &current.entries {
        if let (Node::Dir, Some(t)) = (n, want.get(p)) {
            if !matches!(t, Node::Dir) {
                if !owner.owns(p) || holds_kept.contains(p.as_str()) {
                    qdirs.insert(p.to_string());
                    s.quarantine.push(p.clone());
                } else {
                    s.remove_dirs_conflict.push(p.clone());
                }
            }
        }
    }
    for (p, n) in &current.entries {
        if below(p.as_str(), &qdirs) || qdirs.contains(p.as_str()) {
            continue;
        }
        match (n, want.get(p)) {
            (Node::Dir, Some(Node::Dir)) => {}
            (Node::Dir, Some(_)) => {} // Planned above.
            (_, Some(t)) => {
                if *t == n {
                    continue;
                }
                let same_kind = std::mem::discriminant(*t) == std::mem::discriminant(n);
                if owner.owns(p) {
                    if same_kind {
                        s.replace.insert(p.clone());
                    } else {
                        s.remove.push(p.clone());
                    }
                } else {
                    s.quarantine.push(p.clone());
                }
            }
            (Node::Dir, None) => {
                if owner.owns(p) && !holds_kept.contains(p.as_str()) {
                    s.remove_dirs_obsolete.push(p.clone());
                }
            }
            (_, None) => {
                if owner.owns(p) {
                    s.remove.push(p.clone());
                } else if !owner.ignored(p) {
                    s.keep.push(p.to_string());
                }
            }
        }
    }
    for f in &foreign {
        if below(f, &qdirs) {
            continue;
        }
        match RelPath::new(f.as_str()) {
            Ok(r) if want.contains_key(&r) => s.quarantine.push(r),
            _ if ignored_lossy(&owner.ignore, f) => {}
            _ => s.keep.push(f.clone()),
        }
    }
    for e in &target.entries {
        let cur = current.entries.get(&e.path);
        let differs = match (cur, &e.node) {
            (Some(Node::Dir), Node::Dir) => false,
            (Some(c), n) => c != n,
            (None, _) => true,
        };
        if differs || s.quarantine.contains(&e.path) {
            s.write.push(e.path.clone());
        }
    }
    s.quarantine.sort();
    s.quarantine.dedup();
    s.remove.sort();
    s.remove_dirs_conflict.sort_by(|a, b| b.cmp(a));
    s.remove_dirs_obsolete.sort_by(|a, b| b.cmp(a));
    s.keep.sort();
    s
}

/// How an install differs from the release it was recognised as.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Differences {
    /// Files, symlinks and directories of the release whose content or kind differs.
    pub changed: Vec<String>,
    /// Paths of the release that are missing.
    pub missing: Vec<String>,
    /// Files, symlinks and unusable entries the release does not list (ignored paths and the
    /// release engineer's `owned` strays excluded).
    pub unknown: Vec<String>,
}

impl Differences {
    /// Compares `current` with release `m`.
    pub fn of(app_dir: &Path, current: &Tree, m: &ReleaseManifest) -> Result<Self> {
        let ignore = PathPatterns::new(&m.ignore)?;
        let owned = PathPatterns::new(&m.owned)?;
        let mut d = Differences::default();
        let want = m.by_path();
        for e in &m.entries {
            match current.entries.get(&e.path) {
                None => d.missing.push(e.path.to_string()),
                Some(Node::Dir) if matches!(e.node, Node::Dir) => {}
                Some(n) if *n != e.node => d.changed.push(e.path.to_string()),
                Some(_) => {}
            }
        }
        for (p, n) in &current.entries {
            if !matches!(n, Node::Dir)
                && !want.contains_key(p)
                && !ignore.matches(p)
                && !owned.matches(p)
            {
                d.unknown.push(p.to_string());
            }
        }
        for f in &current.foreign {
            let r = foreign_rel(app_dir, f);
            if !ignored_lossy(&ignore, &r) {
                d.unknown.push(r);
            }
        }
        d.unknown.sort();
        Ok(d)
    }

    /// Whether every path of the release matches (unknown entries aside).
    pub fn release_intact(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty()
    }

    /// `1.0.0 with 1 changed file and 1 unknown file`, or just `1.0.0`.
    pub fn describe(&self, version: &str) -> String {
        let n = |k: usize, what: &str| {
            (k > 0).then(|| format!("{k} {what} file{}", if k == 1 { "" } else { "s" }))
        };
        let parts: Vec<String> = [
            n(self.changed.len(), "changed"),
            n(self.missing.len(), "missing"),
            n(self.unknown.len(), "unknown"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match parts.len() {
            0 => version.to_string(),
            1 => format!("{version} with {}", parts[0]),
            k => format!(
                "{version} with {} and {}",
                parts[..k - 1].join(", "),
                parts[k - 1]
            ),
        }
    }
}

/// Files of the release `manifest` matched by path and content in `current`.
pub fn matching_files(current: &Tree, m: &ReleaseManifest) -> usize {
    m.entries
        .iter()
        .filter(|e| {
            matches!(e.node, Node::File { .. }) && current.entries.get(&e.path) == Some(&e.node)
        })
        .count()
}
