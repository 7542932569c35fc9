//! Queries of pins, pushes, rollouts and rollout participation (migration 0004).
//!
//! Rollout counters (`offered`, `succeeded`, `failed`, `timed_out`) change only in the same
//! transaction as the participant row they count, with conditional updates (`WHERE result =
//! 'pending'`), so they stay exact with several instances on one database. Everything a
//! check-in runs here is an indexed lookup by app, device or rollout; nothing scans devices.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::Db;

/// A stored rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRow {
    /// Rollout id (also the seed of the device buckets).
    pub id: String,
    /// App.
    pub app: String,
    /// Release rolled out.
    pub version: String,
    /// Percentage of eligible devices selected, 0..=100.
    pub percent: i64,
    /// Halt when failed / finished exceeds this (0..=1) ...
    pub max_failure_rate: f64,
    /// ... once at least this many devices finished.
    pub min_devices: i64,
    /// A device offered the release that reports no success within this counts as failed.
    pub timeout_ms: i64,
    /// Percentages to raise to, in order (`5,25,50,100`).
    pub schedule: Option<String>,
    /// One schedule step every this many ms.
    pub schedule_every_ms: Option<i64>,
    /// When the next schedule step is due (unix ms).
    pub schedule_next_ms: Option<i64>,
    /// Rate cap: at most this many devices newly offered ...
    pub max_per_period: Option<i64>,
    /// ... per this many ms.
    pub period_ms: Option<i64>,
    /// `running`, `halted` or `finished`.
    pub state: String,
    /// Why it was halted (or finished).
    pub halt_reason: Option<String>,
    /// Devices offered the release.
    pub offered: i64,
    /// Devices that installed it.
    pub succeeded: i64,
    /// Devices that failed, timeouts included.
    pub failed: i64,
    /// Of `failed`, devices that were silent or unfinished past the timeout.
    pub timed_out: i64,
    /// Created (unix ms).
    pub created_ms: i64,
    /// Last change (unix ms).
    pub updated_ms: i64,
    /// Who started it (audit actor).
    pub created_by: String,
}

fn rollout_from(r: &AnyRow) -> sqlx::Result<RolloutRow> {
    Ok(RolloutRow {
        id: r.try_get("id")?,
        app: r.try_get("app")?,
        version: r.try_get("version")?,
        percent: r.try_get("percent")?,
        max_failure_rate: r.try_get("max_failure_rate")?,
        min_devices: r.try_get("min_devices")?,
        timeout_ms: r.try_get("timeout_ms")?,
        schedule: r.try_get("schedule")?,
        schedule_every_ms: r.try_get("schedule_every_ms")?,
        schedule_next_ms: r.try_get("schedule_next_ms")?,
        max_per_period: r.try_get("max_per_period")?,
        period_ms: r.try_get("period_ms")?,
        state: r.try_get("state")?,
        halt_reason: r.try_get("halt_reason")?,
        offered: r.try_get("offered")?,
        succeeded: r.try_get("succeeded")?,
        failed: r.try_get("failed")?,
        timed_out: r.try_get("timed_out")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        created_by: r.try_get("created_by")?,
    })
}

/// A stored pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRow {
    /// App.
    pub app: String,
    /// `device` or `tag`.
    pub target_kind: String,
    /// Device id or tag.
    pub target: String,
    /// Release held at.
    pub version: String,
    /// Created (unix ms).
    pub created_ms: i64,
    /// Who pinned.
    pub created_by: String,
}

fn pin_from(r: &AnyRow) -> sqlx::Result<PinRow> {
    Ok(PinRow {
        app: r.try_get("app")?,
        target_kind: r.try_get("target_kind")?,
        target: r.try_get("target")?,
        version: r.try_get("version")?,
        created_ms: r.try_get("created_ms")?,
        created_by: r.try_get("created_by")?,
    })
}

