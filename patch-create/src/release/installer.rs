//! The installer of a release assembled from its repair files (docs/format.md §6.1,
//! "Frames"): the tar stream is cut at every regular file's content; the tar headers between
//! two contents become small zstd frames of their own, and each content is the release's repair
//! file copied byte for byte (its `RPAR` skippable frame and its zstd frame). Nothing already
//! compressed is compressed again, so a release whose files mostly did not change writes its
//! installer at the speed of a file copy.
//! May use: `error`, `diff` (to compress a file the manifest gives no repair file).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use formats::container::ArtifactKind;
use formats::hash::PinningWriter;
use formats::manifest::{Node, ReleaseManifest};
use formats::Pin;

use crate::diff::pack::header as tar_header;
use crate::error::{Error, IoContext, Result};

/// zstd level of the frames holding tar headers and padding: a few hundred bytes, mostly zeros,
/// which level 3 shrinks as well as 19 does, and faster.
const HEADER_LEVEL: i32 = 3;

/// What writing an installer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InstallerStats {
    /// Repair files copied as they are.
    pub reused_files: u64,
    /// Their bytes.
    pub reused_bytes: u64,
    /// Files compressed here because the manifest names no repair file for them.
    pub compressed_files: u64,
    /// zstd frames of tar headers and padding.
    pub header_frames: u64,
    /// Bytes of the installer.
    pub bytes: u64,
}

/// Writes the installer of `manifest` to `out`. Each regular file's content is the repair file
/// the manifest pins for it, read from `repo` (`blobs/AB/BLAKE3.zst`) and checked against that
/// pin while it is copied (a repair file that does not match is an error naming it); a file
/// without a repair file is compressed from `tree` at `level`. Returns what was done.
pub fn write_installer_from_blobs(
    out: &Path,
    manifest: &ReleaseManifest,
    repo: &Path,
    tree: &Path,
    level: i32,
) -> Result<InstallerStats> {
    let file = File::create(out).at(out)?;
    let mut w = PinningWriter::new(BufWriter::with_capacity(1 << 20, &file));
    w.write_all(&formats::container::header(ArtifactKind::Installer))
        .at(out)?;
    let mut stats = InstallerStats::default();
    let mut frames = zstd::bulk::Compressor::new(HEADER_LEVEL).at(out)?;
    frames.include_checksum(false).at(out)?;
    frames.include_contentsize(true).at(out)?;
    // The tar stream's bytes that are not file contents collect here (headers, GNU long-name
    // entries, padding) until the next content or the end.
    let mut tar = tar::Builder::new(Vec::<u8>::new());
    tar.follow_symlinks(false);
    let mut flush_headers = |tar: &mut tar::Builder<Vec<u8>>,
                             w: &mut PinningWriter<BufWriter<&File>>,
                             stats: &mut InstallerStats|
     -> Result<()> {
        let pending = std::mem::take(tar.get_mut());
        if pending.is_empty() {
            return Ok(());
        }
        let frame = frames.compress(&pending).at(out)?;
        w.write_all(&frame).at(out)?;
        stats.header_frames += 1;
        Ok(())
    };
    for e in &manifest.entries {
        let name = e.path.as_str();
        match &e.node {
            Node::Dir => {
                let mut h = tar_header(0, 0o755, tar::EntryType::Directory);
                tar.append_data(&mut h, format!("{name}/"), std::io::empty())
                    .at(out)?;
            }
            Node::Symlink { target } => {
                let mut h = tar_header(0, 0o777, tar::EntryType::Symlink);
                tar.append_link(&mut h, name, target).at(out)?;
            }
            Node::File { size, blake3, exec } => {
                let mut h = tar_header(
                    *size,
                    if *exec { 0o755 } else { 0o644 },
                    tar::EntryType::Regular,
                );
                // An empty reader: the builder writes the header (and a long-name entry) but
                // no content and no padding; the content follows as its own frames.
                tar.append_data(&mut h, name, std::io::empty()).at(out)?;
                if *size == 0 {
                    continue;
                }
                flush_headers(&mut tar, &mut w, &mut stats)?;
                let pin = Pin {
                    size: *size,
                    blake3: *blake3,
                };
                match e.repair {
                    Some(repair) => {
                        copy_repair_file(repo, pin, repair, &mut w)?;
                        stats.reused_files += 1;
                        stats.reused_bytes += repair.size;
                    }
                    None => {
                        let src = e.path.to_path(tree);
                        crate::encode::compress_file_into(&src, pin, level, &mut w)?;
                        stats.compressed_files += 1;
                    }
                }
                let pad = size.next_multiple_of(512) - size;
                tar.get_mut().extend(std::iter::repeat_n(0u8, pad as usize));
            }
        }
    }
    tar.finish().at(out)?;
    flush_headers(&mut tar, &mut w, &mut stats)?;
    stats.bytes = w.pin().size;
    w.into_inner()
        .into_inner()
        .map_err(|e| Error::io(out, e.into_error()))?;
    Ok(stats)
}

/// Copies the repair file of content `content` from `repo` to `w`, refusing one whose size or
/// BLAKE3 is not `repair` (the error names the repair file).
fn copy_repair_file<W: Write>(repo: &Path, content: Pin, repair: Pin, w: &mut W) -> Result<()> {
    let rel = formats::layout::blob_path(&content.blake3);
    let p = repo.join(&rel);
    let f = File::open(&p).at(&p)?;
    let mut pw = PinningWriter::new(w);
    // One byte past the signed size shows a longer file without reading all of it.
    let n = std::io::copy(&mut f.take(repair.size.saturating_add(1)), &mut pw).at(&p)?;
    if n != repair.size {
        return Err(Error::Repo {
            path: p,
            reason: format!(
                "repair file {rel} has {} bytes, the manifest pins {}",
                if n > repair.size {
                    format!("more than {}", repair.size)
                } else {
                    n.to_string()
                },
                repair.size
            ),
        });
    }
    let got = pw.pin();
    if got.blake3 != repair.blake3 {
        return Err(Error::Format(formats::Error::HashMismatch {
            what: p.display().to_string(),
            algorithm: "blake3",
            expected: repair.blake3.to_hex(),
            actual: got.blake3.to_hex(),
        }));
    }
    Ok(())
}
