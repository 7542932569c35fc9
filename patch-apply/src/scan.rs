//! Scanning a directory tree into paths, kinds, sizes, BLAKE3 hashes and exec bits.
//!
//! Used on release trees by `patch-create` (strict: anything that cannot be shipped safely is
//! an error) and on app directories by the updater (lenient: odd entries are reported so that
//! the update can replace or remove them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use formats::manifest::{tree_digest, Node};
use formats::patterns::PathPatterns;
use formats::relpath::resolve_link_target;
use formats::{Blake3, RelPath};
use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::scan_cache::{ScanCache, Stamp};

/// How to treat entries that a release cannot contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// Release trees: a symlink leaving the tree, a device, FIFO or socket, or a name that is
    /// not UTF-8 is an error naming the path.
    Release,
    /// App directories: such entries are listed in [`Tree::foreign`] so an update can remove
    /// them; the updater's state directory is skipped.
    Install,
}

/// A scanned tree.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// Every path below the root (ignored paths excluded), sorted.
    pub entries: BTreeMap<RelPath, Node>,
    /// Entries that cannot be part of any release (only in [`Strictness::Install`] scans).
    pub foreign: Vec<PathBuf>,
}

impl Tree {
    /// The tree digest over every entry not matching `ignore`.
    pub fn digest(&self, ignore: &PathPatterns) -> Blake3 {
        tree_digest(self.entries.iter().filter(|(p, _)| !ignore.matches(p)))
    }

    /// Total bytes of regular files.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter_map(Node::file_pin)
            .map(|p| p.size)
            .sum()
    }
}

/// Scans `root`. A missing root is an empty tree in [`Strictness::Install`] mode and an error
/// in [`Strictness::Release`] mode. Paths matching `ignore` are skipped (and not descended).
/// Every file is hashed.
pub fn scan(root: &Path, ignore: &PathPatterns, strictness: Strictness) -> Result<Tree> {
    scan_with(root, ignore, strictness, CacheUse::None)
}

/// How a scan uses the app dir's scan cache ([`crate::scan_cache`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// Neither read nor write it (release trees).
    None,
    /// Reuse the hashes of files whose size, times and inode are unchanged; write it back.
    Reuse,
    /// Hash every file (verification after writing) and write the cache.
    Refresh,
}

/// [`scan`] of an app dir with the scan cache used as `cache` says.
pub fn scan_with(
    root: &Path,
    ignore: &PathPatterns,
    strictness: Strictness,
    cache: CacheUse,
) -> Result<Tree> {
    let mut tree = Tree::default();
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && strictness == Strictness::Install => {
            return Ok(tree)
        }
        Err(e) => return Err(Error::io(root, e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::io(root, std::io::Error::other("not a directory")))
        }
        Ok(_) => {}
    }
    let mut files: Vec<(RelPath, PathBuf, bool, Stamp)> = Vec::new();
    let old_cache = match cache {
        CacheUse::Reuse => ScanCache::load(root),
        _ => ScanCache::default(),
    };
    let mut walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(item) = walker.next() {
        let entry = item.map_err(|e| {
            let p = e.path().unwrap_or(root).to_path_buf();
            Error::io(
                p,
                e.into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("walk error")),
            )
        })?;
        let abs = entry.path();
        let rel_fs = abs.strip_prefix(root).unwrap_or(abs);
        let ft = entry.file_type();
        if strictness == Strictness::Install
            && rel_fs
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                == Some(formats::layout::STATE_DIR)
        {
            if ft.is_dir() {
                walker.skip_current_dir();
            }
            continue;
        }
        let rel = match RelPath::from_path(rel_fs) {
            Ok(r) => r,
            Err(e) => {
                if strictness == Strictness::Release {
                    return Err(Error::Format(e));
                }
                tree.foreign.push(abs.to_path_buf());
                if ft.is_dir() {
                    walker.skip_current_dir();
                }
                continue;
            }
        };
        if ignore.matches(&rel) {
            if ft.is_dir() {
                walker.skip_current_dir();
            }
            continue;
        }
        if ft.is_dir() {
            tree.entries.insert(rel, Node::Dir);
        } else if ft.is_symlink() {
            let target = std::fs::read_link(abs).at(abs)?;
            let target_str = target.to_str().map(str::to_string);
            let inside = target_str
                .as_deref()
                .and_then(|t| resolve_link_target(&rel, t))
                .is_some();
            match (target_str, inside) {
                (Some(t), true) => {
                    tree.entries.insert(rel, Node::Symlink { target: t });
                }
                (t, _) => {
                    if strictness == Strictness::Release {
                        return Err(Error::Format(formats::Error::UnsafePath {
                            path: format!(
                                "{rel} -> {}",
                                t.unwrap_or_else(|| target.to_string_lossy().into_owned())
                            ),
                            reason: "symlink points outside the tree",
                        }));
                    }
                    tree.foreign.push(abs.to_path_buf());
                }
            }
        } else if ft.is_file() {
            let meta = entry.metadata().map_err(|e| {
                Error::io(
                    abs,
                    e.into_io_error()
                        .unwrap_or_else(|| std::io::Error::other("stat failed")),
                )
            })?;
            files.push((rel, abs.to_path_buf(), is_exec(&meta), Stamp::of(&meta)));
        } else {
            if strictness == Strictness::Release {
                return Err(Error::Format(formats::Error::UnsafePath {
                    path: rel.to_string(),
                    reason: "not a regular file, directory or symlink",
                }));
            }
            tree.foreign.push(abs.to_path_buf());
        }
    }
    let n_files = files.len();
    let hashed: Vec<Result<(RelPath, Node, Stamp, bool)>> = files
        .into_par_iter()
        .map(|(rel, abs, exec, stamp)| {
            let (size, blake3, hit) = match old_cache.get(rel.as_str(), &stamp) {
                Some(h) => (stamp.size, h, true),
                None => {
                    let pin = formats::hash::pin_file(&abs)?;
                    (pin.size, pin.blake3, false)
                }
            };
            Ok((rel, Node::File { size, blake3, exec }, stamp, hit))
        })
        .collect();
    let mut stamps = Vec::new();
    let mut hits = 0usize;
    for h in hashed {
        let (rel, node, stamp, hit) = h?;
        hits += usize::from(hit);
        if cache != CacheUse::None {
            if let Node::File { size, blake3, .. } = &node {
                // A file that changed while it was hashed is not cached.
                if *size == stamp.size {
                    stamps.push((rel.clone(), stamp, *blake3));
                }
            }
        }
        tree.entries.insert(rel, node);
    }
    // Nothing to update when every file came from the cache and none disappeared.
    let unchanged = hits == n_files && old_cache.len() == n_files;
    if cache != CacheUse::None && !unchanged {
        ScanCache::store(root, stamps.iter().map(|(p, s, h)| (p.as_str(), *s, *h)));
    }
    Ok(tree)
}

#[cfg(unix)]
fn is_exec(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_exec(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Sets or clears the exec bits of a file (0o755 / 0o644).
pub fn set_exec(path: &Path, exec: bool) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).at(path)?;
    }
    #[cfg(not(unix))]
    let _ = (path, exec);
    Ok(())
}
