//! `patch-create release`: adds a version to a repository (docs/format.md §5-§7).
//!
//! Folder `release/`: this file, old contents from a tree or from repair files ([`content`]),
//! repair files written as streams ([`repair`]) and the installer assembled from the repair
//! files ([`installer`]). May use: `error`, `progress`, `diff`, `repo`.

pub mod content;
pub mod installer;
pub mod repair;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use formats::keys::KeyPair;
use formats::layout::{self, REPOSITORY_TARGET};
use formats::manifest::{Entry, Node, ReleaseManifest, MANIFEST_FORMAT};
use formats::patch_info::{format_for, Encoding, PatchInfo, PatchOp};
use formats::patterns::PathPatterns;
use formats::tuf::{TargetCustom, TargetKind};
use formats::{Blake3, Pin, RelPath, Version};
use patch_apply::scan::{self, Strictness, Tree};
use rayon::prelude::*;
use serde::Serialize;

use crate::content::{source_for, ContentSource};
use crate::encode::{encode_files, Chosen, EncodeOptions};
use crate::error::{Error, IoContext, Result};
use crate::pack::{self, Member};
use crate::progress::Progress;
use crate::repo::Repo;

/// Which earlier versions get an incremental patch to the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchesFrom {
    /// Only the previous (newest) version.
    Previous,
    /// Every earlier version still in the repository.
    All,
}

/// Everything `release` needs.
pub struct ReleaseOptions {
    /// The repository directory (created if missing).
    pub repo: PathBuf,
    /// The new release tree.
    pub root: PathBuf,
    /// The new version.
    pub version: Version,
    /// Signing keys.
    pub keys: Vec<KeyPair>,
    /// App name (defaults to the repository's, or the repository directory's name).
    pub name: Option<String>,
    /// Trees of earlier releases, to read old contents from instead of the repository.
    pub prev_roots: Vec<PathBuf>,
    /// Ignore patterns: paths that belong to the user and are neither shipped nor deleted.
    pub ignore: Vec<String>,
    /// Globs of stray paths the updater may delete or replace although no release lists them
    /// (caches the app writes); written to the manifest's `owned` field.
    pub owned: Vec<String>,
    /// How the previous release's ignore patterns carry over (default: all of them).
    pub ignore_carry: IgnoreCarry,
    /// Globs of paths that are code (changing them needs a restart).
    pub code: Vec<String>,
    /// Globs of paths that are resources (never need a restart), overriding the defaults.
    pub resources: Vec<String>,
    /// The release needs a restart whatever changes.
    pub restart_required: bool,
    /// Release notes for people (docs/format.md §5).
    pub notes: Option<String>,
    /// Links for people (the issue a release fixes).
    pub links: Vec<String>,
    /// Which versions get patches.
    pub patches_from: PatchesFrom,
    /// Keep only this many newest versions (older ones are pruned).
    pub keep: Option<usize>,
    /// Metadata lifetime.
    pub expires: time::Duration,
    /// zstd level of the installer and repair files.
    pub level: i32,
    /// Patch encoder settings.
    pub encode: EncodeOptions,
    /// Channel of the release.
    pub channel: Option<String>,
    /// Targeting constraints.
    pub targeting: BTreeMap<String, String>,
    /// Write the installer as one zstd frame compressed from the tree (the layout before issue
    /// 22, still valid, docs/format.md §6.1) instead of reusing the repair files, so that
    /// `bench/release-time.sh` measures both in one run. Slow: it recompresses every byte.
    pub solid_installer: bool,
}

/// How a release treats the ignore patterns of the previous release. Dropping one lets clients
/// delete the users' files it covered, so that only happens when asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoreCarry {
    /// Carry every pattern of the previous release forward (besides the given ones).
    pub inherit: bool,
    /// Patterns of the previous release to drop explicitly.
    pub drop: Vec<String>,
}

impl Default for IgnoreCarry {
    fn default() -> Self {
        IgnoreCarry {
            inherit: true,
            drop: Vec::new(),
        }
    }
}

/// The ignore patterns of a new release and how they relate to the previous release's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IgnoreReport {
    /// The patterns of the new release.
    pub patterns: Vec<String>,
    /// The previous release, if any.
    pub previous: Option<String>,
    /// Patterns carried forward from the previous release without being given again.
    pub inherited: Vec<String>,
    /// Patterns of the previous release the new one no longer has (clients may delete the
    /// users' files they covered).
    pub dropped: Vec<String>,
}

