//! Preparing the files of the new release in the staging area, one function per method.
//! Nothing here touches the app's own files: sources are only read.
//!
//! Folder `stage/`: this file, the checked artifact readers ([`archive`]), producing a file from
//! a patch op ([`decode`]) and early writeback of large outputs ([`writeback`]). May use: `error`,
//! `events`, `state`, `fetch`, `inspect`, `plan`. Writes only inside the staging area.

pub mod archive;
pub mod decode;
pub mod writeback;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use formats::layout;
use formats::limits::Limits;
use formats::manifest::{Entry, Node, ReleaseManifest};
use formats::{Blake3, Pin, RelPath};
use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::events::{Event, EventSink};
use crate::repo_view::{expected, target_path, PatchEdge, ReleaseRef};
use crate::scan::Tree;
use crate::transport::{fetch_to_cache, Expected, Transport};

/// Everything staging needs.
pub struct StageCtx<'a> {
    /// Where artifacts come from.
    pub transport: &'a dyn Transport,
    /// Download cache.
    pub cache: PathBuf,
    /// A fresh staging directory for this attempt.
    pub staging: PathBuf,
    /// Input bounds.
    pub limits: &'a Limits,
    /// The app directory (read only here).
    pub app_dir: &'a Path,
    /// Event receiver.
    pub events: &'a EventSink,
    /// Bytes downloaded so far (all attempts).
    pub downloaded: &'a AtomicU64,
}

impl StageCtx<'_> {
    /// Fetches into the cache; `done` counts the bytes of every file of this stage (shared by
    /// parallel downloads), so progress events carry totals for the whole stage.
    fn fetch(&self, path: &str, exp: &Expected, total: u64, done: &AtomicU64) -> Result<PathBuf> {
        let report = |d: u64| {
            (self.events)(&Event::Progress {
                phase: "download",
                done: d.min(total),
                total,
            })
        };
        let kept = crate::transport::kept_bytes(&self.cache, exp);
        if kept > 0 {
            report(done.fetch_add(kept, Ordering::Relaxed) + kept);
            (self.events)(&Event::Resumed {
                path: path.to_string(),
                bytes: kept,
            });
        }
        let progress = |n: u64| {
            self.downloaded.fetch_add(n, Ordering::Relaxed);
            report(done.fetch_add(n, Ordering::Relaxed) + n);
        };
        fetch_to_cache(self.transport, path, exp, &self.cache, &progress)
    }
}

/// Files of the new release to move into place: path → staged file with the right content.
pub type Staged = BTreeMap<RelPath, PathBuf>;

/// Files of `manifest` whose content is missing or differs in `current`.
pub fn differing_files<'m>(current: &Tree, manifest: &'m ReleaseManifest) -> Vec<&'m Entry> {
    manifest
        .entries
        .iter()
        .filter(|e| match (&e.node, current.entries.get(&e.path)) {
            (Node::File { blake3, .. }, Some(Node::File { blake3: have, .. })) => blake3 != have,
            (Node::File { .. }, _) => true,
            _ => false,
        })
        .collect()
}

/// Bytes the repair method downloads: repair files of the differing files (each content once).
pub fn repair_cost(current: &Tree, manifest: &ReleaseManifest) -> Option<u64> {
    let mut seen = BTreeMap::new();
    for e in differing_files(current, manifest) {
        let r = e.repair?;
        let h = e.node.file_pin()?.blake3;
        seen.insert(h, r.size);
    }
    Some(seen.values().sum())
}

/// Downloads the repair method makes: one per distinct content of the differing files.
pub fn repair_requests(current: &Tree, manifest: &ReleaseManifest) -> u64 {
    let contents: std::collections::BTreeSet<Blake3> = differing_files(current, manifest)
        .iter()
        .filter_map(|e| e.node.file_pin().map(|p| p.blake3))
        .collect();
    contents.len() as u64
}

