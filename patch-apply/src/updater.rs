//! The public entry point: [`Updater::check`] and [`Updater::apply`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use formats::keys::PublicKey;
use formats::layout::{Maintenance, RepositoryInfo};
use formats::limits::Limits;
use formats::manifest::{Node, ReleaseManifest};
use formats::patterns::PathPatterns;
use formats::{Blake3, RelPath, Version};
use serde::Serialize;
use time::OffsetDateTime;

use crate::cancel::Cancel;
use crate::commit;
use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::ownership::{Differences, Owner, Survey};
use crate::plan::{cheapest_chain, order};
use crate::repo_view::{self, ReleaseRef, RepoView};
use crate::report::Recovery;
pub use crate::report::{ApplyReport, Quarantined};
use crate::report::{Method, MethodCost};
use crate::scan::{self, Strictness, Tree};
use crate::selfpatch::{ApplyOutcome, HandOver};
use crate::stage::{self, StageCtx};
use crate::state::{InstallRecord, StateDir};
use crate::transport::{Mirrors, Transport};
use crate::trust::{self, StoredTrust};

/// Which method `apply` may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodChoice {
    /// The cheapest that works, falling back to the next on failure.
    Auto,
    /// Only this one.
    Only(Method),
}

/// How to update one app directory.
#[derive(Clone)]
pub struct Config {
    /// The app directory (created if missing: an empty dir gets a fresh install).
    pub app_dir: PathBuf,
    /// Repository URLs or paths, first preferred.
    pub repos: Vec<String>,
    /// Pinned root public keys.
    pub public_keys: Vec<PublicKey>,
    /// The client's channel (`stable` by default).
    pub channel: String,
    /// The client's targeting attributes (`region=india`).
    pub attrs: BTreeMap<String, String>,
    /// Install a lower version than the installed one if that is what the repository offers.
    pub allow_downgrade: bool,
    /// Method selection.
    pub method: MethodChoice,
    /// A process allowed to run from the app dir (the app updating itself).
    pub allow_running_pid: Option<u32>,
    /// Refuse to update while other processes run from the app dir.
    pub check_running: bool,
    /// Input bounds.
    pub limits: Limits,
    /// The current time (tests can move it).
    pub now: Option<OffsetDateTime>,
    /// Network settings: timeouts, retries, parallel downloads.
    pub http: crate::http::HttpOptions,
    /// Update a non-empty directory that holds no recognisable release and no install record
    /// (`--adopt`). Without it such a directory is refused untouched; with it, what is there is
    /// kept, or moved to the quarantine where a release file needs its place, never deleted.
    pub adopt: bool,
    /// Aim at this release instead of the newest one for this client (a fleet server's
    /// directive). It must be a release of the verified repository, else the update is refused
    /// ([`Error::Refused`]); the downgrade rule still applies.
    pub target: Option<Version>,
    /// Who starts the updates, as reported to a fleet server: `library` (default), `cli`,
    /// `agent`. Every [`Updater::apply`] appends its attempt to the app dir's results queue
    /// ([`crate::state::results`]) unless this is empty.
    pub started_by: String,
    /// For an offline bundle among `repos`: accept metadata that has expired by now if it was
    /// valid when the bundle was made (docs/security.md, "Offline bundles and expiry"). Every
    /// other check, rollback protection included, stays.
    pub allow_expired_bundle: bool,
    /// Stops `check`/`apply` at the next safe point once cancelled ([`Cancel`]). Keep a clone
    /// of it; [`Updater::new`] hands it to the downloads too.
    pub cancel: Cancel,
}

impl Config {
    /// A configuration with defaults: stable channel, automatic method, running check on.
    pub fn new(app_dir: impl Into<PathBuf>, repo: impl Into<String>, key: PublicKey) -> Self {
        Config {
            app_dir: app_dir.into(),
            repos: vec![repo.into()],
            public_keys: vec![key],
            channel: "stable".into(),
            attrs: BTreeMap::new(),
            allow_downgrade: false,
            method: MethodChoice::Auto,
            allow_running_pid: None,
            check_running: true,
            limits: Limits::default(),
            now: None,
            http: crate::http::HttpOptions::default(),
            adopt: false,
            target: None,
            started_by: "library".into(),
            allow_expired_bundle: false,
            cancel: Cancel::new(),
        }
    }
}

/// What `check` found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The app, as the repository names it.
    pub app: Option<String>,
    /// Installed version, if recognised.
    pub installed: Option<String>,
    /// Newest version this client may install (or the release [`Config::target`] names).
    pub latest: Option<String>,
    /// BLAKE3 tree digest of the installed files, when they are exactly a release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_tree: Option<String>,
    /// Newest version in the repository, if this client may not install it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_not_for_this_client: Option<String>,
    /// Whether the install already is `latest`, byte for byte.
    pub up_to_date: bool,
    /// The method `apply` would use (`none` when up to date).
    pub method: String,
    /// Its download size.
    pub download_bytes: u64,
    /// Every method's cost.
    pub alternatives: Vec<MethodCost>,
    /// Whether the pending update changes code (the app must restart).
    pub restart_required: bool,
    /// Files of the install that differ from its recognised release (edited or missing).
    pub damaged: bool,
    /// The repository's maintenance notice, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// A sentence on anything unusual (targeting, downgrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The release the install was recognised as, exactly or with differences.
    pub recognised: Option<String>,
    /// What is installed, in words: `1.0.0`, `1.0.0 with 1 changed file and 1 unknown file`,
    /// `nothing`, or `no release (N entries)`.
    pub install_state: String,
    /// How the install differs from the recognised release, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differences: Option<Differences>,
    /// Files and symlinks `apply` would delete (the updater's own only).
    pub would_delete: Vec<String>,
    /// Paths whose current version `apply` would replace.
    pub would_replace: Vec<String>,
    /// Things the updater does not own that are in the way of the release: `apply` would move
    /// them to the quarantine (`.patchkit/quarantine/`).
    pub would_quarantine: Vec<String>,
    /// Unknown entries `apply` leaves in place.
    pub would_keep: Vec<String>,
    /// Why the incremental method is or is not usable, in words.
    pub incremental: String,
    /// Why `apply` would refuse this directory (without `--adopt`), if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Release notes of the target release (when its manifest was read: not when the app is
    /// already exactly at it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Links of the target release (the issue it fixes...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// The reason the release engineer gave when yanking the installed release, if they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_yanked: Option<String>,
}

/// Runs `f` on a thread of its own and waits for it. The HTTP client blocks on a runtime of its
/// own, which must neither start nor be dropped on a thread that drives an async runtime
/// (tokio panics then); a scoped thread makes every public call safe from inside
/// `#[tokio::main]` and costs one thread start per call. A panic in `f` is passed on.
fn off_async<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// The updater. Every method blocks the calling thread until it is done (see the crate docs
/// for async apps); [`Config::cancel`] stops one early.
pub struct Updater {
    config: Config,
    events: Arc<EventSink>,
    /// [`Updater::prefetch`]: stage (filling the download cache) and stop before the commit.
    prefetch: bool,
}

