//! `tuf-client`: the client-under-test command line of The Update Framework's conformance suite
//! (`theupdateframework/tuf-conformance`, its `CLIENT-CLI.md`), built from this project's own
//! trust code: [`patch_apply::trust::refresh`] and [`patch_apply::trust::find_target`] over the
//! project's HTTP transport, with `formats::tuf` doing every check. It exists so that CI can
//! measure the trust layer against the suite (`.ci/tuf-conformance.sh`); apps do not use it.
//!
//! ```text
//! tuf-client --metadata-dir DIR init ROOT
//! tuf-client --metadata-dir DIR --metadata-url URL refresh
//! tuf-client --metadata-dir DIR --metadata-url URL --target-name NAME... \
//!            --target-base-url URL --target-dir DIR download
//! ```
//!
//! `DIR` holds the trusted metadata under plain role names (`root.json`, `timestamp.json`,
//! `snapshot.json`, `targets.json`, delegated roles as `NAME.json` with the name
//! percent-encoded). The initial root given to `init` is the trust anchor (no pinned key).
//! Exit status 0 on success, 1 on any failure.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use formats::limits::Limits;
use formats::tuf::role_file_name;
use patch_apply::http::HttpOptions;
use patch_apply::transport::{Expected, Transport};
use patch_apply::trust::{self, DelegatedCache, StoredTrust};

#[derive(Parser)]
#[command(
    name = "tuf-client",
    about = "TUF conformance client-under-test built on patch-apply's trust code"
)]
struct Cli {
    /// Directory of the trusted metadata.
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Target path to download (repeatable; processed in order).
    #[arg(long)]
    target_name: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Directory for downloaded, verified targets.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// More output (accepted for compatibility).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stores ROOT as the trusted root (no checks, no requests).
    Init {
        /// The initial trusted root.json.
        root: PathBuf,
    },
    /// Updates the top-level metadata with the TUF client workflow.
    Refresh,
    /// Refreshes, then downloads and verifies each `--target-name`.
    Download,
}

/// The repository as the trust code sees it: `metadata/...` under the metadata URL and
/// `targets/...` under the target URL, each through the project's HTTP transport. Paths with a
/// percent-encoded delegated role name are requested as they are (the HTTP transport would
/// encode the `%` again).
struct SplitRepo {
    metadata_url: String,
    metadata: Box<dyn Transport>,
    targets: Option<Box<dyn Transport>>,
    raw: reqwest::blocking::Client,
}

impl SplitRepo {
    fn new(metadata_url: &str, targets_url: Option<&str>) -> Result<Self> {
        let opts = HttpOptions {
            retries: 0,
            ..HttpOptions::default()
        };
        let metadata = patch_apply::fetch::open_with(metadata_url, &opts)?;
        let targets = targets_url
            .map(|u| patch_apply::fetch::open_with(u, &opts))
            .transpose()?;
        Ok(SplitRepo {
            metadata_url: metadata_url.trim_end_matches('/').to_string(),
            metadata,
            targets,
            raw: reqwest::blocking::Client::new(),
        })
    }

    fn route(&self, path: &str) -> patch_apply::Result<(&dyn Transport, String)> {
        if let Some(rest) = path.strip_prefix("metadata/") {
            return Ok((self.metadata.as_ref(), rest.to_string()));
        }
        if let (Some(rest), Some(t)) = (path.strip_prefix("targets/"), &self.targets) {
            return Ok((t.as_ref(), rest.to_string()));
        }
        Err(patch_apply::Error::Precondition(format!(
            "no base URL for {path}"
        )))
    }

    fn get_raw(&self, rest: &str, max_len: u64) -> patch_apply::Result<Option<Vec<u8>>> {
        let url = format!("{}/{rest}", self.metadata_url);
        let fail = |reason: String| patch_apply::Error::Precondition(format!("{url}: {reason}"));
        let resp = self.raw.get(&url).send().map_err(|e| fail(e.to_string()))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP status {}", resp.status())));
        }
        let mut buf = Vec::new();
        resp.take(max_len + 1)
            .read_to_end(&mut buf)
            .map_err(|e| fail(e.to_string()))?;
        if buf.len() as u64 > max_len {
            return Err(fail(format!("more than {max_len} bytes")));
        }
        Ok(Some(buf))
    }
}

