//! `patch-create verify`: checks a whole repository the way a client would, and more.
//!
//! Every metadata file's signatures, every target's length and hashes, every repair file, the
//! installer of every release (extracted and checked against its manifest), and every patch,
//! re-applied with the updater's own code to the old release rebuilt from repair files and
//! compared with the new release. Problems are collected (each names the file), not stopped at.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use formats::keys::PublicKey;
use formats::layout;
use formats::limits::Limits;
use formats::manifest::ReleaseManifest;
use formats::patterns::PathPatterns;
use formats::tuf::{self, RootMetadata, SnapshotMetadata, TargetsMetadata, TimestampMetadata};
use patch_apply::repo_view::{self, RepoView};
use patch_apply::scan::{self, Strictness};
use patch_apply::stage::{self, StageCtx};
use patch_apply::state::StateDir;
use patch_apply::transport::{DirTransport, Transport};
use patch_apply::trust::{self, StoredTrust};
use serde::Serialize;

use crate::error::{Error, IoContext, Result};

/// Sizes of one patch.
#[derive(Clone, Debug, Serialize)]
pub struct PatchSize {
    /// Source version.
    pub from: String,
    /// Bytes.
    pub bytes: u64,
    /// Percent of the target release's installer.
    pub percent_of_installer: f64,
}

/// Sizes of one release.
#[derive(Clone, Debug, Serialize)]
pub struct VersionReport {
    /// Version.
    pub version: String,
    /// Files.
    pub files: u64,
    /// Bytes of all files.
    pub file_bytes: u64,
    /// Installer bytes.
    pub installer_bytes: u64,
    /// Sum of the release's repair files.
    pub repair_bytes: u64,
    /// Repair bytes as percent of the installer.
    pub repair_percent_of_installer: f64,
    /// Patches leading to this release.
    pub patches: Vec<PatchSize>,
    /// Why the release was yanked (`patch-create yank`), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yanked: Option<String>,
}

/// When one role's current metadata expires.
#[derive(Clone, Debug, Serialize)]
pub struct RoleExpiry {
    /// `root`, `targets`, `snapshot` or `timestamp`.
    pub role: String,
    /// The metadata's version.
    pub version: u64,
    /// Its expiry (TUF time, UTC).
    pub expires: String,
    /// Seconds from now until then.
    pub seconds_left: i64,
    /// Seconds from when the file was written until its expiry, when known (its usual period).
    pub period_seconds: Option<i64>,
    /// Expires within 7 days, or within a tenth of its period: re-sign soon.
    pub near: bool,
}

/// A role whose expiry is this close counts as near.
pub const NEAR_EXPIRY: time::Duration = time::Duration::days(7);

impl RoleExpiry {
    fn of(
        role: &str,
        version: u64,
        expires: &str,
        file: &Path,
        now: time::OffsetDateTime,
    ) -> Result<Self> {
        let at = formats::time_util::parse_tuf(expires)?;
        let left = at - now;
        let written = std::fs::metadata(file)
            .and_then(|m| m.modified())
            .ok()
            .map(time::OffsetDateTime::from);
        let period = written.map(|w| at - w).filter(|p| p.is_positive());
        let near = left < NEAR_EXPIRY || period.is_some_and(|p| left < p / 10);
        Ok(RoleExpiry {
            role: role.to_string(),
            version,
            expires: expires.to_string(),
            seconds_left: left.whole_seconds(),
            period_seconds: period.map(|p| p.whole_seconds()),
            near,
        })
    }

    /// The time left in words ("in 89 days 23 hours", "expired 2 minutes ago").
    pub fn left_words(&self) -> String {
        let d = time::Duration::seconds(self.seconds_left.abs());
        if self.seconds_left < 0 {
            format!("expired {} ago", duration_words(d))
        } else {
            format!("in {}", duration_words(d))
        }
    }
}

/// A duration in words, its two largest units: "3 minutes", "89 days 23 hours", "1 hour".
pub fn duration_words(d: time::Duration) -> String {
    let mut secs = d.whole_seconds().unsigned_abs();
    let mut parts = Vec::new();
    for (size, unit) in [
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ] {
        let n = secs / size;
        secs %= size;
        if n > 0 && parts.len() < 2 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        } else if !parts.is_empty() {
            // Only adjacent units: "1 day 5 seconds" says less than "1 day".
            break;
        }
    }
    if parts.is_empty() {
        "0 seconds".into()
    } else {
        parts.join(" ")
    }
}

