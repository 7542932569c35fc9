//! The queue of update attempts not yet reported to a fleet server: `.patchkit/results.json`.
//!
//! Every attempt [`crate::Updater::apply`] makes (from the CLI, the library or the agent) is
//! appended here with an increasing sequence number; the agent sends the queued ones, oldest
//! first, at its next check-in and drops those the server acknowledged. The queue is bounded
//! ([`MAX_QUEUED`]: the oldest are dropped first), written atomically, read without following
//! symbolic links, and guarded by its own lock file so that an `apply` and an agent never lose
//! each other's changes. A corrupt queue file is replaced by an empty one (it only holds
//! reports, never anything an update depends on).

use std::path::{Path, PathBuf};
use std::time::Duration;

use formats::fleet::UpdateResult;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Most attempts kept while the server is unreachable; older ones are dropped first.
pub const MAX_QUEUED: usize = 256;

/// The attempt handed over to `self-patcher`, until its outcome is known.
pub const HAND_OVER_FILE: &str = "handover-attempt.json";

/// Largest queue file read, in bytes (bigger is treated as corrupt).
const MAX_FILE: u64 = 4 << 20;

/// How long an append or an ack waits for the queue lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The queue file's content.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    /// The sequence number the next attempt gets (starts at 1).
    pub next_seq: u64,
    /// Attempts not yet acknowledged, oldest first.
    pub entries: Vec<UpdateResult>,
}

/// The results queue of one app dir.
#[derive(Clone, Debug)]
pub struct ResultsQueue {
    file: PathBuf,
    lock: PathBuf,
}

