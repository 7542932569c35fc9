//! The client's TUF workflow (spec 5.2-5.7) over a [`Transport`], with the trusted metadata
//! persisted between runs for rollback protection. Each role is stored as soon as it is
//! verified (spec 5.3.8, 5.4.5, 5.5.7, 5.6.6), so a refresh that fails later still keeps what
//! it verified: a revoked key stays revoked, a newer timestamp stays the floor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use formats::keys::PublicKey;
use formats::layout;
use formats::limits::Limits;
use formats::tuf::{role_file_name, TargetFile, TargetsMetadata, TrustedRoot, TrustedSet};
use time::OffsetDateTime;

use crate::error::{Error, IoContext, Result};
use crate::transport::{missing_or_other_bytes, not_as_signed, Conditional, Transport, Validators};

/// Metadata trusted on an earlier run.
#[derive(Clone, Debug, Default)]
pub struct StoredTrust {
    /// Newest trusted root.
    pub root: Option<Vec<u8>>,
    /// Last trusted timestamp.
    pub timestamp: Option<Vec<u8>>,
    /// Last trusted snapshot.
    pub snapshot: Option<Vec<u8>>,
    /// Last trusted top-level targets (reused while snapshot pins its version).
    pub targets: Option<Vec<u8>>,
    /// The HTTP validators of the trusted timestamp (`timestamp.http.json`, a
    /// [`Validators`] document): sent with the next request for `timestamp.json` so that an
    /// unchanged one costs a `304` without a body.
    pub timestamp_http: Option<Vec<u8>>,
    /// The key ids of the pinned keys the stored metadata was trusted under (a JSON array of
    /// strings, `anchor.json`).
    pub anchor: Option<Vec<u8>>,
    /// The directory this was loaded from: [`refresh`] writes each role there as soon as it
    /// is verified (when the directory or its parent exists).
    dir: Option<PathBuf>,
}

impl StoredTrust {
    /// Loads from `dir` (missing files are fine).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |n: &str| -> Result<Option<Vec<u8>>> {
            let p = dir.join(n);
            match crate::state::read_state_file(&p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(p, e)),
            }
        };
        Ok(StoredTrust {
            root: read("root.json")?,
            timestamp: read("timestamp.json")?,
            snapshot: read("snapshot.json")?,
            targets: read("targets.json")?,
            timestamp_http: read(TIMESTAMP_HTTP)?,
            anchor: read("anchor.json")?,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// The stored metadata of delegated targets role `role` (`NAME.json`, the name
    /// percent-encoded), if any.
    pub fn delegated(&self, role: &str) -> Option<Vec<u8>> {
        let p = self
            .dir
            .as_ref()?
            .join(format!("{}.json", role_file_name(role)));
        crate::state::read_state_file(&p).ok()
    }

    /// Writes `name` into the directory this was loaded from, unless it already holds
    /// `bytes`. Best effort: a client that cannot write its state still verifies (the caller
    /// saves again with errors reported, see [`StoredTrust::save_changes`]).
    fn keep(&self, name: &str, bytes: &[u8], on_disk: Option<&[u8]>) {
        let Some(dir) = &self.dir else { return };
        if on_disk == Some(bytes) {
            return;
        }
        if !dir.is_dir() {
            if !dir.parent().is_some_and(Path::is_dir) {
                return;
            }
            if crate::state::create_state_dir(dir).is_err() {
                return;
            }
        }
        if let Err(e) = crate::atomic::write_files(dir, &[(name, bytes)]) {
            tracing::warn!("cannot store verified {name} in {}: {e}", dir.display());
        }
    }

    /// Removes `name` from the directory this was loaded from, if it is there (best effort,
    /// like [`StoredTrust::keep`]).
    fn forget(&self, name: &str) {
        let Some(dir) = &self.dir else { return };
        let p = dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", p.display()),
        }
    }

    /// Saves into `dir` atomically, file by file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_changes(dir, &StoredTrust::default())
    }

    /// Saves into `dir` the files that differ from `on_disk` (what [`StoredTrust::load`]
    /// read from `dir`), each atomically, with one directory sync for all of them.
    pub fn save_changes(&self, dir: &Path, on_disk: &StoredTrust) -> Result<()> {
        let changed: Vec<(&str, &[u8])> = [
            ("root.json", &self.root, &on_disk.root),
            ("timestamp.json", &self.timestamp, &on_disk.timestamp),
            ("snapshot.json", &self.snapshot, &on_disk.snapshot),
            ("targets.json", &self.targets, &on_disk.targets),
            // After the timestamp it describes, never before.
            (
                TIMESTAMP_HTTP,
                &self.timestamp_http,
                &on_disk.timestamp_http,
            ),
            ("anchor.json", &self.anchor, &on_disk.anchor),
        ]
        .into_iter()
        .filter_map(|(n, new, old)| match new {
            Some(b) if Some(b) != old.as_ref() => Some((n, b.as_slice())),
            _ => None,
        })
        .collect();
        if changed.is_empty() {
            return Ok(());
        }
        crate::state::create_state_dir(dir)?;
        crate::atomic::write_files(dir, &changed)
    }
}

