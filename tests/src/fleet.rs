//! Helpers for the fleet tests: a real `patch-server` process on 127.0.0.1 (SQLite or a
//! throwaway PostgreSQL), simulated devices speaking the protocol over real HTTP, and the
//! admin CLI run against the server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pg::PgCluster;

/// Which database a test runs against.
pub enum Backend {
    /// SQLite in the server's data directory.
    Sqlite,
    /// A throwaway PostgreSQL cluster.
    Postgres(PgCluster),
}

impl Backend {
    /// Starts the backend named `name` (`sqlite` or `postgres`).
    pub fn start(name: &str) -> Backend {
        match name {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres(PgCluster::start()),
            other => panic!("unknown backend {other}"),
        }
    }

    /// `--db URL` for PostgreSQL; nothing for SQLite.
    pub fn db_args(&self) -> Vec<String> {
        match self {
            Backend::Sqlite => Vec::new(),
            Backend::Postgres(pg) => vec!["--db".into(), pg.url()],
        }
    }
}

/// A running `patch-server serve`; killed on drop.
pub struct Server {
    child: Child,
    /// Base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The data directory.
    pub data: PathBuf,
    /// The first admin token.
    pub admin_token: String,
}

impl Server {
    /// Starts `patch-server serve --data DATA` plus `extra` args on a free port and waits
    /// until it listens.
    pub fn start(data: &Path, backend: &Backend, extra: &[&str]) -> Server {
        Server::start_with_token(data, backend, extra, None)
    }

