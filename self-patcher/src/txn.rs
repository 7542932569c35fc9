//! Carrying out a journal in an app directory (docs/format.md §8.2).
//!
//! A transaction is a list of [`Action`]s written to `journal.json` (fsynced) before the first
//! change. Every action is a single rename (or `mkdir`/`rmdir`), so each file is at every moment
//! its old or its new version:
//!
//! - `place`: the old file (if any) is first hard-linked to `backup/I` (`I` = the action's
//!   index; all links are made and fsynced before the first change), then the fsynced staged
//!   file is renamed over it. Where hard links are not possible, and always on Windows (where
//!   a running executable can be renamed aside but not replaced), the old file is renamed to
//!   the backup instead (the path is briefly missing).
//! - `remove`: the old file or symlink is renamed to `backup/I`.
//! - `make_dir` / `remove_dir`: `mkdir` / `rmdir` (a directory still holding ignored files is
//!   kept).
//! - `quarantine`: something the updater does not own is renamed into the state directory's
//!   quarantine, which later transactions keep; undone by renaming it back.
//!
//! Each action can be undone by looking at the file system alone, whether it was done, half
//! done or not started, so an interrupted transaction is undone by [`recover`] (rollback), and
//! a committed one by [`rollback`] while its backup is kept. A run that records its progress
//! ([`Mode::Resumable`], used by `self-patcher`) can instead be resumed forward by [`resume`].
//!
//! **Invariant:** no function here writes file contents inside the app dir; only renames,
//! hard links into the backup, `mkdir` and `rmdir`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use formats::txn::{self as names, Action, Journal, TxnState, QUARANTINE_DIR};

use crate::error::{Error, IoContext, Result};
use crate::fsio::{self, exists};

/// The files of a transaction: the app dir and its state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatePaths {
    /// The app directory.
    pub app_dir: PathBuf,
    /// `APP/.patchkit`.
    pub state_dir: PathBuf,
}

impl StatePaths {
    /// The paths of `app_dir`.
    pub fn of(app_dir: &Path) -> Self {
        StatePaths {
            app_dir: app_dir.to_path_buf(),
            state_dir: app_dir.join(formats::layout::STATE_DIR),
        }
    }
    /// `journal.json`.
    pub fn journal(&self) -> PathBuf {
        self.state_dir.join(names::JOURNAL_FILE)
    }
    /// The progress record of a resumable run.
    pub fn progress(&self) -> PathBuf {
        self.state_dir.join(names::PROGRESS_FILE)
    }
    /// The backup directory.
    pub fn backup(&self) -> PathBuf {
        self.state_dir.join(names::BACKUP_DIR)
    }
    /// Where action `i` keeps what it replaced or removed.
    pub fn backup_of(&self, i: usize) -> PathBuf {
        self.backup().join(i.to_string())
    }
    /// The install record saved when the transaction began (restored by [`rollback`]).
    pub fn backup_record(&self) -> PathBuf {
        self.backup().join("record.json")
    }
    /// `installed.json`.
    pub fn record(&self) -> PathBuf {
        self.state_dir.join(names::RECORD_FILE)
    }
    /// The lock file.
    pub fn lock(&self) -> PathBuf {
        self.state_dir.join(names::LOCK_FILE)
    }
    /// The lock a running `self-patcher` holds.
    pub fn handover_lock(&self) -> PathBuf {
        self.state_dir.join(names::HANDOVER_LOCK_FILE)
    }
    /// A staged file named relative to the state directory.
    pub fn staged(&self, rel: &str) -> PathBuf {
        self.state_dir.join(rel)
    }
}

/// How a run records what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only the journal: an interruption is rolled back by [`recover`].
    RollBackOnCrash,
    /// The number of actions done is recorded (fsynced) after each one, so [`resume`] can
    /// carry on forward after a crash.
    Resumable,
}

