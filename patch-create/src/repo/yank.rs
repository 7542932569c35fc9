//! `patch-create yank`: withdraw a release in signed metadata (docs/format.md §7.4).
//!
//! The yank is a field of the release manifest's target entry in the targets role, so it is
//! signed by the same keys as the release itself: a server or mirror cannot forge one or remove
//! one (TUF's version rules refuse an older targets document). Clients never install a yanked
//! release, and a client running one moves to the newest release that is not yanked, even an
//! older one. Nothing is deleted: the release's files stay, so clients that are mid-way keep
//! working and `--undo` restores it.

use std::path::Path;

use formats::keys::KeyPair;
use formats::layout;
use formats::tuf::{TargetCustom, Yank};
use formats::Version;

use crate::error::{Error, Result};
use crate::maintenance::open_for_edit;

/// Marks `version` as yanked with `reason` (`Some`) or lifts the yank (`None`), then signs and
/// commits new metadata valid for `expires`. Returns the release's new custom data.
pub fn yank(
    repo_path: &Path,
    keys: &[KeyPair],
    expires: time::Duration,
    version: &Version,
    reason: Option<&str>,
) -> Result<TargetCustom> {
    let refs: Vec<&KeyPair> = keys.iter().collect();
    let (mut repo, expires_at) = open_for_edit(repo_path, &refs, expires)?;
    let name = layout::manifest_target(version);
    let mut targets = repo.targets.clone();
    let Some(entry) = targets.targets.get_mut(&name) else {
        let known: Vec<String> = repo
            .releases()?
            .iter()
            .map(|(v, _)| v.to_string())
            .collect();
        return Err(Error::Repo {
            path: repo_path.to_path_buf(),
            reason: format!(
                "has no release {version} (releases: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        });
    };
    let mut custom = entry.patchkit(&name)?;
    match reason {
        Some(r) => {
            let y = Yank {
                reason: r.trim().to_string(),
                at: formats::time_util::format_tuf(formats::time_util::now()),
            };
            y.check(&format!("release {version}"))?;
            custom.yanked = Some(y);
        }
        None => {
            if custom.yanked.is_none() {
                return Err(Error::Repo {
                    path: repo_path.to_path_buf(),
                    reason: format!("release {version} is not yanked: nothing to undo"),
                });
            }
            custom.yanked = None;
        }
    }
    entry.custom = Some(serde_json::to_value(&custom).map_err(|e| Error::Repo {
        path: repo_path.to_path_buf(),
        reason: format!("cannot encode the custom data of {name}: {e}"),
    })?);
    repo.commit(targets, &refs, expires_at)?;
    Ok(custom)
}
