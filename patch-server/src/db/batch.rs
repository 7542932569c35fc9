//! Idle check-ins written together (PostgreSQL): group commit for the device row.
//!
//! An idle check-in (no update result, no state document, no history row due) writes only its
//! device row. On PostgreSQL each such write was a statement of its own, and with a fleet
//! polling every minute most of the database's work was the round trip and the executor start
//! of those small statements, not the write. Here the handlers hand their row to one task per
//! instance, which writes every row waiting at that moment in one `UPDATE ... FROM (VALUES
//! ...)` and answers each handler with its row's `RETURNING` values once that statement has
//! committed. A handler therefore still answers 200 only after its write committed (as
//! before, without waiting for the WAL flush).
//!
//! Nothing waits to fill a batch: a batch is whatever queued while the previous ones ran, so an
//! instance under little load writes each row alone, as before, and one under heavy load
//! writes up to [`MAX_BATCH`] rows per statement with [`IN_FLIGHT`] statements at a time.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::CheckinRow;

/// Most rows written by one statement (11 parameters each).
pub const MAX_BATCH: usize = 64;

/// Most batch statements running at once (each holds one pooled connection).
pub const IN_FLIGHT: usize = 3;

/// Check-ins that may wait for the writer before a handler waits to hand its row over.
const QUEUE: usize = 4096;

/// What the statement returns for one device row, as the single-row path's `RETURNING`.
#[derive(Debug, Clone)]
pub struct Written {
    /// The device's status.
    pub status: String,
    /// Its highest stored result seq.
    pub last_result_seq: Option<i64>,
    /// Digest of its stored state document.
    pub state_digest: Option<String>,
}

/// One device row to write.
struct Job {
    id: String,
    now: i64,
    row: CheckinRow,
    reply: oneshot::Sender<sqlx::Result<Option<Written>>>,
}

/// The handle handlers give their rows to; cheap to clone.
#[derive(Clone, Debug)]
pub struct IdleWriter {
    tx: mpsc::Sender<Job>,
}

impl IdleWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(pool: AnyPool) -> IdleWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        IdleWriter { tx }
    }

    /// Writes the device row of an idle check-in of `id` at `now` and returns what the
    /// statement returned for it, once committed; `RowNotFound` when the device is gone.
    /// `None`: another check-in of the same device is being written, and the caller writes
    /// this one itself, alone.
    pub async fn write(
        &self,
        id: &str,
        now: i64,
        row: &CheckinRow,
    ) -> sqlx::Result<Option<Written>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id: id.to_string(),
            now,
            row: row.clone(),
            reply,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

/// The writer: takes what is queued, at most one row per device in all the statements
/// running, and writes it.
///
/// A device is never in two statements at once: two statements that each locked one of two
/// devices' rows and then waited for the other's would deadlock. A second check-in of a
/// device whose row is being written is handed back to its handler, whose single-row
/// statement waits for at most that one row and holds no other.
async fn run(pool: AnyPool, mut rx: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        // A free slot first: while every slot is busy, rows queue and the next batch grows.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = Vec::new();
        {
            let mut ids = busy.lock().unwrap_or_else(|e| e.into_inner());
            let mut next = Some(first);
            while let Some(job) = next.take() {
                if ids.insert(job.id.clone()) {
                    batch.push(job);
                } else {
                    let _ = job.reply.send(Ok(None));
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let (pool, busy) = (pool.clone(), busy.clone());
        tokio::spawn(async move {
            write_batch(&pool, batch, &busy).await;
            drop(permit);
        });
    }
}

/// Writes `batch` (distinct devices) in one statement, frees its devices in `busy` and
/// answers every job.
async fn write_batch(pool: &AnyPool, batch: Vec<Job>, busy: &Mutex<HashSet<String>>) {
    const COLS: usize = 12;
    let values: Vec<String> = (0..batch.len())
        .map(|i| {
            let p = |k: usize| i * COLS + k;
            format!(
                "(${}, CAST(${} AS BIGINT), ${}, ${}, ${}, ${}, CAST(${} AS BIGINT), ${}, ${}, \
                 ${}, ${}, CAST(${} AS BIGINT))",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8),
                p(9),
                p(10),
                p(11),
                p(12)
            )
        })
        .collect();
    // The same SET as the single-row statement for a check-in without state document,
    // results or history row; `set_config(..., true)` is `SET LOCAL` for this statement's
    // transaction: every row here is idle, so none waits for the WAL flush.
    let sql = format!(
        "UPDATE devices AS d SET last_seen_ms = v.now_ms, checkins = d.checkins + 1, \
         version = v.version, tree_digest = v.tree_digest, channel = v.channel, \
         attrs = v.attrs, free_disk = v.free_disk, os = v.os, arch = v.arch, \
         hostname = COALESCE(v.hostname, d.hostname), agent_version = v.agent_version, \
         quiet_gen = v.quiet_gen \
         FROM (VALUES {}) AS v(id, now_ms, version, tree_digest, channel, attrs, free_disk, \
             os, arch, hostname, agent_version, quiet_gen), \
         (SELECT set_config('synchronous_commit', 'off', true) AS sc) AS nosync \
         WHERE d.id = v.id \
         RETURNING d.id, d.status, d.last_result_seq, d.state_digest",
        values.join(", ")
    );
    tracing::trace!(rows = batch.len(), "idle check-ins written together");
    let mut q = sqlx::query(&sql);
    for j in &batch {
        let r = &j.row;
        q = q
            .bind(j.id.clone())
            .bind(j.now)
            .bind(r.version.clone())
            .bind(r.tree_digest.clone())
            .bind(r.channel.clone())
            .bind(r.attrs.clone())
            .bind(r.free_disk)
            .bind(r.os.clone())
            .bind(r.arch.clone())
            .bind(r.hostname.clone())
            .bind(r.agent_version.clone())
            .bind(r.quiet_gen);
    }
    let result = q.fetch_all(pool).await;
    {
        let mut ids = busy.lock().unwrap_or_else(|e| e.into_inner());
        for j in &batch {
            ids.remove(&j.id);
        }
    }
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            let text = e.to_string();
            // sqlx errors cannot be cloned: each job gets one that the API answers alike
            // (503 or 500).
            let unavailable = crate::error::db_unavailable(&e);
            for j in batch {
                let err = if unavailable {
                    sqlx::Error::PoolTimedOut
                } else {
                    sqlx::Error::Protocol(format!("batched device-row write: {text}"))
                };
                let _ = j.reply.send(Err(err));
            }
            return;
        }
    };
    let mut written = BTreeMap::new();
    for r in rows {
        let parsed = (|| {
            Ok::<_, sqlx::Error>((
                r.try_get::<String, _>("id")?,
                Written {
                    status: r.try_get("status")?,
                    last_result_seq: r.try_get("last_result_seq")?,
                    state_digest: r.try_get("state_digest")?,
                },
            ))
        })();
        if let Ok((id, w)) = parsed {
            written.insert(id, w);
        }
    }
    for j in batch {
        let answer = written
            .remove(&j.id)
            .map(Some)
            .ok_or(sqlx::Error::RowNotFound);
        let _ = j.reply.send(answer);
    }
}
