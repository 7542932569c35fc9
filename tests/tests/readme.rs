//! The README's "Host it" walkthrough, run as written: the shell block between
//! `<!-- host-it:begin -->` and `<!-- host-it:end -->` runs with bash in a fresh `$HOME`, the
//! workspace's binaries first on `PATH` and nginx on another free port than 8080 (the only
//! change). It must leave the installed copy at release 1.1, served by nginx.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
use std::path::Path;
use std::process::Command;

use e2e_tests::*;

/// The shell block of the README's "Host it" section.
fn host_it_block() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let start = readme
        .find("<!-- host-it:begin -->")
        .expect("host-it:begin marker");
    let end = readme
        .find("<!-- host-it:end -->")
        .expect("host-it:end marker");
    let block = &readme[start..end];
    let body = block
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1;
    body.rsplit_once("```")
        .expect("the block's closing fence")
        .0
        .to_string()
}

#[test]
fn readme_host_it_walkthrough_runs_as_written() {
    let script = host_it_block();
    assert!(script.contains("127.0.0.1:8080"), "{script}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = script.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let home = tempfile::tempdir().unwrap();
    assert!(
        Path::new("/usr/sbin/nginx").exists() || which("nginx"),
        "nginx is missing: install it with `apt-get install nginx`"
    );
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(Command::new("timeout")
        .args(["300", "bash", "-euo", "pipefail", "-c", &script])
        .env("HOME", home.path())
        .env("PATH", path));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("myapp 1.1"), "{stdout}\n{stderr}");
    let demo = home.path().join("patchkit-demo");
    assert_same_tree(&demo.join("installed"), &demo.join("build-1.1"));
    // nginx served the update: the metadata and the repair file went through it.
    let log = std::fs::read_to_string(demo.join("access.log")).unwrap();
    assert!(log.contains("/myapp/metadata/timestamp.json"), "{log}");
    assert!(log.contains("/myapp/blobs/"), "{log}");
}

/// Whether `name` is on `PATH`.
fn which(name: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(name).is_file())
}