/// A stored push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRow {
    /// Push id.
    pub id: String,
    /// App.
    pub app: String,
    /// `device`, `tag` or `all`.
    pub target_kind: String,
    /// Device id, tag, or `""` for all.
    pub target: String,
    /// Release pushed.
    pub version: String,
    /// Created (unix ms).
    pub created_ms: i64,
    /// Who pushed.
    pub created_by: String,
    /// When it stops applying (unix ms); `None` until removed.
    #[serde(default)]
    pub expires_ms: Option<i64>,
}

fn push_from(r: &AnyRow) -> sqlx::Result<PushRow> {
    Ok(PushRow {
        id: r.try_get("id")?,
        app: r.try_get("app")?,
        target_kind: r.try_get("target_kind")?,
        target: r.try_get("target")?,
        version: r.try_get("version")?,
        created_ms: r.try_get("created_ms")?,
        created_by: r.try_get("created_by")?,
        expires_ms: r.try_get("expires_ms")?,
    })
}

/// One device's part in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participation {
    /// Rollout id.
    pub rollout: String,
    /// Device id.
    pub device: String,
    /// When it was first offered the release (unix ms).
    pub offered_ms: i64,
    /// `pending`, `ok`, `failed` or `timeout`.
    pub result: String,
    /// When the result was settled (unix ms).
    pub result_ms: Option<i64>,
}

/// What [`Db::offer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The device is a participant from now on.
    Made,
    /// It already was one (or the rollout is gone): nothing changed.
    Already,
    /// The rate cap is reached: not offered.
    Capped,
}

/// The participations of `device` listed as `ROLLOUT RESULT OFFERED_MS RESULT_MS|-`, comma
/// separated (the `string_agg` of `device_by_token`; ids and results hold neither spaces nor
/// commas).
pub(super) fn parts_from_list(device: &str, list: &str) -> sqlx::Result<Vec<Participation>> {
    let bad = || sqlx::Error::Decode(format!("participation list {list:?}").into());
    list.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            let f: Vec<&str> = x.split(' ').collect();
            let [rollout, result, offered, settled] = f[..] else {
                return Err(bad());
            };
            Ok(Participation {
                rollout: rollout.to_string(),
                device: device.to_string(),
                offered_ms: offered.parse().map_err(|_| bad())?,
                result: result.to_string(),
                result_ms: match settled {
                    "-" => None,
                    t => Some(t.parse().map_err(|_| bad())?),
                },
            })
        })
        .collect()
}

fn part_from(r: &AnyRow) -> sqlx::Result<Participation> {
    Ok(Participation {
        rollout: r.try_get("rollout")?,
        device: r.try_get("device")?,
        offered_ms: r.try_get("offered_ms")?,
        result: r.try_get("result")?,
        result_ms: r.try_get("result_ms")?,
    })
}