/// Works out the ignore patterns of a new release from the given ones, the previous release's
/// (`previous`: its version and patterns) and `carry`. Refuses a `--drop-ignore` the previous
/// release does not have, one that is also given, and any pattern of the previous release
/// that would disappear without being dropped explicitly.
pub fn resolve_ignore(
    repo: &Path,
    given: &[String],
    previous: Option<(&Version, &[String])>,
    carry: &IgnoreCarry,
) -> Result<IgnoreReport> {
    let mut patterns: Vec<String> = Vec::new();
    for g in given {
        if !patterns.contains(g) {
            patterns.push(g.clone());
        }
    }
    let Some((prev_v, prev)) = previous else {
        if let Some(d) = carry.drop.first() {
            return Err(Error::Repo {
                path: repo.to_path_buf(),
                reason: format!(
                    "--drop-ignore {d:?}: there is no previous release to drop it from"
                ),
            });
        }
        return Ok(IgnoreReport {
            patterns,
            ..IgnoreReport::default()
        });
    };
    for d in &carry.drop {
        if given.contains(d) {
            return Err(Error::Repo {
                path: repo.to_path_buf(),
                reason: format!("--drop-ignore {d:?} and --ignore {d:?} contradict each other"),
            });
        }
        if !prev.contains(d) {
            return Err(Error::Repo {
                path: repo.to_path_buf(),
                reason: format!(
                    "--drop-ignore {d:?}: release {prev_v} has no such ignore pattern (it has: {})",
                    if prev.is_empty() {
                        "none".to_string()
                    } else {
                        prev.join(", ")
                    }
                ),
            });
        }
    }
    let mut inherited = Vec::new();
    if carry.inherit {
        for p in prev {
            if !patterns.contains(p) && !carry.drop.contains(p) {
                patterns.push(p.clone());
                inherited.push(p.clone());
            }
        }
    }
    let dropped: Vec<String> = prev
        .iter()
        .filter(|p| !patterns.contains(p))
        .cloned()
        .collect();
    if let Some(p) = dropped
        .iter()
        .find(|p| carry.inherit && !carry.drop.contains(p))
    {
        return Err(Error::Repo {
            path: repo.to_path_buf(),
            reason: format!(
                "ignore pattern {p:?} of release {prev_v} would be dropped without \
                 --drop-ignore {p:?}: clients would then delete users' files there"
            ),
        });
    }
    Ok(IgnoreReport {
        patterns,
        previous: Some(prev_v.to_string()),
        inherited,
        dropped,
    })
}

/// What one patch holds.
#[derive(Clone, Debug, Serialize)]
pub struct PatchReport {
    /// Source version.
    pub from: String,
    /// Target version.
    pub to: String,
    /// Path relative to the repository.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Ops per encoding (`copy`, `full`, `bidiff`, `zstd-ref`).
    pub encodings: BTreeMap<String, u64>,
    /// Paths deleted.
    pub deletes: u64,
}

/// Size of one artifact.
#[derive(Clone, Debug, Serialize)]
pub struct ArtifactReport {
    /// Path relative to the repository.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Repair file totals.
#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    /// Files in the release.
    pub files: u64,
    /// Sum of every repair file of the release.
    pub bytes: u64,
    /// Repair files written by this release (the others were reused).
    pub new_files: u64,
    /// Their bytes.
    pub new_bytes: u64,
}

/// Wall-clock seconds of each phase.
#[derive(Clone, Debug, Serialize)]
pub struct Timings {
    /// Scanning the new tree.
    pub scan_s: f64,
    /// Repair files.
    pub repair_s: f64,
    /// Diffing and packing patches.
    pub diff_s: f64,
    /// Installer.
    pub installer_s: f64,
    /// Everything.
    pub total_s: f64,
}

