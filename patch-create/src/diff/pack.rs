//! Writing binary artifacts (docs/format.md §6): repair files, patch archives, installers.
//! All tar headers are deterministic (mtime 0, uid/gid 0, fixed modes).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use formats::container::{write_header, ArtifactKind};
use formats::manifest::{Node, ReleaseManifest};
use formats::patch_info::{PatchInfo, PATCH_DATA_MEMBER, PATCH_INFO_MEMBER};

use crate::diff::compress::{cap_tables, compress, window_log_for};
use crate::error::{Error, IoContext, Result};

/// The bytes of a repair file holding `content`.
pub fn repair_bytes(content: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut out = formats::container::header(ArtifactKind::Repair).to_vec();
    out.extend_from_slice(&compress(content, level)?);
    Ok(out)
}

/// A deterministic tar header, like every tar header of the format (docs/format.md §6: GNU,
/// mtime 0, uid/gid 0). The path is set by the caller (`tar::Builder` writes GNU long-name
/// entries for paths longer than the header field).
pub(crate) fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The bytes of one op in a patch's data member: in memory, or spooled to a temporary file
/// (members of large files, so that a release never holds them whole; deleted on drop).
#[derive(Debug)]
pub enum Member {
    /// The bytes.
    Bytes(Vec<u8>),
    /// A temporary file holding `len` bytes.
    Spooled {
        /// The file.
        file: tempfile::TempPath,
        /// Its length.
        len: u64,
    },
}

impl Member {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        match self {
            Member::Bytes(b) => b.len() as u64,
            Member::Spooled { len, .. } => *len,
        }
    }

    /// Whether the member has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes (read back from a spooled file).
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.copy_to(&mut v, Path::new("<member>"))?;
        Ok(v)
    }

    /// Copies the bytes to `w`, checking that a spooled file still has its length.
    fn copy_to(&self, w: &mut dyn Write, out: &Path) -> Result<()> {
        match self {
            Member::Bytes(b) => w.write_all(b).at(out),
            Member::Spooled { file, len } => {
                let f = File::open(file).at(file)?;
                let n = std::io::copy(&mut f.take(*len), w).at(file)?;
                if n != *len {
                    return Err(Error::io(
                        file,
                        std::io::Error::other(format!("spooled member has {n} bytes, not {len}")),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Largest patch tar compressed at level 19; larger ones (large data members, which are
/// compressed already) at level 3, which costs nothing in size and keeps a GB-sized member
/// from taking an hour.
const PATCH_OUTER_19_MAX: u64 = 64 << 20;

/// Size of a tar entry holding `len` bytes: header, data, padding to 512 bytes.
fn tar_entry_len(len: u64) -> u64 {
    512 + len.div_ceil(512) * 512
}

/// Writes a patch archive: header, then zstd of a tar of two members, the patch info and the
/// data member (`members`, the bytes of the ops that have some, concatenated in op order).
/// The tar is streamed into zstd with its size pledged (it is known in advance), so that zstd
/// sizes its tables for it: a small patch costs kilobytes of memory, a large one its spooled
/// members' pieces. The outer level is 19 up to [`PATCH_OUTER_19_MAX`]: the patch info is the
/// only compressible part.
pub fn write_patch(out: &Path, info: &PatchInfo, members: &[Member]) -> Result<()> {
    let data_size: u64 = members.iter().map(Member::len).sum();
    if data_size != info.data_size() {
        return Err(Error::Repo {
            path: out.to_path_buf(),
            reason: format!(
                "patch data is {data_size} bytes but the patch info lists {}",
                info.data_size()
            ),
        });
    }
    let info_bytes = info.to_json()?;
    // Two entries, then the two zero blocks that end a tar.
    let tar_len = tar_entry_len(info_bytes.len() as u64) + tar_entry_len(data_size) + 1024;
    let level = if tar_len <= PATCH_OUTER_19_MAX { 19 } else { 3 };
    let mut f = BufWriter::new(File::create(out).at(out)?);
    write_header(&mut f, ArtifactKind::Patch).at(out)?;
    let mut enc = zstd::stream::write::Encoder::new(f, level).at(out)?;
    enc.set_pledged_src_size(Some(tar_len)).at(out)?;
    enc.include_contentsize(true).at(out)?;
    {
        let mut tar = tar::Builder::new(&mut enc);
        let mut h = header(info_bytes.len() as u64, 0o644, tar::EntryType::Regular);
        tar.append_data(&mut h, PATCH_INFO_MEMBER, info_bytes.as_slice())
            .at(out)?;
        // The data entry by hand: its bytes come from several members, some on disk.
        let mut h = header(data_size, 0o644, tar::EntryType::Regular);
        h.set_path(PATCH_DATA_MEMBER).at(out)?;
        h.set_cksum();
        let w = tar.get_mut();
        w.write_all(h.as_bytes()).at(out)?;
        for m in members {
            m.copy_to(&mut **w, out)?;
        }
        let pad = (512 - data_size % 512) % 512;
        w.write_all(&[0u8; 512][..pad as usize]).at(out)?;
        tar.finish().at(out)?;
    }
    finish(enc, out)
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
    cap_tables(&mut enc, level, window_log)?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;
    use formats::limits::Limits;

    fn spooled(bytes: &[u8]) -> Member {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), bytes).unwrap();
        Member::Spooled {
            file: tmp.into_temp_path(),
            len: bytes.len() as u64,
        }
    }

    #[test]
    fn spooled_members_give_the_same_patch_and_unpack() {
        let d = tempfile::tempdir().unwrap();
        // Sizes around the tar block size, and an empty member.
        let parts: Vec<Vec<u8>> = [511usize, 0, 513, 1024, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (j * 31 + i * 7) as u8).collect())
            .collect();
        let sizes: Vec<u64> = parts.iter().map(|p| p.len() as u64).collect();
        let pi = PatchInfo::fixture_with_full_members(&sizes);
        let in_memory: Vec<Member> = parts.iter().map(|p| Member::Bytes(p.clone())).collect();
        let on_disk: Vec<Member> = parts.iter().map(|p| spooled(p)).collect();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        write_patch(&a, &pi, &in_memory).unwrap();
        write_patch(&b, &pi, &on_disk).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let up =
            patch_apply::archive::unpack_patch(&b, "b", &d.path().join("out"), &Limits::default())
                .unwrap();
        for (m, want) in up.members.iter().zip(&parts) {
            let got = m.as_ref().map(|p| std::fs::read(p).unwrap());
            assert_eq!(got.unwrap_or_default(), *want);
        }
        // A spooled file that lost bytes is refused, and so is a wrong total.
        let short = Member::Spooled {
            file: tempfile::NamedTempFile::new().unwrap().into_temp_path(),
            len: 3,
        };
        assert!(write_patch(
            &d.path().join("c"),
            &PatchInfo::fixture_with_full_members(&[3]),
            &[short]
        )
        .is_err());
        assert!(write_patch(
            &d.path().join("c"),
            &PatchInfo::fixture_with_full_members(&[4]),
            &[spooled(b"abc")]
        )
        .is_err());
    }
}
