//! The scan cache (`APP/.patchkit/scan-cache`): the BLAKE3 of every file of the last scan, keyed
//! by path and (size, mtime, ctime, inode), so that a no-op `check` of a large install stats its
//! files instead of hashing them. Entries whose times are within [`RACY_SECS`] of the scan
//! that wrote them are not trusted (a file changed in the same clock tick keeps its mtime).
//! A damaged, truncated or foreign cache file is ignored (and rewritten by the next scan);
//! writing it is best effort. Verification after an update hashes every file the update may
//! have written (every path where the scan before it differed from the release) whatever its
//! stamp, and reuses the cache for the files it did not touch.
//!
//! The file is binary, little-endian, and read in one piece:
//!
//! ```text
//! MAGIC (8) | VERSION u32 | 0 u32 | WRITTEN_NS i64 | COUNT u64
//! COUNT × ( SIZE u64 | MTIME_NS i64 | CTIME_NS i64 | INO u64 | BLAKE3 [32] | LEN u32 | PATH [LEN] )
//! CHECKSUM: BLAKE3 of every byte before it [32]
//! ```
//!
//! Entries are sorted by path (byte order) without duplicates; a file breaking any rule is
//! ignored as a whole.

use std::io::Write;
use std::path::{Path, PathBuf};

use formats::Blake3;

/// File name of the cache inside the state directory.
pub const CACHE_FILE: &str = "scan-cache";
const MAGIC: &[u8; 8] = b"PKSCANC\0";
/// Version of the file layout; another version is ignored.
const VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
/// Fixed part of an entry (before the path bytes).
const ENTRY_FIXED: usize = 8 + 8 + 8 + 8 + 32 + 4;
const CHECKSUM_LEN: usize = 32;
/// Entries modified less than this many seconds before the scan that wrote them are not reused.
pub const RACY_SECS: i64 = 2;

/// What identifies an unchanged file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

impl Stamp {
    /// The stamp of `meta`.
    #[cfg(unix)]
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
        }
    }

    /// The stamp of `meta` (size and mtime only off Unix).
    #[cfg(not(unix))]
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Stamp {
            size: meta.len(),
            mtime_ns,
            ctime_ns: mtime_ns,
            ino: 0,
        }
    }
}

/// One cached file; its path is `names[start..start + len]`.
#[derive(Clone, Copy, Debug)]
struct Cached {
    start: usize,
    len: usize,
    stamp: Stamp,
    blake3: Blake3,
}

/// Hashes of the last scan.
#[derive(Debug, Default)]
pub struct ScanCache {
    /// Every cached path, concatenated.
    names: String,
    /// Sorted by path.
    entries: Vec<Cached>,
    /// When the cache was written, nanoseconds since the epoch.
    written_ns: i64,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The cache file of the app dir `root`.
pub fn cache_path(root: &Path) -> PathBuf {
    root.join(formats::layout::STATE_DIR).join(CACHE_FILE)
}

/// Compares `name` with the string `dir` followed by the byte `last`, without building it.
fn cmp_prefixed(name: &str, dir: &str, last: u8) -> std::cmp::Ordering {
    let (n, d) = (name.as_bytes(), dir.as_bytes());
    let head = n.len().min(d.len());
    n[..head]
        .cmp(d)
        .then_with(|| n[head..].first().cmp(&Some(&last)))
}

/// A part of a [`ScanCache`]: the files below one directory.
#[derive(Clone, Copy, Debug)]
pub struct CachedDir<'a> {
    cache: &'a ScanCache,
    entries: &'a [Cached],
}

impl CachedDir<'_> {
    /// The cached hash of `path` (a full path in the tree) if its stamp is unchanged and was
    /// stable when cached.
    pub fn get(&self, path: &str, stamp: &Stamp) -> Option<Blake3> {
        let c = self.cache;
        let i = self
            .entries
            .binary_search_by(|e| c.name(e).cmp(path))
            .ok()?;
        let e = &self.entries[i];
        let racy = c.written_ns.saturating_sub(RACY_SECS * 1_000_000_000);
        (e.stamp == *stamp && e.stamp.mtime_ns < racy && e.stamp.ctime_ns < racy)
            .then_some(e.blake3)
    }
}