/// The result of a release, printed by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct ReleaseReport {
    /// App name.
    pub app: String,
    /// New version.
    pub version: String,
    /// Repository directory.
    pub repository: String,
    /// Files in the release.
    pub files: u64,
    /// Bytes of all files.
    pub file_bytes: u64,
    /// The manifest.
    pub manifest: ArtifactReport,
    /// The installer.
    pub installer: ArtifactReport,
    /// How the installer was assembled (repair files reused, files compressed).
    pub installer_build: crate::release::installer::InstallerStats,
    /// The patches written.
    pub patches: Vec<PatchReport>,
    /// Repair files.
    pub repair: RepairReport,
    /// Versions pruned.
    pub pruned: Vec<String>,
    /// What an interrupted earlier release had left and this one removed (work directories,
    /// and files written after the last commit that no metadata references), relative to the
    /// repository.
    pub leftovers_removed: Vec<String>,
    /// The release's ignore patterns, inherited and dropped ones.
    pub ignore: IgnoreReport,
    /// Targets metadata version now served.
    pub targets_version: u64,
    /// Phase timings.
    pub timings: Timings,
}

/// Classifies a file as code (restart needed) or resource.
pub fn is_code(path: &RelPath, exec: bool, code: &PathPatterns, resources: &PathPatterns) -> bool {
    if code.matches(path) {
        return true;
    }
    if resources.matches(path) {
        return false;
    }
    let name = path.file_name();
    exec || name.ends_with(".so")
        || name.contains(".so.")
        || name.ends_with(".dylib")
        || name.ends_with(".dll")
        || name.ends_with(".exe")
}

