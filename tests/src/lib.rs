//! Helpers for the end-to-end tests in `tests/tests/`: locating the real binaries, generating
//! fixture releases into a fresh temporary directory, running commands, comparing trees.
//!
//! The binaries are the ones cargo built for the workspace (`cargo build --workspace --bins`
//! runs before the tests in `.ci/run`; `cargo test --workspace` builds them too).

pub mod agent_support;
pub mod alerts_support;
pub mod browser;
pub mod fleet;
pub mod garage;
pub mod pg;
pub mod tamper;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory holding the workspace's binaries: `PATCHKIT_BIN_DIR` when set, else
/// `target/<profile>` beside the test binary (`target/<profile>/deps/<test>`), else, when cargo's
/// build directory is elsewhere (`CARGO_BUILD_BUILD_DIR`), this workspace's `target/<profile>`.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PATCHKIT_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let beside = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <dir>/<profile>/deps")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if canonical(&beside).starts_with(canonical(&target)) {
        return beside;
    }
    match beside.file_name() {
        Some(profile) => target.join(profile),
        None => beside,
    }
}

/// Path of a workspace binary; panics with a clear message when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests",
        p.display()
    );
    p
}

/// A command for a workspace binary.
pub fn cmd(name: &str) -> Command {
    Command::new(bin(name))
}

