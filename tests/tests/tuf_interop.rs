//! python-tuf's reference client (ngclient) against our repositories on loopback HTTP: it must
//! accept a good repository, including targets that live in the delegated roles `recent` and
//! the archive chunks, and refuse tampered ones, tampered delegated roles among them
//! (`tests/tuf_interop.py`). Fails, naming the install command, when
//! `python3 -c "import tuf.ngclient"` fails (`pip install tuf`).
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
    assert!(
        python_tuf_available(),
        "python3 cannot import tuf.ngclient: install python-tuf with `pip install tuf` (test.sh does)"
    );
    // One release in `recent`, one per archive chunk: targets live in all three kinds of role.
    std::env::set_var("PATCHKIT_RECENT_RELEASES", "1");
    std::env::set_var("PATCHKIT_ARCHIVE_CHUNK", "1");
    let w = World::with_sizes(3, 64 << 10, 32 << 10);
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
    // Delegated roles changed with their signatures kept, pinned by a validly signed snapshot.
    let mut forged = Vec::new();
    for (role, target) in [
        ("recent", "3.0.0/manifest.json"),
        ("archive-0001", "1.0.0/installer.tar.zst"),
    ] {
        let d = w.path(&format!("forged-{role}"));
        copy_tree(&w.repo, &d);
        tamper::forge_delegated(&d, &w.key, role, |s| {
            s["targets"][target]["length"] = serde_json::json!(7);
        });
        forged.push(format!("{}:{target}", d.display()));
    }
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
        .args(forged.iter().flat_map(|f| ["--forged", f.as_str()]))
        .args([
            "3.0.0/manifest.json",
            "3.0.0/patch-from-2.0.0.patch",
            "3.0.0/installer.tar.zst",
            "2.0.0/manifest.json",
            "2.0.0/patch-from-1.0.0.patch",
            "1.0.0/installer.tar.zst",
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
        "flipped byte in delegated role recent.json",
        "flipped byte in delegated role archive-0001.json",
        "flipped byte in delegated role archive-0002.json",
        "forged delegated role listing 3.0.0/manifest.json",
        "forged delegated role listing 1.0.0/installer.tar.zst",
    ] {
        assert!(
            out.contains(&format!("ok: {check}")),
            "{check} not refused: {out}"
        );
    }
}
