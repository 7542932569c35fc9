//! `patch-create publish`: copies a repository to object storage (S3 and S3-compatible stores,
//! GCS, Azure) or a local directory, so that clients reading it at any moment see the old or
//! the new repository state (docs/hosting.md).
//!
//! - Only what the destination lacks is uploaded: content-addressed and versioned names
//!   ([`objects::is_immutable`]) are skipped when an object of the same size (and, where the
//!   store's ETag is an MD5, the same MD5) is there; an object of that name with other bytes is
//!   an error naming it (`--replace-mismatched` replaces it with a warning). `timestamp.json`
//!   and `root.json` are compared by content.
//! - Uploads run in [`Stage`]s, each finished before the next starts: artifacts, root
//!   versions, targets metadata, snapshot, `root.json`, and `timestamp.json` last.
//! - Objects the repository no longer has are deleted only after a grace period, counted from
//!   the first publish that saw them missing; the times live in the destination
//!   ([`objects::STATE_OBJECT`]), so a rerun from another machine continues them.
//! - Every put is atomic (files above [`MULTIPART_THRESHOLD`] go as a multipart upload, which
//!   becomes visible only when completed), so an interrupted publish is finished by running it
//!   again.
//!
//! Folder `publish/`: this file (planning and running a publish), [`objects`] (what a key is:
//! stage, cache headers, pruning; pure) and [`destination`] (URL to store, credentials). May
//! use: `error`, `progress`, `repo` (the writer lock).

pub mod destination;
pub mod objects;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, TryStreamExt};
use md5::{Digest, Md5};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use rayon::prelude::*;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
pub use destination::{Destination, DestinationSpec};
pub use objects::{PruneDecision, PublishState, Stage, STATE_OBJECT};

/// Files larger than this are sent as multipart uploads.
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Part size of multipart uploads.
const PART_BYTES: usize = 16 << 20;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Largest mutable object or state object read back for comparison.
const MAX_COMPARE_BYTES: u64 = 16 << 20;

/// What to publish where.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// The local repository directory.
    pub repo: PathBuf,
    /// The destination.
    pub destination: DestinationSpec,
    /// How long an object the repository no longer has stays in the destination.
    pub prune_grace: time::Duration,
    /// Work out and report the changes, change nothing.
    pub dry_run: bool,
    /// Objects uploaded (or deleted) at once, at least 1.
    pub concurrency: usize,
    /// Replace an object under an immutable name that holds other bytes instead of failing.
    pub replace_mismatched: bool,
    /// The time pruning counts from.
    pub now: OffsetDateTime,
}

/// What a publish does (or, dry, would do) with one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Upload a file the destination lacks or holds with other content.
    Upload,
    /// Delete an object whose grace period is over.
    Delete,
    /// Keep an object the repository no longer has until its grace period ends.
    Keep,
}

/// One change, as listed by `--dry-run` and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// What is done.
    pub op: Op,
    /// The object's key under the destination prefix.
    pub key: String,
    /// Bytes uploaded (uploads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Upload stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Why it is uploaded: `new`, `changed` (a mutable file) or `mismatched` (an immutable
    /// name holding other bytes, replaced by `--replace-mismatched`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Kept objects: when first seen missing from the repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<String>,
    /// Kept objects: when a publish may delete it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_after: Option<String>,
}

/// The outcome of a publish.
#[derive(Clone, Debug, Serialize)]
pub struct PublishReport {
    /// The destination URL.
    pub destination: String,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Objects uploaded (dry run: that would be).
    pub uploaded: u64,
    /// Their bytes.
    pub uploaded_bytes: u64,
    /// Files the destination already had.
    pub skipped: u64,
    /// Their bytes.
    pub skipped_bytes: u64,
    /// Objects deleted after their grace period (dry run: that would be).
    pub deleted: u64,
    /// Objects the repository no longer has, kept until their grace period ends.
    pub pending_deletes: u64,
    /// Every upload, deletion and kept object.
    pub changes: Vec<Change>,
    /// Things done that deserve a look (replaced objects, an unreadable state object).
    pub warnings: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Progress of a running publish, one event per object, for logs and tests.
#[derive(Clone, Copy, Debug)]
pub enum PublishEvent<'a> {
    /// An object is complete in the destination.
    Uploaded {
        /// Its key.
        key: &'a str,
        /// Its size.
        bytes: u64,
    },
    /// An object was deleted.
    Deleted {
        /// Its key.
        key: &'a str,
    },
}

