//! Reading the binary artifacts (docs/format.md §6): patch archives, installer archives and
//! repair files. Readers refuse anything the format does not allow before writing a byte:
//! unknown or duplicate members, entry types other than file/dir/symlink, paths that are not
//! [`RelPath`]s or not in the release, sizes beyond their signed bounds.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use formats::container::{read_header, ArtifactKind};
use formats::limits::Limits;
use formats::manifest::{Node, ReleaseManifest};
use formats::patch_info::{PatchInfo, PATCH_DATA_MEMBER, PATCH_INFO_MEMBER};
use formats::{Pin, RelPath};

use crate::decode::{
    create_output, finish_staged_output, staged_output, CheckedWriter, LimitedReader,
};
use crate::error::{Error, IoContext, Result};
use crate::scan::set_exec;

fn open_stream(path: &Path, what: &str, kind: ArtifactKind, bound: u64) -> Result<impl Read> {
    let mut f = BufReader::with_capacity(1 << 16, File::open(path).at(path)?);
    read_header(what, &mut f, kind)?;
    let dec = zstd::stream::read::Decoder::with_buffer(f)
        .map_err(|e| Error::bad(what, format!("zstd: {e}")))?;
    Ok(LimitedReader::new(dec, bound, what))
}

/// A patch archive unpacked into a directory: its info and where each op's bytes are.
#[derive(Debug)]
pub struct UnpackedPatch {
    /// The patch info (validated).
    pub info: PatchInfo,
    /// For each op of `info.ops` (same index), the file holding its bytes, if it has any.
    pub members: Vec<Option<PathBuf>>,
}

/// Unpacks the patch archive at `path` into `dest` (created): the patch info, then the data
/// member split into one file per op, under generated names.
pub fn unpack_patch(
    path: &Path,
    what: &str,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackedPatch> {
    let stream = open_stream(path, what, ArtifactKind::Patch, limits.max_decompressed)?;
    let mut ar = tar::Archive::new(stream);
    crate::state::create_state_dir(dest)?;
    let bad = |r: String| Error::bad(what, r);
    // Raw entries: a long-name or pax extension entry (which tar would read whole into
    // memory) is just a member with the wrong name here.
    let mut entries = ar
        .entries()
        .map_err(|e| bad(format!("tar: {e}")))?
        .raw(true);
    let mut next_entry = |name: &str| {
        let entry = entries
            .next()
            .ok_or_else(|| bad(format!("member {name} is missing")))?
            .map_err(|e| bad(format!("tar: {e}")))?;
        if entry.path_bytes().as_ref() != name.as_bytes() {
            return Err(bad(format!(
                "member {:?} found where {name} belongs",
                String::from_utf8_lossy(&entry.path_bytes())
            )));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("member {name} is not a regular file")));
        }
        Ok(entry)
    };
    let mut first = next_entry(PATCH_INFO_MEMBER)?;
    if first.size() > limits.max_large_metadata {
        return Err(bad("patch info too large".into()));
    }
    let mut info_bytes = Vec::new();
    first
        .read_to_end(&mut info_bytes)
        .map_err(|e| bad(format!("tar: {e}")))?;
    drop(first);
    let info = PatchInfo::from_json(&format!("{what}: {PATCH_INFO_MEMBER}"), &info_bytes, limits)?;
    let mut data = next_entry(PATCH_DATA_MEMBER)?;
    if data.size() != info.data_size() {
        return Err(bad(format!(
            "member {PATCH_DATA_MEMBER} has {} bytes, patch info says {}",
            data.size(),
            info.data_size()
        )));
    }
    let mut members = Vec::with_capacity(info.ops.len());
    for (i, op) in info.ops.iter().enumerate() {
        let Some(size) = op.encoding.member_size() else {
            members.push(None);
            continue;
        };
        let out = dest.join(format!("m{i}"));
        let mut f = create_output(&out)?;
        let n = std::io::copy(&mut (&mut data).take(size), &mut f)
            .map_err(|e| bad(format!("bytes of {}: {e}", op.path)))?;
        if n != size {
            return Err(bad(format!("bytes of {} are truncated", op.path)));
        }
        members.push(Some(out));
    }
    drop(data);
    if let Some(extra) = entries.next() {
        let name = extra
            .map(|e| String::from_utf8_lossy(&e.path_bytes()).into_owned())
            .unwrap_or_default();
        return Err(bad(format!(
            "member {name:?} after {PATCH_DATA_MEMBER}: a patch has two members"
        )));
    }
    Ok(UnpackedPatch { info, members })
}

