//! Offline bundles (docs/format.md §10): one tar file holding a repository's signed metadata
//! and the artifacts some installs need, read as a [`Transport`] so that `apply --bundle`
//! runs the same TUF refresh and apply pipeline as an online update.
//!
//! The bundle is never extracted. [`BundleTransport::open`] walks the tar headers once
//! (bounded: entry count, name length, regular files only, names checked as [`RelPath`] and
//! kept under `metadata/`, `targets/` and `blobs/`), checks the BLAKE3 seal over every byte
//! before the seal entry, the seal entry's header byte for byte and the zero blocks that end
//! the archive, and remembers where each file's bytes are. Downloads then copy from those
//! offsets into the caller's `.part` file through the same checker as every other
//! transport ([`formats::hash::StreamCheck`]): a size in a tar header that differs from the signed size is refused before a
//! byte is copied, and nothing past the signed size is read.
//!
//! The seal and the index (`bundle.json`) are not signed: the seal only turns a damaged or
//! edited file into a clear error before anything else; what makes a bundle trustworthy is the
//! signed metadata inside it, checked by `trust` exactly as online.
//!
//! [`BundleWriter`] writes the format (used by `patch-create bundle`), in this module so that
//! the reader and the writer cannot drift apart.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use formats::hash::PinningWriter;
use formats::layout::{BLOBS_DIR, METADATA_DIR, TARGETS_DIR};
use formats::{RelPath, Version};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, IoContext, Result};
use crate::transport::{Expected, PartialFile, Transport};

/// The `format` of a bundle's index.
pub const BUNDLE_FORMAT: &str = "patchkit-bundle-1";
/// Name of the index, the first entry.
pub const INDEX_NAME: &str = "bundle.json";
/// Name of the seal, the last entry: 64 lowercase hex digits of the BLAKE3 of every byte of
/// the file before this entry's header, and a newline.
pub const SEAL_NAME: &str = "bundle.blake3";
/// The file name extension bundles are written with (and the agent's `--watch-dir` looks for).
pub const EXTENSION: &str = "bundle";
/// Most entries a bundle may hold.
pub const MAX_ENTRIES: usize = 2_000_000;
/// Largest index accepted.
pub const MAX_INDEX: u64 = 64 << 10;

const BLOCK: u64 = 512;
/// The end of a tar archive: two zero blocks, then nothing.
const END_BYTES: u64 = 2 * BLOCK;

/// The index: what a bundle is for. Unsigned, for people and for choosing among bundles;
/// the update itself trusts only the signed metadata inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleIndex {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The app, as the repository settings name it (empty when the repository has none).
    pub app: String,
    /// When the bundle was made (`YYYY-MM-DDTHH:MM:SSZ`); its metadata was valid then.
    pub created: String,
    /// The release the bundle leads to.
    pub to: String,
    /// The releases it leads from.
    pub from: Vec<String>,
    /// The earliest expiry of the metadata inside (when a device stops accepting the bundle
    /// unless told to accept expired bundles).
    pub expires: String,
    /// Files in the bundle besides the index and the seal.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl BundleIndex {
    /// Parses and checks the index read from `what`.
    pub fn from_json(what: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::bad(format!("{what}: {INDEX_NAME}"), reason);
        let i: BundleIndex =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a bundle index: {e}")))?;
        if i.format != BUNDLE_FORMAT {
            return Err(bad(format!(
                "format {:?}, this client reads {BUNDLE_FORMAT}",
                i.format
            )));
        }
        formats::time_util::parse_tuf(&i.created)
            .map_err(|e| bad(format!("created {:?}: {e}", i.created)))?;
        formats::time_util::parse_tuf(&i.expires)
            .map_err(|e| bad(format!("expires {:?}: {e}", i.expires)))?;
        for v in std::iter::once(&i.to).chain(&i.from) {
            Version::parse(v).map_err(|e| bad(format!("version {v:?}: {e}")))?;
        }
        Ok(i)
    }

    /// When the bundle was made.
    pub fn created_at(&self) -> Result<OffsetDateTime> {
        Ok(formats::time_util::parse_tuf(&self.created)?)
    }

    /// The release the bundle leads to.
    pub fn to_version(&self) -> Result<Version> {
        Ok(Version::parse(&self.to)?)
    }
}

/// Where one file's bytes are in the bundle.
#[derive(Clone, Copy, Debug)]
struct Span {
    offset: u64,
    size: u64,
}

