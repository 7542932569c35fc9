//! The scan cache (`APP/.patchkit/scan-cache`): the BLAKE3 of every file of the last scan, keyed
//! by path and (size, mtime, ctime, inode), so that a no-op `check` of a large install stats its
//! files instead of hashing them. Entries whose times are within [`RACY_SECS`] of the scan
//! that wrote them are not trusted (a file changed in the same clock tick keeps its mtime).
//! A damaged or foreign cache file is ignored; writing it is best effort. Verification after an
//! update never reads the cache: it hashes what it wrote (and refreshes the cache).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use formats::Blake3;

/// File name of the cache inside the state directory.
pub const CACHE_FILE: &str = "scan-cache";
const HEADER: &str = "patchkit-scan-cache-1";
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

/// Hashes of the last scan.
#[derive(Debug, Default)]
pub struct ScanCache {
    entries: HashMap<String, (Stamp, Blake3)>,
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

impl ScanCache {
    /// Loads the cache of `root`; empty when missing or unreadable.
    pub fn load(root: &Path) -> ScanCache {
        std::fs::read_to_string(cache_path(root))
            .ok()
            .and_then(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    fn parse(s: &str) -> Option<ScanCache> {
        let mut lines = s.lines();
        let mut head = lines.next()?.split('\t');
        if head.next()? != HEADER {
            return None;
        }
        let written_ns = head.next()?.parse().ok()?;
        let mut entries = HashMap::new();
        for line in lines {
            let mut f = line.splitn(6, '\t');
            let size = f.next()?.parse().ok()?;
            let mtime_ns = f.next()?.parse().ok()?;
            let ctime_ns = f.next()?.parse().ok()?;
            let ino = f.next()?.parse().ok()?;
            let hash: Blake3 = f.next()?.parse().ok()?;
            let path = f.next()?.to_string();
            entries.insert(
                path,
                (
                    Stamp {
                        size,
                        mtime_ns,
                        ctime_ns,
                        ino,
                    },
                    hash,
                ),
            );
        }
        Some(ScanCache {
            entries,
            written_ns,
        })
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
        let (s, h) = self.entries.get(path)?;
        let racy = self.written_ns.saturating_sub(RACY_SECS * 1_000_000_000);
        (s == stamp && s.mtime_ns < racy && s.ctime_ns < racy).then_some(*h)
    }

    /// Writes the cache of `root` from `files` (best effort: errors are ignored).
    pub fn store<'a>(root: &Path, files: impl Iterator<Item = (&'a str, Stamp, Blake3)>) {
        let dir = root.join(formats::layout::STATE_DIR);
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let mut out = String::with_capacity(1 << 16);
        out.push_str(&format!("{HEADER}\t{}\n", now_ns()));
        for (p, s, h) in files {
            if p.contains('\n') || p.contains('\t') {
                continue;
            }
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{p}\n",
                s.size,
                s.mtime_ns,
                s.ctime_ns,
                s.ino,
                h.to_hex()
            ));
        }
        let tmp = dir.join(format!("{CACHE_FILE}.tmp"));
        let ok = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(out.as_bytes()))
            .is_ok();
        if ok {
            let _ = std::fs::rename(&tmp, dir.join(CACHE_FILE));
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan, scan_with, CacheUse, Strictness};
    use formats::patterns::PathPatterns;

    #[test]
    fn cached_scan_matches_full_scan_and_sees_changes(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::write(root.join("a"), b"one")?;
        std::fs::write(root.join("b"), b"two")?;
        let none = PathPatterns::empty();
        let full = scan(root, &none, Strictness::Install)?;
        let first = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        assert_eq!(first.entries, full.entries);
        assert!(cache_path(root).exists());
        // Pretend the cache was written long after the files: entries become trusted.
        let text = std::fs::read_to_string(cache_path(root))?;
        let aged = text.replacen(
            text.lines().next().unwrap_or_default(),
            &format!("{HEADER}\t{}", i64::MAX / 2),
            1,
        );
        std::fs::write(cache_path(root), aged)?;
        let cache = ScanCache::load(root);
        let meta = std::fs::metadata(root.join("a"))?;
        assert!(cache.get("a", &Stamp::of(&meta)).is_some());
        // A changed file (new size) is hashed again.
        std::fs::write(root.join("a"), b"changed")?;
        let again = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        assert_eq!(
            again.entries,
            scan(root, &none, Strictness::Install)?.entries
        );
        // A damaged cache is ignored.
        std::fs::write(cache_path(root), b"garbage\n1\t2")?;
        let damaged = scan_with(root, &none, Strictness::Install, CacheUse::Reuse)?;
        assert_eq!(damaged.entries, again.entries);
        Ok(())
    }
}
