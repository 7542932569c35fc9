//! `patch-create maintenance` and `patch-create mirrors`: change the signed repository settings
//! (`repository.json`, docs/format.md §7.5) without a release.
//!
//! The new settings are written as a new content-addressed target, then new targets, snapshot
//! and timestamp metadata are signed and committed ([`Repo::commit`]), so clients see the change
//! with their next refresh and can trust it like any release.

use std::path::Path;

use formats::keys::KeyPair;
use formats::layout::{self, Maintenance, RepositoryInfo, REPOSITORY_TARGET};

use crate::error::{Error, Result};
use crate::repo::Repo;

/// Rewrites the settings of the existing repository at `repo_path` with `change`, signs and
/// commits new metadata valid for `expires`. Returns the new settings.
pub fn update_settings(
    repo_path: &Path,
    keys: &[KeyPair],
    expires: time::Duration,
    change: impl FnOnce(&mut RepositoryInfo),
) -> Result<RepositoryInfo> {
    let refs: Vec<&KeyPair> = keys.iter().collect();
    let (mut repo, expires_at) = open_for_edit(repo_path, &refs, expires)?;
    let mut info = match repo.info()? {
        Some(i) => i,
        None => {
            // A repository written by another tool: name the app after the releases' manifests.
            let app = match repo.releases()?.last() {
                Some((v, _)) => repo.manifest(v)?.app,
                None => {
                    return Err(Error::Repo {
                        path: repo_path.to_path_buf(),
                        reason: "has neither repository settings nor a release".into(),
                    })
                }
            };
            Repo::default_info(&app)
        }
    };
    change(&mut info);
    let entry = repo.write_info(&info)?;
    let mut targets = repo.targets.clone();
    targets.targets.insert(REPOSITORY_TARGET.to_string(), entry);
    repo.commit(targets, &refs, expires_at)?;
    Ok(info)
}

/// Opens an existing repository for a signed change without a release: refuses a directory
/// that holds no repository yet and keys that cannot sign its targets. Returns the repository
/// and the expiry of the metadata to write.
pub fn open_for_edit(
    repo_path: &Path,
    keys: &[&KeyPair],
    expires: time::Duration,
) -> Result<(Repo, time::OffsetDateTime)> {
    let first = keys.first().ok_or_else(|| Error::Repo {
        path: repo_path.to_path_buf(),
        reason: "no signing key given".into(),
    })?;
    if !repo_path
        .join(layout::METADATA_DIR)
        .join("timestamp.json")
        .exists()
    {
        return Err(Error::Repo {
            path: repo_path.to_path_buf(),
            reason: "is not a repository yet (no metadata/timestamp.json): release a version first"
                .into(),
        });
    }
    let expires_at = formats::time_util::now() + expires;
    let repo = Repo::open_or_new(repo_path, first, expires_at)?;
    repo.check_keys(keys)?;
    Ok((repo, expires_at))
}

/// Puts the repository under maintenance (`Some`) or ends it (`None`).
pub fn set_maintenance(
    repo_path: &Path,
    keys: &[KeyPair],
    expires: time::Duration,
    maintenance: Option<Maintenance>,
) -> Result<RepositoryInfo> {
    update_settings(repo_path, keys, expires, |i| i.maintenance = maintenance)
}

/// Replaces the list of mirrors clients try after the repository URL they were given. Each
/// must be an `http://` or `https://` URL.
pub fn set_mirrors(
    repo_path: &Path,
    keys: &[KeyPair],
    expires: time::Duration,
    mirrors: Vec<String>,
) -> Result<RepositoryInfo> {
    for m in &mirrors {
        if !(m.starts_with("http://") || m.starts_with("https://")) {
            return Err(Error::Repo {
                path: repo_path.to_path_buf(),
                reason: format!("mirror {m:?} is not an http:// or https:// URL"),
            });
        }
    }
    update_settings(repo_path, keys, expires, |i| i.mirrors = mirrors)
}
