//! Getting repository files: the [`Transport`] trait, the local-directory transport, and
//! [`Mirrors`], which tries several repositories in order.
//!
//! Every download is bounded by the size the signed metadata allows and checked against its
//! pin before anything uses it. Downloads go to `cache/<blake3>.part` and are resumed from the
//! bytes already there (also after the process was killed): [`PartialFile::open`] feeds those
//! bytes to a [`StreamCheck`] first, so the hash covers the whole file.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use formats::hash::StreamCheck;

use crate::cancel::Cancel;
use crate::error::{Error, IoContext, Result};
use crate::events::{Event, EventHook};

/// What a downloaded artifact must be (size and digests): [`formats::hash::Expected`].
pub use formats::hash::Expected;

/// How many downloads run at once when a transport does not say.
pub const DEFAULT_PARALLEL: usize = 4;

/// Longest `ETag` or `Last-Modified` value kept as a validator; longer ones are not kept.
pub const MAX_VALIDATOR_LEN: usize = 256;

/// What a server said about a mutable file (`timestamp.json`) when it sent it, so that the
/// next request can ask for it only if it changed (`If-None-Match`, `If-Modified-Since`;
/// docs/format.md §9): the URL it came from and its `ETag` and `Last-Modified` values. They
/// are sent again only to that same URL.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validators {
    /// The URL the file was fetched from.
    pub url: String,
    /// Its `ETag` (strong or weak, as sent, quotes included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Its `Last-Modified` (an HTTP date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Validators {
    /// Validators for `url` from the answer's header values; a value that is longer than
    /// [`MAX_VALIDATOR_LEN`] or not visible ASCII is dropped. `None` when nothing is left.
    pub fn new(url: &str, etag: Option<&str>, last_modified: Option<&str>) -> Option<Self> {
        let usable = |v: Option<&str>| {
            v.map(str::trim)
                .filter(|v| {
                    !v.is_empty()
                        && v.len() <= MAX_VALIDATOR_LEN
                        && v.bytes().all(|b| (0x20..0x7f).contains(&b))
                })
                .map(str::to_string)
        };
        let (etag, last_modified) = (usable(etag), usable(last_modified));
        (etag.is_some() || last_modified.is_some()).then(|| Validators {
            url: url.to_string(),
            etag,
            last_modified,
        })
    }

    /// Reads validators stored by [`Validators::to_json`]; `None` for anything unusable
    /// (they are only a hint: without them the file is simply fetched whole).
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > 4 * MAX_VALIDATOR_LEN + 8192 {
            return None;
        }
        let v: Validators = serde_json::from_slice(bytes).ok()?;
        let again = Validators::new(&v.url, v.etag.as_deref(), v.last_modified.as_deref())?;
        (again == v).then_some(v)
    }

    /// The JSON form kept in the state directory.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The answer to [`Transport::get_if_changed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conditional {
    /// The file, and what to send next time to ask whether it changed (`None` when the
    /// server gave no validators).
    Fetched(Vec<u8>, Option<Validators>),
    /// HTTP 304: the file is still the one the validators sent describe.
    NotModified,
    /// The repository does not have the file.
    Missing,
}

/// The error for a file that trusted metadata (`pinned_by`) lists but that the repository at
/// `url` does not serve as signed (`what`: not found, another length or hash). With a correctly
/// published repository this happens only while it is being updated (a client between the
/// uploads) or behind a cache that still holds older files, so the error says so: nothing of it
/// was trusted, and a later run succeeds once the files agree.
pub fn not_as_signed(url: String, what: &str, pinned_by: &str) -> Error {
    Error::Fetch {
        url,
        reason: format!(
            "{what}, although the trusted {pinned_by} lists it: the repository is being updated \
             or a cache in front of it serves stale files; try again later"
        ),
    }
}

/// Whether `e` says a file was missing or had other bytes than signed (see
/// [`not_as_signed`]); its text when so.
pub fn missing_or_other_bytes(e: &Error) -> Option<String> {
    use formats::Error as F;
    match e {
        Error::NotFound { .. } => Some("not found".into()),
        Error::Format(
            f @ (F::LengthMismatch { .. } | F::HashMismatch { .. } | F::TooLarge { .. }),
        ) => Some(f.to_string()),
        _ => None,
    }
}

