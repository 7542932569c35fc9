//! Helpers for the alert tests (`tests/tests/fleet_alerts.rs`): a webhook receiver on
//! 127.0.0.1 that records every request and checks its HMAC signature, and a real SMTP server
//! (Python's `aiosmtpd`, writing each message to a maildir) started and killed by the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One request the webhook receiver got.
#[derive(Clone, Debug)]
pub struct Hook {
    /// The request target.
    pub path: String,
    /// The `X-Patchkit-Signature` header.
    pub signature: Option<String>,
    /// Whether the signature is the HMAC-SHA256 of the body under the receiver's secret.
    pub signed: bool,
    /// The body as JSON (`Null` when it is not).
    pub body: Value,
}

/// A webhook receiver on 127.0.0.1 answering 200 to every POST; stops when dropped.
pub struct WebhookSink {
    /// Its base URL.
    pub url: String,
    /// Every request, in order.
    pub seen: Arc<Mutex<Vec<Hook>>>,
    stop: Arc<AtomicBool>,
}

/// `sha256=<hex>` of `body` under `secret`, as the server signs.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookSink {
    /// A receiver on a free port checking signatures with `secret`.
    pub fn start(secret: &str) -> WebhookSink {
        WebhookSink::start_on(0, secret)
    }

    /// A receiver on `port` (a port the server was told about while nothing listened).
    pub fn start_on(port: u16, secret: &str) -> WebhookSink {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind webhook receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2, secret) = (Arc::clone(&seen), Arc::clone(&stop), secret.to_string());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if let Some(h) = read_hook(s, &secret) {
                            seen2.lock().expect("log").push(h);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        WebhookSink { url, seen, stop }
    }

    /// Every request so far.
    pub fn hooks(&self) -> Vec<Hook> {
        self.seen.lock().expect("log").clone()
    }

    /// The bodies of requests with `key` and `event`.
    pub fn events(&self, key: &str, event: &str) -> Vec<Value> {
        self.hooks()
            .into_iter()
            .filter(|h| h.body["key"] == key && h.body["event"] == event)
            .map(|h| h.body)
            .collect()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn read_hook(s: TcpStream, secret: &str) -> Option<Hook> {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut len, mut signature) = (0usize, None);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "x-patchkit-signature" => signature = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len.min(1 << 20)];
    r.read_exact(&mut body).ok()?;
    let mut w = s;
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    let _ = w.flush();
    Some(Hook {
        path,
        signed: signature.as_deref() == Some(sign(secret, &body).as_str()),
        signature,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// A message the SMTP server received.
#[derive(Clone, Debug)]
pub struct Mail {
    /// The `Subject` header (unfolded).
    pub subject: String,
    /// The `To` header.
    pub to: String,
    /// The `From` header.
    pub from: String,
    /// The body.
    pub body: String,
}

/// A real SMTP server (`python3 -m aiosmtpd`) on a free port of 127.0.0.1 that stores each
/// message in a maildir; killed when dropped.
pub struct SmtpSink {
    /// `smtp://127.0.0.1:PORT` (with `?tls=required` for STARTTLS, or `smtps://`).
    pub url: String,
    maildir: PathBuf,
    child: Child,
}

impl SmtpSink {
    /// Starts the server with its maildir under `dir` and waits until it accepts connections.
    pub fn start(dir: &Path) -> SmtpSink {
        Self::start_with(dir, "smtp", &[])
    }

    /// [`SmtpSink::start`] with the certificate and key of `cert_key`: STARTTLS required
    /// before any mail (`url` is `smtp://...?tls=required`), or TLS from the first byte when
    /// `smtps` (`url` is `smtps://...`).
    pub fn start_tls(dir: &Path, cert_key: (&Path, &Path), smtps: bool) -> SmtpSink {
        let (cert, key) = (
            cert_key.0.display().to_string(),
            cert_key.1.display().to_string(),
        );
        if smtps {
            Self::start_with(dir, "smtps", &["--smtpscert", &cert, "--smtpskey", &key])
        } else {
            Self::start_with(dir, "starttls", &["--tlscert", &cert, "--tlskey", &key])
        }
    }

    fn start_with(dir: &Path, mode: &str, extra: &[&str]) -> SmtpSink {
        std::fs::create_dir_all(dir).expect("smtp dir");
        let maildir = dir.join("maildir");
        let port = crate::pg::free_port();
        let log = std::fs::File::create(dir.join("smtp.log")).expect("smtp log");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 -m aiosmtpd starts (pip install aiosmtpd; test.sh does)");
        let url = match mode {
            "smtps" => format!("smtps://127.0.0.1:{port}"),
            "starttls" => format!("smtp://127.0.0.1:{port}?tls=required"),
            _ => format!("smtp://127.0.0.1:{port}"),
        };
        let mut sink = SmtpSink {
            url,
            maildir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = sink.child.try_wait() {
                panic!(
                    "aiosmtpd exited with {st}: {}",
                    std::fs::read_to_string(dir.join("smtp.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Mail> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            for e in std::fs::read_dir(self.maildir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    out.push(parse_mail(&text));
                }
            }
        }
        out
    }

    /// The messages whose subject contains all of `words`.
    pub fn with_subject(&self, words: &[&str]) -> Vec<Mail> {
        self.messages()
            .into_iter()
            .filter(|m| words.iter().all(|w| m.subject.contains(w)))
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_mail(text: &str) -> Mail {
    let text = text.replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
    let header = |name: &str| {
        unfolded
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    Mail {
        subject: header("Subject"),
        to: header("To"),
        from: header("From"),
        body: body.to_string(),
    }
}

/// Waits up to `secs` seconds for `cond`; panics with `what` if it never holds.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