/// Repair: fetch and decode the repair file of every differing file.
pub fn stage_repair(ctx: &StageCtx, manifest: &ReleaseManifest, current: &Tree) -> Result<Staged> {
    let files = differing_files(current, manifest);
    let mut by_content: BTreeMap<Blake3, Vec<&Entry>> = BTreeMap::new();
    for e in files {
        if let Some(p) = e.node.file_pin() {
            by_content.entry(p.blake3).or_default().push(e);
        }
    }
    // Each content is downloaded once, however many paths hold it.
    let total: u64 = by_content
        .values()
        .filter_map(|es| es[0].repair)
        .map(|r| r.size)
        .sum();
    std::fs::create_dir_all(&ctx.staging).at(&ctx.staging)?;
    let groups: Vec<(usize, &Vec<&Entry>)> = by_content.values().enumerate().collect();
    // Downloads run in their own pool (as many at once as the transport allows), decoding in
    // the global one.
    let done = AtomicU64::new(0);
    let fetched: Vec<PathBuf> = crate::transport::download_pool(ctx.transport)?.install(|| {
        groups
            .par_iter()
            .map(|(_, entries)| {
                let e = entries[0];
                let pin = e
                    .node
                    .file_pin()
                    .ok_or_else(|| Error::bad(e.path.as_str(), "not a file"))?;
                let repair = e.repair.ok_or_else(|| {
                    Error::bad(e.path.as_str(), "the release has no repair file for it")
                })?;
                ctx.fetch(
                    &layout::blob_path(&pin.blake3),
                    &Expected::pinned(repair, None),
                    total,
                    &done,
                )
            })
            .collect::<Result<Vec<PathBuf>>>()
    })?;
    let results: Vec<Result<Vec<(RelPath, PathBuf)>>> = groups
        .par_iter()
        .zip(fetched.par_iter())
        .map(|((i, entries), file)| {
            let e = entries[0];
            let pin = e
                .node
                .file_pin()
                .ok_or_else(|| Error::bad(e.path.as_str(), "not a file"))?;
            let blob = layout::blob_path(&pin.blake3);
            let first = ctx.staging.join(format!("r{i}"));
            crate::archive::decode_repair(file, &blob, pin, &first)?;
            let mut out = vec![(e.path.clone(), first.clone())];
            for (j, other) in entries.iter().enumerate().skip(1) {
                let copy = ctx.staging.join(format!("r{i}-{j}"));
                std::fs::copy(&first, &copy).at(&copy)?;
                out.push((other.path.clone(), copy));
            }
            Ok(out)
        })
        .collect();
    let mut staged = Staged::new();
    for r in results {
        staged.extend(r?);
    }
    Ok(staged)
}

/// Installer: fetch the whole archive, extract it (checked against the manifest), and stage
/// the files that differ.
pub fn stage_installer(
    ctx: &StageCtx,
    release: &ReleaseRef,
    manifest: &ReleaseManifest,
    current: &Tree,
) -> Result<Staged> {
    let (name, target) = release
        .installer
        .as_ref()
        .ok_or_else(|| Error::bad(release.manifest_name.as_str(), "release has no installer"))?;
    let path = target_path(name, target)?;
    let file = ctx.fetch(
        &path,
        &expected(name, target)?,
        target.length,
        &AtomicU64::new(0),
    )?;
    let tree = ctx.staging.join("tree");
    (ctx.events)(&Event::Phase { phase: "apply" });
    let progress = |done, total| {
        (ctx.events)(&Event::Progress {
            phase: "apply",
            done,
            total,
        })
    };
    crate::archive::extract_installer(&file, &path, manifest, &tree, ctx.limits, &progress)?;
    Ok(differing_files(current, manifest)
        .into_iter()
        .map(|e| (e.path.clone(), e.path.to_path(&tree)))
        .collect())
}

