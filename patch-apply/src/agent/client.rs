//! The device side of the fleet protocol over HTTP (`docs/fleet.md`): enroll, check in (with
//! `If-None-Match`), post command results, upload files. Every answer is untrusted: bodies are
//! read up to [`formats::fleet::MAX_BODY`] only, parsed into the wire types and checked, and
//! anything else is an [`AgentError`], never a panic.

use std::io::Read;
use std::time::Duration;

use formats::fleet::{
    CheckIn, CheckInResponse, CommandResult, EnrollRequest, EnrollResponse, UploadReceipt,
    MAX_BODY, MAX_SHORT,
};
use reqwest::blocking::{Body, Client, Response};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use serde::de::DeserializeOwned;

/// Why talking to the fleet server failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No answer (connection refused, timeout, TLS).
    #[error("{url}: server unreachable: {reason}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// An error status other than 401.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The request URL.
        url: String,
        /// The status code.
        status: u16,
        /// The server's error message (bounded), or the reason phrase.
        message: String,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// 401: the server does not know (or no longer knows) the token, or refused the secret.
    #[error("{url}: HTTP 401: {message}")]
    Unauthorized {
        /// The request URL.
        url: String,
        /// The server's error message.
        message: String,
    },
    /// An answer that is not what the protocol says (garbage, oversized, wrong fields).
    #[error("{url}: bad answer: {reason}")]
    BadAnswer {
        /// The request URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The updater or the local files failed.
    #[error(transparent)]
    Update(#[from] crate::error::Error),
    /// The agent's configuration is unusable.
    #[error("{0}")]
    Config(String),
}

impl AgentError {
    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AgentError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The answer to a check-in.
#[derive(Debug)]
pub enum CheckInAnswer {
    /// A new answer and its `ETag`.
    New(Box<CheckInResponse>, Option<String>),
    /// `304 Not Modified`: the last answer still holds.
    NotModified,
}

/// A client of one fleet server.
#[derive(Clone, Debug)]
pub struct FleetClient {
    base: String,
    http: Client,
}

impl FleetClient {
    /// A client of the server at `base` (`http://host:port`), each request bounded by
    /// `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, AgentError> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(AgentError::Config(format!(
                "server {base:?} is not an http:// or https:// URL"
            )));
        }
        let http = Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(15)))
            .timeout(timeout)
            .user_agent(concat!("patch-apply-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AgentError::Config(format!("HTTP client: {e}")))?;
        Ok(FleetClient { base, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/enroll`.
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, AgentError> {
        let url = self.url("/v1/enroll");
        let r = self
            .http
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .body(to_json(req)?)
            .send();
        let r = check(&url, r)?;
        let resp: EnrollResponse = parse(&url, r)?;
        if resp.token.is_empty()
            || resp.token.len() > MAX_SHORT
            || !resp.token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(AgentError::BadAnswer {
                url,
                reason: "token is not 1 to 128 printable characters".into(),
            });
        }
        Ok(resp)
    }

    /// `POST /v1/checkin` with the token, conditional on `etag`.
    pub fn checkin(
        &self,
        token: &str,
        body: &CheckIn,
        etag: Option<&str>,
    ) -> Result<CheckInAnswer, AgentError> {
        let url = self.url("/v1/checkin");
        let mut req = self
            .http
            .post(&url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/json")
            .body(to_json(body)?);
        if let Some(e) = etag {
            req = req.header(IF_NONE_MATCH, e);
        }
        let r = check(&url, req.send())?;
        if r.status().as_u16() == 304 {
            return Ok(CheckInAnswer::NotModified);
        }
        let etag = r
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= MAX_SHORT)
            .map(str::to_string);
        let resp: CheckInResponse = parse(&url, r)?;
        Ok(CheckInAnswer::New(Box::new(resp), etag))
    }

    /// `POST /v1/commands/{id}/result`.
    pub fn post_result(
        &self,
        token: &str,
        command: &str,
        result: &CommandResult,
    ) -> Result<(), AgentError> {
        formats::fleet::check_id("command", command).map_err(|e| AgentError::BadAnswer {
            url: self.base.clone(),
            reason: format!("command id: {e}"),
        })?;
        let url = self.url(&format!("/v1/commands/{command}/result"));
        let r = self
            .http
            .post(&url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/json")
            .body(to_json(result)?)
            .send();
        check(&url, r)?;
        Ok(())
    }

    /// `PUT /v1/uploads?command=ID&name=NAME`: streams `len` bytes of `body`.
    pub fn upload(
        &self,
        token: &str,
        command: &str,
        name: &str,
        body: impl Read + Send + 'static,
        len: u64,
    ) -> Result<UploadReceipt, AgentError> {
        self.put_upload(token, ("command", command), name, body, len)
    }

    /// `PUT /v1/uploads?crash=ID&name=NAME`: uploads a file attached to the crash report
    /// `crash` (at most `len` bytes of `body`). A server older than crash uploads answers 400
    /// (`field: "command"`).
    pub fn upload_crash_file(
        &self,
        token: &str,
        crash: &str,
        name: &str,
        body: impl Read + Send + 'static,
        len: u64,
    ) -> Result<UploadReceipt, AgentError> {
        self.put_upload(token, ("crash", crash), name, body, len)
    }

    /// `PUT /v1/uploads` with `owner` (`command=ID` or `crash=ID`) and `name` as the query.
    fn put_upload(
        &self,
        token: &str,
        owner: (&str, &str),
        name: &str,
        body: impl Read + Send + 'static,
        len: u64,
    ) -> Result<UploadReceipt, AgentError> {
        let url = self.url("/v1/uploads");
        let r = self
            .http
            .put(&url)
            .query(&[owner, ("name", name)])
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Body::sized(body, len))
            .send();
        let r = check(&url, r)?;
        parse(&url, r)
    }
}

/// A request body as JSON.
fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, AgentError> {
    serde_json::to_vec(v).map_err(|e| AgentError::Config(format!("cannot encode a request: {e}")))
}

/// Turns a transport error or an error status into an [`AgentError`].
fn check(url: &str, r: reqwest::Result<Response>) -> Result<Response, AgentError> {
    let r = r.map_err(|e| AgentError::Unreachable {
        url: url.to_string(),
        reason: error_chain(&e),
    })?;
    let status = r.status();
    if status.is_success() || status.as_u16() == 304 {
        return Ok(r);
    }
    let retry_after = r
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = read_bounded(r, 4096).unwrap_or_default();
    let message = serde_json::from_slice::<formats::fleet::ErrorBody>(&body)
        .map(|b| match b.field {
            Some(f) => format!("{} (field {f})", b.error),
            None => b.error,
        })
        .unwrap_or_else(|_| status.canonical_reason().unwrap_or("error").to_string());
    let message = formats::fleet::clip(&message, 1024);
    if status.as_u16() == 401 {
        return Err(AgentError::Unauthorized {
            url: url.to_string(),
            message,
        });
    }
    Err(AgentError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        message,
        retry_after,
    })
}

/// Reads at most `max` bytes of the body; more is an error.
fn read_bounded(r: Response, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut out)?;
    if out.len() > max {
        return Err(std::io::Error::other(format!(
            "answer longer than {max} bytes"
        )));
    }
    Ok(out)
}

fn parse<T: DeserializeOwned>(url: &str, r: Response) -> Result<T, AgentError> {
    let bad = |reason: String| AgentError::BadAnswer {
        url: url.to_string(),
        reason,
    };
    let body = read_bounded(r, MAX_BODY).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("not the expected JSON: {e}")))
}

/// An error and its causes in one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
