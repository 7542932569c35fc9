//! Removing files no signed metadata references any more (after pruning).

use std::collections::BTreeSet;

use formats::layout;

use crate::error::{IoContext, Result};
use crate::repo::Repo;

/// Deletes target files and repair files that the current targets metadata (and the manifests
/// it lists) no longer reference. Metadata files are kept (old versions stay valid history).
pub fn collect_garbage(repo: &Repo) -> Result<Vec<String>> {
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
            if !keep.contains(&rel) {
                std::fs::remove_file(entry.path()).at(entry.path())?;
                removed.push(rel);
            }
        }
    }
    Ok(removed)
}
