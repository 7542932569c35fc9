//! Moving a staged release into the app directory, journaled (docs/format.md §8.2).
//!
//! This module plans the actions ([`plan_actions`]); carrying them out is the job of
//! [`self_patcher::txn`], the one executor shared with the `self-patcher` binary. Before the
//! first change, the whole list of actions is written to `journal.json` (fsynced). Every action
//! is a rename (so each file is at every moment either its old or its new version), and every
//! replaced or removed file is kept in the backup directory. Each action can be undone by
//! looking at the file system alone, so an interrupted commit is rolled back by [`recover`],
//! and a finished one can be undone by [`rollback`] while its backup is kept.
//!
//! **Invariant:** no function here writes file contents inside the app dir; only renames,
//! `mkdir`, `rmdir` and `chmod` of staged files.
//!
//! Folder `commit/`: this file, the checks before anything is touched ([`preflight`]) and the
//! hand-over of a code update to `self-patcher` ([`selfpatch`]). May use every stage below it:
//! `error`, `report`, `state`, `inspect`, `stage`. The only code that changes the app dir.

pub mod preflight;
pub mod selfpatch;

use std::path::{Path, PathBuf};

use formats::manifest::{Node, ReleaseManifest};
use formats::txn::QUARANTINE_DIR;
pub use formats::txn::{Action, Journal, TxnState};
use formats::{RelPath, Version};
use self_patcher::txn::{self, Mode, StatePaths};
use serde::Serialize;

use crate::error::{txn_error, Error, IoContext, Result};
use crate::ownership::{Owner, Survey};
pub use crate::report::{KeptFile, Recovery};
use crate::scan::{set_exec, Tree};
use crate::stage::Staged;
use crate::state::StateDir;

/// The actions that turn `current` into `manifest` without destroying what the updater does
/// not own, and the survey they follow.
pub struct Planned {
    /// The actions, in execution order.
    pub actions: Vec<Action>,
    /// What happens to each path (quarantine, removals, what is kept).
    pub survey: Survey,
    /// Each quarantined path and where it goes (relative to the state directory).
    pub quarantined: Vec<(RelPath, String)>,
}

/// A name for the quarantine of one transaction: the time, unique enough per app dir (one
/// update at a time holds the lock), and `tag`.
pub fn quarantine_id(tag: &str) -> String {
    let now = formats::time_util::now();
    format!("{}-{:09}-{tag}", now.unix_timestamp(), now.nanosecond())
}