/// The file of the trust directory that holds the HTTP validators of the trusted timestamp.
const TIMESTAMP_HTTP: &str = "timestamp.http.json";

fn md(name: &str) -> String {
    format!("{}/{name}", layout::METADATA_DIR)
}

/// The `anchor.json` bytes of `pinned`: their key ids, sorted.
fn anchor_of(pinned: &[PublicKey]) -> Vec<u8> {
    let mut ids: Vec<String> = pinned.iter().map(PublicKey::key_id).collect();
    ids.sort();
    ids.dedup();
    serde_json::to_vec(&ids).unwrap_or_default()
}

/// Whether metadata trusted under the anchor `stored` may still be trusted with `pinned`:
/// some pinned key is among the anchor's. Trust stored without an anchor (written before
/// anchors existed) or with an unreadable one is kept, as it was before.
fn same_anchor(stored: Option<&[u8]>, pinned: &[PublicKey]) -> bool {
    let Some(ids) = stored.and_then(|b| serde_json::from_slice::<Vec<String>>(b).ok()) else {
        return true;
    };
    pinned.iter().any(|k| ids.contains(&k.key_id()))
}

/// Runs the update workflow: establishes the root (from `stored` or by bootstrapping from the
/// first root version signed by a `pinned` key), walks root rotations, then loads timestamp,
/// snapshot and targets with every check. Returns the verified set and what to store.
///
/// `stored` is used only if it was trusted under one of the `pinned` keys (its anchor): an app
/// now pinned to other keys (another repository, or a key replaced after a compromise) starts
/// over from its pinned keys, without the old root and without the old timestamp and snapshot
/// versions, which belong to another trust root. With no `pinned` keys at all, the stored root
/// is the trust anchor (a TUF client initialised with a trusted root) and no anchor is kept.
///
/// When `stored` was loaded from a directory ([`StoredTrust::load`]), each role is written
/// there as soon as it is verified, before the next one is fetched; a timestamp of the version
/// already trusted is discarded (spec 5.4.3.1), and the stored snapshot and targets are reused
/// while the newer role still pins their version.
pub fn refresh(
    t: &dyn Transport,
    pinned: &[PublicKey],
    stored: &StoredTrust,
    now: OffsetDateTime,
    limits: &Limits,
) -> Result<(TrustedSet, StoredTrust)> {
    let none = StoredTrust::default();
    let trusted = if same_anchor(stored.anchor.as_deref(), pinned) {
        stored
    } else {
        &none
    };
    let anchor = (!pinned.is_empty()).then(|| anchor_of(pinned));
    let keep_root = |root: &TrustedRoot| {
        stored.keep("root.json", root.bytes(), stored.root.as_deref());
        if let Some(a) = &anchor {
            // After the root it vouches for, never before.
            stored.keep("anchor.json", a, stored.anchor.as_deref());
        }
    };
    let mut root = match &trusted.root {
        Some(b) => TrustedRoot::from_trusted_bytes(b, limits)?,
        None if pinned.is_empty() => {
            return Err(Error::Refused(format!(
                "{}: no trusted root to start from (no pinned key and no stored root.json)",
                t.describe()
            )))
        }
        None => {
            let r = bootstrap(t, pinned, now, limits)?;
            keep_root(&r);
            r
        }
    };
    let mut steps = 0;
    loop {
        let next = root.root().version + 1;
        let name = md(&format!("{next}.root.json"));
        match t.get_small(&name, limits.max_small_metadata)? {
            None => break,
            Some(bytes) => {
                root.update(&bytes, limits)?;
                keep_root(&root);
                steps += 1;
                if steps > limits.max_root_rotations {
                    return Err(Error::Refused(format!(
                        "{}: more than {} root rotations",
                        t.describe(),
                        limits.max_root_rotations
                    )));
                }
            }
        }
    }
    let mut set = TrustedSet::new(root, now, limits.clone())?;
    set.remember_previous(trusted.timestamp.as_deref(), trusted.snapshot.as_deref());
    let (ts, timestamp_http) = refresh_timestamp(t, &mut set, stored, trusted, limits)?;
    let snap = match trusted
        .snapshot
        .as_ref()
        .filter(|b| set.update_snapshot(b).is_ok())
    {
        Some(b) => b.clone(),
        None => {
            let snap_name = set.snapshot_file_name()?;
            let snap = get_required(t, &md(&snap_name), set.snapshot_max_len())
                .map_err(|e| in_flux(e, t, &snap_name, "timestamp.json"))?;
            set.update_snapshot(&snap)
                .map_err(|e| in_flux(e.into(), t, &snap_name, "timestamp.json"))?;
            stored.keep("snapshot.json", &snap, stored.snapshot.as_deref());
            snap
        }
    };
    let targets = match trusted
        .targets
        .as_ref()
        .filter(|b| set.update_targets(b).is_ok())
    {
        Some(b) => b.clone(),
        None => {
            let (t_name, pin) = set.targets_file()?;
            let max = pin
                .length
                .unwrap_or(limits.max_large_metadata)
                .min(limits.max_large_metadata);
            let targets = get_required(t, &md(&t_name), max)
                .map_err(|e| in_flux(e, t, &t_name, "snapshot.json"))?;
            set.update_targets(&targets)
                .map_err(|e| in_flux(e.into(), t, &t_name, "snapshot.json"))?;
            stored.keep("targets.json", &targets, stored.targets.as_deref());
            targets
        }
    };
    let new_stored = StoredTrust {
        root: Some(set.root().bytes().to_vec()),
        timestamp: Some(ts),
        snapshot: Some(snap),
        targets: Some(targets),
        timestamp_http,
        anchor,
        dir: stored.dir.clone(),
    };
    Ok((set, new_stored))
}