/// Incremental: apply each patch of `chain` in turn. `current` must be exactly the chain's
/// first version (its tree digest is checked against each patch's `from_tree`).
pub fn stage_incremental(
    ctx: &StageCtx,
    chain: &[&PatchEdge],
    start_tree: Blake3,
    current: &Tree,
    manifest: &ReleaseManifest,
) -> Result<Staged> {
    // Where each file of the version reached so far lives.
    let loc: BTreeMap<RelPath, PathBuf> = current
        .entries
        .iter()
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .map(|(p, _)| (p.clone(), p.to_path(ctx.app_dir)))
        .collect();
    // The pin of each file of that version: what an op's source must hash to.
    let pins: BTreeMap<RelPath, Pin> = current
        .entries
        .iter()
        .filter_map(|(p, n)| Some((p.clone(), n.file_pin()?)))
        .collect();
    let loc = run_chain(ctx, chain, start_tree, pins, loc, manifest)?;
    let mut staged = Staged::new();
    for e in &manifest.entries {
        if let Node::File { .. } = e.node {
            let l = loc
                .get(&e.path)
                .ok_or_else(|| Error::bad("patch chain", format!("did not produce {}", e.path)))?;
            if *l != e.path.to_path(ctx.app_dir) {
                staged.insert(e.path.clone(), l.clone());
            }
        }
    }
    Ok(staged)
}

/// Incremental from an install that differs from its release `start` in a few files: the
/// patches are applied to the files that match `start`, and every file of the new release
/// that could not be produced that way (its source was changed or missing, or it is itself
/// damaged) is staged from its repair file. Returns the staged files and the paths repaired.
pub fn stage_incremental_partial(
    ctx: &StageCtx,
    chain: &[&PatchEdge],
    start: &ReleaseManifest,
    current: &Tree,
    manifest: &ReleaseManifest,
) -> Result<(Staged, Vec<RelPath>)> {
    let pins: BTreeMap<RelPath, Pin> = start
        .entries
        .iter()
        .filter_map(|e| Some((e.path.clone(), e.node.file_pin()?)))
        .collect();
    let loc: BTreeMap<RelPath, PathBuf> = pins
        .iter()
        .filter(|(p, pin)| current.entries.get(*p).and_then(Node::file_pin) == Some(**pin))
        .map(|(p, _)| (p.clone(), p.to_path(ctx.app_dir)))
        .collect();
    let loc = run_chain(ctx, chain, start.tree_digest(), pins, loc, manifest)?;
    let mut staged = Staged::new();
    let mut missing = Vec::new();
    for e in &manifest.entries {
        if let Node::File { .. } = e.node {
            match loc.get(&e.path) {
                Some(l) if *l != e.path.to_path(ctx.app_dir) => {
                    staged.insert(e.path.clone(), l.clone());
                }
                Some(_) => {
                    // Unchanged by the chain and intact here, unless the file at the path is
                    // not this release's content.
                    let have = current.entries.get(&e.path).and_then(Node::file_pin);
                    if have != e.node.file_pin() {
                        missing.push(e.clone());
                    }
                }
                None => missing.push(e.clone()),
            }
        }
    }
    let repaired: Vec<RelPath> = missing.iter().map(|e| e.path.clone()).collect();
    if !missing.is_empty() {
        let part = ReleaseManifest {
            entries: missing,
            ..manifest.clone()
        };
        let sub = StageCtx {
            transport: ctx.transport,
            cache: ctx.cache.clone(),
            staging: ctx.staging.join("repair"),
            limits: ctx.limits,
            app_dir: ctx.app_dir,
            events: ctx.events,
            downloaded: ctx.downloaded,
        };
        staged.extend(stage_repair(&sub, &part, &Tree::default())?);
    }
    Ok((staged, repaired))
}

/// Bytes of the repair files [`stage_incremental_partial`] needs on top of the patches: the
/// files of `manifest` at paths where `current` differs from `start` (an estimate: a patch
/// may also read a damaged file for another path). `None` if one has no repair file.
pub fn partial_repair_cost(
    current: &Tree,
    start: &ReleaseManifest,
    manifest: &ReleaseManifest,
) -> Option<u64> {
    let damaged: std::collections::BTreeSet<&RelPath> = start
        .entries
        .iter()
        .filter(|e| {
            e.node.file_pin().is_some()
                && current.entries.get(&e.path).and_then(Node::file_pin) != e.node.file_pin()
        })
        .map(|e| &e.path)
        .collect();
    let start_paths = start.by_path();
    let mut seen = BTreeMap::new();
    for e in &manifest.entries {
        let Some(pin) = e.node.file_pin() else {
            continue;
        };
        let at_path = current.entries.get(&e.path).and_then(Node::file_pin);
        let needs = damaged.contains(&e.path)
            || (start_paths.get(&e.path).map(|s| &s.node) == Some(&e.node) && at_path != Some(pin));
        if needs {
            seen.insert(pin.blake3, e.repair?.size);
        }
    }
    Some(seen.values().sum())
}

