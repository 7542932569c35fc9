//! Round trips of the bounded-memory (windowed) split-diff encoder: encode window by window
//! with patch_create::window, decode with the unchanged client decoder
//! (patch_apply::decode::apply_split), compare bytes. Tiny windows make the multi-window path
//! run on small inputs.

use formats::Pin;
use patch_create::encode::{self, Chosen, EncodeOptions};
use patch_create::window::{split_diff_windowed, WindowPlan};
use proptest::prelude::*;

/// Applies the split-diff `member` to `old` with the client's decoder.
fn apply(old: &[u8], new_size: u64, member: &[u8]) -> patch_apply::Result<Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("old");
    let m = dir.path().join("member");
    std::fs::write(&src, old).expect("write old");
    std::fs::write(&m, member).expect("write member");
    let mut out = Vec::new();
    patch_apply::decode::apply_split("t", (&m, 0), member.len() as u64, &src, new_size, &mut out)?;
    Ok(out)
}

fn windowed(old: &[u8], new: &[u8], plan: &WindowPlan) -> Vec<u8> {
    split_diff_windowed(&old, &new, plan, 3, false)
        .expect("windowed diff")
        .expect("never gives up")
}

fn plan(new_window: u64, margin: u64, jobs: usize) -> WindowPlan {
    WindowPlan {
        new_window,
        margin,
        jobs,
    }
}

/// Deterministic pseudo-random bytes with some repetition, so diffs find matches.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 7 == 0 {
                b' '
            } else {
                (x % 23) as u8 + b'a'
            }
        })
        .collect()
}

/// `old` with an insertion near the front, a deletion in the middle and changed bytes.
fn edit(old: &[u8], seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    if new.len() > 10 {
        let n = new.len();
        new[n / 3] ^= 0x55;
        new.drain(n / 2..(n / 2 + n / 20).min(n));
        let ins = bytes(n / 10 + 1, seed);
        new.splice(n / 10..n / 10, ins);
    }
    new
}

#[test]
fn windowed_split_diff_round_trips_edge_sizes() {
    for (old_n, new_n) in [(0usize, 10usize), (10, 0), (1, 1), (100, 100), (5000, 7000)] {
        let old = bytes(old_n, 3);
        let new = if new_n == old_n {
            edit(&old, 5)
        } else {
            bytes(new_n, 9)
        };
        for p in [
            plan(1, 0, 1),
            plan(7, 3, 2),
            plan(64, 16, 3),
            plan(1 << 20, 0, 2),
        ] {
            let m = windowed(&old, &new, &p);
            assert_eq!(
                apply(&old, new.len() as u64, &m).expect("apply"),
                new,
                "{old_n}->{} {p:?}",
                new.len()
            );
        }
    }
}

#[test]
fn windows_follow_insertions_and_stay_small() {
    // A shifted copy (a large insertion at the front): the windows must find the old bytes
    // through the drift of earlier matches, so the patch stays close to the single-window one.
    let old = bytes(400_000, 11);
    let mut new = bytes(30_000, 12);
    new.extend_from_slice(&old);
    let single = encode::split_diff(&old, &new, &EncodeOptions::default()).expect("diff");
    let m = windowed(&old, &new, &plan(16 << 10, 4 << 10, 2));
    assert_eq!(apply(&old, new.len() as u64, &m).expect("apply"), new);
    assert!(
        m.len() < single.len() * 3 / 2 + 1024,
        "windowed {} vs single {}",
        m.len(),
        single.len()
    );
}