/// Runs a command and returns its output (never panics on failure status).
pub fn run(c: &mut Command) -> Output {
    c.output().expect("command starts")
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(c: &mut Command) -> String {
    let out = run(c);
    assert!(
        out.status.success(),
        "command failed: {c:?}\nstatus: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns stderr.
pub fn fails(c: &mut Command) -> String {
    let out = run(c);
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded: {c:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The last line of `stdout` parsed as JSON.
pub fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
}

/// What a tree holds, for comparisons: path → kind/content. The updater's `.patchkit` state
/// directory is left out; directory modes are not compared (they follow the umask).
pub fn tree_state(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    for e in fixtures::snapshot(root).expect("snapshot") {
        if e.path == ".patchkit" || e.path.starts_with(".patchkit/") {
            continue;
        }
        let v = match e.kind {
            fixtures::EntryKind::Dir { .. } => "dir".to_string(),
            fixtures::EntryKind::File { mode, data } => {
                format!(
                    "file exec={} blake3={}",
                    mode & 0o111 != 0,
                    blake3_hex(&data)
                )
            }
            fixtures::EntryKind::Symlink { target } => format!("link {target}"),
        };
        out.insert(e.path, v);
    }
    out
}

fn blake3_hex(d: &[u8]) -> String {
    formats::Blake3::of(d).to_hex()
}

/// Asserts two trees are identical (content, exec bits, empty dirs, symlinks), listing the
/// first differences.
pub fn assert_same_tree(actual: &Path, expected: &Path) {
    let a = tree_state(actual);
    let e = tree_state(expected);
    if a != e {
        let mut diffs = Vec::new();
        for (k, v) in &e {
            match a.get(k) {
                None => diffs.push(format!("missing {k}")),
                Some(x) if x != v => diffs.push(format!("differs {k}: {x} != {v}")),
                _ => {}
            }
        }
        for k in a.keys() {
            if !e.contains_key(k) {
                diffs.push(format!("extra {k}"));
            }
        }
        diffs.truncate(20);
        panic!(
            "{} differs from {}:\n  {}",
            actual.display(),
            expected.display(),
            diffs.join("\n  ")
        );
    }
}

/// Copies a tree (symlinks as symlinks, modes kept).
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// A fresh temporary world: fixture releases, a key pair and a repository.
pub struct World {
    /// Owns the temporary directory.
    pub dir: tempfile::TempDir,
    /// Release trees v1, v2, ...
    pub releases: Vec<PathBuf>,
    /// The repository directory.
    pub repo: PathBuf,
    /// Secret key file.
    pub key: PathBuf,
    /// Public key file.
    pub public: PathBuf,
}

impl World {
    /// A world with v1 and v2 released, and an app dir (`app`) holding v1.
    pub fn with_app_at_v1() -> (World, PathBuf) {
        let w = World::new(2);
        w.release_all(2);
        let app = w.path("app");
        copy_tree(&w.releases[0], &app);
        (w, app)
    }

    /// Generates a small seeded sequence of `versions` releases and a key (no releases yet).
    pub fn new(versions: usize) -> World {
        World::with_sizes(versions, 2 << 20, 1 << 20)
    }

    /// Like [`World::new`] with the big file and the renamed file of the given sizes (every
    /// change kind is still present).
    pub fn with_sizes(versions: usize, big_file_bytes: u64, renamed_file_bytes: u64) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = fixtures::SequenceOptions {
            seed: 7,
            versions,
            big_file_bytes,
            renamed_file_bytes,
        };
        let releases = fixtures::write_sequence(&dir.path().join("rel"), &opts).expect("fixtures");
        let keys = dir.path().join("keys");
        ok(cmd("patch-create").args(["keygen", "--out"]).arg(&keys));
        World {
            repo: dir.path().join("repo"),
            key: keys.join("release.key"),
            public: keys.join("release.pub"),
            releases,
            dir,
        }
    }

    /// A path inside the world.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `patch-create release` of release `i` (1-based) as version `i.0.0`, with extra args.
    pub fn release(&self, i: usize, extra: &[&str]) -> serde_json::Value {
        let out = ok(cmd("patch-create")
            .args(["release", "--name", "demo", "--json", "--level", "3"])
            .arg("--repo")
            .arg(&self.repo)
            .arg("--root")
            .arg(&self.releases[i - 1])
            .args(["--version", &format!("{i}.0.0"), "--key"])
            .arg(&self.key)
            .args(extra));
        last_json(&out)
    }

    /// Releases 1..=n.
    pub fn release_all(&self, n: usize) {
        for i in 1..=n {
            self.release(i, &[]);
        }
    }

    /// A `patch-apply` command with `--app-dir`, `--repo` and `--public-key` set.
    pub fn apply_cmd(&self, sub: &str, app: &Path) -> Command {
        let mut c = cmd("patch-apply");
        c.arg(sub)
            .arg("--app-dir")
            .arg(app)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--public-key")
            .arg(&self.public);
        c
    }
}

/// A request read by the tests' own small HTTP servers: its path and its `Range` header.
#[derive(Clone, Debug)]
pub struct TestRequest {
    /// The request target (`/metadata/timestamp.json`).
    pub path: String,
    /// The `Range` header's value, if any (`bytes=100-`).
    pub range: Option<String>,
}

/// Reads one request's line and headers from `s` (blocking, 5 s read timeout); `None` when the
/// client sent nothing.
pub fn read_test_request(s: &std::net::TcpStream) -> Option<TestRequest> {
    use std::io::{BufRead, BufReader};
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut reader = BufReader::new(s.try_clone().ok()?);
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return None;
    }
    let mut range = None;
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    Some(TestRequest { path, range })
}

/// A `patch-create serve` of a repository on a free loopback port, killed on drop.
pub struct ServedRepo {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
}

impl ServedRepo {
    /// Starts `patch-create serve --addr 127.0.0.1:0 --quiet --repo REPO` and waits for the
    /// address it prints.
    pub fn start(repo: &Path) -> ServedRepo {
        use std::io::BufRead;
        let mut child = cmd("patch-create")
            .args(["serve", "--addr", "127.0.0.1:0", "--quiet", "--repo"])
            .arg(repo)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("serve starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stderr.take().expect("stderr"))
            .read_line(&mut line)
            .expect("serve prints its address");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .expect("url")
            .trim_end_matches('/')
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        ServedRepo { child, url }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the served URL")
    }
}

impl Drop for ServedRepo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