/// How many of the newest releases an install without exact match or record is compared with
/// (their manifests are fetched; an offline bundle carries them).
pub const RECOGNISE_NEWEST: usize = 5;

/// The first few names in `dir`, for messages.
fn first_entries(dir: &std::path::Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let more = names.len().saturating_sub(4);
    names.truncate(4);
    let mut s = names.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// Whether [`Updater::session`] fetches the target's manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ManifestNeed {
    /// Always (apply).
    Always,
    /// Unless the install is already up to date (check).
    UnlessUpToDate,
}

/// Everything known after refreshing metadata and scanning.
struct Session {
    transport: Mirrors,
    /// The trusted metadata to keep after this run.
    stored: StoredTrust,
    /// The trusted metadata kept by the last run (what the state directory holds).
    stored_before: StoredTrust,
    info: Option<RepositoryInfo>,
    view: RepoView,
    target: ReleaseRef,
    /// `None` only for [`ManifestNeed::UnlessUpToDate`] when the install is up to date.
    manifest: Option<ReleaseManifest>,
    scan: Tree,
    installed: Option<Version>,
    installed_tree: Option<Blake3>,
    /// The install record's version when the files match the record but no release of this
    /// repository (installed from another one): still the version downgrades are judged by.
    recorded_elsewhere: Option<Version>,
    /// The release the files are closest to, when no release matches them exactly.
    reference: Option<ReleaseManifest>,
    /// The install record's release, when it is not the exact match.
    record_release: Option<ReleaseManifest>,
    recognised: Option<Version>,
    install_state: String,
    differences: Option<Differences>,
    /// Who owns what (with the target's manifest).
    owner: Option<Owner>,
    /// What the update would do to what is there.
    survey: Survey,
    /// Why `apply` refuses this directory without `adopt`.
    refused: Option<String>,
    incremental: String,
    damaged: bool,
    up_to_date: bool,
    costs: Vec<MethodCost>,
    chain: Vec<usize>,
    restart_required: bool,
    note: Option<String>,
    newest_other: Option<String>,
}

impl Session {
    /// The target's manifest (fetched by every [`ManifestNeed::Always`] session).
    fn manifest(&self) -> Result<&ReleaseManifest> {
        self.manifest
            .as_ref()
            .ok_or_else(|| Error::Precondition("release manifest not loaded".into()))
    }
}

impl Updater {
    /// An updater with `config`, reporting events to `events`.
    pub fn new(mut config: Config, events: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        config.app_dir = crate::state::resolve_app_dir(&config.app_dir);
        let events: Arc<EventSink> = Arc::new(events);
        if config.http.events.is_none() {
            // Retries and mirror changes below the updater report to the same receiver.
            config.http.events = crate::events::EventHook::new(Arc::clone(&events));
        }
        // Downloads stop between chunks when the app cancels.
        config.http.cancel = config.cancel.clone();
        Updater {
            config,
            events,
            prefetch: false,
        }
    }

    fn emit(&self, e: Event) {
        (self.events)(&e);
    }

    fn state(&self) -> StateDir {
        StateDir::of(&self.config.app_dir)
    }

    fn transport(&self) -> Result<Mirrors> {
        let mut list = Vec::new();
        for r in &self.config.repos {
            list.push(crate::fetch::open_with(r, &self.config.http)?);
        }
        if list.is_empty() {
            return Err(Error::Precondition("no repository given".into()));
        }
        Ok(Mirrors::new(list)
            .with_parallel(self.config.http.parallel)
            .with_events(self.config.http.events.clone())
            .with_cancel(self.config.cancel.clone()))
    }

    /// Whether the repository is an offline bundle: then nothing is fetched from the network
    /// (the mirrors the signed settings list are not added).
    fn offline(&self) -> bool {
        self.config
            .repos
            .iter()
            .any(|r| crate::fetch::Location::parse(r).is_ok_and(|l| l.is_bundle()))
    }

    /// The time metadata is checked against: now, or with [`Config::allow_expired_bundle`]
    /// the time the bundle says it was made, if earlier (expiry only moves one way, so this
    /// accepts what was valid then and refuses what had expired already).
    fn verification_time(&self, t: &Mirrors) -> OffsetDateTime {
        let now = self.config.now.unwrap_or_else(formats::time_util::now);
        if !self.config.allow_expired_bundle {
            return now;
        }
        let made = self
            .config
            .repos
            .iter()
            .find_map(|r| match crate::fetch::Location::parse(r) {
                Ok(crate::fetch::Location::Bundle(p)) => crate::fetch::bundle::read_index(&p)
                    .and_then(|i| i.created_at())
                    .ok(),
                _ => None,
            });
        match made {
            Some(m) if m < now => {
                self.emit(Event::Warning {
                    message: format!(
                        "{}: checking expiry as of {} (when the bundle was made), as allowed for offline bundles",
                        t.describe(),
                        formats::time_util::format_tuf(m)
                    ),
                });
                m
            }
            _ => now,
        }
    }

