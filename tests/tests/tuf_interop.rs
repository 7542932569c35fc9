//! python-tuf's reference client (ngclient) against our repositories on loopback HTTP: it must
//! accept a good repository and refuse tampered ones (`tests/tuf_interop.py`). Skipped, with a
//! message, when `python3 -c "import tuf"` fails (CI installs it with `pip install tuf`).
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
use std::process::Command;

use e2e_tests::*;

fn python_tuf_available() -> bool {
    Command::new("python3")
        .args(["-c", "import tuf.ngclient"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn python_tuf_accepts_good_and_refuses_tampered_repositories() {
    if !python_tuf_available() {
        eprintln!("SKIPPED python_tuf_accepts_good_and_refuses_tampered_repositories: python3 cannot import tuf (pip install tuf)");
        return;
    }
    let w = World::new(3);
    w.release_all(2);
    let old = w.path("old");
    copy_tree(&w.repo, &old);
    w.release(3, &[]);
    let expired = w.path("expired");
    copy_tree(&w.repo, &expired);
    ok(cmd("patch-create")
        .args(["resign", "--repo"])
        .arg(&expired)
        .arg("--key")
        .arg(&w.key)
        .args(["--expires", "1s", "--expires-short-ok"]));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuf_interop.py");
    let out = ok(Command::new("python3")
        .arg(script)
        .arg("--root")
        .arg(w.repo.join("metadata/1.root.json"))
        .arg("--good")
        .arg(&w.repo)
        .arg("--old")
        .arg(&old)
        .arg("--expired")
        .arg(&expired)
        .args([
            "3.0.0/manifest.json",
            "3.0.0/patch-from-2.0.0.patch",
            "3.0.0/installer.tar.zst",
        ]));
    eprintln!("{out}");
    assert!(
        out.contains("all python-tuf interop checks passed"),
        "{out}"
    );
    for check in [
        "rollback",
        "flipped target byte",
        "modified targets metadata",
        "expired metadata",
    ] {
        assert!(
            out.contains(&format!("ok: {check}")),
            "{check} not refused: {out}"
        );
    }
}