/// A way to read files of a repository.
pub trait Transport: Send + Sync {
    /// Reads `path` (relative to the repository base) into memory. `Ok(None)` when the
    /// repository does not have it; an error when it has more than `max_len` bytes.
    fn get_small(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>>;

    /// Like [`Transport::get_small`], for a file that changes in place: `known` are the
    /// validators of the copy the caller holds, sent (where the transport can) so that an
    /// unchanged file costs a `304` without a body ([`Conditional::NotModified`]). Transports
    /// without validators (local directories) always read the file.
    fn get_if_changed(
        &self,
        path: &str,
        max_len: u64,
        known: Option<&Validators>,
    ) -> Result<Conditional> {
        let _ = known;
        Ok(match self.get_small(path, max_len)? {
            Some(b) => Conditional::Fetched(b, None),
            None => Conditional::Missing,
        })
    }

    /// Downloads `path` into `dest`, which may already hold a prefix of it from an interrupted
    /// download (transports that can resume continue after it). On success `dest` holds exactly
    /// the expected bytes; `progress` receives the counts of bytes as they arrive.
    fn download(
        &self,
        path: &str,
        expected: &Expected,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()>;

    /// The repository's base, for messages.
    fn describe(&self) -> String;

    /// How many downloads may run at once.
    fn parallel(&self) -> usize {
        DEFAULT_PARALLEL
    }
}

/// A partially downloaded file: the bytes already on disk, already fed to the checker.
pub struct PartialFile {
    /// The file, positioned at its end.
    pub file: File,
    /// The checker, which has seen the bytes already on disk.
    pub check: StreamCheck,
    /// Bytes already on disk (where a download resumes).
    pub offset: u64,
}

impl PartialFile {
    /// Opens (or creates) `dest` and rebuilds the hash state from the bytes it holds. A file
    /// longer than the signed size is emptied. `what` names the artifact in errors.
    pub fn open(dest: &Path, expected: &Expected, what: &str) -> Result<PartialFile> {
        // A state file: a link planted at `dest` is refused, never followed.
        let mut file = crate::state::open_state_file(
            dest,
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )?;
        let len = file.metadata().at(dest)?.len();
        let mut check = StreamCheck::new(what, expected);
        if len > expected.size {
            file.set_len(0).at(dest)?;
        } else if len > 0 {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).at(dest)?;
                if n == 0 {
                    break;
                }
                check.update(&buf[..n])?;
            }
        }
        let offset = check.seen();
        file.seek(SeekFrom::Start(offset)).at(dest)?;
        Ok(PartialFile {
            file,
            check,
            offset,
        })
    }

    /// Empties the file and the checker, to start over from the first byte.
    pub fn restart(&mut self, dest: &Path, expected: &Expected, what: &str) -> Result<()> {
        self.file.set_len(0).at(dest)?;
        self.file.seek(SeekFrom::Start(0)).at(dest)?;
        self.check = StreamCheck::new(what, expected);
        self.offset = 0;
        Ok(())
    }
}

/// Bytes of `expected` already in `cache` (a finished file or a partial one), for progress
/// reports before a download resumes.
pub fn kept_bytes(cache: &Path, expected: &Expected) -> u64 {
    let name = expected.cache_name();
    if let Ok(m) = fs::metadata(cache.join(&name)) {
        if m.len() == expected.size {
            return m.len();
        }
    }
    match fs::metadata(cache.join(format!("{name}.part"))) {
        Ok(m) if m.len() <= expected.size => m.len(),
        _ => 0,
    }
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

    fn download(
        &self,
        path: &str,
        expected: &Expected,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
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
        let what = p.display().to_string();
        let mut part = PartialFile::open(dest, expected, &what)?;
        src.seek(SeekFrom::Start(part.offset)).at(&p)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).at(&p)?;
            if n == 0 {
                break;
            }
            part.check.update(&buf[..n])?;
            part.file.write_all(&buf[..n]).at(dest)?;
            progress(n as u64);
        }
        let resumed = part.offset > 0;
        if let Err(e) = part.check.finish() {
            // The kept prefix or the source is wrong: never reuse these bytes.
            drop(part.file);
            fs::remove_file(dest).at(dest)?;
            if resumed {
                return self.download(path, expected, dest, progress);
            }
            return Err(e.into());
        }
        part.file.sync_all().at(dest)?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.base.display().to_string()
    }
}