/// Applies `chain` to the version whose files have the pins `pins` and of which the files in
/// `loc` are available (path → where its content is). Files whose source is not available
/// are not produced. Returns where each file of the last version is, for those produced.
fn run_chain(
    ctx: &StageCtx,
    chain: &[&PatchEdge],
    start_tree: Blake3,
    mut pins: BTreeMap<RelPath, Pin>,
    mut loc: BTreeMap<RelPath, PathBuf>,
    manifest: &ReleaseManifest,
) -> Result<BTreeMap<RelPath, PathBuf>> {
    let total: u64 = chain.iter().map(|e| e.target.length).sum();
    let mut tree = start_tree;
    // Every patch of the chain is downloaded first, several at once.
    let done = AtomicU64::new(0);
    let files: Vec<PathBuf> = crate::transport::download_pool(ctx.transport)?.install(|| {
        chain
            .par_iter()
            .map(|edge| {
                let path = target_path(&edge.name, &edge.target)?;
                ctx.fetch(&path, &expected(&edge.name, &edge.target)?, total, &done)
            })
            .collect::<Result<Vec<PathBuf>>>()
    })?;
    for (i, edge) in chain.iter().enumerate() {
        let path = target_path(&edge.name, &edge.target)?;
        let file = &files[i];
        (ctx.events)(&Event::Phase { phase: "apply" });
        let dir = ctx.staging.join(format!("p{i}"));
        let unpacked = crate::archive::unpack_patch(file, &path, &dir.join("members"), ctx.limits)?;
        let info = &unpacked.info;
        if info.from != edge.from || info.to != edge.to || info.app != manifest.app {
            return Err(Error::bad(
                &path,
                format!(
                    "patch info says {} {} -> {}, targets metadata says {} {} -> {}",
                    info.app, info.from, info.to, manifest.app, edge.from, edge.to
                ),
            ));
        }
        if info.from_tree != tree {
            return Err(Error::bad(
                &path,
                "patch was built for a different tree than the one installed",
            ));
        }
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir).at(&out_dir)?;
        let done = AtomicU64::new(0);
        let n_ops = info.ops.len() as u64;
        let produced: Vec<Result<Option<(RelPath, PathBuf)>>> = info
            .ops
            .par_iter()
            .enumerate()
            .map(|(j, op)| {
                let source = match op.encoding.source() {
                    Some(s) => match (loc.get(s), pins.get(s)) {
                        (Some(l), Some(pin)) => Some((l.as_path(), *pin)),
                        // A file of that version this install does not have intact.
                        (None, Some(_)) => return Ok(None),
                        _ => {
                            return Err(Error::bad(
                                &path,
                                format!(
                                    "{} reads {s}, which version {} does not have",
                                    op.path, info.from
                                ),
                            ))
                        }
                    },
                    None => None,
                };
                let member = unpacked.members.get(j).and_then(Option::as_deref);
                let out = out_dir.join(format!("f{j}"));
                crate::decode::produce_with(&path, op, source, member, &out, ctx.limits)?;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                (ctx.events)(&Event::Progress {
                    phase: "apply",
                    done: d,
                    total: n_ops,
                });
                Ok(Some((op.path.clone(), out)))
            })
            .collect();
        for d in &info.deletes {
            loc.remove(d);
            pins.remove(d);
        }
        for (p, op) in produced.into_iter().zip(&info.ops) {
            pins.insert(op.path.clone(), op.new);
            match p? {
                Some((path, out)) => {
                    loc.insert(path, out);
                }
                None => {
                    loc.remove(&op.path);
                }
            }
        }
        tree = info.to_tree;
        // Members are no longer needed.
        let _ = std::fs::remove_dir_all(dir.join("members"));
    }
    if tree != manifest.tree_digest() {
        return Err(Error::bad(
            chain
                .last()
                .map(|e| e.name.as_str())
                .unwrap_or("patch chain"),
            "patch chain does not lead to the release's tree",
        ));
    }
    Ok(loc)
}
