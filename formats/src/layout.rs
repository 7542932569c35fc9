//! Where each file lives in a repository and in an app directory (docs/format.md §1).
//!
//! ```text
//! REPO/metadata/N.root.json          every root version (consistent snapshots)
//! REPO/metadata/root.json            copy of the newest root, for humans and tools
//! REPO/metadata/N.targets.json       targets metadata, version N
//! REPO/metadata/N.snapshot.json      snapshot metadata, version N
//! REPO/metadata/N.recent.json        delegated role `recent` (newest releases), version N
//! REPO/metadata/N.archive-NNNN.json  archive chunk NNNN (older releases), version N
//! REPO/metadata/timestamp.json       the only file ever replaced; written last
//! REPO/targets/DIR/SHA256.NAME       a TUF target DIR/NAME (hash-prefixed, immutable)
//! REPO/blobs/AB/BLAKE3.zst           repair file of content BLAKE3 (pinned by manifests)
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{Blake3, Sha256};
use crate::version::Version;

/// The updater's state directory at the root of an app dir.
pub const STATE_DIR: &str = ".patchkit";
/// Metadata directory of a repository.
pub const METADATA_DIR: &str = "metadata";
/// Targets directory of a repository.
pub const TARGETS_DIR: &str = "targets";
/// Repair blobs directory of a repository.
pub const BLOBS_DIR: &str = "blobs";
/// Target name of the repository settings file.
pub const REPOSITORY_TARGET: &str = "repository.json";

/// `Cache-Control` of content-addressed and versioned repository files (docs/format.md §9.1).
pub const IMMUTABLE_CACHE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of files replaced in place (`timestamp.json`, `root.json`) and of anything
/// not in the layout.
pub const MUTABLE_CACHE: &str = "no-cache";

/// `N.ROLE.json` → `ROLE` when `N` is a version number (a versioned metadata file name).
pub fn versioned_role(name: &str) -> Option<&str> {
    let (n, rest) = name.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.strip_suffix(".json")
}

/// Whether the repository-relative `path` always holds the same bytes: content-addressed files
/// (`targets/`, `blobs/`) and versioned metadata (`metadata/N.ROLE.json`). Everything else
/// (`timestamp.json`, `root.json`) is replaced in place. A leading `/` is ignored, so a URL
/// path works too.
pub fn is_immutable(path: &str) -> bool {
    let path = path.trim_start_matches('/');
    match path.strip_prefix("metadata/").filter(|n| !n.contains('/')) {
        Some(name) => versioned_role(name).is_some(),
        None => path.starts_with("targets/") || path.starts_with("blobs/"),
    }
}

/// The `Cache-Control` a server or object store gives `path` (see [`is_immutable`]).
pub fn cache_control(path: &str) -> &'static str {
    if is_immutable(path) {
        IMMUTABLE_CACHE
    } else {
        MUTABLE_CACHE
    }
}

/// The delegated targets role holding every target of the newest releases (docs/format.md
/// §7.2).
pub const RECENT_ROLE: &str = "recent";
/// The prefix of the archive chunk roles (`archive-0001`, `archive-0002`, ...).
pub const ARCHIVE_ROLE_PREFIX: &str = "archive-";
/// How many of the newest releases `recent` holds by default.
pub const DEFAULT_RECENT_RELEASES: usize = 4;
/// How many releases one archive chunk holds by default.
pub const DEFAULT_ARCHIVE_CHUNK: usize = 100;

/// The name of archive chunk `n` (1, 2, ...): `archive-0001`.
pub fn archive_role(n: u32) -> String {
    format!("{ARCHIVE_ROLE_PREFIX}{n:04}")
}

/// The number of an archive chunk role name (`archive-0012` → 12), `None` for other names.
pub fn archive_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(ARCHIVE_ROLE_PREFIX)?;
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// `metadata/V.NAME.json`: version `V` of delegated targets role `NAME` (consistent
/// snapshots; the names this format writes need no escaping).
pub fn delegated_file(name: &str, version: u64) -> String {
    format!("{METADATA_DIR}/{version}.{name}.json")
}

/// `metadata/N.root.json`.
pub fn root_file(version: u64) -> String {
    format!("{METADATA_DIR}/{version}.root.json")
}

/// Target name of a release manifest.
pub fn manifest_target(v: &Version) -> String {
    format!("{v}/manifest.json")
}

/// Target name of a release's installer.
pub fn installer_target(v: &Version) -> String {
    format!("{v}/installer.tar.zst")
}

/// Target name of the patch from `from` to `to`.
pub fn patch_target(from: &Version, to: &Version) -> String {
    format!("{to}/patch-from-{from}.patch")
}

/// The repository-relative path of a target stored under its SHA-256 prefix
/// (`targets/DIR/SHA256.NAME`).
pub fn target_file(target: &str, sha256: &Sha256) -> String {
    match target.rsplit_once('/') {
        Some((dir, base)) => format!("{TARGETS_DIR}/{dir}/{sha256}.{base}"),
        None => format!("{TARGETS_DIR}/{sha256}.{target}"),
    }
}

/// The repository-relative path of the repair file for content `blake3`.
pub fn blob_path(content: &Blake3) -> String {
    let h = content.to_hex();
    format!("{BLOBS_DIR}/{}/{h}.zst", &h[..2])
}

/// Checks that a target name is one this format writes: `/`-separated plain components.
pub fn check_target_name(name: &str) -> Result<()> {
    crate::relpath::RelPath::new(name).map(|_| ())
}

/// Repository-wide settings, the `repository.json` target (docs/format.md §7.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryInfo {
    /// Always `patchkit-repository-1`.
    pub format: String,
    /// The application's name; a client refuses a repository of another app.
    pub app: String,
    /// Set while the repository is under maintenance: clients do not update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Other base URLs serving the same repository, tried after the one in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
}

/// The `format` of [`RepositoryInfo`].
pub const REPOSITORY_FORMAT: &str = "patchkit-repository-1";

impl RepositoryInfo {
    /// Parses and checks; `what` names the file.
    pub fn from_json(what: &str, bytes: &[u8]) -> Result<Self> {
        let r: RepositoryInfo = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: what.into(),
            source: e,
        })?;
        if r.format != REPOSITORY_FORMAT {
            return Err(Error::invalid(
                what,
                format!("unknown format {:?}", r.format),
            ));
        }
        Ok(r)
    }
}

/// A maintenance notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// Message for the user.
    #[serde(default)]
    pub message: String,
    /// Whether the app may still start while updates are paused.
    pub app_may_start: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let v = Version::parse("1.2.0").unwrap();
        let s = Sha256::of(b"x");
        assert_eq!(
            target_file(&manifest_target(&v), &s),
            format!("targets/1.2.0/{s}.manifest.json")
        );
        assert_eq!(
            target_file("repository.json", &s),
            format!("targets/{s}.repository.json")
        );
        assert!(blob_path(&Blake3::of(b"x")).starts_with("blobs/"));
        assert_eq!(archive_role(3), "archive-0003");
        assert_eq!(archive_number("archive-0003"), Some(3));
        assert_eq!(archive_number("archive-12345"), Some(12345));
        for bad in [
            "archive-",
            "archive-12",
            "archive-0000",
            "archive-00x1",
            "recent",
        ] {
            assert_eq!(archive_number(bad), None, "{bad}");
        }
        assert_eq!(delegated_file("recent", 7), "metadata/7.recent.json");
    }
}
