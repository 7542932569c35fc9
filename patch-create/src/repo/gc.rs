//! Removing files no signed metadata references any more (after pruning), and what an
//! interrupted `release` left behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use formats::layout;

use crate::error::{IoContext, Result};
use crate::repo::Repo;

/// Prefix of the old files a `release` decodes from repair files into the repository
/// (`content::ContentSource::file`); one left by a release killed from outside is removed by
/// [`remove_interrupted_leftovers`].
pub const DECODED_PREFIX: &str = ".tmp-release-decoded-";

/// Deletes target files and repair files that the current targets metadata (and the manifests
/// it lists) no longer reference. Metadata files are kept (old versions stay valid history).
pub fn collect_garbage(repo: &Repo) -> Result<Vec<String>> {
    remove_unreferenced(repo, |_| true)
}

/// Removes what an interrupted `release` (Ctrl-C, a kill, a full disk) left in the repository:
/// its `.tmp-release-*` work directories and decoded old files, and target and repair files that no signed metadata
/// references and that were written after the last commit (newer than `timestamp.json`, which
/// every commit replaces last), so never served to anyone. Unreferenced files older than that
/// are left alone. The caller holds the repository lock, so no other release is writing.
/// Returns the removed paths, relative to the repository.
pub fn remove_interrupted_leftovers(repo: &Repo) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&repo.path).at(&repo.path)? {
        let entry = entry.at(&repo.path)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(".tmp-release-") {
            continue;
        }
        let kind = entry.file_type().at(&entry.path())?;
        if kind.is_dir() {
            std::fs::remove_dir_all(entry.path()).at(&entry.path())?;
            removed.push(name);
        } else if kind.is_file() && name.starts_with(DECODED_PREFIX) {
            std::fs::remove_file(entry.path()).at(&entry.path())?;
            removed.push(name);
        }
    }
    let ts = repo.path.join(layout::METADATA_DIR).join("timestamp.json");
    let committed = match std::fs::metadata(&ts) {
        Ok(m) => m.modified().at(&ts)?,
        // No commit yet: everything in targets/ and blobs/ is an interrupted first release's.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SystemTime::UNIX_EPOCH,
        Err(e) => return Err(crate::Error::io(&ts, e)),
    };
    removed.extend(remove_unreferenced(repo, |p| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > committed)
    })?);
    Ok(removed)
}

/// Deletes the files under `targets/` and `blobs/` that the current targets metadata (and the
/// manifests it lists) do not reference and for which `select` is true.
fn remove_unreferenced(repo: &Repo, select: impl Fn(&Path) -> bool) -> Result<Vec<String>> {
    let mut keep: BTreeSet<String> = BTreeSet::new();
    for (name, t) in &repo.targets.targets {
        keep.insert(layout::target_file(name, &t.sha256()?));
    }
    for (v, _) in repo.releases()? {
        for e in repo.manifest(&v)?.entries {
            if let (Some(p), Some(_)) = (e.node.file_pin(), e.repair) {
                keep.insert(layout::blob_path(&p.blake3));
            }
        }
    }
    let mut removed = Vec::new();
    for dir in [layout::TARGETS_DIR, layout::BLOBS_DIR] {
        let base = repo.path.join(dir);
        if !base.exists() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&base).min_depth(1) {
            let entry = entry.map_err(|e| crate::Error::io(&base, e.into()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&repo.path)
                .unwrap_or(entry.path())
                .to_string_lossy()
                .replace('\\', "/");
            if !keep.contains(&rel) && select(entry.path()) {
                std::fs::remove_file(entry.path()).at(entry.path())?;
                removed.push(rel);
            }
        }
    }
    Ok(removed)
}