/// Adds a release. On error, the repository is unchanged (new artifacts may remain as
/// unreferenced files only if the process dies mid-way; they are never referenced).
pub fn release(opts: &ReleaseOptions, progress: &dyn Progress) -> Result<ReleaseReport> {
    let t0 = Instant::now();
    let keys: Vec<&KeyPair> = opts.keys.iter().collect();
    let first_key = keys.first().ok_or_else(|| Error::Repo {
        path: opts.repo.clone(),
        reason: "no signing key given".into(),
    })?;
    let notes = opts
        .notes
        .as_deref()
        .map(formats::manifest::notes_lines)
        .unwrap_or_default();
    formats::manifest::check_notes(&format!("release {}", opts.version), &notes, &opts.links)?;
    match std::fs::metadata(&opts.root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::Tree {
                path: opts.root.clone(),
                reason: "is not a directory".into(),
            })
        }
        Err(e) => {
            return Err(Error::Tree {
                path: opts.root.clone(),
                reason: format!("cannot be read: {e}"),
            })
        }
    }
    // Refusals that must come before anything is written (the lock file included).
    if crate::repo::is_repository(&opts.root) && !crate::repo::is_repository(&opts.repo) {
        return Err(Error::Tree {
            path: opts.root.clone(),
            reason: format!(
                "is a patch repository (it has metadata/) and {} is not: --repo and --root \
                 look swapped",
                opts.repo.display()
            ),
        });
    }
    crate::repo::check_apart(&opts.repo, &opts.root)?;
    let expires = formats::time_util::now() + opts.expires;
    let mut repo = Repo::open_or_new(&opts.repo, first_key, expires)?;
    repo.check_keys(&keys)?;
    let leftovers = crate::gc::remove_interrupted_leftovers(&repo)?;
    if !leftovers.is_empty() {
        tracing::info!(
            "removed {} file(s) an interrupted release left in {}",
            leftovers.len(),
            opts.repo.display()
        );
    }
    let old_info = repo.info()?;
    let app = match (&opts.name, &old_info) {
        (Some(n), Some(i)) if *n != i.app => {
            return Err(Error::Repo {
                path: opts.repo.clone(),
                reason: format!("holds app {:?}, not {n:?}", i.app),
            })
        }
        (Some(n), _) => n.clone(),
        (None, Some(i)) => i.app.clone(),
        (None, None) => opts
            .repo
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "app".into()),
    };
    let releases = repo.releases()?;
    if let Some((latest, _)) = releases.last() {
        if opts.version <= *latest {
            return Err(Error::Repo {
                path: opts.repo.clone(),
                reason: format!(
                    "version {} is not greater than the latest release {latest}",
                    opts.version
                ),
            });
        }
    }

    // Ignore patterns, carried forward from the previous release.
    let prev_manifest = match releases.last() {
        Some((v, _)) => Some(repo.manifest(v)?),
        None => None,
    };
    let ignore_report = resolve_ignore(
        &opts.repo,
        &opts.ignore,
        prev_manifest
            .as_ref()
            .map(|m| (&m.version, m.ignore.as_slice())),
        &opts.ignore_carry,
    )?;
    let ignore_patterns = ignore_report.patterns.clone();

    // Scan the new tree.
    progress.start("scan", 0);
    let ignore = PathPatterns::new(&ignore_patterns)?;
    let code = PathPatterns::new(&opts.code)?;
    let resources = PathPatterns::new(&opts.resources)?;
    PathPatterns::new(&opts.owned)?;
    let tree = scan::scan(&opts.root, &ignore, Strictness::Release).map_err(|e| match e {
        patch_apply::Error::Format(f) => Error::Tree {
            path: opts.root.clone(),
            reason: f.to_string(),
        },
        other => Error::Apply(other),
    })?;
    progress.finish();
    let scan_s = t0.elapsed().as_secs_f64();

    // Old manifests, and the repair files they already reference.
    let mut manifests: BTreeMap<Version, ReleaseManifest> = BTreeMap::new();
    for (v, _) in &releases {
        manifests.insert(v.clone(), repo.manifest(v)?);
    }
    let mut known_blobs: BTreeMap<Blake3, Pin> = BTreeMap::new();
    for m in manifests.values() {
        for e in &m.entries {
            if let (Some(p), Some(r)) = (e.node.file_pin(), e.repair) {
                known_blobs.insert(p.blake3, r);
            }
        }
    }

    // Repair files.
    let t_repair = Instant::now();
    let files: Vec<(&RelPath, Pin)> = tree
        .entries
        .iter()
        .filter_map(|(p, n)| n.file_pin().map(|pin| (p, pin)))
        .collect();
    let todo: BTreeMap<Blake3, (&RelPath, Pin)> = files
        .iter()
        .filter(|(_, pin)| !known_blobs.contains_key(&pin.blake3))
        .map(|(p, pin)| (pin.blake3, (*p, *pin)))
        .collect();
    progress.start("repair files", todo.len() as u64);
    // Largest files first, one task each: the long compressions start early and the small
    // files fill both cores at the end.
    let mut todo: Vec<(Blake3, (&RelPath, Pin))> = todo.into_iter().collect();
    todo.sort_by_key(|(_, (_, pin))| std::cmp::Reverse(pin.size));
    let written: Vec<Result<(Blake3, Pin)>> = todo
        .par_iter()
        .with_max_len(1)
        .map(|(h, (path, pin))| {
            let src = path.to_path(&opts.root);
            let repair =
                crate::repair::write_repair_file(&src, *pin, &repo.blob_file(h), opts.level)?;
            progress.advance(1);
            Ok((*h, repair))
        })
        .collect();
    progress.finish();
    let mut new_blobs = 0u64;
    let mut new_blob_bytes = 0u64;
    for w in written {
        let (h, pin) = w?;
        new_blobs += 1;
        new_blob_bytes += pin.size;
        known_blobs.insert(h, pin);
    }
    let repair_s = t_repair.elapsed().as_secs_f64();

    // The manifest.
    let entries: Vec<Entry> = tree
        .entries
        .iter()
        .map(|(p, n)| {
            let (code_flag, repair) = match n {
                Node::File { blake3, exec, .. } => (
                    is_code(p, *exec, &code, &resources),
                    known_blobs.get(blake3).copied(),
                ),
                _ => (false, None),
            };
            Entry {
                path: p.clone(),
                node: n.clone(),
                code: code_flag,
                repair,
            }
        })
        .collect();
    let manifest = ReleaseManifest {
        format: MANIFEST_FORMAT.into(),
        app: app.clone(),
        version: opts.version.clone(),
        ignore: ignore_patterns.clone(),
        owned: opts.owned.clone(),
        restart_required: opts.restart_required,
        notes,
        links: opts.links.clone(),
        entries,
    };
    manifest.validate("new manifest", &formats::limits::Limits::default())?;
    let repair_total = manifest.total_repair_bytes();

    // Patches.
    let t_diff = Instant::now();
    let from_versions: Vec<Version> = match opts.patches_from {
        PatchesFrom::Previous => releases
            .last()
            .map(|(v, _)| v.clone())
            .into_iter()
            .collect(),
        PatchesFrom::All => releases.iter().map(|(v, _)| v.clone()).collect(),
    };
    let mut prev_trees = Vec::new();
    for p in &opts.prev_roots {
        let t = scan::scan(p, &PathPatterns::empty(), Strictness::Install).map_err(|e| {
            Error::Tree {
                path: p.clone(),
                reason: e.to_string(),
            }
        })?;
        prev_trees.push((p.clone(), t));
    }
    let mut new_targets = repo.targets.clone();
    let mut patch_reports = Vec::new();
    let tmp_dir = tempfile::Builder::new()
        .prefix(".tmp-release-")
        .tempdir_in(&opts.repo)
        .at(&opts.repo)?;
    for from in &from_versions {
        let old = &manifests[from];
        let source = source_for(old, &prev_trees, &opts.repo);
        let (info, members) = build_patch(
            old,
            &manifest,
            &tree,
            &opts.root,
            &source,
            &opts.encode,
            progress,
        )?;
        let name = layout::patch_target(from, &opts.version);
        let tmp = tmp_dir.path().join(format!("patch-{from}"));
        pack::write_patch(&tmp, &info, &members)?;
        let entry = repo.place_target_file(
            &name,
            &tmp,
            TargetCustom {
                version: Some(opts.version.clone()),
                from: Some(from.clone()),
                ..TargetCustom::new(TargetKind::Patch, Blake3([0; 32]))
            },
        )?;
        let mut encodings: BTreeMap<String, u64> = BTreeMap::new();
        for op in &info.ops {
            *encodings.entry(op.encoding.name().to_string()).or_default() += 1;
        }
        patch_reports.push(PatchReport {
            from: from.to_string(),
            to: opts.version.to_string(),
            path: layout::target_file(&name, &entry.sha256()?),
            bytes: entry.length,
            encodings,
            deletes: info.deletes.len() as u64,
        });
        new_targets.targets.insert(name, entry);
    }
    let diff_s = t_diff.elapsed().as_secs_f64();

    // Installer.
    let t_inst = Instant::now();
    progress.start("installer", 0);
    let inst_name = layout::installer_target(&opts.version);
    let inst_tmp = tmp_dir.path().join("installer");
    let inst_stats = if opts.solid_installer {
        pack::write_installer(&inst_tmp, &manifest, &opts.root, opts.level)?;
        crate::release::installer::InstallerStats::default()
    } else {
        crate::release::installer::write_installer_from_blobs(
            &inst_tmp, &manifest, &opts.repo, &opts.root, opts.level,
        )?
    };
    let inst_entry = repo.place_target_file(
        &inst_name,
        &inst_tmp,
        TargetCustom {
            version: Some(opts.version.clone()),
            ..TargetCustom::new(TargetKind::Installer, Blake3([0; 32]))
        },
    )?;
    progress.finish();
    let installer_s = t_inst.elapsed().as_secs_f64();
    let installer_report = ArtifactReport {
        path: layout::target_file(&inst_name, &inst_entry.sha256()?),
        bytes: inst_entry.length,
    };
    new_targets.targets.insert(inst_name, inst_entry);

    // Manifest and repository settings.
    let m_bytes = manifest.to_json()?;
    let m_name = layout::manifest_target(&opts.version);
    let m_entry = repo.write_target(
        &m_name,
        &m_bytes,
        TargetCustom {
            version: Some(opts.version.clone()),
            tree: Some(manifest.tree_digest()),
            ignore: ignore_patterns.clone(),
            channel: opts.channel.clone(),
            targeting: opts.targeting.clone(),
            ..TargetCustom::new(TargetKind::Manifest, Blake3::of(&m_bytes))
        },
    )?;
    let manifest_report = ArtifactReport {
        path: layout::target_file(&m_name, &m_entry.sha256()?),
        bytes: m_entry.length,
    };
    new_targets.targets.insert(m_name, m_entry);
    if old_info.is_none() {
        let info = Repo::default_info(&app);
        let entry = repo.write_info(&info)?;
        new_targets.targets.insert(REPOSITORY_TARGET.into(), entry);
    }

    // Pruning.
    let mut pruned = Vec::new();
    if let Some(keep) = opts.keep {
        let mut all: Vec<Version> = releases.iter().map(|(v, _)| v.clone()).collect();
        all.push(opts.version.clone());
        let cut = all.len().saturating_sub(keep.max(1));
        let gone: BTreeSet<Version> = all[..cut].iter().cloned().collect();
        new_targets.targets.retain(|name, t| {
            let Ok(c) = t.patchkit(name) else { return true };
            let v_gone = c.version.as_ref().is_some_and(|v| gone.contains(v));
            let from_gone = c.from.as_ref().is_some_and(|v| gone.contains(v));
            !(v_gone || from_gone)
        });
        pruned = gone.iter().map(|v| v.to_string()).collect();
    }

    repo.commit(new_targets, &keys, expires)?;
    if !pruned.is_empty() {
        crate::gc::collect_garbage(&repo)?;
    }
    Ok(ReleaseReport {
        app,
        version: opts.version.to_string(),
        repository: opts.repo.display().to_string(),
        files: files.len() as u64,
        file_bytes: tree.file_bytes(),
        manifest: manifest_report,
        installer: installer_report,
        installer_build: inst_stats,
        patches: patch_reports,
        repair: RepairReport {
            files: files.len() as u64,
            bytes: repair_total,
            new_files: new_blobs,
            new_bytes: new_blob_bytes,
        },
        pruned,
        leftovers_removed: leftovers,
        ignore: ignore_report,
        targets_version: repo.targets.version,
        timings: Timings {
            scan_s,
            repair_s,
            diff_s,
            installer_s,
            total_s: t0.elapsed().as_secs_f64(),
        },
    })
}