/// Loads the journal, if any.
pub fn load_journal(paths: &StatePaths) -> Result<Option<Journal>> {
    let p = paths.journal();
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: p,
                reason: format!("corrupt journal: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

fn save_journal(paths: &StatePaths, j: &Journal) -> Result<()> {
    let bytes = serde_json::to_vec(j).map_err(|e| Error::Corrupt {
        path: paths.journal(),
        reason: e.to_string(),
    })?;
    fsio::write_file(&paths.journal(), &bytes)
}

/// The number of actions a resumable run recorded as done (0 when there is no record).
pub fn read_progress(paths: &StatePaths) -> usize {
    fs::read_to_string(paths.progress())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_progress(paths: &StatePaths, done: usize) -> Result<()> {
    fsio::write_file(&paths.progress(), done.to_string().as_bytes())
}

/// Starts a new transaction with `journal.actions`: the previous transaction's journal and
/// backup are dropped (only the last update can be rolled back), the install record is saved
/// into the new backup, staged files are fsynced, and the journal is written as `committing`.
/// Nothing in the app dir changes.
pub fn begin(paths: &StatePaths, journal: &mut Journal) -> Result<()> {
    fs::create_dir_all(&paths.state_dir).at(&paths.state_dir)?;
    // The old journal goes first: a journal must never point at a backup it does not own.
    match fs::remove_file(paths.journal()) {
        Ok(()) => fsio::sync_dir(&paths.state_dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(paths.journal(), e)),
    }
    let _ = fs::remove_file(paths.progress());
    let backup = paths.backup();
    match fs::remove_dir_all(&backup) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(backup, e)),
    }
    fs::create_dir_all(&backup).at(&backup)?;
    if let Ok(rec) = fs::read(paths.record()) {
        fsio::write_file(&paths.backup_record(), &rec)?;
    }
    sync_staged(paths, &journal.actions)?;
    journal.state = TxnState::Committing;
    save_journal(paths, journal)
}

/// Adds `more` actions to the committed transaction (a repair after the update), keeping its
/// backup, and marks it `committing` again. Returns the index of the first new action. An
/// interruption or failure from here on rolls back the whole transaction.
pub fn extend(paths: &StatePaths, journal: &mut Journal, more: Vec<Action>) -> Result<usize> {
    if journal.state != TxnState::Committed {
        return Err(Error::Precondition(format!(
            "{}: can only extend a committed transaction",
            paths.journal().display()
        )));
    }
    sync_staged(paths, &more)?;
    let start = journal.actions.len();
    journal.actions.extend(more);
    journal.state = TxnState::Committing;
    save_journal(paths, journal)?;
    Ok(start)
}

fn sync_staged(paths: &StatePaths, actions: &[Action]) -> Result<()> {
    let staged: Vec<PathBuf> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Place { staged, .. } => Some(paths.staged(staged)),
            _ => None,
        })
        .filter(|p| {
            fs::symlink_metadata(p)
                .map(|m| m.is_file())
                .unwrap_or(false)
        })
        .collect();
    fsio::sync_files(&staged)?;
    let dirs: BTreeSet<PathBuf> = staged
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    sync_existing(&dirs)
}

/// Flushes the directories of `dirs` that still exist, in parallel.
fn sync_existing(dirs: &BTreeSet<PathBuf>) -> Result<()> {
    let dirs: Vec<PathBuf> = dirs.iter().filter(|d| d.is_dir()).cloned().collect();
    fsio::sync_dirs(&dirs)
}

/// Carries out `journal.actions[start..]` (a `committing` journal saved by [`begin`],
/// [`extend`] or an earlier run). On success the journal is marked `committed`. On error every
/// action of the journal is undone, the journal marked `rolled back`, and the error (naming the
/// file) returned: the app dir is back at the version before the transaction.
pub fn run(paths: &StatePaths, journal: &mut Journal, start: usize, mode: Mode) -> Result<()> {
    let resuming = mode == Mode::Resumable && start > 0;
    run_from(paths, journal, start, mode, resuming)
}

/// [`run`]; with `resuming`, the first action may have been done by the interrupted run
/// without being recorded.
fn run_from(
    paths: &StatePaths,
    journal: &mut Journal,
    start: usize,
    mode: Mode,
    resuming: bool,
) -> Result<()> {
    match run_inner(paths, journal, start, mode, resuming)
        .and_then(|()| record_placed(paths, journal))
    {
        Ok(()) => {
            journal.state = TxnState::Committed;
            save_journal(paths, journal)?;
            if mode == Mode::Resumable {
                let _ = fs::remove_file(paths.progress());
            }
            Ok(())
        }
        Err(first) => match undo_all(
            paths,
            journal,
            &new_quarantine(paths, "undo"),
            &format!("undoing the failed update to {}", journal.to),
            "remove the cause and run `patch-apply recover`",
        )
        .and_then(|_| {
            journal.state = TxnState::RolledBack;
            save_journal(paths, journal)?;
            let _ = fs::remove_file(paths.progress());
            Ok(())
        }) {
            Ok(()) => Err(first),
            Err(undo) => Err(Error::UndoFailed {
                first: Box::new(first),
                undo: Box::new(undo),
            }),
        },
    }
}

/// Resumes a `committing` journal left by an interrupted [`Mode::Resumable`] run, skipping the
/// actions its progress record counts as done.
pub fn resume(paths: &StatePaths, journal: &mut Journal) -> Result<()> {
    let done = read_progress(paths).min(journal.actions.len());
    // Even with no progress recorded, the first action may be done: a run killed between
    // its first rename and the first progress record.
    run_from(paths, journal, done, Mode::Resumable, true)
}