/// An opened, sealed bundle read as a repository.
pub struct BundleTransport {
    path: PathBuf,
    file: Mutex<File>,
    files: BTreeMap<String, Span>,
    index: BundleIndex,
}

impl std::fmt::Debug for BundleTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleTransport")
            .field("path", &self.path)
            .field("files", &self.files.len())
            .finish()
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_at(file: &mut File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    file.seek(SeekFrom::Start(offset)).at(path)?;
    file.read_exact(buf).at(path)
}

/// Whether a name may be a file of a bundle's repository part.
fn check_member_name(what: &str, name: &str) -> Result<()> {
    let rel = RelPath::new(name)
        .map_err(|e| Error::bad(what, format!("entry {name:?} is not a safe path: {e}")))?;
    let top = rel.first_component();
    if rel.components().count() < 2 || ![METADATA_DIR, TARGETS_DIR, BLOBS_DIR].contains(&top) {
        return Err(Error::bad(
            what,
            format!("entry {name:?} is outside metadata/, targets/ and blobs/"),
        ));
    }
    Ok(())
}

impl BundleTransport {
    /// Opens the bundle at `path` and checks its structure and seal (reading it once).
    pub fn open(path: &Path) -> Result<Self> {
        let what = path.display().to_string();
        let bad = |reason: String| Error::bad(what.clone(), reason);
        let file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        let mut archive = tar::Archive::new(file);
        archive.set_ignore_zeros(false);
        // Raw: long-name and extension entries are seen (and only GNU long names accepted).
        let mut entries: Vec<(String, Span, u64)> = Vec::new();
        let mut pending_name: Option<String> = None;
        {
            let it = archive
                .entries_with_seek()
                .map_err(|e| bad(format!("not a tar file: {e}")))?
                .raw(true);
            for entry in it {
                let mut entry = entry.map_err(|e| bad(format!("damaged tar header: {e}")))?;
                let kind = entry.header().entry_type();
                let size = entry.size();
                if kind.is_gnu_longname() {
                    if pending_name.is_some()
                        || size == 0
                        || size > formats::relpath::MAX_PATH_BYTES as u64 + 1
                    {
                        return Err(bad("bad GNU long-name entry".into()));
                    }
                    let mut name = Vec::new();
                    (&mut entry).take(size).read_to_end(&mut name).at(path)?;
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    let name = String::from_utf8(name)
                        .map_err(|_| bad("a long entry name is not UTF-8".into()))?;
                    pending_name = Some(name);
                    continue;
                }
                if kind != tar::EntryType::Regular {
                    return Err(bad(format!(
                        "entry at byte {} is not a regular file (type {:?})",
                        entry.raw_header_position(),
                        kind.as_byte() as char
                    )));
                }
                let name = match pending_name.take() {
                    Some(n) => n,
                    None => {
                        let raw = entry.header().path_bytes();
                        String::from_utf8(raw.into_owned())
                            .map_err(|_| bad("an entry name is not UTF-8".into()))?
                    }
                };
                if entries.len() >= MAX_ENTRIES {
                    return Err(bad(format!("more than {MAX_ENTRIES} entries")));
                }
                let span = Span {
                    offset: entry.raw_file_position(),
                    size,
                };
                if span.offset.saturating_add(size) > len {
                    return Err(bad(format!("entry {name:?} runs past the end of the file")));
                }
                entries.push((name, span, entry.raw_header_position()));
            }
        }
        if pending_name.is_some() {
            return Err(bad("a long name describes no entry".into()));
        }
        let mut file = archive.into_inner();
        let (first, last) = match (entries.first(), entries.last()) {
            (Some(f), Some(l)) if entries.len() >= 2 => (f.clone(), l.clone()),
            _ => return Err(bad("not a bundle: fewer than two entries".into())),
        };
        if first.0 != INDEX_NAME || first.2 != 0 {
            return Err(bad(format!(
                "not a bundle: the first entry is not {INDEX_NAME}"
            )));
        }
        if last.0 != SEAL_NAME {
            return Err(bad(format!(
                "not a bundle, or cut short: the last entry is not {SEAL_NAME}"
            )));
        }
        // The seal covers everything before its header; its header and the end are exact.
        let (seal_span, seal_header) = (last.1, last.2);
        let mut header = [0u8; BLOCK as usize];
        read_at(&mut file, path, seal_header, &mut header)?;
        if header[..] != entry_header(SEAL_NAME, seal_span.size)?.as_bytes()[..] {
            return Err(bad(format!("the {SEAL_NAME} header was changed")));
        }
        if seal_span.size != 65 {
            return Err(bad(format!(
                "{SEAL_NAME} has {} bytes, not 65",
                seal_span.size
            )));
        }
        let seal_end = seal_span.offset + BLOCK;
        if len != seal_end + END_BYTES {
            return Err(bad(format!(
                "{} bytes after the last entry, where a bundle ends with exactly {END_BYTES} zero bytes",
                len.saturating_sub(seal_end)
            )));
        }
        let mut tail = vec![0u8; (BLOCK + END_BYTES) as usize];
        read_at(&mut file, path, seal_span.offset, &mut tail)?;
        let (seal_text, rest) = tail.split_at(65);
        if rest.iter().any(|b| *b != 0) {
            return Err(bad("bytes after the seal are not zero".into()));
        }
        let want = std::str::from_utf8(seal_text)
            .ok()
            .and_then(|s| s.strip_suffix('\n'))
            .and_then(|s| s.parse::<formats::Blake3>().ok())
            .ok_or_else(|| bad(format!("{SEAL_NAME} is not a BLAKE3 digest")))?;
        let got = hash_prefix(&mut file, path, seal_header)?;
        if got != want {
            return Err(bad(format!(
                "damaged or edited: the BLAKE3 of its first {seal_header} bytes is {}, its seal says {}",
                got.to_hex(),
                want.to_hex()
            )));
        }
        // Names: the index first, the seal last, repository files in between, each once.
        let index_span = first.1;
        if index_span.size > MAX_INDEX {
            return Err(bad(format!(
                "{INDEX_NAME} is larger than {MAX_INDEX} bytes"
            )));
        }
        let mut index_bytes = vec![0u8; index_span.size as usize];
        read_at(&mut file, path, index_span.offset, &mut index_bytes)?;
        let index = BundleIndex::from_json(&what, &index_bytes)?;
        let mut files = BTreeMap::new();
        for (name, span, _) in &entries[1..entries.len() - 1] {
            check_member_name(&what, name)?;
            if files.insert(name.clone(), *span).is_some() {
                return Err(bad(format!("entry {name:?} appears twice")));
            }
        }
        Ok(BundleTransport {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            files,
            index,
        })
    }

