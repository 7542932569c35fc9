//! Carrying out a journal in an app directory (docs/format.md §8.2).
//!
//! A transaction is a list of [`Action`]s written to `journal.json` (fsynced) before the first
//! change. Every action is a single rename (or `mkdir`/`rmdir`), so each file is at every moment
//! its old or its new version:
//!
//! - `place`: the old file (if any) is first hard-linked to `backup/I` (`I` = the action's
//!   index; all links are made and fsynced before the first change), then the fsynced staged
//!   file is renamed over it. Where hard links are not possible, the old file is renamed to
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

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use formats::txn::{self as names, Action, Journal, TxnState};

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
    match run_inner(paths, journal, start, mode, resuming) {
        Ok(()) => {
            journal.state = TxnState::Committed;
            save_journal(paths, journal)?;
            if mode == Mode::Resumable {
                let _ = fs::remove_file(paths.progress());
            }
            Ok(())
        }
        Err(first) => match undo_all(paths, journal) {
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
            if exists(&p) && !exists(&b) && exists(&paths.staged(staged)) && !is_real_dir(&p) {
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

fn undo_action(
    paths: &StatePaths,
    i: usize,
    a: &Action,
    touched: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    let p = a.path().to_path(&paths.app_dir);
    let b = paths.backup_of(i);
    match a {
        Action::Remove { .. } => {
            if exists(&b) {
                ensure_parent(&p)?;
                fs::rename(&b, &p).at(&p)?;
                touched.insert(parent_of(&p));
            }
        }
        Action::RemoveDir { .. } => {
            if !exists(&p) {
                fs::create_dir_all(&p).at(&p)?;
                touched.insert(parent_of(&p));
            }
        }
        Action::MakeDir { .. } => {
            if is_real_dir(&p) && fs::remove_dir(&p).is_ok() {
                touched.insert(parent_of(&p));
            }
        }
        Action::Place {
            staged, had_old, ..
        } => {
            if exists(&b) {
                ensure_parent(&p)?;
                if is_real_dir(&b) != is_real_dir(&p) && exists(&p) {
                    remove_any(&p)?;
                }
                // Atomic: the path goes from new to old. If both name the same file (the link
                // was made but the step never ran), rename does nothing.
                fs::rename(&b, &p).at(&p)?;
                if exists(&b) {
                    remove_any(&b)?;
                }
                touched.insert(parent_of(&p));
            } else if !*had_old && exists(&p) && !exists(&paths.staged(staged)) {
                // Placed where nothing was.
                remove_any(&p)?;
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

/// Undoes every action of `journal` in reverse order and marks it `rolled back`.
fn undo_all(paths: &StatePaths, journal: &mut Journal) -> Result<()> {
    let mut touched = BTreeSet::new();
    for (i, a) in journal.actions.iter().enumerate().rev() {
        undo_action(paths, i, a, &mut touched)?;
    }
    sync_existing(&touched)?;
    journal.state = TxnState::RolledBack;
    save_journal(paths, journal)?;
    let _ = fs::remove_file(paths.progress());
    Ok(())
}

/// Finishes what an interrupted run left: a transaction still `committing` is undone and
/// returned (the app dir is at the version before it); otherwise nothing happens.
pub fn recover(paths: &StatePaths) -> Result<Option<Journal>> {
    let Some(mut j) = load_journal(paths)? else {
        return Ok(None);
    };
    if j.state != TxnState::Committing {
        return Ok(None);
    }
    undo_all(paths, &mut j)?;
    let _ = fs::remove_dir_all(paths.backup());
    Ok(Some(j))
}

/// Undoes the last committed transaction while its backup is kept, and restores the install
/// record saved when it began. Returns the journal (its `from` is the version restored).
pub fn rollback(paths: &StatePaths) -> Result<Journal> {
    let Some(mut j) = load_journal(paths)? else {
        return Err(Error::Precondition(format!(
            "{}: no update to roll back",
            paths.app_dir.display()
        )));
    };
    match j.state {
        TxnState::Committed => {}
        TxnState::RolledBack => {
            return Err(Error::Precondition(format!(
                "{}: the last update ({} -> {}) was already rolled back; only the last update can be undone",
                paths.app_dir.display(),
                j.from.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "nothing".into()),
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
    // An interruption from here on is finished by `recover`.
    j.state = TxnState::Committing;
    save_journal(paths, &j)?;
    undo_all(paths, &mut j)?;
    match fs::read(paths.backup_record()) {
        Ok(rec) => fsio::write_file(&paths.record(), &rec)?,
        Err(_) => match fs::remove_file(paths.record()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(paths.record(), e)),
        },
    }
    let _ = fs::remove_dir_all(paths.backup());
    Ok(j)
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
}
