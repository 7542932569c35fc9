//! The alert tables (`migrations/0005_alerts.sql`): alerts, destinations and the outbox of
//! notifications. Portable SQL like `db.rs` (`$n` placeholders, `ON CONFLICT`, `RETURNING`,
//! which SQLite 3.35+ and PostgreSQL both have; times in unix ms; ids made here).
//!
//! **Invariant:** at most one alert per condition key is open, across every server instance:
//! opening is `INSERT ... ON CONFLICT (open_key) DO NOTHING` on a unique index, resolving is one
//! `UPDATE ... WHERE open_key = $key` that only one instance can win. The notifications of an
//! event are written in the same transaction as the event, so each event is announced once
//! per destination.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::condition::{checkin_changes, cut, Change, CheckinFacts, Condition, MAX_DETAIL};
use crate::db::Db;
use crate::util::{new_id, rfc3339};

/// Opens an alert for `condition` unless one is open for its key, and queues an `opened`
/// notification for every destination of its app. Returns the new alert's id, or `None` when
/// one was already open (nothing is sent then).
pub async fn raise(
    db: &Db,
    condition: &Condition,
    detail: &str,
    now: i64,
) -> sqlx::Result<Option<String>> {
    let id = new_id();
    let key = condition.key();
    let mut tx = db.pool().begin().await?;
    let opened = sqlx::query(
        "INSERT INTO alerts (id, alert_key, kind, app, device, rollout, subject, detail, \
         opened_ms, resolved_ms, open_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $2) \
         ON CONFLICT (open_key) DO NOTHING",
    )
    .bind(&id)
    .bind(&key)
    .bind(condition.kind())
    .bind(condition.app())
    .bind(condition.device().map(str::to_string))
    .bind(condition.rollout().map(str::to_string))
    .bind(condition.subject())
    .bind(cut(detail, MAX_DETAIL))
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !opened {
        tx.rollback().await?;
        return Ok(None);
    }
    if let Some(device) = condition.device() {
        // its check-ins must read it open from now on
        crate::db::bump_extras(&mut tx, crate::db::ExtrasOf::Device(device)).await?;
    }
    queue(&mut tx, &id, "opened", condition.app(), now).await?;
    tx.commit().await?;
    tracing::info!("alert {id} opened: {key}");
    Ok(Some(id))
}

/// Resolves the open alert with `key`, queueing one `resolved` notification per destination.
/// `false` when none was open (nothing is sent then).
pub async fn clear(db: &Db, key: &str, now: i64) -> sqlx::Result<bool> {
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(
        "UPDATE alerts SET resolved_ms = $1, open_key = NULL WHERE open_key = $2 \
         RETURNING id, app",
    )
    .bind(now)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(false);
    };
    let id: String = row.try_get("id")?;
    let app: Option<String> = row.try_get("app")?;
    queue(&mut tx, &id, "resolved", app.as_deref().unwrap_or(""), now).await?;
    tx.commit().await?;
    tracing::info!("alert {id} resolved: {key}");
    Ok(true)
}