    /// The bundle's index (unsigned).
    pub fn index(&self) -> &BundleIndex {
        &self.index
    }

    /// The bundle's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The repository paths the bundle holds, with their sizes.
    pub fn files(&self) -> impl Iterator<Item = (&str, u64)> {
        self.files.iter().map(|(n, s)| (n.as_str(), s.size))
    }

    fn url(&self, name: &str) -> String {
        format!("{}:{name}", self.path.display())
    }

    fn read_span(&self, span: Span, pos: u64, buf: &mut [u8]) -> Result<()> {
        let mut f = self
            .file
            .lock()
            .map_err(|_| Error::Precondition("bundle reader poisoned".into()))?;
        read_at(&mut f, &self.path, span.offset + pos, buf)
    }
}

/// Reads only the index of the bundle at `path` (its first entry), without checking the seal:
/// for listing and choosing bundles; [`BundleTransport::open`] checks everything.
pub fn read_index(path: &Path) -> Result<BundleIndex> {
    let what = path.display().to_string();
    let file = File::open(path).at(path)?;
    let mut archive = tar::Archive::new(file);
    let mut it = archive
        .entries()
        .map_err(|e| Error::bad(&what, format!("not a tar file: {e}")))?;
    let mut entry = match it.next() {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err(Error::bad(&what, format!("damaged tar header: {e}"))),
        None => return Err(Error::bad(&what, "empty file")),
    };
    let name = entry.path_bytes().into_owned();
    if name != INDEX_NAME.as_bytes() || entry.size() > MAX_INDEX {
        return Err(Error::bad(
            &what,
            format!("not a bundle: the first entry is not {INDEX_NAME}"),
        ));
    }
    let mut bytes = Vec::new();
    (&mut entry)
        .take(MAX_INDEX)
        .read_to_end(&mut bytes)
        .at(path)?;
    BundleIndex::from_json(&what, &bytes)
}

