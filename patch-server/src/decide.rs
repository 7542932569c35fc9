//! Which release a device should be on: a pure function of plain data, so that every rule is
//! a table-driven unit test; the handlers only load, call [`decide_with`] and store.
//!
//! **Precedence: pin > push > rollout > channel default.** The first rule that names a usable
//! release wins:
//!
//! 1. *Pin*: the device, or a tag it has, is held at a release ([`PinRule`]). A device pin
//!    beats a tag pin; among tag pins the newest wins. The pinned release is named even when
//!    the device runs a newer one (the device downgrades only if its own policy allows).
//! 2. *Push*: a one-off "go to V now" for a device, a tag or the whole app ([`PushRule`]). It
//!    applies while the device runs a release older than V (or none it recognises); once the
//!    device is on V or newer it no longer applies. Among several, the newest release wins.
//!    A pin still wins over a push.
//! 3. *Rollout*: a running staged rollout ([`RolloutRule`]) whose release the channel rule
//!    would allow for this device (channel and targeting), that the device is behind, and whose
//!    hash bucket ([`bucket`]) is below `percent * 100`. A device not offered yet is not offered
//!    while the rollout's rate cap is reached. Among several, the newest release wins.
//! 4. *Channel default*: the newest release on the device's channel whose targeting the
//!    device meets, **leaving out releases under a rollout that is not finished** (running or
//!    halted): those reach a device only through their rollout, a push or a pin.
//!
//! Pins, pushes and rollouts are explicit choices of an administrator: pins and pushes ignore
//! channel and targeting. None of them ever names a yanked release or one the verified
//! repository does not offer: such a rule is skipped and the next one decides.

use std::collections::BTreeMap;

use formats::fleet::{Directive, DirectiveReason};
use formats::Version;

/// A release the app's verified repository offers (as cached in the `releases` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Its version.
    pub version: Version,
    /// Its channel (`stable` when the repository names none).
    pub channel: String,
    /// Targeting constraints: every key must be among the device's attributes with this value.
    pub targeting: BTreeMap<String, String>,
    /// Why the release engineer yanked it in signed metadata, if they did.
    pub yanked: Option<String>,
}

/// What [`decide`] needs to know about a device.
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    /// Installed version, if the device recognised one.
    pub version: Option<Version>,
    /// Channel it follows (`None` = `stable`).
    pub channel: Option<String>,
    /// Its targeting attributes.
    pub attrs: BTreeMap<String, String>,
}

/// Whether a device with `facts` may be directed to `r` by the channel rule.
pub fn eligible(r: &Release, facts: &DeviceFacts) -> bool {
    let channel = facts.channel.as_deref().unwrap_or("stable");
    r.yanked.is_none()
        && r.channel == channel
        && r.targeting
            .iter()
            .all(|(k, v)| facts.attrs.get(k) == Some(v))
}

/// The release a device should be on by the channel rule alone (no pins, pushes or
/// rollouts): [`decide_with`] with empty [`Rules`].
pub fn decide(facts: &DeviceFacts, releases: &[Release]) -> Option<Directive> {
    decide_with(facts, "", releases, &Rules::default())
}

/// Where a pin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinSource {
    /// The device itself.
    Device,
    /// A tag the device has.
    Tag,
}

/// A pin that matches the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRule {
    /// The release it holds the device at.
    pub version: Version,
    /// Device or tag pin.
    pub source: PinSource,
    /// When it was made (unix ms): the newest tag pin wins.
    pub created_ms: i64,
}

/// A push that matches the device (device, tag or app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRule {
    /// The release pushed.
    pub version: Version,
}

/// State of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    /// Offering its release to the devices its percentage selects.
    Running,
    /// Stopped (by an administrator, by the failure threshold, or by a yank): offers nothing,
    /// and its release stays out of the channel rule.
    Halted,
    /// Done: offers nothing, its release is an ordinary channel release again.
    Finished,
}

