//! Rollouts, pins and pushes: the service behind the admin API, the CLI and the dashboard.
//!
//! Each function validates its input, changes the database and writes one audit-log entry
//! per administrator action. The decision itself is pure ([`crate::decide::decide_with`]);
//! [`directive_for_checkin`] takes the app's rules from the per-instance cache
//! ([`crate::db::rules`]), settles the device's pending rollout offers from what it reports,
//! calls the decision and records a new offer. [`tick`] runs the same evaluation for every active
//! rollout in the background, so devices that went silent are counted failed after the
//! timeout even when nobody checks in.

use std::borrow::Cow;
use std::time::Duration;

use formats::fleet::{check_id, check_short, CheckIn, Directive, DirectiveReason};
use formats::Version;
use serde::{Deserialize, Serialize};

use crate::db::rules::AppRules;
use crate::db::{Db, DeviceAuth, Offer, PinRow, PushRow, RolloutRow};
use crate::decide::{
    decide_with, halt_reason, next_step, DeviceFacts, PinRule, PinSource, PushRule, Release,
    RolloutRule, RolloutState, Rules,
};
use crate::error::{ApiError, ApiResult};

/// The actor the audit log names for what the server does by itself.
pub const SERVER_ACTOR: &str = "server";

/// Default `max_failure_rate` of a rollout.
pub const DEFAULT_MAX_FAILURE_RATE: f64 = 0.05;
/// Default `min_devices` of a rollout.
pub const DEFAULT_MIN_DEVICES: u64 = 20;
/// Default timeout of a rollout offer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// How often the background task evaluates active rollouts.
pub const TICK: Duration = Duration::from_secs(1);

/// A schedule: raise the percentage to the next of `steps` every `every`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Percentages, strictly increasing, each 1..=100.
    pub steps: Vec<u32>,
    /// Time between steps.
    pub every: Duration,
}

impl Schedule {
    /// Parses `5,25,50,100@1d` (percentages, `@`, a humantime duration of at least 1 s).
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let (list, every) = s
            .split_once('@')
            .ok_or_else(|| "expected PCT,PCT,...@INTERVAL, e.g. 5,25,50,100@1d".to_string())?;
        let every = humantime::parse_duration(every.trim())
            .map_err(|e| format!("interval {every:?}: {e}"))?;
        if every < Duration::from_secs(1) {
            return Err("interval must be at least 1s".into());
        }
        let mut steps = Vec::new();
        for p in list.split(',') {
            let n: u32 = p
                .trim()
                .parse()
                .map_err(|_| format!("{p:?} is not a percentage"))?;
            if !(1..=100).contains(&n) {
                return Err(format!("{n} is not within 1..=100"));
            }
            if steps.last().is_some_and(|&l| l >= n) {
                return Err("percentages must increase".into());
            }
            steps.push(n);
        }
        if steps.len() > 100 {
            return Err("at most 100 steps".into());
        }
        Ok(Schedule { steps, every })
    }

    /// The steps as stored (`5,25,50,100`).
    pub fn steps_text(&self) -> String {
        let s: Vec<String> = self.steps.iter().map(u32::to_string).collect();
        s.join(",")
    }
}

fn steps_of(text: Option<&str>) -> Vec<u32> {
    text.map(|t| t.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What starting a rollout needs.
#[derive(Debug, Clone)]
pub struct StartRollout {
    /// App.
    pub app: String,
    /// Release to roll out (among the app's verified, not yanked releases).
    pub version: String,
    /// First percentage, 0..=100.
    pub percent: u32,
    /// Halt when failed / finished exceeds this, 0..=1.
    pub max_failure_rate: f64,
    /// ... once this many devices finished.
    pub min_devices: u64,
    /// Offered but no success within this: failed.
    pub timeout: Duration,
    /// Raise the percentage along this schedule.
    pub schedule: Option<Schedule>,
    /// At most this many devices newly offered per period.
    pub rate_cap: Option<(u64, Duration)>,
}

/// Who a pin or push is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One device.
    Device(String),
    /// Every device with a tag.
    Tag(String),
    /// Every device of the app (pushes only).
    All,
}

impl Target {
    /// The target a form or query names: `device` or `tag` with its name, or `all`.
    pub fn from_kind(kind: &str, name: &str) -> ApiResult<Target> {
        let name = name.trim();
        match kind {
            "device" => {
                check_id("device", name)?;
                Ok(Target::Device(name.to_string()))
            }
            "tag" => {
                check_id("tag", name)?;
                Ok(Target::Tag(name.to_string()))
            }
            "all" => Ok(Target::All),
            _ => Err(ApiError::bad("target_kind", "must be device, tag or all")),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Target::Device(_) => "device",
            Target::Tag(_) => "tag",
            Target::All => "all",
        }
    }
    fn name(&self) -> &str {
        match self {
            Target::Device(s) | Target::Tag(s) => s,
            Target::All => "",
        }
    }
    fn label(&self) -> String {
        match self {
            Target::All => "all".into(),
            t => format!("{}:{}", t.kind(), t.name()),
        }
    }
}

/// A rollout with its progress, as the API, CLI and dashboard show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    /// The stored rollout (counters included).
    #[serde(flatten)]
    pub rollout: RolloutRow,
    /// Offered, not finished yet.
    pub pending: i64,
    /// Succeeded + failed.
    pub finished: i64,
    /// failed / finished (0 when nothing finished).
    pub failure_rate: f64,
}

