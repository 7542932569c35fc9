//! A blocking client of the admin API, used by the `patch-server` CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use formats::fleet::ErrorBody;

/// Why an admin API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{url}: {status}: {error}{}", field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Status {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        error: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// The server could not be reached or its answer read.
    #[error("{url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// A local file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// An admin API endpoint and token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8443`) with an admin token,
    /// trusting `ca_pem` (a PEM certificate) besides the system's roots for HTTPS.
    pub fn new(base: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<Client, ClientError> {
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300));
        if let Some(pem) = ca_pem {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|source| ClientError::Transport {
                    url: base.to_string(),
                    source,
                })?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(|source| ClientError::Transport {
            url: base.to_string(),
            source,
        })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        url: String,
        r: reqwest::Result<reqwest::blocking::Response>,
    ) -> Result<reqwest::blocking::Response, ClientError> {
        let r = r.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        let (error, field) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.error, b.field),
            Err(_) => (text, None),
        };
        Err(ClientError::Status {
            url,
            status,
            error,
            field,
        })
    }

    fn json(
        &self,
        url: String,
        r: reqwest::blocking::Response,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = r.bytes().map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Status {
            url,
            status: 200,
            error: format!("answer is not JSON: {e}"),
            field: None,
        })
    }

    /// `GET path` with `query`, as JSON.
    pub fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, ClientError> {
        let url = self.url(path);
        let r = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .query(query)
            .send();
        let r = self.finish(url.clone(), r)?;
        self.json(url, r)
    }

    /// `POST path` with a JSON body, as JSON.
    pub fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let url = self.url(path);
        let r = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send();
        let r = self.finish(url.clone(), r)?;
        self.json(url, r)
    }

    /// `DELETE path`, as JSON.
    pub fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let url = self.url(path);
        let r = self.http.delete(&url).bearer_auth(&self.token).send();
        let r = self.finish(url.clone(), r)?;
        self.json(url, r)
    }

    /// `GET path` into the file `out` (written beside it, then renamed); returns its size.
    pub fn download(&self, path: &str, out: &Path) -> Result<u64, ClientError> {
        let url = self.url(path);
        let r = self.http.get(&url).bearer_auth(&self.token).send();
        let mut r = self.finish(url, r)?;
        let io = |source| ClientError::Io {
            path: out.to_path_buf(),
            source,
        };
        let dir = out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let n = r
            .copy_to(tmp.as_file_mut())
            .map_err(|source| ClientError::Transport {
                url: self.url(path),
                source,
            })?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(out).map_err(|e| io(e.error))?;
        Ok(n)
    }
}
