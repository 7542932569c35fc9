//! Scanning a directory tree into paths, kinds, sizes, BLAKE3 hashes and exec bits.
//!
//! Used on release trees by `patch-create` (strict: anything that cannot be shipped safely is
//! an error) and on app directories by the updater (lenient: odd entries are reported so that
//! the update can replace or remove them).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use formats::manifest::{tree_digest, Node};
use formats::patterns::PathPatterns;
use formats::relpath::resolve_link_target;
use formats::{Blake3, RelPath};
use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::scan_cache::{CachedDir, ScanCache, Stamp};

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
pub enum CacheUse<'a> {
    /// Neither read nor write it (release trees).
    None,
    /// Reuse the hashes of files whose size, times and inode are unchanged; write it back.
    Reuse,
    /// Verification after an update: hash every file at a path in `written` (every path the
    /// update may have changed), reuse the other files' hashes as [`CacheUse::Reuse`] does,
    /// and write the cache.
    Verify {
        /// Paths whose files are hashed whatever their stamps.
        written: &'a BTreeSet<RelPath>,
    },
    /// Hash every file and write the cache.
    Refresh,
}

/// [`scan`] of an app dir with the scan cache used as `cache` says.
///
/// Directories are read, and their entries stat'ed (and hashed when not cached), in parallel;
/// the result does not depend on the order of that work.
pub fn scan_with(
    root: &Path,
    ignore: &PathPatterns,
    strictness: Strictness,
    cache: CacheUse<'_>,
) -> Result<Tree> {
    let mut tree = Tree::default();
    // The root the user named is followed once if it is a symbolic link to a directory
    // (crate::state::resolve_app_dir); nothing below it is ever followed.
    let resolved = crate::state::resolve_app_dir(root);
    let root = resolved.as_path();
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && strictness == Strictness::Install => {
            return Ok(tree)
        }
        Err(e) => return Err(Error::io(root, e)),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::io(
                root,
                std::io::Error::other(
                    "is a symbolic link that does not lead to a directory (name a directory)",
                ),
            ))
        }
        Ok(m) if !m.is_dir() => {
            return Err(Error::io(
                root,
                std::io::Error::other("is not a directory (name a directory)"),
            ))
        }
        Ok(_) => {}
    }
    if strictness == Strictness::Install {
        // The state directory is the updater's: a symbolic link planted in it is refused
        // before anything is read from it or written to it.
        let state = root.join(formats::layout::STATE_DIR);
        self_patcher::fsio::check_state_dir(&state).at(&state)?;
    }
    let old_cache = match cache {
        CacheUse::Reuse | CacheUse::Verify { .. } => ScanCache::load(root),
        CacheUse::None | CacheUse::Refresh => ScanCache::default(),
    };
    let rehash = match cache {
        CacheUse::Verify { written } => Some(written),
        _ => None,
    };
    let walk = Walk {
        root,
        ignore,
        strictness,
        cache: &old_cache,
        rehash,
    };
    let found = walk.dir(root, None)?;
    let (mut n_files, mut hits) = (0usize, 0usize);
    for f in found.iter().flatten() {
        if let Found::Entry {
            stamp: Some((_, hit)),
            ..
        } = f
        {
            n_files += 1;
            hits += usize::from(*hit);
        }
    }
    // Nothing to update when every file came from the cache and none disappeared.
    let unchanged = hits == n_files && old_cache.len() == n_files;
    if cache != CacheUse::None && !unchanged {
        let stamps = found.iter().flatten().filter_map(|f| match f {
            // A file that changed while it was hashed is not cached.
            Found::Entry {
                rel,
                node: Node::File { size, blake3, .. },
                stamp: Some((stamp, _)),
            } if *size == stamp.size => Some((rel.as_str(), *stamp, *blake3)),
            _ => None,
        });
        ScanCache::store(root, stamps);
    }
    drop(old_cache);
    let mut entries = Vec::with_capacity(found.iter().map(Vec::len).sum());
    for f in found.into_iter().flatten() {
        match f {
            Found::Entry { rel, node, .. } => entries.push((rel, node)),
            Found::Foreign(p) => tree.foreign.push(p),
        }
    }
    // Walk order (by name, component by component) is close to path order, which the
    // collection's stable sort handles in nearly linear time.
    tree.entries = BTreeMap::from_iter(entries);
    Ok(tree)
}

/// What the walk found at one path.
enum Found {
    /// A path of the tree; files carry their stamp and whether their hash came from the cache.
    Entry {
        rel: RelPath,
        node: Node,
        stamp: Option<(Stamp, bool)>,
    },
    /// An entry no release can contain ([`Strictness::Install`] only).
    Foreign(PathBuf),
}

/// What a walk found, in order, as consecutive chunks.
type Chunks = Vec<Vec<Found>>;

/// One scan's settings.
struct Walk<'a> {
    root: &'a Path,
    ignore: &'a PathPatterns,
    strictness: Strictness,
    cache: &'a ScanCache,
    /// Paths hashed even when the cache has them.
    rehash: Option<&'a BTreeSet<RelPath>>,
}

