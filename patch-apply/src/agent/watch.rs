//! The agent's watch directory (`--watch-dir DIR`; bundles: docs/format.md §10): at
//! every poll the agent looks for `*.bundle` files in DIR, applies the newest usable one
//! through [`Updater`] (the bundle as the repository: the same TUF checks as online), and
//! moves each bundle it is done with out of the way: to `DIR/applied/` once applied or when
//! the install is already at its release or newer, to `DIR/rejected/` with a
//! `NAME.reason` file when it cannot be used. A rejected bundle is never tried again (also
//! when it cannot be moved: the agent remembers it). A bundle that fails for a passing reason
//! (the app dir is busy, the disk is full) stays and is tried at the next poll, at most
//! [`MAX_TRANSIENT`] times. Every attempt goes to the results queue like any other update.
//!
//! Uses [`super::Agent`] and [`super::AgentEvent`] only; the agent does not use this file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use formats::fleet::{clip, UpdateResult, MAX_TEXT};
use formats::Version;

use super::{Agent, AgentEvent};
use crate::fetch::bundle::{read_index, BundleIndex, EXTENSION};
use crate::updater::error_kind;

/// A file modified less than this long ago may still be being copied: left for the next poll.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Attempts that failed for a passing reason before a bundle is rejected anyway.
pub const MAX_TRANSIENT: u32 = 5;
/// Most bundles looked at in one poll.
const MAX_BUNDLES: usize = 64;

/// Where a bundle went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Done {
    Applied,
    Rejected,
}

impl Done {
    fn dir(self) -> &'static str {
        match self {
            Done::Applied => "applied",
            Done::Rejected => "rejected",
        }
    }
}

/// The bundles in `dir` that have settled: (file, its index or why it has none), at most
/// [`MAX_BUNDLES`], by name.
fn candidates(dir: &Path) -> Vec<(PathBuf, Result<BundleIndex, String>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let now = SystemTime::now();
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| {
            // Regular files only: a link is never followed out of the directory.
            e.file_type().is_ok_and(|t| t.is_file())
                && Path::new(&e.file_name())
                    .extension()
                    .is_some_and(|x| x == EXTENSION)
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= SETTLE)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files.truncate(MAX_BUNDLES);
    files
        .into_iter()
        .map(|f| {
            let i = read_index(&f).map_err(|e| e.to_string());
            (f, i)
        })
        .collect()
}

