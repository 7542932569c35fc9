//! Reading the binary artifacts (docs/format.md §6): patch archives, installer archives and
//! repair files. Readers refuse anything the format does not allow before writing a byte:
//! unknown or duplicate members, entry types other than file/dir/symlink, paths that are not
//! [`RelPath`]s or not in the release, sizes beyond their signed bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use formats::container::{read_header, ArtifactKind};
use formats::limits::Limits;
use formats::manifest::{Node, ReleaseManifest};
use formats::patch_info::{PatchInfo, PATCH_INFO_MEMBER};
use formats::{Pin, RelPath};

use crate::decode::{CheckedWriter, LimitedReader};
use crate::error::{Error, IoContext, Result};
use crate::scan::set_exec;

fn open_stream(path: &Path, what: &str, kind: ArtifactKind, bound: u64) -> Result<impl Read> {
    let mut f = BufReader::with_capacity(1 << 16, File::open(path).at(path)?);
    read_header(what, &mut f, kind)?;
    let dec = zstd::stream::read::Decoder::with_buffer(f)
        .map_err(|e| Error::bad(what, format!("zstd: {e}")))?;
    Ok(LimitedReader::new(dec, bound, what))
}

/// A patch archive unpacked into a directory: its info and where each member's bytes are.
#[derive(Debug)]
pub struct UnpackedPatch {
    /// The patch info (validated).
    pub info: PatchInfo,
    /// Member name → file holding the member's bytes.
    pub members: BTreeMap<String, PathBuf>,
}

/// Unpacks the patch archive at `path` into `dest` (created). Members are stored under
/// generated names, never under names from the archive.
pub fn unpack_patch(
    path: &Path,
    what: &str,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackedPatch> {
    let stream = open_stream(path, what, ArtifactKind::Patch, limits.max_decompressed)?;
    let mut ar = tar::Archive::new(stream);
    fs::create_dir_all(dest).at(dest)?;
    let bad = |r: String| Error::bad(what, r);
    let mut entries = ar.entries().map_err(|e| bad(format!("tar: {e}")))?;
    let mut first = entries
        .next()
        .ok_or_else(|| bad("empty archive".into()))?
        .map_err(|e| bad(format!("tar: {e}")))?;
    if first.path_bytes().as_ref() != PATCH_INFO_MEMBER.as_bytes() {
        return Err(bad(format!("first member is not {PATCH_INFO_MEMBER}")));
    }
    if first.size() > limits.max_large_metadata {
        return Err(bad("patch info too large".into()));
    }
    let mut info_bytes = Vec::new();
    first
        .read_to_end(&mut info_bytes)
        .map_err(|e| bad(format!("tar: {e}")))?;
    drop(first);
    let info = PatchInfo::from_json(&format!("{what}: {PATCH_INFO_MEMBER}"), &info_bytes, limits)?;
    let expected: BTreeMap<String, u64> = info
        .ops
        .iter()
        .filter_map(|op| op.encoding.member())
        .map(|(m, s)| (m.to_string(), s))
        .collect();
    let mut members = BTreeMap::new();
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| bad(format!("tar: {e}")))?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| bad("member name is not UTF-8".into()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("member {name:?} is not a regular file")));
        }
        let Some(&size) = expected.get(&name) else {
            return Err(bad(format!(
                "member {name:?} is not listed in the patch info"
            )));
        };
        if members.contains_key(&name) {
            return Err(bad(format!("member {name:?} appears twice")));
        }
        if entry.size() != size {
            return Err(bad(format!(
                "member {name:?} has {} bytes, patch info says {size}",
                entry.size()
            )));
        }
        let out = dest.join(format!("m{i}"));
        let mut f = File::create(&out).at(&out)?;
        let n = std::io::copy(&mut (&mut entry).take(size), &mut f)
            .map_err(|e| bad(format!("member {name:?}: {e}")))?;
        if n != size {
            return Err(bad(format!("member {name:?} is truncated")));
        }
        members.insert(name, out);
    }
    if members.len() != expected.len() {
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| !members.contains_key(*k))
            .take(3)
            .collect();
        return Err(bad(format!(
            "members missing from the archive: {missing:?}"
        )));
    }
    Ok(UnpackedPatch { info, members })
}

