//! Helpers for the fleet agent's tests (`tests/tests/fleet_agent.rs`): the real `patch-server`
//! binary in a temporary data directory, and a small scripted HTTP server on 127.0.0.1 for the
//! cases where the point is a server that lies or breaks (garbage, 503, versions the repository
//! does not have).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{bin, cmd, ok};

/// The enrollment secret the tests' apps use.
pub const SECRET: &str = "test-enroll-secret-0123456789";

/// A real `patch-server serve` on a free port of 127.0.0.1; killed when dropped.
pub struct FleetServer {
    /// Its base URL.
    pub url: String,
    /// Its data directory.
    pub data: PathBuf,
    /// The admin token file.
    pub token: PathBuf,
    /// A file holding [`SECRET`].
    pub secret_file: PathBuf,
    child: Child,
}

impl FleetServer {
    /// Starts a server with its data in `dir/name`, telling devices to poll every `poll`.
    pub fn start(dir: &Path, name: &str, poll: &str) -> FleetServer {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("data dir");
        let addr_file = data.join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new(bin("patch-server"))
            .args(["serve", "--addr", "127.0.0.1:0", "--poll-interval", poll])
            .arg("--data")
            .arg(&data)
            .arg("--addr-file")
            .arg(&addr_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("patch-server starts");
        let start = Instant::now();
        let url = loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file) {
                if s.trim().starts_with("http") {
                    break s.trim().to_string();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "patch-server did not start; see {name}.log"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let secret_file = dir.join("enroll.secret");
        std::fs::write(&secret_file, SECRET).expect("secret");
        FleetServer {
            url,
            token: data.join("admin.token"),
            data,
            secret_file,
            child,
        }
    }

    /// An admin CLI command against this server (`--server` and `--token-file` added after
    /// the subcommand words).
    pub fn admin(&self, words: &[&str]) -> Command {
        let mut c = cmd("patch-server");
        c.args(words)
            .arg("--server")
            .arg(&self.url)
            .arg("--token-file")
            .arg(&self.token);
        c
    }

    /// Registers app `demo` with its repository and public key, enrolled by [`SECRET`].
    pub fn add_app(&self, repo: &Path, public: &Path) {
        ok(self
            .admin(&["app", "add", "demo"])
            .arg("--repo")
            .arg(repo)
            .arg("--public-key")
            .arg(public)
            .arg("--enroll-secret-file")
            .arg(&self.secret_file));
    }

    /// `device show ID --json`.
    pub fn device(&self, id: &str) -> serde_json::Value {
        let d = self.device_once_enrolled(id);
        assert!(!d.is_null(), "device show {id}: no such device");
        d
    }

    /// Like [`FleetServer::device`], but `Null` while the device is not enrolled yet (its
    /// agent writes the device id before its enrollment is answered).
    pub fn device_once_enrolled(&self, id: &str) -> serde_json::Value {
        let out = self
            .admin(&["device", "show", id, "--json"])
            .output()
            .expect("patch-server runs");
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() && text.contains("no device") {
            return serde_json::Value::Null;
        }
        assert!(out.status.success(), "device show {id}: {text}");
        serde_json::from_str(&text).expect("device JSON")
    }

    /// Stops the server (kill, wait).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FleetServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request the scripted server received.
#[derive(Clone, Debug)]
pub struct FakeRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl FakeRequest {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An answer of the scripted server: status, extra headers, body.
pub type FakeAnswer = (u16, Vec<(String, String)>, Vec<u8>);

type Handler = dyn Fn(&FakeRequest) -> FakeAnswer + Send + Sync;

/// A scripted HTTP/1.1 server on 127.0.0.1 (one request per connection); stops when dropped.
pub struct FakeServer {
    /// Its base URL.
    pub url: String,
    /// Every request, in order.
    pub seen: Arc<Mutex<Vec<FakeRequest>>>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    /// Serves `handler`'s answers.
    pub fn start(handler: impl Fn(&FakeRequest) -> FakeAnswer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (seen, handler) = (Arc::clone(&seen), Arc::clone(&handler));
                            std::thread::spawn(move || serve_one(s, &seen, handler.as_ref()));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        FakeServer { url, seen, stop }
    }

    /// The requests to paths starting with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<FakeRequest> {
        self.seen
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_one(s: TcpStream, seen: &Mutex<Vec<FakeRequest>>, handler: &Handler) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(read_half) = s.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let mut first = String::new();
    if r.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len.min(64 << 20)];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let req = FakeRequest {
        method,
        path,
        headers,
        body,
    };
    let (status, extra, out) = handler(&req);
    seen.lock().expect("log").push(req);
    let mut w = s;
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        out.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(&out);
    let _ = w.flush();
}

/// A JSON answer with status 200.
pub fn json_answer(v: serde_json::Value) -> FakeAnswer {
    (
        200,
        vec![("Content-Type".into(), "application/json".into())],
        v.to_string().into_bytes(),
    )
}

/// The scripted server's answer to `/v1/enroll`: a fixed token.
pub fn enroll_answer(req: &FakeRequest) -> FakeAnswer {
    let id = req.json()["device_id"].as_str().unwrap_or("x").to_string();
    json_answer(serde_json::json!({
        "device_id": id, "token": "fake-token", "status": "active", "poll_interval_secs": 60
    }))
}

/// A check-in answer naming `version` (or none).
pub fn checkin_answer(version: Option<&str>) -> FakeAnswer {
    json_answer(serde_json::json!({
        "protocol": 1,
        "status": "active",
        "directive": version.map(|v| serde_json::json!({"version": v, "reason": "push"})),
        "commands": [],
        "poll_interval_secs": 60,
        "acked_result_seq": null,
        "state_digest": null
    }))
}
