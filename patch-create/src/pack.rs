//! Writing binary artifacts (docs/format.md §6): repair files, patch archives, installers.
//! All tar headers are deterministic (mtime 0, uid/gid 0, fixed modes).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use formats::container::{write_header, ArtifactKind};
use formats::manifest::{Node, ReleaseManifest};
use formats::patch_info::{PatchInfo, PATCH_DATA_MEMBER, PATCH_INFO_MEMBER};

use crate::encode::window_log_for;
use crate::error::{Error, IoContext, Result};

/// The bytes of a repair file holding `content`.
pub fn repair_bytes(content: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut out = formats::container::header(ArtifactKind::Repair).to_vec();
    out.extend_from_slice(&crate::encode::compress(content, level)?);
    Ok(out)
}

/// A deterministic tar header (the path is set by `tar::Builder`, which writes GNU long-name
/// entries for paths longer than the header field).
fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes a patch archive: header, then zstd of a tar of two members, the patch info and the
/// data member (`members`, the bytes of the ops that have some, concatenated in op order).
/// The outer level is high: the patch info is the only compressible part and it is small.
pub fn write_patch(out: &Path, info: &PatchInfo, members: &[Vec<u8>]) -> Result<()> {
    let data_size: u64 = members.iter().map(|m| m.len() as u64).sum();
    if data_size != info.data_size() {
        return Err(Error::Repo {
            path: out.to_path_buf(),
            reason: format!(
                "patch data is {data_size} bytes but the patch info lists {}",
                info.data_size()
            ),
        });
    }
    // The tar is built in memory first (the members already are) so that zstd knows the size
    // and sizes its tables for it: a small patch then costs kilobytes, not zstd -19's 100 MB.
    let mut tar = tar::Builder::new(Vec::new());
    let info_bytes = info.to_json()?;
    let mut h = header(info_bytes.len() as u64, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, PATCH_INFO_MEMBER, info_bytes.as_slice())
        .at(out)?;
    let mut h = header(data_size, 0o644, tar::EntryType::Regular);
    let data = Concat {
        parts: members,
        pos: 0,
    };
    tar.append_data(&mut h, PATCH_DATA_MEMBER, data).at(out)?;
    let tar = tar.into_inner().at(out)?;
    let mut f = BufWriter::new(File::create(out).at(out)?);
    write_header(&mut f, ArtifactKind::Patch).at(out)?;
    let mut enc = zstd::stream::write::Encoder::new(f, 19).at(out)?;
    enc.set_pledged_src_size(Some(tar.len() as u64)).at(out)?;
    enc.include_contentsize(true).at(out)?;
    enc.write_all(&tar).at(out)?;
    finish(enc, out)
}

/// Reads byte slices one after the other.
struct Concat<'a> {
    /// What is left to read; the first part from `pos` on.
    parts: &'a [Vec<u8>],
    pos: usize,
}

impl Read for Concat<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some((first, rest)) = self.parts.split_first() {
            let left = &first[self.pos.min(first.len())..];
            if left.is_empty() {
                self.parts = rest;
                self.pos = 0;
                continue;
            }
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            self.pos += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// Writes the installer: header, then zstd (`level`, all cores) of a tar of the whole release
/// read from `tree`, in manifest order. Each file is checked against the manifest as it is read.
pub fn write_installer(
    out: &Path,
    manifest: &ReleaseManifest,
    tree: &Path,
    level: i32,
) -> Result<()> {
    let mut f = BufWriter::new(File::create(out).at(out)?);
    write_header(&mut f, ArtifactKind::Installer).at(out)?;
    let mut enc = zstd::stream::write::Encoder::new(f, level).at(out)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    if threads > 1 {
        // Not every libzstd build has threads; compress single-threaded then.
        let _ = enc.multithread(threads);
    }
    let total = manifest.total_file_bytes();
    let window_log = window_log_for(total).min(27);
    if total > 8 << 20 {
        enc.long_distance_matching(true).at(out)?;
        enc.window_log(window_log).at(out)?;
    }
    crate::encode::cap_tables(&mut enc, level, window_log)?;
    {
        let mut tar = tar::Builder::new(&mut enc);
        tar.follow_symlinks(false);
        for e in &manifest.entries {
            let name = e.path.as_str();
            match &e.node {
                Node::Dir => {
                    let mut h = header(0, 0o755, tar::EntryType::Directory);
                    tar.append_data(&mut h, format!("{name}/"), std::io::empty())
                        .at(out)?;
                }
                Node::File { size, exec, .. } => {
                    let src = e.path.to_path(tree);
                    let mut h = header(
                        *size,
                        if *exec { 0o755 } else { 0o644 },
                        tar::EntryType::Regular,
                    );
                    let file = File::open(&src).at(&src)?;
                    let mut r = file.take(*size);
                    tar.append_data(&mut h, name, &mut r).at(&src)?;
                }
                Node::Symlink { target } => {
                    let mut h = header(0, 0o777, tar::EntryType::Symlink);
                    tar.append_link(&mut h, name, target).at(out)?;
                }
            }
        }
        tar.finish().at(out)?;
    }
    finish(enc, out)
}

/// Ends the zstd stream of an artifact written to `out` and makes it durable.
fn finish(enc: zstd::stream::write::Encoder<'_, BufWriter<File>>, out: &Path) -> Result<()> {
    let mut f = enc.finish().at(out)?;
    f.flush().at(out)?;
    f.into_inner()
        .map_err(|e| Error::io(out, e.into_error()))?
        .sync_all()
        .at(out)
}