/// The result of `verify`.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// App name.
    pub app: String,
    /// Per release.
    pub versions: Vec<VersionReport>,
    /// Problems found; empty when the repository is sound.
    pub problems: Vec<String>,
    /// Files that no signed metadata references (left by an interrupted release; harmless).
    pub unreferenced: Vec<String>,
    /// Counts of what was checked.
    pub checked: BTreeMap<String, u64>,
    /// When each role's current metadata expires (empty when the metadata did not verify).
    pub expiry: Vec<RoleExpiry>,
}

impl VerifyReport {
    /// A human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = format!("repository of {}\n", self.app);
        s.push_str(&format!(
            "{:<16} {:>8} {:>14} {:>12} {:>12}  patches\n",
            "version", "files", "file bytes", "installer", "repair"
        ));
        for v in &self.versions {
            let patches: Vec<String> = v
                .patches
                .iter()
                .map(|p| {
                    format!(
                        "from {}: {} B ({:.2}%)",
                        p.from, p.bytes, p.percent_of_installer
                    )
                })
                .collect();
            s.push_str(&format!(
                "{:<16} {:>8} {:>14} {:>12} {:>12}  {}\n",
                v.version,
                v.files,
                v.file_bytes,
                v.installer_bytes,
                format!("{} ({:.0}%)", v.repair_bytes, v.repair_percent_of_installer),
                patches.join(", ")
            ));
            if let Some(why) = &v.yanked {
                s.push_str(&format!("{:<16} yanked: {why}\n", ""));
            }
        }
        let checked: Vec<String> = self
            .checked
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        s.push_str(&format!("checked: {}\n", checked.join(", ")));
        for e in &self.expiry {
            s.push_str(&format!(
                "expires: {:<9} version {:<4} {} ({}){}\n",
                e.role,
                e.version,
                e.expires,
                e.left_words(),
                if e.near { ", soon: re-sign it" } else { "" }
            ));
        }
        for u in &self.unreferenced {
            s.push_str(&format!("note: unreferenced file {u}\n"));
        }
        if self.problems.is_empty() {
            s.push_str("OK: every signature, hash and patch verified\n");
        } else {
            for p in &self.problems {
                s.push_str(&format!("PROBLEM: {p}\n"));
            }
        }
        s
    }
}

/// Whether `name` is a file of a delegated role this format writes: `V.recent.json` or
/// `V.archive-NNNN.json`.
fn is_delegated_file(name: &str) -> bool {
    let Some((v, rest)) = name.split_once('.') else {
        return false;
    };
    let Some(role) = rest.strip_suffix(".json") else {
        return false;
    };
    !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_digit())
        && (role == layout::RECENT_ROLE || layout::archive_number(role).is_some())
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        (a as f64) * 100.0 / (b as f64)
    }
}

