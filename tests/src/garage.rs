//! A throwaway Garage (a real S3-compatible object store, <https://garagehq.deuxfleurs.fr>)
//! for the tests: one node in a fresh temporary directory, SQLite metadata, S3 API and web
//! endpoint on free loopback ports, killed on drop.
//!
//! The node is set up by `garage server --single-node --default-bucket` (layout, an access key
//! and a bucket from `GARAGE_DEFAULT_*`), then the bucket is exposed on the web endpoint with
//! `garage bucket website --allow`. The web endpoint picks the bucket by the `Host` header: the
//! bucket is named `localhost`, so `http://localhost:PORT/KEY` serves its objects (Garage
//! refuses bucket names shaped like IP addresses, so `127.0.0.1` cannot be one).
//!
//! Nothing is skipped: without the `garage` binary [`Garage::start`] panics naming the install
//! command, and the test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::free_port;

/// The command that installs the Garage binary the tests use.
pub const INSTALL: &str =
    "cargo install garage --locked --no-default-features --features bundled-libs,sqlite";

/// The bucket the tests publish to; also the host name of its web endpoint.
pub const BUCKET: &str = "localhost";

/// A running single-node Garage; killed and deleted on drop.
pub struct Garage {
    dir: tempfile::TempDir,
    child: Child,
    config: PathBuf,
    bin: PathBuf,
    /// Port of the S3 API on 127.0.0.1.
    pub s3_port: u16,
    /// Port of the web endpoint on 127.0.0.1.
    pub web_port: u16,
    /// Access key id with read, write and owner rights on [`BUCKET`].
    pub key_id: String,
    /// Its secret.
    pub secret: String,
}

/// The `garage` binary: `PATCHKIT_GARAGE`, else `garage` on the `PATH`, else
/// `~/.cargo/bin/garage`; panics naming the install command when there is none.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHKIT_GARAGE") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    });
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/garage"));
    on_path
        .or(home.filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("Garage is not installed (no `garage` on PATH or in ~/.cargo/bin): {INSTALL} (test.sh does this)")
        })
}

fn wait_tcp(port: u16, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "Garage's {what} did not listen on 127.0.0.1:{port} within 30 s; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Garage {
    /// Starts a node and waits until its bucket answers on the web endpoint.
    pub fn start() -> Garage {
        let bin = garage_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let (rpc, s3, web) = (free_port(), free_port(), free_port());
        let rpc_secret = hex::encode(rand_bytes(32));
        let key_id = format!("GK{}", hex::encode(rand_bytes(12)));
        let secret = hex::encode(rand_bytes(32));
        let d = dir.path();
        let config = d.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[s3_web]
bind_addr = "127.0.0.1:{web}"
root_domain = ".web.garage.localhost"
"#,
                meta = d.join("meta").display(),
                data = d.join("data").display(),
            ),
        )
        .expect("write garage.toml");
        let log_path = d.join("garage.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &key_id)
            .env("GARAGE_DEFAULT_SECRET_KEY", &secret)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} ({INSTALL})", bin.display()));
        let g = Garage {
            dir,
            child,
            config,
            bin,
            s3_port: s3,
            web_port: web,
            key_id,
            secret,
        };
        wait_tcp(s3, "S3 API", &log_path);
        wait_tcp(web, "web endpoint", &log_path);
        // The CLI reaches the node over RPC; retry while the node finishes starting.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = g
                .cli()
                .args(["bucket", "website", "--allow", BUCKET])
                .output()
                .expect("run garage");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "garage bucket website --allow {BUCKET} kept failing: {}\nlog:\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        g
    }

    /// A `garage` CLI command for this node.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-c").arg(&self.config);
        c
    }

    /// The S3 endpoint (`--endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The base URL clients read the bucket from (its web endpoint); `prefix` appended.
    pub fn web_url(&self, prefix: &str) -> String {
        format!("http://{BUCKET}:{}/{prefix}", self.web_port)
    }

    /// `patch-create publish` arguments and credentials to publish to `s3://BUCKET/prefix`.
    pub fn publish_cmd(&self, repo: &std::path::Path, prefix: &str) -> Command {
        let mut c = crate::cmd("patch-create");
        c.arg("publish")
            .arg("--repo")
            .arg(repo)
            .args(["--to", &format!("s3://{BUCKET}/{prefix}")])
            .args(["--endpoint", &self.endpoint(), "--region", "garage"])
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT")
            .env_remove("AWS_PROFILE");
        c
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` random bytes from the OS; secrets of a throwaway node only.
fn rand_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut v))
        .expect("/dev/urandom");
    v
}