/// Several repositories serving the same files, tried in order: a repository that fails (other
/// than a clean "not found" on metadata) is skipped for the next, and tried after the healthy
/// ones from then on.
pub struct Mirrors {
    list: Vec<Box<dyn Transport>>,
    failures: Vec<AtomicU32>,
    parallel: usize,
    events: EventHook,
    cancel: Cancel,
}

impl Mirrors {
    /// Mirrors in preference order.
    pub fn new(list: Vec<Box<dyn Transport>>) -> Self {
        let failures = list.iter().map(|_| AtomicU32::new(0)).collect();
        Mirrors {
            list,
            failures,
            parallel: DEFAULT_PARALLEL,
            events: EventHook::default(),
            cancel: Cancel::default(),
        }
    }

    /// Stops before each download (between files) once `cancel` is cancelled.
    pub fn with_cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    /// Reports a mirror given up for a file as an [`Event::Warning`] to `events`.
    pub fn with_events(mut self, events: EventHook) -> Self {
        self.events = events;
        self
    }

    /// Says that mirror `i` failed for `path` and which one comes next (if any).
    fn skipped(&self, i: usize, next: Option<usize>, e: &Error) {
        self.failed(i);
        let Some(n) = next else {
            // The last one: its error is the one returned.
            return;
        };
        let message = format!(
            "{}: {e}; trying the next mirror, {}",
            self.list[i].describe(),
            self.list[n].describe()
        );
        if !self.events.emit(Event::Warning {
            message: message.clone(),
        }) {
            tracing::warn!("{message}");
        }
    }

    /// Sets how many downloads run at once (at least one).
    pub fn with_parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    /// Adds more mirrors at the end (e.g. those listed in signed repository settings).
    pub fn extend(&mut self, more: Vec<Box<dyn Transport>>) {
        let known: Vec<String> = self.list.iter().map(|t| t.describe()).collect();
        for m in more {
            if !known.contains(&m.describe()) {
                self.list.push(m);
                self.failures.push(AtomicU32::new(0));
            }
        }
    }

    /// Indices in the order to try: mirrors that have not failed first, each group in
    /// preference order.
    fn order(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.list.len()).collect();
        idx.sort_by_key(|&i| (self.failures[i].load(Ordering::Relaxed) > 0, i));
        idx
    }

    fn failed(&self, i: usize) {
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }
}

