//! Times as TUF writes them (`2030-01-01T00:00:00Z`) and durations as users type them.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// The current UTC time, truncated to whole seconds.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

/// Formats `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds), the form TUF requires.
pub fn format_tuf(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses a TUF time; refuses anything but `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_tuf(s: &str) -> Result<OffsetDateTime> {
    let ok_shape = s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T';
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .filter(|_| ok_shape)
        .ok_or_else(|| Error::invalid("expires", format!("{s:?} is not YYYY-MM-DDTHH:MM:SSZ")))?;
    Ok(t)
}

/// Parses a duration such as `30d`, `12h`, `90m`, `2s` or `1w`.
pub fn parse_duration(s: &str) -> Result<time::Duration> {
    let d = humantime::parse_duration(s).map_err(|e| {
        Error::invalid(
            "duration",
            format!("{s:?}: {e} (expected e.g. 30d, 12h, 2s)"),
        )
    })?;
    time::Duration::try_from(d).map_err(|e| Error::invalid("duration", format!("{s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuf_time_round_trip() {
        let t = parse_tuf("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(format_tuf(t), "2030-01-02T03:04:05Z");
        assert!(parse_tuf("2030-01-02T03:04:05+00:00").is_err());
        assert!(parse_tuf("2030-01-02T03:04:05.5Z").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), time::Duration::days(30));
        assert_eq!(parse_duration("2s").unwrap(), time::Duration::seconds(2));
        assert!(parse_duration("soon").is_err());
    }
}