fn hash_prefix(file: &mut File, path: &Path, len: u64) -> Result<formats::Blake3> {
    file.seek(SeekFrom::Start(0)).at(path)?;
    let mut h = blake3::Hasher::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.read_exact(&mut buf[..n]).at(path)?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(formats::Blake3(*h.finalize().as_bytes()))
}

impl Transport for BundleTransport {
    fn get_small(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        let Some(span) = self.files.get(path).copied() else {
            return Ok(None);
        };
        if span.size > max_len {
            return Err(Error::Format(formats::Error::TooLarge {
                what: self.url(path),
                limit: max_len,
                actual: span.size,
            }));
        }
        let mut buf = vec![0u8; span.size as usize];
        self.read_span(span, 0, &mut buf)?;
        Ok(Some(buf))
    }

    fn download(
        &self,
        path: &str,
        expected: &Expected,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let url = self.url(path);
        let span = self
            .files
            .get(path)
            .copied()
            .ok_or_else(|| Error::NotFound { url: url.clone() })?;
        if span.size != expected.size {
            return Err(Error::Fetch {
                url,
                reason: format!(
                    "the bundle holds {} bytes, the signed size is {}",
                    span.size, expected.size
                ),
            });
        }
        let mut part = PartialFile::open(dest, expected, &url)?;
        let mut pos = part.offset;
        let mut buf = vec![0u8; 1 << 20];
        while pos < span.size {
            let n = buf
                .len()
                .min(usize::try_from(span.size - pos).unwrap_or(usize::MAX));
            self.read_span(span, pos, &mut buf[..n])?;
            part.check.update(&buf[..n])?;
            part.file.write_all(&buf[..n]).at(dest)?;
            progress(n as u64);
            pos += n as u64;
        }
        if let Err(e) = part.check.finish() {
            drop(part.file);
            std::fs::remove_file(dest).at(dest)?;
            return Err(e.into());
        }
        part.file.sync_all().at(dest)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("bundle {}", self.path.display())
    }
}

/// The header every bundle entry gets: GNU, mode 0644, mtime 0, uid/gid 0, no user names.
fn entry_header(name: &str, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_path(name)
        .map_err(|e| Error::bad(name, format!("cannot name a tar entry so: {e}")))?;
    h.set_cksum();
    Ok(h)
}

/// Writes a bundle: the index, then repository files, then the seal; the file appears at its
/// destination only when complete (temporary file in the same directory, fsync, rename).
pub struct BundleWriter {
    out: PathBuf,
    tmp: tempfile::TempPath,
    tar: tar::Builder<PinningWriter<BufWriter<File>>>,
}

