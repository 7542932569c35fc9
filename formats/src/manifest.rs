//! [`ReleaseManifest`]: every file, directory and symlink of one release (docs/format.md §5).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{Blake3, Pin};
use crate::layout::STATE_DIR;
use crate::limits::Limits;
use crate::relpath::{resolve_link_target, RelPath};
use crate::version::Version;

/// The `format` value of manifests this build writes and reads.
pub const MANIFEST_FORMAT: &str = "patchkit-manifest-1";

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Node {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// BLAKE3 of the content.
        blake3: Blake3,
        /// Whether the executable bit is set.
        #[serde(default, skip_serializing_if = "is_false")]
        exec: bool,
    },
    /// A directory (listed so that empty directories survive).
    Dir,
    /// A symbolic link whose target stays inside the tree.
    Symlink {
        /// The link's target, relative to the link's directory.
        target: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Node {
    /// The content pin of a file.
    pub fn file_pin(&self) -> Option<Pin> {
        match self {
            Node::File { size, blake3, .. } => Some(Pin {
                size: *size,
                blake3: *blake3,
            }),
            _ => None,
        }
    }
}

/// One path of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where it lives in the tree.
    pub path: RelPath,
    /// What it is.
    #[serde(flatten)]
    pub node: Node,
    /// For files: changing it needs the app restarted (executables, shared libraries, or paths
    /// the release engineer declared as code).
    #[serde(default, skip_serializing_if = "is_false")]
    pub code: bool,
    /// For files: the repair file holding this file alone, compressed (size and BLAKE3 of the
    /// repair file's bytes). Its location follows from the content hash (`layout::blob_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<Pin>,
}

/// Every path of one release, sorted by path, plus the settings a client needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The application's name.
    pub app: String,
    /// The release version.
    pub version: Version,
    /// Glob patterns of paths that belong to the user, not the release: never shipped, never
    /// deleted by an update.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// The release engineer declared that installing it needs a restart whatever changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart_required: bool,
    /// Every path, sorted by path (byte order of the `/`-separated string).
    pub entries: Vec<Entry>,
}

impl ReleaseManifest {
    /// Parses and validates a manifest; `what` names it in errors.
    pub fn from_json(what: &str, bytes: &[u8], limits: &Limits) -> Result<Self> {
        if bytes.len() as u64 > limits.max_large_metadata {
            return Err(Error::TooLarge {
                what: what.into(),
                limit: limits.max_large_metadata,
                actual: bytes.len() as u64,
            });
        }
        let m: ReleaseManifest = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: what.into(),
            source: e,
        })?;
        m.validate(what, limits)?;
        Ok(m)
    }

    /// Canonical JSON bytes of the manifest.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        crate::keys::canonical_json(self)
    }

    /// Checks the rules of docs/format.md §5: format, sorted unique paths, every ancestor listed
    /// as a directory, nothing below a symlink or inside the updater's state directory, symlink
    /// targets inside the tree, sizes within limits.
    pub fn validate(&self, what: &str, limits: &Limits) -> Result<()> {
        let bad = |r: String| Err(Error::invalid(what, r));
        if self.format != MANIFEST_FORMAT {
            return bad(format!("unknown format {:?}", self.format));
        }
        if self.entries.len() > limits.max_entries {
            return Err(Error::TooLarge {
                what: format!("{what} entries"),
                limit: limits.max_entries as u64,
                actual: self.entries.len() as u64,
            });
        }
        let mut kinds: BTreeMap<&RelPath, &Node> = BTreeMap::new();
        for w in self.entries.windows(2) {
            if w[0].path.as_str() >= w[1].path.as_str() {
                return bad(format!("entries not sorted or duplicated at {}", w[1].path));
            }
        }
        for e in &self.entries {
            kinds.insert(&e.path, &e.node);
            if e.path.first_component() == STATE_DIR {
                return bad(format!("{} lies in the updater's state directory", e.path));
            }
            if let Node::File { size, .. } = e.node {
                if size > limits.max_file_size {
                    return Err(Error::TooLarge {
                        what: format!("{what}: {}", e.path),
                        limit: limits.max_file_size,
                        actual: size,
                    });
                }
            }
        }
        for e in &self.entries {
            for a in e.path.ancestors() {
                match kinds.get(&a) {
                    Some(Node::Dir) => {}
                    Some(_) => return bad(format!("{} lies below non-directory {a}", e.path)),
                    None => return bad(format!("{} has no directory entry for {a}", e.path)),
                }
            }
            if let Node::Symlink { target } = &e.node {
                if resolve_link_target(&e.path, target).is_none() {
                    return bad(format!(
                        "symlink {} -> {target} points outside the tree",
                        e.path
                    ));
                }
            }
        }
        Ok(())
    }

    /// The tree digest of this release (see [`tree_digest`]).
    pub fn tree_digest(&self) -> Blake3 {
        tree_digest(self.entries.iter().map(|e| (&e.path, &e.node)))
    }

    /// Entries by path.
    pub fn by_path(&self) -> BTreeMap<&RelPath, &Entry> {
        self.entries.iter().map(|e| (&e.path, e)).collect()
    }

    /// Paths of regular files, as a set.
    pub fn file_paths(&self) -> BTreeSet<&RelPath> {
        self.entries
            .iter()
            .filter(|e| matches!(e.node, Node::File { .. }))
            .map(|e| &e.path)
            .collect()
    }

    /// Total bytes of all regular files.
    pub fn total_file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.node.file_pin())
            .map(|p| p.size)
            .sum()
    }
}