impl Db {
    /// Stores a new rollout.
    pub async fn insert_rollout(&self, r: &RolloutRow) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO rollouts (id, app, version, percent, max_failure_rate, min_devices, \
             timeout_ms, schedule, schedule_every_ms, schedule_next_ms, max_per_period, period_ms, \
             state, halt_reason, offered, succeeded, failed, timed_out, created_ms, updated_ms, \
             created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             0, 0, 0, 0, $15, $15, $16)",
        )
        .bind(&r.id)
        .bind(&r.app)
        .bind(&r.version)
        .bind(r.percent)
        .bind(r.max_failure_rate)
        .bind(r.min_devices)
        .bind(r.timeout_ms)
        .bind(r.schedule.clone())
        .bind(r.schedule_every_ms)
        .bind(r.schedule_next_ms)
        .bind(r.max_per_period)
        .bind(r.period_ms)
        .bind(&r.state)
        .bind(r.halt_reason.clone())
        .bind(r.created_ms)
        .bind(&r.created_by)
        .execute(&mut *tx)
        .await?;
        super::rules::bump_app(&mut tx, &r.app).await?;
        tx.commit().await
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> sqlx::Result<Option<RolloutRow>> {
        let row = sqlx::query("SELECT * FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rollout_from).transpose()
    }

    /// Rollouts of one app (or all), newest first; `active` keeps running and halted ones.
    pub async fn rollouts(&self, app: Option<&str>, active: bool) -> sqlx::Result<Vec<RolloutRow>> {
        let state = if active {
            " AND state IN ('running', 'halted')"
        } else {
            ""
        };
        let rows = match app {
            Some(a) => {
                sqlx::query(&format!(
                    "SELECT * FROM rollouts WHERE app = $1{state} ORDER BY created_ms DESC, id"
                ))
                .bind(a)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT * FROM rollouts WHERE 1 = 1{state} ORDER BY created_ms DESC, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(rollout_from).collect()
    }

    /// Sets a rollout's percentage (and next schedule step); `false` if it is finished or
    /// unknown.
    pub async fn set_rollout_percent(
        &self,
        id: &str,
        percent: i64,
        schedule_next_ms: Option<i64>,
        now: i64,
    ) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE rollouts SET percent = $1, schedule_next_ms = $2, updated_ms = $3 \
             WHERE id = $4 AND state <> 'finished'",
        )
        .bind(percent)
        .bind(schedule_next_ms)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.commit_rollout_change(tx, id, r.rows_affected()).await
    }

    /// Takes one schedule step: sets `percent` and the next step's time, only if the rollout
    /// is running and its next step is still `due_ms` (so of several instances one does it).
    pub async fn advance_schedule(
        &self,
        id: &str,
        due_ms: i64,
        percent: i64,
        next_ms: Option<i64>,
        now: i64,
    ) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE rollouts SET percent = $1, schedule_next_ms = $2, updated_ms = $3 \
             WHERE id = $4 AND state = 'running' AND schedule_next_ms = $5",
        )
        .bind(percent)
        .bind(next_ms)
        .bind(now)
        .bind(id)
        .bind(due_ms)
        .execute(&mut *tx)
        .await?;
        self.commit_rollout_change(tx, id, r.rows_affected()).await
    }

    /// Moves a rollout from one of the states `from` to `to` with `reason`; `false` when it
    /// was in none of them (so of several instances exactly one does it).
    pub async fn set_rollout_state(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
        schedule_next_ms: Option<i64>,
        now: i64,
    ) -> sqlx::Result<bool> {
        let marks: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 6)).collect();
        let sql = format!(
            "UPDATE rollouts SET state = $1, halt_reason = $2, updated_ms = $3, \
             schedule_next_ms = COALESCE($4, schedule_next_ms) WHERE id = $5 AND state IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(to)
            .bind(reason.map(str::to_string))
            .bind(now)
            .bind(schedule_next_ms)
            .bind(id);
        for f in from {
            q = q.bind(*f);
        }
        let mut tx = self.pool.begin().await?;
        let n = q.execute(&mut *tx).await?.rows_affected();
        self.commit_rollout_change(tx, id, n).await
    }

    /// Ends the transaction of a change to rollout `id` that touched `n` rows: raises its app's
    /// rules generation and commits when it changed the rollout; `true` if it did.
    async fn commit_rollout_change(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
        n: u64,
    ) -> sqlx::Result<bool> {
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        super::rules::bump_rollout_app(&mut tx, id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records that `device` was offered the release of `rollout` (once). With `cap`
    /// (`(max, since_ms)`), the offer is made only while fewer than `max` devices were offered
    /// it since `since_ms`, checked atomically: the rollout's row is locked first (PostgreSQL's
    /// row lock, SQLite's write lock), so instances that race for the last place take turns
    /// and the cap holds across every instance sharing the database.
    pub async fn offer(
        &self,
        rollout: &str,
        device: &str,
        now: i64,
        cap: Option<(i64, i64)>,
    ) -> sqlx::Result<Offer> {
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query("UPDATE rollouts SET offered = offered + 1 WHERE id = $1")
            .bind(rollout)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if locked == 0 {
            return Ok(Offer::Already);
        }
        if let Some((max, since_ms)) = cap {
            // A statement of its own, after the lock: under READ COMMITTED it sees every
            // offer committed by the instance that held the lock before.
            let n: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM rollout_devices WHERE rollout = $1 AND offered_ms >= $2",
            )
            .bind(rollout)
            .bind(since_ms)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if n >= max {
                tx.rollback().await?;
                return Ok(Offer::Capped);
            }
        }
        let n = sqlx::query(
            "INSERT INTO rollout_devices (rollout, device, offered_ms, result) \
             VALUES ($1, $2, $3, 'pending') ON CONFLICT (rollout, device) DO NOTHING",
        )
        .bind(rollout)
        .bind(device)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(Offer::Already);
        }
        tx.commit().await?;
        Ok(Offer::Made)
    }

    /// Settles a pending participant with `result` (`ok` or `failed`); `true` if it was
    /// pending.
    pub async fn settle(
        &self,
        rollout: &str,
        device: &str,
        result: &str,
        now: i64,
    ) -> sqlx::Result<bool> {
        let counts = if result == "ok" {
            "succeeded = succeeded + 1"
        } else {
            "failed = failed + 1"
        };
        self.settle_from("pending", rollout, device, result, counts, now)
            .await
    }

    /// Settles a participant counted failed by the timeout (`result = 'timeout'`) whose outcome
    /// arrived late: `ok` moves it from the failed and timed-out counts to the succeeded one;
    /// `failed` keeps it failed and takes it out of the timed-out count. `true` if it was
    /// timed out. The rollout's state is left as it is: a halt stays until someone resumes.
    pub async fn settle_late(
        &self,
        rollout: &str,
        device: &str,
        result: &str,
        now: i64,
    ) -> sqlx::Result<bool> {
        let counts = if result == "ok" {
            "succeeded = succeeded + 1, failed = failed - 1, timed_out = timed_out - 1"
        } else {
            "timed_out = timed_out - 1"
        };
        self.settle_from("timeout", rollout, device, result, counts, now)
            .await
    }

    /// Moves a participant from result `from` to `result` and, only if it moved, applies
    /// `counts` (a SET list) to its rollout, in one transaction; `true` if it moved.
    async fn settle_from(
        &self,
        from: &str,
        rollout: &str,
        device: &str,
        result: &str,
        counts: &str,
        now: i64,
    ) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE rollout_devices SET result = $1, result_ms = $2 \
             WHERE rollout = $3 AND device = $4 AND result = $5",
        )
        .bind(result)
        .bind(now)
        .bind(rollout)
        .bind(device)
        .bind(from)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            sqlx::query(&format!("UPDATE rollouts SET {counts} WHERE id = $1"))
                .bind(rollout)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Marks every participant of `rollout` offered before `cutoff_ms` and still pending as
    /// `timeout` (counted failed); returns how many.
    pub async fn expire_offers(
        &self,
        rollout: &str,
        cutoff_ms: i64,
        now: i64,
    ) -> sqlx::Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE rollout_devices SET result = 'timeout', result_ms = $1 \
             WHERE rollout = $2 AND result = 'pending' AND offered_ms < $3",
        )
        .bind(now)
        .bind(rollout)
        .bind(cutoff_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            sqlx::query(
                "UPDATE rollouts SET failed = failed + $1, timed_out = timed_out + $1 WHERE id = $2",
            )
            .bind(super::i64_of(n))
            .bind(rollout)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Devices newly offered `rollout` since `since_ms` (for the rate cap).
    pub async fn offered_since(&self, rollout: &str, since_ms: i64) -> sqlx::Result<i64> {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM rollout_devices WHERE rollout = $1 AND offered_ms >= $2",
        )
        .bind(rollout)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")
    }

    /// The participants of a rollout, by device id (at most `limit`).
    pub async fn participants(
        &self,
        rollout: &str,
        limit: i64,
    ) -> sqlx::Result<Vec<Participation>> {
        let rows = sqlx::query(
            "SELECT * FROM rollout_devices WHERE rollout = $1 ORDER BY device LIMIT $2",
        )
        .bind(rollout)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(part_from).collect()
    }

    /// Sets (or replaces) a pin.
    pub async fn upsert_pin(&self, p: &PinRow) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO pins (app, target_kind, target, version, created_ms, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (app, target_kind, target) DO UPDATE \
             SET version = excluded.version, created_ms = excluded.created_ms, \
             created_by = excluded.created_by",
        )
        .bind(&p.app)
        .bind(&p.target_kind)
        .bind(&p.target)
        .bind(&p.version)
        .bind(p.created_ms)
        .bind(&p.created_by)
        .execute(&mut *tx)
        .await?;
        super::rules::bump_app(&mut tx, &p.app).await?;
        tx.commit().await
    }

    /// Removes a pin; `false` if there was none.
    pub async fn delete_pin(&self, app: &str, kind: &str, target: &str) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM pins WHERE app = $1 AND target_kind = $2 AND target = $3")
            .bind(app)
            .bind(kind)
            .bind(target)
            .execute(&mut *tx)
            .await?;
        super::rules::bump_app(&mut tx, app).await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Pins of an app (or all).
    pub async fn pins(&self, app: Option<&str>) -> sqlx::Result<Vec<PinRow>> {
        let rows = match app {
            Some(a) => {
                sqlx::query("SELECT * FROM pins WHERE app = $1 ORDER BY target_kind, target")
                    .bind(a)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM pins ORDER BY app, target_kind, target")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(pin_from).collect()
    }

    /// The pins matching a device: its own and those of its tags.
    pub async fn pins_for(&self, app: &str, device: &str) -> sqlx::Result<Vec<PinRow>> {
        let rows = sqlx::query(
            "SELECT * FROM pins WHERE app = $1 AND ((target_kind = 'device' AND target = $2) OR \
             (target_kind = 'tag' AND target IN (SELECT tag FROM device_tags WHERE device = $2)))",
        )
        .bind(app)
        .bind(device)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pin_from).collect()
    }

    /// Stores a push.
    pub async fn insert_push(&self, p: &PushRow) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO pushes \
             (id, app, target_kind, target, version, created_ms, created_by, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&p.id)
        .bind(&p.app)
        .bind(&p.target_kind)
        .bind(&p.target)
        .bind(&p.version)
        .bind(p.created_ms)
        .bind(&p.created_by)
        .bind(p.expires_ms)
        .execute(&mut *tx)
        .await?;
        super::rules::bump_app(&mut tx, &p.app).await?;
        tx.commit().await
    }

    /// Deletes the pushes of `app` to one target (`target_kind`/`target` as stored), only those
    /// of `version` when given. Returns how many were deleted.
    pub async fn delete_pushes(
        &self,
        app: &str,
        target_kind: &str,
        target: &str,
        version: Option<&str>,
    ) -> sqlx::Result<u64> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "DELETE FROM pushes WHERE app = $1 AND target_kind = $2 AND target = $3 \
             AND ($4 = '' OR version = $4)",
        )
        .bind(app)
        .bind(target_kind)
        .bind(target)
        .bind(version.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        super::rules::bump_app(&mut tx, app).await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    /// Pushes of an app (or all), newest first.
    pub async fn pushes(&self, app: Option<&str>) -> sqlx::Result<Vec<PushRow>> {
        let rows = match app {
            Some(a) => {
                sqlx::query("SELECT * FROM pushes WHERE app = $1 ORDER BY created_ms DESC, id")
                    .bind(a)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM pushes ORDER BY created_ms DESC, id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(push_from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participation_lists_parse_or_are_refused() {
        let parts = parts_from_list("dev", "r1 pending 10 -,r2 ok 5 9").expect("parses");
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (
                &parts[0].rollout[..],
                &parts[0].result[..],
                parts[0].offered_ms
            ),
            ("r1", "pending", 10)
        );
        assert_eq!(parts[0].result_ms, None);
        assert_eq!((parts[1].result_ms, &parts[1].device[..]), (Some(9), "dev"));
        assert!(parts_from_list("dev", "").expect("empty").is_empty());
        for bad in ["r1 pending", "r1 pending x -", "r1 ok 5 y", "a b c d e"] {
            assert!(parts_from_list("dev", bad).is_err(), "{bad}");
        }
    }
}
