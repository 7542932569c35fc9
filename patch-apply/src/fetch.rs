//! Fetching repository files: the [`transport::Transport`] trait, local directories, mirrors
//! and resumable `.part` files ([`transport`]), and the HTTP(S) transport with its retries,
//! timeouts and Range resume ([`http`]), and offline bundles read in place ([`bundle`]).
//!
//! May use: `error`, `events`, `state`. Nothing here knows what a file means: every download
//! is bounded by and checked against the size and hash the caller took from signed metadata.

pub mod bundle;
pub mod http;
pub mod transport;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use http::HttpOptions;
use transport::{DirTransport, Transport};

/// Opens a transport for a repository given as a local path or `file://` URL, or an
/// `http(s)://` URL (handled by [`http`] with default options).
pub fn open(url: &str) -> Result<Box<dyn Transport>> {
    open_with(url, &HttpOptions::default())
}

/// Like [`open`], with the network settings for `http(s)://` URLs. A location that is
/// neither is refused (see [`Location::parse`]).
pub fn open_with(url: &str, http: &HttpOptions) -> Result<Box<dyn Transport>> {
    match Location::parse(url)? {
        Location::Http(u) => http::open_with(u, http),
        Location::Dir(p) => Ok(Box::new(DirTransport::new(p))),
        Location::Bundle(p) => Ok(Box::new(bundle::BundleTransport::open(&p)?)),
    }
}

/// Where a repository is, as a user or an app gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location<'a> {
    /// An `http://` or `https://` URL.
    Http(&'a str),
    /// A local directory (a path, or the path of a `file://` URL).
    Dir(PathBuf),
    /// An offline bundle: a path (or `file://` URL) naming a regular file (docs/format.md §10).
    Bundle(PathBuf),
}

impl<'a> Location<'a> {
    /// Tells a URL from a path: `http://` and `https://` URLs (any case), `file://` URLs and
    /// paths are accepted (a Windows drive path such as `C:\repo` is a path). Refused, with
    /// the reason: another scheme (`ftp://x/y`), and a host and port without a scheme
    /// (`127.0.0.1:18080`, `example.com:8080/repo`), which would otherwise be taken as a
    /// relative path, unless a directory of that name exists.
    pub fn parse(s: &'a str) -> Result<Location<'a>> {
        let bad = |reason: String| Error::BadLocation {
            location: s.to_string(),
            reason,
        };
        if s.trim().is_empty() {
            return Err(bad("empty repository location".into()));
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            let is_scheme = scheme.len() > 1
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if is_scheme {
                return match scheme.to_ascii_lowercase().as_str() {
                    "http" | "https" => Ok(Location::Http(s)),
                    "file" if rest.is_empty() => Err(bad("file:// URL without a path".into())),
                    "file" => Ok(Location::local(PathBuf::from(rest))),
                    other => Err(bad(format!(
                        "URL scheme {other}:// is not supported; use http://, https://, file:// or a local directory"
                    ))),
                };
            }
        }
        if looks_like_host_port(s) && !Path::new(s).exists() {
            return Err(bad(format!(
                "a host and port without a scheme; did you mean http://{s}?"
            )));
        }
        Ok(Location::local(PathBuf::from(s)))
    }

    /// A local path: a bundle when it names a regular file, else a directory.
    fn local(p: PathBuf) -> Location<'a> {
        if p.is_file() {
            Location::Bundle(p)
        } else {
            Location::Dir(p)
        }
    }

    /// Whether this is an offline bundle.
    pub fn is_bundle(&self) -> bool {
        matches!(self, Location::Bundle(_))
    }
}

/// `HOST:PORT` or `HOST:PORT/PATH`, where HOST is a name or an address (`[::1]` too) and not
/// a single drive letter.
fn looks_like_host_port(s: &str) -> bool {
    let authority = s.split('/').next().unwrap_or(s);
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.ends_with(']')
    } else {
        host.len() > 1
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    host_ok && !port.is_empty() && port.len() <= 5 && port.chars().all(|c| c.is_ascii_digit())
}

/// Checks that `url` names a repository location [`open_with`] accepts, without opening it
/// (for a refusal before anything is written).
pub fn check_location(url: &str) -> Result<()> {
    Location::parse(url).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_urls_paths_or_refused_with_the_reason() {
        let dir = |s: &str| Some(Location::Dir(PathBuf::from(s)));
        let cases: &[(&str, Option<Location>)] = &[
            (
                "http://127.0.0.1:8080/repo",
                Some(Location::Http("http://127.0.0.1:8080/repo")),
            ),
            (
                "HTTPS://example.com/r",
                Some(Location::Http("HTTPS://example.com/r")),
            ),
            ("file:///srv/repo", dir("/srv/repo")),
            ("/srv/repo", dir("/srv/repo")),
            ("repo", dir("repo")),
            ("./a:b", dir("./a:b")),
            (r"C:\updates\repo", dir(r"C:\updates\repo")),
            ("C:/updates/repo", dir("C:/updates/repo")),
            ("127.0.0.1:18080", None),
            ("example.com:8080/repo", None),
            ("[::1]:8080", None),
            ("ftp://x/y", None),
            ("file://", None),
            ("", None),
        ];
        for (input, want) in cases {
            match (Location::parse(input), want) {
                (Ok(got), Some(w)) => assert_eq!(&got, w, "{input}"),
                (Err(e), None) => assert!(e.to_string().contains(&format!("{input:?}")), "{e}"),
                (got, _) => panic!("{input}: {got:?}"),
            }
        }
        let e = Location::parse("127.0.0.1:18080").expect_err("refused");
        assert!(
            e.to_string()
                .contains("did you mean http://127.0.0.1:18080?"),
            "{e}"
        );
        let e = Location::parse("ftp://x/y").expect_err("refused");
        assert!(e.to_string().contains("ftp://"), "{e}");
        // A regular file is an offline bundle, as a path or a file:// URL.
        let d = tempfile::tempdir().expect("test setup");
        let f = d.path().join("x.bundle");
        std::fs::write(&f, b"").expect("test setup");
        let fs = f.display().to_string();
        assert_eq!(Location::parse(&fs).ok(), Some(Location::Bundle(f.clone())));
        let url = format!("file://{fs}");
        assert_eq!(Location::parse(&url).ok(), Some(Location::Bundle(f)));
    }
}