impl BundleWriter {
    /// Starts a bundle that will be `out`, with `index` as its first entry.
    pub fn create(out: &Path, index: &BundleIndex) -> Result<Self> {
        // A bare file name is in the current directory (which is synced after the rename).
        let out = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => out.to_path_buf(),
            _ => Path::new(".").join(out),
        };
        let dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(".bundle-tmp-")
            .tempfile_in(&dir)
            .at(&dir)?;
        let (file, tmp) = tmp.into_parts();
        let mut tar = tar::Builder::new(PinningWriter::new(BufWriter::new(file)));
        tar.mode(tar::HeaderMode::Deterministic);
        let mut w = BundleWriter { out, tmp, tar };
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| Error::Precondition(format!("bundle index: {e}")))?;
        w.append(INDEX_NAME, bytes.len() as u64, bytes.as_slice())?;
        Ok(w)
    }

    fn append(&mut self, name: &str, size: u64, data: impl Read) -> Result<()> {
        let mut h = entry_header("x", size)?;
        let tmp = self.tmp.to_path_buf();
        self.tar
            .append_data(&mut h, name, data.take(size))
            .map_err(|e| Error::io(&tmp, e))
    }

    /// Adds the repository file `name` (`metadata/...`, `targets/...`, `blobs/...`) with
    /// `bytes`.
    pub fn add_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        check_member_name(name, name)?;
        self.append(name, bytes.len() as u64, bytes)
    }

    /// Adds the repository file `name` with the content of `src`, which must have `size`
    /// bytes.
    pub fn add_file(&mut self, name: &str, src: &Path, size: u64) -> Result<()> {
        check_member_name(name, name)?;
        let f = File::open(src).at(src)?;
        let len = f.metadata().at(src)?.len();
        if len != size {
            return Err(Error::bad(
                src.display().to_string(),
                format!("has {len} bytes, {size} expected"),
            ));
        }
        self.append(name, size, f)
    }

    /// Seals the bundle and moves it into place; returns its size in bytes.
    pub fn finish(mut self) -> Result<u64> {
        let tmp = self.tmp.to_path_buf();
        let digest = self.tar.get_ref().pin().blake3;
        let seal = format!("{digest}\n");
        let mut h = entry_header(SEAL_NAME, seal.len() as u64)?;
        self.tar
            .append_data(&mut h, SEAL_NAME, seal.as_bytes())
            .map_err(|e| Error::io(&tmp, e))?;
        let sealing = self.tar.into_inner().map_err(|e| Error::io(&tmp, e))?;
        let file = sealing
            .into_inner()
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        // Not secret: readable like any download (the temporary file was made 0600).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))
                .at(&tmp)?;
        }
        file.sync_all().at(&tmp)?;
        let size = file.metadata().at(&tmp)?.len();
        drop(file);
        crate::atomic::rename(&tmp, &self.out)?;
        // Renamed: nothing left to remove.
        let _ = self.tmp.keep();
        Ok(size)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    fn index() -> BundleIndex {
        BundleIndex {
            format: BUNDLE_FORMAT.into(),
            app: "demo".into(),
            created: "2026-01-01T00:00:00Z".into(),
            to: "2.0.0".into(),
            from: vec!["1.0.0".into()],
            expires: "2027-01-01T00:00:00Z".into(),
            files: 2,
            bytes: 7,
        }
    }

    fn write(dir: &Path) -> PathBuf {
        let out = dir.join("a.bundle");
        let mut w = BundleWriter::create(&out, &index()).unwrap();
        w.add_bytes("metadata/timestamp.json", b"ts").unwrap();
        let long = format!("targets/2.0.0/{}.patch-from-1.0.0.patch", "ab".repeat(32));
        w.add_bytes(&long, b"patch").unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn round_trip_with_long_names() {
        let d = tempfile::tempdir().unwrap();
        let out = write(d.path());
        let b = BundleTransport::open(&out).unwrap();
        assert_eq!(b.index(), &index());
        assert_eq!(read_index(&out).unwrap(), index());
        assert_eq!(
            b.get_small("metadata/timestamp.json", 10).unwrap().unwrap(),
            b"ts"
        );
        assert!(b.get_small("metadata/2.root.json", 10).unwrap().is_none());
        assert!(b.get_small("metadata/timestamp.json", 1).is_err());
        let long = format!("targets/2.0.0/{}.patch-from-1.0.0.patch", "ab".repeat(32));
        let exp = Expected::pinned(formats::Pin::of(b"patch"), None);
        let dest = d.path().join("p.part");
        b.download(&long, &exp, &dest, &|_| {}).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"patch");
        // A signed size other than the header's is refused before reading.
        let other = Expected::pinned(formats::Pin::of(b"patch!"), None);
        let e = b.download(&long, &other, &dest, &|_| {}).unwrap_err();
        assert!(e.to_string().contains("signed size"), "{e}");
        // No temporary file is left next to it.
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = write(d.path());
        let good = std::fs::read(&out).unwrap();
        let bad = d.path().join("bad.bundle");
        for i in (0..good.len()).step_by(7).chain([good.len() - 1]) {
            let mut b = good.clone();
            b[i] ^= 0x01;
            std::fs::write(&bad, &b).unwrap();
            assert!(BundleTransport::open(&bad).is_err(), "flip at {i} accepted");
        }
        // Cut short, or with bytes added, too.
        std::fs::write(&bad, &good[..good.len() - 512]).unwrap();
        assert!(BundleTransport::open(&bad).is_err());
        let mut longer = good.clone();
        longer.extend_from_slice(&[0u8; 512]);
        std::fs::write(&bad, &longer).unwrap();
        assert!(BundleTransport::open(&bad).is_err());
    }

    #[test]
    fn names_outside_the_repository_are_refused() {
        for n in [
            "../x",
            "/etc/passwd",
            "metadata",
            "other/x",
            "targets/../../x",
            ".patchkit/x",
        ] {
            assert!(check_member_name("b", n).is_err(), "{n}");
        }
        check_member_name("b", "blobs/ab/x.zst").unwrap();
    }
}
