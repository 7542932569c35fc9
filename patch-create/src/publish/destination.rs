//! Opening a publishing destination from its URL: `s3://BUCKET/PREFIX` (AWS S3 and
//! S3-compatible stores with `--endpoint`), `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX` and
//! `file:///DIR`, each through `object_store`; credentials from the environment variables each
//! cloud's tools read, and for S3 also from the shared credentials file (`~/.aws/credentials`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

use crate::error::{Error, Result};

/// Where to publish and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct DestinationSpec {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or `file:///dir`.
    pub url: String,
    /// S3 endpoint of an S3-compatible store (`http://127.0.0.1:3900`); default: AWS (or
    /// `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// S3 region (default: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// S3 virtual-hosted-style requests (`BUCKET.endpoint/key`) instead of path-style
    /// (`endpoint/BUCKET/key`, the default, which every S3-compatible store accepts).
    pub virtual_hosted: bool,
}

/// An opened destination.
pub struct Destination {
    /// The store, already narrowed to the prefix.
    pub store: Arc<dyn ObjectStore>,
    /// The URL as given, for messages (`URL/KEY`).
    pub url: String,
    /// Whether the backend stores `Cache-Control` and `Content-Type` (object stores do; a local
    /// directory does not: its web server sets them, docs/hosting.md).
    pub stores_headers: bool,
    /// For `file://`: the directory (created by a publish that writes).
    pub local_dir: Option<PathBuf>,
}

fn bad(url: &str, reason: impl Into<String>) -> Error {
    Error::Publish {
        what: url.to_string(),
        reason: reason.into(),
    }
}

fn store_err(url: &str, e: object_store::Error) -> Error {
    Error::Store {
        what: format!("opening {url}"),
        source: e,
    }
}

/// The bucket and prefix of `scheme://bucket/prefix`.
fn bucket_and_prefix(url: &url::Url) -> Result<(String, String)> {
    let bucket = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad(url.as_str(), "no bucket: give SCHEME://BUCKET/PREFIX"))?;
    let prefix = url.path().trim_matches('/').to_string();
    if prefix.split('/').any(|c| c == "." || c == "..") {
        return Err(bad(url.as_str(), "the prefix may not hold `.` or `..`"));
    }
    Ok((bucket.to_string(), prefix))
}

/// Access key, secret and session token of `profile` in an AWS shared credentials file
/// (`[profile]` sections of `key = value` lines).
fn parse_shared_credentials(text: &str, profile: &str) -> Option<(String, String, Option<String>)> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((id?, secret?, token))
}

/// Credentials from `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`), profile
/// `AWS_PROFILE` (default `default`), used only when `AWS_ACCESS_KEY_ID` is not set.
fn shared_credentials() -> Result<Option<(String, String, Option<String>)>> {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return Ok(None);
    }
    let file = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(f) => PathBuf::from(f),
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".aws").join("credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&file, e)),
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    Ok(parse_shared_credentials(&text, &profile))
}

impl Destination {
    /// A cloud object store (which keeps `Cache-Control` and `Content-Type`) under `prefix`.
    fn remote(store: Arc<dyn ObjectStore>, prefix: &str, url: String) -> Destination {
        Destination {
            store: with_prefix(store, prefix),
            url,
            stores_headers: true,
            local_dir: None,
        }
    }
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// Opens the destination `spec` names. `create_dir`: create a `file://` directory that does
/// not exist yet (a dry run does not).
pub fn open(spec: &DestinationSpec, create_dir: bool) -> Result<Destination> {
    let url = spec.url.trim_end_matches('/').to_string();
    let parsed = url::Url::parse(&url).map_err(|e| {
        bad(
            &url,
            format!("not a URL ({e}): give s3://BUCKET/PREFIX, gs://, az:// or file:///DIR"),
        )
    })?;
    let s3_only = spec.endpoint.is_some() || spec.region.is_some() || spec.virtual_hosted;
    if s3_only && !matches!(parsed.scheme(), "s3" | "s3a") {
        return Err(bad(
            &url,
            "--endpoint, --region and --virtual-hosted apply to s3:// destinations only",
        ));
    }
    match parsed.scheme() {
        "s3" | "s3a" => {
            let (bucket, prefix) = bucket_and_prefix(&parsed)?;
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_virtual_hosted_style_request(spec.virtual_hosted);
            if let Some((id, secret, token)) = shared_credentials()? {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = token {
                    b = b.with_token(t);
                }
            }
            if let Some(r) = &spec.region {
                b = b.with_region(r);
            }
            if let Some(e) = &spec.endpoint {
                b = b
                    .with_endpoint(e.trim_end_matches('/'))
                    .with_allow_http(e.starts_with("http://"));
            }
            let store = b.build().map_err(|e| store_err(&url, e))?;
            Ok(Destination::remote(Arc::new(store), &prefix, url))
        }
        "gs" => {
            let (bucket, prefix) = bucket_and_prefix(&parsed)?;
            let store = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| store_err(&url, e))?;
            Ok(Destination::remote(Arc::new(store), &prefix, url))
        }
        "az" | "azure" => {
            let (container, prefix) = bucket_and_prefix(&parsed)?;
            let store = MicrosoftAzureBuilder::from_env()
                .with_container_name(container)
                .build()
                .map_err(|e| store_err(&url, e))?;
            Ok(Destination::remote(Arc::new(store), &prefix, url))
        }
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|()| bad(&url, "not a local path: give file:///ABSOLUTE/DIR"))?;
            let exists = dir.is_dir();
            if !exists && create_dir {
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            let store: Arc<dyn ObjectStore> = if exists || create_dir {
                Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|e| store_err(&url, e))?)
            } else {
                // A dry run against a directory that does not exist yet: nothing is there.
                Arc::new(object_store::memory::InMemory::new())
            };
            Ok(Destination {
                store,
                url,
                stores_headers: false,
                local_dir: Some(dir),
            })
        }
        other => Err(bad(
            &url,
            format!(
                "unsupported scheme {other:?}: give s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, \
                 az://CONTAINER/PREFIX or file:///DIR"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_credentials_profiles() {
        let text = "\
# comment
[default]
aws_access_key_id = AK1
aws_secret_access_key = SK1

[ci]
aws_access_key_id=AK2
aws_secret_access_key=SK2
aws_session_token = T2
[broken]
aws_access_key_id = AK3
";
        assert_eq!(
            parse_shared_credentials(text, "default"),
            Some(("AK1".into(), "SK1".into(), None))
        );
        assert_eq!(
            parse_shared_credentials(text, "ci"),
            Some(("AK2".into(), "SK2".into(), Some("T2".into())))
        );
        assert_eq!(parse_shared_credentials(text, "broken"), None);
        assert_eq!(parse_shared_credentials(text, "none"), None);
    }

    #[test]
    fn urls_are_checked() {
        for (url, needle) in [
            ("bucket/prefix", "not a URL"),
            ("ftp://host/x", "unsupported scheme"),
            ("s3:///prefix", "no bucket"),
        ] {
            let spec = DestinationSpec {
                url: url.into(),
                ..Default::default()
            };
            let err = open(&spec, false).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(needle)),
                "{url}: {err:?}"
            );
        }
        let spec = DestinationSpec {
            url: "gs://b/p".into(),
            endpoint: Some("http://x".into()),
            ..Default::default()
        };
        assert!(open(&spec, false).is_err());
    }
}