async fn queue(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    alert: &str,
    event: &str,
    app: &str,
    now: i64,
) -> sqlx::Result<()> {
    let dests = sqlx::query(
        "SELECT id, kind, target FROM alert_destinations WHERE app IS NULL OR app = $1 ORDER BY id",
    )
    .bind(app)
    .fetch_all(&mut **tx)
    .await?;
    for d in dests {
        sqlx::query(
            "INSERT INTO alert_deliveries (id, alert, event, destination, kind, target, status, \
             attempts, next_ms, claim, claimed_until, created_ms, done_ms, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, NULL, 0, $7, NULL, NULL)",
        )
        .bind(new_id())
        .bind(alert)
        .bind(event)
        .bind(d.try_get::<String, _>("id")?)
        .bind(d.try_get::<String, _>("kind")?)
        .bind(d.try_get::<String, _>("target")?)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Applies decided changes (raise or clear each).
pub async fn apply(db: &Db, changes: &[Change], now: i64) -> sqlx::Result<()> {
    for c in changes {
        match c {
            Change::Raise { condition, detail } => {
                raise(db, condition, detail, now).await?;
            }
            Change::Clear { key } => {
                clear(db, key, now).await?;
            }
        }
    }
    Ok(())
}

/// The alert hook of a check-in, given the keys of the device's alerts open when its token
/// was read ([`crate::db::DeviceAuth::open_alerts`]): writes only when something opens or
/// resolves, and reads nothing. An alert opened since (a `silent` one by the sweep) is cleared
/// by the sweep, which resolves those of devices seen after they opened.
pub async fn on_checkin(
    db: &Db,
    facts: &CheckinFacts<'_>,
    open: &BTreeSet<String>,
    now: i64,
) -> sqlx::Result<()> {
    let changes = checkin_changes(facts, open);
    apply(db, &changes, now).await
}

/// Raises `silent` for active devices not seen for longer than `silent_after` of their poll
/// intervals (`default_poll_secs` for devices without their own), and resolves `silent`
/// alerts of devices seen since (a check-in that raced the sweep). Returns how many opened.
pub async fn sweep_silent(
    db: &Db,
    silent_after: u32,
    default_poll_secs: u64,
    now: i64,
) -> sqlx::Result<u64> {
    let n = i64::from(silent_after.max(1));
    let poll = i64::try_from(default_poll_secs.max(1)).unwrap_or(i64::MAX / 4);
    let rows = sqlx::query(
        "SELECT id, app, last_seen_ms, COALESCE(poll_interval_secs, $3) AS poll FROM devices \
         WHERE status = 'active' AND last_seen_ms IS NOT NULL \
         AND last_seen_ms < $1 - $2 * COALESCE(poll_interval_secs, $3) * 1000 \
         AND NOT EXISTS (SELECT 1 FROM alerts WHERE alerts.open_key = 'silent:' || devices.id) \
         ORDER BY last_seen_ms LIMIT 500",
    )
    .bind(now)
    .bind(n)
    .bind(poll)
    .fetch_all(db.pool())
    .await?;
    let mut opened = 0;
    for r in rows {
        let device: String = r.try_get("id")?;
        let last: i64 = r.try_get("last_seen_ms")?;
        let poll: i64 = r.try_get("poll")?;
        let condition = Condition::Silent {
            app: r.try_get("app")?,
            device,
        };
        let detail = format!(
            "not seen for {} s (more than {n} poll intervals of {poll} s); last check-in {}",
            now.saturating_sub(last) / 1000,
            rfc3339(last)
        );
        if raise(db, &condition, &detail, now).await?.is_some() {
            opened += 1;
        }
    }
    let stale = sqlx::query(
        "SELECT a.alert_key FROM alerts a JOIN devices d ON d.id = a.device \
         WHERE a.open_key IS NOT NULL AND a.kind = 'silent' AND d.last_seen_ms >= a.opened_ms",
    )
    .fetch_all(db.pool())
    .await?;
    for r in stale {
        clear(db, &r.try_get::<String, _>("alert_key")?, now).await?;
    }
    Ok(opened)
}

/// Deletes alerts resolved before `cutoff_ms` with their notifications (open alerts and
/// their notifications are kept however old). Returns how many alerts were deleted.
pub async fn prune(db: &Db, cutoff_ms: i64) -> sqlx::Result<u64> {
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "DELETE FROM alert_deliveries WHERE alert IN \
         (SELECT id FROM alerts WHERE resolved_ms IS NOT NULL AND resolved_ms < $1)",
    )
    .bind(cutoff_ms)
    .execute(&mut *tx)
    .await?;
    let n = sqlx::query("DELETE FROM alerts WHERE resolved_ms IS NOT NULL AND resolved_ms < $1")
        .bind(cutoff_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n)
}

// ---- destinations ----

/// A place notifications go (the webhook secret is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Id.
    pub id: String,
    /// `webhook` or `email`.
    pub kind: String,
    /// The URL or the address.
    pub target: String,
    /// Only alerts of this app; all when absent.
    pub app: Option<String>,
    /// Added (unix ms).
    pub created_ms: i64,
    /// Who added it (audit actor).
    pub created_by: String,
}

/// Stores a destination; returns its id.
pub async fn add_destination(
    db: &Db,
    kind: &str,
    target: &str,
    secret: Option<&str>,
    app: Option<&str>,
    actor: &str,
    now: i64,
) -> sqlx::Result<String> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO alert_destinations (id, kind, target, secret, app, created_ms, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(kind)
    .bind(target)
    .bind(secret.map(str::to_string))
    .bind(app.map(str::to_string))
    .bind(now)
    .bind(actor)
    .execute(db.pool())
    .await?;
    Ok(id)
}

