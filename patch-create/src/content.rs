//! Where the bytes of an old or new release come from: a tree on disk, or the repository's own
//! repair files (so release engineers need not keep old trees around).

use std::path::{Path, PathBuf};

use formats::manifest::ReleaseManifest;
use formats::{Blake3, Pin, RelPath};

use crate::error::{Error, IoContext, Result};

/// A source of file contents for one release.
#[derive(Clone, Debug)]
pub enum ContentSource {
    /// A release tree on disk.
    Tree(PathBuf),
    /// The repository's repair files (`blobs/`), rooted at the repository directory.
    Blobs(PathBuf),
}

impl ContentSource {
    /// Reads the content of `path`, which the manifest pins as `pin` (with repair file
    /// `repair`), and checks it.
    pub fn read(&self, path: &RelPath, pin: Pin, repair: Option<Pin>) -> Result<Vec<u8>> {
        match self {
            ContentSource::Tree(root) => {
                let p = path.to_path(root);
                let bytes = std::fs::read(&p).at(&p)?;
                pin.check(&p.display().to_string(), &bytes)?;
                Ok(bytes)
            }
            ContentSource::Blobs(repo) => {
                let repair = repair.ok_or_else(|| Error::Repo {
                    path: repo.clone(),
                    reason: format!("{path} has no repair file in its manifest"),
                })?;
                read_blob(repo, &pin.blake3, repair, pin)
            }
        }
    }
}

/// Reads and decodes the repair file of content `content` in `repo`, checking the repair
/// file's own pin and the decoded content's pin.
pub fn read_blob(repo: &Path, content: &Blake3, repair: Pin, pin: Pin) -> Result<Vec<u8>> {
    let rel = formats::layout::blob_path(content);
    let p = repo.join(&rel);
    let tmp = tempfile::NamedTempFile::new().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let raw = std::fs::read(&p).at(&p)?;
    repair.check(&rel, &raw)?;
    patch_apply::archive::decode_repair(&p, &rel, pin, tmp.path())?;
    std::fs::read(tmp.path()).at(tmp.path())
}

/// The content source of `manifest` among `prev_roots` (a tree whose scan matches the
/// release's tree digest), or the repository's blobs.
pub fn source_for(
    manifest: &ReleaseManifest,
    prev_roots: &[(PathBuf, patch_apply::scan::Tree)],
    repo: &Path,
) -> ContentSource {
    let ignore = formats::patterns::PathPatterns::new(&manifest.ignore)
        .unwrap_or_else(|_| formats::patterns::PathPatterns::empty());
    let want = manifest.tree_digest();
    for (root, tree) in prev_roots {
        if tree.digest(&ignore) == want {
            return ContentSource::Tree(root.clone());
        }
    }
    ContentSource::Blobs(repo.to_path_buf())
}
