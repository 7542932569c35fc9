//! Moving a staged release into the app directory, journaled (docs/format.md §8.2).
//!
//! Before the first change, the whole list of actions is written to `journal.json` (fsynced).
//! Every action is a rename (so each file is at every moment either its old or its new
//! version), and every replaced or removed file is first renamed into the backup directory.
//! Each action can be undone by looking at the file system alone, so an interrupted commit is
//! rolled back by [`recover`], and a finished one can be undone by [`rollback`] while its backup
//! is kept.
//!
//! **Invariant:** no function here writes file contents inside the app dir; only renames,
//! `mkdir`, `rmdir` and `chmod` of staged files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use formats::manifest::{Node, ReleaseManifest};
use formats::patterns::PathPatterns;
use formats::{RelPath, Version};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::scan::{set_exec, Tree};
use crate::stage::Staged;
use crate::state::StateDir;

/// State of a journaled transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxnState {
    /// Actions are being carried out: the tree is in between.
    Committing,
    /// Every action is done: the tree is the new version; the backup holds the old files.
    Committed,
    /// The transaction was undone: the tree is the old version.
    RolledBack,
}

/// One reversible step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    /// Move an old file or symlink to the backup.
    Remove {
        /// The path.
        path: RelPath,
    },
    /// Remove an old directory that must become something else or disappear (only when empty).
    RemoveDir {
        /// The path.
        path: RelPath,
    },
    /// Create a directory.
    MakeDir {
        /// The path.
        path: RelPath,
    },
    /// Put a staged file or symlink in place, backing up what was there.
    Place {
        /// The path.
        path: RelPath,
        /// The staged file, relative to the state directory.
        staged: String,
        /// Whether something existed at `path` before.
        had_old: bool,
    },
}

/// The journal of one update.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    /// The app.
    pub app: String,
    /// Version before (if known).
    pub from: Option<Version>,
    /// Version after.
    pub to: Version,
    /// Where the transaction stands.
    pub state: TxnState,
    /// The actions, in execution order.
    pub actions: Vec<Action>,
}

