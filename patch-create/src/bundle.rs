//! `patch-create bundle`: one file for machines without network (docs/format.md §10).
//!
//! The repository is read the way a client reads it (`patch_apply::trust::refresh` over the
//! directory, so a bundle is only made of metadata that verifies and has not expired), then
//! the bundle gets: every `N.root.json`, `timestamp.json`, the snapshot, every targets role the
//! snapshot lists (top-level and delegated, whatever their names), the repository settings,
//! the manifests of the versions involved, and for each `--from` version what the client's
//! planner needs to reach the newest release: the patches of the cheapest chain
//! ([`patch_apply::plan::cheapest_chain`]); without a chain, whichever of the repair files of
//! the changed files and the installer the client would pick (the cheaper). With
//! `--with-repair-files` also the repair file of every file of the release (for installs whose
//! files were modified, and as a fallback when a patch fails).
//!
//! May use: `error` (and `patch_apply`'s trust, plan and bundle writer).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use formats::keys::PublicKey;
use formats::layout::{self, METADATA_DIR, REPOSITORY_TARGET};
use formats::limits::Limits;
use formats::manifest::{Node, ReleaseManifest};
use formats::tuf::{TargetsMetadata, TrustedSet};
use formats::Version;
use patch_apply::fetch::bundle::{BundleIndex, BundleWriter, BUNDLE_FORMAT};
use patch_apply::repo_view::{self, RepoView};
use patch_apply::transport::{DirTransport, Transport};
use patch_apply::trust::{self, StoredTrust};
use serde::Serialize;

use crate::error::{Error, Result};

/// What `patch-create bundle` should make.
#[derive(Clone, Debug)]
pub struct BundleOptions {
    /// The repository directory.
    pub repo: PathBuf,
    /// Versions installs start from.
    pub from: Vec<Version>,
    /// The release to reach (default: the newest release that is not yanked).
    pub to: Option<Version>,
    /// The bundle file to write.
    pub out: PathBuf,
    /// Root public keys to check the repository against (default: its own first root).
    pub public_keys: Vec<PublicKey>,
    /// Also the repair file of every file of the target release.
    pub with_repair_files: bool,
}

/// How one `--from` version reaches the target.
#[derive(Clone, Debug, Serialize)]
pub struct BundlePath {
    /// The starting version.
    pub from: String,
    /// `incremental`, `repair`, `installer` or `none` (already there).
    pub method: String,
    /// The versions the patch chain passes through (incremental only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Bytes of the artifacts this path needs.
    pub bytes: u64,
}

/// What was written.
#[derive(Clone, Debug, Serialize)]
pub struct BundleSummary {
    /// The bundle file.
    pub out: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Repository files in it.
    pub files: u64,
    /// The release it leads to.
    pub to: String,
    /// How each starting version gets there.
    pub paths: Vec<BundlePath>,
    /// When it was made.
    pub created: String,
    /// The earliest expiry of its metadata.
    pub expires: String,
}

