//! Release versions: semantic versions with semver's ordering (docs/format.md §4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A release version such as `1.2.0` or `2.0.0-beta.1`, ordered by semver rules
/// (a pre-release sorts before its release; build metadata is refused, it has no order).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(semver::Version);

impl Version {
    /// Parses and checks a version string.
    pub fn parse(s: &str) -> Result<Self> {
        let v = semver::Version::parse(s).map_err(|e| Error::BadVersion {
            value: s.to_string(),
            reason: e.to_string(),
        })?;
        if !v.build.is_empty() {
            return Err(Error::BadVersion {
                value: s.to_string(),
                reason: "build metadata (+...) has no order; use a pre-release or a new version"
                    .into(),
            });
        }
        Ok(Version(v))
    }

    /// The underlying semver value.
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl FromStr for Version {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Version::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_ordering() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.2.0") < v("1.10.0"));
        assert!(v("2.0.0-beta.1") < v("2.0.0"));
        assert!(v("2.0.0-beta.2") < v("2.0.0-beta.10"));
        assert!(v("2.0.0-alpha") < v("2.0.0-beta"));
        assert!(Version::parse("1.2").is_err());
        assert!(Version::parse("1.0.0+build5").is_err());
    }
}
