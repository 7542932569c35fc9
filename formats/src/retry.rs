//! The one exponential backoff of the workspace, shared by the HTTP fetcher
//! (`patch_apply::fetch::http`), the fleet agent's check-in loop (`patch_apply::agent::policy`)
//! and the fleet server's alert delivery (`patch_server::alerts::deliver`).
//!
//! A function of the attempt number rather than a retry loop (such as `backon`'s
//! `ExponentialBuilder`): the alert queue keeps its attempt count in the database and computes
//! each row's next time from it, and each caller lets a server's `Retry-After` decide in its
//! own way (followed when short, or as a minimum), which needs the computed wait as a value.

use std::time::Duration;

/// The wait after `attempt` failures (1 = the first): `base * 2^(attempt - 1)`, at most `cap`
/// (and `cap` for any attempt count, however large).
pub fn exponential(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << doublings).min(cap)
}

/// "Equal jitter": half of `d` fixed, the other half scaled by `unit` (a random number in
/// 0..1), so clients that failed together do not retry in lockstep.
pub fn equal_jitter(d: Duration, unit: f64) -> Duration {
    let half = d / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// `d` moved by up to 10 % either way; `unit` in 0..1 picks where.
pub fn spread(d: Duration, unit: f64) -> Duration {
    d.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

/// A random number in 0..1 from the OS (0.5 if it has none).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let (base, cap) = (Duration::from_secs(30), Duration::from_secs(3600));
        let got: Vec<u64> = (1..=9)
            .map(|a| exponential(a, base, cap).as_secs())
            .collect();
        assert_eq!(got, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(exponential(0, base, cap), base);
        assert_eq!(exponential(u32::MAX, base, cap), cap);
        assert_eq!(
            exponential(u32::MAX, Duration::MAX, Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let d = Duration::from_millis(1000);
        assert_eq!(equal_jitter(d, 0.0), Duration::from_millis(500));
        assert_eq!(equal_jitter(d, 1.0), d);
        assert_eq!(equal_jitter(d, 7.0), d);
        assert_eq!(spread(d, 0.0), Duration::from_millis(900));
        assert_eq!(spread(d, 1.0), Duration::from_millis(1100));
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }
}