impl Transport for SplitRepo {
    fn get_small(&self, path: &str, max_len: u64) -> patch_apply::Result<Option<Vec<u8>>> {
        let (t, rest) = self.route(path)?;
        if path.starts_with("metadata/") && rest.contains('%') {
            return self.get_raw(&rest, max_len);
        }
        t.get_small(&rest, max_len)
    }

    fn download(
        &self,
        path: &str,
        expected: &Expected,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> patch_apply::Result<()> {
        let (t, rest) = self.route(path)?;
        t.download(&rest, expected, dest, progress)
    }

    fn describe(&self) -> String {
        self.metadata.describe()
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let limits = Limits::default();
    let dir = &cli.metadata_dir;
    match cli.command {
        Command::Init { ref root } => {
            let bytes =
                std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
            patch_apply::atomic::write_files(dir, &[("root.json", &bytes)])?;
            eprintln!("tuf-client: initialised {}", dir.display());
            Ok(())
        }
        Command::Refresh => {
            let url = cli
                .metadata_url
                .as_deref()
                .ok_or_else(|| anyhow!("refresh needs --metadata-url"))?;
            let repo = SplitRepo::new(url, None)?;
            refresh(&repo, dir, &limits)?;
            eprintln!("tuf-client: refreshed {}", dir.display());
            Ok(())
        }
        Command::Download => {
            let url = cli
                .metadata_url
                .as_deref()
                .ok_or_else(|| anyhow!("download needs --metadata-url"))?;
            let target_dir = cli
                .target_dir
                .as_deref()
                .ok_or_else(|| anyhow!("download needs --target-dir"))?;
            let repo = SplitRepo::new(url, cli.target_base_url.as_deref())?;
            let (set, stored) = refresh(&repo, dir, &limits)?;
            let mut cache = DelegatedCache::new();
            for name in &cli.target_name {
                let target = trust::find_target(&repo, &set, &stored, &mut cache, name, &limits)?
                    .ok_or_else(|| {
                    anyhow!("target {name:?} is not listed by any trusted role")
                })?;
                let dest = target_dir.join(role_file_name(name));
                // Length and every listed hash, checked while streaming (the same resumable,
                // bounded download as every other artifact; never more than `length` bytes).
                let expected = target.expected(name)?;
                if expected.matches_file(&dest) {
                    eprintln!("tuf-client: {name} already downloaded");
                    continue;
                }
                let remote = if set.root().root().consistent_snapshot {
                    let digest = target
                        .hashes
                        .values()
                        .next()
                        .ok_or_else(|| anyhow!("target {name:?} lists no hashes"))?;
                    match name.rsplit_once('/') {
                        Some((d, base)) => format!("{d}/{digest}.{base}"),
                        None => format!("{digest}.{name}"),
                    }
                } else {
                    name.clone()
                };
                let part = target_dir.join(format!(".{}.part", expected.cache_name()));
                if let Err(e) =
                    repo.download(&format!("targets/{remote}"), &expected, &part, &|_| {})
                {
                    // Nothing unverified is left in the target directory.
                    let _ = std::fs::remove_file(&part);
                    return Err(
                        anyhow::Error::new(e).context(format!("target {name:?} from {remote}"))
                    );
                }
                std::fs::rename(&part, &dest).with_context(|| {
                    format!("cannot move {} to {}", part.display(), dest.display())
                })?;
                eprintln!("tuf-client: downloaded {name}");
            }
            Ok(())
        }
    }
}

fn refresh(
    repo: &SplitRepo,
    dir: &Path,
    limits: &Limits,
) -> Result<(formats::tuf::TrustedSet, StoredTrust)> {
    let stored = StoredTrust::load(dir)?;
    if stored.root.is_none() {
        bail!("{} holds no root.json: run init first", dir.display());
    }
    let (set, new) = trust::refresh(repo, &[], &stored, formats::time_util::now(), limits)?;
    new.save_changes(dir, &stored)?;
    Ok((set, new))
}
