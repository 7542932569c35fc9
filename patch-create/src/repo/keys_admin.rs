//! Key and role administration of a repository (docs/keys.md): a root key (or several, with
//! a threshold) kept offline that names the release signing keys and their threshold; adding,
//! revoking and replacing release keys; changing thresholds; rotating the root key itself; and
//! re-signing the current metadata to extend its expiry without a new release.
//!
//! Every change to the keys writes a new root version `metadata/N+1.root.json`, signed by a
//! threshold of the current root keys *and* of the new root keys (TUF spec 5.3), then replaces
//! the `metadata/root.json` copy. Clients pinned to any earlier root key walk the chain.

use std::collections::BTreeSet;
use std::path::Path;

use formats::keys::{KeyPair, PublicKey};
use formats::layout::{self, METADATA_DIR};
use formats::limits::Limits;
use formats::tuf::{self, Role, RootMetadata, Signed};
use patch_apply::atomic;
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Error, IoContext, Result};
pub use crate::repo::{load_root_chain, RootVersion};
use crate::repo::{signers, Repo};

fn repo_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Repo {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn check_role_thresholds(repo: &Path, root: &RootMetadata) -> Result<()> {
    for role in Role::ALL {
        let rk = root.role_keys(role)?;
        if rk.threshold == 0 {
            return Err(repo_err(
                repo,
                format!("{} threshold must be at least 1", role.name()),
            ));
        }
        if rk.threshold as usize > rk.keyids.len() {
            return Err(repo_err(
                repo,
                format!(
                    "{} threshold {} is more than its {} key(s): nobody could sign",
                    role.name(),
                    rk.threshold,
                    rk.keyids.len()
                ),
            ));
        }
    }
    Ok(())
}

fn write_root(repo: &Path, signed: &Signed<RootMetadata>) -> Result<Vec<u8>> {
    let bytes = signed.to_canonical_bytes()?;
    let md = repo.join(METADATA_DIR);
    std::fs::create_dir_all(&md).at(&md)?;
    let versioned = repo.join(layout::root_file(signed.signed.version));
    if versioned.exists() {
        return Err(repo_err(
            repo,
            format!(
                "{} exists already; refusing to overwrite a root version",
                versioned.display()
            ),
        ));
    }
    atomic::write_file(&versioned, &bytes)?;
    atomic::write_file(&md.join("root.json"), &bytes)?;
    Ok(bytes)
}

/// What a key operation did.
#[derive(Clone, Debug, Serialize)]
pub struct RootReport {
    /// The new root version.
    pub root_version: u64,
    /// Its expiry.
    pub expires: String,
    /// Key ids of the root role, and its threshold.
    pub root_keys: Vec<String>,
    /// Root threshold.
    pub root_threshold: u32,
    /// Key ids allowed to sign releases (targets, snapshot, timestamp).
    pub release_keys: Vec<String>,
    /// Release threshold.
    pub release_threshold: u32,
}

impl RootReport {
    fn of(root: &RootMetadata) -> Result<Self> {
        let r = root.role_keys(Role::Root)?;
        let t = root.role_keys(Role::Targets)?;
        Ok(RootReport {
            root_version: root.version,
            expires: root.expires.clone(),
            root_keys: r.keyids.clone(),
            root_threshold: r.threshold,
            release_keys: t.keyids.clone(),
            release_threshold: t.threshold,
        })
    }
}

/// Creates the root of a new repository: `root_keys` (secret, all of them sign) hold the root
/// role with `root_threshold`; `release_keys` (public) hold the targets, snapshot and timestamp
/// roles with `threshold`. Writes `metadata/1.root.json` and `metadata/root.json`; the first
/// `patch-create release` (signed with enough release keys) adds the rest.
pub fn init(
    repo: &Path,
    root_keys: &[&KeyPair],
    root_threshold: u32,
    release_keys: &[PublicKey],
    threshold: u32,
    expires: OffsetDateTime,
) -> Result<RootReport> {
    let first = root_keys
        .first()
        .ok_or_else(|| repo_err(repo, "at least one root key is needed"))?;
    if release_keys.is_empty() {
        return Err(repo_err(repo, "at least one release key is needed"));
    }
    if repo.join(layout::root_file(1)).exists() {
        return Err(repo_err(repo, "already has metadata/1.root.json"));
    }
    crate::repo::check_new_repo_dir(repo)?;
    std::fs::create_dir_all(repo).at(repo)?;
    let _lock = crate::repo::lock(repo)?;
    let mut root = RootMetadata::new_single_key(&first.public(), 1, expires);
    let root_pubs: Vec<PublicKey> = root_keys.iter().map(|k| k.public()).collect();
    root.set_role(Role::Root, &root_pubs, root_threshold);
    for role in [Role::Targets, Role::Snapshot, Role::Timestamp] {
        root.set_role(role, release_keys, threshold);
    }
    check_role_thresholds(repo, &root)?;
    let keys = signers(&root, Role::Root, root_keys, repo)?;
    let signed = Signed::sign(root, &keys)?;
    write_root(repo, &signed)?;
    RootReport::of(&signed.signed)
}

/// A change to the keys of a repository.
#[derive(Clone, Debug)]
pub enum KeyChange {
    /// Allow another key to sign releases.
    AddReleaseKey(PublicKey),
    /// Stop trusting a release key (lost, compromised, or replaced).
    RevokeReleaseKey(PublicKey),
    /// Signatures needed on release metadata.
    SetReleaseThreshold(u32),
    /// Replace the root keys (and root threshold).
    SetRootKeys(Vec<PublicKey>, u32),
    /// Only extend the root's expiry.
    Extend,
}

/// Writes the next root version with `changes` applied and expiry `expires`. `signing` must
/// hold a threshold of the current root keys and a threshold of the new root keys (for a root
/// key rotation: the old and the new root key).
pub fn update_root(
    repo: &Path,
    signing: &[&KeyPair],
    changes: &[KeyChange],
    expires: OffsetDateTime,
) -> Result<RootReport> {
    let _lock = crate::repo::lock(repo)?;
    let chain = load_root_chain(repo)?;
    let current = chain
        .last()
        .ok_or_else(|| {
            repo_err(
                repo,
                "has no metadata/1.root.json (run `patch-create keys init` or a first release)",
            )
        })?
        .root
        .clone();
    let mut new = current.clone();
    new.version = current.version + 1;
    new.expires = formats::time_util::format_tuf(expires);
    for change in changes {
        apply_change(repo, &mut new, change)?;
    }
    check_role_thresholds(repo, &new)?;
    let old_signers = signers(&current, Role::Root, signing, repo)?;
    let new_signers = signers(&new, Role::Root, signing, repo)?;
    let mut all: Vec<&KeyPair> = Vec::new();
    let mut seen = BTreeSet::new();
    for k in old_signers.into_iter().chain(new_signers) {
        if seen.insert(k.public().key_id()) {
            all.push(k);
        }
    }
    let signed = Signed::sign(new, &all)?;
    let bytes = signed.to_canonical_bytes()?;
    let limits = Limits::default();
    let what = format!("{}.root.json", signed.signed.version);
    tuf::verify_role::<RootMetadata>(&what, &bytes, &current, &limits)?;
    tuf::verify_role::<RootMetadata>(&what, &bytes, &signed.signed, &limits)?;
    write_root(repo, &signed)?;
    RootReport::of(&signed.signed)
}

fn apply_change(repo: &Path, root: &mut RootMetadata, change: &KeyChange) -> Result<()> {
    let release_roles = [Role::Targets, Role::Snapshot, Role::Timestamp];
    let current_release: Vec<PublicKey> = {
        let rk = root.role_keys(Role::Targets)?;
        rk.keyids
            .iter()
            .filter_map(|id| root.keys.get(id).cloned())
            .collect()
    };
    let threshold = root.role_keys(Role::Targets)?.threshold;
    match change {
        KeyChange::AddReleaseKey(k) => {
            if current_release.iter().any(|c| c.key_id() == k.key_id()) {
                return Err(repo_err(
                    repo,
                    format!("key {} already signs releases", &k.key_id()[..12]),
                ));
            }
            let mut keys = current_release;
            keys.push(k.clone());
            for r in release_roles {
                root.set_role(r, &keys, threshold);
            }
        }
        KeyChange::RevokeReleaseKey(k) => {
            let id = k.key_id();
            if !current_release.iter().any(|c| c.key_id() == id) {
                return Err(repo_err(
                    repo,
                    format!("key {} does not sign releases", &id[..12]),
                ));
            }
            let keys: Vec<PublicKey> = current_release
                .into_iter()
                .filter(|c| c.key_id() != id)
                .collect();
            if keys.is_empty() {
                return Err(repo_err(
                    repo,
                    "cannot revoke the last release key: add its replacement first",
                ));
            }
            let t = threshold.min(keys.len() as u32);
            for r in release_roles {
                root.set_role(r, &keys, t);
            }
        }
        KeyChange::SetReleaseThreshold(t) => {
            for r in release_roles {
                root.set_role(r, &current_release, *t);
            }
        }
        KeyChange::SetRootKeys(keys, t) => {
            if keys.is_empty() {
                return Err(repo_err(repo, "at least one root key is needed"));
            }
            root.set_role(Role::Root, keys, *t);
        }
        KeyChange::Extend => {}
    }
    Ok(())
}

/// What `resign` did.
#[derive(Clone, Debug, Serialize)]
pub struct ResignReport {
    /// New targets metadata version.
    pub targets_version: u64,
    /// New snapshot version.
    pub snapshot_version: u64,
    /// New timestamp version.
    pub timestamp_version: u64,
    /// The new expiry.
    pub expires: String,
}

/// Signs the current targets again (top-level and every delegated role) as new targets,
/// snapshot and timestamp versions expiring at
/// `expires` (extends expiry without a release; also needed after release keys change).
pub fn resign(repo: &Path, keys: &[&KeyPair], expires: OffsetDateTime) -> Result<ResignReport> {
    let first = keys
        .first()
        .ok_or_else(|| repo_err(repo, "at least one --key is needed"))?;
    if !repo.join(layout::root_file(1)).exists() {
        return Err(repo_err(
            repo,
            "is not a repository (no metadata/1.root.json)",
        ));
    }
    let mut r = Repo::open_or_new(repo, first, expires)?;
    r.check_keys(keys)?;
    let targets = r.targets.clone();
    r.commit_resigning_all(targets, keys, expires)?;
    Ok(ResignReport {
        targets_version: r.targets.version,
        snapshot_version: r.snapshot_version,
        timestamp_version: r.timestamp_version,
        expires: formats::time_util::format_tuf(expires),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(n: u8) -> KeyPair {
        KeyPair::from_seed([n; 32])
    }

    fn later() -> OffsetDateTime {
        formats::time_util::now() + time::Duration::days(30)
    }

    #[test]
    fn threshold_above_key_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = init(dir.path(), &[&key(1)], 1, &[key(2).public()], 2, later()).unwrap_err();
        assert!(err.to_string().contains("nobody could sign"), "{err}");
        assert!(!dir.path().join("metadata/1.root.json").exists());
    }

    #[test]
    fn chain_of_changes_verifies_and_last_key_cannot_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (root, r2) = (key(1), key(9));
        init(
            dir.path(),
            &[&root],
            1,
            &[key(2).public(), key(3).public()],
            2,
            later(),
        )
        .unwrap();
        let rep = update_root(
            dir.path(),
            &[&root],
            &[KeyChange::RevokeReleaseKey(key(2).public())],
            later(),
        )
        .unwrap();
        assert_eq!((rep.root_version, rep.release_threshold), (2, 1));
        let err = update_root(
            dir.path(),
            &[&root],
            &[KeyChange::RevokeReleaseKey(key(3).public())],
            later(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("last release key"), "{err}");
        // Root rotation needs the old and the new root key.
        let change = [KeyChange::SetRootKeys(vec![r2.public()], 1)];
        assert!(update_root(dir.path(), &[&r2], &change, later()).is_err());
        update_root(dir.path(), &[&root, &r2], &change, later()).unwrap();
        let chain = load_root_chain(dir.path()).unwrap();
        assert_eq!(chain.len(), 3);
        assert_eq!(
            std::fs::read(dir.path().join("metadata/root.json")).unwrap(),
            chain[2].bytes
        );
    }
}