/// A bounds-checked little-endian reader over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }
}

impl ScanCache {
    /// Loads the cache of `root`; empty when missing, unreadable or damaged.
    pub fn load(root: &Path) -> ScanCache {
        crate::state::read_state_file(&cache_path(root))
            .ok()
            .and_then(|b| Self::parse(&b))
            .unwrap_or_default()
    }

    /// Parses a cache file; `None` unless every rule of the layout holds.
    fn parse(bytes: &[u8]) -> Option<ScanCache> {
        let body_len = bytes.len().checked_sub(CHECKSUM_LEN)?;
        let (body, sum) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        let mut r = Reader { buf: body };
        if r.take(MAGIC.len())? != MAGIC || r.u32()? != VERSION || r.u32()? != 0 {
            return None;
        }
        let written_ns = r.i64()?;
        let count = usize::try_from(r.u64()?).ok()?;
        // Every entry takes at least ENTRY_FIXED bytes: a forged count cannot make us allocate
        // more than the file's size suggests.
        if count > r.buf.len() / ENTRY_FIXED {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        let mut names = Vec::with_capacity(r.buf.len().saturating_sub(count * ENTRY_FIXED));
        let mut prev: Option<(usize, usize)> = None;
        for _ in 0..count {
            let stamp = Stamp {
                size: r.u64()?,
                mtime_ns: r.i64()?,
                ctime_ns: r.i64()?,
                ino: r.u64()?,
            };
            let blake3 = Blake3(r.array()?);
            let len = usize::try_from(r.u32()?).ok()?;
            let name = r.take(len)?;
            if let Some((s, l)) = prev {
                if names[s..s + l] >= *name {
                    return None;
                }
            }
            let start = names.len();
            names.extend_from_slice(name);
            prev = Some((start, len));
            entries.push(Cached {
                start,
                len,
                stamp,
                blake3,
            });
        }
        if !r.buf.is_empty() {
            return None;
        }
        // Each name is valid UTF-8 exactly when their concatenation is and every name starts
        // on a character boundary of it.
        let names = String::from_utf8(names).ok()?;
        if !entries.iter().all(|e| names.is_char_boundary(e.start)) {
            return None;
        }
        Some(ScanCache {
            names,
            entries,
            written_ns,
        })
    }

    fn name(&self, e: &Cached) -> &str {
        &self.names[e.start..e.start + e.len]
    }

    /// Number of cached files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached hash of `path` if its stamp is unchanged and was stable when cached.
    pub fn get(&self, path: &str, stamp: &Stamp) -> Option<Blake3> {
        self.dir(None).get(path, stamp)
    }

    /// The cached files below the directory `dir` (`None`: the whole tree). Lookups of a
    /// directory's files in a view touch only that directory's part of the cache.
    pub fn dir(&self, dir: Option<&str>) -> CachedDir<'_> {
        let entries = match dir {
            None => &self.entries[..],
            Some(d) => {
                // Paths below `d` are the ones in ["d/", "d0"): '0' follows '/' in byte order.
                let lo = self
                    .entries
                    .partition_point(|e| cmp_prefixed(self.name(e), d, b'/').is_lt());
                let hi = self
                    .entries
                    .partition_point(|e| cmp_prefixed(self.name(e), d, b'0').is_lt());
                &self.entries[lo..hi.max(lo)]
            }
        };
        CachedDir {
            cache: self,
            entries,
        }
    }
    /// Writes the cache of `root` from `files` (best effort: errors are ignored).
    pub fn store<'a>(root: &Path, files: impl Iterator<Item = (&'a str, Stamp, Blake3)>) {
        Self::store_written_at(root, files, now_ns());
    }

    /// [`ScanCache::store`] claiming the cache was written at `written_ns`.
    fn store_written_at<'a>(
        root: &Path,
        files: impl Iterator<Item = (&'a str, Stamp, Blake3)>,
        written_ns: i64,
    ) {
        let dir = root.join(formats::layout::STATE_DIR);
        if self_patcher::fsio::create_dir_nofollow(&dir).is_err() {
            return;
        }
        let out = Self::encode(files, written_ns);
        let tmp = dir.join(format!("{CACHE_FILE}.tmp"));
        // A leftover temp file (or a link planted there) is removed, never followed; the new
        // one is created exclusively.
        let _ = std::fs::remove_file(&tmp);
        let ok = self_patcher::fsio::create_new(&tmp)
            .and_then(|mut f| f.write_all(&out))
            .is_ok();
        if ok {
            let _ = std::fs::rename(&tmp, dir.join(CACHE_FILE));
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The bytes of a cache file holding `files` (sorted here; duplicates keep the first).
    fn encode<'a>(
        files: impl Iterator<Item = (&'a str, Stamp, Blake3)>,
        written_ns: i64,
    ) -> Vec<u8> {
        let mut files: Vec<(&str, Stamp, Blake3)> = files
            .filter(|(p, _, _)| u32::try_from(p.len()).is_ok())
            .collect();
        files.sort_by(|a, b| a.0.cmp(b.0));
        files.dedup_by(|b, a| a.0 == b.0);
        let names: usize = files.iter().map(|f| f.0.len()).sum();
        let mut out =
            Vec::with_capacity(HEADER_LEN + files.len() * ENTRY_FIXED + names + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&written_ns.to_le_bytes());
        out.extend_from_slice(&(files.len() as u64).to_le_bytes());
        for (p, s, h) in &files {
            out.extend_from_slice(&s.size.to_le_bytes());
            out.extend_from_slice(&s.mtime_ns.to_le_bytes());
            out.extend_from_slice(&s.ctime_ns.to_le_bytes());
            out.extend_from_slice(&s.ino.to_le_bytes());
            out.extend_from_slice(&h.0);
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p.as_bytes());
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan, scan_with, CacheUse, Strictness};
    use formats::patterns::PathPatterns;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn stamp(n: u64) -> Stamp {
        Stamp {
            size: n,
            mtime_ns: n as i64,
            ctime_ns: n as i64 + 1,
            ino: n + 2,
        }
    }

    /// Rewrites the cache of `root` as if it had been written long after every file changed,
    /// so that its entries are trusted.
    fn age_cache(root: &Path) {
        let cache = ScanCache::load(root);
        let files: Vec<(String, Stamp, Blake3)> = cache
            .entries
            .iter()
            .map(|e| (cache.name(e).to_string(), e.stamp, e.blake3))
            .collect();
        ScanCache::store_written_at(
            root,
            files.iter().map(|(p, s, h)| (p.as_str(), *s, *h)),
            i64::MAX / 2,
        );
    }

    #[test]
    fn encode_parse_round_trip() {
        let files = [
            ("b/x", stamp(2), Blake3::of(b"2")),
            ("a", stamp(1), Blake3::of(b"1")),
            ("données/é", stamp(3), Blake3::of(b"3")),
        ];
        let bytes = ScanCache::encode(files.iter().copied(), i64::MAX / 2);
        let cache = ScanCache::parse(&bytes).expect("own encoding parses");
        assert_eq!(cache.len(), 3);
        for (p, s, h) in files {
            assert_eq!(cache.get(p, &s), Some(h), "{p}");
            let other = Stamp {
                ino: s.ino + 1,
                ..s
            };
            assert_eq!(cache.get(p, &other), None, "{p} with another inode");
        }
        assert_eq!(cache.get("c", &stamp(1)), None);
    }

    #[test]
    fn damaged_cache_bytes_are_refused_never_panic() {
        let files = [
            ("a", stamp(1), Blake3::of(b"1")),
            ("b", stamp(2), Blake3::of(b"2")),
        ];
        let good = ScanCache::encode(files.iter().copied(), i64::MAX / 2);
        // Every truncation, and every single flipped bit, is caught by the checksum.
        for n in 0..good.len() {
            assert!(ScanCache::parse(&good[..n]).is_none(), "truncated to {n}");
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(ScanCache::parse(&bad).is_none(), "bit {bit} of byte {i}");
            }
        }
        assert!(ScanCache::parse(b"").is_none());
        assert!(ScanCache::parse(b"patchkit-scan-cache-1\t1\n").is_none());
    }

    /// Re-checksums a hand-made body, so that the layout rules behind the checksum are tested.
    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        let sum = blake3::hash(&body);
        body.extend_from_slice(sum.as_bytes());
        body
    }

    fn header(count: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0i64.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b
    }

    fn entry(path: &[u8], len: u32) -> Vec<u8> {
        let mut b = vec![0u8; ENTRY_FIXED - 4];
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(path);
        b
    }

    #[test]
    fn well_sealed_but_invalid_layouts_are_refused() {
        let check = |body: Vec<u8>, why: &str| {
            assert!(ScanCache::parse(&sealed(body)).is_none(), "{why}");
        };
        check(header(u64::MAX), "count beyond the file");
        check(header(1), "count larger than the entries");
        let mut b = header(1);
        b.extend(entry(b"abc", u32::MAX));
        check(b, "path length beyond the file");
        let mut b = header(2);
        b.extend(entry(b"b", 1));
        b.extend(entry(b"a", 1));
        check(b, "unsorted");
        let mut b = header(2);
        b.extend(entry(b"a", 1));
        b.extend(entry(b"a", 1));
        check(b, "duplicate");
        let mut b = header(1);
        b.extend(entry(&[0xff, 0xfe], 2));
        check(b, "not UTF-8");
        let mut b = header(2);
        b.extend(entry(&[0xc3], 1));
        b.extend(entry(&[0xa9], 1));
        check(b, "a character split across two names");
        let mut b = header(0);
        b.push(0);
        check(b, "trailing bytes");
        let mut b = header(0);
        b[8] = 1;
        check(b, "another version");
        let mut ok = header(1);
        ok.extend(entry(b"a", 1));
        assert!(ScanCache::parse(&sealed(ok)).is_some());
    }

    #[test]
    fn cached_scan_matches_full_scan_and_sees_changes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::write(root.join("a"), b"one")?;
        std::fs::write(root.join("b"), b"two")?;
        let none = PathPatterns::empty();
        let full = scan(root, &none, Strictness::Install)?;
        let first = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        assert_eq!(first.entries, full.entries);
        assert!(cache_path(root).exists());
        // Entries written just now are racy: not trusted.
        let meta = std::fs::metadata(root.join("a"))?;
        assert!(ScanCache::load(root).get("a", &Stamp::of(&meta)).is_none());
        // Pretend the cache was written long after the files: entries become trusted.
        age_cache(root);
        let cache = ScanCache::load(root);
        assert!(cache.get("a", &Stamp::of(&meta)).is_some());
        // A changed file (new size) is hashed again.
        std::fs::write(root.join("a"), b"changed")?;
        let again = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        assert_eq!(
            again.entries,
            scan(root, &none, Strictness::Install)?.entries
        );
        // A damaged cache is ignored, and replaced.
        std::fs::write(cache_path(root), b"garbage\n1\t2")?;
        let damaged = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        assert_eq!(damaged.entries, again.entries);
        assert_eq!(ScanCache::load(root).len(), 2);
        Ok(())
    }

    /// A file rewritten with the same size (and, on a coarse clock, the same mtime) must not
    /// keep its old hash: its ctime and inode change.
    #[test]
    fn same_size_rewrite_is_hashed_again() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::write(root.join("a"), b"one")?;
        let none = PathPatterns::empty();
        scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        age_cache(root);
        let mtime = std::fs::metadata(root.join("a"))?.modified()?;
        // Replaced by rename (new inode), same size, same mtime.
        std::fs::write(root.join("a.new"), b"two")?;
        let f = std::fs::File::options()
            .write(true)
            .open(root.join("a.new"))?;
        f.set_modified(mtime)?;
        drop(f);
        std::fs::rename(root.join("a.new"), root.join("a"))?;
        let t = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        let want = formats::manifest::Node::File {
            size: 3,
            blake3: Blake3::of(b"two"),
            exec: false,
        };
        assert_eq!(t.entries.get(&formats::RelPath::new("a")?), Some(&want));
        // Rewritten in place (same inode), same size, same mtime: ctime moved.
        age_cache(root);
        let mtime = std::fs::metadata(root.join("a"))?.modified()?;
        let mut f = std::fs::File::options().write(true).open(root.join("a"))?;
        f.write_all(b"six")?;
        f.set_modified(mtime)?;
        drop(f);
        let t = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        let want = formats::manifest::Node::File {
            size: 3,
            blake3: Blake3::of(b"six"),
            exec: false,
        };
        assert_eq!(t.entries.get(&formats::RelPath::new("a")?), Some(&want));
        Ok(())
    }

    /// Verification after an update hashes the paths the update wrote even when their stamps
    /// match the cache, and takes the others from it.
    #[test]
    fn verify_rehashes_written_paths_and_trusts_the_rest() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::write(root.join("a"), b"one")?;
        std::fs::write(root.join("b"), b"two")?;
        let none = PathPatterns::empty();
        scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        // A cache whose (trusted) hashes are both wrong tells which files were hashed.
        let stamp_of = |n: &str| std::fs::metadata(root.join(n)).map(|m| Stamp::of(&m));
        let planted = [
            ("a", stamp_of("a")?, Blake3::of(b"planted a")),
            ("b", stamp_of("b")?, Blake3::of(b"planted b")),
        ];
        ScanCache::store_written_at(root, planted.iter().copied(), i64::MAX / 2);
        let written = std::collections::BTreeSet::from([formats::RelPath::new("a")?]);
        let t = scan_with(
            root,
            &none,
            Strictness::Install,
            CacheUse::Verify { written: &written },
        )?;
        let hash_of = |n: &str| match t.entries.get(&formats::RelPath::new(n).ok()?) {
            Some(formats::manifest::Node::File { blake3, .. }) => Some(*blake3),
            _ => None,
        };
        assert_eq!(hash_of("a"), Some(Blake3::of(b"one")));
        assert_eq!(hash_of("b"), Some(Blake3::of(b"planted b")));
        Ok(())
    }

    /// A warm scan with nothing changed does not rewrite the cache.
    #[test]
    fn unchanged_scan_leaves_the_cache_alone() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir(root.join("d"))?;
        std::fs::write(root.join("d/a"), b"one")?;
        std::fs::write(root.join("b"), b"two")?;
        let none = PathPatterns::empty();
        scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        age_cache(root);
        let before = std::fs::read(cache_path(root))?;
        let t = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        assert_eq!(t.entries, scan(root, &none, Strictness::Install)?.entries);
        assert_eq!(std::fs::read(cache_path(root))?, before);
        // A removed file makes it rewrite.
        std::fs::remove_file(root.join("b"))?;
        scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        assert_eq!(ScanCache::load(root).len(), 1);
        Ok(())
    }

    /// A link planted at the temp file's name is replaced, never followed.
    #[cfg(unix)]
    #[test]
    fn store_never_writes_through_a_planted_temp_link() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("app");
        let state = root.join(formats::layout::STATE_DIR);
        std::fs::create_dir_all(&state)?;
        let outside = dir.path().join("precious");
        std::fs::write(&outside, b"keep me")?;
        std::os::unix::fs::symlink(&outside, state.join(format!("{CACHE_FILE}.tmp")))?;
        let stamp = Stamp {
            size: 3,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: 1,
        };
        ScanCache::store(&root, [("a", stamp, Blake3::of(b"one"))].into_iter());
        assert_eq!(std::fs::read(&outside)?, b"keep me");
        assert_eq!(ScanCache::load(&root).len(), 1);
        Ok(())
    }
}
