//! Retention: check-in history older than the configured age is folded into one row per
//! device and day (`checkin_days`) and deleted, so a fleet polling every minute does not grow
//! the database without bound. Update results and commands are kept.

use std::time::Duration;

use crate::db::Db;

/// Prunes check-ins older than `age` before `now_ms`; returns how many were folded.
pub async fn prune(db: &Db, age: Duration, now_ms: i64) -> sqlx::Result<u64> {
    let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    db.prune_checkins(now_ms.saturating_sub(age_ms)).await
}