fn run_inner(
    paths: &StatePaths,
    journal: &Journal,
    start: usize,
    mode: Mode,
    resuming: bool,
) -> Result<()> {
    let backup = paths.backup();
    fs::create_dir_all(&backup).at(&backup)?;
    // Keep the old versions first (hard links: the app dir does not change).
    for (i, a) in journal.actions.iter().enumerate().skip(start) {
        // Only a place that replaces something keeps it: what stands at the path of a place
        // without `had_old` is moved away by an earlier action (a removal keeps it, the
        // quarantine holds it), and a second copy in the backup would come back on undo.
        if let Action::Place {
            path,
            staged,
            had_old: true,
        } = a
        {
            let p = path.to_path(&paths.app_dir);
            let b = paths.backup_of(i);
            // Not on Windows: a running `.exe` cannot be replaced by renaming over it (nor can
            // any link to it be removed), but it can be renamed aside; without a backup link
            // the step renames the old file to the backup, then the new one into place
            // (docs/platforms.md).
            if !cfg!(windows)
                && exists(&p)
                && !exists(&b)
                && exists(&paths.staged(staged))
                && !is_real_dir(&p)
            {
                // Falls back to a rename when the step runs if this fails.
                let _ = fs::hard_link(&p, &b);
            }
        }
    }
    fsio::sync_dir(&backup)?;
    let mut touched = BTreeSet::new();
    touched.insert(paths.app_dir.clone());
    for (i, a) in journal.actions.iter().enumerate().skip(start) {
        let mut here = BTreeSet::new();
        do_action(paths, i, a, resuming && i == start, &mut here)?;
        if crate::testhook::active() {
            crate::testhook::pause(&format!("commit-step-{}", i + 1));
        }
        if mode == Mode::Resumable {
            sync_existing(&here)?;
            write_progress(paths, i + 1)?;
        }
        touched.extend(here);
    }
    touched.insert(backup);
    sync_existing(&touched)
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

fn parent_of(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn do_action(
    paths: &StatePaths,
    i: usize,
    a: &Action,
    maybe_done: bool,
    touched: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    let p = a.path().to_path(&paths.app_dir);
    match a {
        Action::Remove { .. } => {
            if exists(&p) {
                let b = paths.backup_of(i);
                fs::rename(&p, &b).at(&p)?;
                touched.insert(parent_of(&p));
            }
        }
        Action::RemoveDir { .. } => {
            if is_real_dir(&p) {
                match fs::remove_dir(&p) {
                    Ok(()) => {
                        touched.insert(parent_of(&p));
                    }
                    Err(_)
                        if fs::read_dir(&p)
                            .map(|mut d| d.next().is_some())
                            .unwrap_or(false) =>
                    {
                        // Holds ignored user files: keep it.
                    }
                    Err(e) => return Err(Error::io(p, e)),
                }
            }
        }
        Action::MakeDir { .. } => {
            if !is_real_dir(&p) {
                fs::create_dir(&p).at(&p)?;
                touched.insert(parent_of(&p));
            }
        }
        Action::Place { staged, .. } => {
            let s = paths.staged(staged);
            if !exists(&s) {
                if maybe_done && exists(&p) {
                    // Moved into place just before an interruption.
                    return Ok(());
                }
                return Err(Error::StagedMissing {
                    target: p,
                    staged: s,
                });
            }
            let b = paths.backup_of(i);
            if exists(&p) && !exists(&b) {
                // No hard link could be made: move the old version away instead.
                fs::rename(&p, &b).at(&p)?;
            }
            fs::rename(&s, &p).at(&p)?;
            touched.insert(parent_of(&p));
            touched.insert(parent_of(&s));
        }
        Action::Quarantine { to, .. } => {
            let q = paths.staged(to);
            if exists(&p) && !exists(&q) {
                ensure_parent(&q)?;
                fs::rename(&p, &q).at(&p)?;
                touched.insert(parent_of(&p));
                touched.insert(parent_of(&q));
            }
        }
    }
    Ok(())
}

/// Inside the backup: what each `place` action put in place (type, size and modification
/// time, or a symlink's target), recorded when the transaction committed, so that a rollback
/// can tell a file changed since the update from the update's own.
const PLACED_FILE: &str = "placed.json";
/// Inside the backup: the quarantine directory a rollback keeps changed files in (written
/// before it starts, so that a resumed rollback uses the same one).
const ROLLBACK_FILE: &str = "rollback-quarantine";

/// Something a rollback or recovery found in the way that was not the update's own (a file
/// changed or created after the update) and kept a copy of before restoring the old version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The path in the app dir (relative).
    pub path: String,
    /// Where the copy is.
    pub copy: PathBuf,
}

/// What [`recover`] or [`rollback`] undid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undone {
    /// The transaction undone (marked `rolled back`; its `from` is the version restored).
    pub journal: Journal,
    /// Whether this finished a rollback that an earlier, interrupted run had started.
    pub resumed_rollback: bool,
    /// Changed or added files that were in the way, kept in [`Undone::quarantine`].
    pub kept: Vec<Kept>,
    /// The directory holding the kept copies (when there are any).
    pub quarantine: Option<PathBuf>,
    /// What was left as it is, and why (a directory the update made that holds files added
    /// since).
    pub notes: Vec<String>,
}

impl StatePaths {
    fn placed(&self) -> PathBuf {
        self.backup().join(PLACED_FILE)
    }
    fn rollback_marker(&self) -> PathBuf {
        self.backup().join(ROLLBACK_FILE)
    }
}