/// A digest of a whole tree: BLAKE3 over one line per entry in path order
/// (`f EXEC SIZE BLAKE3 PATH`, `d PATH`, `l PATH\0TARGET`, each followed by `\n`).
/// Two trees with the same digest have the same paths, contents, exec bits and links; a client
/// uses it to recognise which release an install is from its files alone.
pub fn tree_digest<'a>(entries: impl IntoIterator<Item = (&'a RelPath, &'a Node)>) -> Blake3 {
    let mut h = blake3::Hasher::new();
    for (path, node) in entries {
        match node {
            Node::File { size, blake3, exec } => {
                h.update(format!("f {} {size} {blake3} {path}\n", u8::from(*exec)).as_bytes());
            }
            Node::Dir => {
                h.update(format!("d {path}\n").as_bytes());
            }
            Node::Symlink { target } => {
                h.update(format!("l {path}\0{target}\n").as_bytes());
            }
        }
    }
    Blake3(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    pub(crate) fn sample() -> ReleaseManifest {
        ReleaseManifest {
            format: MANIFEST_FORMAT.into(),
            app: "demo".into(),
            version: Version::parse("1.0.0").unwrap(),
            ignore: vec!["*.log".into()],
            restart_required: false,
            entries: vec![
                Entry {
                    path: p("bin"),
                    node: Node::Dir,
                    code: false,
                    repair: None,
                },
                Entry {
                    path: p("bin/app"),
                    node: Node::File {
                        size: 3,
                        blake3: Blake3::of(b"abc"),
                        exec: true,
                    },
                    code: true,
                    repair: Some(Pin::of(b"zzz")),
                },
                Entry {
                    path: p("link"),
                    node: Node::Symlink {
                        target: "bin/app".into(),
                    },
                    code: false,
                    repair: None,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_validate() {
        let m = sample();
        let bytes = m.to_json().unwrap();
        let back = ReleaseManifest::from_json("m", &bytes, &Limits::default()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.tree_digest(), m.tree_digest());
    }

    #[test]
    fn refuses_bad_trees() {
        let l = Limits::default();
        let mut m = sample();
        m.entries.remove(0);
        assert!(m.validate("m", &l).is_err(), "missing parent dir");
        let mut m = sample();
        m.entries[2].node = Node::Symlink {
            target: "../../etc/passwd".into(),
        };
        assert!(m.validate("m", &l).is_err(), "escaping symlink");
        let mut m = sample();
        m.entries.swap(1, 2);
        assert!(m.validate("m", &l).is_err(), "unsorted");
        let mut m = sample();
        m.entries.push(Entry {
            path: p("link/x"),
            node: Node::Dir,
            code: false,
            repair: None,
        });
        assert!(m.validate("m", &l).is_err(), "below a symlink");
    }
}