impl RolloutState {
    /// `running`, `halted` or `finished`.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Halted => "halted",
            RolloutState::Finished => "finished",
        }
    }

    /// Parses [`RolloutState::as_str`].
    pub fn parse(s: &str) -> Option<RolloutState> {
        match s {
            "running" => Some(RolloutState::Running),
            "halted" => Some(RolloutState::Halted),
            "finished" => Some(RolloutState::Finished),
            _ => None,
        }
    }
}

/// A rollout of the device's app, as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRule {
    /// Rollout id (also the hash seed).
    pub id: String,
    /// Its release.
    pub version: Version,
    /// Its state.
    pub state: RolloutState,
    /// Percentage of eligible devices it selects, 0..=100.
    pub percent: u32,
    /// Whether this device was already offered the release by this rollout.
    pub offered: bool,
    /// Whether the rate cap forbids offering it to a device not offered yet.
    pub capped: bool,
}

/// Everything besides the channel rule that may decide for one device.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Pins matching the device (its own and its tags').
    pub pins: Vec<PinRule>,
    /// Pushes matching the device.
    pub pushes: Vec<PushRule>,
    /// Every rollout of the app that is not finished (and finished ones may be included).
    pub rollouts: Vec<RolloutRule>,
}

/// Rollout buckets: a device is in a rollout at `p` % when its bucket is below `p * 100`.
pub const BUCKETS: u32 = 10_000;

/// The device's bucket in a rollout, `0..BUCKETS`: the first 8 bytes of
/// `BLAKE3(rollout_id ":" device_id)` as a little-endian u64, modulo [`BUCKETS`]. Stable, so
/// raising the percentage only adds devices, and a device enrolling later falls in by the
/// same rule.
pub fn bucket(rollout_id: &str, device_id: &str) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(rollout_id.as_bytes());
    h.update(b":");
    h.update(device_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u32::try_from(u64::from_le_bytes(first) % u64::from(BUCKETS)).unwrap_or(0)
}

/// Whether the device falls in a rollout at `percent` (clamped to 100).
pub fn selected(rollout_id: &str, device_id: &str, percent: u32) -> bool {
    bucket(rollout_id, device_id) < percent.min(100) * 100
}

/// Whether `v` is offered by the verified repository and not yanked.
fn usable<'a>(releases: &'a [Release], v: &Version) -> Option<&'a Release> {
    releases
        .iter()
        .find(|r| &r.version == v && r.yanked.is_none())
}

fn behind(facts: &DeviceFacts, v: &Version) -> bool {
    match &facts.version {
        Some(have) => have < v,
        None => true,
    }
}