/// Removes a destination; its pending notifications are marked failed. `false` if unknown.
pub async fn remove_destination(db: &Db, id: &str, now: i64) -> sqlx::Result<bool> {
    let mut tx = db.pool().begin().await?;
    let gone = sqlx::query("DELETE FROM alert_destinations WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    sqlx::query(
        "UPDATE alert_deliveries SET status = 'failed', done_ms = $1, \
         last_error = 'destination removed' WHERE destination = $2 AND status = 'pending'",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(gone)
}

/// Every destination, oldest first.
pub async fn destinations(db: &Db) -> sqlx::Result<Vec<Destination>> {
    let rows = sqlx::query(
        "SELECT id, kind, target, app, created_ms, created_by FROM alert_destinations \
         ORDER BY created_ms, id",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Destination {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                target: r.try_get("target")?,
                app: r.try_get("app")?,
                created_ms: r.try_get("created_ms")?,
                created_by: r.try_get("created_by")?,
            })
        })
        .collect()
}

// ---- listing ----

/// Which alerts [`list`] returns.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only open ones.
    pub open_only: bool,
    /// Only this app's.
    pub app: Option<String>,
    /// Only this device's.
    pub device: Option<String>,
    /// At most this many, newest first (1 to 1000).
    pub limit: i64,
}

/// One notification of an alert and how its delivery went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// Id (the webhook's `delivery_id`).
    pub id: String,
    /// `opened` or `resolved`.
    pub event: String,
    /// Destination id.
    pub destination: String,
    /// `webhook` or `email`.
    pub kind: String,
    /// The address, or the webhook's scheme, host and port only (its path may be a secret).
    pub target: String,
    /// `pending`, `done` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt (unix ms), while pending.
    pub next_ms: Option<i64>,
    /// Delivered or given up (unix ms).
    pub done_ms: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// An alert with its notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertView {
    /// Id.
    pub id: String,
    /// Condition key.
    pub key: String,
    /// Condition kind.
    pub condition: String,
    /// App.
    pub app: Option<String>,
    /// Device.
    pub device: Option<String>,
    /// Rollout.
    pub rollout: Option<String>,
    /// `device ID` or `rollout ID`.
    pub subject: String,
    /// Why.
    pub detail: String,
    /// `open` or `resolved`.
    pub state: String,
    /// Opened (unix ms).
    pub opened_ms: i64,
    /// Opened (RFC 3339).
    pub opened_at: String,
    /// Resolved (unix ms).
    pub resolved_ms: Option<i64>,
    /// Resolved (RFC 3339).
    pub resolved_at: Option<String>,
    /// Notifications, oldest first.
    pub deliveries: Vec<DeliveryView>,
}

