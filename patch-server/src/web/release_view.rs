//! What the releases page shows about each release, read from the app's signed repository
//! with the updater's verified code (as `crate::releases` does): notes, links, the signed
//! yank, the patches that lead to it, and what changed from the previous release according
//! to the two signed manifests. Blocking (network and disk): run it on a blocking thread.
//! Manifests that verified once are kept in memory by their signed hash ([`MANIFEST_CACHE`]),
//! so a view reads only the (small, conditional) metadata again.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use formats::keys::PublicKey;
use formats::limits::Limits;
use formats::manifest::{Node, ReleaseManifest};
use patch_apply::repo_view;

/// Releases shown on the page (newest first); older ones are listed without details.
pub const MAX_DETAILED: usize = 20;
/// Changed paths named per release; the counts are always complete.
pub const MAX_PATHS: usize = 50;
/// Parsed manifests kept in memory; the cache starts over when it is full.
pub const MANIFEST_CACHE: usize = 256;

/// Key of a cached manifest: repository, target name, and the length and hashes the signed
/// targets metadata pins (a manifest signed anew with other bytes is another key).
type ManifestKey = (String, String, String);

/// Manifests that verified, by [`ManifestKey`].
static MANIFESTS: LazyLock<Mutex<HashMap<ManifestKey, Arc<ReleaseManifest>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The manifest of `r`, from the cache when its pinned hash was verified before, else fetched
/// and verified through the updater's code (then cached). Errors are not cached.
fn manifest(
    repo: &str,
    tr: &dyn patch_apply::transport::Transport,
    r: &repo_view::ReleaseRef,
    limits: &Limits,
) -> Result<Arc<ReleaseManifest>, String> {
    let pins = format!("{} {:?}", r.manifest.length, r.manifest.hashes);
    let key = (repo.to_string(), r.manifest_name.clone(), pins);
    if let Some(m) = MANIFESTS.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(m);
    }
    let m = Arc::new(repo_view::fetch_manifest(tr, r, limits).map_err(|e| e.to_string())?);
    if let Ok(mut c) = MANIFESTS.lock() {
        if c.len() >= MANIFEST_CACHE {
            c.clear();
        }
        c.insert(key, Arc::clone(&m));
    }
    Ok(m)
}

/// A link from the release notes: `href` only for `http(s)://` URLs, otherwise shown as text.
#[derive(Debug, Clone)]
pub struct Link {
    /// The text as written in the manifest.
    pub text: String,
    /// The URL to link to, when it is an http or https URL.
    pub href: Option<String>,
}

/// What changed from the previous release.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The release compared with.
    pub from: Option<String>,
    /// Paths added.
    pub added: usize,
    /// Paths removed.
    pub removed: usize,
    /// Paths whose content or kind changed.
    pub changed: usize,
    /// Bytes of the new release's files.
    pub size: u64,
    /// Up to [`MAX_PATHS`] changes: `("+"|"-"|"~", path)`.
    pub paths: Vec<(&'static str, String)>,
}

/// One release in detail.
#[derive(Debug, Clone)]
pub struct ReleaseDetail {
    /// Version.
    pub version: String,
    /// Channel.
    pub channel: String,
    /// Yank reason and time, if yanked.
    pub yanked: Option<(String, String)>,
    /// Release notes lines.
    pub notes: Vec<String>,
    /// Links.
    pub links: Vec<Link>,
    /// Patches leading here: `(from version, bytes)`.
    pub patches: Vec<(String, u64)>,
    /// Changes from the previous release, when both manifests were read.
    pub changes: Option<Changes>,
    /// Why the manifest could not be read, if it could not.
    pub error: Option<String>,
}

/// A link as shown: only `http://` and `https://` URLs become links.
pub fn link(text: &str) -> Link {
    let lower = text.to_ascii_lowercase();
    let ok = (lower.starts_with("https://") || lower.starts_with("http://"))
        && !text.chars().any(|c| c.is_whitespace() || c.is_control());
    Link {
        text: text.to_string(),
        href: ok.then(|| text.to_string()),
    }
}

