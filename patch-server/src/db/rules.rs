//! The rules an app's check-ins consult (its releases, unfinished rollouts, pins and pushes),
//! cached per instance and kept exact with a generation counter (`apps.rules_gen`).
//!
//! Every write that changes a rule raises the counter in the same transaction
//! ([`bump_app`], [`bump_rollout_app`]). A check-in reads the counter with its device row
//! (`device_by_token`, no extra statement) and asks [`Db::app_rules`] for that generation: the
//! cached rules when they are at least that new, else a reload. Rules loaded after the counter
//! was read are at least as new as it, so a change is never missed; at worst a reload happens
//! once more than needed. Device tags are not cached: they are read per check-in, and only when
//! some pin or push of the app targets a tag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::{Any, Transaction};

use super::{Db, PinRow, PushRow, RolloutRow};
use crate::decide::Release;

/// One app's rules at one generation.
#[derive(Debug, Default)]
pub struct AppRules {
    /// The `apps.rules_gen` these were loaded at (or after).
    pub generation: i64,
    /// The releases its verified repository offers.
    pub releases: Vec<Release>,
    /// Its running and halted rollouts, newest first.
    pub rollouts: Vec<RolloutRow>,
    /// Its pins.
    pub pins: Vec<PinRow>,
    /// Its pushes, expired ones included (expiry is checked at each use).
    pub pushes: Vec<PushRow>,
}

impl AppRules {
    /// Whether a pin or push targets a tag (then the device's tags are needed).
    pub fn has_tag_rules(&self) -> bool {
        self.pins.iter().any(|p| p.target_kind == "tag")
            || self.pushes.iter().any(|p| p.target_kind == "tag")
    }

    /// The pins matching `device` with `tags`: its own and those of its tags.
    pub fn pins_for<'a>(
        &'a self,
        device: &'a str,
        tags: &'a [String],
    ) -> impl Iterator<Item = &'a PinRow> + 'a {
        self.pins
            .iter()
            .filter(move |p| targets(&p.target_kind, &p.target, device, tags))
    }

    /// The pushes matching `device` with `tags` (its own, its tags', to every device) that have
    /// not expired at `now`.
    pub fn pushes_for<'a>(
        &'a self,
        device: &'a str,
        tags: &'a [String],
        now: i64,
    ) -> impl Iterator<Item = &'a PushRow> + 'a {
        self.pushes.iter().filter(move |p| {
            p.expires_ms.is_none_or(|e| e > now)
                && (p.target_kind == "all" || targets(&p.target_kind, &p.target, device, tags))
        })
    }
}

fn targets(kind: &str, target: &str, device: &str, tags: &[String]) -> bool {
    match kind {
        "device" => target == device,
        "tag" => tags.iter().any(|t| t == target),
        _ => false,
    }
}

/// The per-instance cache of [`AppRules`], one entry per app (apps are few and created by
/// administrators, so it needs no eviction).
#[derive(Debug, Default)]
pub struct RulesCache(Mutex<HashMap<String, Arc<AppRules>>>);

impl RulesCache {
    fn get(&self, app: &str, generation: i64) -> Option<Arc<AppRules>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(app).filter(|r| r.generation >= generation).cloned()
    }

    fn put(&self, app: &str, rules: Arc<AppRules>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let newer = map
            .get(app)
            .is_none_or(|old| old.generation <= rules.generation);
        if newer {
            map.insert(app.to_string(), rules);
        }
    }
}

/// Raises `app`'s rules generation inside `tx`, the transaction of the change.
pub(super) async fn bump_app(tx: &mut Transaction<'_, Any>, app: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE apps SET rules_gen = rules_gen + 1 WHERE name = $1")
        .bind(app)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Raises the rules generation of the app of rollout `id` inside `tx`.
pub(super) async fn bump_rollout_app(tx: &mut Transaction<'_, Any>, id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE apps SET rules_gen = rules_gen + 1 \
         WHERE name = (SELECT app FROM rollouts WHERE id = $1)",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Db {
    /// `app`'s rules at generation `generation` or newer: from this instance's cache, or loaded
    /// (four indexed reads) when the cache is older.
    pub async fn app_rules(&self, app: &str, generation: i64) -> sqlx::Result<Arc<AppRules>> {
        if let Some(r) = self.rules.get(app, generation) {
            return Ok(r);
        }
        let rules = Arc::new(AppRules {
            generation,
            releases: self.releases(app).await?,
            rollouts: self.rollouts(Some(app), true).await?,
            pins: self.pins(Some(app)).await?,
            pushes: self.pushes(Some(app)).await?,
        });
        self.rules.put(app, rules.clone());
        Ok(rules)
    }

    /// The tags of one device.
    pub async fn tags_of_device(&self, device: &str) -> sqlx::Result<Vec<String>> {
        let mut map = self.tags_of(&[device.to_string()]).await?;
        Ok(map.remove(device).unwrap_or_default())
    }
}
