//! What a verified targets metadata offers: releases, patches, installers, settings.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use formats::layout::{self, RepositoryInfo, REPOSITORY_TARGET};
use formats::limits::Limits;
use formats::manifest::ReleaseManifest;
use formats::tuf::{TargetCustom, TargetFile, TargetKind, TargetsMetadata};
use formats::Version;

use crate::error::{Error, Result};
use crate::transport::{missing_or_other_bytes, not_as_signed, Expected, Transport};

/// One release listed in the repository.
#[derive(Clone, Debug)]
pub struct ReleaseRef {
    /// Its version.
    pub version: Version,
    /// Target name of its manifest.
    pub manifest_name: String,
    /// Its manifest target.
    pub manifest: TargetFile,
    /// Custom data of the manifest target (tree digest, ignore patterns, channel, targeting).
    pub custom: TargetCustom,
    /// Its installer, if present.
    pub installer: Option<(String, TargetFile)>,
}

/// One incremental patch.
#[derive(Clone, Debug)]
pub struct PatchEdge {
    /// Version it applies to.
    pub from: Version,
    /// Version it produces.
    pub to: Version,
    /// Target name.
    pub name: String,
    /// Target entry.
    pub target: TargetFile,
}

/// The repository as listed by verified targets metadata.
#[derive(Clone, Debug, Default)]
pub struct RepoView {
    /// Releases, oldest first.
    pub releases: Vec<ReleaseRef>,
    /// Patches.
    pub patches: Vec<PatchEdge>,
    /// The repository settings target, if listed.
    pub info_target: Option<TargetFile>,
}

impl RepoView {
    /// Indexes verified targets metadata.
    pub fn from_targets(t: &TargetsMetadata) -> Result<Self> {
        let mut view = RepoView::default();
        let mut installers = BTreeMap::new();
        for (name, target) in &t.targets {
            if name == REPOSITORY_TARGET {
                view.info_target = Some(target.clone());
                continue;
            }
            let Ok(c) = target.patchkit(name) else {
                continue; // Targets added by other tools are not ours to interpret.
            };
            let need_version = || {
                c.version
                    .clone()
                    .ok_or_else(|| Error::bad(name.as_str(), "target has no version"))
            };
            match c.kind {
                TargetKind::Manifest => view.releases.push(ReleaseRef {
                    version: need_version()?,
                    manifest_name: name.clone(),
                    manifest: target.clone(),
                    custom: c.clone(),
                    installer: None,
                }),
                TargetKind::Installer => {
                    installers.insert(need_version()?, (name.clone(), target.clone()));
                }
                TargetKind::Patch => {
                    let from = c
                        .from
                        .clone()
                        .ok_or_else(|| Error::bad(name.as_str(), "patch target has no `from`"))?;
                    let to = need_version()?;
                    if from >= to {
                        return Err(Error::bad(
                            name.as_str(),
                            "patch does not lead to a newer version",
                        ));
                    }
                    view.patches.push(PatchEdge {
                        from,
                        to,
                        name: name.clone(),
                        target: target.clone(),
                    });
                }
                TargetKind::Repository => {}
            }
        }
        for r in &mut view.releases {
            r.installer = installers.remove(&r.version);
        }
        view.releases.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(view)
    }

    /// The release with version `v`.
    pub fn find(&self, v: &Version) -> Option<&ReleaseRef> {
        self.releases.iter().find(|r| &r.version == v)
    }