    fn session(&self, need: ManifestNeed) -> Result<Session> {
        let cfg = &self.config;
        let state = self.state();
        crate::state::check_app_dir(&cfg.app_dir)?;
        let mut transport = self.transport()?;
        let now = self.verification_time(&transport);
        self.emit(Event::Phase { phase: "refresh" });
        let stored = StoredTrust::load(&state.trust())?;
        let (set, new_stored) =
            trust::refresh(&transport, &cfg.public_keys, &stored, now, &cfg.limits).map_err(
                |e| trust::explain_stuck(e, &transport.describe(), &cfg.app_dir, &state.trust()),
            )?;
        // The newest releases first; the archive only when the install or the request needs
        // an older one (docs/format.md §7.3).
        let mut role_cache = trust::DelegatedCache::new();
        let mut listed = trust::release_targets(
            &transport,
            &set,
            &stored,
            &mut role_cache,
            trust::Listing::Recent,
            &cfg.limits,
        )?;
        let mut view = RepoView::from_targets(&listed.targets)?;
        let info = repo_view::fetch_info_kept(&transport, &view, &state.trust())?;
        if let Some(i) = info.as_ref().filter(|_| !self.offline()) {
            let mut more = Vec::new();
            for m in &i.mirrors {
                if let Ok(t) = crate::fetch::open_with(m, &cfg.http) {
                    more.push(t);
                }
            }
            transport.extend(more);
        }
        let record = state.load_record();
        if let (Some(r), Some(i)) = (&record, &info) {
            if r.app != i.app {
                return Err(Error::Refused(format!(
                    "{}: repository is for app {:?}, but {} holds {:?}",
                    transport.describe(),
                    i.app,
                    cfg.app_dir.display(),
                    r.app
                )));
            }
        }
        // Every role, when the newest releases do not suffice (below).
        let load_all =
            |cache: &mut trust::DelegatedCache| -> Result<(trust::ReleaseTargets, RepoView)> {
                let all = trust::release_targets(
                    &transport,
                    &set,
                    &stored,
                    cache,
                    trust::Listing::All,
                    &cfg.limits,
                )?;
                let view = RepoView::from_targets(&all.targets)?;
                Ok((all, view))
            };
        if !listed.complete
            && view.needs_older(
                record.as_ref().map(|r| &r.version),
                cfg.target.as_ref(),
                &cfg.channel,
                &cfg.attrs,
            )
        {
            (listed, view) = load_all(&mut role_cache)?;
        }
        let newest = view.newest().cloned();
        let wanted = match &cfg.target {
            // Only what the verified targets metadata lists can be a target.
            Some(v) => {
                let found = view.find(v).cloned().ok_or_else(|| {
                    Error::Refused(format!(
                        "{}: release {v} is not in the repository (its signed metadata lists {})",
                        transport.describe(),
                        view.releases
                            .iter()
                            .map(|r| r.version.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                // A signed yank outranks whoever named the release.
                if let Some(y) = &found.custom.yanked {
                    return Err(Error::Refused(format!(
                        "{}: release {v} was yanked by the release engineer ({})",
                        transport.describe(),
                        y.reason
                    )));
                }
                Some(found)
            }
            None => view.latest_for(&cfg.channel, &cfg.attrs).cloned(),
        };
        let target = wanted.ok_or_else(|| {
            Error::Refused(format!(
                "{}: no release for channel {:?} and targets {:?}{}",
                transport.describe(),
                cfg.channel,
                cfg.attrs,
                newest
                    .as_ref()
                    .map(|n| format!(" (newest release {} is not for this client)", n.version))
                    .unwrap_or_default()
            ))
        })?;
        let newest_other = newest
            .filter(|n| n.version != target.version)
            .map(|n| n.version.to_string());
        self.emit(Event::Phase { phase: "scan" });
        // Without a state directory nothing of the updater's is here yet: the scan writes no
        // cache, so that a refused directory stays untouched.
        let cache_use = if state.root.is_dir() {
            scan::CacheUse::Reuse
        } else {
            scan::CacheUse::None
        };
        let scan = scan::scan_with(
            &cfg.app_dir,
            &PathPatterns::empty(),
            Strictness::Install,
            cache_use,
        )?;
        // Recognise the installed version from the files.
        let mut digests: BTreeMap<Vec<String>, Blake3> = BTreeMap::new();
        let mut matches = Vec::new();
        loop {
            for r in &view.releases {
                let d = match digests.get(&r.custom.ignore) {
                    Some(d) => *d,
                    None => {
                        let pats = PathPatterns::new(&r.custom.ignore)?;
                        let d = scan.digest(&pats);
                        digests.insert(r.custom.ignore.clone(), d);
                        d
                    }
                };
                if Some(d) == r.custom.tree {
                    matches.push((r.version.clone(), d));
                }
            }
            // Files of no release among the newest: they may be an older one's.
            let has_files = !(scan.entries.is_empty() && scan.foreign.is_empty());
            if listed.complete || !matches.is_empty() || !has_files {
                break;
            }
            (listed, view) = load_all(&mut role_cache)?;
        }
        let recorded = record.as_ref().map(|r| r.version.clone());
        let found = matches
            .iter()
            .find(|(v, _)| Some(v) == recorded.as_ref())
            .or_else(|| matches.last())
            .cloned();
        let (exact, installed_tree) = match found {
            Some((v, d)) => (Some(v), Some(d)),
            None => (None, None),
        };
        // The files match the install record but no release of this repository (installed from
        // another one): the ignore patterns under which they match, if any.
        let record_ignore: Option<Vec<String>> = match (&exact, &record) {
            (None, Some(r)) => digests
                .iter()
                .find(|(_, d)| **d == r.tree)
                .map(|(pats, _)| pats.clone())
                .or_else(|| (scan.digest(&PathPatterns::empty()) == r.tree).then(Vec::new)),
            _ => None,
        };
        let recorded_elsewhere = match (&record_ignore, &record) {
            (Some(_), Some(r)) => Some(r.version.clone()),
            _ => None,
        };
        let empty = scan.entries.is_empty() && scan.foreign.is_empty();
        // An up-to-date install matches the target's signed tree digest, so a no-op answer needs
        // nothing from its manifest (the largest piece of metadata): it is not fetched then.
        let exact_latest = exact.as_ref() == Some(&target.version);
        let manifest = if need == ManifestNeed::UnlessUpToDate && exact_latest && info.is_some() {
            None
        } else {
            let manifest = repo_view::fetch_manifest(&transport, &target, &cfg.limits)?;
            if let Some(i) = &info {
                if i.app != manifest.app {
                    return Err(Error::bad(
                        &target.manifest_name,
                        format!(
                            "manifest is for app {:?}, repository for {:?}",
                            manifest.app, i.app
                        ),
                    ));
                }
            }
            Some(manifest)
        };
        let fetch = |r: &ReleaseRef| -> Result<ReleaseManifest> {
            match &manifest {
                Some(m) if m.version == r.version => Ok(m.clone()),
                _ => repo_view::fetch_manifest(&transport, r, &cfg.limits),
            }
        };
        // The release of the install record, when the repository still has it.
        let record_release = match (&record, &exact) {
            (Some(rec), ex) if ex.as_ref() != Some(&rec.version) => {
                view.find(&rec.version).map(&fetch).transpose()?
            }
            _ => None,
        };
        // Without an exact match, the release the files are closest to: the install record's,
        // or among the newest few, the one whose files match most.
        let mut reference: Option<ReleaseManifest> = None;
        if exact.is_none() && !empty {
            if let Some(m) = &record_release {
                reference = Some(m.clone());
            } else {
                let mut best: Option<(usize, ReleaseManifest)> = None;
                for r in view.releases.iter().rev().take(RECOGNISE_NEWEST) {
                    let m = fetch(r)?;
                    let n = crate::ownership::matching_files(&scan, &m);
                    if n > 0 && best.as_ref().is_none_or(|(b, _)| n > *b) {
                        best = Some((n, m));
                    }
                }
                reference = best.map(|(_, m)| m);
            }
        }
        let differences = match &reference {
            Some(m) => Some(Differences::of(&cfg.app_dir, &scan, m)?),
            None => None,
        };
        let intact = differences
            .as_ref()
            .is_some_and(Differences::release_intact);
        let installed = exact.clone().or_else(|| {
            reference
                .as_ref()
                .filter(|_| intact)
                .map(|m| m.version.clone())
        });
        let recognised = exact
            .clone()
            .or_else(|| reference.as_ref().map(|m| m.version.clone()));
        let install_state = match (&exact, &reference, &differences) {
            (Some(v), _, _) => v.to_string(),
            (None, Some(m), Some(d)) => d.describe(&m.version.to_string()),
            _ if empty => "nothing".to_string(),
            _ => format!(
                "no release ({} entries)",
                scan.entries.len() + scan.foreign.len()
            ),
        };
        let refused = (!empty && record.is_none() && recognised.is_none()).then(|| {
            format!(
                "{} is not empty ({}) and holds no release of {} and no install record: refusing to update it, which could destroy files that are not the app's; check --app-dir, or pass --adopt to install into it anyway (its files are kept or quarantined, never deleted)",
                cfg.app_dir.display(),
                first_entries(&cfg.app_dir),
                info.as_ref()
                    .map(|i| i.app.clone())
                    .or_else(|| manifest.as_ref().map(|m| m.app.clone()))
                    .unwrap_or_else(|| "this repository".into())
            )
        });
        let damaged = installed.is_none() && !empty;
        // What the update would do to what is there.
        let owner = match &manifest {
            Some(m) => {
                let mut known: Vec<&ReleaseManifest> = Vec::new();
                known.extend(reference.as_ref());
                known.extend(record_release.as_ref());
                // An exact match: every entry it has is the release's (its manifest is not
                // fetched), under that release's ignore patterns.
                let also: Vec<RelPath> = match &exact {
                    Some(v) => {
                        let ign = view
                            .find(v)
                            .map(|r| PathPatterns::new(&r.custom.ignore))
                            .transpose()?
                            .unwrap_or_else(PathPatterns::empty);
                        scan.entries
                            .keys()
                            .filter(|p| !ign.matches(p))
                            .cloned()
                            .collect()
                    }
                    // Or the files are what this updater installed from another repository
                    // (the install record's tree): they are its own as well.
                    None => match &record_ignore {
                        Some(pats) => {
                            let ign = PathPatterns::new(pats)?;
                            scan.entries
                                .keys()
                                .filter(|p| !ign.matches(p))
                                .cloned()
                                .collect()
                        }
                        None => vec![],
                    },
                };
                Some(Owner::new(m, &known, also)?)
            }
            None => None,
        };
        let survey = match (&manifest, &owner) {
            (Some(m), Some(o)) => crate::ownership::survey(&cfg.app_dir, &scan, m, o),
            _ => Survey::default(),
        };
        let mut survey = survey;
        if manifest.is_none() {
            // Exactly the target (its manifest not fetched): what the scan could not use is
            // kept, unless ignored.
            let ign = PathPatterns::new(&target.custom.ignore)?;
            survey.keep = scan
                .foreign
                .iter()
                .map(|f| crate::ownership::foreign_rel(&cfg.app_dir, f))
                .filter(|r| !crate::ownership::ignored_lossy(&ign, r))
                .collect();
        }
        let up_to_date = exact_latest || (manifest.is_some() && survey.is_noop());
        let mut note = None;
        if let Some(inst) = installed.as_ref().or(recorded_elsewhere.as_ref()) {
            if let Some(y) = view.yank_of(inst) {
                note = Some(format!(
                    "installed {inst} was withdrawn by the release engineer ({}); moving to {}",
                    y.reason, target.version
                ));
            } else if *inst > target.version && !cfg.allow_downgrade {
                note = Some(format!(
                    "installed {inst} is newer than {} offered to this client",
                    target.version
                ));
            }
        }
        if newest_other.is_some() && note.is_none() {
            note = Some(format!(
                "newest release {} is not for this client (channel {:?}, targets {:?})",
                newest_other.as_deref().unwrap_or_default(),
                cfg.channel,
                cfg.attrs
            ));
        }
        // Costs.
        self.emit(Event::Phase { phase: "plan" });
        let mut costs = Vec::new();
        let mut chain = Vec::new();
        let from_version = exact.as_ref().or(reference.as_ref().map(|m| &m.version));
        let inc = match from_version {
            None => MethodCost {
                method: Method::Incremental,
                bytes: None,
                unavailable: Some(if empty {
                    "nothing installed".into()
                } else {
                    "installed files match no release".into()
                }),
                chain: vec![],
                requests: None,
            },
            Some(v) => match cheapest_chain(&view.patches, v, &target.version) {
                Some((c, b)) if !c.is_empty() => {
                    let names: Vec<String> =
                        c.iter().map(|&i| view.patches[i].to.to_string()).collect();
                    // Files that differ from the recognised release come from repair files.
                    let extra = match (&reference, &manifest) {
                        (Some(r), Some(m)) if exact.is_none() => {
                            stage::partial_repair_cost(&scan, r, m)
                        }
                        _ => Some(0),
                    };
                    match extra {
                        Some(x) => {
                            chain = c;
                            MethodCost {
                                method: Method::Incremental,
                                bytes: Some(b.saturating_add(x)),
                                unavailable: None,
                                requests: Some(names.len() as u64),
                                chain: names,
                            }
                        }
                        None => MethodCost {
                            method: Method::Incremental,
                            bytes: None,
                            unavailable: Some(format!(
                                "{} differs from {v} and the release has no repair files",
                                cfg.app_dir.display()
                            )),
                            chain: vec![],
                            requests: None,
                        },
                    }
                }
                _ => MethodCost {
                    method: Method::Incremental,
                    bytes: None,
                    unavailable: Some(if *v == target.version {
                        format!("already at {v}: only files that differ need fetching")
                    } else {
                        format!("no patch chain from {v} to {}", target.version)
                    }),
                    chain: vec![],
                    requests: None,
                },
            },
        };
        let incremental = match (&inc.unavailable, &differences) {
            (Some(why), _) => format!("not usable: {why}"),
            (None, Some(d)) if !d.release_intact() => format!(
                "usable: patches to {} for the files that match {}, repair files for the {} that differ",
                target.version,
                from_version.map(|v| v.to_string()).unwrap_or_default(),
                d.changed.len() + d.missing.len()
            ),
            (None, _) => format!("usable: patches to {}", target.version),
        };
        costs.push(inc);
        // Up to date: no file differs, so a repair would download nothing.
        let repair = manifest
            .as_ref()
            .map_or(Some(0), |m| stage::repair_cost(&scan, m));
        costs.push(match repair {
            Some(b) => MethodCost {
                method: Method::Repair,
                bytes: Some(b),
                unavailable: None,
                chain: vec![],
                requests: manifest.as_ref().map(|m| stage::repair_requests(&scan, m)),
            },
            None => MethodCost {
                method: Method::Repair,
                bytes: None,
                unavailable: Some("release has no repair files".into()),
                chain: vec![],
                requests: None,
            },
        });
        costs.push(match &target.installer {
            Some((_, t)) => MethodCost {
                method: Method::Installer,
                bytes: Some(t.length),
                unavailable: None,
                chain: vec![],
                requests: Some(1),
            },
            None => MethodCost {
                method: Method::Installer,
                bytes: None,
                unavailable: Some("release has no installer".into()),
                chain: vec![],
                requests: None,
            },
        });
        let restart_required =
            !up_to_date && manifest.as_ref().is_some_and(|m| restart_needed(&scan, m));
        if need == ManifestNeed::UnlessUpToDate && state.root.is_dir() {
            // Best effort on check; apply saves it for real.
            let _ = new_stored.save_changes(&state.trust(), &stored);
        }
        Ok(Session {
            transport,
            stored: new_stored,
            stored_before: stored,
            info,
            view,
            target,
            manifest,
            scan,
            installed,
            installed_tree,
            recorded_elsewhere,
            reference,
            record_release,
            recognised,
            install_state,
            differences,
            owner,
            survey,
            refused,
            incremental,
            damaged,
            up_to_date,
            costs,
            chain,
            restart_required,
            note,
            newest_other,
        })
    }

    fn chosen(&self, s: &Session) -> Vec<Method> {
        let avail = order(&s.costs);
        match self.config.method {
            MethodChoice::Auto => avail,
            MethodChoice::Only(m) => avail.into_iter().filter(|x| *x == m).collect(),
        }
    }

    /// Looks at the repository and the app dir and says what `apply` would do. Changes nothing
    /// in the app dir (it may refresh the trusted metadata kept in the state directory).
    pub fn check(&self) -> Result<CheckReport> {
        off_async(|| self.check_inner())
    }

    fn check_inner(&self) -> Result<CheckReport> {
        self.config.cancel.check()?;
        let s = self.session(ManifestNeed::UnlessUpToDate)?;
        let methods = self.chosen(&s);
        let (method, bytes) = if s.up_to_date {
            ("none".to_string(), 0)
        } else {
            match methods.first() {
                Some(m) => (
                    m.name().to_string(),
                    s.costs
                        .iter()
                        .find(|c| c.method == *m)
                        .and_then(|c| c.bytes)
                        .unwrap_or(0),
                ),
                None => ("none".to_string(), 0),
            }
        };
        Ok(CheckReport {
            app: s
                .info
                .as_ref()
                .map(|i| i.app.clone())
                .or_else(|| s.manifest.as_ref().map(|m| m.app.clone())),
            installed: s.installed.as_ref().map(|v| v.to_string()),
            installed_tree: s.installed_tree.map(|d| d.to_hex()),
            latest: Some(s.target.version.to_string()),
            newest_not_for_this_client: s.newest_other.clone(),
            up_to_date: s.up_to_date,
            method,
            download_bytes: bytes,
            alternatives: s.costs.clone(),
            restart_required: s.restart_required,
            damaged: s.damaged,
            maintenance: s.info.as_ref().and_then(|i| i.maintenance.clone()),
            note: s.note.clone(),
            recognised: s.recognised.as_ref().map(|v| v.to_string()),
            install_state: s.install_state.clone(),
            differences: s
                .differences
                .clone()
                .filter(|d| !d.release_intact() || !d.unknown.is_empty()),
            would_delete: s
                .manifest
                .as_ref()
                .map(|m| s.survey.deletes(m))
                .unwrap_or_default(),
            would_replace: s
                .manifest
                .as_ref()
                .map(|m| s.survey.replaces(m))
                .unwrap_or_default(),
            would_quarantine: s.survey.quarantine.iter().map(|p| p.to_string()).collect(),
            would_keep: s.survey.keep.clone(),
            incremental: s.incremental.clone(),
            refused: s.refused.clone().filter(|_| !self.config.adopt),
            notes: s.manifest.as_ref().and_then(|m| m.notes_text()),
            links: s
                .manifest
                .as_ref()
                .map(|m| m.links.clone())
                .unwrap_or_default(),
            installed_yanked: s
                .installed
                .as_ref()
                .and_then(|v| s.view.yank_of(v))
                .map(|y| y.reason.clone()),
        })
    }

    /// Recovers from an interrupted update if needed, then updates the app dir to the newest
    /// release for this client. On error the app dir is left at the version it had.
    pub fn apply(&self) -> Result<ApplyReport> {
        off_async(|| Ok(self.apply_recorded(None)?.into_report()))
    }

    /// Like [`Updater::apply`], for an app updating itself while it runs. A warm patch (no
    /// code changes) is committed in place and [`Event::Installed`] tells the app to reload;
    /// a cold patch is staged and verified, then handed over to `self-patcher`
    /// ([`ApplyOutcome::HandedOver`]): the app must exit so that it can be replaced and
    /// relaunched. The process `h.wait_pid` may run from the app dir meanwhile.
    pub fn apply_with_handover(&self, h: &HandOver) -> Result<ApplyOutcome> {
        off_async(|| self.apply_recorded(Some(h)))
    }

    /// Downloads and verifies what updating to the target needs, into the download cache
    /// (`.patchkit/cache/`), and stages it to check it decodes, without changing the app dir
    /// (the app may run; nothing is recorded as an attempt). A later [`Updater::apply`] of the
    /// same release reuses the cached artifacts and downloads nothing more. Returns the report
    /// of the staging (its `downloaded_bytes` are the bytes fetched now; `method` `none` when
    /// the app is up to date).
    pub fn prefetch(&self) -> Result<ApplyReport> {
        let u = Updater {
            config: Config {
                check_running: false,
                ..self.config.clone()
            },
            events: Arc::clone(&self.events),
            prefetch: true,
        };
        off_async(|| Ok(u.apply_inner(None, &mut Aim::default())?.into_report()))
    }

    /// [`Updater::apply_inner`], with the attempt appended to the results queue: an update
    /// that changed something (or tried to) is recorded with its outcome; an install already
    /// up to date is not an attempt. A hand-over is kept aside
    /// ([`crate::state::results::ResultsQueue::hand_over`]) until its outcome is known: the
    /// agent settles it ([`crate::selfpatch::hand_over_outcome`]) once `self-patcher` is done.
    fn apply_recorded(&self, h: Option<&HandOver>) -> Result<ApplyOutcome> {
        let started = std::time::Instant::now();
        let mut aim = Aim::default();
        let r = self.apply_inner(h, &mut aim);
        let handed_over = matches!(r, Ok(ApplyOutcome::HandedOver { .. }));
        let succeeded = |report: &ApplyReport| formats::fleet::UpdateResult {
            seq: 0,
            finished_at: String::new(),
            from: report.from.clone(),
            to: report.to.clone(),
            method: report.method.clone(),
            bytes: report.downloaded_bytes,
            seconds: 0.0,
            ok: true,
            error_kind: None,
            error_message: None,
            started_by: None,
        };
        let attempt = match &r {
            Ok(ApplyOutcome::HandedOver { report, .. }) => Some(succeeded(report)),
            Ok(ApplyOutcome::InPlace { report }) if report.method != "none" => {
                Some(succeeded(report))
            }
            Ok(_) => None,
            Err(e) => aim
                .to
                .clone()
                .or_else(|| self.config.target.clone())
                .map(|to| formats::fleet::UpdateResult {
                    seq: 0,
                    finished_at: String::new(),
                    from: aim.from.as_ref().map(|v| v.to_string()),
                    to: to.to_string(),
                    method: aim.method.unwrap_or("none").to_string(),
                    bytes: aim.bytes,
                    seconds: 0.0,
                    ok: false,
                    error_kind: Some(error_kind(e).to_string()),
                    error_message: Some(formats::fleet::clip(
                        &e.to_string(),
                        formats::fleet::MAX_TEXT,
                    )),
                    started_by: None,
                }),
        };
        if let (Some(mut a), false) = (attempt, self.config.started_by.is_empty()) {
            a.seconds = started.elapsed().as_secs_f64();
            a.finished_at = formats::time_util::now()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            a.started_by = Some(self.config.started_by.clone());
            // Kept only where the updater already has its state directory: a refused foreign
            // directory stays untouched.
            if self.state().root.is_dir() {
                let queued = if handed_over {
                    self.state().results().hand_over(a)
                } else {
                    self.state().results().append(a).map(|_| ())
                };
                if let Err(e) = queued {
                    self.emit(Event::Warning {
                        message: format!("could not queue the update report: {e}"),
                    });
                }
            }
        }
        r
    }

    fn apply_inner(&self, hand_over: Option<&HandOver>, aim: &mut Aim) -> Result<ApplyOutcome> {
        let cfg = &self.config;
        let state = self.state();
        crate::state::check_app_dir(&cfg.app_dir)?;
        // A location that is no repository is refused before anything is written.
        cfg.repos
            .iter()
            .try_for_each(|r| crate::fetch::check_location(r))?;
        // A non-empty directory the updater never wrote to may be someone else's: it is
        // looked at first, without writing anything, and refused unless it holds a release.
        let mut early = None;
        if !state.root.exists() && !cfg.adopt && dir_has_entries(&cfg.app_dir) {
            let s = self.session(ManifestNeed::Always)?;
            aim.to = Some(s.target.version.clone());
            if let Some(why) = &s.refused {
                return Err(Error::Refused(why.clone()));
            }
            early = Some(s);
        }
        std::fs::create_dir_all(&cfg.app_dir).map_err(|e| Error::io(&cfg.app_dir, e))?;
        let _lock = state.lock()?;
        if let Some(dropped) = crate::selfpatch::check_pending(&state)? {
            self.emit(Event::Warning { message: dropped });
        }
        let recovered = match commit::recover(&cfg.app_dir, &state)? {
            Recovery::Clean => None,
            r => {
                self.emit(Event::Warning {
                    message: format!("rolled back an interrupted update: {r:?}"),
                });
                Some(r)
            }
        };
        // Another updater may have finished here between the look and the lock.
        let s = match early {
            Some(s) if state.load_record().is_none() && !state.journal().exists() => s,
            _ => self.session(ManifestNeed::Always)?,
        };
        aim.to = Some(s.target.version.clone());
        aim.from = s.installed.clone();
        if let (Some(why), false) = (&s.refused, cfg.adopt) {
            return Err(Error::Refused(why.clone()));
        }
        // Kept even when this update is refused below: a later run must not accept older metadata.
        s.stored.save_changes(&state.trust(), &s.stored_before)?;
        let manifest = s.manifest()?;
        if let Some(m) = s.info.as_ref().and_then(|i| i.maintenance.as_ref()) {
            return Err(Error::Precondition(format!(
                "{}: repository is under maintenance{}",
                s.transport.describe(),
                if m.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", m.message)
                }
            )));
        }
        if let Some(inst) = s.installed.as_ref().or(s.recorded_elsewhere.as_ref()) {
            // A signed yank of the installed release makes the move back safe: the release
            // engineer signed it, no server asked for it.
            if *inst > s.target.version && !cfg.allow_downgrade && s.view.yank_of(inst).is_none() {
                return Err(Error::Refused(format!(
                    "installed version {inst} is newer than {} offered; refusing to downgrade (use --allow-downgrade)",
                    s.target.version
                )));
            }
        }
        let from = s.installed.as_ref().map(|v| v.to_string());
        let kept = s.survey.keep.clone();
        if s.up_to_date {
            // Nothing to change: no transaction, so the last update's backup stays.
            if state.load_record().map(|r| r.version) != Some(s.target.version.clone()) {
                self.save_record(&state, &s, None)?;
            }
            return Ok(ApplyOutcome::InPlace {
                report: ApplyReport {
                    from,
                    to: s.target.version.to_string(),
                    method: "none".into(),
                    downloaded_bytes: 0,
                    fallbacks: vec![],
                    repaired_after: vec![],
                    restart_required: false,
                    recovered,
                    from_state: s.install_state.clone(),
                    quarantined: vec![],
                    deleted: vec![],
                    kept,
                    repaired: vec![],
                },
            });
        }
        let methods = self.chosen(&s);
        if methods.is_empty() {
            return Err(Error::AllMethodsFailed(format!(
                "no usable method: {}",
                s.costs
                    .iter()
                    .map(|c| format!(
                        "{}: {}",
                        c.method.name(),
                        c.unavailable.clone().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let first_bytes = s
            .costs
            .iter()
            .find(|c| c.method == methods[0])
            .and_then(|c| c.bytes)
            .unwrap_or(0);
        self.emit(Event::Plan {
            method: methods[0].name(),
            bytes: first_bytes,
            alternatives: s.costs.clone(),
        });
        // Checks before touching anything.
        crate::preflight::check_writable(&cfg.app_dir)?;
        if cfg.check_running {
            crate::preflight::check_not_running(
                &cfg.app_dir,
                hand_over.map(|h| h.wait_pid).or(cfg.allow_running_pid),
            )?;
        }
        let staged_bytes: u64 = stage::differing_files(&s.scan, manifest)
            .iter()
            .filter_map(|e| e.node.file_pin())
            .map(|p| p.size)
            .sum();
        crate::preflight::check_space(
            &cfg.app_dir,
            first_bytes
                .saturating_mul(2)
                .saturating_add(staged_bytes)
                .saturating_add(1 << 20),
        )?;
        let downloaded = AtomicU64::new(0);
        let mut fallbacks = Vec::new();
        let mut done = None;
        // A cold patch for a running app is only staged here; self-patcher commits it.
        let cold = (hand_over.is_some() && s.restart_required) || self.prefetch;
        let mut result = None;
        for m in methods {
            aim.method = Some(m.name());
            let r = self.run_method(&state, &s, m, &downloaded, cold);
            aim.bytes = downloaded.load(std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok(r) => {
                    result = Some(r);
                    done = Some(m);
                    break;
                }
                Err(Error::Cancelled) => {
                    // No fallback: the app asked to stop. Staged files go, downloads stay.
                    let _ = std::fs::remove_dir_all(state.staging());
                    return Err(Error::Cancelled);
                }
                Err(e) => {
                    self.emit(Event::Fallback {
                        method: m.name(),
                        error: e.to_string(),
                    });
                    fallbacks.push(format!("{}: {e}", m.name()));
                }
            }
        }
        let (mut quarantined, deleted, repaired) = match &result {
            Some(r) => (r.quarantined.clone(), r.deleted.clone(), r.repaired.clone()),
            None => (vec![], vec![], vec![]),
        };
        if self.prefetch {
            // Staged and verified: the cache keeps the artifacts for the commit later.
            let _ = std::fs::remove_dir_all(state.staging());
            let Some(m) = done else {
                return Err(Error::AllMethodsFailed(fallbacks.join("; ")));
            };
            return Ok(ApplyOutcome::InPlace {
                report: ApplyReport {
                    from,
                    to: s.target.version.to_string(),
                    method: m.name().into(),
                    downloaded_bytes: downloaded.load(std::sync::atomic::Ordering::Relaxed),
                    fallbacks,
                    repaired_after: vec![],
                    restart_required: s.restart_required,
                    recovered,
                    from_state: s.install_state.clone(),
                    quarantined: vec![],
                    deleted: vec![],
                    kept,
                    repaired: vec![],
                },
            });
        }
        if let (Some(h), Some(m), Some(actions)) = (hand_over, done, result.and_then(|r| r.actions))
        {
            self.emit(Event::Phase { phase: "hand_over" });
            let planned = crate::selfpatch::PlannedUpdate {
                app: manifest.app.clone(),
                from: s.installed.clone(),
                record: InstallRecord {
                    app: manifest.app.clone(),
                    version: s.target.version.clone(),
                    tree: manifest.tree_digest(),
                    previous: s.installed.clone(),
                },
                actions,
            };
            let (plan, self_patcher_pid) =
                crate::selfpatch::hand_over(&cfg.app_dir, &state, h, planned).inspect_err(
                    |_| {
                        let _ = std::fs::remove_dir_all(state.staging());
                    },
                )?;
            let _ = std::fs::remove_dir_all(state.cache());
            let report = ApplyReport {
                from,
                to: s.target.version.to_string(),
                method: m.name().into(),
                downloaded_bytes: downloaded.load(std::sync::atomic::Ordering::Relaxed),
                fallbacks,
                repaired_after: vec![],
                restart_required: true,
                recovered,
                from_state: s.install_state.clone(),
                quarantined,
                deleted,
                kept,
                repaired,
            };
            return Ok(ApplyOutcome::HandedOver {
                report,
                plan,
                self_patcher_pid,
            });
        }
        let _ = std::fs::remove_dir_all(state.staging());
        let Some(method) = done else {
            return Err(Error::AllMethodsFailed(fallbacks.join("; ")));
        };
        // Verify everything; repair what is wrong. Every file the update may have written is
        // hashed again; the others are trusted from the scan cache if unchanged since the scan.
        let written: BTreeSet<RelPath> = manifest
            .entries
            .iter()
            .filter(|e| s.scan.entries.get(&e.path) != Some(&e.node))
            .map(|e| e.path.clone())
            .collect();
        let verified = (|| -> Result<(Vec<String>, Vec<Quarantined>)> {
            self.emit(Event::Phase { phase: "verify" });
            let mut repaired_after = Vec::new();
            let mut moved = Vec::new();
            let after = scan::scan_with(
                &cfg.app_dir,
                &PathPatterns::empty(),
                Strictness::Install,
                scan::CacheUse::Verify { written: &written },
            )?;
            // The release's paths are the updater's now, besides what it owned before; what
            // it kept stays kept.
            let owner = self.owner_after(&s, manifest)?;
            let survey = crate::ownership::survey(&cfg.app_dir, &after, manifest, &owner);
            if !survey.is_noop() {
                self.emit(Event::Phase { phase: "repair" });
                repaired_after = survey_paths(&survey, manifest);
                let ctx = self.ctx(&state, &s, 99, &downloaded);
                let staged = stage::stage_repair(&ctx, manifest, &after)?;
                let planned = commit::plan_actions(
                    &cfg.app_dir,
                    &state,
                    &after,
                    manifest,
                    &staged,
                    &ctx.staging.join("meta"),
                    &owner,
                    &commit::quarantine_id("repair"),
                )?;
                moved = self.report_quarantine(&planned.quarantined);
                // Same transaction as the update, so rollback still returns to the version before it.
                commit::commit_more(&cfg.app_dir, &state, planned.actions)?;
                let again = scan::scan_with(
                    &cfg.app_dir,
                    &PathPatterns::empty(),
                    Strictness::Install,
                    scan::CacheUse::Refresh,
                )?;
                let _ = std::fs::remove_dir_all(state.staging());
                let left = crate::ownership::survey(&cfg.app_dir, &again, manifest, &owner);
                if !left.is_noop() {
                    return Err(Error::Verify {
                        path: survey_paths(&left, manifest).join(", "),
                        reason: "still differs after repair".into(),
                    });
                }
            }
            Ok((repaired_after, moved))
        })();
        let repaired_after = match verified {
            Ok((r, moved)) => {
                quarantined.extend(moved);
                r
            }
            Err(e) => {
                // Not the release's tree: return to the version before the update.
                let _ = std::fs::remove_dir_all(state.staging());
                commit::rollback(&cfg.app_dir, &state)?;
                return Err(e);
            }
        };
        self.save_record(&state, &s, s.installed.clone())?;
        let _ = std::fs::remove_dir_all(state.cache());
        self.emit(Event::Installed {
            version: s.target.version.to_string(),
            restart_required: s.restart_required,
        });
        Ok(ApplyOutcome::InPlace {
            report: ApplyReport {
                from,
                to: s.target.version.to_string(),
                method: method.name().into(),
                downloaded_bytes: downloaded.load(std::sync::atomic::Ordering::Relaxed),
                fallbacks,
                repaired_after,
                restart_required: s.restart_required,
                recovered,
                from_state: s.install_state.clone(),
                quarantined,
                deleted,
                kept,
                repaired,
            },
        })
    }

    /// Who owns what once the update is in: the target's paths and what was owned before.
    fn owner_after(&self, s: &Session, manifest: &ReleaseManifest) -> Result<Owner> {
        let mut known: Vec<&ReleaseManifest> = vec![manifest];
        known.extend(s.reference.as_ref());
        known.extend(s.record_release.as_ref());
        Owner::new(manifest, &known, std::iter::empty())
    }

    /// Reports each quarantined path as an event.
    fn report_quarantine(&self, q: &[(RelPath, String)]) -> Vec<Quarantined> {
        q.iter()
            .map(|(p, to)| {
                let to = format!("{}/{to}", formats::layout::STATE_DIR);
                self.emit(Event::Quarantined {
                    path: p.to_string(),
                    to: to.clone(),
                });
                Quarantined {
                    path: p.to_string(),
                    to,
                }
            })
            .collect()
    }

    fn ctx<'a>(
        &'a self,
        state: &StateDir,
        s: &'a Session,
        attempt: usize,
        downloaded: &'a AtomicU64,
    ) -> StageCtx<'a> {
        StageCtx {
            transport: &s.transport,
            cache: state.cache(),
            staging: state.staging().join(format!("attempt-{attempt}")),
            limits: &self.config.limits,
            app_dir: &self.config.app_dir,
            events: self.events.as_ref(),
            downloaded,
        }
    }

    /// Stages the update by method `m`, then commits it, or with `plan_only` returns the
    /// actions that would commit it.
    fn run_method(
        &self,
        state: &StateDir,
        s: &Session,
        m: Method,
        downloaded: &AtomicU64,
        plan_only: bool,
    ) -> Result<MethodRun> {
        let manifest = s.manifest()?;
        let cfg = &self.config;
        let ctx = self.ctx(state, s, m as usize, downloaded);
        let _ = std::fs::remove_dir_all(&ctx.staging);
        std::fs::create_dir_all(&ctx.staging).map_err(|e| Error::io(&ctx.staging, e))?;
        self.emit(Event::Phase { phase: "download" });
        let mut repaired = Vec::new();
        let staged = match m {
            Method::Repair => stage::stage_repair(&ctx, manifest, &s.scan)?,
            Method::Installer => stage::stage_installer(&ctx, &s.target, manifest, &s.scan)?,
            Method::Incremental => {
                let chain: Vec<_> = s.chain.iter().map(|&i| &s.view.patches[i]).collect();
                match (s.installed_tree, &s.reference) {
                    (Some(start), _) => {
                        stage::stage_incremental(&ctx, &chain, start, &s.scan, manifest)?
                    }
                    (None, Some(start)) => {
                        let (staged, r) = stage::stage_incremental_partial(
                            &ctx, &chain, start, &s.scan, manifest,
                        )?;
                        repaired = r.iter().map(|p| p.to_string()).collect();
                        staged
                    }
                    (None, None) => {
                        return Err(Error::Precondition("installed version unknown".into()))
                    }
                }
            }
        };
        let owner = s
            .owner
            .as_ref()
            .ok_or_else(|| Error::Precondition("release manifest not loaded".into()))?;
        // The last safe point: past it the journal decides (old or new, never between).
        cfg.cancel.check()?;
        let planned = commit::plan_actions(
            &cfg.app_dir,
            state,
            &s.scan,
            manifest,
            &staged,
            &ctx.staging.join("meta"),
            owner,
            &commit::quarantine_id(&s.target.version.to_string()),
        )?;
        let deleted = planned.survey.deletes(manifest);
        if plan_only {
            let quarantined = self.report_quarantine(&planned.quarantined);
            return Ok(MethodRun {
                actions: Some(planned.actions),
                quarantined,
                deleted,
                repaired,
            });
        }
        self.emit(Event::Phase { phase: "commit" });
        commit::commit(
            &cfg.app_dir,
            state,
            &manifest.app,
            s.installed.clone(),
            s.target.version.clone(),
            planned.actions,
        )?;
        let quarantined = self.report_quarantine(&planned.quarantined);
        Ok(MethodRun {
            actions: None,
            quarantined,
            deleted,
            repaired,
        })
    }

    fn save_record(&self, state: &StateDir, s: &Session, previous: Option<Version>) -> Result<()> {
        state.save_record(&InstallRecord {
            app: s.manifest()?.app.clone(),
            version: s.target.version.clone(),
            tree: s.manifest()?.tree_digest(),
            previous,
        })
    }

    /// Rolls back an interrupted update, if any (safe to call at every app start).
    pub fn recover(&self) -> Result<Recovery> {
        let state = self.state();
        if !state.root.exists() {
            return Ok(Recovery::Clean);
        }
        let _lock = state.lock()?;
        commit::recover(&self.config.app_dir, &state)
    }

    /// Returns to the version before the last update while its backup is kept (only the last
    /// update can be undone), finishing an interrupted rollback first. Returns the restored
    /// version; files changed since the update that were kept in the quarantine, and a dropped
    /// hand-over, are reported as [`Event::Warning`]s.
    pub fn rollback(&self) -> Result<Option<Version>> {
        let r = rollback_app_dir_report(&self.config.app_dir)?;
        for w in rollback_warnings(&r) {
            self.emit(Event::Warning { message: w });
        }
        Ok(r.restored.and_then(|v| Version::parse(&v).ok()))
    }
}

/// [`Updater::rollback`] of the app dir `app_dir`, which needs no repository: returns to the
/// version before the last update while its backup is kept, after rolling back an interrupted
/// one. Refused while an update handed over to `self-patcher` is pending.
pub fn rollback_app_dir(app_dir: &std::path::Path) -> Result<Option<Version>> {
    Ok(rollback_app_dir_report(app_dir)?
        .restored
        .and_then(|v| Version::parse(&v).ok()))
}

/// [`rollback_app_dir`] with the whole report: an interrupted rollback finished, files kept in
/// the quarantine, a hand-over dropped (see [`commit::rollback_report`]).
pub fn rollback_app_dir_report(app_dir: &std::path::Path) -> Result<commit::RollbackReport> {
    let app_dir = &crate::state::resolve_app_dir(app_dir);
    crate::state::check_app_dir(app_dir)?;
    let state = StateDir::of(app_dir);
    let _lock = state.lock()?;
    let dropped = crate::selfpatch::check_pending(&state)?;
    let mut r = commit::rollback_report(app_dir, &state)?;
    r.warnings.extend(dropped);
    Ok(r)
}

/// The report's warnings and kept files as warning lines.
pub fn rollback_warnings(r: &commit::RollbackReport) -> Vec<String> {
    let mut out = r.warnings.clone();
    for k in &r.kept {
        out.push(format!(
            "{} was changed after the update: the old version is back, the changed one is kept at {}",
            k.path,
            k.copy.display()
        ));
    }
    out.extend(r.notes.iter().cloned());
    out
}

/// What an apply aimed at, as far as it got: filled in while it runs, for its report.
#[derive(Default)]
struct Aim {
    from: Option<Version>,
    to: Option<Version>,
    method: Option<&'static str>,
    bytes: u64,
}

/// A stable word for the kind of an update error, as reported to a fleet server
/// ([`formats::fleet::UpdateResult::error_kind`]).
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Format(_) | Error::BadArtifact { .. } | Error::Verify { .. } => "verify",
        Error::StuckTrust { .. } => "trust",
        Error::Io { .. } => "disk",
        Error::Fetch { .. } | Error::NotFound { .. } => "network",
        Error::Precondition(_) => "precondition",
        Error::Refused(_) => "refused",
        Error::AllMethodsFailed(_) => "failed",
        Error::BadLocation { .. } => "config",
        Error::Cancelled => "cancelled",
    }
}

/// What one method did (or, handed over, would do).
struct MethodRun {
    /// The planned actions, when only planned.
    actions: Option<Vec<commit::Action>>,
    quarantined: Vec<Quarantined>,
    deleted: Vec<String>,
    repaired: Vec<String>,
}

/// Whether `dir` exists and holds anything.
fn dir_has_entries(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// The paths a survey would change (for reports).
fn survey_paths(s: &Survey, m: &ReleaseManifest) -> Vec<String> {
    let mut out: BTreeSet<String> = s.write.iter().map(|p| p.to_string()).collect();
    out.extend(s.quarantine.iter().map(|p| p.to_string()));
    out.extend(s.deletes(m));
    out.extend(
        s.remove_dirs_conflict
            .iter()
            .chain(&s.remove_dirs_obsolete)
            .map(|p| p.to_string()),
    );
    out.into_iter().collect()
}

/// Whether moving from `current` to `m` changes anything marked as code.
pub fn restart_needed(current: &Tree, m: &ReleaseManifest) -> bool {
    if m.restart_required {
        return true;
    }
    let want = m.by_path();
    let changed_code = m
        .entries
        .iter()
        .any(|e| e.code && current.entries.get(&e.path) != Some(&e.node));
    let removed_code = current
        .entries
        .iter()
        .any(|(p, n)| !want.contains_key(p) && matches!(n, Node::File { exec: true, .. }));
    changed_code || removed_code
}
