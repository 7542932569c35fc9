//! Regressions of the trust layer found with TUF's conformance suite (issue 16), each through
//! the real `tuf-client` binary (built from `patch_apply::trust`) against a TUF repository
//! written file by file in a temp dir: what a refresh verified is kept even when a later step
//! of the same refresh fails, an equal-version timestamp is discarded, and duplicate signature
//! key ids are refused.
#![allow(clippy::unwrap_used)] // Tests: a panic is a failure with its message.
use std::path::PathBuf;
use std::process::Command;

use e2e_tests::*;
use formats::keys::KeyPair;
use formats::tuf::{
    Role, RootMetadata, Signed, SnapshotMetadata, TargetsMetadata, TimestampMetadata,
};

/// An expiry 30 days ahead (a macro: this crate does not name the `time` types).
macro_rules! later {
    () => {
        formats::time_util::now() + std::time::Duration::from_secs(30 * 24 * 3600)
    };
}

/// A TUF repository in `dir/metadata`, all roles signed by `root_key` except timestamp.
struct Repo {
    dir: PathBuf,
    root_key: KeyPair,
}

impl Repo {
    fn new(w: &tempfile::TempDir) -> Repo {
        let dir = w.path().join("repo");
        std::fs::create_dir_all(dir.join("metadata")).unwrap();
        Repo {
            dir,
            root_key: KeyPair::from_seed([1; 32]),
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join("metadata").join(name), bytes).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.join("metadata").join(name)).unwrap();
    }

    /// Root `version` with the timestamp role held by `ts_key`; written as `N.root.json`.
    fn root(&self, version: u64, ts_key: &KeyPair) -> Vec<u8> {
        let mut root = RootMetadata::new_single_key(&self.root_key.public(), version, later!());
        root.set_role(Role::Timestamp, &[ts_key.public()], 1);
        let b = Signed::sign(root, &[&self.root_key])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        self.write(&format!("{version}.root.json"), &b);
        b
    }

    /// Targets and snapshot of `version` (`N.targets.json`, `N.snapshot.json`); returns the
    /// snapshot bytes.
    fn snapshot(&self, version: u64) -> Vec<u8> {
        let t = Signed::sign(TargetsMetadata::new(version, later!()), &[&self.root_key])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        self.write(&format!("{version}.targets.json"), &t);
        let s = Signed::sign(
            SnapshotMetadata::new(version, later!(), version, &t),
            &[&self.root_key],
        )
        .unwrap()
        .to_canonical_bytes()
        .unwrap();
        self.write(&format!("{version}.snapshot.json"), &s);
        s
    }

    /// `timestamp.json` of `version` pinning snapshot `snap_version`, signed by `keys`.
    fn timestamp(
        &self,
        version: u64,
        snap_version: u64,
        snap: &[u8],
        keys: &[&KeyPair],
    ) -> Vec<u8> {
        let b = Signed::sign(
            TimestampMetadata::new(version, later!(), snap_version, snap),
            keys,
        )
        .unwrap()
        .to_canonical_bytes()
        .unwrap();
        self.write("timestamp.json", &b);
        b
    }
}

/// A client with its own metadata dir, initialised with `root`.
struct Client {
    md: PathBuf,
    repo: PathBuf,
}

impl Client {
    fn new(w: &tempfile::TempDir, repo: &Repo, root: &[u8]) -> Client {
        let md = w.path().join("client");
        std::fs::create_dir_all(&md).unwrap();
        let init = w.path().join("initial_root.json");
        std::fs::write(&init, root).unwrap();
        ok(cmd("tuf-client")
            .arg("--metadata-dir")
            .arg(&md)
            .arg("init")
            .arg(&init));
        Client {
            md,
            repo: repo.dir.join("metadata"),
        }
    }

    fn refresh(&self) -> Command {
        let mut c = cmd("tuf-client");
        c.arg("--metadata-dir")
            .arg(&self.md)
            .arg("--metadata-url")
            .arg(&self.repo)
            .arg("refresh");
        c
    }