impl Journal {
    /// Loads the journal of `state`, if any.
    pub fn load(state: &StateDir) -> Result<Option<Journal>> {
        let p = state.journal();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::bad(p.display().to_string(), format!("corrupt journal: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    fn save(&self, state: &StateDir) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Precondition(e.to_string()))?;
        crate::atomic::write_file(&state.journal(), &bytes)
    }
}

fn backup_path(state: &StateDir, p: &RelPath) -> PathBuf {
    p.to_path(&state.backup().join("files"))
}

fn ensure_parent(p: &Path) -> Result<()> {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    Ok(())
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Computes the actions that turn `current` into `manifest`, using `staged` for new contents.
/// Symlinks and exec-bit changes are staged here too (in `stage_dir`).
pub fn plan_actions(
    app_dir: &Path,
    state: &StateDir,
    current: &Tree,
    manifest: &ReleaseManifest,
    staged: &Staged,
    stage_dir: &Path,
) -> Result<Vec<Action>> {
    let ignore = PathPatterns::new(&manifest.ignore)?;
    let want = manifest.by_path();
    let rel_staged = |p: &Path| -> String {
        p.strip_prefix(&state.root).unwrap_or(p).to_string_lossy().into_owned()
    };
    let mut removes = Vec::new();
    let mut remove_dirs_conflict = Vec::new();
    let mut remove_dirs_obsolete = Vec::new();
    for (p, n) in &current.entries {
        if ignore.matches(p) {
            continue;
        }
        let target = want.get(p).map(|e| &e.node);
        let same_kind = target.is_some_and(|t| std::mem::discriminant(t) == std::mem::discriminant(n));
        match n {
            Node::Dir if !same_kind => {
                if target.is_some() {
                    remove_dirs_conflict.push(p.clone());
                } else {
                    remove_dirs_obsolete.push(p.clone());
                }
            }
            Node::Dir => {}
            _ if !same_kind => removes.push(Action::Remove { path: p.clone() }),
            _ => {}
        }
    }
    let mut makedirs = Vec::new();
    let mut places = Vec::new();
    std::fs::create_dir_all(stage_dir).at(stage_dir)?;
    for (i, e) in manifest.entries.iter().enumerate() {
        let cur = current.entries.get(&e.path);
        let had_old = cur.is_some();
        let same_kind_old = cur.is_some_and(|c| std::mem::discriminant(c) == std::mem::discriminant(&e.node));
        match &e.node {
            Node::Dir => {
                if !same_kind_old {
                    makedirs.push(Action::MakeDir { path: e.path.clone() });
                }
            }
            Node::File { exec, .. } => {
                let src = if let Some(s) = staged.get(&e.path) {
                    s.clone()
                } else if let Some(Node::File { exec: cur_exec, .. }) = cur {
                    if cur_exec == exec {
                        continue;
                    }
                    // Exec bit only: stage a copy with the new mode.
                    let copy = stage_dir.join(format!("x{i}"));
                    let from = e.path.to_path(app_dir);
                    std::fs::copy(&from, &copy).at(&copy)?;
                    copy
                } else {
                    return Err(Error::bad(e.path.as_str(), "no staged content for a new file"));
                };
                set_exec(&src, *exec)?;
                places.push(Action::Place { path: e.path.clone(), staged: rel_staged(&src), had_old: had_old && same_kind_old });
            }
            Node::Symlink { target } => {
                if let Some(Node::Symlink { target: t }) = cur {
                    if t == target {
                        continue;
                    }
                }
                let link = stage_dir.join(format!("l{i}"));
                crate::archive::make_symlink(target, &link)?;
                places.push(Action::Place { path: e.path.clone(), staged: rel_staged(&link), had_old: had_old && same_kind_old });
            }
        }
    }
    // Deepest first for removals of directories.
    remove_dirs_conflict.sort_by(|a, b| b.cmp(a));
    remove_dirs_obsolete.sort_by(|a, b| b.cmp(a));
    let mut actions = removes;
    actions.extend(remove_dirs_conflict.into_iter().map(|path| Action::RemoveDir { path }));
    actions.extend(makedirs);
    actions.extend(places);
    actions.extend(remove_dirs_obsolete.into_iter().map(|path| Action::RemoveDir { path }));
    Ok(actions)
}

fn do_action(app_dir: &Path, state: &StateDir, a: &Action, touched: &mut BTreeSet<PathBuf>) -> Result<()> {
    match a {
        Action::Remove { path } => {
            let p = path.to_path(app_dir);
            if exists(&p) {
                let b = backup_path(state, path);
                ensure_parent(&b)?;
                std::fs::rename(&p, &b).at(&p)?;
                touched.insert(p.parent().unwrap_or(app_dir).to_path_buf());
            }
        }
        Action::RemoveDir { path } => {
            let p = path.to_path(app_dir);
            if exists(&p) {
                match std::fs::remove_dir(&p) {
                    Ok(()) => {}
                    Err(_) if std::fs::read_dir(&p).map(|mut d| d.next().is_some()).unwrap_or(false) => {
                        // Holds ignored user files: keep it.
                    }
                    Err(e) => return Err(Error::io(p, e)),
                }
            }
        }
        Action::MakeDir { path } => {
            let p = path.to_path(app_dir);
            if !p.is_dir() {
                std::fs::create_dir(&p).at(&p)?;
            }
        }
        Action::Place { path, staged, had_old } => {
            let p = path.to_path(app_dir);
            let s = state.root.join(staged);
            if !exists(&s) {
                // Already placed on an earlier attempt.
                if exists(&p) {
                    return Ok(());
                }
                return Err(Error::bad(staged.as_str(), "staged file disappeared"));
            }
            if *had_old && exists(&p) {
                let b = backup_path(state, path);
                if !exists(&b) {
                    ensure_parent(&b)?;
                    std::fs::rename(&p, &b).at(&p)?;
                }
            }
            std::fs::rename(&s, &p).at(&p)?;
            touched.insert(p.parent().unwrap_or(app_dir).to_path_buf());
        }
    }
    Ok(())
}

fn undo_action(app_dir: &Path, state: &StateDir, a: &Action) -> Result<()> {
    match a {
        Action::Remove { path } => {
            let b = backup_path(state, path);
            if exists(&b) {
                let p = path.to_path(app_dir);
                ensure_parent(&p)?;
                std::fs::rename(&b, &p).at(&p)?;
            }
        }
        Action::RemoveDir { path } => {
            let p = path.to_path(app_dir);
            std::fs::create_dir_all(&p).at(&p)?;
        }
        Action::MakeDir { path } => {
            let p = path.to_path(app_dir);
            if p.is_dir() && !p.is_symlink() {
                let _ = std::fs::remove_dir(&p);
            }
        }
        Action::Place { path, had_old, .. } => {
            let p = path.to_path(app_dir);
            let b = backup_path(state, path);
            if exists(&b) {
                if exists(&p) {
                    remove_any(&p)?;
                }
                ensure_parent(&p)?;
                std::fs::rename(&b, &p).at(&p)?;
            } else if !*had_old && exists(&p) {
                remove_any(&p)?;
            }
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(p).at(p)?;
    if m.is_dir() {
        std::fs::remove_dir(p).at(p)
    } else {
        std::fs::remove_file(p).at(p)
    }
}

/// Carries out `actions` under a journal. On error the actions done so far are undone and
/// the error returned: the app dir is back at the old version.
pub fn commit(app_dir: &Path, state: &StateDir, app: &str, from: Option<Version>, to: Version, actions: Vec<Action>) -> Result<()> {
    // The previous update's backup is superseded.
    let _ = std::fs::remove_dir_all(state.backup());
    std::fs::create_dir_all(state.backup()).at(&state.backup())?;
    // Staged files must be durable before they replace anything.
    actions
        .par_iter()
        .filter_map(|a| match a {
            Action::Place { staged, .. } => Some(state.root.join(staged)),
            _ => None,
        })
        .try_for_each(|p| -> Result<()> {
            if !p.is_symlink() {
                crate::atomic::sync_file(&p)?;
            }
            Ok(())
        })?;
    let mut journal = Journal {
        app: app.to_string(),
        from,
        to,
        state: TxnState::Committing,
        actions,
    };
    journal.save(state)?;
    let mut touched = BTreeSet::new();
    touched.insert(app_dir.to_path_buf());
    for (i, a) in journal.actions.iter().enumerate() {
        if let Err(e) = do_action(app_dir, state, a, &mut touched) {
            for undo in journal.actions[..=i].iter().rev() {
                undo_action(app_dir, state, undo)?;
            }
            journal.state = TxnState::RolledBack;
            journal.save(state)?;
            return Err(e);
        }
    }
    for d in &touched {
        let _ = crate::atomic::sync_dir(d);
    }
    journal.state = TxnState::Committed;
    journal.save(state)?;
    Ok(())
}

/// What [`recover`] found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// No interrupted update.
    Clean,
    /// An interrupted update was rolled back to `from`.
    RolledBack {
        /// The version restored.
        from: Option<String>,
        /// The version the interrupted update aimed at.
        to: String,
    },
}

/// Finishes what an interrupted run left: a transaction still `committing` is rolled back.
pub fn recover(app_dir: &Path, state: &StateDir) -> Result<Recovery> {
    let Some(mut j) = Journal::load(state)? else {
        return Ok(Recovery::Clean);
    };
    if j.state != TxnState::Committing {
        return Ok(Recovery::Clean);
    }
    for a in j.actions.iter().rev() {
        undo_action(app_dir, state, a)?;
    }
    j.state = TxnState::RolledBack;
    j.save(state)?;
    let _ = std::fs::remove_dir_all(state.backup());
    Ok(Recovery::RolledBack {
        from: j.from.map(|v| v.to_string()),
        to: j.to.to_string(),
    })
}

/// Undoes the last committed update while its backup is kept. Returns the restored version.
pub fn rollback(app_dir: &Path, state: &StateDir) -> Result<Option<Version>> {
    let Some(mut j) = Journal::load(state)? else {
        return Err(Error::Precondition(format!("{}: no update to roll back", app_dir.display())));
    };
    if j.state != TxnState::Committed {
        return Err(Error::Precondition(format!(
            "{}: the last update ({:?} -> {}) is not committed; run recover",
            app_dir.display(),
            j.from.as_ref().map(|v| v.to_string()),
            j.to
        )));
    }
    j.state = TxnState::Committing;
    j.save(state)?;
    for a in j.actions.iter().rev() {
        undo_action(app_dir, state, a)?;
    }
    j.state = TxnState::RolledBack;
    j.save(state)?;
    let _ = std::fs::remove_dir_all(state.backup());
    Ok(j.from)
}
