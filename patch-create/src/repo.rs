//! Reading and writing a repository on the release engineer's side (docs/format.md §1, §7).
//!
//! New artifacts are written under content-addressed names (never overwriting anything a
//! client may be reading), then the new targets and snapshot metadata, and `timestamp.json`
//! last, atomically: a crash at any point leaves the previous repository state intact.
//!
//! Targets are split between top-level `targets`, the delegated role `recent` and the archive
//! chunks (docs/format.md §7.2): [`Repo::targets`] is every target of the repository, as one
//! document, and [`Repo::commit`] computes the split ([`roles`]) and writes the roles that
//! changed, so writers never deal with roles.
//!
//! Folder `repo/`: this file (open, lock, write, the root chain), the role split ([`roles`]),
//! key and role administration ([`keys_admin`]), key files ([`keyfile`]), garbage collection
//! ([`gc`]) and the signed repository settings ([`maintenance`]). May use: `error` (and
//! `patch_apply`'s atomic writes). The children use this file; this file uses none of them
//! but [`roles`], which uses nothing of the crate.

pub mod gc;
pub mod keyfile;
pub mod keys_admin;
pub mod maintenance;
pub mod roles;
pub mod yank;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use formats::keys::KeyPair;
use formats::layout::{self, RepositoryInfo, METADATA_DIR, REPOSITORY_FORMAT, REPOSITORY_TARGET};
use formats::limits::Limits;
use formats::manifest::ReleaseManifest;
use formats::tuf::{
    self, DelegatedRole, Delegations, MetaFile, Role, RootMetadata, Signed, SnapshotMetadata,
    TargetCustom, TargetFile, TargetKind, TargetsMetadata, TimestampMetadata,
};
use formats::{Blake3, Sha256, Version};
use patch_apply::atomic;
use time::OffsetDateTime;

use crate::error::{Error, IoContext, Result};

/// An open repository, locked for writing while this value lives.
pub struct Repo {
    /// The repository directory.
    pub path: PathBuf,
    /// The newest root.
    pub root: RootMetadata,
    /// Every target of the repository, whichever role lists it, as one document (empty for a
    /// new repository): `version`, `expires` and `delegations` are the top-level role's.
    /// Writers change a copy and hand it to [`Repo::commit`].
    pub targets: TargetsMetadata,
    /// The delegated targets roles as they are in the repository, by name (empty for a
    /// repository written before delegations, until its next commit).
    pub delegated: BTreeMap<String, DelegatedState>,
    /// The top-level targets as signed (without the delegated roles' targets); `None` for a
    /// repository without targets yet.
    top_level: Option<TargetsMetadata>,
    /// What the current snapshot pins, by file name (`targets.json`, `recent.json`, ...).
    snapshot_meta: BTreeMap<String, MetaFile>,
    /// Current snapshot version (0 for a new repository).
    pub snapshot_version: u64,
    /// Current timestamp version (0 for a new repository).
    pub timestamp_version: u64,
    /// Whether the repository did not exist before.
    pub is_new: bool,
    _lock: Option<File>,
}

/// One delegated targets role as the repository holds it.
#[derive(Clone, Debug)]
pub struct DelegatedState {
    /// The verified document.
    pub signed: TargetsMetadata,
    /// The file's bytes (`metadata/V.NAME.json`).
    pub bytes: Vec<u8>,
}