/// Loads the timestamp (spec 5.4) with a conditional request when the trusted one has
/// validators: a `304` means the server still has the trusted timestamp, which is checked again
/// (so an expired one still fails as expired). Returns the trusted timestamp's bytes and
/// validators, and stores both (the validators after the timestamp they describe).
fn refresh_timestamp(
    t: &dyn Transport,
    set: &mut TrustedSet,
    stored: &StoredTrust,
    trusted: &StoredTrust,
    limits: &Limits,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let name = md("timestamp.json");
    let url = || format!("{}/{name}", t.describe());
    let max = limits.max_small_metadata;
    let known = trusted
        .timestamp
        .as_ref()
        .and(trusted.timestamp_http.as_deref())
        .and_then(Validators::from_json);
    let mut answer = t.get_if_changed(&name, max, known.as_ref())?;
    if answer == Conditional::NotModified {
        let old = trusted.timestamp.as_ref().ok_or_else(|| Error::Fetch {
            url: url(),
            reason: "server answered 304 Not Modified, but no trusted timestamp.json is stored"
                .into(),
        })?;
        match set.update_timestamp(old) {
            Ok(_) => return Ok((old.clone(), trusted.timestamp_http.clone())),
            Err(e @ formats::Error::Expired { .. }) => return Err(e.into()),
            // The stored copy no longer verifies (e.g. the timestamp keys were rotated): ask
            // for the file itself.
            Err(_) => answer = t.get_if_changed(&name, max, None)?,
        }
    }
    let (offered, validators) = match answer {
        Conditional::Fetched(b, v) => (b, v),
        Conditional::Missing => return Err(Error::NotFound { url: url() }),
        Conditional::NotModified => {
            return Err(Error::Fetch {
                url: url(),
                reason: "server answered 304 Not Modified to a request without validators".into(),
            })
        }
    };
    set.update_timestamp(&offered)?;
    let ts = match (&trusted.timestamp, set.kept_old_timestamp()) {
        (Some(old), true) => old.clone(),
        _ => {
            stored.keep("timestamp.json", &offered, stored.timestamp.as_deref());
            offered
        }
    };
    // The server's copy was accepted (newer, or of the trusted version): a 304 to these
    // validators means the same again.
    let http = validators.map(|v| v.to_json());
    match &http {
        Some(v) => stored.keep(TIMESTAMP_HTTP, v, stored.timestamp_http.as_deref()),
        None => stored.forget(TIMESTAMP_HTTP),
    }
    Ok((ts, http))
}