/// A file of the local repository.
#[derive(Clone, Debug)]
struct LocalFile {
    path: PathBuf,
    size: u64,
}

/// An object of the destination, from its listing.
#[derive(Clone, Debug)]
struct RemoteObject {
    size: u64,
    /// The ETag when it is the MD5 of the content (single-part S3 uploads), lowercase hex.
    md5: Option<String>,
}

/// The ETag as an MD5 hex digest, if it is one.
fn etag_md5(e_tag: Option<&str>) -> Option<String> {
    let t = e_tag?.trim().trim_start_matches("W/").trim_matches('"');
    (t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

/// The files of a repository to publish, by key: everything but the tool's own files.
fn local_files(repo: &Path) -> Result<BTreeMap<String, LocalFile>> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(repo)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walk {
        let entry = entry.map_err(|e| {
            let p = e.path().unwrap_or(repo).to_path_buf();
            Error::io(p, e.into())
        })?;
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(repo)
            .unwrap_or(entry.path())
            .to_str()
            .map(|s| s.replace('\\', "/"))
            .ok_or_else(|| Error::Repo {
                path: repo.to_path_buf(),
                reason: format!(
                    "{} is not UTF-8; cannot name it in a URL",
                    entry.path().display()
                ),
            })?;
        if !ft.is_file() {
            return Err(Error::Repo {
                path: repo.to_path_buf(),
                reason: format!("{rel} is not a regular file (a link?); refusing to publish it"),
            });
        }
        if objects::is_private(&rel) {
            continue;
        }
        let size = entry
            .metadata()
            .map_err(|e| Error::io(entry.path(), e.into()))?
            .len();
        out.insert(
            rel,
            LocalFile {
                path: entry.path().to_path_buf(),
                size,
            },
        );
    }
    Ok(out)
}

fn md5_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = Md5::new();
    std::io::copy(&mut f, &mut h).at(path)?;
    Ok(hex::encode(h.finalize()))
}

fn object_path(key: &str, url: &str) -> Result<ObjectPath> {
    ObjectPath::parse(key).map_err(|e| Error::Publish {
        what: format!("{url}/{key}"),
        reason: format!("not a valid object key: {e}"),
    })
}

fn store_err(what: String, e: object_store::Error) -> Error {
    Error::Store { what, source: e }
}

/// The headers an object is stored with, where the backend keeps them.
fn attributes(key: &str, stores_headers: bool) -> Attributes {
    if !stores_headers {
        return Attributes::new();
    }
    Attributes::from_iter([
        (Attribute::CacheControl, objects::cache_control(key)),
        (Attribute::ContentType, objects::content_type(key)),
    ])
}

/// Reads a small object whole; `None` when it does not exist.
async fn get_small(dest: &Destination, key: &str) -> Result<Option<Vec<u8>>> {
    let loc = object_path(key, &dest.url)?;
    let what = || format!("reading {}/{key}", dest.url);
    let got = match dest.store.get(&loc).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(what(), e)),
    };
    if got.meta.size > MAX_COMPARE_BYTES {
        return Err(Error::Publish {
            what: format!("{}/{key}", dest.url),
            reason: format!(
                "is {} bytes, more than the {MAX_COMPARE_BYTES} this file may have",
                got.meta.size
            ),
        });
    }
    let bytes = got.bytes().await.map_err(|e| store_err(what(), e))?;
    Ok(Some(bytes.to_vec()))
}