fn repo_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Repo {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One root version of a repository: its bytes and parsed content.
#[derive(Clone, Debug)]
pub struct RootVersion {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// The verified root.
    pub root: RootMetadata,
}

/// Loads `metadata/1.root.json`, `2.root.json`, ... of `repo`, checking that the first is
/// signed by its own root keys and that every later version is signed by a threshold of the
/// previous and of its own root keys, with versions counting up by one. Empty when the
/// repository has no root yet.
pub fn load_root_chain(repo: &Path) -> Result<Vec<RootVersion>> {
    let limits = Limits::default();
    let md = repo.join(METADATA_DIR);
    let mut chain: Vec<RootVersion> = Vec::new();
    for n in 1u64.. {
        let p = md.join(format!("{n}.root.json"));
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(Error::io(&p, e)),
        };
        let what = format!("{METADATA_DIR}/{n}.root.json");
        if bytes.len() as u64 > limits.max_small_metadata {
            return Err(formats::Error::TooLarge {
                what,
                limit: limits.max_small_metadata,
                actual: bytes.len() as u64,
            }
            .into());
        }
        let own = tuf::parse_unverified::<RootMetadata>(&what, &bytes, &limits)?.signed;
        if own.version != n {
            return Err(repo_err(
                repo,
                format!("{what} has version {}", own.version),
            ));
        }
        tuf::verify_role::<RootMetadata>(&what, &bytes, &own, &limits)?;
        if let Some(prev) = chain.last() {
            tuf::verify_role::<RootMetadata>(&what, &bytes, &prev.root, &limits)?;
        }
        chain.push(RootVersion { bytes, root: own });
    }
    Ok(chain)
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).at(path)?;
    if meta.len() > limit {
        return Err(Error::Format(formats::Error::TooLarge {
            what: path.display().to_string(),
            limit,
            actual: meta.len(),
        }));
    }
    std::fs::read(path).at(path)
}

/// Takes the repository's writer lock (held while the returned file is open).
pub fn lock(path: &Path) -> Result<File> {
    let lock_path = path.join(".patch-create.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .at(&lock_path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(_) => Err(repo_err(
            path,
            "another patch-create is writing this repository (lock .patch-create.lock is held)",
        )),
    }
}

/// Entries a directory may hold and still become a new repository: what an interrupted first
/// release leaves behind.
fn is_repo_leftover(name: &str) -> bool {
    name == ".patch-create.lock"
        || name.starts_with(".tmp-release-")
        || name == layout::BLOBS_DIR
        || name == layout::TARGETS_DIR
}

/// Refuses to start a new repository in `path` when it is a directory holding anything else
/// than what an interrupted first release leaves (naming what is there), or not a directory.
/// A missing or empty directory is fine. Nothing is written.
pub fn check_new_repo_dir(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_dir() {
        return Err(repo_err(
            path,
            "is not a directory; give a new or empty directory to start a repository",
        ));
    }
    let mut found: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(path).at(path)? {
        let entry = entry.at(path)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_repo_leftover(&name) {
            continue;
        }
        let dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        found.push(if dir { format!("{name}/") } else { name });
    }
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    let more = found.len().saturating_sub(5);
    found.truncate(5);
    let mut held = found.join(", ");
    if more > 0 {
        held.push_str(&format!(" and {more} more"));
    }
    Err(repo_err(
        path,
        format!(
            "is a non-empty directory and not a patch repository (it holds {held}); nothing was \
             written: to start a new repository give a new or empty directory, to add a release \
             give the directory that holds metadata/timestamp.json"
        ),
    ))
}

/// Whether `path` holds a repository (or the root of one made by `patch-create keys init`).
pub fn is_repository(path: &Path) -> bool {
    path.join(layout::METADATA_DIR)
        .join("timestamp.json")
        .is_file()
        || path.join(layout::root_file(1)).is_file()
}

/// `path` made absolute with symlinks resolved as far as it exists: its nearest existing
/// ancestor canonicalized, the components below it appended (`..` removes one).
pub fn resolve_lenient(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).at(path)?;
    let mut base = abs.as_path();
    let mut tail = Vec::new();
    let canon = loop {
        match base.canonicalize() {
            Ok(c) => break c,
            Err(_) => {
                let (Some(parent), Some(name)) = (base.parent(), base.file_name()) else {
                    // Nothing of the path exists, not even its root: compare it as given.
                    break PathBuf::new();
                };
                tail.push(name.to_owned());
                base = parent;
            }
        }
    };
    if canon.as_os_str().is_empty() {
        return Ok(abs);
    }
    let mut out = canon;
    for name in tail.into_iter().rev() {
        if name == ".." {
            out.pop();
        } else if name != "." {
            out.push(name);
        }
    }
    Ok(out)
}