/// What is at `p`, for telling later changes apart: the type, and a file's size and
/// modification time (not its inode: copies and restores of the app dir keep the others).
fn ident(p: &Path) -> Option<String> {
    let m = fs::symlink_metadata(p).ok()?;
    Some(if m.is_symlink() {
        format!("link:{}", fs::read_link(p).ok()?.to_string_lossy())
    } else if m.is_dir() {
        "dir".into()
    } else if m.is_file() {
        #[cfg(unix)]
        let t = {
            use std::os::unix::fs::MetadataExt;
            format!("{}.{:09}", m.mtime(), m.mtime_nsec())
        };
        #[cfg(not(unix))]
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_default();
        format!("file:{}:{t}", m.len())
    } else {
        "other".into()
    })
}

/// Records what every `place` action of `journal` put in place (see [`PLACED_FILE`]).
fn record_placed(paths: &StatePaths, journal: &Journal) -> Result<()> {
    let mut map = serde_json::Map::new();
    for (i, a) in journal.actions.iter().enumerate() {
        if let Action::Place { path, .. } = a {
            if let Some(id) = ident(&path.to_path(&paths.app_dir)) {
                map.insert(i.to_string(), serde_json::Value::String(id));
            }
        }
    }
    let bytes = serde_json::to_vec(&map).map_err(|e| Error::Corrupt {
        path: paths.placed(),
        reason: e.to_string(),
    })?;
    fsio::write_file(&paths.placed(), &bytes)
}

fn load_placed(paths: &StatePaths) -> BTreeMap<usize, String> {
    fs::read(paths.placed())
        .ok()
        .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(&b).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The state of one undo pass over a journal.
struct UndoCx<'a> {
    paths: &'a StatePaths,
    /// What the update placed (empty: no record, everything found is the update's own).
    placed: BTreeMap<usize, String>,
    /// For each path, the last action touching it: only that one compares with `placed`
    /// (earlier ones find what the later ones restored).
    last: BTreeMap<String, usize>,
    /// Where changed files go (relative to the state dir), created on first use.
    quarantine: String,
    notes: Vec<String>,
    /// Paths that could not be undone (with the reason): they stay at the new version.
    failed: Vec<(String, String)>,
}

impl UndoCx<'_> {
    /// Whether `p` (action `i`'s path) still holds what the update put there.
    fn is_updates_own(&self, i: usize, a: &Action, p: &Path) -> bool {
        if self.last.get(a.path().as_str()) != Some(&i) {
            return true;
        }
        match self.placed.get(&i) {
            Some(id) => ident(p).as_ref() == Some(id),
            None => !matches!(a, Action::Remove { .. }),
        }
    }

    /// A free place in the quarantine for `rel`.
    fn quarantine_slot(&self, rel: &str) -> Result<PathBuf> {
        let base = self.paths.staged(&self.quarantine).join(rel);
        let mut q = base.clone();
        let mut n = 1;
        while exists(&q) {
            q = PathBuf::from(format!("{}.{n}", base.display()));
            n += 1;
        }
        ensure_parent(&q)?;
        Ok(q)
    }

    fn blocked(&self, rel: &str) -> bool {
        self.failed
            .iter()
            .any(|(f, _)| f == rel || f.starts_with(&format!("{rel}/")))
    }
}

/// Puts the backup `b` at `p` where something is in the way: the path goes from what is there
/// to the old version by one rename when both are files or symlinks; otherwise what is there is
/// moved aside first and put back if the old version cannot be moved in, so that the path is
/// never left empty. With `keep`, what was there is kept in the quarantine.
fn put_back(cx: &UndoCx, i: usize, rel: &str, p: &Path, b: &Path, keep: bool) -> Result<()> {
    if !is_real_dir(p) && !is_real_dir(b) {
        if !keep {
            return fs::rename(b, p).at(p);
        }
        let q = cx.quarantine_slot(rel)?;
        if fs::hard_link(p, &q).is_ok() {
            return fs::rename(b, p).at(p);
        }
    }
    let aside = if keep {
        cx.quarantine_slot(rel)?
    } else {
        PathBuf::from(format!("{}.displaced", cx.paths.backup_of(i).display()))
    };
    fs::rename(p, &aside).at(p)?;
    if let Err(e) = fs::rename(b, p) {
        let _ = fs::rename(&aside, p);
        return Err(Error::io(p, e));
    }
    if !keep {
        if is_real_dir(&aside) {
            let _ = fs::remove_dir_all(&aside);
        } else {
            let _ = fs::remove_file(&aside);
        }
    }
    Ok(())
}