/// Explains a metadata file that a newer signed role pins but that the repository does not
/// serve, or serves with other bytes ([`not_as_signed`]); other errors pass unchanged.
fn in_flux(e: Error, t: &dyn Transport, file: &str, pinned_by: &str) -> Error {
    let what = match &e {
        Error::Format(f @ formats::Error::Invalid { reason, .. })
            if reason.contains("mix-and-match") =>
        {
            f.to_string()
        }
        other => match missing_or_other_bytes(other) {
            Some(w) => w,
            None => return e,
        },
    };
    not_as_signed(format!("{}/{}", t.describe(), md(file)), &what, pinned_by)
}

/// Delegated targets metadata verified in this process, by role name (so that a role visited
/// twice is fetched once; it is verified again on every visit).
pub type DelegatedCache = BTreeMap<String, Vec<u8>>;

/// Looks `target` up in the verified targets and, when the top-level targets do not list it,
/// in delegated targets roles (spec 5.7): a pre-order depth-first search in the order of the
/// delegations, following only roles whose paths or hash prefixes cover the target, stopping
/// after a terminating role, visiting at most `limits.max_delegations` roles at most
/// `limits.max_delegation_depth` levels deep. Each delegated role is verified against the
/// delegator it is reached through; it is taken from `cache`, from `stored` or fetched, and a
/// fetched one is stored as soon as it is verified. `Ok(None)` when no trusted role lists it.
pub fn find_target(
    t: &dyn Transport,
    set: &TrustedSet,
    stored: &StoredTrust,
    cache: &mut DelegatedCache,
    target: &str,
    limits: &Limits,
) -> Result<Option<TargetFile>> {
    let top = set
        .targets()
        .ok_or_else(|| Error::Precondition("targets not loaded".into()))?;
    let mut docs: BTreeMap<String, TargetsMetadata> = BTreeMap::new();
    let mut stack: Vec<(String, Option<String>, usize)> = vec![("targets".into(), None, 0)];
    let mut visited: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    let mut visits = 0usize;
    while let Some((role, parent, depth)) = stack.pop() {
        if visits > limits.max_delegations {
            break;
        }
        if visited.contains(&(role.clone(), parent.clone())) {
            continue;
        }
        let doc = match &parent {
            None => top.clone(),
            Some(p) => {
                let delegator = docs.get(p).ok_or_else(|| {
                    Error::Precondition(format!("delegator {p:?} of {role:?} not loaded"))
                })?;
                load_delegated(t, set, stored, cache, &role, delegator, limits)?
            }
        };
        if let Some(found) = doc.targets.get(target) {
            return Ok(Some(found.clone()));
        }
        visited.insert((role.clone(), parent));
        visits += 1;
        if let Some(d) = &doc.delegations {
            if depth < limits.max_delegation_depth {
                let children = d.roles_for_target(target);
                if children.last().is_some_and(|c| c.terminating) {
                    stack.clear();
                }
                for c in children.iter().rev() {
                    stack.push((c.name.clone(), Some(role.clone()), depth + 1));
                }
            }
        }
        docs.insert(role, doc);
    }
    Ok(None)
}

/// How much of the delegated targets [`release_targets`] loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Top-level targets and the delegated role `recent` (the newest releases,
    /// docs/format.md §7.2): enough for an install on one of them.
    Recent,
    /// Every role top-level targets delegates to: every release of the repository.
    All,
}

