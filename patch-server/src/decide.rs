//! Which release a device should be on: a pure function of plain data, so that every rule is
//! a table-driven unit test. Fleet 3 adds pins and rollouts here, ahead of the channel rule
//! (pin > rollout > channel); the handlers only load, call [`decide`] and store.

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

/// The release a device should be on, or `None` (stay where you are).
///
/// Channel rule: the newest release on the device's channel whose targeting the device's
/// attributes meet and that is not yanked. A device already ahead of that release gets no
/// directive (the channel rule never asks for a downgrade), unless the release it runs was
/// yanked in signed metadata: then it is directed to that release although it is older, and
/// the device accepts because the yank is signed, not because the server asked.
/// `releases` may come in any order.
pub fn decide(facts: &DeviceFacts, releases: &[Release]) -> Option<Directive> {
    let best = releases
        .iter()
        .filter(|r| eligible(r, facts))
        .max_by(|a, b| a.version.cmp(&b.version))?;
    let runs_yanked = facts.version.as_ref().is_some_and(|v| {
        releases
            .iter()
            .any(|r| &r.version == v && r.yanked.is_some())
    });
    if !runs_yanked && facts.version.as_ref().is_some_and(|v| v > &best.version) {
        return None;
    }
    Some(Directive {
        version: best.version.to_string(),
        reason: DirectiveReason::Channel,
        rollout: None,
    })
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
}