/// Refuses a repository inside the release tree (its files, `.patch-create.lock` among them,
/// would ship in the next release) and a release tree inside the repository, comparing the
/// paths with symlinks resolved. Nothing is written.
pub fn check_apart(repo: &Path, root: &Path) -> Result<()> {
    let r = resolve_lenient(repo)?;
    let t = resolve_lenient(root)?;
    if r == t {
        return Err(repo_err(
            repo,
            format!(
                "is the release tree {} itself; give the repository and the release tree as \
                 two separate directories",
                root.display()
            ),
        ));
    }
    if r.starts_with(&t) {
        return Err(repo_err(
            repo,
            format!(
                "is inside the release tree {}: the repository (and its .patch-create.lock) \
                 would ship in the next release; put the repository outside the release tree \
                 (are --repo and --root swapped?)",
                root.display()
            ),
        ));
    }
    if t.starts_with(&r) {
        return Err(repo_err(
            repo,
            format!(
                "contains the release tree {}: give a release tree outside the repository \
                 (are --repo and --root swapped?)",
                root.display()
            ),
        ));
    }
    Ok(())
}

impl Repo {
    /// Opens the repository at `path`, or prepares a new one (nothing is written until
    /// [`Repo::commit`]) when it has no `metadata/timestamp.json`. `creator` is the key that
    /// will hold every role of a new repository.
    pub fn open_or_new(path: &Path, creator: &KeyPair, expires: OffsetDateTime) -> Result<Repo> {
        let ts_path = path.join(layout::METADATA_DIR).join("timestamp.json");
        if !ts_path.exists() {
            if path.join(layout::root_file(1)).exists() {
                // Created by `patch-create keys init`: a root naming the release keys, no
                // release yet.
                let l = lock(path)?;
                let chain = load_root_chain(path)?;
                let root = chain
                    .last()
                    .map(|r| r.root.clone())
                    .ok_or_else(|| repo_err(path, "metadata/1.root.json is missing"))?;
                return Ok(Repo {
                    path: path.to_path_buf(),
                    root,
                    targets: TargetsMetadata::new(0, expires),
                    delegated: BTreeMap::new(),
                    top_level: None,
                    snapshot_meta: BTreeMap::new(),
                    snapshot_version: 0,
                    timestamp_version: 0,
                    is_new: false,
                    _lock: Some(l),
                });
            }
            if path.exists() && std::fs::read_dir(path).at(path)?.next().is_some() {
                let md = path.join(layout::METADATA_DIR);
                if md.exists() {
                    return Err(repo_err(
                        path,
                        "has a metadata directory but no timestamp.json",
                    ));
                }
            }
            check_new_repo_dir(path)?;
            std::fs::create_dir_all(path).at(path)?;
            let l = lock(path)?;
            let root = RootMetadata::new_single_key(
                &creator.public(),
                1,
                expires + time::Duration::days(365),
            );
            return Ok(Repo {
                path: path.to_path_buf(),
                root,
                targets: TargetsMetadata::new(0, expires),
                delegated: BTreeMap::new(),
                top_level: None,
                snapshot_meta: BTreeMap::new(),
                snapshot_version: 0,
                timestamp_version: 0,
                is_new: true,
                _lock: Some(l),
            });
        }
        let l = lock(path)?;
        let mut r = Repo::load(path)?;
        r._lock = Some(l);
        Ok(r)
    }