/// A free name for `file` in `dir`.
fn free_name(dir: &Path, file: &Path) -> PathBuf {
    let name = file.file_name().map(PathBuf::from).unwrap_or_default();
    let first = dir.join(&name);
    if !first.exists() {
        return first;
    }
    (1..1000u32)
        .map(|n| dir.join(format!("{}.{n}", name.display())))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

impl Agent {
    /// Moves `file` to `DIR/applied/` or `DIR/rejected/` (with `NAME.reason` holding `why`).
    /// Remembers it in any case, so that it is not tried again if the move fails.
    fn put_away(&mut self, file: &Path, done: Done, why: &str) {
        self.watch_done.insert(file.to_path_buf());
        let Some(dir) = self.cfg.watch_dir.clone() else {
            return;
        };
        let to_dir = dir.join(done.dir());
        let moved = std::fs::create_dir_all(&to_dir)
            .map_err(|e| crate::Error::io(&to_dir, e))
            .and_then(|()| {
                let to = free_name(&to_dir, file);
                crate::atomic::rename(file, &to)?;
                if done == Done::Rejected {
                    let mut reason = to.clone().into_os_string();
                    reason.push(".reason");
                    crate::atomic::write_file(Path::new(&reason), format!("{why}\n").as_bytes())?;
                }
                Ok(())
            });
        if let Err(e) = moved {
            self.emit(AgentEvent::Warning {
                message: format!(
                    "could not move {} to {}: {e}; it is left alone from now on",
                    file.display(),
                    to_dir.display()
                ),
            });
        }
    }

    /// Queues the report of a bundle that failed before the updater knew its target (a
    /// damaged bundle, metadata that does not verify), so that the server hears of it too.
    fn report_bundle_failure(&mut self, index: &BundleIndex, kind: &str, why: &str) {
        let r = UpdateResult {
            seq: 0,
            finished_at: formats::time_util::format_tuf(formats::time_util::now()),
            from: self.installed().0.map(|v| v.to_string()),
            to: index.to.clone(),
            method: "none".into(),
            bytes: 0,
            seconds: 0.0,
            ok: false,
            error_kind: Some(kind.into()),
            error_message: Some(clip(why, MAX_TEXT)),
            started_by: Some("agent".into()),
        };
        if let Err(e) = self.state.results().append(r) {
            self.emit(AgentEvent::Warning {
                message: format!("could not queue the bundle report: {e}"),
            });
        }
    }

    /// One look at the watch directory: applies the newest usable bundle, puts away what is
    /// done. Returns the release installed, if any.
    pub(super) fn watch_cycle(&mut self) -> Option<String> {
        let dir = self.cfg.watch_dir.clone()?;
        let mut found: Vec<(PathBuf, BundleIndex, Version)> = Vec::new();
        for (file, index) in candidates(&dir) {
            if self.watch_done.contains(&file) {
                continue;
            }
            let checked = index.and_then(|i| {
                let v = i.to_version().map_err(|e| e.to_string())?;
                Ok((i, v))
            });
            match checked {
                Ok((i, v)) => found.push((file, i, v)),
                Err(why) => {
                    // Without a readable index there is no release to report an attempt for.
                    let why = format!("not a usable bundle: {why}");
                    self.emit(AgentEvent::Refused {
                        version: file.display().to_string(),
                        reason: why.clone(),
                    });
                    self.put_away(&file, Done::Rejected, &why);
                }
            }
        }
        // Newest release first; the others are tried only if it cannot be used.
        found.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        let mut installed_now = None;
        for (file, index, to) in found {
            let installed = self.installed().0;
            if let Some(i) = installed.as_ref().filter(|i| **i >= to) {
                // Nothing in it is needed any more (not checked: nothing of it is used).
                self.emit(AgentEvent::Warning {
                    message: format!(
                        "{}: leads to {to}, {i} is installed; moved to applied/",
                        file.display()
                    ),
                });
                self.put_away(&file, Done::Applied, "");
                continue;
            }
            let mut cfg = self.cfg.updater.clone();
            cfg.repos = vec![file.display().to_string()];
            cfg.target = None;
            cfg.started_by = "agent".into();
            if cfg.allow_running_pid.is_none() {
                cfg.allow_running_pid = Some(std::process::id());
            }
            let cold = match self.prepare_app(&mut cfg) {
                Ok(cold) => cold,
                Err(why) => {
                    self.emit(AgentEvent::Warning {
                        message: format!("{why} (bundle {})", file.display()),
                    });
                    continue;
                }
            };
            self.emit(AgentEvent::Installing {
                version: index.to.clone(),
            });
            let queued = self.state.results().load().next_seq;
            let applied = self.run_update(cfg, cold);
            match applied {
                Ok(r) => {
                    self.recognised = None;
                    self.watch_transient.remove(&file);
                    self.emit(AgentEvent::Installed {
                        version: r.to.clone(),
                        method: r.method.clone(),
                        bytes: r.downloaded_bytes,
                        restart_required: r.restart_required,
                    });
                    self.put_away(&file, Done::Applied, "");
                    installed_now = Some(r.to);
                    // Older bundles are put away at the next poll.
                    break;
                }
                Err(e) => {
                    let kind = error_kind(&e);
                    let why = e.to_string();
                    let tries = self.watch_transient.get(&file).copied().unwrap_or(0) + 1;
                    let passing = matches!(kind, "precondition" | "disk");
                    if passing && tries < MAX_TRANSIENT {
                        self.watch_transient.insert(file.clone(), tries);
                        self.emit(AgentEvent::Waiting {
                            version: index.to.clone(),
                            reason: format!(
                                "{}: {why}; trying again at the next poll",
                                file.display()
                            ),
                        });
                        continue;
                    }
                    self.watch_transient.remove(&file);
                    if self.state.results().load().next_seq == queued {
                        self.report_bundle_failure(&index, kind, &why);
                    }
                    self.emit(AgentEvent::UpdateFailed {
                        version: index.to.clone(),
                        kind: kind.into(),
                        error: why.clone(),
                    });
                    self.put_away(&file, Done::Rejected, &format!("{kind}: {why}"));
                }
            }
        }
        installed_now
    }
}