/// The release a device should be on, or `None` (stay where you are), by the precedence
/// pin > push > rollout > channel default (see the module documentation). `device_id` seeds
/// the rollout buckets. `releases` and the rules may come in any order.
///
/// Channel rule: the newest release on the device's channel whose targeting the device's
/// attributes meet, that is not yanked and not under an unfinished rollout. A device already
/// ahead of that release gets no directive (the channel rule never asks for a downgrade),
/// unless the release it runs was yanked in signed metadata: then it is directed to that
/// release although it is older, and the device accepts because the yank is signed, not
/// because the server asked.
pub fn decide_with(
    facts: &DeviceFacts,
    device_id: &str,
    releases: &[Release],
    rules: &Rules,
) -> Option<Directive> {
    let directive = |v: &Version, reason, rollout: Option<&str>| Directive {
        version: v.to_string(),
        reason,
        rollout: rollout.map(str::to_string),
    };
    // 1. Pin: the device's own, else the newest tag pin.
    let pin = rules
        .pins
        .iter()
        .filter(|p| usable(releases, &p.version).is_some())
        .max_by_key(|p| (p.source == PinSource::Device, p.created_ms));
    if let Some(p) = pin {
        return Some(directive(&p.version, DirectiveReason::Pin, None));
    }
    // 2. Push: while the device is behind it.
    let push = rules
        .pushes
        .iter()
        .filter(|p| usable(releases, &p.version).is_some() && behind(facts, &p.version))
        .max_by(|a, b| a.version.cmp(&b.version));
    if let Some(p) = push {
        return Some(directive(&p.version, DirectiveReason::Push, None));
    }
    // 3. Rollout.
    let rollout = rules
        .rollouts
        .iter()
        .filter(|r| r.state == RolloutState::Running)
        .filter(|r| usable(releases, &r.version).is_some_and(|rel| eligible(rel, facts)))
        .filter(|r| behind(facts, &r.version))
        .filter(|r| selected(&r.id, device_id, r.percent))
        .filter(|r| r.offered || !r.capped)
        .max_by(|a, b| a.version.cmp(&b.version));
    if let Some(r) = rollout {
        return Some(directive(&r.version, DirectiveReason::Rollout, Some(&r.id)));
    }
    // 4. Channel default, without releases held by an unfinished rollout.
    let held = |v: &Version| {
        rules
            .rollouts
            .iter()
            .any(|r| &r.version == v && r.state != RolloutState::Finished)
    };
    let best = releases
        .iter()
        .filter(|r| eligible(r, facts) && !held(&r.version))
        .max_by(|a, b| a.version.cmp(&b.version))?;
    let runs_yanked = facts.version.as_ref().is_some_and(|v| {
        releases
            .iter()
            .any(|r| &r.version == v && r.yanked.is_some())
    });
    if !runs_yanked && facts.version.as_ref().is_some_and(|v| v > &best.version) {
        return None;
    }
    Some(directive(&best.version, DirectiveReason::Channel, None))
}