impl Walk<'_> {
    /// Everything below `dir` (whose path in the tree is `rel`, `None` for the root), in
    /// depth-first order with siblings sorted by name, as consecutive chunks (so that what a
    /// subdirectory found is not copied again at every level above it).
    fn dir(&self, dir: &Path, rel: Option<&RelPath>) -> Result<Chunks> {
        let mut children = Vec::new();
        for item in std::fs::read_dir(dir).at(dir)? {
            let de = item.at(dir)?;
            children.push((de.file_name(), de));
        }
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let cached = self.cache.dir(rel.map(RelPath::as_str));
        let parts: Vec<Result<(Option<Found>, Chunks)>> = children
            .par_iter()
            .map(|(name, de)| self.child(dir, rel, &cached, name, de))
            .collect();
        let mut chunks = Vec::new();
        let mut current = Vec::with_capacity(parts.len());
        for part in parts {
            let (one, below) = part?;
            current.extend(one);
            if !below.is_empty() {
                chunks.push(std::mem::take(&mut current));
                chunks.extend(below);
            }
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        Ok(chunks)
    }

    /// The entry `name` of `dir`, and for a directory everything below it.
    fn child(
        &self,
        dir: &Path,
        parent: Option<&RelPath>,
        cached: &CachedDir<'_>,
        name: &OsStr,
        de: &std::fs::DirEntry,
    ) -> Result<(Option<Found>, Chunks)> {
        let strict = self.strictness == Strictness::Release;
        if parent.is_none() && !strict && name.to_str() == Some(formats::layout::STATE_DIR) {
            return Ok((None, Vec::new()));
        }
        let ft = de.file_type().map_err(|e| Error::io(de.path(), e))?;
        let joined = name.to_str().map(|n| match parent {
            Some(p) => format!("{p}/{n}"),
            None => n.to_string(),
        });
        let rel = match joined.map(RelPath::new) {
            Some(Ok(r)) => r,
            _ => {
                let abs = de.path();
                let rel_fs = abs.strip_prefix(self.root).unwrap_or(&abs);
                if strict {
                    // Rebuilt from the file-system path for the same error as a full check.
                    return Err(match RelPath::from_path(rel_fs) {
                        Err(e) => Error::Format(e),
                        Ok(_) => Error::Format(formats::Error::UnsafePath {
                            path: rel_fs.to_string_lossy().into_owned(),
                            reason: "not a plain relative path",
                        }),
                    });
                }
                return Ok((Some(Found::Foreign(abs)), Vec::new()));
            }
        };
        if self.ignore.matches(&rel) {
            return Ok((None, Vec::new()));
        }
        if ft.is_dir() {
            let below = self.dir(&dir.join(name), Some(&rel))?;
            let entry = Found::Entry {
                rel,
                node: Node::Dir,
                stamp: None,
            };
            Ok((Some(entry), below))
        } else if ft.is_symlink() {
            let abs = de.path();
            let target = std::fs::read_link(&abs).at(&abs)?;
            let target_str = target.to_str().map(str::to_string);
            let inside = target_str
                .as_deref()
                .and_then(|t| resolve_link_target(&rel, t))
                .is_some();
            match (target_str, inside) {
                (Some(t), true) => Ok((
                    Some(Found::Entry {
                        rel,
                        node: Node::Symlink { target: t },
                        stamp: None,
                    }),
                    Vec::new(),
                )),
                (t, _) => {
                    if strict {
                        return Err(Error::Format(formats::Error::UnsafePath {
                            path: format!(
                                "{rel} -> {}",
                                t.unwrap_or_else(|| target.to_string_lossy().into_owned())
                            ),
                            reason: "symlink points outside the tree",
                        }));
                    }
                    Ok((Some(Found::Foreign(abs)), Vec::new()))
                }
            }
        } else if ft.is_file() {
            // Stat'ed relative to the open directory: no path lookup from the root.
            let meta = de.metadata().map_err(|e| Error::io(de.path(), e))?;
            let stamp = Stamp::of(&meta);
            let from_cache = match self.rehash {
                Some(written) if written.contains(&rel) => None,
                _ => cached.get(rel.as_str(), &stamp),
            };
            let (size, blake3, hit) = match from_cache {
                Some(h) => (stamp.size, h, true),
                None => {
                    let pin = formats::hash::pin_file(&de.path())?;
                    (pin.size, pin.blake3, false)
                }
            };
            let node = Node::File {
                size,
                blake3,
                exec: is_exec(&meta),
            };
            Ok((
                Some(Found::Entry {
                    rel,
                    node,
                    stamp: Some((stamp, hit)),
                }),
                Vec::new(),
            ))
        } else {
            if strict {
                return Err(Error::Format(formats::Error::UnsafePath {
                    path: rel.to_string(),
                    reason: "not a regular file, directory or symlink",
                }));
            }
            Ok((Some(Found::Foreign(de.path())), Vec::new()))
        }
    }
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