impl ResultsQueue {
    /// The queue in the state directory `state_root` (`APP/.patchkit`).
    pub fn in_state_dir(state_root: &Path) -> Self {
        ResultsQueue {
            file: state_root.join("results.json"),
            lock: state_root.join("results.lock"),
        }
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Reads the queue (empty when absent or unreadable).
    pub fn load(&self) -> Queue {
        let Ok(f) =
            crate::state::open_state_file(&self.file, std::fs::OpenOptions::new().read(true))
        else {
            return Queue::default();
        };
        let mut bytes = Vec::new();
        use std::io::Read;
        if f.take(MAX_FILE + 1).read_to_end(&mut bytes).is_err() || bytes.len() as u64 > MAX_FILE {
            return Queue::default();
        }
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    fn save(&self, q: &Queue) -> Result<()> {
        let bytes =
            serde_json::to_vec(q).map_err(|e| crate::error::Error::Precondition(e.to_string()))?;
        crate::state::atomic::write_file(&self.file, &bytes)
    }

    fn locked<T>(&self, f: impl FnOnce(&mut Queue) -> T) -> Result<(T, Queue)> {
        if let Some(dir) = self.file.parent() {
            crate::state::create_state_dir(dir)?;
        }
        let _lock = self_patcher::lock::lock_wait(&self.lock, LOCK_WAIT)
            .map_err(crate::error::txn_error)?;
        let mut q = self.load();
        if q.next_seq == 0 {
            q.next_seq = q.entries.last().map_or(1, |e| e.seq.saturating_add(1));
        }
        let out = f(&mut q);
        self.save(&q)?;
        Ok((out, q))
    }

    /// Appends an attempt, giving it the next sequence number (returned); drops the oldest
    /// entries beyond [`MAX_QUEUED`].
    pub fn append(&self, mut r: UpdateResult) -> Result<u64> {
        let (seq, _) = self.locked(|q| {
            let seq = q.next_seq;
            q.next_seq = seq.saturating_add(1);
            r.seq = seq;
            q.entries.push(r);
            let over = q.entries.len().saturating_sub(MAX_QUEUED);
            q.entries.drain(..over);
            seq
        })?;
        Ok(seq)
    }

    /// Drops the entries up to and including `seq` (the server stored them).
    pub fn ack(&self, seq: u64) -> Result<()> {
        if !self.file.exists() {
            return Ok(());
        }
        self.locked(|q| q.entries.retain(|e| e.seq > seq))?;
        Ok(())
    }

    /// The attempt handed over to `self-patcher` whose outcome is not known yet
    /// (`.patchkit/handover-attempt.json`).
    fn hand_over_file(&self) -> PathBuf {
        self.file.with_file_name(HAND_OVER_FILE)
    }

    /// Keeps `r` (an update handed over to `self-patcher`, `ok` as far as it went) until
    /// [`ResultsQueue::settle_hand_over`] learns how it ended. A later hand-over replaces an
    /// unsettled one (the next updater dropped or finished the earlier plan before it).
    pub fn hand_over(&self, r: UpdateResult) -> Result<()> {
        let bytes =
            serde_json::to_vec(&r).map_err(|e| crate::error::Error::Precondition(e.to_string()))?;
        self.locked(|_| ())?;
        crate::state::atomic::write_file(&self.hand_over_file(), &bytes)
    }

    /// Settles the attempt kept by [`ResultsQueue::hand_over`]: `outcome` says, from the
    /// state directory, whether it succeeded (`Some(Ok)`), failed (`Some(Err((kind,
    /// message)))`) or is still under way (`None`). A settled attempt is appended to the queue
    /// with its outcome and forgotten; returns its sequence number.
    pub fn settle_hand_over(
        &self,
        outcome: impl FnOnce(&UpdateResult) -> Option<std::result::Result<(), (String, String)>>,
    ) -> Result<Option<u64>> {
        let file = self.hand_over_file();
        let Ok(bytes) = crate::state::read_state_file(&file) else {
            return Ok(None);
        };
        let Ok(mut r) = serde_json::from_slice::<UpdateResult>(&bytes) else {
            // Unreadable: nothing to report from it.
            let _ = std::fs::remove_file(&file);
            return Ok(None);
        };
        let Some(o) = outcome(&r) else {
            return Ok(None);
        };
        r.finished_at = formats::time_util::now()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        match o {
            Ok(()) => r.ok = true,
            Err((kind, message)) => {
                r.ok = false;
                r.error_kind = Some(kind);
                r.error_message = Some(formats::fleet::clip(&message, formats::fleet::MAX_TEXT));
            }
        }
        let seq = self.append(r)?;
        std::fs::remove_file(&file).map_err(|e| crate::error::Error::io(&file, e))?;
        Ok(Some(seq))
    }

    /// The oldest `n` unacknowledged entries.
    pub fn pending(&self, n: usize) -> Vec<UpdateResult> {
        let mut q = self.load();
        q.entries.truncate(n);
        q.entries
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    fn attempt(to: &str) -> UpdateResult {
        UpdateResult {
            seq: 0,
            finished_at: "2026-11-25T10:00:00Z".into(),
            from: None,
            to: to.into(),
            method: "installer".into(),
            bytes: 1,
            seconds: 0.1,
            ok: true,
            error_kind: None,
            error_message: None,
            started_by: Some("cli".into()),
        }
    }

    #[test]
    fn appends_in_order_acks_and_stays_bounded() {
        let d = tempfile::tempdir().unwrap();
        let q = ResultsQueue::in_state_dir(&d.path().join(".patchkit"));
        assert_eq!(q.append(attempt("1.0.0")).unwrap(), 1);
        assert_eq!(q.append(attempt("2.0.0")).unwrap(), 2);
        q.ack(1).unwrap();
        let p = q.pending(10);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].seq, p[0].to.as_str()), (2, "2.0.0"));
        // Sequence numbers keep increasing after acks, and the queue is capped.
        q.ack(2).unwrap();
        for _ in 0..MAX_QUEUED + 5 {
            q.append(attempt("3.0.0")).unwrap();
        }
        let all = q.load();
        assert_eq!(all.entries.len(), MAX_QUEUED);
        assert_eq!(all.entries[0].seq, 8);
        assert_eq!(all.next_seq, 3 + MAX_QUEUED as u64 + 5);
    }

    #[test]
    fn a_corrupt_queue_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join(".patchkit");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("results.json"), b"{not json").unwrap();
        let q = ResultsQueue::in_state_dir(&root);
        assert_eq!(q.append(attempt("1.0.0")).unwrap(), 1);
        assert_eq!(q.pending(5).len(), 1);
    }
}
