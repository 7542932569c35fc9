//! Test-only pause points, so that end-to-end tests can stop a real process at a precise step
//! (to SIGKILL it there, or to change something under it) instead of guessing with timers.
//!
//! Inert unless the environment sets `PATCHKIT_TEST_PAUSE` to a point's name. At that point the
//! process prints `test pause: NAME` to stderr and waits until the file named by
//! `PATCHKIT_TEST_RESUME` exists (without it: until it is killed, at most 10 minutes).
//! No program or user sets these variables; they exist for `tests/tests/*.rs` only. Public
//! (hidden) so that `patch-apply` shares the one mechanism.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn config() -> &'static Option<(String, Option<PathBuf>)> {
    static C: OnceLock<Option<(String, Option<PathBuf>)>> = OnceLock::new();
    C.get_or_init(|| {
        let point = std::env::var("PATCHKIT_TEST_PAUSE").ok()?;
        let resume = std::env::var_os("PATCHKIT_TEST_RESUME").map(PathBuf::from);
        Some((point, resume))
    })
}

/// Whether any pause point is set (cheap; lets callers skip building point names).
pub fn active() -> bool {
    config().is_some()
}

/// Pauses here if the environment names `point`.
pub fn pause(point: &str) {
    let Some((want, resume)) = config() else {
        return;
    };
    if want != point {
        return;
    }
    eprintln!("test pause: {point}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(600) {
        if resume.as_ref().is_some_and(|f| f.exists()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