/// Uploads one file atomically and checks the store's MD5 ETag against the bytes sent, when
/// the store gives one.
async fn upload(dest: &Destination, key: &str, file: &LocalFile) -> Result<()> {
    let loc = object_path(key, &dest.url)?;
    let what = || format!("uploading {} to {}/{key}", file.path.display(), dest.url);
    let attrs = attributes(key, dest.stores_headers);
    if file.size <= MULTIPART_THRESHOLD {
        let bytes = tokio::fs::read(&file.path).await.at(&file.path)?;
        if bytes.len() as u64 != file.size {
            return Err(Error::Publish {
                what: file.path.display().to_string(),
                reason: "changed size while being published".into(),
            });
        }
        let local_md5 = hex::encode(Md5::digest(&bytes));
        let opts = PutOptions {
            attributes: attrs,
            ..Default::default()
        };
        let put = dest
            .store
            .put_opts(&loc, PutPayload::from(bytes), opts)
            .await
            .map_err(|e| store_err(what(), e))?;
        if let Some(remote) = etag_md5(put.e_tag.as_deref()) {
            if remote != local_md5 {
                return Err(Error::Publish {
                    what: format!("{}/{key}", dest.url),
                    reason: format!(
                        "the store reports MD5 {remote} for the upload of {} (MD5 {local_md5})",
                        file.path.display()
                    ),
                });
            }
        }
        return Ok(());
    }
    let opts = PutMultipartOptions {
        attributes: attrs,
        ..Default::default()
    };
    let up = dest
        .store
        .put_multipart_opts(&loc, opts)
        .await
        .map_err(|e| store_err(what(), e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(up, PART_BYTES);
    let mut f = tokio::fs::File::open(&file.path).await.at(&file.path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    loop {
        let n = match f.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(Error::io(&file.path, e));
            }
        };
        if n == 0 {
            break;
        }
        sent += n as u64;
        if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            return Err(store_err(what(), e));
        }
        writer.write(&buf[..n]);
    }
    if sent != file.size {
        let _ = writer.abort().await;
        return Err(Error::Publish {
            what: file.path.display().to_string(),
            reason: "changed size while being published".into(),
        });
    }
    writer.finish().await.map_err(|e| store_err(what(), e))?;
    Ok(())
}

/// One planned upload.
struct PlannedUpload {
    key: String,
    file: LocalFile,
    reason: &'static str,
}

/// Decides which local files to upload, comparing with the listing (and reading back mutable
/// files). Errors on objects under immutable names holding other bytes unless
/// `replace_mismatched`.
async fn plan_uploads(
    dest: &Destination,
    local: &BTreeMap<String, LocalFile>,
    remote: &BTreeMap<String, RemoteObject>,
    md5s: &BTreeMap<String, String>,
    replace_mismatched: bool,
    warnings: &mut Vec<String>,
) -> Result<(Vec<PlannedUpload>, u64, u64)> {
    let mut planned = Vec::new();
    let (mut skipped, mut skipped_bytes) = (0u64, 0u64);
    let mut mismatched = Vec::new();
    for (key, file) in local {
        let Some(r) = remote.get(key) else {
            planned.push(PlannedUpload {
                key: key.clone(),
                file: file.clone(),
                reason: "new",
            });
            continue;
        };
        // The first root decides which repository this is: always compared by content.
        let by_content = !objects::is_immutable(key) || key == "metadata/1.root.json";
        let same = if by_content {
            if r.size != file.size {
                false
            } else {
                let theirs = get_small(dest, key).await?;
                let ours = std::fs::read(&file.path).at(&file.path)?;
                theirs.as_deref() == Some(ours.as_slice())
            }
        } else {
            r.size == file.size
                && match (&r.md5, md5s.get(key)) {
                    (Some(theirs), Some(ours)) => theirs == ours,
                    _ => true,
                }
        };
        if same {
            skipped += 1;
            skipped_bytes += file.size;
            continue;
        }
        if key == "metadata/1.root.json" {
            return Err(Error::Publish {
                what: format!("{}/{key}", dest.url),
                reason: format!(
                    "differs from {}: the destination holds another repository; publish to an \
                     empty prefix",
                    file.path.display()
                ),
            });
        }
        if objects::is_immutable(key) {
            mismatched.push(format!(
                "{}/{key} ({} bytes there, {} bytes in {})",
                dest.url,
                r.size,
                file.size,
                file.path.display()
            ));
            planned.push(PlannedUpload {
                key: key.clone(),
                file: file.clone(),
                reason: "mismatched",
            });
        } else {
            planned.push(PlannedUpload {
                key: key.clone(),
                file: file.clone(),
                reason: "changed",
            });
        }
    }
    if !mismatched.is_empty() {
        if !replace_mismatched {
            let n = mismatched.len();
            mismatched.truncate(5);
            return Err(Error::Publish {
                what: dest.url.clone(),
                reason: format!(
                    "{n} object(s) under immutable names hold other bytes than the repository: \
                     {}; nothing was uploaded. Clients fetching them fail their hash check: \
                     pass --replace-mismatched to replace them",
                    mismatched.join(", ")
                ),
            });
        }
        for m in mismatched {
            warnings.push(format!("replaced {m}"));
        }
    }
    Ok((planned, skipped, skipped_bytes))
}