/// The most delegated roles [`release_targets`] follows (an archive chunk holds 100
/// releases by default).
pub const MAX_LISTED_ROLES: usize = 4096;

/// Targets a client plans with: what the verified top-level targets and the delegated roles
/// loaded so far list.
#[derive(Clone, Debug)]
pub struct ReleaseTargets {
    /// Top-level targets with the targets of the delegated roles added (`version`, `expires`
    /// and `delegations` are top-level's).
    pub targets: TargetsMetadata,
    /// Whether every role was loaded: `false` when some delegated role was left out.
    pub complete: bool,
}

/// The targets of the repository for planning (docs/format.md §7.3): the verified top-level
/// targets plus, for [`Listing::Recent`], the delegated role `recent`, for [`Listing::All`]
/// every role top-level targets delegates to (first level, in its search order). Each role is
/// verified against its delegation ([`TrustedSet::verify_delegated`]), taken from `cache` or
/// `stored` while the snapshot pins its version and else fetched and stored as soon as it is
/// verified. A role adds only targets its delegation trusts it for and that no role before it
/// in the search order listed. A repository that delegates nothing (all targets in top-level,
/// as written before delegations) is complete at once.
pub fn release_targets(
    t: &dyn Transport,
    set: &TrustedSet,
    stored: &StoredTrust,
    cache: &mut DelegatedCache,
    listing: Listing,
    limits: &Limits,
) -> Result<ReleaseTargets> {
    let top = set
        .targets()
        .ok_or_else(|| Error::Precondition("targets not loaded".into()))?;
    let mut all = top.clone();
    let mut complete = true;
    let roles: Vec<_> = top
        .delegations
        .as_ref()
        .and_then(|d| d.roles.as_ref())
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    if roles.len() > MAX_LISTED_ROLES {
        return Err(Error::Refused(format!(
            "{}: targets metadata delegates to {} roles, more than {MAX_LISTED_ROLES}",
            t.describe(),
            roles.len()
        )));
    }
    for role in roles {
        if listing == Listing::Recent && role.name != layout::RECENT_ROLE {
            complete = false;
            continue;
        }
        let doc = load_delegated(t, set, stored, cache, &role.name, top, limits)?;
        for (name, f) in doc.targets {
            if role.is_trusted_for(&name) && !all.targets.contains_key(&name) {
                all.targets.insert(name, f);
            }
        }
    }
    Ok(ReleaseTargets {
        targets: all,
        complete,
    })
}

fn load_delegated(
    t: &dyn Transport,
    set: &TrustedSet,
    stored: &StoredTrust,
    cache: &mut DelegatedCache,
    role: &str,
    delegator: &TargetsMetadata,
    limits: &Limits,
) -> Result<TargetsMetadata> {
    if let Some(b) = cache.get(role) {
        return Ok(set.verify_delegated(role, delegator, b)?);
    }
    let local = stored.delegated(role);
    if let Some(doc) = local
        .as_ref()
        .and_then(|b| set.verify_delegated(role, delegator, b).ok())
    {
        cache.insert(role.to_string(), local.unwrap_or_default());
        return Ok(doc);
    }
    let (file, pin) = set.delegated_file(role)?;
    let max = pin
        .length
        .unwrap_or(limits.max_large_metadata)
        .min(limits.max_large_metadata);
    let bytes =
        get_required(t, &md(&file), max).map_err(|e| in_flux(e, t, &file, "snapshot.json"))?;
    let doc = set
        .verify_delegated(role, delegator, &bytes)
        .map_err(|e| in_flux(e.into(), t, &file, "snapshot.json"))?;
    stored.keep(
        &format!("{}.json", role_file_name(role)),
        &bytes,
        local.as_deref(),
    );
    cache.insert(role.to_string(), bytes);
    Ok(doc)
}

fn get_required(t: &dyn Transport, name: &str, max: u64) -> Result<Vec<u8>> {
    t.get_small(name, max)?.ok_or_else(|| Error::NotFound {
        url: format!("{}/{name}", t.describe()),
    })
}