/// Extracts the installer archive at `path` into `dest` (which must be empty or absent),
/// checking every entry against `manifest`: each path must be in the release with the same
/// kind, each file's content must match its pin, and every path of the release must be present.
/// `progress` is told the entries extracted so far and the release's entry count after each.
pub fn extract_installer(
    path: &Path,
    what: &str,
    manifest: &ReleaseManifest,
    dest: &Path,
    limits: &Limits,
    progress: &dyn Fn(u64, u64),
) -> Result<()> {
    let bound = manifest.total_file_bytes().saturating_add(
        (manifest.entries.len() as u64 + 4).saturating_mul(3 * 512 + limits.max_archive_header),
    );
    let stream = open_stream(path, what, ArtifactKind::Installer, bound)?;
    let mut ar = tar::Archive::new(stream);
    let bad = |r: String| Error::bad(what, r);
    crate::state::create_state_dir(dest)?;
    let by_path = manifest.by_path();
    let mut seen: BTreeSet<RelPath> = BTreeSet::new();
    let mut links = Vec::new();
    // Raw entries: GNU long names and long link targets are read here, each bounded by
    // `limits.max_archive_header` (tar itself would read them whole into memory).
    let (mut long_name, mut long_link) = (None, None);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("tar: {e}")))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("tar: {e}")))?;
        let et = entry.header().entry_type();
        if et.is_gnu_longname() || et.is_gnu_longlink() {
            let slot = if et.is_gnu_longname() {
                &mut long_name
            } else {
                &mut long_link
            };
            if slot.is_some() {
                return Err(bad("two long names for one entry".into()));
            }
            *slot = Some(read_long_name(&mut entry, what, limits)?);
            continue;
        }
        if et.is_pax_local_extensions() || et.is_pax_global_extensions() {
            return Err(bad(
                "pax extension headers are not part of the installer format".into(),
            ));
        }
        let name = match long_name.take() {
            Some(n) => n,
            None => entry.path_bytes().into_owned(),
        };
        let link_name = match long_link.take() {
            Some(n) => Some(n),
            None => entry.link_name_bytes().map(|b| b.into_owned()),
        };
        let raw = String::from_utf8(name).map_err(|_| bad("entry name is not UTF-8".into()))?;
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
        progress(seen.len() as u64, manifest.entries.len() as u64);
        let et = entry.header().entry_type();
        let target = rel.to_path(dest);
        match (&me.node, et) {
            (Node::Dir, tar::EntryType::Directory) => {
                crate::state::create_state_dir(&target)?;
            }
            (Node::File { size, blake3, exec }, tar::EntryType::Regular) => {
                if entry.size() != *size {
                    return Err(bad(format!(
                        "entry {rel} has {} bytes, release says {size}",
                        entry.size()
                    )));
                }
                if let Some(parent) = target.parent() {
                    crate::state::create_state_dir(parent)?;
                }
                let f = self_patcher::fsio::create_new(&target).at(&target)?;
                let pin = Pin {
                    size: *size,
                    blake3: *blake3,
                };
                let mut w = staged_output(f, &target, &format!("{what}: {rel}"), pin);
                std::io::copy(&mut (&mut entry).take(*size), &mut w)
                    .map_err(|e| bad(format!("{rel}: {e}")))?;
                finish_staged_output(w, &target)?;
                set_exec(&target, *exec)?;
            }
            (Node::Symlink { target: t }, tar::EntryType::Symlink) => {
                let lt = link_name
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
    if long_name.is_some() || long_link.is_some() {
        return Err(bad("long name entry at the end of the installer".into()));
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

/// The content of a GNU long-name (or long link) entry, without its trailing NULs: at most
/// `limits.max_archive_header` bytes, checked before anything is read.
fn read_long_name<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    what: &str,
    limits: &Limits,
) -> Result<Vec<u8>> {
    let size = entry.size();
    if size > limits.max_archive_header {
        return Err(Error::bad(
            what,
            format!(
                "a long name of {size} bytes exceeds the limit of {} bytes",
                limits.max_archive_header
            ),
        ));
    }
    let mut name = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut name)
        .map_err(|e| Error::bad(what, format!("tar: {e}")))?;
    while name.last() == Some(&0) {
        name.pop();
    }
    Ok(name)
}

/// Decompresses the repair file at `path` into `out`, checking the content against `content`.
pub fn decode_repair(path: &Path, what: &str, content: Pin, out: &Path) -> Result<()> {
    let mut stream = open_stream(path, what, ArtifactKind::Repair, content.size)?;
    let f = create_output(out)?;
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
        std::os::unix::fs::symlink(target, link).at(link)
    }
    #[cfg(not(unix))]
    {
        // Windows: creating a symlink needs a privilege or developer mode, and a link to a
        // directory is a different kind of object; a release holding symlinks is refused
        // while staging, before anything in the app dir changes (docs/platforms.md).
        let _ = target;
        Err(Error::io(
            link,
            std::io::Error::other(
                "the release holds a symbolic link, which this updater installs only on Unix \
                 (Linux, macOS); see docs/platforms.md",
            ),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    /// A patch archive with the given members (name, bytes), in order.
    fn archive(dir: &Path, members: &[(&str, &[u8])]) -> PathBuf {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, *bytes).unwrap();
        }
        let mut out = formats::container::header(ArtifactKind::Patch).to_vec();
        out.extend(zstd::encode_all(tar.into_inner().unwrap().as_slice(), 1).unwrap());
        let p = dir.join("patch");
        fs::write(&p, out).unwrap();
        p
    }

    #[test]
    fn data_member_is_split_per_op_and_every_other_layout_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let limits = Limits::default();
        let json = PatchInfo::fixture_with_full_members(&[3, 2])
            .to_json()
            .unwrap();
        let unpack = |members: &[(&str, &[u8])]| {
            let p = archive(d.path(), members);
            let _ = fs::remove_dir_all(d.path().join("out"));
            unpack_patch(&p, "p.patch", &d.path().join("out"), &limits)
        };
        let good = unpack(&[(PATCH_INFO_MEMBER, &json), (PATCH_DATA_MEMBER, b"abcde")]).unwrap();
        let bytes: Vec<Vec<u8>> = good
            .members
            .iter()
            .map(|m| fs::read(m.as_ref().unwrap()).unwrap())
            .collect();
        assert_eq!(bytes, [b"abc".to_vec(), b"de".to_vec()]);
        for (members, why) in [
            (
                vec![
                    (PATCH_INFO_MEMBER, &json[..]),
                    (PATCH_DATA_MEMBER, &b"abcd"[..]),
                ],
                "4 bytes",
            ),
            (vec![(PATCH_INFO_MEMBER, &json[..])], "data is missing"),
            (
                vec![
                    (PATCH_DATA_MEMBER, &b"abcde"[..]),
                    (PATCH_INFO_MEMBER, &json[..]),
                ],
                "where patch-info.json belongs",
            ),
            (
                vec![
                    (PATCH_INFO_MEMBER, &json[..]),
                    (PATCH_DATA_MEMBER, &b"abcde"[..]),
                    ("extra", &b""[..]),
                ],
                "\"extra\" after data",
            ),
        ] {
            let e = unpack(&members).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("p.patch"), "{why}: {e}");
        }
    }
}