    /// Loads an existing repository, checking each role's signatures against the newest root
    /// (but not expiry: an expired repository can still be re-signed or extended).
    pub fn load(path: &Path) -> Result<Repo> {
        let limits = Limits::default();
        let md = path.join(layout::METADATA_DIR);
        // Newest root: walk N.root.json upwards, each version signed by the one before.
        let chain = load_root_chain(path)?;
        let root = chain
            .last()
            .map(|r| r.root.clone())
            .ok_or_else(|| repo_err(path, "metadata/1.root.json is missing"))?;
        // After a change of release keys the current metadata may still carry the previous
        // root's signatures until it is re-signed (`patch-create resign` or the next release).
        let prev_root = chain
            .len()
            .checked_sub(2)
            .and_then(|i| chain.get(i))
            .map(|r| r.root.clone());
        let roots: Vec<&RootMetadata> = std::iter::once(&root).chain(prev_root.as_ref()).collect();
        let ts_bytes = read_limited(&md.join("timestamp.json"), limits.max_small_metadata)?;
        let ts =
            verify_any::<TimestampMetadata>("metadata/timestamp.json", &ts_bytes, &roots, &limits)?;
        let snap_v = ts
            .meta
            .get("snapshot.json")
            .ok_or_else(|| repo_err(path, "timestamp.json pins no snapshot"))?
            .version;
        let snap_name = format!("metadata/{snap_v}.snapshot.json");
        let snap_bytes = read_limited(&path.join(&snap_name), limits.max_small_metadata)?;
        let snap = verify_any::<SnapshotMetadata>(&snap_name, &snap_bytes, &roots, &limits)?;
        let t_v = snap
            .meta
            .get("targets.json")
            .ok_or_else(|| repo_err(path, "snapshot pins no targets"))?
            .version;
        let t_name = format!("metadata/{t_v}.targets.json");
        let t_bytes = read_limited(&path.join(&t_name), limits.max_large_metadata)?;
        let top = verify_any::<TargetsMetadata>(&t_name, &t_bytes, &roots, &limits)?;
        let (targets, delegated) = load_delegated(path, &top, &snap, &limits)?;
        Ok(Repo {
            path: path.to_path_buf(),
            root,
            targets,
            delegated,
            top_level: Some(top),
            snapshot_meta: snap.meta.clone(),
            snapshot_version: snap.version,
            timestamp_version: ts.version,
            is_new: false,
            _lock: None,
        })
    }

    /// The repository settings, if present.
    pub fn info(&self) -> Result<Option<RepositoryInfo>> {
        let Some(t) = self.targets.targets.get(REPOSITORY_TARGET) else {
            return Ok(None);
        };
        let bytes = self.read_target(REPOSITORY_TARGET, t)?;
        Ok(Some(RepositoryInfo::from_json(REPOSITORY_TARGET, &bytes)?))
    }

    /// Reads a target's bytes and checks them against its signed length and hashes.
    pub fn read_target(&self, name: &str, t: &TargetFile) -> Result<Vec<u8>> {
        let rel = layout::target_file(name, &t.sha256()?);
        let p = self.path.join(&rel);
        let bytes = read_limited(&p, t.length)?;
        let pin = t.pin(name)?;
        pin.check(&rel, &bytes)?;
        let sha = Sha256::of(&bytes);
        if sha != t.sha256()? {
            return Err(Error::Format(formats::Error::HashMismatch {
                what: rel,
                algorithm: "sha256",
                expected: t.sha256()?.to_hex(),
                actual: sha.to_hex(),
            }));
        }
        Ok(bytes)
    }