fn repo_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Repo {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn md(name: &str) -> String {
    format!("{METADATA_DIR}/{name}")
}

/// One targets metadata file to copy.
struct RoleFile {
    /// Its name in `metadata/`.
    file: String,
    /// Its bytes.
    bytes: Vec<u8>,
    /// The verified document, when a delegation reached it.
    doc: Option<TargetsMetadata>,
}

/// Every targets role the snapshot lists, verified through the delegations that reach it.
/// Roles listed but not delegated by anyone reached are still copied (a client that follows
/// them finds them), without their targets.
fn targets_roles(t: &DirTransport, set: &TrustedSet, limits: &Limits) -> Result<Vec<RoleFile>> {
    let snapshot = set
        .snapshot()
        .ok_or_else(|| repo_err(Path::new(&t.describe()), "snapshot not loaded"))?;
    let top = set
        .targets()
        .ok_or_else(|| repo_err(Path::new(&t.describe()), "targets not loaded"))?;
    let (top_file, top_pin) = set.targets_file()?;
    let get = |file: &str, max: Option<u64>| -> Result<Vec<u8>> {
        let max = max
            .unwrap_or(limits.max_large_metadata)
            .min(limits.max_large_metadata);
        t.get_small(&md(file), max)?
            .ok_or_else(|| repo_err(Path::new(&t.describe()), format!("{} is missing", md(file))))
    };
    let mut out = vec![RoleFile {
        file: top_file.clone(),
        bytes: get(&top_file, top_pin.length)?,
        doc: Some(top.clone()),
    }];
    let mut done: BTreeSet<String> = BTreeSet::from(["targets".to_string()]);
    // Breadth first from the top-level role.
    let mut queue: Vec<TargetsMetadata> = vec![top.clone()];
    while let Some(delegator) = queue.pop() {
        let Some(d) = &delegator.delegations else {
            continue;
        };
        for role in d.roles.iter().flatten() {
            if done.contains(&role.name) || done.len() > snapshot.meta.len() {
                continue;
            }
            let Ok((file, pin)) = set.delegated_file(&role.name) else {
                continue; // Not listed by snapshot: a client does not follow it either.
            };
            let bytes = get(&file, pin.length)?;
            let doc = set.verify_delegated(&role.name, &delegator, &bytes)?;
            done.insert(role.name.clone());
            queue.push(doc.clone());
            out.push(RoleFile {
                file,
                bytes,
                doc: Some(doc),
            });
        }
    }
    for name in snapshot.meta.keys() {
        let Some(role) = name.strip_suffix(".json") else {
            continue;
        };
        if done.contains(role) {
            continue;
        }
        let (file, pin) = set.delegated_file(role)?;
        out.push(RoleFile {
            bytes: get(&file, pin.length)?,
            file,
            doc: None,
        });
    }
    Ok(out)
}

/// The newest release that is not yanked, or `want`, which must be listed and not yanked.
fn pick_target(repo: &Path, view: &RepoView, want: Option<&Version>) -> Result<Version> {
    match want {
        Some(v) => {
            let r = view
                .find(v)
                .ok_or_else(|| repo_err(repo, format!("has no release {v} (--to)")))?;
            if let Some(y) = &r.custom.yanked {
                return Err(repo_err(
                    repo,
                    format!("release {v} is yanked ({}); bundle another", y.reason),
                ));
            }
            Ok(v.clone())
        }
        None => view
            .newest()
            .map(|r| r.version.clone())
            .ok_or_else(|| repo_err(repo, "has no release that is not yanked")),
    }
}

/// Target files of `to` whose content differs from `from`'s at the same path: the files an
/// update from a pristine `from` writes. (content → repair file size), `None` when one of them
/// has no repair file.
fn changed_repair_files(
    from: &ReleaseManifest,
    to: &ReleaseManifest,
) -> Option<BTreeMap<formats::Blake3, u64>> {
    let old = from.by_path();
    let mut out = BTreeMap::new();
    for e in &to.entries {
        let Some(pin) = e.node.file_pin() else {
            continue;
        };
        let same = matches!(old.get(&e.path).map(|o| &o.node), Some(Node::File { blake3, .. }) if *blake3 == pin.blake3);
        if !same {
            out.insert(pin.blake3, e.repair?.size);
        }
    }
    Some(out)
}

/// Writes the bundle `o` describes.
pub fn bundle(o: &BundleOptions) -> Result<BundleSummary> {
    let limits = Limits::default();
    if o.from.is_empty() {
        return Err(repo_err(&o.repo, "no --from version given"));
    }
    let t = DirTransport::new(&o.repo);
    let mut stored = StoredTrust::default();
    if o.public_keys.is_empty() {
        // The release engineer's own repository: its first root is the anchor.
        stored.root = Some(
            t.get_small(&layout::root_file(1), limits.max_small_metadata)?
                .ok_or_else(|| repo_err(&o.repo, "metadata/1.root.json is missing"))?,
        );
    }
    let now = formats::time_util::now();
    let (set, _) = trust::refresh(&t, &o.public_keys, &stored, now, &limits)?;
    let roles = targets_roles(&t, &set, &limits)?;
    // Every target any role lists; the top-level role first, as a client's search finds it.
    let mut merged = set
        .targets()
        .cloned()
        .ok_or_else(|| repo_err(&o.repo, "targets not loaded"))?;
    for role in roles.iter().skip(1) {
        for (name, target) in role.doc.iter().flat_map(|d| &d.targets) {
            merged
                .targets
                .entry(name.clone())
                .or_insert_with(|| target.clone());
        }
    }
    let view = RepoView::from_targets(&merged)?;
    let to = pick_target(&o.repo, &view, o.to.as_ref())?;
    let known = || {
        view.releases
            .iter()
            .map(|r| r.version.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let to_ref = view
        .find(&to)
        .cloned()
        .ok_or_else(|| repo_err(&o.repo, format!("has no release {to}")))?;
    let to_manifest = repo_view::fetch_manifest(&t, &to_ref, &limits)?;
    // Repository path → size, of every artifact to copy.
    let mut artifacts: BTreeMap<String, u64> = BTreeMap::new();
    let mut add_target = |name: &str, tf: &formats::tuf::TargetFile| -> Result<u64> {
        artifacts.insert(repo_view::target_path(name, tf)?, tf.length);
        Ok(tf.length)
    };
    add_target(&to_ref.manifest_name, &to_ref.manifest)?;
    // The manifests a client compares an install with when its files match no release exactly.
    for r in view
        .releases
        .iter()
        .rev()
        .take(patch_apply::updater::RECOGNISE_NEWEST)
    {
        add_target(&r.manifest_name, &r.manifest)?;
    }
    if let Some(info) = &view.info_target {
        add_target(REPOSITORY_TARGET, info)?;
    }
    let mut paths = Vec::new();
    let mut blobs: BTreeMap<formats::Blake3, u64> = BTreeMap::new();
    for from in &o.from {
        let from_ref = view.find(from).cloned().ok_or_else(|| {
            repo_err(
                &o.repo,
                format!("has no release {from} (--from); it has {}", known()),
            )
        })?;
        if *from > to {
            return Err(repo_err(
                &o.repo,
                format!("--from {from} is newer than the release the bundle leads to, {to}"),
            ));
        }
        add_target(&from_ref.manifest_name, &from_ref.manifest)?;
        if *from == to {
            paths.push(BundlePath {
                from: from.to_string(),
                method: "none".into(),
                chain: vec![],
                bytes: 0,
            });
            continue;
        }
        let from_manifest = repo_view::fetch_manifest(&t, &from_ref, &limits)?;
        let repair = changed_repair_files(&from_manifest, &to_manifest);
        let repair_bytes = repair.as_ref().map(|r| r.values().sum::<u64>());
        let chain = patch_apply::plan::cheapest_chain(&view.patches, from, &to)
            .filter(|(c, _)| !c.is_empty());
        let path = match (chain, repair_bytes, &to_ref.installer) {
            (Some((chain, bytes)), _, _) => {
                for &i in &chain {
                    let e = &view.patches[i];
                    add_target(&e.name, &e.target)?;
                }
                // (With `with_repair_files`, the release's repair files are added below.)
                let extra = 0;
                BundlePath {
                    from: from.to_string(),
                    method: "incremental".into(),
                    chain: chain
                        .iter()
                        .map(|&i| view.patches[i].to.to_string())
                        .collect(),
                    bytes: bytes + extra,
                }
            }
            (None, Some(rb), inst) if inst.as_ref().is_none_or(|(_, t)| rb <= t.length) => {
                blobs.extend(repair.into_iter().flatten());
                BundlePath {
                    from: from.to_string(),
                    method: "repair".into(),
                    chain: vec![],
                    bytes: rb,
                }
            }
            (None, _, Some((name, tf))) => BundlePath {
                from: from.to_string(),
                method: "installer".into(),
                chain: vec![],
                bytes: add_target(name, tf)?,
            },
            (None, _, None) => {
                return Err(repo_err(
                    &o.repo,
                    format!(
                        "no way from {from} to {to}: no patch chain, no installer and not every changed file has a repair file"
                    ),
                ))
            }
        };
        paths.push(path);
    }
    if o.with_repair_files {
        for e in &to_manifest.entries {
            if let (Some(pin), Some(r)) = (e.node.file_pin(), e.repair) {
                blobs.insert(pin.blake3, r.size);
            }
        }
    }
    for (content, size) in &blobs {
        artifacts.insert(layout::blob_path(content), *size);
    }
    // Metadata: every root version, the timestamp, the snapshot, every targets role.
    let mut metadata: Vec<(String, Vec<u8>)> = Vec::new();
    for n in 1u64.. {
        match t.get_small(&layout::root_file(n), limits.max_small_metadata)? {
            Some(b) => metadata.push((layout::root_file(n), b)),
            None => break,
        }
        if n > limits.max_root_rotations {
            return Err(repo_err(&o.repo, "too many root versions"));
        }
    }
    let ts = t
        .get_small(&md("timestamp.json"), limits.max_small_metadata)?
        .ok_or_else(|| repo_err(&o.repo, "metadata/timestamp.json is missing"))?;
    let snap_name = set.snapshot_file_name()?;
    let snap = t
        .get_small(&md(&snap_name), set.snapshot_max_len())?
        .ok_or_else(|| repo_err(&o.repo, format!("{} is missing", md(&snap_name))))?;
    metadata.push((md("timestamp.json"), ts));
    metadata.push((md(&snap_name), snap));
    for role in roles {
        metadata.push((md(&role.file), role.bytes));
    }
    // The earliest expiry: when devices stop accepting the bundle (without the override).
    let mut expiries = vec![set.root().root().expires.clone()];
    expiries.extend(set.timestamp().map(|m| m.expires.clone()));
    expiries.extend(set.snapshot().map(|m| m.expires.clone()));
    expiries.extend(set.targets().map(|m| m.expires.clone()));
    let expires = expiries
        .iter()
        .filter_map(|e| formats::time_util::parse_tuf(e).ok())
        .min()
        .map(formats::time_util::format_tuf)
        .unwrap_or_default();
    let app = match &view.info_target {
        Some(i) => {
            let bytes = repo_view::fetch_small(&t, REPOSITORY_TARGET, i)?;
            formats::layout::RepositoryInfo::from_json(REPOSITORY_TARGET, &bytes)?.app
        }
        None => to_manifest.app.clone(),
    };
    let files = (metadata.len() + artifacts.len()) as u64;
    let bytes =
        metadata.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + artifacts.values().sum::<u64>();
    let created = formats::time_util::format_tuf(now);
    let index = BundleIndex {
        format: BUNDLE_FORMAT.into(),
        app,
        created: created.clone(),
        to: to.to_string(),
        from: o.from.iter().map(|v| v.to_string()).collect(),
        expires: expires.clone(),
        files,
        bytes,
    };
    let mut w = BundleWriter::create(&o.out, &index)?;
    for (name, bytes) in &metadata {
        w.add_bytes(name, bytes)?;
    }
    for (name, size) in &artifacts {
        w.add_file(name, &o.repo.join(name), *size)?;
    }
    let size = w.finish()?;
    Ok(BundleSummary {
        out: o.out.clone(),
        size,
        files,
        to: to.to_string(),
        paths,
        created,
        expires,
    })
}