#[test]
fn encode_files_uses_windows_above_the_budget_and_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = bytes(300_000, 21);
    let new = edit(&old, 22);
    let (po, pn) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::write(&po, &old).expect("write");
    std::fs::write(&pn, &new).expect("write");
    let opts = EncodeOptions {
        level: 3,
        force_windows: Some(plan(32 << 10, 8 << 10, 2)),
        ..EncodeOptions::default()
    };
    let e = encode::encode_files(&po, Pin::of(&old), &pn, Pin::of(&new), &opts).expect("encode");
    assert_eq!(e.chosen, Chosen::SplitDiff);
    let member = e.member.read_all().expect("member");
    assert_eq!(apply(&old, new.len() as u64, &member).expect("apply"), new);
    // A budget below the single-window cost picks windows by itself.
    let small = EncodeOptions {
        memory_budget: Some(1 << 20),
        ..EncodeOptions::default()
    };
    assert!(small
        .window_plan(old.len() as u64, new.len() as u64)
        .is_some());
    assert!(EncodeOptions::default()
        .window_plan(old.len() as u64, new.len() as u64)
        .is_none());
    // A new file unrelated to the old one: the windowed diff gives up early and the whole
    // file is spooled to disk (spool_above 0), then read back intact.
    let noise = fixtures::noise(0x9e37_79b9_7f4a_7c15, 300_000);
    let pz = dir.path().join("noise");
    std::fs::write(&pz, &noise).expect("write");
    let spool = EncodeOptions {
        spool_above: 0,
        ..opts.clone()
    };
    let e = encode::encode_files(&po, Pin::of(&old), &pz, Pin::of(&noise), &spool).expect("encode");
    assert_eq!(e.chosen, Chosen::Full);
    assert!(matches!(
        e.member,
        patch_create::pack::Member::Spooled { .. }
    ));
    let full = e.member.read_all().expect("member");
    assert_eq!(zstd::decode_all(full.as_slice()).expect("zstd"), noise);
    // Wrong pins are refused in both modes.
    let wrong = Pin::of(b"other");
    assert!(encode::encode_files(&po, wrong, &pn, Pin::of(&new), &opts).is_err());
    assert!(
        encode::encode_files(&po, Pin::of(&old), &pn, wrong, &EncodeOptions::default()).is_err()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn windowed_split_diff_round_trips(
        old in proptest::collection::vec(any::<u8>(), 0..4000),
        other in proptest::collection::vec(any::<u8>(), 0..4000),
        seed in any::<u64>(),
        similar in any::<bool>(),
        window in 1u64..700,
        margin in 0u64..300,
        jobs in 1usize..4,
    ) {
        let new = if similar { edit(&old, seed) } else { other };
        let m = windowed(&old, &new, &plan(window, margin, jobs));
        prop_assert_eq!(apply(&old, new.len() as u64, &m).expect("apply"), new);
    }
}

/// The bounded mode's memory does not grow with the file: a 64 MiB pair diffed with a 64 MiB
/// budget (1 MiB windows) peaks far below the ~8 × 64 MiB a whole-file diff holds. The peak is
/// the process's own high-water mark (`peak_rss_bytes` of `release --json`, Linux only).
#[cfg(target_os = "linux")]
#[test]
fn windowed_release_memory_stays_within_budget() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    fixtures::write_large_pair(&old.join("big.bin"), &new.join("big.bin"), 7, 64 << 20, 50)
        .expect("pair");
    let bin = env!("CARGO_BIN_EXE_patch-create");
    let keys = dir.path().join("keys");
    let repo = dir.path().join("repo");
    let st = Command::new(bin)
        .args(["keygen", "--out"])
        .arg(&keys)
        .status()
        .expect("keygen");
    assert!(st.success());
    let mut peak = 0;
    let mut report = serde_json::Value::Null;
    for (root, version) in [(&old, "1.0.0"), (&new, "1.0.1")] {
        let out = Command::new(bin)
            .arg("release")
            .arg("--repo")
            .arg(&repo)
            .arg("--root")
            .arg(root)
            .args(["--version", version, "--name", "m", "--json"])
            .args(["--level", "1", "--memory-budget", "64MiB"])
            .arg("--key")
            .arg(keys.join("release.key"))
            .output()
            .expect("release");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        report = serde_json::from_slice(&out.stdout).expect("json");
        peak = report["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
    }
    let patch = &report["patches"][0];
    assert_eq!(patch["encodings"]["split-diff"], 1, "{report}");
    assert!(
        patch["bytes"].as_u64().expect("bytes") < 1 << 20,
        "{report}"
    );
    assert!(
        peak < 320 << 20,
        "release 1.0.1 peaked at {} MiB",
        peak >> 20
    );
}