    /// Every release in the repository, oldest first, with its manifest target's custom data.
    pub fn releases(&self) -> Result<Vec<(Version, TargetCustom)>> {
        let mut out = Vec::new();
        for (name, t) in &self.targets.targets {
            let c = t.patchkit(name)?;
            if c.kind == TargetKind::Manifest {
                let v = c
                    .version
                    .clone()
                    .ok_or_else(|| repo_err(&self.path, format!("target {name} has no version")))?;
                out.push((v, c));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The manifest of release `v`.
    pub fn manifest(&self, v: &Version) -> Result<ReleaseManifest> {
        let name = layout::manifest_target(v);
        let t = self
            .targets
            .targets
            .get(&name)
            .ok_or_else(|| repo_err(&self.path, format!("has no release {v}")))?;
        let bytes = self.read_target(&name, t)?;
        Ok(ReleaseManifest::from_json(
            &name,
            &bytes,
            &Limits::default(),
        )?)
    }

    /// Path of a repair blob on disk.
    pub fn blob_file(&self, content: &Blake3) -> PathBuf {
        self.path.join(layout::blob_path(content))
    }

    /// Writes a target file (content-addressed, atomic) and returns its targets entry.
    pub fn write_target(
        &self,
        name: &str,
        bytes: &[u8],
        custom: TargetCustom,
    ) -> Result<TargetFile> {
        let sha = Sha256::of(bytes);
        let p = self.path.join(layout::target_file(name, &sha));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        atomic::write_file(&p, bytes)?;
        Ok(target_entry(bytes.len() as u64, sha, custom))
    }

    /// Moves an artifact already written at `tmp` into place as target `name`.
    pub fn place_target_file(
        &self,
        name: &str,
        tmp: &Path,
        custom_kind: TargetCustom,
    ) -> Result<TargetFile> {
        let (len, sha, b3) = hash_file(tmp)?;
        let p = self.path.join(layout::target_file(name, &sha));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        atomic::sync_file(tmp)?;
        atomic::rename(tmp, &p)?;
        Ok(target_entry(
            len,
            sha,
            TargetCustom {
                blake3: b3,
                ..custom_kind
            },
        ))
    }

    /// Signs and writes the targets roles that changed, then new snapshot and timestamp
    /// metadata (and, for a new repository, `1.root.json`). `targets` lists every target of
    /// the repository; which role lists which is [`roles::split`]'s decision (docs/format.md
    /// §7.2). A role whose targets and delegation are unchanged keeps its file unless it
    /// expires before halfway to `expires`. `timestamp.json` is replaced last.
    pub fn commit(
        &mut self,
        targets: TargetsMetadata,
        keys: &[&KeyPair],
        expires: OffsetDateTime,
    ) -> Result<()> {
        self.commit_roles(targets, keys, expires, false)
    }

    /// [`Repo::commit`] that signs every targets role anew, changed or not (`resign`).
    pub fn commit_resigning_all(
        &mut self,
        targets: TargetsMetadata,
        keys: &[&KeyPair],
        expires: OffsetDateTime,
    ) -> Result<()> {
        self.commit_roles(targets, keys, expires, true)
    }

    fn commit_roles(
        &mut self,
        targets: TargetsMetadata,
        keys: &[&KeyPair],
        expires: OffsetDateTime,
        resign_all: bool,
    ) -> Result<()> {
        let md = self.path.join(layout::METADATA_DIR);
        std::fs::create_dir_all(&md).at(&md)?;
        let target_signers = signers(&self.root, Role::Targets, keys, &self.path)?;
        let snapshot_signers = signers(&self.root, Role::Snapshot, keys, &self.path)?;
        let timestamp_signers = signers(&self.root, Role::Timestamp, keys, &self.path)?;
        if self.is_new {
            let root = Signed::sign(
                self.root.clone(),
                &signers(&self.root, Role::Root, keys, &self.path)?,
            )?;
            let bytes = root.to_canonical_bytes()?;
            atomic::write_file(&self.path.join(layout::root_file(1)), &bytes)?;
            atomic::write_file(&md.join("root.json"), &bytes)?;
        }
        let now = formats::time_util::now();
        // An unchanged role is kept while it has at least half of the new period left.
        let keep_until = now + (expires - now) / 2;
        let fresh_enough = |e: &str| {
            formats::time_util::parse_tuf(e).is_ok_and(|t| t >= keep_until) && !resign_all
        };
        let mut previous: BTreeMap<u32, BTreeSet<Version>> = BTreeMap::new();
        for (name, d) in &self.delegated {
            if let Some(n) = layout::archive_number(name) {
                previous.insert(
                    n,
                    d.signed
                        .targets
                        .iter()
                        .filter_map(|(t, f)| roles::release_of(t, f))
                        .collect(),
                );
            }
        }
        let split = roles::split(&targets.targets, &previous, roles::RoleSizes::from_env());
        let delegations = self.delegations_for(&split)?;
        let old_delegations = self.top_level.as_ref().and_then(|t| t.delegations.as_ref());
        let mut role_docs: Vec<(String, BTreeMap<String, TargetFile>)> =
            vec![(layout::RECENT_ROLE.to_string(), split.recent)];
        for (n, map) in split.archives {
            role_docs.push((layout::archive_role(n), map));
        }
        let mut new_delegated: BTreeMap<String, DelegatedState> = BTreeMap::new();
        let mut merged = split.top.clone();
        for (name, map) in role_docs {
            for (t, f) in &map {
                merged.entry(t.clone()).or_insert_with(|| f.clone());
            }
            let old = self.delegated.get(&name);
            let same_delegation = old_delegations.is_some_and(|od| {
                od.role(&name) == delegations.role(&name) && od.keys == delegations.keys
            });
            if let Some(old) = old.filter(|o| {
                o.signed.targets == map && same_delegation && fresh_enough(&o.signed.expires)
            }) {
                new_delegated.insert(name, old.clone());
                continue;
            }
            // Above every version clients may have trusted, even of a role the current
            // top-level targets no longer delegate to.
            let listed = self
                .snapshot_meta
                .get(&format!("{name}.json"))
                .map_or(0, |m| m.version);
            let prev = old.map_or(0, |o| o.signed.version).max(listed);
            let mut doc = TargetsMetadata::new(prev + 1, expires);
            doc.targets = map;
            let bytes = Signed::sign(doc.clone(), &target_signers)?.to_canonical_bytes()?;
            atomic::write_file(
                &self.path.join(layout::delegated_file(&name, doc.version)),
                &bytes,
            )?;
            new_delegated.insert(name, DelegatedState { signed: doc, bytes });
        }
        let old_top = self.top_level.as_ref();
        let (top, t_bytes, t_written) = match old_top.filter(|o| {
            o.targets == split.top
                && o.delegations.as_ref() == Some(&delegations)
                && fresh_enough(&o.expires)
        }) {
            Some(o) => {
                let name = format!("{}.targets.json", o.version);
                let bytes = read_limited(&md.join(&name), Limits::default().max_large_metadata)?;
                (o.clone(), bytes, false)
            }
            None => {
                let mut top = TargetsMetadata::new(self.targets.version + 1, expires);
                top.targets = split.top;
                top.delegations = Some(delegations);
                let bytes = Signed::sign(top.clone(), &target_signers)?.to_canonical_bytes()?;
                (top, bytes, true)
            }
        };
        if t_written {
            atomic::write_file(&md.join(format!("{}.targets.json", top.version)), &t_bytes)?;
        }
        let snap_v = self.snapshot_version + 1;
        let mut snap = SnapshotMetadata::new(snap_v, expires, top.version, &t_bytes);
        for (name, d) in &new_delegated {
            snap.meta.insert(
                format!("{name}.json"),
                MetaFile::pin_of(d.signed.version, &d.bytes),
            );
        }
        // A file the current snapshot lists stays listed (clients refuse a snapshot that drops
        // one), pinned as it is.
        for (name, m) in &self.snapshot_meta {
            snap.meta.entry(name.clone()).or_insert_with(|| m.clone());
        }
        let s_bytes = Signed::sign(snap.clone(), &snapshot_signers)?.to_canonical_bytes()?;
        atomic::write_file(&md.join(format!("{snap_v}.snapshot.json")), &s_bytes)?;
        let ts_v = self.timestamp_version + 1;
        let ts = TimestampMetadata::new(ts_v, expires, snap_v, &s_bytes);
        let ts_bytes = Signed::sign(ts, &timestamp_signers)?.to_canonical_bytes()?;
        atomic::write_file(&md.join("timestamp.json"), &ts_bytes)?;
        let mut all = top.clone();
        all.targets = merged;
        self.targets = all;
        self.top_level = Some(top);
        self.delegated = new_delegated;
        self.snapshot_meta = snap.meta;
        self.snapshot_version = snap_v;
        self.timestamp_version = ts_v;
        self.is_new = false;
        Ok(())
    }

    /// The top-level delegations for `split`: `recent`, then the archive chunks newest first,
    /// each non-terminating, trusted for every `DIR/NAME` target and signed by the targets
    /// role's keys and threshold.
    fn delegations_for(&self, split: &roles::RoleSplit) -> Result<Delegations> {
        let rk = self.root.role_keys(Role::Targets)?;
        let keys = rk
            .keyids
            .iter()
            .filter_map(|id| self.root.keys.get(id).map(|k| (id.clone(), k.clone())))
            .collect();
        let role = |name: String| DelegatedRole {
            name,
            keyids: rk.keyids.clone(),
            threshold: rk.threshold,
            terminating: false,
            paths: Some(vec![DELEGATED_PATHS.to_string()]),
            path_hash_prefixes: None,
        };
        let mut list = vec![role(layout::RECENT_ROLE.to_string())];
        for (n, _) in split.archives.iter().rev() {
            list.push(role(layout::archive_role(*n)));
        }
        Ok(Delegations {
            keys,
            roles: Some(list),
            succinct_roles: None,
        })
    }

    /// Checks, before any work, that `keys` can sign every role a release touches.
    pub fn check_keys(&self, keys: &[&KeyPair]) -> Result<()> {
        for role in [Role::Targets, Role::Snapshot, Role::Timestamp] {
            signers(&self.root, role, keys, &self.path)?;
        }
        if self.is_new {
            signers(&self.root, Role::Root, keys, &self.path)?;
        }
        Ok(())
    }

    /// Writes `info` as the `repository.json` target and returns its targets entry.
    pub fn write_info(&self, info: &RepositoryInfo) -> Result<TargetFile> {
        let bytes = serde_json::to_vec_pretty(info)
            .map_err(|e| repo_err(&self.path, format!("cannot write {REPOSITORY_TARGET}: {e}")))?;
        self.write_target(
            REPOSITORY_TARGET,
            &bytes,
            TargetCustom::new(TargetKind::Repository, Blake3::of(&bytes)),
        )
    }

    /// A new or existing repository's settings, with `app` as name.
    pub fn default_info(app: &str) -> RepositoryInfo {
        RepositoryInfo {
            format: REPOSITORY_FORMAT.into(),
            app: app.to_string(),
            maintenance: None,
            mirrors: Vec::new(),
        }
    }
}

/// The path pattern of every delegation this writer makes: `DIR/NAME`, the form of every
/// release target (TUF patterns match one path segment per `*`, so `*` alone would match only
/// `repository.json`, which stays in top-level targets).
pub const DELEGATED_PATHS: &str = "*/*";

/// Loads the delegated roles `top` delegates to (first level only, in its search order) as
/// pinned by `snap`, verifying each against the keys and threshold of its delegation, and
/// returns every target (the first role in search order that lists a target and is trusted
/// for it wins; top-level first) with the roles by name.
fn load_delegated(
    path: &Path,
    top: &TargetsMetadata,
    snap: &SnapshotMetadata,
    limits: &Limits,
) -> Result<(TargetsMetadata, BTreeMap<String, DelegatedState>)> {
    let mut all = top.clone();
    let mut out = BTreeMap::new();
    let Some(d) = &top.delegations else {
        return Ok((all, out));
    };
    for role in d.roles.iter().flatten() {
        let pin = snap
            .meta
            .get(&format!("{}.json", role.name))
            .ok_or_else(|| {
                repo_err(
                    path,
                    format!("snapshot does not list delegated role {}", role.name),
                )
            })?;
        let rel = format!(
            "{}/{}.{}.json",
            METADATA_DIR,
            pin.version,
            tuf::role_file_name(&role.name)
        );
        let bytes = read_limited(&path.join(&rel), limits.max_large_metadata)?;
        if let Some(sha) = pin.hashes.as_ref().and_then(|h| h.get("sha256")) {
            let actual = Sha256::of(&bytes).to_hex();
            if &actual != sha {
                return Err(Error::Format(formats::Error::HashMismatch {
                    what: rel,
                    algorithm: "sha256",
                    expected: sha.clone(),
                    actual,
                }));
            }
        }
        let doc = tuf::verify_delegated_role(&rel, &bytes, &role.name, d, limits)?.signed;
        if doc.version != pin.version {
            return Err(repo_err(
                path,
                format!(
                    "{rel} has version {}, snapshot pins {}",
                    doc.version, pin.version
                ),
            ));
        }
        for (name, t) in &doc.targets {
            if role.is_trusted_for(name) && !all.targets.contains_key(name) {
                all.targets.insert(name.clone(), t.clone());
            }
        }
        out.insert(role.name.clone(), DelegatedState { signed: doc, bytes });
    }
    Ok((all, out))
}

/// Verifies a role's document under the first of `roots` it verifies under (newest first);
/// the error is the newest root's.
fn verify_any<T: tuf::Metadata>(
    what: &str,
    bytes: &[u8],
    roots: &[&RootMetadata],
    limits: &Limits,
) -> Result<T> {
    let mut first_err = None;
    for r in roots {
        match tuf::verify_role::<T>(what, bytes, r, limits) {
            Ok(s) => return Ok(s.signed),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.map(Error::Format).unwrap_or_else(|| Error::Repo {
        path: what.into(),
        reason: "no root".into(),
    }))
}

/// The keys among `keys` that may sign `role`; fails when they do not reach its threshold.
pub fn signers<'a>(
    root: &RootMetadata,
    role: Role,
    keys: &[&'a KeyPair],
    repo: &Path,
) -> Result<Vec<&'a KeyPair>> {
    let rk = root.role_keys(role)?;
    let mut out: Vec<&KeyPair> = Vec::new();
    for k in keys {
        let id = k.public().key_id();
        if rk.keyids.contains(&id) && !out.iter().any(|o| o.public().key_id() == id) {
            out.push(k);
        }
    }
    if out.len() < rk.threshold as usize {
        return Err(repo_err(
            repo,
            format!(
                "the given key(s) cannot sign {} metadata: {} of the {} required signatures (key ids {})",
                role.name(),
                out.len(),
                rk.threshold,
                keys.iter().map(|k| k.public().key_id()[..12].to_string()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(out)
}

fn target_entry(length: u64, sha: Sha256, custom: TargetCustom) -> TargetFile {
    TargetFile {
        length,
        hashes: BTreeMap::from([("sha256".to_string(), sha.to_hex())]),
        custom: serde_json::to_value(custom).ok(),
    }
}

/// Length, SHA-256 and BLAKE3 of a file, streaming.
pub fn hash_file(path: &Path) -> Result<(u64, Sha256, Blake3)> {
    use sha2_shim::Sha256Stream;
    let mut f = File::open(path).at(path)?;
    let mut s = Sha256Stream::default();
    let mut b = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        use std::io::Read;
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        s.update(&buf[..n]);
        b.update(&buf[..n]);
    }
    Ok((len, s.finish(), Blake3(*b.finalize().as_bytes())))
}

mod sha2_shim {
    //! Streaming SHA-256 through `formats::hash::StreamCheck`-compatible types.
    use formats::Sha256;
    use sha2::Digest;

    /// A streaming SHA-256.
    #[derive(Default)]
    pub struct Sha256Stream(sha2::Sha256);

    impl Sha256Stream {
        pub fn update(&mut self, d: &[u8]) {
            self.0.update(d);
        }
        pub fn finish(self) -> Sha256 {
            Sha256(self.0.finalize().into())
        }
    }
}