    /// Like [`Server::start`], reading the admin token from `token` (a second instance on a
    /// database that already has one).
    pub fn start_with_token(
        data: &Path,
        backend: &Backend,
        extra: &[&str],
        token: Option<&str>,
    ) -> Server {
        std::fs::create_dir_all(data).expect("data dir");
        let addr_file = data.join(format!("addr-{}", crate::pg::free_port()));
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::File::create(data.join("server.log")).expect("log");
        let child = crate::cmd("patch-server")
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(backend.db_args())
            .args(["--addr", "127.0.0.1:0", "--addr-file"])
            .arg(&addr_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("patch-server starts");
        let mut server = Server {
            child,
            url: String::new(),
            data: data.to_path_buf(),
            admin_token: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(u) = std::fs::read_to_string(&addr_file) {
                if !u.is_empty() {
                    server.url = u;
                    break;
                }
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!(
                    "patch-server exited with {st}: {}",
                    std::fs::read_to_string(data.join("server.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "patch-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server.admin_token = match token {
            Some(t) => t.to_string(),
            None => std::fs::read_to_string(data.join("admin.token"))
                .expect("first serve writes DATA/admin.token")
                .trim()
                .to_string(),
        };
        server
    }

    /// Kills the server at once (`SIGKILL`), as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The admin CLI pointed at this server with its admin token.
    pub fn cli(&self) -> Command {
        let mut c = crate::cmd("patch-server");
        c.env("PATCHKIT_SERVER", &self.url)
            .env("PATCHKIT_ADMIN_TOKEN", &self.admin_token);
        c
    }

    /// Runs the admin CLI with `args` (it must succeed) and returns stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        crate::ok(self.cli().args(args))
    }

    /// Runs the admin CLI with `args` plus `--json` and parses the output.
    pub fn admin_json(&self, args: &[&str]) -> Value {
        let out = crate::ok(self.cli().args(args).arg("--json"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// An HTTP client for raw requests.
    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client")
    }

    /// A raw admin API request with `token` (or none): `(status, body)`.
    pub fn admin_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rq = self.http().request(m, format!("{}{path}", self.url));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = rq.send().expect("request");
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A simulated device: a protocol client with its own id and token.
pub struct Device {
    /// The server.
    pub url: String,
    /// Device id.
    pub id: String,
    /// Bearer token from enrollment.
    pub token: String,
    /// ETag of the last check-in answer.
    pub etag: Option<String>,
    http: reqwest::blocking::Client,
}

/// A check-in's answer: status, ETag and body (`Null` for 304).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The `ETag` header.
    pub etag: Option<String>,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
}

/// POSTs a JSON body (`raw` bytes) to `url` with an optional bearer token.
pub fn post_raw(url: &str, token: Option<&str>, raw: Vec<u8>) -> Answer {
    let http = reqwest::blocking::Client::new();
    let mut rq = http
        .post(url)
        .header("content-type", "application/json")
        .body(raw);
    if let Some(t) = token {
        rq = rq.bearer_auth(t);
    }
    answer(rq.send().expect("request"))
}

fn answer(r: reqwest::blocking::Response) -> Answer {
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = r.text().unwrap_or_default();
    Answer {
        status,
        etag,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

impl Device {
    /// Enrolls `id` under `app` with `secret` (or none); panics unless the answer is 200.
    pub fn enroll(url: &str, app: &str, id: &str, secret: Option<&str>) -> Device {
        let a = Device::try_enroll(url, app, id, secret);
        assert_eq!(a.status, 200, "enroll {id}: {:?}", a.body);
        Device {
            url: url.to_string(),
            id: id.to_string(),
            token: a.body["token"].as_str().expect("token").to_string(),
            etag: None,
            http: reqwest::blocking::Client::new(),
        }
    }

    /// A device that already holds `token`.
    pub fn from_token(url: &str, id: &str, token: &str) -> Device {
        Device {
            url: url.to_string(),
            id: id.to_string(),
            token: token.to_string(),
            etag: None,
            http: reqwest::blocking::Client::new(),
        }
    }

    /// Sends an enrollment and returns the raw answer.
    pub fn try_enroll(url: &str, app: &str, id: &str, secret: Option<&str>) -> Answer {
        let mut body = json!({"app": app, "device_id": id, "hostname": format!("host-{id}")});
        if let Some(s) = secret {
            body["secret"] = json!(s);
        }
        post_raw(
            &format!("{url}/v1/enroll"),
            None,
            body.to_string().into_bytes(),
        )
    }

    /// Checks in with `body`, sending `If-None-Match` with the last ETag; remembers the new
    /// one.
    pub fn checkin(&mut self, body: &Value) -> Answer {
        let mut rq = self
            .http
            .post(format!("{}/v1/checkin", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(e) = &self.etag {
            rq = rq.header("if-none-match", e);
        }
        let a = answer(rq.send().expect("checkin"));
        if a.status == 200 {
            self.etag = a.etag.clone();
        }
        a
    }

    /// Posts a command result.
    pub fn result(&self, command: &str, body: &Value) -> Answer {
        post_raw(
            &format!("{}/v1/commands/{command}/result", self.url),
            Some(&self.token),
            body.to_string().into_bytes(),
        )
    }

    /// Uploads `bytes` as `name` for `command`.
    pub fn upload(&self, command: &str, name: &str, bytes: Vec<u8>) -> Answer {
        self.put_upload(("command", command), name, bytes)
    }

    /// `PUT /v1/uploads?crash=ID&name=NAME`: a crash file, with no command.
    pub fn upload_crash(&self, crash: &str, name: &str, bytes: Vec<u8>) -> Answer {
        self.put_upload(("crash", crash), name, bytes)
    }

    /// `PUT /v1/uploads?OWNER=ID&name=NAME` with the device token.
    fn put_upload(&self, owner: (&str, &str), name: &str, bytes: Vec<u8>) -> Answer {
        let r = self
            .http
            .put(format!("{}/v1/uploads", self.url))
            .query(&[owner, ("name", name)])
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .expect("upload");
        answer(r)
    }
}

/// A check-in body at `version` with a tree digest derived from it.
pub fn checkin_body(version: &str, state: Option<Value>) -> Value {
    let digest = blake3_hex(version.as_bytes());
    let mut b = json!({
        "version": version,
        "tree_digest": digest,
        "channel": "stable",
        "os": "linux",
        "arch": "x86_64",
        "agent_version": "0.1.0",
        "free_disk": 123_456_789u64,
    });
    if let Some(s) = state {
        b["state"] = s;
    }
    b
}

/// BLAKE3 of `bytes`, hex.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Adds a dashboard account with `patch-server user add`, the password on standard input.
pub fn add_user(s: &Server, backend: &Backend, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = crate::cmd("patch-server")
        .args(["user", "add", "--data"])
        .arg(&s.data)
        .args(backend.db_args())
        .args(["--name", name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("user add starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password on stdin");
    let out = child.wait_with_output().expect("user add runs");
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for 127.0.0.1 (EC P-256, two days) and its key, made by
/// `openssl` in `dir`: `(cert.pem, key.pem)`.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    crate::ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}