fn node_key(n: &Node) -> String {
    match n {
        Node::File { size, blake3, exec } => format!("f:{size}:{blake3:?}:{exec}"),
        Node::Dir => "d".into(),
        Node::Symlink { target } => format!("l:{target}"),
    }
}

fn note(c: &mut Changes, mark: &'static str, p: &str) {
    if c.paths.len() < MAX_PATHS {
        c.paths.push((mark, p.to_string()));
    }
}

/// What changed between two manifests.
pub fn changes(prev: Option<&ReleaseManifest>, cur: &ReleaseManifest) -> Changes {
    let size = cur
        .entries
        .iter()
        .map(|e| match e.node {
            Node::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    let Some(prev) = prev else {
        return Changes {
            size,
            added: cur.entries.len(),
            ..Default::default()
        };
    };
    let old: BTreeMap<&str, String> = prev
        .entries
        .iter()
        .map(|e| (e.path.as_str(), node_key(&e.node)))
        .collect();
    let new: BTreeMap<&str, String> = cur
        .entries
        .iter()
        .map(|e| (e.path.as_str(), node_key(&e.node)))
        .collect();
    let mut c = Changes {
        from: Some(prev.version.to_string()),
        size,
        ..Default::default()
    };
    for (p, k) in &new {
        match old.get(p) {
            None => {
                c.added += 1;
                note(&mut c, "+", p);
            }
            Some(o) if o != k => {
                c.changed += 1;
                note(&mut c, "~", p);
            }
            Some(_) => {}
        }
    }
    for p in old.keys() {
        if !new.contains_key(p) {
            c.removed += 1;
            note(&mut c, "-", p);
        }
    }
    c
}

/// Reads the verified repository of an app and describes its newest [`MAX_DETAILED`]
/// releases, newest first.
pub fn describe(
    repo: &str,
    key: &PublicKey,
    trust_dir: &Path,
) -> Result<Vec<ReleaseDetail>, String> {
    let (transport, view) = crate::releases::verified_view(repo, key, trust_dir)?;
    let limits = Limits::default();
    let n = view.releases.len();
    let first = n.saturating_sub(MAX_DETAILED + 1);
    // Oldest first, so each release is compared with the one before it.
    let mut prev: Option<Arc<ReleaseManifest>> = None;
    let mut out = Vec::new();
    for (i, r) in view.releases.iter().enumerate().skip(first) {
        let manifest = manifest(repo, transport.as_ref(), r, &limits);
        let mut patches: Vec<(String, u64)> = view
            .patches
            .iter()
            .filter(|p| p.to == r.version)
            .map(|p| (p.from.to_string(), p.target.length))
            .collect();
        patches.sort();
        let (notes, links, changes, error) = match &manifest {
            Ok(m) => (
                m.notes.clone(),
                m.links.iter().map(|l| link(l)).collect(),
                Some(self::changes(prev.as_deref(), m)),
                None,
            ),
            Err(e) => (Vec::new(), Vec::new(), None, Some(e.clone())),
        };
        prev = manifest.ok();
        if i == first && first > 0 {
            continue; // only read to compare the next one with
        }
        out.push(ReleaseDetail {
            version: r.version.to_string(),
            channel: r.custom.channel.clone().unwrap_or_else(|| "stable".into()),
            yanked: r
                .custom
                .yanked
                .as_ref()
                .map(|y| (y.reason.clone(), y.at.clone())),
            notes,
            links,
            patches,
            changes,
            error,
        });
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_become_links() {
        for (text, linked) in [
            ("https://example.com/issue/1", true),
            ("HTTP://example.com", true),
            ("javascript:alert(1)", false),
            ("data:text/html,<script>", false),
            ("https://x y", false),
            ("//example.com", false),
        ] {
            assert_eq!(link(text).href.is_some(), linked, "{text}");
        }
    }
}