    /// The newest release this client may install: not yanked, same channel (a release
    /// without channel is on `stable`) and every targeting constraint met by the client's
    /// attributes.
    pub fn latest_for(
        &self,
        channel: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Option<&ReleaseRef> {
        self.releases
            .iter()
            .rev()
            .find(|r| r.custom.yanked.is_none() && eligible(r, channel, attrs))
    }

    /// The newest release that is not yanked, whether or not this client may install it.
    pub fn newest(&self) -> Option<&ReleaseRef> {
        self.releases
            .iter()
            .rev()
            .find(|r| r.custom.yanked.is_none())
    }

    /// Whether a view of the newest releases only (docs/format.md §7.3) is not enough: the
    /// install record's release `recorded` or the requested release `wanted` is not among
    /// them, or none of them is one this client may install.
    pub fn needs_older(
        &self,
        recorded: Option<&Version>,
        wanted: Option<&Version>,
        channel: &str,
        attrs: &BTreeMap<String, String>,
    ) -> bool {
        recorded.is_some_and(|v| self.find(v).is_none())
            || wanted.is_some_and(|v| self.find(v).is_none())
            || self.latest_for(channel, attrs).is_none()
    }

    /// The signed yank of release `v`, if it was withdrawn.
    pub fn yank_of(&self, v: &Version) -> Option<&formats::tuf::Yank> {
        self.find(v).and_then(|r| r.custom.yanked.as_ref())
    }
}

/// Whether a client on `channel` with `attrs` may install `r`.
pub fn eligible(r: &ReleaseRef, channel: &str, attrs: &BTreeMap<String, String>) -> bool {
    let rc = r.custom.channel.as_deref().unwrap_or("stable");
    rc == channel
        && r.custom
            .targeting
            .iter()
            .all(|(k, v)| attrs.get(k) == Some(v))
}

/// What a target must be when downloaded.
pub fn expected(name: &str, t: &TargetFile) -> Result<Expected> {
    Ok(Expected::pinned(t.pin(name)?, Some(t.sha256()?)))
}

/// The repository path of a target (hash-prefixed).
pub fn target_path(name: &str, t: &TargetFile) -> Result<String> {
    Ok(layout::target_file(name, &t.sha256()?))
}

/// Fetches a small target into memory and checks its length and hashes.
/// A target that is missing or has other bytes is [`not_as_signed`] ("try again").
pub fn fetch_small(tr: &dyn Transport, name: &str, t: &TargetFile) -> Result<Vec<u8>> {
    let path = target_path(name, t)?;
    let url = format!("{}/{path}", tr.describe());
    let fetched = tr
        .get_small(&path, t.length)
        .and_then(|b| b.ok_or_else(|| Error::NotFound { url: url.clone() }))
        .and_then(|b| check_small(&url, name, t, &b).map(|()| b));
    fetched.map_err(|e| match missing_or_other_bytes(&e) {
        Some(what) => not_as_signed(url.clone(), &what, "targets metadata"),
        None => e,
    })
}

/// Checks `bytes` (named `what` in errors) against the length, BLAKE3 pin and SHA-256 of
/// target `name`.
fn check_small(what: &str, name: &str, t: &TargetFile, bytes: &[u8]) -> Result<()> {
    t.pin(name)?.check(what, bytes)?;
    let sha = formats::Sha256::of(bytes);
    if sha != t.sha256()? {
        return Err(Error::Format(formats::Error::HashMismatch {
            what: what.to_string(),
            algorithm: "sha256",
            expected: t.sha256()?.to_hex(),
            actual: sha.to_hex(),
        }));
    }
    Ok(())
}

/// The copy of small target `name` kept in `dir` (file `name`), if it is there and matches
/// the target's signed length and hashes; nothing past the signed length is read.
fn kept_small(dir: &Path, name: &str, t: &TargetFile) -> Option<Vec<u8>> {
    let p = dir.join(name);
    let f = crate::state::open_state_file(&p, std::fs::OpenOptions::new().read(true)).ok()?;
    let mut bytes = Vec::new();
    f.take(t.length.saturating_add(1))
        .read_to_end(&mut bytes)
        .ok()?;
    check_small(&p.display().to_string(), name, t, &bytes)
        .ok()
        .map(|()| bytes)
}

/// Fetches and parses a release manifest, checking it names the expected app and version.
pub fn fetch_manifest(
    tr: &dyn Transport,
    r: &ReleaseRef,
    limits: &Limits,
) -> Result<ReleaseManifest> {
    let bytes = fetch_small(tr, &r.manifest_name, &r.manifest)?;
    let m = ReleaseManifest::from_json(&r.manifest_name, &bytes, limits)?;
    if m.version != r.version {
        return Err(Error::bad(
            &r.manifest_name,
            format!(
                "manifest says version {}, targets metadata says {}",
                m.version, r.version
            ),
        ));
    }
    if Some(m.tree_digest()) != r.custom.tree {
        return Err(Error::bad(
            &r.manifest_name,
            "tree digest differs from targets metadata",
        ));
    }
    Ok(m)
}

/// Fetches and parses the repository settings.
pub fn fetch_info(tr: &dyn Transport, view: &RepoView) -> Result<Option<RepositoryInfo>> {
    let Some(t) = &view.info_target else {
        return Ok(None);
    };
    let bytes = fetch_small(tr, REPOSITORY_TARGET, t)?;
    Ok(Some(RepositoryInfo::from_json(REPOSITORY_TARGET, &bytes)?))
}

/// Like [`fetch_info`], without a request while `keep_dir/repository.json` (the copy verified
/// on an earlier run) still matches the length and hashes the verified targets pin: a
/// repository whose settings did not change costs nothing. A fetched copy is kept there once
/// verified (when `keep_dir` exists; best effort). The kept copy is checked against the pin on
/// every use, so one that does not match it is never used (docs/format.md §7.3).
pub fn fetch_info_kept(
    tr: &dyn Transport,
    view: &RepoView,
    keep_dir: &Path,
) -> Result<Option<RepositoryInfo>> {
    let Some(t) = &view.info_target else {
        return Ok(None);
    };
    let bytes = match kept_small(keep_dir, REPOSITORY_TARGET, t) {
        Some(b) => b,
        None => {
            let b = fetch_small(tr, REPOSITORY_TARGET, t)?;
            if keep_dir.is_dir() {
                if let Err(e) = crate::atomic::write_files(keep_dir, &[(REPOSITORY_TARGET, &b)]) {
                    tracing::warn!("cannot keep {REPOSITORY_TARGET}: {e}");
                }
            }
            b
        }
    };
    Ok(Some(RepositoryInfo::from_json(REPOSITORY_TARGET, &bytes)?))
}