impl Mirrors {
    /// Runs `read` on each mirror in turn until one answers; the errors of all when none does.
    fn first_answer<T>(&self, path: &str, read: impl Fn(&dyn Transport) -> Result<T>) -> Result<T> {
        let mut errors = Vec::new();
        let order = self.order();
        for (k, &i) in order.iter().enumerate() {
            match read(self.list[i].as_ref()) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.skipped(i, order.get(k + 1).copied(), &e);
                    errors.push(e);
                }
            }
        }
        if errors.len() > 1 {
            return Err(Error::Fetch {
                url: path.to_string(),
                reason: format!(
                    "every mirror failed: {}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
        }
        Err(errors.pop().unwrap_or_else(|| Error::Fetch {
            url: path.to_string(),
            reason: "no repository configured".into(),
        }))
    }
}

impl Transport for Mirrors {
    fn get_small(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        self.first_answer(path, |t| t.get_small(path, max_len))
    }

    /// Each mirror gets `known`; only the one the validators came from sends them.
    fn get_if_changed(
        &self,
        path: &str,
        max_len: u64,
        known: Option<&Validators>,
    ) -> Result<Conditional> {
        self.first_answer(path, |t| t.get_if_changed(path, max_len, known))
    }

    fn download(
        &self,
        path: &str,
        expected: &Expected,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        // A safe point between files: nothing of this file is written yet.
        self.cancel.check()?;
        let mut errors = Vec::new();
        let mut missing = Vec::new();
        let order = self.order();
        for (k, &i) in order.iter().enumerate() {
            match self.list[i].download(path, expected, dest, progress) {
                Ok(()) => return Ok(()),
                // The app asked to stop: no other mirror is tried.
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => {
                    self.skipped(i, order.get(k + 1).copied(), &e);
                    if let Error::NotFound { url } = &e {
                        missing.push(url.clone());
                    }
                    errors.push(e.to_string());
                }
            }
        }
        if !missing.is_empty() && missing.len() == errors.len() {
            // Every download is of a file signed metadata lists (its size and hash).
            return Err(not_as_signed(missing.join(", "), "not found", "metadata"));
        }
        Err(Error::Fetch {
            url: path.to_string(),
            reason: if errors.is_empty() {
                "no repository configured".into()
            } else {
                errors.join("; ")
            },
        })
    }

    fn describe(&self) -> String {
        self.list
            .iter()
            .map(|t| t.describe())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn parallel(&self) -> usize {
        self.parallel
    }
}

/// A thread pool sized for `t`'s parallel downloads.
pub fn download_pool(t: &dyn Transport) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(t.parallel().max(1))
        .thread_name(|i| format!("download-{i}"))
        .build()
        .map_err(|e| Error::Precondition(format!("cannot start download threads: {e}")))
}

/// Downloads into `cache/NAME` through a `.part` file; an existing verified file is reused, and
/// an existing `.part` file is continued where the transport can.
pub fn fetch_to_cache(
    t: &dyn Transport,
    path: &str,
    expected: &Expected,
    cache: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PathBuf> {
    fs::create_dir_all(cache).at(cache)?;
    let name = expected.cache_name();
    let done = cache.join(&name);
    if done.exists() {
        if expected.matches_file(&done) {
            return Ok(done);
        }
        fs::remove_file(&done).at(&done)?;
    }
    let part = cache.join(format!("{name}.part"));
    t.download(path, expected, &part, progress)?;
    crate::atomic::rename(&part, &done)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use formats::{Pin, Sha256};

    fn expected(data: &[u8]) -> Expected {
        Expected::pinned(Pin::of(data), Some(Sha256::of(data)))
    }

    #[test]
    fn dir_transport_resumes_a_kept_prefix() {
        let d = tempfile::tempdir().expect("test setup");
        let repo = d.path().join("repo");
        fs::create_dir_all(&repo).expect("test setup");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(repo.join("f"), &data).expect("test setup");
        let cache = d.path().join("cache");
        fs::create_dir_all(&cache).expect("test setup");
        let exp = expected(&data);
        let part = cache.join(format!("{}.part", exp.cache_name()));
        fs::write(&part, &data[..60_000]).expect("test setup");
        assert_eq!(kept_bytes(&cache, &exp), 60_000);
        let got = std::sync::atomic::AtomicU64::new(0);
        let t = DirTransport::new(&repo);
        let out = fetch_to_cache(&t, "f", &exp, &cache, &|n| {
            got.fetch_add(n, Ordering::Relaxed);
        })
        .expect("test setup");
        assert_eq!(fs::read(out).expect("test setup"), data);
        assert_eq!(got.load(Ordering::Relaxed), 40_000);
    }

    #[test]
    fn a_corrupt_prefix_is_discarded_and_fetched_again() {
        let d = tempfile::tempdir().expect("test setup");
        let data = vec![7u8; 50_000];
        fs::write(d.path().join("f"), &data).expect("test setup");
        let exp = expected(&data);
        let dest = d.path().join("f.part");
        fs::write(&dest, vec![8u8; 10_000]).expect("test setup");
        DirTransport::new(d.path())
            .download("f", &exp, &dest, &|_| {})
            .expect("test setup");
        assert_eq!(fs::read(&dest).expect("test setup"), data);
        // A prefix longer than the signed size is dropped too.
        fs::write(&dest, vec![7u8; 60_000]).expect("test setup");
        DirTransport::new(d.path())
            .download("f", &exp, &dest, &|_| {})
            .expect("test setup");
        assert_eq!(fs::read(&dest).expect("test setup"), data);
    }

    #[test]
    fn mirrors_skip_a_failing_repository() {
        let d = tempfile::tempdir().expect("test setup");
        let good = d.path().join("good");
        fs::create_dir_all(&good).expect("test setup");
        fs::write(good.join("f"), b"hello").expect("test setup");
        let m = Mirrors::new(vec![
            Box::new(DirTransport::new(d.path().join("missing"))),
            Box::new(DirTransport::new(&good)),
        ]);
        let dest = d.path().join("out");
        m.download("f", &expected(b"hello"), &dest, &|_| {})
            .expect("test setup");
        assert_eq!(fs::read(&dest).expect("test setup"), b"hello");
        assert_eq!(m.order(), vec![1, 0]);
    }
}