/// Computes the actions that turn `current` into `manifest`, using `staged` for new contents.
/// Symlinks and exec-bit changes are staged here too (in `stage_dir`). Only what `owner`
/// owns is removed or replaced; unknown entries in the way go to
/// `quarantine/<quarantine_id>/<path>` in the state directory ([`crate::ownership`]).
#[allow(clippy::too_many_arguments)]
pub fn plan_actions(
    app_dir: &Path,
    state: &StateDir,
    current: &Tree,
    manifest: &ReleaseManifest,
    staged: &Staged,
    stage_dir: &Path,
    owner: &Owner,
    quarantine_id: &str,
) -> Result<Planned> {
    let survey = crate::ownership::survey(app_dir, current, manifest, owner);
    let rel_staged = |p: &Path| -> String {
        p.strip_prefix(&state.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let mut actions = Vec::new();
    let mut quarantined = Vec::new();
    let quarantined_set: std::collections::BTreeSet<&RelPath> = survey.quarantine.iter().collect();
    for p in &survey.quarantine {
        let to = format!("{QUARANTINE_DIR}/{quarantine_id}/{p}");
        quarantined.push((p.clone(), to.clone()));
        actions.push(Action::Quarantine {
            path: p.clone(),
            to,
        });
    }
    actions.extend(
        survey
            .remove
            .iter()
            .map(|p| Action::Remove { path: p.clone() }),
    );
    actions.extend(
        survey
            .remove_dirs_conflict
            .iter()
            .map(|p| Action::RemoveDir { path: p.clone() }),
    );
    let mut makedirs = Vec::new();
    let mut places = Vec::new();
    std::fs::create_dir_all(stage_dir).at(stage_dir)?;
    let want_write: std::collections::BTreeSet<&RelPath> = survey.write.iter().collect();
    for (i, e) in manifest.entries.iter().enumerate() {
        if !want_write.contains(&e.path) {
            continue;
        }
        // What stays at the path until the new version replaces it.
        let gone = quarantined_set.contains(&e.path) || survey.remove.contains(&e.path);
        let cur = if gone {
            None
        } else {
            current.entries.get(&e.path)
        };
        let had_old =
            cur.is_some_and(|c| std::mem::discriminant(c) == std::mem::discriminant(&e.node));
        match &e.node {
            Node::Dir => {
                if !matches!(cur, Some(Node::Dir)) {
                    makedirs.push(Action::MakeDir {
                        path: e.path.clone(),
                    });
                }
            }
            Node::File { exec, blake3, .. } => {
                let src = if let Some(s) = staged.get(&e.path) {
                    s.clone()
                } else if let Some(Node::File {
                    exec: cur_exec,
                    blake3: have,
                    ..
                }) = current.entries.get(&e.path)
                {
                    if cur_exec == exec && !gone {
                        continue;
                    }
                    if have != blake3 {
                        return Err(Error::bad(
                            e.path.as_str(),
                            "no staged content for a changed file",
                        ));
                    }
                    // Exec bit only (or the same content as a file moved out of the way):
                    // stage a copy with the new mode.
                    let copy = stage_dir.join(format!("x{i}"));
                    let from = e.path.to_path(app_dir);
                    std::fs::copy(&from, &copy).at(&copy)?;
                    copy
                } else {
                    return Err(Error::bad(
                        e.path.as_str(),
                        "no staged content for a new file",
                    ));
                };
                set_exec(&src, *exec)?;
                places.push(Action::Place {
                    path: e.path.clone(),
                    staged: rel_staged(&src),
                    had_old,
                });
            }
            Node::Symlink { target } => {
                let link = stage_dir.join(format!("l{i}"));
                crate::archive::make_symlink(target, &link)?;
                places.push(Action::Place {
                    path: e.path.clone(),
                    staged: rel_staged(&link),
                    had_old,
                });
            }
        }
    }
    actions.extend(makedirs);
    actions.extend(places);
    actions.extend(
        survey
            .remove_dirs_obsolete
            .iter()
            .map(|p| Action::RemoveDir { path: p.clone() }),
    );
    Ok(Planned {
        actions,
        survey,
        quarantined,
    })
}

fn paths(app_dir: &Path, state: &StateDir) -> StatePaths {
    StatePaths {
        app_dir: app_dir.to_path_buf(),
        state_dir: state.root.clone(),
    }
}

/// Carries out `actions` under a journal (a new transaction: the previous update's backup is
/// dropped). On error every action done so far is undone and the error returned, naming the
/// file: the app dir is back at the old version.
pub fn commit(
    app_dir: &Path,
    state: &StateDir,
    app: &str,
    from: Option<Version>,
    to: Version,
    actions: Vec<Action>,
) -> Result<()> {
    let p = paths(app_dir, state);
    let mut journal = Journal {
        app: app.to_string(),
        from,
        to,
        state: TxnState::Committing,
        actions,
    };
    txn::begin(&p, &mut journal).map_err(txn_error)?;
    txn::run(&p, &mut journal, 0, Mode::RollBackOnCrash).map_err(txn_error)
}

/// Adds `actions` to the update just committed (a repair after verification) in the same
/// transaction, so that its backup still holds the version before the update: a failure or an
/// interruption rolls back to that version, and [`rollback`] returns to it afterwards.
pub fn commit_more(app_dir: &Path, state: &StateDir, actions: Vec<Action>) -> Result<()> {
    let p = paths(app_dir, state);
    let mut journal = txn::load_journal(&p).map_err(txn_error)?.ok_or_else(|| {
        Error::Precondition(format!(
            "{}: no committed update to extend",
            app_dir.display()
        ))
    })?;
    let start = txn::extend(&p, &mut journal, actions).map_err(txn_error)?;
    txn::run(&p, &mut journal, start, Mode::RollBackOnCrash).map_err(txn_error)
}

fn kept_files(k: Vec<txn::Kept>) -> Vec<KeptFile> {
    k.into_iter()
        .map(|k| KeptFile {
            path: k.path,
            copy: k.copy,
        })
        .collect()
}

/// Finishes what an interrupted run left: a transaction still `committing` is rolled back, an
/// interrupted rollback is finished.
pub fn recover(app_dir: &Path, state: &StateDir) -> Result<Recovery> {
    match txn::recover(&paths(app_dir, state)).map_err(txn_error)? {
        None => Ok(Recovery::Clean),
        Some(u) if u.resumed_rollback => Ok(Recovery::FinishedRollback {
            restored: u.journal.from.map(|v| v.to_string()),
            undone: u.journal.to.to_string(),
            kept: kept_files(u.kept),
        }),
        Some(u) => Ok(Recovery::RolledBack {
            from: u.journal.from.map(|v| v.to_string()),
            to: u.journal.to.to_string(),
            kept: kept_files(u.kept),
        }),
    }
}

/// What [`rollback_report`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RollbackReport {
    /// The version the app dir and the install record are back at (`None`: nothing was
    /// installed before the update).
    pub restored: Option<String>,
    /// The version undone.
    pub undone: String,
    /// Whether this finished a rollback an earlier, interrupted run had started.
    pub resumed: bool,
    /// Whether what was undone was an update interrupted half-way (not a finished one).
    pub interrupted_update: bool,
    /// Files changed or added since the update that were in the way of the old version: each
    /// kept in the quarantine before the old version was put back.
    pub kept: Vec<KeptFile>,
    /// The quarantine directory holding them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<PathBuf>,
    /// What was left as it is, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Warnings (a dropped hand-over).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Undoes the last committed update while its backup is kept, and restores the install record
/// it replaced. Returns the restored version.
pub fn rollback(app_dir: &Path, state: &StateDir) -> Result<Option<Version>> {
    Ok(txn::rollback(&paths(app_dir, state))
        .map_err(txn_error)?
        .journal
        .from)
}

/// Returns the app dir to the version before the last update, whatever an earlier run left:
/// an interrupted rollback is finished, an interrupted update rolled back, otherwise the last
/// committed update is undone. Idempotent: run again after an interruption or a failure, it
/// ends at the old version with the old install record; with nothing left to undo it says so
/// (an error). Files changed since the update are kept in the quarantine and listed.
pub fn rollback_report(app_dir: &Path, state: &StateDir) -> Result<RollbackReport> {
    let p = paths(app_dir, state);
    let (u, interrupted_update) = match txn::recover(&p).map_err(txn_error)? {
        Some(u) => {
            let interrupted = !u.resumed_rollback;
            (u, interrupted)
        }
        None => (txn::rollback(&p).map_err(txn_error)?, false),
    };
    Ok(RollbackReport {
        restored: u.journal.from.map(|v| v.to_string()),
        undone: u.journal.to.to_string(),
        resumed: u.resumed_rollback,
        interrupted_update,
        kept: kept_files(u.kept),
        quarantine: u.quarantine,
        notes: u.notes,
        warnings: Vec::new(),
    })
}