/// Extracts the installer archive at `path` into `dest` (which must be empty or absent),
/// checking every entry against `manifest`: each path must be in the release with the same
/// kind, each file's content must match its pin, and every path of the release must be present.
pub fn extract_installer(
    path: &Path,
    what: &str,
    manifest: &ReleaseManifest,
    dest: &Path,
    limits: &Limits,
) -> Result<()> {
    let bound = manifest.total_file_bytes().saturating_add(
        (manifest.entries.len() as u64 + 4).saturating_mul(3 * 512 + limits.max_archive_header),
    );
    let stream = open_stream(path, what, ArtifactKind::Installer, bound)?;
    let mut ar = tar::Archive::new(stream);
    let bad = |r: String| Error::bad(what, r);
    fs::create_dir_all(dest).at(dest)?;
    let by_path = manifest.by_path();
    let mut seen: BTreeSet<RelPath> = BTreeSet::new();
    let mut links = Vec::new();
    for entry in ar.entries().map_err(|e| bad(format!("tar: {e}")))? {
        let mut entry = entry.map_err(|e| bad(format!("tar: {e}")))?;
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| bad("entry name is not UTF-8".into()))?;
        let rel = RelPath::new(raw.trim_end_matches('/')).map_err(|e| bad(e.to_string()))?;
        let Some(me) = by_path.get(&rel) else {
            return Err(bad(format!(
                "entry {rel} is not part of release {}",
                manifest.version
            )));
        };
        if !seen.insert(rel.clone()) {
            return Err(bad(format!("entry {rel} appears twice")));
        }
        let et = entry.header().entry_type();
        let target = rel.to_path(dest);
        match (&me.node, et) {
            (Node::Dir, tar::EntryType::Directory) => {
                fs::create_dir_all(&target).at(&target)?;
            }
            (Node::File { size, blake3, exec }, tar::EntryType::Regular) => {
                if entry.size() != *size {
                    return Err(bad(format!(
                        "entry {rel} has {} bytes, release says {size}",
                        entry.size()
                    )));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).at(parent)?;
                }
                let f = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .at(&target)?;
                let pin = Pin {
                    size: *size,
                    blake3: *blake3,
                };
                let mut w = CheckedWriter::new(BufWriter::new(f), &format!("{what}: {rel}"), pin);
                std::io::copy(&mut (&mut entry).take(*size), &mut w)
                    .map_err(|e| bad(format!("{rel}: {e}")))?;
                let mut inner = w.finish()?;
                inner.flush().at(&target)?;
                set_exec(&target, *exec)?;
            }
            (Node::Symlink { target: t }, tar::EntryType::Symlink) => {
                let lt = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if &lt != t {
                    return Err(bad(format!(
                        "symlink {rel} points to {lt:?}, release says {t:?}"
                    )));
                }
                links.push((target, t.clone()));
            }
            (_, et) => {
                return Err(bad(format!(
                    "entry {rel} has type {et:?}, which does not match the release"
                )));
            }
        }
    }
    if seen.len() != manifest.entries.len() {
        let missing: Vec<_> = manifest
            .entries
            .iter()
            .filter(|e| !seen.contains(&e.path))
            .take(3)
            .map(|e| e.path.to_string())
            .collect();
        return Err(bad(format!(
            "entries missing from the installer: {missing:?}"
        )));
    }
    for (link, t) in links {
        make_symlink(&t, &link)?;
    }
    Ok(())
}

/// Decompresses the repair file at `path` into `out`, checking the content against `content`.
pub fn decode_repair(path: &Path, what: &str, content: Pin, out: &Path) -> Result<()> {
    let mut stream = open_stream(path, what, ArtifactKind::Repair, content.size)?;
    let f = File::create(out).at(out)?;
    let mut w = CheckedWriter::new(BufWriter::new(f), what, content);
    std::io::copy(&mut stream, &mut w).map_err(|e| Error::bad(what, e.to_string()))?;
    let mut inner = w.finish()?;
    inner.flush().at(out)?;
    Ok(())
}

/// Creates a symlink `link` → `target` (unix), replacing nothing.
pub fn make_symlink(target: &str, link: &Path) -> Result<()> {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link).at(link)?;
    }
    #[cfg(not(unix))]
    {
        let _ = target;
        return Err(Error::io(
            link,
            std::io::Error::other("symlinks need a unix system"),
        ));
    }
    Ok(())
}