impl From<RolloutRow> for RolloutView {
    fn from(r: RolloutRow) -> Self {
        let finished = r.succeeded + r.failed;
        #[allow(clippy::cast_precision_loss)]
        let failure_rate = if finished > 0 {
            r.failed as f64 / finished as f64
        } else {
            0.0
        };
        RolloutView {
            pending: (r.offered - finished).max(0),
            finished,
            failure_rate,
            rollout: r,
        }
    }
}

/// The app's verified release `version`, refusing unknown and yanked ones with an error that
/// names the version and lists the known ones (400, field `version`).
pub async fn check_release(db: &Db, app: &str, version: &str) -> ApiResult<Release> {
    check_short("version", version)?;
    let v = Version::parse(version)
        .map_err(|e| ApiError::bad("version", format!("{version:?} is not a version: {e}")))?;
    let mut releases = db.releases(app).await?;
    releases.sort_by(|a, b| a.version.cmp(&b.version));
    match releases.iter().find(|r| r.version == v) {
        Some(r) if r.yanked.is_some() => Err(ApiError::bad(
            "version",
            format!(
                "{version} of {app} is yanked ({}); it is never named to devices",
                r.yanked.as_deref().unwrap_or("")
            ),
        )),
        Some(r) => Ok(r.clone()),
        None => {
            let known: Vec<String> = releases
                .iter()
                .filter(|r| r.yanked.is_none())
                .map(|r| r.version.to_string())
                .collect();
            Err(ApiError::bad(
                "version",
                format!(
                    "{version} is not among the verified releases of {app} (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ))
        }
    }
}

async fn check_app(db: &Db, app: &str) -> ApiResult<()> {
    check_id("app", app)?;
    if db.app(app).await?.is_none() {
        return Err(ApiError::NotFound(format!("no app {app}")));
    }
    Ok(())
}

async fn check_target(db: &Db, app: &str, t: &Target) -> ApiResult<()> {
    match t {
        Target::Device(d) => {
            check_id("device", d)?;
            match db.device_app(d).await? {
                Some((a, _)) if a == app => Ok(()),
                _ => Err(ApiError::NotFound(format!("no device {d} in app {app}"))),
            }
        }
        Target::Tag(t) => Ok(check_id("tag", t)?),
        Target::All => Ok(()),
    }
}

/// Starts a rollout (state running). A release may have one unfinished rollout at a time.
pub async fn start(db: &Db, actor: &str, req: &StartRollout, now: i64) -> ApiResult<RolloutView> {
    check_app(db, &req.app).await?;
    if req.percent > 100 {
        return Err(ApiError::bad("percent", "must be within 0..=100"));
    }
    if !(0.0..=1.0).contains(&req.max_failure_rate) || !req.max_failure_rate.is_finite() {
        return Err(ApiError::bad(
            "max_failure_rate",
            "must be a fraction within 0..=1 (0.05 is 5%)",
        ));
    }
    if req.min_devices > 1_000_000_000 {
        return Err(ApiError::bad("min_devices", "at most 1000000000"));
    }
    if req.timeout < Duration::from_secs(1) || req.timeout > Duration::from_secs(365 * 86_400) {
        return Err(ApiError::bad(
            "timeout_secs",
            "must be 1 second to 365 days",
        ));
    }
    if let Some((n, period)) = req.rate_cap {
        if n == 0 || n > 1_000_000_000 {
            return Err(ApiError::bad("max_per_period", "must be 1..=1000000000"));
        }
        if period < Duration::from_secs(1) || period > Duration::from_secs(365 * 86_400) {
            return Err(ApiError::bad("period_secs", "must be 1 second to 365 days"));
        }
    }
    let release = check_release(db, &req.app, &req.version).await?;
    let version = release.version.to_string();
    if let Some(r) = db
        .rollouts(Some(&req.app), true)
        .await?
        .into_iter()
        .find(|r| r.version == version)
    {
        return Err(ApiError::Conflict(format!(
            "rollout {} of {} {version} is {}; resume, set or finish it",
            r.id, req.app, r.state
        )));
    }
    let row = RolloutRow {
        id: crate::util::new_id(),
        app: req.app.clone(),
        version,
        percent: i64::from(req.percent),
        max_failure_rate: req.max_failure_rate,
        min_devices: crate::db::i64_of(req.min_devices),
        timeout_ms: ms(req.timeout),
        schedule: req.schedule.as_ref().map(Schedule::steps_text),
        schedule_every_ms: req.schedule.as_ref().map(|s| ms(s.every)),
        schedule_next_ms: req
            .schedule
            .as_ref()
            .map(|s| now.saturating_add(ms(s.every))),
        max_per_period: req.rate_cap.map(|(n, _)| crate::db::i64_of(n)),
        period_ms: req.rate_cap.map(|(_, p)| ms(p)),
        state: RolloutState::Running.as_str().into(),
        halt_reason: None,
        offered: 0,
        succeeded: 0,
        failed: 0,
        timed_out: 0,
        created_ms: now,
        updated_ms: now,
        created_by: actor.to_string(),
    };
    db.insert_rollout(&row).await?;
    let detail = format!(
        "{} {} at {}% (max failure rate {}, min {} devices, timeout {} s{}{})",
        row.app,
        row.version,
        row.percent,
        row.max_failure_rate,
        row.min_devices,
        row.timeout_ms / 1000,
        row.schedule
            .as_ref()
            .map(|s| format!(", schedule {s}"))
            .unwrap_or_default(),
        row.max_per_period
            .map(|n| format!(", at most {n} per {} s", row.period_ms.unwrap_or(0) / 1000))
            .unwrap_or_default(),
    );
    db.audit(actor, "rollout.start", &row.id, &detail).await?;
    Ok(row.into())
}

async fn get(db: &Db, id: &str) -> ApiResult<RolloutRow> {
    check_id("id", id)?;
    db.rollout(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id}")))
}

/// One rollout with its progress (evaluated first, so timeouts and yanks show).
pub async fn status(db: &Db, id: &str, now: i64) -> ApiResult<RolloutView> {
    let r = get(db, id).await?;
    evaluate(db, &r, &db.releases(&r.app).await?, now).await?;
    Ok(get(db, id).await?.into())
}

/// Rollouts of an app (or all), newest first, with progress as the background task
/// ([`tick`], every second) and the check-ins left it: listing changes nothing.
pub async fn list(db: &Db, app: Option<&str>) -> ApiResult<Vec<RolloutView>> {
    if let Some(a) = app {
        check_id("app", a)?;
    }
    Ok(db
        .rollouts(app, false)
        .await?
        .into_iter()
        .map(RolloutView::from)
        .collect())
}

/// The single unfinished rollout of an app (for `rollout set --app A`): 404 when none, 409
/// naming them when several.
pub async fn active_of(db: &Db, app: &str) -> ApiResult<RolloutRow> {
    check_app(db, app).await?;
    let mut rs = db.rollouts(Some(app), true).await?;
    match rs.len() {
        0 => Err(ApiError::NotFound(format!(
            "app {app} has no running or halted rollout"
        ))),
        1 => Ok(rs.remove(0)),
        _ => Err(ApiError::Conflict(format!(
            "app {app} has several unfinished rollouts ({}); name one by id",
            rs.iter()
                .map(|r| format!("{} {}", r.id, r.version))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Sets the percentage of a running or halted rollout (0..=100).
pub async fn set_percent(
    db: &Db,
    actor: &str,
    id: &str,
    percent: u32,
    now: i64,
) -> ApiResult<RolloutView> {
    if percent > 100 {
        return Err(ApiError::bad("percent", "must be within 0..=100"));
    }
    let r = get(db, id).await?;
    if !db
        .set_rollout_percent(id, i64::from(percent), r.schedule_next_ms, now)
        .await?
    {
        return Err(ApiError::Conflict(format!("rollout {id} is finished")));
    }
    db.audit(
        actor,
        "rollout.set",
        id,
        &format!("{} {} {}% -> {percent}%", r.app, r.version, r.percent),
    )
    .await?;
    Ok(get(db, id).await?.into())
}

/// Halts a running rollout: no further device is offered its release.
pub async fn halt(
    db: &Db,
    actor: &str,
    id: &str,
    reason: Option<&str>,
    now: i64,
) -> ApiResult<RolloutView> {
    if let Some(r) = reason {
        check_short("reason", r)?;
    }
    let r = get(db, id).await?;
    let why = format!("halted by {actor}: {}", reason.unwrap_or("no reason given"));
    if !db
        .set_rollout_state(id, &["running"], "halted", Some(&why), None, now)
        .await?
    {
        return Err(ApiError::Conflict(format!("rollout {id} is {}", r.state)));
    }
    db.audit(actor, "rollout.halt", id, &why).await?;
    alert_halted(db, &r, &why, now).await;
    Ok(get(db, id).await?.into())
}

/// Resumes a halted rollout (refused while its release is yanked, or while its failures are
/// above the threshold: raise nothing until the cause is fixed, or start a new rollout).
pub async fn resume(db: &Db, actor: &str, id: &str, now: i64) -> ApiResult<RolloutView> {
    let r = get(db, id).await?;
    if r.state != "halted" {
        return Err(ApiError::Conflict(format!("rollout {id} is {}", r.state)));
    }
    check_release(db, &r.app, &r.version).await?;
    if let Some(why) = halt_reason(
        u64::try_from(r.succeeded).unwrap_or(0),
        u64::try_from(r.failed).unwrap_or(0),
        u64::try_from(r.min_devices).unwrap_or(0),
        r.max_failure_rate,
    ) {
        return Err(ApiError::Conflict(format!(
            "rollout {id} would halt again at once: {why}"
        )));
    }
    let next = r.schedule_every_ms.map(|e| now.saturating_add(e));
    if !db
        .set_rollout_state(id, &["halted"], "running", None, next, now)
        .await?
    {
        return Err(ApiError::Conflict(format!("rollout {id} is not halted")));
    }
    db.audit(
        actor,
        "rollout.resume",
        id,
        &format!("{} {}", r.app, r.version),
    )
    .await?;
    alert_cleared(db, id, now).await;
    Ok(get(db, id).await?.into())
}

/// Finishes a rollout: it offers nothing more and its release becomes an ordinary channel
/// release (the channel rule names it to every eligible device).
pub async fn finish(db: &Db, actor: &str, id: &str, now: i64) -> ApiResult<RolloutView> {
    let r = get(db, id).await?;
    let why = format!("finished by {actor}");
    if !db
        .set_rollout_state(
            id,
            &["running", "halted"],
            "finished",
            Some(&why),
            None,
            now,
        )
        .await?
    {
        return Err(ApiError::Conflict(format!("rollout {id} is {}", r.state)));
    }
    db.audit(
        actor,
        "rollout.finish",
        id,
        &format!("{} {}", r.app, r.version),
    )
    .await?;
    alert_cleared(db, id, now).await;
    Ok(get(db, id).await?.into())
}

/// Pins a device or a tag of `app` at `version` (replacing an earlier pin of that target).
pub async fn pin(
    db: &Db,
    actor: &str,
    app: &str,
    target: &Target,
    version: &str,
    now: i64,
) -> ApiResult<PinRow> {
    check_app(db, app).await?;
    if *target == Target::All {
        return Err(ApiError::bad("device", "a pin needs a device or a tag"));
    }
    check_target(db, app, target).await?;
    let rel = check_release(db, app, version).await?;
    let row = PinRow {
        app: app.to_string(),
        target_kind: target.kind().into(),
        target: target.name().into(),
        version: rel.version.to_string(),
        created_ms: now,
        created_by: actor.to_string(),
    };
    db.upsert_pin(&row).await?;
    db.audit(
        actor,
        "pin.set",
        &format!("{app}/{}", target.label()),
        &row.version,
    )
    .await?;
    Ok(row)
}

/// Removes the pin of a device or tag (404 when there is none).
pub async fn unpin(db: &Db, actor: &str, app: &str, target: &Target) -> ApiResult<()> {
    check_app(db, app).await?;
    if *target == Target::All {
        return Err(ApiError::bad("device", "a pin needs a device or a tag"));
    }
    match target {
        Target::Device(d) => check_id("device", d)?,
        Target::Tag(t) => check_id("tag", t)?,
        Target::All => {}
    }
    if !db.delete_pin(app, target.kind(), target.name()).await? {
        return Err(ApiError::NotFound(format!(
            "no pin of {} in app {app}",
            target.label()
        )));
    }
    db.audit(
        actor,
        "pin.remove",
        &format!("{app}/{}", target.label()),
        "",
    )
    .await?;
    Ok(())
}

/// Longest time a push may be set to last, in seconds (a year); without one it lasts until
/// removed.
pub const MAX_PUSH_SECS: u64 = 366 * 86_400;

/// Pushes `version` to a device, a tag or every device of `app`, for `expires_in_secs` seconds
/// when given (at most [`MAX_PUSH_SECS`]), else until removed.
pub async fn push(
    db: &Db,
    actor: &str,
    app: &str,
    target: &Target,
    version: &str,
    expires_in_secs: Option<u64>,
    now: i64,
) -> ApiResult<PushRow> {
    check_app(db, app).await?;
    check_target(db, app, target).await?;
    let expires_ms = match expires_in_secs {
        None => None,
        Some(s) if (1..=MAX_PUSH_SECS).contains(&s) => Some(now + s as i64 * 1000),
        Some(s) => {
            return Err(ApiError::bad(
                "expires_in_secs",
                format!("{s} is not between 1 and {MAX_PUSH_SECS} seconds"),
            ))
        }
    };
    let rel = check_release(db, app, version).await?;
    let row = PushRow {
        id: crate::util::new_id(),
        app: app.to_string(),
        target_kind: target.kind().into(),
        target: target.name().into(),
        version: rel.version.to_string(),
        created_ms: now,
        created_by: actor.to_string(),
        expires_ms,
    };
    db.insert_push(&row).await?;
    let detail = match expires_in_secs {
        Some(s) => format!("{} for {s} s", row.version),
        None => row.version.clone(),
    };
    db.audit(actor, "push", &format!("{app}/{}", target.label()), &detail)
        .await?;
    Ok(row)
}

/// Removes the pushes of `app` to one device, tag or the whole app (only those of `version`
/// when given); 404 when there is none. Returns how many were removed.
pub async fn unpush(
    db: &Db,
    actor: &str,
    app: &str,
    target: &Target,
    version: Option<&str>,
) -> ApiResult<u64> {
    check_app(db, app).await?;
    let n = db
        .delete_pushes(app, target.kind(), target.name(), version)
        .await?;
    if n == 0 {
        return Err(ApiError::NotFound(format!(
            "no push{} to {} in app {app}",
            version.map(|v| format!(" of {v}")).unwrap_or_default(),
            target.label()
        )));
    }
    db.audit(
        actor,
        "push.remove",
        &format!("{app}/{}", target.label()),
        version.unwrap_or(""),
    )
    .await?;
    Ok(n)
}

/// Halts `r` (running) with `why` on behalf of the server; audited once.
async fn auto_halt(db: &Db, r: &RolloutRow, why: &str, now: i64) -> sqlx::Result<()> {
    if db
        .set_rollout_state(&r.id, &["running"], "halted", Some(why), None, now)
        .await?
    {
        tracing::warn!("rollout {} of {} {} halted: {why}", r.id, r.app, r.version);
        db.audit(SERVER_ACTOR, "rollout.halt", &r.id, why).await?;
        alert_halted(db, r, why, now).await;
    }
    Ok(())
}

/// Opens the `rollout-halted` alert of `r` (one while it stays halted, whoever halted it). An
/// alert that cannot be written is logged: the halt stands either way.
async fn alert_halted(db: &Db, r: &RolloutRow, why: &str, now: i64) {
    let condition = crate::alerts::Condition::RolloutHalted {
        app: r.app.clone(),
        rollout: r.id.clone(),
    };
    let detail = format!("{} {} at {}%: {why}", r.app, r.version, r.percent);
    if let Err(e) = crate::alerts::raise(db, &condition, &detail, now).await {
        tracing::warn!("alert for the halt of rollout {}: {e}", r.id);
    }
}

/// Resolves the `rollout-halted` alert of rollout `id`, if one is open (it resumed or finished).
async fn alert_cleared(db: &Db, id: &str, now: i64) {
    let key = crate::alerts::key_of("rollout-halted", id);
    if let Err(e) = crate::alerts::clear(db, &key, now).await {
        tracing::warn!("resolving the halt alert of rollout {id}: {e}");
    }
}

/// Halts a running rollout whose failures are past its threshold (reloads its counters).
async fn check_failures(db: &Db, id: &str, now: i64) -> sqlx::Result<()> {
    let Some(r) = db.rollout(id).await? else {
        return Ok(());
    };
    if r.state != "running" {
        return Ok(());
    }
    if let Some(why) = halt_reason(
        u64::try_from(r.succeeded).unwrap_or(0),
        u64::try_from(r.failed).unwrap_or(0),
        u64::try_from(r.min_devices).unwrap_or(0),
        r.max_failure_rate,
    ) {
        auto_halt(db, &r, &why, now).await?;
    }
    Ok(())
}

/// Evaluates one unfinished rollout at `now`: halts it if its release was yanked (or left the
/// repository), raises it along its schedule, counts offers past the timeout as failed, and
/// halts it past the failure threshold.
pub async fn evaluate(db: &Db, r: &RolloutRow, releases: &[Release], now: i64) -> sqlx::Result<()> {
    if r.state == "finished" {
        return Ok(());
    }
    if r.state == "running" {
        let rel = Version::parse(&r.version)
            .ok()
            .and_then(|v| releases.iter().find(|x| x.version == v));
        match rel {
            Some(x) if x.yanked.is_some() => {
                let why = format!("yanked: {}", x.yanked.as_deref().unwrap_or(""));
                return auto_halt(db, r, &why, now).await;
            }
            None => {
                return auto_halt(db, r, "release no longer in the repository", now).await;
            }
            Some(_) => {}
        }
        if let (Some(next), Some(every)) = (r.schedule_next_ms, r.schedule_every_ms) {
            if now >= next {
                let cur = u32::try_from(r.percent).unwrap_or(100);
                let later = next.saturating_add(every.max(1000));
                match next_step(&steps_of(r.schedule.as_deref()), cur) {
                    Some(p) => {
                        if db
                            .advance_schedule(&r.id, next, i64::from(p), Some(later), now)
                            .await?
                        {
                            db.audit(
                                SERVER_ACTOR,
                                "rollout.schedule",
                                &r.id,
                                &format!("{} {} {cur}% -> {p}%", r.app, r.version),
                            )
                            .await?;
                        }
                    }
                    None => {
                        db.advance_schedule(&r.id, next, r.percent, None, now)
                            .await?;
                    }
                }
            }
        }
    }
    if db
        .expire_offers(&r.id, now.saturating_sub(r.timeout_ms), now)
        .await?
        > 0
    {
        tracing::info!("rollout {}: offers past the timeout counted failed", r.id);
    }
    check_failures(db, &r.id, now).await
}

/// Evaluates every unfinished rollout (the background task, every [`TICK`]).
pub async fn tick(db: &Db, now: i64) -> sqlx::Result<()> {
    let mut cache: Vec<(String, Vec<Release>)> = Vec::new();
    for r in db.rollouts(None, true).await? {
        if !cache.iter().any(|(a, _)| a == &r.app) {
            let rel = db.releases(&r.app).await?;
            cache.push((r.app.clone(), rel));
        }
        let rel = cache
            .iter()
            .find(|(a, _)| a == &r.app)
            .map(|(_, x)| x.as_slice())
            .unwrap_or(&[]);
        evaluate(db, &r, rel, now).await?;
    }
    Ok(())
}

/// The directive of a check-in: settles the device's pending rollout offers from its
/// results and installed version, picks the pins, pushes and rollouts of the app's `rules`
/// that match it, decides (pin > push > rollout > channel) and records a first rollout offer.
/// The device's part in the app's unfinished rollouts came with its token; its tags are read
/// only when a pin or push targets a tag.
pub async fn directive_for_checkin(
    db: &Db,
    dev: &DeviceAuth,
    c: &CheckIn,
    rules: &AppRules,
    now: i64,
) -> sqlx::Result<Option<Directive>> {
    let releases = rules.releases.as_slice();
    let mut rollouts: Cow<'_, [RolloutRow]> = Cow::Borrowed(&rules.rollouts);
    let parts = &dev.rollouts;
    let mut changed = false;
    // Pending participants settle when their outcome arrives; a participant already counted
    // failed by the timeout is settled again when its outcome arrives late, so a device that
    // was slow, not broken, ends up counted as it really went.
    for p in parts
        .iter()
        .filter(|p| p.result == "pending" || p.result == "timeout")
    {
        let Some(r) = rollouts.iter().find(|r| r.id == p.rollout) else {
            continue;
        };
        let last = c
            .results
            .iter()
            .filter(|x| x.to == r.version)
            .max_by_key(|x| x.seq);
        let outcome = match last {
            Some(x) if x.ok => Some("ok"),
            Some(_) => Some("failed"),
            None if c.version.as_deref() == Some(r.version.as_str()) => Some("ok"),
            None => None,
        };
        if p.result == "timeout" {
            // Only the counts change (a halt stays), so the rollouts need no reload.
            if let Some(o) = outcome {
                db.settle_late(&r.id, &dev.id, o, now).await?;
            }
        } else if let Some(o) = outcome {
            if db.settle(&r.id, &dev.id, o, now).await? {
                check_failures(db, &r.id, now).await?;
                changed = true;
            }
        } else if now.saturating_sub(p.offered_ms) > r.timeout_ms {
            evaluate(db, r, releases, now).await?;
            changed = true;
        }
    }
    for r in rollouts.iter() {
        let due = r.state == "running" && r.schedule_next_ms.is_some_and(|n| now >= n);
        if due {
            evaluate(db, r, releases, now).await?;
            changed = true;
        }
    }
    if changed {
        rollouts = Cow::Owned(db.rollouts(Some(&dev.app), true).await?);
    }
    let tags = if rules.has_tag_rules() {
        db.tags_of_device(&dev.id).await?
    } else {
        Vec::new()
    };
    let facts = DeviceFacts {
        version: c.version.as_deref().and_then(|v| Version::parse(v).ok()),
        channel: c.channel.clone(),
        attrs: c.attrs.clone(),
    };
    let parse = |v: &str| Version::parse(v).ok();
    let mut rules = Rules {
        pins: rules
            .pins_for(&dev.id, &tags)
            .filter_map(|p| {
                Some(PinRule {
                    version: parse(&p.version)?,
                    source: if p.target_kind == "device" {
                        PinSource::Device
                    } else {
                        PinSource::Tag
                    },
                    created_ms: p.created_ms,
                })
            })
            .collect(),
        pushes: rules
            .pushes_for(&dev.id, &tags, now)
            .filter_map(|p| {
                Some(PushRule {
                    version: parse(&p.version)?,
                })
            })
            .collect(),
        rollouts: rollouts
            .iter()
            .filter_map(|r| {
                Some(RolloutRule {
                    id: r.id.clone(),
                    version: parse(&r.version)?,
                    state: RolloutState::parse(&r.state)?,
                    percent: u32::try_from(r.percent.clamp(0, 100)).unwrap_or(0),
                    offered: parts.iter().any(|p| p.rollout == r.id),
                    capped: false,
                })
            })
            .collect(),
    };
    let mut d = decide_with(&facts, &dev.id, releases, &rules);
    let new_offer = |d: &Option<Directive>, rules: &Rules| -> Option<String> {
        let d = d.as_ref()?;
        let id = d.rollout.as_ref()?;
        (d.reason == DirectiveReason::Rollout
            && rules.rollouts.iter().any(|r| &r.id == id && !r.offered))
        .then(|| id.clone())
    };
    // Each turn either makes the offer (or finds it made) and stops, or marks one more rollout
    // capped and decides again, so this ends.
    while let Some(id) = new_offer(&d, &rules) {
        let cap = rollouts
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| Some((r.max_per_period?, now.saturating_sub(r.period_ms?))));
        // A read first: while the cap is reached, the devices it holds back cost no write.
        let full = match cap {
            Some((max, since)) => db.offered_since(&id, since).await? >= max,
            None => false,
        };
        if full || db.offer(&id, &dev.id, now, cap).await? == Offer::Capped {
            for rr in rules.rollouts.iter_mut().filter(|rr| rr.id == id) {
                rr.capped = true;
            }
            d = decide_with(&facts, &dev.id, releases, &rules);
            continue;
        }
        break;
    }
    Ok(d)
}