fn bootstrap(
    t: &dyn Transport,
    pinned: &[PublicKey],
    now: OffsetDateTime,
    limits: &Limits,
) -> Result<TrustedRoot> {
    let mut last_err = None;
    for n in 1..=limits.max_root_rotations {
        let name = md(&format!("{n}.root.json"));
        let Some(bytes) = t.get_small(&name, limits.max_small_metadata)? else {
            break;
        };
        match TrustedRoot::bootstrap(&bytes, pinned, now, limits) {
            Ok(r) => return Ok(r),
            Err(e) => last_err = Some(format!("{name}: {e}")),
        }
    }
    Err(match last_err {
        Some(e) => Error::Refused(format!(
            "{}: no root metadata is signed by the pinned key ({e})",
            t.describe()
        )),
        None => Error::NotFound {
            url: format!("{}/{}", t.describe(), md("1.root.json")),
        },
    })
}

/// Where the trusted metadata of an app dir lives.
pub fn trust_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("trust")
}

/// Turns a rollback refusal of [`refresh`] into [`Error::StuckTrust`], which names the
/// repository `repo`, the app dir, the stored trust and the way out ([`reset`]); other errors
/// pass unchanged.
pub fn explain_stuck(e: Error, repo: &str, app_dir: &Path, trust_dir: &Path) -> Error {
    match e {
        Error::Format(refusal @ formats::Error::Rollback { .. }) => Error::StuckTrust {
            repo: repo.to_string(),
            app_dir: app_dir.to_path_buf(),
            trust_dir: trust_dir.to_path_buf(),
            refusal: Box::new(refusal),
        },
        e => e,
    }
}

/// One stored metadata file, as [`summary`] reads it (without checking signatures: for
/// people, never for decisions).
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoredFile {
    /// The file.
    pub path: PathBuf,
    /// Its `signed.version`, if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Its `signed.expires`, if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// What an app dir trusts: the files of its trust directory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrustSummary {
    /// The trust directory (`APP/.patchkit/trust`).
    pub dir: PathBuf,
    /// The stored metadata files (root, timestamp, snapshot), those that exist.
    pub files: Vec<StoredFile>,
    /// The key ids of the pinned keys the metadata was trusted under (`anchor.json`).
    pub anchor: Vec<String>,
}

/// Reads what the app dir `app_dir` trusts (nothing when it has no stored trust).
pub fn summary(app_dir: &Path) -> Result<TrustSummary> {
    let dir = crate::state::StateDir::of(app_dir).trust();
    let stored = StoredTrust::load(&dir)?;
    let mut files = Vec::new();
    for (name, bytes) in [
        ("root.json", &stored.root),
        ("timestamp.json", &stored.timestamp),
        ("snapshot.json", &stored.snapshot),
    ] {
        let Some(b) = bytes else { continue };
        let signed = serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|v| v.get("signed").cloned());
        files.push(StoredFile {
            path: dir.join(name),
            version: signed
                .as_ref()
                .and_then(|s| s.get("version"))
                .and_then(|v| v.as_u64()),
            expires: signed
                .as_ref()
                .and_then(|s| s.get("expires"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
        });
    }
    let anchor = stored
        .anchor
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Vec<String>>(b).ok())
        .unwrap_or_default();
    Ok(TrustSummary { dir, files, anchor })
}

/// Forgets the trusted metadata of `app_dir` (removes `APP/.patchkit/trust`), under the update
/// lock. The next run trusts the repository anew from the pinned keys, as a fresh install
/// does: this gives up rollback protection for that one run, so it is only ever done when a
/// person or the app asks for it, never by itself (see docs/security.md, "Stuck trust").
/// Returns the files removed (none when nothing was stored).
pub fn reset(app_dir: &Path) -> Result<Vec<PathBuf>> {
    let state = crate::state::StateDir::of(app_dir);
    let dir = state.trust();
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
        Ok(_) => {}
    }
    let _lock = state.lock()?;
    let mut removed = Vec::new();
    if dir.is_dir() && !dir.is_symlink() {
        for e in std::fs::read_dir(&dir).at(&dir)? {
            removed.push(e.at(&dir)?.path());
        }
        removed.sort();
        std::fs::remove_dir_all(&dir).at(&dir)?;
    } else {
        // Not a directory (or a symlink, never followed): removed itself.
        std::fs::remove_file(&dir).at(&dir)?;
        removed.push(dir);
    }
    Ok(removed)
}
