//! The agent's timing and install rules: the install policy (`now`, a maintenance window in
//! local time, or `ask`), the jittered poll interval and the backoff while the server is
//! unreachable. Pure functions of their inputs (the clock is passed in), so they are tested
//! without waiting.

use std::time::Duration;

/// A time of day in minutes since midnight (0..1440).
pub type Minute = u32;

/// A daily maintenance window in local time, `HH:MM-HH:MM`; it may wrap past midnight
/// (`22:00-04:00`). The start is inside, the end is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First minute inside.
    pub start: Minute,
    /// First minute after.
    pub end: Minute,
}

impl Window {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<Window, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("window {s:?} is not HH:MM-HH:MM"))?;
        let w = Window {
            start: parse_hhmm(a)?,
            end: parse_hhmm(b)?,
        };
        if w.start == w.end {
            return Err(format!("window {s:?} is empty"));
        }
        Ok(w)
    }

    /// Whether minute `m` of the day is inside the window.
    pub fn contains(&self, m: Minute) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// Minutes from `m` until the window opens (0 when inside).
    pub fn minutes_until_open(&self, m: Minute) -> u32 {
        if self.contains(m) {
            0
        } else {
            (self.start + 1440 - m) % 1440
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Parses `HH:MM` (24-hour) into minutes since midnight.
pub fn parse_hhmm(s: &str) -> Result<Minute, String> {
    let bad = || format!("{s:?} is not a time of day HH:MM");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// When the agent installs the release its server names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallPolicy {
    /// As soon as the server names it.
    Now,
    /// Only inside this daily window (local time); `update-now` overrides it.
    Window(Window),
    /// The app decides: the agent hands it an [`crate::agent::Offer`].
    Ask,
}

impl InstallPolicy {
    /// Parses `now`, `window=HH:MM-HH:MM` or `ask`.
    pub fn parse(s: &str) -> Result<InstallPolicy, String> {
        match s {
            "now" => Ok(InstallPolicy::Now),
            "ask" => Ok(InstallPolicy::Ask),
            _ => match s.strip_prefix("window=") {
                Some(w) => Ok(InstallPolicy::Window(Window::parse(w)?)),
                None => Err(format!(
                    "install policy {s:?} is not now, ask or window=HH:MM-HH:MM"
                )),
            },
        }
    }
}

/// Shortest poll interval the agent accepts from a server or a command.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest poll interval the agent accepts from a server or a command (a day).
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// `d` brought into [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
pub fn clamp_interval(d: Duration) -> Duration {
    d.clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// `base` moved by up to 10 % either way; `unit` in 0..1 picks where (a random number).
pub fn jittered(base: Duration, unit: f64) -> Duration {
    formats::retry::spread(base, unit)
}

/// The wait after `failures` failed check-ins in a row (1 = the first): `initial` doubled for
/// each further failure, at most `cap`, then jittered; never shorter than the server's
/// `retry_after`.
pub fn backoff(
    failures: u32,
    initial: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let d = formats::retry::exponential(failures, initial, cap);
    let d = jittered(d, unit).min(cap);
    match retry_after {
        Some(r) => d.max(r.min(MAX_INTERVAL)),
        None => d,
    }
}

/// A random number in 0..1 from the OS (0.5 if it has none).
pub fn random_unit() -> f64 {
    formats::retry::random_unit()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap_midnight() {
        let w = Window::parse("02:00-05:00").unwrap();
        assert!(w.contains(120) && w.contains(299) && !w.contains(300) && !w.contains(60));
        assert_eq!(w.minutes_until_open(60), 60);
        assert_eq!(w.minutes_until_open(301), 1440 - 301 + 120);
        let n = Window::parse("22:00-04:00").unwrap();
        assert!(n.contains(23 * 60) && n.contains(10) && !n.contains(12 * 60));
        assert_eq!(n.to_string(), "22:00-04:00");
        for bad in ["2-5", "25:00-01:00", "01:00-01:00", "01:60-02:00", ""] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            InstallPolicy::parse("window=02:00-05:00").unwrap(),
            InstallPolicy::Window(w)
        );
        assert!(InstallPolicy::parse("later").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(2), s(60), None, 0.5), s(2));
        assert_eq!(backoff(3, s(2), s(60), None, 0.5), s(8));
        assert_eq!(backoff(30, s(2), s(60), None, 1.0), s(60));
        assert_eq!(backoff(1, s(2), s(60), Some(s(30)), 0.5), s(30));
        let j = jittered(s(100), 0.0);
        assert_eq!(j, s(90));
        assert!(random_unit() < 1.0);
    }
}
