//! Which releases an app's signed repository offers, read with the updater's own verified
//! code (`patch_apply::trust` and `repo_view`), under the app's pinned public key. The server
//! keeps its own trust state per app under `DATA/trust/<app>/` (rollback protection, like a
//! device) and never holds a release key.

use std::path::{Path, PathBuf};

use formats::keys::PublicKey;
use formats::limits::Limits;
use patch_apply::repo_view::RepoView;
use patch_apply::trust::{self, StoredTrust};

use crate::db::Db;
use crate::decide::Release;

/// The trust directory of `app` under the data directory.
pub fn trust_dir(data: &Path, app: &str) -> PathBuf {
    data.join("trust").join(app)
}

/// Refreshes the verified metadata of `repo` under `key` (trust state in `trust`) and returns
/// every release it offers, whichever delegated role lists it (docs/format.md §7.2), with the
/// transport it was read through. Blocking (network and disk).
pub fn verified_view(
    repo: &str,
    key: &PublicKey,
    trust: &Path,
) -> Result<(Box<dyn patch_apply::transport::Transport>, RepoView), String> {
    let transport = patch_apply::fetch::open(repo).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(trust).map_err(|e| format!("{}: {e}", trust.display()))?;
    let stored = StoredTrust::load(trust).map_err(|e| e.to_string())?;
    let limits = Limits::default();
    let (set, new_stored) = trust::refresh(
        transport.as_ref(),
        std::slice::from_ref(key),
        &stored,
        formats::time_util::now(),
        &limits,
    )
    .map_err(|e| e.to_string())?;
    new_stored
        .save_changes(trust, &stored)
        .map_err(|e| e.to_string())?;
    let listed = trust::release_targets(
        transport.as_ref(),
        &set,
        &stored,
        &mut trust::DelegatedCache::new(),
        trust::Listing::All,
        &limits,
    )
    .map_err(|e| e.to_string())?;
    let view = RepoView::from_targets(&listed.targets).map_err(|e| e.to_string())?;
    Ok((transport, view))
}

/// Refreshes the verified metadata of `repo` and lists its releases. Blocking (network and
/// disk); call it from a blocking thread.
pub fn offered(repo: &str, key: &PublicKey, trust: &Path) -> Result<Vec<Release>, String> {
    let (_, view) = verified_view(repo, key, trust)?;
    Ok(view
        .releases
        .iter()
        .map(|r| Release {
            version: r.version.clone(),
            channel: r.custom.channel.clone().unwrap_or_else(|| "stable".into()),
            targeting: r.custom.targeting.clone(),
            yanked: r.custom.yanked.as_ref().map(|y| y.reason.clone()),
        })
        .collect())
}

/// Parses a public key file's bytes (TUF key JSON).
pub fn parse_key(bytes: &[u8]) -> Result<PublicKey, String> {
    PublicKey::from_json("public_key", bytes).map_err(|e| e.to_string())
}

/// Refreshes the releases of the app `name` and stores them in the database; on failure the
/// error is stored too (the cached releases stay) and returned.
pub async fn refresh_app(db: &Db, data: &Path, name: &str) -> Result<usize, String> {
    let app = db
        .app(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no app {name}"))?;
    let key = parse_key(app.public_key.as_bytes())?;
    let dir = trust_dir(data, name);
    let repo = app.repo.clone();
    let got = tokio::task::spawn_blocking(move || offered(&repo, &key, &dir))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match got {
        Ok(releases) => {
            db.set_releases(name, &releases, crate::util::now_ms())
                .await
                .map_err(|e| e.to_string())?;
            Ok(releases.len())
        }
        Err(e) => {
            let msg = format!("{}: {e}", app.repo);
            if let Err(db_err) = db.set_releases_error(name, &msg).await {
                tracing::warn!("cannot record refresh error of {name}: {db_err}");
            }
            Err(msg)
        }
    }
}

/// Refreshes every app's releases (the periodic task).
pub async fn refresh_all(db: &Db, data: &Path) {
    let apps = match db.apps().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("cannot list apps to refresh: {e}");
            return;
        }
    };
    for app in apps {
        match refresh_app(db, data, &app.name).await {
            Ok(n) => tracing::debug!("{}: {n} releases", app.name),
            Err(e) => tracing::warn!("refresh of {} failed: {e}", app.name),
        }
    }
}
