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

/// An old file's contents on disk: the tree's own file, or a repair file decoded into a
/// temporary file (deleted on drop).
pub enum OldFile {
    /// A file of a release tree (not yet checked against its pin).
    Tree(PathBuf),
    /// A decoded repair file (checked against its pin while decoding).
    Decoded(tempfile::TempPath),
}

impl OldFile {
    /// Where the contents are.
    pub fn path(&self) -> &Path {
        match self {
            OldFile::Tree(p) => p,
            OldFile::Decoded(t) => t,
        }
    }
}

impl ContentSource {
    /// The contents of `path` (pinned `pin`, repair file `repair`) as a file on disk, without
    /// holding them in memory: a repair file is checked and decoded as a stream, into a
    /// `.tmp-release-decoded-*` file of the repository (the caller holds its lock). Such a file
    /// left by a `release` killed from outside (no destructor runs) is removed by the next
    /// release's clean-up of interrupted leftovers, or by `gc`.
    pub fn file(&self, path: &RelPath, pin: Pin, repair: Option<Pin>) -> Result<OldFile> {
        match self {
            ContentSource::Tree(root) => Ok(OldFile::Tree(path.to_path(root))),
            ContentSource::Blobs(repo) => {
                let repair = repair.ok_or_else(|| Error::Repo {
                    path: repo.clone(),
                    reason: format!("{path} has no repair file in its manifest"),
                })?;
                decode_blob_in(repo, &pin.blake3, repair, pin, repo).map(OldFile::Decoded)
            }
        }
    }
}

/// Checks the repair file of content `content` in `repo` against `repair` and decodes it into
/// a temporary file of the system's temporary directory, checking the decoded content against
/// `pin`; both as streams.
pub fn decode_blob(
    repo: &Path,
    content: &Blake3,
    repair: Pin,
    pin: Pin,
) -> Result<tempfile::TempPath> {
    decode_blob_in(repo, content, repair, pin, &std::env::temp_dir())
}

/// [`decode_blob`], into a temporary file of directory `dir` (named
/// [`crate::gc::DECODED_PREFIX`]`*`).
fn decode_blob_in(
    repo: &Path,
    content: &Blake3,
    repair: Pin,
    pin: Pin,
    dir: &Path,
) -> Result<tempfile::TempPath> {
    let rel = formats::layout::blob_path(content);
    let p = repo.join(&rel);
    let actual = formats::hash::pin_file(&p)?;
    if actual != repair {
        return Err(Error::Format(formats::Error::HashMismatch {
            what: rel,
            algorithm: "blake3",
            expected: repair.blake3.to_hex(),
            actual: actual.blake3.to_hex(),
        }));
    }
    let tmp = tempfile::Builder::new()
        .prefix(crate::gc::DECODED_PREFIX)
        .tempfile_in(dir)
        .at(dir)?
        .into_temp_path();
    patch_apply::archive::decode_repair(&p, &rel, pin, &tmp)?;
    Ok(tmp)
}

/// Reads and decodes the repair file of content `content` in `repo`, checking the repair
/// file's own pin and the decoded content's pin.
pub fn read_blob(repo: &Path, content: &Blake3, repair: Pin, pin: Pin) -> Result<Vec<u8>> {
    let tmp = decode_blob(repo, content, repair, pin)?;
    std::fs::read(&tmp).at(&tmp)
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