fn undo_action(
    cx: &mut UndoCx,
    i: usize,
    a: &Action,
    touched: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    let paths = cx.paths;
    let rel = a.path().as_str();
    let p = a.path().to_path(&paths.app_dir);
    let b = paths.backup_of(i);
    match a {
        Action::Remove { .. } => {
            if exists(&b) {
                ensure_parent(&p)?;
                // Something made at a path the update removed is not the update's own.
                let keep = exists(&p);
                put_back(cx, i, rel, &p, &b, keep)?;
                touched.insert(parent_of(&p));
            }
        }
        Action::RemoveDir { .. } => {
            if !is_real_dir(&p) {
                if exists(&p) {
                    // Made after the update where the old version has a directory.
                    let q = cx.quarantine_slot(rel)?;
                    fs::rename(&p, &q).at(&p)?;
                    if let Err(e) = fs::create_dir(&p) {
                        let _ = fs::rename(&q, &p);
                        return Err(Error::io(p, e));
                    }
                } else {
                    fs::create_dir_all(&p).at(&p)?;
                }
                touched.insert(parent_of(&p));
            }
        }
        Action::MakeDir { .. } => {
            if is_real_dir(&p) {
                if fs::remove_dir(&p).is_ok() {
                    touched.insert(parent_of(&p));
                } else if !cx.blocked(rel)
                    && fs::read_dir(&p)
                        .map(|mut d| d.next().is_some())
                        .unwrap_or(false)
                {
                    cx.notes.push(format!(
                        "kept directory {rel} (made by the update): it holds files added since"
                    ));
                }
            }
        }
        Action::Place {
            staged, had_old, ..
        } => {
            if exists(&b) {
                ensure_parent(&p)?;
                if exists(&p) && !same_file(&p, &b) {
                    let keep = !cx.is_updates_own(i, a, &p);
                    put_back(cx, i, rel, &p, &b, keep)?;
                } else {
                    // Atomic: the path goes from new to old. If both name the same file (the
                    // link was made but the step never ran), rename does nothing.
                    fs::rename(&b, &p).at(&p)?;
                    if exists(&b) {
                        remove_any(&b)?;
                    }
                }
                touched.insert(parent_of(&p));
            } else if !*had_old && exists(&p) && !exists(&paths.staged(staged)) {
                // Placed where nothing was.
                if cx.is_updates_own(i, a, &p) && !is_real_dir(&p) {
                    remove_any(&p)?;
                } else {
                    let q = cx.quarantine_slot(rel)?;
                    fs::rename(&p, &q).at(&p)?;
                }
                touched.insert(parent_of(&p));
            }
        }
        Action::Quarantine { to, .. } => {
            let q = paths.staged(to);
            if exists(&q) && !exists(&p) {
                ensure_parent(&p)?;
                fs::rename(&q, &p).at(&p)?;
                touched.insert(parent_of(&p));
            }
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

fn ensure_parent(p: &Path) -> Result<()> {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    let m = fs::symlink_metadata(p).at(p)?;
    if m.is_dir() {
        fs::remove_dir(p).at(p)
    } else {
        fs::remove_file(p).at(p)
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh quarantine directory name (relative to the state dir) for `what`.
fn new_quarantine(paths: &StatePaths, what: &str) -> String {
    let t = now_unix();
    let mut name = format!("{QUARANTINE_DIR}/{what}-{t}");
    let mut n = 1;
    while exists(&paths.staged(&name)) {
        name = format!("{QUARANTINE_DIR}/{what}-{t}-{n}");
        n += 1;
    }
    name
}

fn version_or_nothing(v: &Option<formats::Version>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "nothing".into())
}

/// Undoes every action of `journal` in reverse order, keeping what is not the update's own in
/// `quarantine` (relative to the state dir). A step that fails is left at the new version and
/// the others are still undone; the error then lists every path left at the new version.
/// Returns the notes.
fn undo_all(
    paths: &StatePaths,
    journal: &Journal,
    quarantine: &str,
    what: &str,
    hint: &str,
) -> Result<Vec<String>> {
    let mut last = BTreeMap::new();
    for (i, a) in journal.actions.iter().enumerate() {
        last.insert(a.path().as_str().to_string(), i);
    }
    let mut cx = UndoCx {
        paths,
        placed: load_placed(paths),
        last,
        quarantine: quarantine.to_string(),
        notes: Vec::new(),
        failed: Vec::new(),
    };
    let mut touched = BTreeSet::new();
    for (k, (i, a)) in journal.actions.iter().enumerate().rev().enumerate() {
        let rel = a.path().as_str();
        if cx.failed.iter().any(|(f, _)| f == rel) {
            continue;
        }
        if let Err(e) = undo_action(&mut cx, i, a, &mut touched) {
            cx.failed.push((rel.to_string(), e.to_string()));
        }
        if crate::testhook::active() {
            crate::testhook::pause(&format!("undo-{}", k + 1));
        }
    }
    let q = paths.staged(quarantine);
    if exists(&q) {
        touched.insert(q);
    }
    sync_existing(&touched)?;
    if cx.failed.is_empty() {
        return Ok(cx.notes);
    }
    Err(Error::Incomplete {
        what: what.to_string(),
        failed: cx
            .failed
            .into_iter()
            .map(|(p, e)| format!("{p} stays at {}: {e}", journal.to))
            .collect(),
        restored: version_or_nothing(&journal.from),
        hint: hint.to_string(),
    })
}

/// The files kept in the quarantine directory `q` (relative to the state dir).
fn kept_in(paths: &StatePaths, q: &str) -> Vec<Kept> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<Kept>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let p = e.path();
            if is_real_dir(&p)
                && fs::read_dir(&p)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            {
                walk(&p, &r, out);
            } else {
                out.push(Kept { path: r, copy: p });
            }
        }
    }
    let mut out = Vec::new();
    walk(&paths.staged(q), "", &mut out);
    out
}

/// Finishes what an interrupted run left: a transaction still `committing` is undone, a
/// rollback that was interrupted is finished (restoring the install record too). Returns what
/// was undone (the app dir is then at the version before the transaction); otherwise nothing
/// happens.
pub fn recover(paths: &StatePaths) -> Result<Option<Undone>> {
    let Some(mut j) = load_journal(paths)? else {
        return Ok(None);
    };
    match j.state {
        TxnState::Committing => {}
        TxnState::RollingBack => return finish_rollback(paths, j, true).map(Some),
        TxnState::Committed | TxnState::RolledBack => return Ok(None),
    }
    let q = new_quarantine(paths, "recover");
    let notes = undo_all(
        paths,
        &j,
        &q,
        &format!("rolling back the interrupted update to {}", j.to),
        "remove the cause and run `patch-apply recover` again",
    )?;
    j.state = TxnState::RolledBack;
    save_journal(paths, &j)?;
    let _ = fs::remove_file(paths.progress());
    let _ = fs::remove_dir_all(paths.backup());
    let kept = kept_in(paths, &q);
    Ok(Some(Undone {
        journal: j,
        resumed_rollback: false,
        quarantine: (!kept.is_empty()).then(|| paths.staged(&q)),
        kept,
        notes,
    }))
}

/// Undoes the last committed transaction while its backup is kept, and restores the install
/// record saved when it began; a rollback interrupted earlier is finished instead. Files
/// changed or added since the update that are in the way of the old version are kept in
/// `quarantine/rollback-TIME/` and listed. A step that cannot be undone leaves its path at the
/// new version (every path is old or new), the error names it, and running rollback again
/// finishes the job. Returns what was undone (its `from` is the version restored).
pub fn rollback(paths: &StatePaths) -> Result<Undone> {
    let Some(mut j) = load_journal(paths)? else {
        return Err(Error::Precondition(format!(
            "{}: no update to roll back",
            paths.app_dir.display()
        )));
    };
    match j.state {
        TxnState::Committed => {}
        TxnState::RollingBack => return finish_rollback(paths, j, true),
        TxnState::RolledBack => {
            return Err(Error::Precondition(format!(
                "{}: nothing to roll back: the last update ({} -> {}) was already rolled back; only the last update can be undone",
                paths.app_dir.display(),
                version_or_nothing(&j.from),
                j.to
            )))
        }
        TxnState::Committing => {
            return Err(Error::Precondition(format!(
                "{}: the last update (to {}) was interrupted; run recover",
                paths.app_dir.display(),
                j.to
            )))
        }
    }
    // The quarantine is chosen once, so that a resumed rollback keeps using it.
    let q = new_quarantine(paths, "rollback");
    fsio::write_file(&paths.rollback_marker(), q.as_bytes())?;
    // An interruption from here on is finished by `rollback` or `recover`.
    j.state = TxnState::RollingBack;
    save_journal(paths, &j)?;
    finish_rollback(paths, j, false)
}

fn finish_rollback(paths: &StatePaths, mut j: Journal, resumed: bool) -> Result<Undone> {
    let q = fs::read_to_string(paths.rollback_marker())
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| formats::RelPath::new(s).is_ok() && s.starts_with(QUARANTINE_DIR))
        .unwrap_or_else(|| new_quarantine(paths, "rollback"));
    crate::testhook::pause("rollback-start");
    let notes = undo_all(
        paths,
        &j,
        &q,
        &format!("rolling back {} to {}", j.to, version_or_nothing(&j.from)),
        "remove the cause and run `patch-apply rollback` again to finish",
    )?;
    crate::testhook::pause("rollback-undone");
    match fs::read(paths.backup_record()) {
        Ok(rec) => fsio::write_file(&paths.record(), &rec)?,
        Err(_) => match fs::remove_file(paths.record()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(paths.record(), e)),
        },
    }
    crate::testhook::pause("rollback-recorded");
    j.state = TxnState::RolledBack;
    save_journal(paths, &j)?;
    let _ = fs::remove_file(paths.progress());
    let _ = fs::remove_dir_all(paths.backup());
    let kept = kept_in(paths, &q);
    Ok(Undone {
        journal: j,
        resumed_rollback: resumed,
        quarantine: (!kept.is_empty()).then(|| paths.staged(&q)),
        kept,
        notes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;
    use formats::{RelPath, Version};

    struct Fixture {
        _d: tempfile::TempDir,
        paths: StatePaths,
    }

    fn fixture() -> Fixture {
        let d = tempfile::tempdir().unwrap();
        let app = d.path().join("app");
        fs::create_dir_all(app.join("sub")).unwrap();
        fs::write(app.join("a"), "old a").unwrap();
        fs::write(app.join("gone"), "old gone").unwrap();
        fs::write(app.join("sub/b"), "old b").unwrap();
        let paths = StatePaths::of(&app);
        fs::create_dir_all(paths.state_dir.join("staging")).unwrap();
        fs::write(paths.state_dir.join("staging/a"), "new a").unwrap();
        fs::write(paths.state_dir.join("staging/c"), "new c").unwrap();
        fs::write(paths.state_dir.join("staging/b"), "new b").unwrap();
        Fixture { _d: d, paths }
    }

    fn rp(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn journal() -> Journal {
        Journal {
            app: "demo".into(),
            from: Some(Version::parse("1.0.0").unwrap()),
            to: Version::parse("2.0.0").unwrap(),
            state: TxnState::Committing,
            actions: vec![
                Action::Remove { path: rp("gone") },
                Action::MakeDir { path: rp("new") },
                Action::Place {
                    path: rp("a"),
                    staged: "staging/a".into(),
                    had_old: true,
                },
                Action::Place {
                    path: rp("new/c"),
                    staged: "staging/c".into(),
                    had_old: false,
                },
                Action::Place {
                    path: rp("sub/b"),
                    staged: "staging/b".into(),
                    had_old: true,
                },
            ],
        }
    }

    fn read(p: &StatePaths, rel: &str) -> Option<String> {
        fs::read_to_string(p.app_dir.join(rel)).ok()
    }

    fn assert_old(p: &StatePaths) {
        assert_eq!(read(p, "a").as_deref(), Some("old a"));
        assert_eq!(read(p, "gone").as_deref(), Some("old gone"));
        assert_eq!(read(p, "sub/b").as_deref(), Some("old b"));
        assert!(!p.app_dir.join("new").exists());
    }

    fn assert_new(p: &StatePaths) {
        assert_eq!(read(p, "a").as_deref(), Some("new a"));
        assert_eq!(read(p, "gone"), None);
        assert_eq!(read(p, "new/c").as_deref(), Some("new c"));
        assert_eq!(read(p, "sub/b").as_deref(), Some("new b"));
    }

    #[test]
    fn commit_then_rollback_restores_the_old_tree() {
        let f = fixture();
        let mut j = journal();
        begin(&f.paths, &mut j).unwrap();
        run(&f.paths, &mut j, 0, Mode::RollBackOnCrash).unwrap();
        assert_new(&f.paths);
        assert_eq!(
            load_journal(&f.paths).unwrap().unwrap().state,
            TxnState::Committed
        );
        rollback(&f.paths).unwrap();
        assert_old(&f.paths);
        assert!(
            rollback(&f.paths).is_err(),
            "only the last update can be undone"
        );
    }

    #[test]
    fn failing_step_rolls_everything_back_and_names_the_file() {
        let f = fixture();
        let mut j = journal();
        // The last step's staged file vanishes (the staging dir removed mid-way).
        fs::remove_file(f.paths.state_dir.join("staging/b")).unwrap();
        begin(&f.paths, &mut j).unwrap();
        let e = run(&f.paths, &mut j, 0, Mode::RollBackOnCrash)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sub/b"), "{e}");
        assert_old(&f.paths);
        assert_eq!(
            load_journal(&f.paths).unwrap().unwrap().state,
            TxnState::RolledBack
        );
    }

    #[test]
    fn interrupted_after_each_step_recovers_to_old_or_resumes_to_new() {
        for stop in 0..=journal().actions.len() {
            for resume_forward in [false, true] {
                let f = fixture();
                let mut j = journal();
                begin(&f.paths, &mut j).unwrap();
                // Simulate a run killed after `stop` actions (links made, progress recorded).
                let mut partial = j.clone();
                partial.actions.truncate(stop);
                run_inner(&f.paths, &partial, 0, Mode::Resumable, false).unwrap();
                if resume_forward {
                    let mut j2 = load_journal(&f.paths).unwrap().unwrap();
                    assert_eq!(read_progress(&f.paths), stop);
                    resume(&f.paths, &mut j2).unwrap();
                    assert_new(&f.paths);
                } else {
                    assert!(recover(&f.paths).unwrap().is_some());
                    assert_old(&f.paths);
                }
            }
        }
    }

    #[test]
    fn resume_after_the_first_step_done_but_not_recorded() {
        let f = fixture();
        let mut j = journal();
        // A transaction whose first action places a file.
        let place_a = j.actions.remove(2);
        assert!(matches!(place_a, Action::Place { .. }));
        j.actions.insert(0, place_a);
        begin(&f.paths, &mut j).unwrap();
        let mut partial = j.clone();
        partial.actions.truncate(1);
        run_inner(&f.paths, &partial, 0, Mode::Resumable, false).unwrap();
        // Killed before the first progress record: none is on disk.
        let _ = fs::remove_file(f.paths.progress());
        assert_eq!(read_progress(&f.paths), 0);
        resume(&f.paths, &mut j).unwrap();
        assert_new(&f.paths);
    }

    #[test]
    fn resume_after_a_step_done_but_not_recorded() {
        let f = fixture();
        let mut j = journal();
        begin(&f.paths, &mut j).unwrap();
        let mut partial = j.clone();
        partial.actions.truncate(3);
        run_inner(&f.paths, &partial, 0, Mode::Resumable, false).unwrap();
        // Progress says 2: the third step (place `a`) is done again.
        write_progress(&f.paths, 2).unwrap();
        resume(&f.paths, &mut j).unwrap();
        assert_new(&f.paths);
    }

    #[test]
    fn extended_transaction_rolls_back_to_the_version_before_both_parts() {
        let f = fixture();
        let mut j = journal();
        begin(&f.paths, &mut j).unwrap();
        run(&f.paths, &mut j, 0, Mode::RollBackOnCrash).unwrap();
        // A repair replaces `a` again.
        fs::write(f.paths.state_dir.join("staging/a2"), "new a").unwrap();
        fs::write(f.paths.app_dir.join("a"), "damaged").unwrap();
        let start = extend(
            &f.paths,
            &mut j,
            vec![Action::Place {
                path: rp("a"),
                staged: "staging/a2".into(),
                had_old: true,
            }],
        )
        .unwrap();
        run(&f.paths, &mut j, start, Mode::RollBackOnCrash).unwrap();
        assert_new(&f.paths);
        rollback(&f.paths).unwrap();
        assert_old(&f.paths);
    }

    #[test]
    fn rollback_restores_the_install_record() {
        let f = fixture();
        fs::write(f.paths.record(), "v1 record").unwrap();
        let mut j = journal();
        begin(&f.paths, &mut j).unwrap();
        run(&f.paths, &mut j, 0, Mode::RollBackOnCrash).unwrap();
        fs::write(f.paths.record(), "v2 record").unwrap();
        rollback(&f.paths).unwrap();
        assert_eq!(fs::read_to_string(f.paths.record()).unwrap(), "v1 record");
    }

    #[test]
    fn rollback_interrupted_after_marking_is_finished_by_rollback_or_recover_with_the_record() {
        for by_recover in [false, true] {
            let f = fixture();
            fs::write(f.paths.record(), "v1 record").unwrap();
            let mut j = journal();
            begin(&f.paths, &mut j).unwrap();
            run(&f.paths, &mut j, 0, Mode::RollBackOnCrash).unwrap();
            fs::write(f.paths.record(), "v2 record").unwrap();
            // A rollback killed after undoing the last two actions.
            fsio::write_file(&f.paths.rollback_marker(), b"quarantine/rollback-1").unwrap();
            j.state = TxnState::RollingBack;
            save_journal(&f.paths, &j).unwrap();
            let part = j.clone();
            let mut touched = BTreeSet::new();
            let mut cx = UndoCx {
                paths: &f.paths,
                placed: load_placed(&f.paths),
                last: BTreeMap::new(),
                quarantine: "quarantine/rollback-1".into(),
                notes: Vec::new(),
                failed: Vec::new(),
            };
            for i in [4, 3] {
                undo_action(&mut cx, i, &part.actions[i], &mut touched).unwrap();
            }
            let u = if by_recover {
                recover(&f.paths).unwrap().unwrap()
            } else {
                rollback(&f.paths).unwrap()
            };
            assert!(u.resumed_rollback);
            assert!(u.kept.is_empty(), "{:?}", u.kept);
            assert_old(&f.paths);
            assert_eq!(fs::read_to_string(f.paths.record()).unwrap(), "v1 record");
            let e = rollback(&f.paths).unwrap_err().to_string();
            assert!(e.contains("nothing to roll back"), "{e}");
        }
    }

    #[test]
    fn rollback_keeps_a_file_changed_after_the_update_and_one_made_where_one_was_removed() {
        let f = fixture();
        let mut j = journal();
        begin(&f.paths, &mut j).unwrap();
        run(&f.paths, &mut j, 0, Mode::RollBackOnCrash).unwrap();
        fs::write(f.paths.app_dir.join("sub/b"), "edited b").unwrap();
        fs::write(f.paths.app_dir.join("gone"), "made gone").unwrap();
        let u = rollback(&f.paths).unwrap();
        assert_old(&f.paths);
        let kept: Vec<(&str, String)> = u
            .kept
            .iter()
            .map(|k| (k.path.as_str(), fs::read_to_string(&k.copy).unwrap()))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("gone", "made gone".to_string()),
                ("sub/b", "edited b".to_string())
            ]
        );
        assert!(u
            .quarantine
            .unwrap()
            .starts_with(f.paths.state_dir.join("quarantine")));
    }

    #[test]
    fn rollback_puts_the_old_file_back_where_a_directory_was_made_and_keeps_the_directory() {
        let f = fixture();
        let mut j = journal();
        begin(&f.paths, &mut j).unwrap();
        run(&f.paths, &mut j, 0, Mode::RollBackOnCrash).unwrap();
        let a = f.paths.app_dir.join("a");
        fs::remove_file(&a).unwrap();
        fs::create_dir(&a).unwrap();
        fs::write(a.join("inside"), "user data").unwrap();
        let u = rollback(&f.paths).unwrap();
        assert_old(&f.paths);
        assert_eq!(u.kept.len(), 1, "{:?}", u.kept);
        assert_eq!(u.kept[0].path, "a/inside");
        assert_eq!(fs::read_to_string(&u.kept[0].copy).unwrap(), "user data");
    }
}
