//! Getting repository files: the [`Transport`] trait, the local-directory transport, and
//! [`Mirrors`], which tries several repositories in order.
//!
//! Every download is bounded by the size the signed metadata allows and checked against its
//! pin before anything uses it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use formats::hash::StreamCheck;
use formats::{Pin, Sha256};

use crate::error::{Error, IoContext, Result};

/// What a downloaded artifact must be.
#[derive(Clone, Debug)]
pub struct Expected {
    /// Size and BLAKE3.
    pub pin: Pin,
    /// SHA-256, when the artifact is a TUF target.
    pub sha256: Option<Sha256>,
}

/// A way to read files of a repository.
pub trait Transport: Send + Sync {
    /// Reads `path` (relative to the repository base) into memory. `Ok(None)` when the
    /// repository does not have it; an error when it has more than `max_len` bytes.
    fn get_small(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>>;

    /// Downloads `path` into `dest`, which may already hold a prefix of it from an interrupted
    /// download (transports that can resume continue after it). On success `dest` holds exactly
    /// the expected bytes; `progress` receives byte counts as they arrive.
    fn download(&self, path: &str, expected: &Expected, dest: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<()>;

    /// The repository's base, for messages.
    fn describe(&self) -> String;
}

/// A repository in a local directory (a path or a `file://` URL).
#[derive(Clone, Debug)]
pub struct DirTransport {
    base: PathBuf,
}

impl DirTransport {
    /// A transport reading below `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        DirTransport { base: base.into() }
    }

    fn file(&self, path: &str) -> Result<PathBuf> {
        formats::layout::check_target_name(path)?;
        Ok(self.base.join(path))
    }
}

impl Transport for DirTransport {
    fn get_small(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        let p = self.file(path)?;
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&p, e)),
        };
        let mut buf = Vec::new();
        f.take(max_len + 1).read_to_end(&mut buf).at(&p)?;
        if buf.len() as u64 > max_len {
            return Err(Error::Format(formats::Error::TooLarge {
                what: p.display().to_string(),
                limit: max_len,
                actual: buf.len() as u64,
            }));
        }
        Ok(Some(buf))
    }

    fn download(&self, path: &str, expected: &Expected, dest: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
        let p = self.file(path)?;
        let mut src = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    url: p.display().to_string(),
                })
            }
            Err(e) => return Err(Error::io(&p, e)),
        };
        let mut out = File::create(dest).at(dest)?;
        let what = p.display().to_string();
        let mut check = StreamCheck::new(&what, expected.pin, expected.sha256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).at(&p)?;
            if n == 0 {
                break;
            }
            check.update(&buf[..n])?;
            out.write_all(&buf[..n]).at(dest)?;
            progress(n as u64);
        }
        check.finish()?;
        out.sync_all().at(dest)?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.base.display().to_string()
    }
}

/// Opens a transport for a repository given as a local path or `file://` URL. `http(s)://`
/// URLs are handled by [`crate::http`].
pub fn open(url: &str) -> Result<Box<dyn Transport>> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return crate::http::open(url);
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    Ok(Box::new(DirTransport::new(path)))
}

/// Several repositories serving the same files, tried in order: a repository that fails (other
/// than a clean "not found" on metadata) is skipped for the next.
pub struct Mirrors {
    list: Vec<Box<dyn Transport>>,
}

impl Mirrors {
    /// Mirrors in preference order.
    pub fn new(list: Vec<Box<dyn Transport>>) -> Self {
        Mirrors { list }
    }

    /// Adds more mirrors at the end (e.g. those listed in signed repository settings).
    pub fn extend(&mut self, more: Vec<Box<dyn Transport>>) {
        let known: Vec<String> = self.list.iter().map(|t| t.describe()).collect();
        for m in more {
            if !known.contains(&m.describe()) {
                self.list.push(m);
            }
        }
    }
}

impl Transport for Mirrors {
    fn get_small(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        let mut errors = Vec::new();
        for t in &self.list {
            match t.get_small(path, max_len) {
                Ok(v) => return Ok(v),
                Err(e) => errors.push(e),
            }
        }
        Err(errors.pop().unwrap_or_else(|| Error::Fetch {
            url: path.to_string(),
            reason: "no repository configured".into(),
        }))
    }

    fn download(&self, path: &str, expected: &Expected, dest: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
        let mut errors = Vec::new();
        for t in &self.list {
            match t.download(path, expected, dest, progress) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!("{}: {e}", t.describe());
                    errors.push(format!("{}: {e}", t.describe()));
                }
            }
        }
        Err(Error::Fetch {
            url: path.to_string(),
            reason: errors.join("; "),
        })
    }

    fn describe(&self) -> String {
        self.list.iter().map(|t| t.describe()).collect::<Vec<_>>().join(", ")
    }
}

/// Downloads into `cache/NAME` through a `.part` file; an existing verified file is reused.
pub fn fetch_to_cache(
    t: &dyn Transport,
    path: &str,
    expected: &Expected,
    cache: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PathBuf> {
    fs::create_dir_all(cache).at(cache)?;
    let name = expected.pin.blake3.to_hex();
    let done = cache.join(&name);
    if done.exists() {
        if formats::hash::pin_file(&done).ok() == Some(expected.pin) {
            return Ok(done);
        }
        fs::remove_file(&done).at(&done)?;
    }
    let part = cache.join(format!("{name}.part"));
    t.download(path, expected, &part, progress)?;
    crate::atomic::rename(&part, &done)?;
    Ok(done)
}