/// Publishes the repository `opts.repo` to `opts.destination`; see the module documentation.
/// `progress` counts uploaded bytes; `on_event` hears of every object completed.
pub fn publish(
    opts: &PublishOptions,
    progress: &dyn Progress,
    on_event: &(dyn Fn(&PublishEvent<'_>) + Sync),
) -> Result<PublishReport> {
    let started = Instant::now();
    let repo = &opts.repo;
    if !repo
        .join(formats::layout::METADATA_DIR)
        .join("timestamp.json")
        .is_file()
    {
        return Err(Error::Repo {
            path: repo.clone(),
            reason: "has no metadata/timestamp.json: not a repository with a release to publish"
                .into(),
        });
    }
    // Hold the writer lock: no release changes the files while they are read.
    let _lock = crate::repo::lock(repo)?;
    let local = local_files(repo)?;
    let dest = destination::open(&opts.destination, !opts.dry_run)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Publish {
            what: dest.url.clone(),
            reason: format!("cannot start the I/O runtime: {e}"),
        })?;

    // What the destination holds.
    let (remote, state_bytes) = rt.block_on(async {
        let listed: Vec<object_store::ObjectMeta> = dest
            .store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| store_err(format!("listing {}", dest.url), e))?;
        let state = get_small(&dest, STATE_OBJECT).await?;
        Ok::<_, Error>((listed, state))
    })?;
    let remote: BTreeMap<String, RemoteObject> = remote
        .into_iter()
        .map(|m| {
            (
                m.location.to_string(),
                RemoteObject {
                    size: m.size,
                    md5: etag_md5(m.e_tag.as_deref()),
                },
            )
        })
        .collect();

    let mut warnings = Vec::new();
    let state: PublishState = match &state_bytes {
        None => PublishState::default(),
        Some(b) => match serde_json::from_slice::<PublishState>(b) {
            Ok(s) if s.format == objects::STATE_FORMAT => s,
            Ok(s) => {
                warnings.push(format!(
                    "{}/{STATE_OBJECT} has unknown format {:?}: grace periods start again",
                    dest.url, s.format
                ));
                PublishState::default()
            }
            Err(e) => {
                warnings.push(format!(
                    "{}/{STATE_OBJECT} is unreadable ({e}): grace periods start again",
                    dest.url
                ));
                PublishState::default()
            }
        },
    };

    // MD5s of local files whose twin in the destination has an MD5 ETag and the same size.
    let md5s: BTreeMap<String, String> = local
        .par_iter()
        .filter(|(k, f)| {
            objects::is_immutable(k)
                && remote
                    .get(*k)
                    .is_some_and(|r| r.md5.is_some() && r.size == f.size)
        })
        .map(|(k, f)| -> Result<(String, String)> { Ok((k.clone(), md5_file(&f.path)?)) })
        .collect::<Result<_>>()?;

    let (planned, skipped, skipped_bytes) = rt.block_on(plan_uploads(
        &dest,
        &local,
        &remote,
        &md5s,
        opts.replace_mismatched,
        &mut warnings,
    ))?;

    let remote_keys: BTreeSet<String> = remote.keys().cloned().collect();
    let local_keys: BTreeSet<String> = local.keys().cloned().collect();
    let (prune, next_state) = objects::plan_prune(
        &remote_keys,
        &local_keys,
        &state,
        opts.now,
        opts.prune_grace,
    );

    let mut changes: Vec<Change> = planned
        .iter()
        .map(|p| Change {
            op: Op::Upload,
            key: p.key.clone(),
            bytes: Some(p.file.size),
            stage: Some(objects::stage_of(&p.key)),
            reason: Some(p.reason),
            missing_since: None,
            delete_after: None,
        })
        .collect();
    changes.sort_by(|a, b| (a.stage, &a.key).cmp(&(b.stage, &b.key)));
    let mut deletes = Vec::new();
    let mut pending = 0u64;
    for d in &prune {
        match d {
            PruneDecision::Delete { key } => {
                deletes.push(key.clone());
                changes.push(Change {
                    op: Op::Delete,
                    key: key.clone(),
                    bytes: None,
                    stage: None,
                    reason: None,
                    missing_since: None,
                    delete_after: None,
                });
            }
            PruneDecision::Keep { key, since, due } => {
                pending += 1;
                changes.push(Change {
                    op: Op::Keep,
                    key: key.clone(),
                    bytes: None,
                    stage: None,
                    reason: None,
                    missing_since: Some(formats::time_util::format_tuf(*since)),
                    delete_after: Some(formats::time_util::format_tuf(*due)),
                });
            }
        }
    }
    let uploaded_bytes: u64 = planned.iter().map(|p| p.file.size).sum();
    let mut report = PublishReport {
        destination: dest.url.clone(),
        dry_run: opts.dry_run,
        uploaded: planned.len() as u64,
        uploaded_bytes,
        skipped,
        skipped_bytes,
        deleted: deletes.len() as u64,
        pending_deletes: pending,
        changes,
        warnings,
        seconds: 0.0,
    };
    if opts.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let concurrency = opts.concurrency.max(1);
    progress.start("uploading bytes", uploaded_bytes);
    let dest = Arc::new(dest);
    rt.block_on(async {
        for stage in Stage::ALL {
            let batch: Vec<&PlannedUpload> = planned
                .iter()
                .filter(|p| objects::stage_of(&p.key) == stage)
                .collect();
            stream::iter(batch.into_iter().map(Ok::<_, Error>))
                .try_for_each_concurrent(concurrency, |p| {
                    let dest = dest.clone();
                    async move {
                        upload(&dest, &p.key, &p.file).await?;
                        progress.advance(p.file.size);
                        on_event(&PublishEvent::Uploaded {
                            key: &p.key,
                            bytes: p.file.size,
                        });
                        Ok(())
                    }
                })
                .await?;
        }
        // Deletions after the new timestamp is up: nothing it names is removed.
        stream::iter(deletes.iter().map(Ok::<_, Error>))
            .try_for_each_concurrent(concurrency, |key| {
                let dest = dest.clone();
                async move {
                    let loc = object_path(key, &dest.url)?;
                    match dest.store.delete(&loc).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(store_err(format!("deleting {}/{key}", dest.url), e)),
                    }
                    on_event(&PublishEvent::Deleted { key });
                    Ok(())
                }
            })
            .await?;
        let write_state = if state_bytes.is_some() {
            next_state != state
        } else {
            !next_state.missing_since.is_empty()
        };
        if write_state {
            let body = serde_json::to_vec_pretty(&next_state).map_err(|e| Error::Publish {
                what: format!("{}/{STATE_OBJECT}", dest.url),
                reason: e.to_string(),
            })?;
            let loc = object_path(STATE_OBJECT, &dest.url)?;
            let opts = PutOptions {
                attributes: attributes(STATE_OBJECT, dest.stores_headers),
                ..Default::default()
            };
            dest.store
                .put_opts(&loc, PutPayload::from(body), opts)
                .await
                .map_err(|e| store_err(format!("writing {}/{STATE_OBJECT}", dest.url), e))?;
        }
        Ok::<_, Error>(())
    })?;
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_that_are_md5s() {
        let md5 = "0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            etag_md5(Some(&format!("\"{md5}\""))),
            Some(md5.to_ascii_lowercase())
        );
        assert_eq!(etag_md5(Some(md5)), Some(md5.to_ascii_lowercase()));
        // Multipart ETags and local-file ETags are not content digests.
        assert_eq!(
            etag_md5(Some("\"0123456789abcdef0123456789abcdef-3\"")),
            None
        );
        assert_eq!(etag_md5(Some("1f-5e0c-400")), None);
        assert_eq!(etag_md5(None), None);
    }
}