/// Verifies the repository at `repo` against the pinned root key `key`.
pub fn verify(repo: &Path, key: &PublicKey) -> Result<VerifyReport> {
    if !repo
        .join(layout::METADATA_DIR)
        .join("timestamp.json")
        .exists()
    {
        return Err(Error::Repo {
            path: repo.to_path_buf(),
            reason: "is not a patch repository (metadata/timestamp.json missing)".into(),
        });
    }
    let limits = Limits::default();
    let tr = DirTransport::new(repo);
    let mut problems = Vec::new();
    let mut checked: BTreeMap<String, u64> = BTreeMap::new();
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    let (set, _) = match trust::refresh(
        &tr,
        std::slice::from_ref(key),
        &StoredTrust::default(),
        formats::time_util::now(),
        &limits,
    ) {
        Ok(x) => x,
        Err(e) => {
            return Ok(VerifyReport {
                app: String::new(),
                versions: vec![],
                problems: vec![format!("metadata: {e}")],
                unreferenced: vec![],
                checked,
                expiry: vec![],
            })
        }
    };
    let now = formats::time_util::now();
    let md_dir = repo.join(layout::METADATA_DIR);
    let mut expiry = Vec::new();
    let root = set.root().root();
    expiry.push(RoleExpiry::of(
        "root",
        root.version,
        &root.expires,
        &md_dir.join(format!("{}.root.json", root.version)),
        now,
    )?);
    if let Some(t) = set.targets() {
        let file = set
            .targets_file()
            .map(|(n, _)| md_dir.join(n))
            .unwrap_or_default();
        expiry.push(RoleExpiry::of(
            "targets", t.version, &t.expires, &file, now,
        )?);
    }
    // Every delegated role, verified the way a client verifies it.
    let mut role_cache = trust::DelegatedCache::new();
    let listed = trust::release_targets(
        &tr,
        &set,
        &StoredTrust::default(),
        &mut role_cache,
        trust::Listing::All,
        &limits,
    );
    if let (Some(top), Ok(_)) = (set.targets(), &listed) {
        for (name, bytes) in &role_cache {
            if let Ok(doc) = set.verify_delegated(name, top, bytes) {
                let file = set
                    .delegated_file(name)
                    .map(|(n, _)| md_dir.join(n))
                    .unwrap_or_default();
                expiry.push(RoleExpiry::of(name, doc.version, &doc.expires, &file, now)?);
            }
        }
    }
    if let Some(sn) = set.snapshot() {
        let file = set
            .snapshot_file_name()
            .map(|n| md_dir.join(n))
            .unwrap_or_default();
        expiry.push(RoleExpiry::of(
            "snapshot",
            sn.version,
            &sn.expires,
            &file,
            now,
        )?);
    }
    if let Some(ts) = set.timestamp() {
        expiry.push(RoleExpiry::of(
            "timestamp",
            ts.version,
            &ts.expires,
            &md_dir.join("timestamp.json"),
            now,
        )?);
    }
    // Every metadata file must verify under some root of the chain.
    let mut roots: Vec<RootMetadata> = Vec::new();
    let md = repo.join(layout::METADATA_DIR);
    for n in 1.. {
        let p = md.join(format!("{n}.root.json"));
        let Ok(b) = std::fs::read(&p) else { break };
        referenced.insert(format!("{}/{n}.root.json", layout::METADATA_DIR));
        match tuf::parse_unverified::<RootMetadata>(&p.display().to_string(), &b, &limits) {
            Ok(r) => roots.push(r.signed),
            Err(e) => problems.push(e.to_string()),
        }
        if n == set.root().root().version {
            let copy = md.join("root.json");
            referenced.insert(format!("{}/root.json", layout::METADATA_DIR));
            if std::fs::read(&copy).ok().as_deref() != Some(&b[..]) {
                problems.push(format!("{}: differs from {n}.root.json", copy.display()));
            }
        }
    }
    checked.insert("root versions".into(), roots.len() as u64);
    referenced.insert(format!("{}/timestamp.json", layout::METADATA_DIR));
    for entry in std::fs::read_dir(&md).at(&md)? {
        let entry = entry.at(&md)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let p = entry.path();
        let ok = |r: std::result::Result<(), formats::Error>| r.is_ok();
        let any_root = |f: &dyn Fn(&RootMetadata) -> bool| roots.iter().any(f);
        let bytes = std::fs::read(&p).at(&p)?;
        let valid = if name.ends_with(".targets.json") {
            any_root(&|r| {
                ok(tuf::verify_role::<TargetsMetadata>(&name, &bytes, r, &limits).map(|_| ()))
            })
        } else if name.ends_with(".snapshot.json") {
            any_root(&|r| {
                ok(tuf::verify_role::<SnapshotMetadata>(&name, &bytes, r, &limits).map(|_| ()))
            })
        } else if name == "timestamp.json" {
            any_root(&|r| {
                ok(tuf::verify_role::<TimestampMetadata>(&name, &bytes, r, &limits).map(|_| ()))
            })
        } else if name.ends_with(".root.json") || name == "root.json" {
            true
        } else if is_delegated_file(&name) {
            // Delegated roles are signed by the targets role's keys (docs/format.md §7.2).
            any_root(&|r| {
                ok(tuf::verify_role::<TargetsMetadata>(&name, &bytes, r, &limits).map(|_| ()))
            })
        } else {
            problems.push(format!("metadata/{name}: unexpected file"));
            true
        };
        if !valid {
            problems.push(format!(
                "metadata/{name}: signature does not verify under any root version"
            ));
        }
        referenced.insert(format!("{}/{name}", layout::METADATA_DIR));
        *checked.entry("metadata files".into()).or_default() += 1;
    }
    let targets = match listed {
        Ok(l) => l.targets,
        Err(e) => {
            problems.push(format!("metadata (delegated targets roles): {e}"));
            set.targets().cloned().ok_or_else(|| Error::Repo {
                path: repo.to_path_buf(),
                reason: "targets missing".into(),
            })?
        }
    };
    let view = RepoView::from_targets(&targets)?;
    // Every target's bytes.
    for (name, t) in &targets.targets {
        let rel = match repo_view::target_path(name, t) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("target {name}: {e}"));
                continue;
            }
        };
        referenced.insert(rel.clone());
        let exp = match repo_view::expected(name, t) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("target {name}: {e}"));
                continue;
            }
        };
        let tmp = tempfile::NamedTempFile::new().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        if let Err(e) = tr.download(&rel, &exp, tmp.path(), &|_| {}) {
            problems.push(format!("{rel}: {e}"));
        }
        *checked.entry("targets".into()).or_default() += 1;
    }
    let info = repo_view::fetch_info(&tr, &view).map_err(Error::Apply);
    let app = match &info {
        Ok(Some(i)) => i.app.clone(),
        Ok(None) => String::new(),
        Err(e) => {
            problems.push(format!("repository.json: {e}"));
            String::new()
        }
    };
    // Manifests and repair files.
    let mut manifests: BTreeMap<formats::Version, ReleaseManifest> = BTreeMap::new();
    for r in &view.releases {
        match repo_view::fetch_manifest(&tr, r, &limits) {
            Ok(m) => {
                if m.app != app {
                    problems.push(format!(
                        "{}: app {:?} differs from repository app {app:?}",
                        r.manifest_name, m.app
                    ));
                }
                manifests.insert(r.version.clone(), m);
            }
            Err(e) => problems.push(format!("{}: {e}", r.manifest_name)),
        }
    }
    let mut blobs_checked = BTreeSet::new();
    for m in manifests.values() {
        for e in &m.entries {
            let (Some(pin), Some(repair)) = (e.node.file_pin(), e.repair) else {
                if e.node.file_pin().is_some() {
                    problems.push(format!("{} {}: no repair file", m.version, e.path));
                }
                continue;
            };
            let rel = layout::blob_path(&pin.blake3);
            referenced.insert(rel.clone());
            if !blobs_checked.insert(rel.clone()) {
                continue;
            }
            if let Err(e) = crate::content::read_blob(repo, &pin.blake3, repair, pin) {
                problems.push(format!(
                    "{rel} (repair file of {} in {}): {e}",
                    e_path(&e),
                    m.version
                ));
            }
        }
    }
    checked.insert("repair files".into(), blobs_checked.len() as u64);
    // Installers and patches, through the updater's own code.
    let work = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut versions = Vec::new();
    for r in &view.releases {
        let Some(m) = manifests.get(&r.version) else {
            continue;
        };
        let installer_bytes = r.installer.as_ref().map(|(_, t)| t.length).unwrap_or(0);
        if let Some((name, t)) = &r.installer {
            let dir = work.path().join(format!("inst-{}", r.version));
            let res = (|| -> patch_apply::Result<()> {
                let p = repo_view::target_path(name, t)?;
                patch_apply::archive::extract_installer(
                    &repo.join(&p),
                    &p,
                    m,
                    &dir,
                    &limits,
                    &|_, _| {},
                )
            })();
            if let Err(e) = res {
                problems.push(format!("installer of {}: {e}", r.version));
            }
            let _ = std::fs::remove_dir_all(&dir);
            *checked.entry("installers".into()).or_default() += 1;
        } else {
            problems.push(format!("release {} has no installer", r.version));
        }
        let mut patches = Vec::new();
        for (i, edge) in view
            .patches
            .iter()
            .enumerate()
            .filter(|(_, e)| e.to == r.version)
        {
            patches.push(PatchSize {
                from: edge.from.to_string(),
                bytes: edge.target.length,
                percent_of_installer: pct(edge.target.length, installer_bytes),
            });
            let Some(old) = manifests.get(&edge.from) else {
                problems.push(format!(
                    "{}: source release {} is not in the repository",
                    edge.name, edge.from
                ));
                continue;
            };
            let dir = work.path().join(format!("patch-{i}"));
            if let Err(e) = replay_patch(&tr, &dir, old, m, edge, &limits) {
                problems.push(format!("{}: {e}", edge.name));
            }
            let _ = std::fs::remove_dir_all(&dir);
            *checked.entry("patches".into()).or_default() += 1;
        }
        let repair_bytes = m.total_repair_bytes();
        versions.push(VersionReport {
            version: r.version.to_string(),
            files: m.file_paths().len() as u64,
            file_bytes: m.total_file_bytes(),
            installer_bytes,
            repair_bytes,
            repair_percent_of_installer: pct(repair_bytes, installer_bytes),
            patches,
            yanked: r.custom.yanked.as_ref().map(|y| y.reason.clone()),
        });
    }
    // Files nobody references.
    let mut unreferenced = Vec::new();
    for dir in [layout::TARGETS_DIR, layout::BLOBS_DIR] {
        let base = repo.join(dir);
        if !base.exists() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&base).min_depth(1) {
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(repo)
                    .unwrap_or(entry.path())
                    .to_string_lossy()
                    .replace('\\', "/");
                if !referenced.contains(&rel) {
                    unreferenced.push(rel);
                }
            }
        }
    }
    Ok(VerifyReport {
        app,
        versions,
        problems,
        unreferenced,
        checked,
        expiry,
    })
}