/// Normalizes a path for matching renamed files: digits and dots runs collapse, so
/// `numpy-2.1.2.dist-info/RECORD` and `numpy-2.1.3.dist-info/RECORD` match.
fn fuzzy_key(p: &RelPath) -> String {
    let mut out = String::new();
    let mut in_num = false;
    for c in p.as_str().chars() {
        if c.is_ascii_digit() {
            if !in_num {
                out.push('#');
            }
            in_num = true;
        } else if c == '.' && in_num {
        } else {
            in_num = false;
            out.push(c);
        }
    }
    out
}

fn pick_similar<'a>(
    cands: Option<&Vec<&'a Entry>>,
    new_paths: &BTreeSet<&RelPath>,
    old_by_path: &BTreeMap<&RelPath, &Entry>,
    size: u64,
) -> Option<&'a Entry> {
    cands?
        .iter()
        .copied()
        .filter(|o| !new_paths.contains(&o.path) || old_by_path.contains_key(&o.path))
        .min_by_key(|o| {
            o.node
                .file_pin()
                .map(|p| p.size.abs_diff(size))
                .unwrap_or(u64::MAX)
        })
}

/// An op of a patch and its member, if it has one.
type EncodedOp = (PatchOp, Option<Member>);

/// Builds the patch from `old` to `new`: ops for every file whose content is new at its path,
/// deletes for every old path that is gone or changed kind.
pub fn build_patch(
    old: &ReleaseManifest,
    new: &ReleaseManifest,
    _new_tree: &Tree,
    new_root: &Path,
    old_source: &ContentSource,
    encode: &EncodeOptions,
    progress: &dyn Progress,
) -> Result<(PatchInfo, Vec<Member>)> {
    let old_by_path = old.by_path();
    let mut old_by_hash: BTreeMap<Blake3, &Entry> = BTreeMap::new();
    let mut old_by_fuzzy: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    let mut old_by_name: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in &old.entries {
        if let Node::File { blake3, .. } = e.node {
            old_by_hash.entry(blake3).or_insert(e);
            old_by_fuzzy.entry(fuzzy_key(&e.path)).or_default().push(e);
            old_by_name.entry(e.path.file_name()).or_default().push(e);
        }
    }
    let new_paths: BTreeSet<&RelPath> = new.entries.iter().map(|e| &e.path).collect();
    enum Plan<'a> {
        Copy(&'a Entry),
        Diff(&'a Entry),
        Full,
    }
    let mut plans: Vec<(&Entry, Plan)> = Vec::new();
    for e in &new.entries {
        let Node::File { size, blake3, .. } = e.node else {
            continue;
        };
        let same = old_by_path.get(&e.path).copied();
        if let Some(o) = same {
            if o.node.file_pin().map(|p| p.blake3) == Some(blake3) {
                continue;
            }
        }
        if let Some(o) = old_by_hash.get(&blake3) {
            plans.push((e, Plan::Copy(o)));
            continue;
        }
        let similar = same
            .filter(|o| matches!(o.node, Node::File { .. }))
            .or_else(|| {
                pick_similar(
                    old_by_fuzzy.get(&fuzzy_key(&e.path)),
                    &new_paths,
                    &old_by_path,
                    size,
                )
                .or_else(|| {
                    pick_similar(
                        old_by_name.get(e.path.file_name()),
                        &new_paths,
                        &old_by_path,
                        size,
                    )
                })
            });
        match similar {
            Some(o) if size > 0 => plans.push((e, Plan::Diff(o))),
            _ => plans.push((e, Plan::Full)),
        }
    }
    let new_by_path = new.by_path();
    let deletes: Vec<RelPath> = old
        .entries
        .iter()
        .filter(|o| match new_by_path.get(&o.path) {
            None => true,
            Some(n) => std::mem::discriminant(&n.node) != std::mem::discriminant(&o.node),
        })
        .map(|o| o.path.clone())
        .collect();
    progress.start(
        &format!("diff {} -> {}", old.version, new.version),
        plans.len() as u64,
    );
    // Largest files first, one task each: the long diffs start early and the small ones fill
    // the cores at the end. The ops keep the manifest's order.
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(plans[i].0.node.file_pin().map_or(0, |p| p.size)));
    let encode_op = |(e, plan): &(&Entry, Plan)| -> Result<EncodedOp> {
        let pin = e.node.file_pin().ok_or_else(|| Error::Repo {
            path: new_root.to_path_buf(),
            reason: format!("{} is not a file", e.path),
        })?;
        let out = match plan {
            Plan::Copy(o) => (
                PatchOp {
                    path: e.path.clone(),
                    new: pin,
                    encoding: Encoding::Copy {
                        source: o.path.clone(),
                    },
                },
                None,
            ),
            Plan::Full => {
                let p = e.path.to_path(new_root);
                let member = crate::encode::compress_file_member(&p, pin, encode)?;
                (
                    PatchOp {
                        path: e.path.clone(),
                        new: pin,
                        encoding: Encoding::Full {
                            member_size: member.len(),
                        },
                    },
                    Some(member),
                )
            }
            Plan::Diff(o) => {
                let opin = o.node.file_pin().ok_or_else(|| Error::Repo {
                    path: new_root.to_path_buf(),
                    reason: format!("{} is not a file", o.path),
                })?;
                let old_file = old_source.file(&o.path, opin, o.repair)?;
                let p = e.path.to_path(new_root);
                let enc = encode_files(old_file.path(), opin, &p, pin, encode)?;
                let size = enc.member.len();
                let encoding = match enc.chosen {
                    Chosen::Full => Encoding::Full { member_size: size },
                    Chosen::Bidiff => Encoding::Bidiff {
                        source: o.path.clone(),
                        member_size: size,
                    },
                    Chosen::SplitDiff => Encoding::SplitDiff {
                        source: o.path.clone(),
                        member_size: size,
                    },
                    Chosen::ZstdRef { window_log } => Encoding::ZstdRef {
                        source: o.path.clone(),
                        member_size: size,
                        window_log,
                    },
                    Chosen::ExeSplitDiff(filter) => Encoding::ExeSplitDiff {
                        source: o.path.clone(),
                        member_size: size,
                        filter,
                    },
                    Chosen::ExeProjectDiff(project) => Encoding::ExeProjectDiff {
                        source: o.path.clone(),
                        member_size: size,
                        project,
                    },
                };
                (
                    PatchOp {
                        path: e.path.clone(),
                        new: pin,
                        encoding,
                    },
                    Some(enc.member),
                )
            }
        };
        progress.advance(1);
        Ok(out)
    };
    let mut results: Vec<(usize, Result<EncodedOp>)> = order
        .par_iter()
        .with_max_len(1)
        .map(|&i| (i, encode_op(&plans[i])))
        .collect();
    results.sort_by_key(|(i, _)| *i);
    progress.finish();
    let mut ops = Vec::new();
    let mut members = Vec::new();
    for (_, r) in results {
        let (op, m) = r?;
        ops.push(op);
        if let Some(m) = m {
            members.push(m);
        }
    }
    let info = PatchInfo {
        format: format_for(&ops).into(),
        app: new.app.clone(),
        from: old.version.clone(),
        to: new.version.clone(),
        from_tree: old.tree_digest(),
        to_tree: new.tree_digest(),
        ops,
        deletes,
    };
    Ok((info, members))
}