/// A webhook URL reduced to scheme, host and port, for views readable by `read` tokens.
pub fn redact_target(kind: &str, target: &str) -> String {
    if kind != "webhook" {
        return target.to_string();
    }
    match reqwest::Url::parse(target) {
        Ok(u) => format!(
            "{}://{}{}/...",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(webhook)".into(),
    }
}

fn alert_from(r: &AnyRow) -> sqlx::Result<AlertView> {
    let opened_ms: i64 = r.try_get("opened_ms")?;
    let resolved_ms: Option<i64> = r.try_get("resolved_ms")?;
    Ok(AlertView {
        id: r.try_get("id")?,
        key: r.try_get("alert_key")?,
        condition: r.try_get("kind")?,
        app: r.try_get("app")?,
        device: r.try_get("device")?,
        rollout: r.try_get("rollout")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
        state: if resolved_ms.is_some() {
            "resolved"
        } else {
            "open"
        }
        .into(),
        opened_ms,
        opened_at: rfc3339(opened_ms),
        resolved_ms,
        resolved_at: resolved_ms.map(rfc3339),
        deliveries: Vec::new(),
    })
}

/// Open and recent alerts, newest first, with the delivery state of each notification: what
/// `patch-server alerts list` and the dashboard show.
pub async fn list(db: &Db, f: &AlertFilter) -> sqlx::Result<Vec<AlertView>> {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<String> = Vec::new();
    if f.open_only {
        conds.push("resolved_ms IS NULL".into());
    }
    for (col, v) in [("app", &f.app), ("device", &f.device)] {
        if let Some(v) = v {
            args.push(v.clone());
            conds.push(format!("{col} = ${}", args.len()));
        }
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    let sql = format!(
        "SELECT * FROM alerts {where_} ORDER BY opened_ms DESC, id LIMIT {}",
        f.limit.clamp(1, 1000)
    );
    let mut q = sqlx::query(&sql);
    for a in &args {
        q = q.bind(a);
    }
    let mut out: Vec<AlertView> = q
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(alert_from)
        .collect::<sqlx::Result<_>>()?;
    let mut by_alert: BTreeMap<String, Vec<DeliveryView>> = BTreeMap::new();
    let ids: Vec<String> = out.iter().map(|a| a.id.clone()).collect();
    for chunk in ids.chunks(200) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT * FROM alert_deliveries WHERE alert IN ({}) ORDER BY created_ms, id",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for r in q.fetch_all(db.pool()).await? {
            let kind: String = r.try_get("kind")?;
            let status: String = r.try_get("status")?;
            let target: String = r.try_get("target")?;
            by_alert
                .entry(r.try_get("alert")?)
                .or_default()
                .push(DeliveryView {
                    id: r.try_get("id")?,
                    event: r.try_get("event")?,
                    destination: r.try_get("destination")?,
                    target: redact_target(&kind, &target),
                    kind,
                    next_ms: (status == "pending")
                        .then(|| r.try_get("next_ms"))
                        .transpose()?,
                    status,
                    attempts: r.try_get("attempts")?,
                    done_ms: r.try_get("done_ms")?,
                    last_error: r.try_get("last_error")?,
                });
        }
    }
    for a in &mut out {
        a.deliveries = by_alert.remove(&a.id).unwrap_or_default();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&Db::sqlite_url(dir.path()), 2).await.unwrap();
        (dir, db)
    }

    async fn deliveries(db: &Db) -> Vec<(String, String, String)> {
        sqlx::query(
            "SELECT a.alert_key, d.event, d.destination FROM alert_deliveries d \
             JOIN alerts a ON a.id = d.alert ORDER BY d.created_ms, a.alert_key, d.event",
        )
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.try_get("alert_key").unwrap(),
                r.try_get("event").unwrap(),
                r.try_get("destination").unwrap(),
            )
        })
        .collect()
    }

    /// The API the rollout code calls: `rollout-halted` opens once, sends one `opened` per
    /// destination of its app, and one `resolved` when cleared.
    #[tokio::test]
    async fn rollout_halted_raise_and_clear_notify_once() {
        let (_dir, db) = db().await;
        let all = add_destination(&db, "email", "ops@example.com", None, None, "t", 1)
            .await
            .unwrap();
        let game = add_destination(
            &db,
            "webhook",
            "http://127.0.0.1:9/h",
            Some("s"),
            Some("game"),
            "t",
            1,
        )
        .await
        .unwrap();
        add_destination(
            &db,
            "email",
            "other@example.com",
            None,
            Some("kiosk"),
            "t",
            1,
        )
        .await
        .unwrap();
        let halted = Condition::RolloutHalted {
            app: "game".into(),
            rollout: "r1".into(),
        };
        let id = raise(&db, &halted, "failure rate 0.2 > 0.05", 10)
            .await
            .unwrap()
            .expect("opened");
        assert_eq!(raise(&db, &halted, "again", 11).await.unwrap(), None);
        let open = list(
            &db,
            &AlertFilter {
                open_only: true,
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, id);
        assert_eq!(open[0].key, "rollout-halted:r1");
        assert_eq!(open[0].detail, "failure rate 0.2 > 0.05");
        assert_eq!(open[0].deliveries.len(), 2);
        let hook = open[0].deliveries.iter().find(|d| d.kind == "webhook");
        assert_eq!(hook.unwrap().target, "http://127.0.0.1:9/...");
        assert!(clear(&db, "rollout-halted:r1", 20).await.unwrap());
        assert!(!clear(&db, "rollout-halted:r1", 21).await.unwrap());
        let mut got = deliveries(&db).await;
        got.sort();
        let mut want = vec![
            (
                "rollout-halted:r1".to_string(),
                "opened".to_string(),
                all.clone(),
            ),
            ("rollout-halted:r1".into(), "opened".into(), game.clone()),
            ("rollout-halted:r1".into(), "resolved".into(), all),
            ("rollout-halted:r1".into(), "resolved".into(), game),
        ];
        want.sort();
        assert_eq!(got, want);
        // Raised again after it cleared: a new alert.
        let again = raise(&db, &halted, "halted again", 30).await.unwrap();
        assert!(again.is_some_and(|a| a != id));
        let every = list(
            &db,
            &AlertFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(every.len(), 2);
        assert_eq!(every[1].state, "resolved");
        assert_eq!(every[1].resolved_ms, Some(20));
        // Pruning drops the resolved alert and its notifications, never the open one.
        assert_eq!(prune(&db, 1_000).await.unwrap(), 1);
        let left = list(
            &db,
            &AlertFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].state, "open");
        assert_eq!(deliveries(&db).await.len(), 2);
    }
}