fn e_path(e: &Error) -> String {
    match e {
        Error::Io { path, .. } => path.display().to_string(),
        _ => "file".into(),
    }
}

/// Rebuilds `old` from repair files into `dir`, applies `edge` with the updater's incremental
/// code (the same staging path a client runs), and checks that every file of the result is
/// exactly the file of `new`. Nothing here needs durability, so the tree is assembled with plain
/// renames instead of the journaled commit.
fn replay_patch(
    tr: &dyn Transport,
    dir: &Path,
    old: &ReleaseManifest,
    new: &ReleaseManifest,
    edge: &patch_apply::repo_view::PatchEdge,
    limits: &Limits,
) -> patch_apply::Result<()> {
    use formats::manifest::Node;
    let state = StateDir::of(dir);
    state.create()?;
    let downloaded = AtomicU64::new(0);
    let sink = |_: &patch_apply::Event| {};
    let ctx = |n: &str| StageCtx {
        transport: tr,
        cache: state.cache(),
        staging: state.staging().join(n),
        limits,
        app_dir: dir,
        events: &sink,
        downloaded: &downloaded,
    };
    // The old release, rebuilt from its repair files.
    let repo = PathBuf::from(tr.describe());
    for e in &old.entries {
        let p = e.path.to_path(dir);
        let io = |err| patch_apply::Error::io(&p, err);
        match &e.node {
            Node::Dir => std::fs::create_dir_all(&p).map_err(io)?,
            Node::File { exec, .. } => {
                let (pin, repair) =
                    e.node.file_pin().zip(e.repair).ok_or_else(|| {
                        patch_apply::Error::bad(e.path.as_str(), "no repair file")
                    })?;
                let bytes = crate::content::read_blob(&repo, &pin.blake3, repair, pin)
                    .map_err(|err| patch_apply::Error::bad(e.path.as_str(), err.to_string()))?;
                std::fs::write(&p, bytes).map_err(io)?;
                patch_apply::scan::set_exec(&p, *exec)?;
            }
            Node::Symlink { target } => patch_apply::archive::make_symlink(target, &p)?,
        }
    }
    let current = scan::scan(dir, &PathPatterns::empty(), Strictness::Install)?;
    if current.digest(&PathPatterns::empty()) != old.tree_digest() {
        return Err(patch_apply::Error::Verify {
            path: dir.display().to_string(),
            reason: format!("rebuilt {} differs from its manifest", old.version),
        });
    }
    // The patch, through the client's incremental staging.
    let staged =
        stage::stage_incremental(&ctx("patch"), &[edge], old.tree_digest(), &current, new)?;
    let mut wrong = Vec::new();
    for e in &new.entries {
        let Some(pin) = e.node.file_pin() else {
            continue;
        };
        let file = staged
            .get(&e.path)
            .cloned()
            .unwrap_or_else(|| e.path.to_path(dir));
        match formats::hash::pin_file(&file) {
            Ok(p) if p == pin => {}
            _ => wrong.push(e.path.to_string()),
        }
    }
    if !wrong.is_empty() {
        wrong.truncate(5);
        return Err(patch_apply::Error::Verify {
            path: wrong.join(", "),
            reason: format!(
                "patched {} differs from release {}",
                old.version, new.version
            ),
        });
    }
    Ok(())
}