    fn version(&self, role: &str) -> u64 {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.md.join(format!("{role}.json"))).unwrap())
                .unwrap();
        v["signed"]["version"].as_u64().unwrap()
    }

    fn file(&self, role: &str) -> Option<Vec<u8>> {
        std::fs::read(self.md.join(format!("{role}.json"))).ok()
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Spec 5.3.8: a root verified in a refresh that then fails (timestamp.json missing) is kept,
/// so the key it revoked stays revoked when a later copy of the repository withholds that
/// root and signs with the revoked key.
#[test]
fn revoked_key_stays_revoked_after_a_refresh_that_failed_later() {
    let w = tmp();
    let repo = Repo::new(&w);
    let old_ts = KeyPair::from_seed([2; 32]);
    let new_ts = KeyPair::from_seed([3; 32]);
    let root1 = repo.root(1, &old_ts);
    let snap = repo.snapshot(1);
    repo.timestamp(1, 1, &snap, &[&old_ts]);
    let client = Client::new(&w, &repo, &root1);
    ok(&mut client.refresh());

    // Root v2 revokes the old timestamp key; the refresh that sees it fails later.
    repo.root(2, &new_ts);
    repo.remove("timestamp.json");
    fails(&mut client.refresh());
    assert_eq!(
        client.version("root"),
        2,
        "root v2 was verified, it must be kept"
    );

    // A copy of the repository without root v2, its timestamp signed by the revoked key.
    repo.remove("2.root.json");
    repo.timestamp(2, 1, &snap, &[&old_ts]);
    let err = fails(&mut client.refresh());
    assert!(err.contains("threshold"), "{err}");
    assert_eq!(client.version("timestamp"), 1);
}

/// Spec 5.4.5: a timestamp verified in a refresh that then fails (its snapshot is missing) is
/// kept, so an older timestamp served afterwards is refused as a rollback.
#[test]
fn timestamp_from_a_failed_refresh_still_refuses_rollback() {
    let w = tmp();
    let repo = Repo::new(&w);
    let k = KeyPair::from_seed([1; 32]);
    let root1 = repo.root(1, &k);
    let snap1 = repo.snapshot(1);
    repo.timestamp(1, 1, &snap1, &[&k]);
    let client = Client::new(&w, &repo, &root1);
    ok(&mut client.refresh());

    // Timestamp v3 pins snapshot v3, which is not there: the refresh fails after it.
    let snap2 = repo.snapshot(2);
    let snap3 = repo.snapshot(3);
    repo.remove("3.snapshot.json");
    repo.timestamp(3, 3, &snap3, &[&k]);
    fails(&mut client.refresh());
    assert_eq!(
        client.version("timestamp"),
        3,
        "timestamp v3 was verified, it must be kept"
    );

    // A replay of the (valid, complete) version 2.
    repo.timestamp(2, 2, &snap2, &[&k]);
    let err = fails(&mut client.refresh());
    assert!(
        err.contains("rollback") || err.contains("version 3"),
        "{err}"
    );
    assert_eq!(client.version("timestamp"), 3);
    assert_eq!(client.version("snapshot"), 1);
}

/// Spec 5.4.3.1: a timestamp with the version already trusted but other content is discarded;
/// the trusted one stays in force and nothing it does not pin is fetched or trusted.
#[test]
fn equal_version_timestamp_with_other_content_is_discarded() {
    let w = tmp();
    let repo = Repo::new(&w);
    let k = KeyPair::from_seed([1; 32]);
    let root1 = repo.root(1, &k);
    let snap1 = repo.snapshot(1);
    let ts1 = repo.timestamp(1, 1, &snap1, &[&k]);
    let client = Client::new(&w, &repo, &root1);
    ok(&mut client.refresh());

    // Another timestamp v1, pinning a (valid) snapshot v2.
    let snap2 = repo.snapshot(2);
    let other = repo.timestamp(1, 2, &snap2, &[&k]);
    assert_ne!(other, ts1);
    ok(&mut client.refresh());
    assert_eq!(
        client.file("timestamp").unwrap(),
        ts1,
        "the trusted timestamp must stay"
    );
    assert_eq!(
        client.version("snapshot"),
        1,
        "snapshot v2 is not pinned by it"
    );
}

/// Spec 4.2: the key id of each signature must be unique; a document signed twice by the same
/// key is refused even though one signature meets its threshold.
#[test]
fn duplicate_signature_key_ids_are_refused() {
    let w = tmp();
    let repo = Repo::new(&w);
    let k = KeyPair::from_seed([1; 32]);
    let root1 = repo.root(1, &k);
    let snap1 = repo.snapshot(1);
    repo.timestamp(1, 1, &snap1, &[&k, &k]);
    let client = Client::new(&w, &repo, &root1);
    let err = fails(&mut client.refresh());
    assert!(err.contains("two signatures"), "{err}");
    assert_eq!(client.file("timestamp"), None);
}