/// Whether a rollout's failures stop it: `failed / (succeeded + failed) > max_failure_rate`
/// once `succeeded + failed >= min_devices` (devices that timed out count in `failed`).
/// Returns the halt reason, naming the numbers.
pub fn halt_reason(
    succeeded: u64,
    failed: u64,
    min_devices: u64,
    max_failure_rate: f64,
) -> Option<String> {
    let finished = succeeded.saturating_add(failed);
    if finished == 0 || finished < min_devices {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = failed as f64 / finished as f64;
    (rate > max_failure_rate).then(|| {
        format!(
            "failure rate {failed}/{finished} = {:.1}% exceeds {:.1}% (min {min_devices} devices)",
            rate * 100.0,
            max_failure_rate * 100.0
        )
    })
}

/// The next percentage of a schedule after `current`: the first step above it, if any.
pub fn next_step(steps: &[u32], current: u32) -> Option<u32> {
    steps.iter().copied().find(|&s| s > current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &str, channel: &str, targeting: &[(&str, &str)]) -> Release {
        Release {
            version: Version::parse(v).expect("version"),
            channel: channel.into(),
            targeting: targeting
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            yanked: None,
        }
    }

    fn dev(version: Option<&str>, channel: Option<&str>, attrs: &[(&str, &str)]) -> DeviceFacts {
        DeviceFacts {
            version: version.map(|v| Version::parse(v).expect("version")),
            channel: channel.map(str::to_string),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn channel_rule_table() {
        let releases = vec![
            rel("1.0.0", "stable", &[]),
            rel("1.2.0", "stable", &[("region", "eu")]),
            rel("1.1.0", "stable", &[]),
            rel("2.0.0-beta.1", "beta", &[]),
        ];
        let cases: &[(DeviceFacts, Option<&str>)] = &[
            (dev(Some("1.0.0"), None, &[]), Some("1.1.0")),
            (dev(Some("1.0.0"), None, &[("region", "eu")]), Some("1.2.0")),
            (
                dev(Some("1.0.0"), Some("stable"), &[("region", "us")]),
                Some("1.1.0"),
            ),
            (dev(None, Some("beta"), &[]), Some("2.0.0-beta.1")),
            (dev(Some("1.1.0"), None, &[]), Some("1.1.0")),
            // Ahead of its channel: no downgrade by the channel rule.
            (dev(Some("1.5.0"), None, &[]), None),
            (dev(Some("1.0.0"), Some("nightly"), &[]), None),
        ];
        for (facts, want) in cases {
            let got = decide(facts, &releases).map(|d| d.version);
            assert_eq!(got.as_deref(), *want, "{facts:?}");
        }
        assert_eq!(decide(&dev(None, None, &[]), &[]), None);
    }

    #[test]
    fn a_yanked_release_is_never_named_and_its_devices_move_back() {
        let mut releases = vec![
            rel("1.0.0", "stable", &[]),
            rel("1.1.0", "stable", &[]),
            rel("1.2.0", "stable", &[]),
        ];
        releases[2].yanked = Some("corrupts saves".into());
        let name = |v: Option<&str>| decide(&dev(v, None, &[]), &releases).map(|d| d.version);
        assert_eq!(name(Some("1.0.0")).as_deref(), Some("1.1.0"));
        assert_eq!(name(Some("1.1.0")).as_deref(), Some("1.1.0"));
        // Running the yanked release: back to the newest that is not yanked.
        assert_eq!(name(Some("1.2.0")).as_deref(), Some("1.1.0"));
        // Ahead of every release and not on a yanked one: nothing.
        assert_eq!(name(Some("2.0.0")), None);
    }

    fn rollout(id: &str, v: &str, state: RolloutState, percent: u32) -> RolloutRule {
        RolloutRule {
            id: id.into(),
            version: Version::parse(v).expect("version"),
            state,
            percent,
            offered: false,
            capped: false,
        }
    }

    fn pin(v: &str, source: PinSource, created_ms: i64) -> PinRule {
        PinRule {
            version: Version::parse(v).expect("version"),
            source,
            created_ms,
        }
    }

    fn push(v: &str) -> PushRule {
        PushRule {
            version: Version::parse(v).expect("version"),
        }
    }

    /// A device id that is (`inside`) or is not in rollout `id` at `percent`.
    fn device_in(id: &str, percent: u32, inside: bool) -> String {
        (0..10_000)
            .map(|n| format!("{n:032x}"))
            .find(|d| selected(id, d, percent) == inside)
            .expect("some device")
    }

    #[test]
    fn precedence_table_pin_push_rollout_channel() {
        let mut releases = vec![
            rel("1.0.0", "stable", &[]),
            rel("2.0.0", "stable", &[]),
            rel("3.0.0", "stable", &[]),
            rel("4.0.0", "stable", &[]),
        ];
        releases[3].yanked = Some("bad".into());
        let r2 = rollout("r2", "2.0.0", RolloutState::Running, 50);
        let inside = device_in("r2", 50, true);
        let outside = device_in("r2", 50, false);
        let v1 = dev(Some("1.0.0"), None, &[]);
        let with = |pins: Vec<PinRule>, pushes: Vec<PushRule>, rollouts: Vec<RolloutRule>| Rules {
            pins,
            pushes,
            rollouts,
        };
        use DirectiveReason::*;
        type Case = (
            &'static str,
            DeviceFacts,
            String,
            Rules,
            Option<(&'static str, DirectiveReason)>,
        );
        let cases: Vec<Case> = vec![
            // No rules: channel default, 3.0.0 (4.0.0 is yanked).
            (
                "channel",
                v1.clone(),
                inside.clone(),
                Rules::default(),
                Some(("3.0.0", Channel)),
            ),
            // A halted rollout holds 3.0.0 back from the channel rule.
            (
                "held",
                v1.clone(),
                outside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![rollout("r3", "3.0.0", RolloutState::Halted, 100)],
                ),
                Some(("2.0.0", Channel)),
            ),
            // Inside the rollout: its release; outside: channel without held 2.0.0 and 3.0.0.
            (
                "rollout in",
                v1.clone(),
                inside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![r2.clone(), rollout("r3", "3.0.0", RolloutState::Halted, 0)],
                ),
                Some(("2.0.0", Rollout)),
            ),
            (
                "rollout out",
                v1.clone(),
                outside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![r2.clone(), rollout("r3", "3.0.0", RolloutState::Halted, 0)],
                ),
                Some(("1.0.0", Channel)),
            ),
            // Push beats rollout; pin beats push.
            (
                "push",
                v1.clone(),
                inside.clone(),
                with(vec![], vec![push("3.0.0")], vec![r2.clone()]),
                Some(("3.0.0", Push)),
            ),
            (
                "pin",
                v1.clone(),
                inside.clone(),
                with(
                    vec![pin("1.0.0", PinSource::Tag, 1)],
                    vec![push("3.0.0")],
                    vec![r2.clone()],
                ),
                Some(("1.0.0", Pin)),
            ),
            // Device pin beats a newer tag pin; the newest tag pin beats older ones.
            (
                "device pin",
                v1.clone(),
                inside.clone(),
                with(
                    vec![
                        pin("2.0.0", PinSource::Device, 1),
                        pin("3.0.0", PinSource::Tag, 9),
                    ],
                    vec![],
                    vec![],
                ),
                Some(("2.0.0", Pin)),
            ),
            (
                "newest tag pin",
                v1.clone(),
                inside.clone(),
                with(
                    vec![
                        pin("3.0.0", PinSource::Tag, 1),
                        pin("2.0.0", PinSource::Tag, 9),
                    ],
                    vec![],
                    vec![],
                ),
                Some(("2.0.0", Pin)),
            ),
            // A pin names an older release than installed (the device decides on downgrades).
            (
                "pin back",
                dev(Some("3.0.0"), None, &[]),
                inside.clone(),
                with(vec![pin("1.0.0", PinSource::Device, 1)], vec![], vec![]),
                Some(("1.0.0", Pin)),
            ),
            // Yanked or unknown releases are never named: the rule is skipped.
            (
                "yanked pin",
                v1.clone(),
                inside.clone(),
                with(
                    vec![
                        pin("4.0.0", PinSource::Device, 1),
                        pin("9.0.0", PinSource::Device, 2),
                    ],
                    vec![],
                    vec![],
                ),
                Some(("3.0.0", Channel)),
            ),
            (
                "yanked push",
                v1.clone(),
                inside.clone(),
                with(vec![], vec![push("4.0.0")], vec![]),
                Some(("3.0.0", Channel)),
            ),
            (
                "yanked rollout",
                v1.clone(),
                inside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![rollout("r2", "4.0.0", RolloutState::Running, 100)],
                ),
                Some(("3.0.0", Channel)),
            ),
            // A push is one-off: a device on it or past it is not sent back.
            (
                "push done",
                dev(Some("3.0.0"), None, &[]),
                inside.clone(),
                with(vec![], vec![push("2.0.0")], vec![]),
                Some(("3.0.0", Channel)),
            ),
            // Halted: nothing new is offered, even to a device offered before.
            (
                "halted",
                v1.clone(),
                inside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![
                        RolloutRule {
                            offered: true,
                            ..rollout("r2", "2.0.0", RolloutState::Halted, 50)
                        },
                        rollout("r3", "3.0.0", RolloutState::Halted, 0),
                    ],
                ),
                Some(("1.0.0", Channel)),
            ),
            // Finished: the release is an ordinary channel release again.
            (
                "finished",
                v1.clone(),
                outside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![
                        rollout("r2", "2.0.0", RolloutState::Finished, 50),
                        rollout("r3", "3.0.0", RolloutState::Halted, 0),
                    ],
                ),
                Some(("2.0.0", Channel)),
            ),
            // Rate cap: a device not offered yet waits; one offered before keeps its offer.
            (
                "capped",
                v1.clone(),
                inside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![
                        RolloutRule {
                            capped: true,
                            ..r2.clone()
                        },
                        rollout("r3", "3.0.0", RolloutState::Halted, 0),
                    ],
                ),
                Some(("1.0.0", Channel)),
            ),
            (
                "capped but offered",
                v1.clone(),
                inside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![RolloutRule {
                        capped: true,
                        offered: true,
                        ..r2.clone()
                    }],
                ),
                Some(("2.0.0", Rollout)),
            ),
            // Already on the rollout's release (or past it): not a participant.
            (
                "on it",
                dev(Some("2.0.0"), None, &[]),
                inside.clone(),
                with(
                    vec![],
                    vec![],
                    vec![r2.clone(), rollout("r3", "3.0.0", RolloutState::Halted, 0)],
                ),
                None,
            ),
            // The rollout follows the channel rule: a beta device is not in a stable rollout.
            (
                "other channel",
                dev(Some("1.0.0"), Some("beta"), &[]),
                inside.clone(),
                with(vec![], vec![], vec![r2.clone()]),
                None,
            ),
        ];
        for (name, facts, id, rules, want) in cases {
            let got = decide_with(&facts, &id, &releases, &rules);
            let got = got.map(|d| {
                if d.reason == Rollout {
                    assert_eq!(d.rollout.as_deref(), Some("r2"), "{name}");
                } else {
                    assert_eq!(d.rollout, None, "{name}");
                }
                (d.version, d.reason)
            });
            let want = want.map(|(v, r)| (v.to_string(), r));
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn raising_the_percentage_only_adds_devices() {
        let ids: Vec<String> = (0..2000).map(|n| format!("{n:032x}")).collect();
        let mut prev: Vec<&String> = Vec::new();
        for p in 0..=100 {
            let now: Vec<&String> = ids.iter().filter(|d| selected("ro", d, p)).collect();
            assert!(
                prev.iter().all(|d| now.contains(d)),
                "{p}% dropped a device"
            );
            prev = now;
        }
        assert_eq!(prev.len(), ids.len(), "100% is everyone");
        assert!(ids.iter().all(|d| !selected("ro", d, 0)), "0% is no one");
    }

    #[test]
    fn buckets_are_about_uniform_and_differ_between_rollouts() {
        let n = 20_000u32;
        let mut counts = [0u32; 10];
        let mut same = 0;
        for i in 0..n {
            let d = format!("{i:032x}");
            let b = bucket("rollout-a", &d);
            assert!(b < BUCKETS);
            counts[(b / 1000) as usize] += 1;
            if selected("rollout-a", &d, 25) == selected("rollout-b", &d, 25) {
                same += 1;
            }
        }
        for c in counts {
            // 2000 expected per decile; 5 sigma is about 210.
            assert!((1790..=2210).contains(&c), "{counts:?}");
        }
        // Independent seeds: agreement 0.25^2 + 0.75^2 = 62.5% of devices.
        assert!((11_900..=13_100).contains(&same), "{same}");
    }

    #[test]
    fn halt_and_schedule_table() {
        let cases = [
            (0, 0, 20, 0.05, false),
            (10, 9, 20, 0.05, false), // 19 finished < min 20
            (19, 1, 20, 0.05, false), // 5% is not above 5%
            (18, 2, 20, 0.05, true),
            (0, 3, 3, 0.5, true),
            (7, 3, 10, 0.2, true),
            (8, 2, 10, 0.2, false),
        ];
        for (ok, failed, min, rate, halts) in cases {
            let r = halt_reason(ok, failed, min, rate);
            assert_eq!(r.is_some(), halts, "{ok} {failed} {min} {rate}: {r:?}");
            if let Some(r) = r {
                assert!(r.contains(&format!("{failed}/{}", ok + failed)), "{r}");
            }
        }
        let steps = [5, 25, 50, 100];
        assert_eq!(next_step(&steps, 0), Some(5));
        assert_eq!(next_step(&steps, 5), Some(25));
        assert_eq!(next_step(&steps, 30), Some(50));
        assert_eq!(next_step(&steps, 100), None);
    }
}
