//! The Update Framework's metadata (spec 1.0): root, targets, snapshot and timestamp roles,
//! delegated targets roles, signatures over canonical JSON (Ed25519 for keys of ours; ECDSA
//! P-256 and RSA from other TUF tools), thresholds, expiry and version numbers, and the
//! client-side checks of the spec's detailed client workflow (docs/format.md §7).
//!
//! Signatures are always checked over the canonical JSON of the `signed` object *as received*
//! (parsed to a JSON value, then canonicalized), so fields this implementation does not know
//! are covered too. Typed metadata is only handed out after its signatures passed.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::hash::{check_tuf_hashes, Blake3, Pin, Sha256};
use crate::keys::{canonical_json, KeyPair, PublicKey};
use crate::limits::Limits;
use crate::time_util::{format_tuf, parse_tuf};
use crate::version::Version;

/// The TUF specification version we write.
pub const SPEC_VERSION: &str = "1.0.31";

/// The four top-level roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Root: names the keys of every role.
    Root,
    /// Targets: lists the downloadable files.
    Targets,
    /// Snapshot: pins the version of targets metadata.
    Snapshot,
    /// Timestamp: pins the snapshot; the only file a client fetches without a pin.
    Timestamp,
}

impl Role {
    /// The role's name as used in `_type` and in root's `roles`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    /// All roles.
    pub const ALL: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];
}

/// The keys and threshold of one role, as listed in root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Key ids allowed to sign for the role.
    pub keyids: Vec<String>,
    /// Distinct valid signatures required.
    pub threshold: u32,
}

/// Common accessors of every role's `signed` object.
pub trait Metadata: Serialize + DeserializeOwned {
    /// The role.
    const ROLE: Role;
    /// The `_type` field.
    fn type_field(&self) -> &str;
    /// The metadata version.
    fn version(&self) -> u64;
    /// The expiry, as written.
    fn expires(&self) -> &str;
    /// The spec version, as written.
    fn spec_version(&self) -> &str;
}

macro_rules! impl_metadata {
    ($t:ty, $role:expr) => {
        impl Metadata for $t {
            const ROLE: Role = $role;
            fn type_field(&self) -> &str {
                &self.type_
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> &str {
                &self.expires
            }
            fn spec_version(&self) -> &str {
                &self.spec_version
            }
        }
    };
}

/// Root metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMetadata {
    /// Always `root`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF spec version.
    pub spec_version: String,
    /// Whether metadata and targets are served under versioned / hash-prefixed names.
    pub consistent_snapshot: bool,
    /// Metadata version.
    pub version: u64,
    /// Expiry (`YYYY-MM-DDTHH:MM:SSZ`).
    pub expires: String,
    /// Every key, by key id.
    pub keys: BTreeMap<String, PublicKey>,
    /// Keys and thresholds per role name.
    pub roles: BTreeMap<String, RoleKeys>,
}
impl_metadata!(RootMetadata, Role::Root);

impl RootMetadata {
    /// A root where one key holds every role with threshold 1.
    pub fn new_single_key(key: &PublicKey, version: u64, expires: OffsetDateTime) -> Self {
        let id = key.key_id();
        let mut roles = BTreeMap::new();
        for r in Role::ALL {
            roles.insert(
                r.name().to_string(),
                RoleKeys {
                    keyids: vec![id.clone()],
                    threshold: 1,
                },
            );
        }
        RootMetadata {
            type_: "root".into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            version,
            expires: format_tuf(expires),
            keys: BTreeMap::from([(id, key.clone())]),
            roles,
        }
    }

    /// The keys and threshold of `role`.
    pub fn role_keys(&self, role: Role) -> Result<&RoleKeys> {
        self.roles
            .get(role.name())
            .ok_or_else(|| Error::invalid("root metadata", format!("has no {} role", role.name())))
    }

    /// Sets `role` to `keys` with `threshold`, adding the keys and dropping keys no role uses.
    pub fn set_role(&mut self, role: Role, keys: &[PublicKey], threshold: u32) {
        let ids: Vec<String> = keys.iter().map(PublicKey::key_id).collect();
        for k in keys {
            self.keys.insert(k.key_id(), k.clone());
        }
        self.roles.insert(
            role.name().to_string(),
            RoleKeys {
                keyids: ids,
                threshold,
            },
        );
        let used: BTreeSet<String> = self
            .roles
            .values()
            .flat_map(|r| r.keyids.iter().cloned())
            .collect();
        self.keys.retain(|id, _| used.contains(id));
    }
}

/// A pin of one metadata file inside snapshot or timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The pinned file's metadata version.
    pub version: u64,
    /// Its length in bytes, if pinned.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub length: Option<u64>,
    /// Its digests, if pinned (`sha256`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// Snapshot metadata: pins `targets.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    /// Always `snapshot`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF spec version.
    pub spec_version: String,
    /// Metadata version.
    pub version: u64,
    /// Expiry.
    pub expires: String,
    /// Pinned targets metadata, by file name (`targets.json`).
    pub meta: BTreeMap<String, MetaFile>,
}
impl_metadata!(SnapshotMetadata, Role::Snapshot);

/// Timestamp metadata: pins `snapshot.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimestampMetadata {
    /// Always `timestamp`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF spec version.
    pub spec_version: String,
    /// Metadata version.
    pub version: u64,
    /// Expiry.
    pub expires: String,
    /// `snapshot.json`'s pin.
    pub meta: BTreeMap<String, MetaFile>,
}
impl_metadata!(TimestampMetadata, Role::Timestamp);

/// One downloadable file listed by targets metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Length in bytes.
    pub length: u64,
    /// Digests (`sha256`, which every TUF implementation knows).
    pub hashes: BTreeMap<String, String>,
    /// Our per-target data (see [`TargetCustom`]); other tools may put anything here.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub custom: Option<serde_json::Value>,
}

impl TargetFile {
    /// The signed SHA-256, if listed and well-formed.
    pub fn sha256(&self) -> Result<Sha256> {
        self.hashes
            .get("sha256")
            .ok_or_else(|| Error::invalid("target", "has no sha256 hash"))?
            .parse()
    }

    /// Checks downloaded bytes against the signed length and every signed hash (`sha256`,
    /// `sha512`; an unknown algorithm is refused). `what` names the target in errors.
    pub fn check(&self, what: &str, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != self.length {
            return Err(Error::LengthMismatch {
                what: what.to_string(),
                expected: self.length,
                actual: bytes.len() as u64,
            });
        }
        check_tuf_hashes(what, bytes, &self.hashes)
    }

    /// What the target's bytes must be by its TUF entry alone (length and listed hashes), for
    /// a streaming, resumable download of a plain TUF target; `what` names it in errors.
    pub fn expected(&self, what: &str) -> Result<crate::hash::Expected> {
        crate::hash::Expected::of_tuf(what, self.length, &self.hashes)
    }

    /// Our custom data.
    pub fn patchkit(&self, name: &str) -> Result<TargetCustom> {
        let v = self
            .custom
            .as_ref()
            .ok_or_else(|| Error::invalid(name, "target has no custom data"))?;
        serde_json::from_value(v.clone()).map_err(|e| Error::Json {
            what: format!("custom data of target {name}"),
            source: e,
        })
    }

    /// The size and BLAKE3 pin from our custom data.
    pub fn pin(&self, name: &str) -> Result<Pin> {
        Ok(Pin {
            size: self.length,
            blake3: self.patchkit(name)?.blake3,
        })
    }
}

/// What kind of artifact a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A release manifest.
    Manifest,
    /// A full installer archive.
    Installer,
    /// An incremental patch.
    Patch,
    /// Repository-wide settings (maintenance, mirrors).
    Repository,
}

/// Our data in a target's `custom` field (docs/format.md §7.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCustom {
    /// The artifact kind.
    pub kind: TargetKind,
    /// BLAKE3 of the file (the length is the target's `length`).
    pub blake3: Blake3,
    /// The release this artifact belongs to (for a patch: the version it leads to).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<Version>,
    /// For a patch: the version it starts from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<Version>,
    /// For a manifest: the release's tree digest (see `manifest::tree_digest`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tree: Option<Blake3>,
    /// For a manifest: the release's ignore patterns (needed to compute the tree digest of an
    /// install).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub ignore: Vec<String>,
    /// For a manifest: the channel the release is published on.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub channel: Option<String>,
    /// For a manifest: targeting constraints (`region=india`), all of which a client must meet.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub targeting: BTreeMap<String, String>,
    /// For a manifest: the release was withdrawn by the release engineer (`patch-create yank`).
    /// Clients never install it; a client running it moves to the newest release that is not
    /// yanked, even an older one (docs/format.md §7.4).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub yanked: Option<Yank>,
}

/// A signed withdrawal of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Yank {
    /// Why, for people (at most [`MAX_YANK_REASON`] bytes).
    pub reason: String,
    /// When it was yanked (RFC 3339).
    pub at: String,
}

/// Longest yank reason, in bytes.
pub const MAX_YANK_REASON: usize = 1024;

impl Yank {
    /// Checks the reason's length and characters; `what` names the release.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.reason.trim().is_empty() {
            return Err(Error::invalid(what, "a yank needs a reason"));
        }
        if self.reason.len() > MAX_YANK_REASON {
            return Err(Error::TooLarge {
                what: format!("{what}: yank reason"),
                limit: MAX_YANK_REASON as u64,
                actual: self.reason.len() as u64,
            });
        }
        if self.reason.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(
                what,
                "the yank reason holds control characters",
            ));
        }
        Ok(())
    }
}

impl TargetCustom {
    /// Custom data of `kind` with nothing but the BLAKE3 set; fill in the rest with struct
    /// update syntax.
    pub fn new(kind: TargetKind, blake3: Blake3) -> Self {
        TargetCustom {
            kind,
            blake3,
            version: None,
            from: None,
            tree: None,
            ignore: Vec::new(),
            channel: None,
            targeting: BTreeMap::new(),
            yanked: None,
        }
    }
}

/// Targets metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetsMetadata {
    /// Always `targets`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// TUF spec version.
    pub spec_version: String,
    /// Metadata version.
    pub version: u64,
    /// Expiry.
    pub expires: String,
    /// Every target by path.
    pub targets: BTreeMap<String, TargetFile>,
    /// Delegated targets roles, searched for targets this document does not list.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delegations: Option<Delegations>,
}
impl_metadata!(TargetsMetadata, Role::Targets);

/// The delegations of a targets role (spec 4.5): the keys of delegated roles and the roles, in
/// the order they are searched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    /// Keys of the delegated roles, by key id.
    pub keys: BTreeMap<String, PublicKey>,
    /// The delegated roles, in search order.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub roles: Option<Vec<DelegatedRole>>,
    /// Hash-bin delegations in the succinct form (TAP 15); not followed by this client.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub succinct_roles: Option<serde_json::Value>,
}

/// One delegated targets role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// The role's name (its metadata file is `NAME.json`).
    pub name: String,
    /// Key ids allowed to sign for the role.
    pub keyids: Vec<String>,
    /// Distinct valid signatures required.
    pub threshold: u32,
    /// When the role is trusted for a target, no role after it is searched.
    pub terminating: bool,
    /// Path patterns (`*` and `?` never match `/`) of the targets the role is trusted for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub paths: Option<Vec<String>>,
    /// Hex prefixes of the SHA-256 of the target paths the role is trusted for (hashed bins).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path_hash_prefixes: Option<Vec<String>>,
}

impl DelegatedRole {
    /// Whether the role is trusted for `target` (spec 5.7.3): a path pattern matches it, or a
    /// hash prefix starts the SHA-256 (hex) of its path.
    pub fn is_trusted_for(&self, target: &str) -> bool {
        if let Some(paths) = &self.paths {
            return paths.iter().any(|p| path_pattern_matches(p, target));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let digest = Sha256::of(target.as_bytes()).to_hex();
            return prefixes.iter().any(|p| digest.starts_with(p.as_str()));
        }
        false
    }
}

impl Delegations {
    /// The roles to search for `target`, in order, each with whether it is terminating; the
    /// list stops after the first terminating role that is trusted for it.
    pub fn roles_for_target(&self, target: &str) -> Vec<&DelegatedRole> {
        let mut out = Vec::new();
        for r in self.roles.iter().flatten() {
            if r.is_trusted_for(target) {
                out.push(r);
                if r.terminating {
                    break;
                }
            }
        }
        out
    }

    /// The delegation of `name`, if listed.
    pub fn role(&self, name: &str) -> Option<&DelegatedRole> {
        self.roles.iter().flatten().find(|r| r.name == name)
    }
}

/// TUF path pattern matching: pattern and path must have the same number of `/`-separated
/// parts, and each part matches shell-style (`*` any run of characters, `?` one character,
/// `[...]` a set); matching is case-sensitive.
pub fn path_pattern_matches(pattern: &str, path: &str) -> bool {
    let pp: Vec<&str> = pattern.split('/').collect();
    let tp: Vec<&str> = path.split('/').collect();
    pp.len() == tp.len()
        && pp.iter().zip(&tp).all(|(p, t)| {
            let p: Vec<char> = p.chars().collect();
            let t: Vec<char> = t.chars().collect();
            glob_part(&p, &t)
        })
}

/// Shell-style matching of one path part (iterative, so a hostile pattern cannot recurse
/// deeply; at most `pattern × text` steps).
fn glob_part(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = char_class(p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `[...]` set at `p[start]`: whether `c` is in it and the index after it; `None` when the
/// set is not closed (then `[` is literal).
fn char_class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((found != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                found = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                found = true;
            }
            i += 1;
        }
    }
    None
}

impl TargetsMetadata {
    /// An empty targets document.
    pub fn new(version: u64, expires: OffsetDateTime) -> Self {
        TargetsMetadata {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: format_tuf(expires),
            targets: BTreeMap::new(),
            delegations: None,
        }
    }
}

impl SnapshotMetadata {
    /// A snapshot pinning `targets.json` bytes of version `targets_version`.
    pub fn new(
        version: u64,
        expires: OffsetDateTime,
        targets_version: u64,
        targets: &[u8],
    ) -> Self {
        SnapshotMetadata {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: format_tuf(expires),
            meta: BTreeMap::from([(
                "targets.json".to_string(),
                meta_pin(targets_version, targets),
            )]),
        }
    }
}

impl TimestampMetadata {
    /// A timestamp pinning `snapshot.json` bytes of version `snapshot_version`.
    pub fn new(
        version: u64,
        expires: OffsetDateTime,
        snapshot_version: u64,
        snapshot: &[u8],
    ) -> Self {
        TimestampMetadata {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: format_tuf(expires),
            meta: BTreeMap::from([(
                "snapshot.json".to_string(),
                meta_pin(snapshot_version, snapshot),
            )]),
        }
    }
}

impl MetaFile {
    /// The pin of metadata `bytes` of `version`: version, length and SHA-256.
    pub fn pin_of(version: u64, bytes: &[u8]) -> MetaFile {
        meta_pin(version, bytes)
    }
}

fn meta_pin(version: u64, bytes: &[u8]) -> MetaFile {
    MetaFile {
        version,
        length: Some(bytes.len() as u64),
        hashes: Some(BTreeMap::from([(
            "sha256".to_string(),
            Sha256::of(bytes).to_hex(),
        )])),
    }
}

/// One signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signing key's id.
    pub keyid: String,
    /// Ed25519 signature over the canonical `signed` bytes, hex.
    pub sig: String,
}

/// A signed metadata document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// Signatures over the canonical JSON of `signed`.
    pub signatures: Vec<Signature>,
    /// The role's content.
    pub signed: T,
}

impl<T: Metadata> Signed<T> {
    /// Signs `signed` with each key.
    pub fn sign(signed: T, keys: &[&KeyPair]) -> Result<Self> {
        let bytes = canonical_json(&signed)?;
        let signatures = keys
            .iter()
            .map(|k| Signature {
                keyid: k.public().key_id(),
                sig: k.sign_hex(&bytes),
            })
            .collect();
        Ok(Signed { signatures, signed })
    }

    /// The file's bytes: JSON with two-space indentation (the signatures cover the canonical
    /// form of `signed`, not the file's layout).
    pub fn to_canonical_bytes(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid(T::ROLE.name(), e.to_string()))?;
        v.push(b'\n');
        Ok(v)
    }
}

/// Parses a signed document and checks it against `keys`/`threshold` without trusting anything
/// in it yet. Returns the parsed signed object and the raw value (for further key checks).
fn parse_and_count<T: Metadata>(
    what: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Result<(T, Vec<u8>, Vec<Signature>)> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::Json {
        what: what.to_string(),
        source: e,
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::invalid(what, "not a JSON object"))?;
    let signed = obj
        .get("signed")
        .ok_or_else(|| Error::invalid(what, "has no `signed` object"))?;
    let sigs: Vec<Signature> = serde_json::from_value(
        obj.get("signatures")
            .cloned()
            .ok_or_else(|| Error::invalid(what, "has no `signatures` list"))?,
    )
    .map_err(|e| Error::Json {
        what: format!("{what} signatures"),
        source: e,
    })?;
    if sigs.len() > limits.max_signatures {
        return Err(Error::TooLarge {
            what: format!("{what} signatures"),
            limit: limits.max_signatures as u64,
            actual: sigs.len() as u64,
        });
    }
    let mut seen = BTreeSet::new();
    for s in &sigs {
        if !seen.insert(s.keyid.as_str()) {
            return Err(Error::invalid(
                what,
                format!(
                    "has two signatures by key {} (TUF allows one signature per key id)",
                    s.keyid
                ),
            ));
        }
    }
    let canonical = canonical_json(signed)?;
    let typed: T = serde_json::from_value(signed.clone()).map_err(|e| Error::Json {
        what: what.to_string(),
        source: e,
    })?;
    if typed.type_field() != T::ROLE.name() {
        return Err(Error::invalid(
            what,
            format!(
                "is `{}` metadata, expected `{}`",
                typed.type_field(),
                T::ROLE.name()
            ),
        ));
    }
    if !typed.spec_version().starts_with("1.") {
        return Err(Error::invalid(
            what,
            format!("unsupported TUF spec version {}", typed.spec_version()),
        ));
    }
    parse_tuf(typed.expires()).map_err(|e| Error::invalid(what, e.to_string()))?;
    Ok((typed, canonical, sigs))
}

/// Counts distinct keys among `keyids` (looked up in `keys`) that validly signed `canonical`.
fn count_valid(
    keys: &BTreeMap<String, PublicKey>,
    keyids: &[String],
    canonical: &[u8],
    sigs: &[Signature],
) -> usize {
    let mut ok = BTreeSet::new();
    for s in sigs {
        if !keyids.contains(&s.keyid) || ok.contains(&s.keyid) {
            continue;
        }
        let Some(key) = keys.get(&s.keyid) else {
            continue;
        };
        // A key listed under an id that is not its own is ignored.
        if key.key_id() != s.keyid {
            continue;
        }
        if key.verify(canonical, &s.sig) {
            ok.insert(s.keyid.clone());
        }
    }
    ok.len()
}

/// Fails unless `threshold` distinct keys among `keyids` signed `canonical`.
fn require_keys_threshold(
    what: &str,
    role: &str,
    keys: &BTreeMap<String, PublicKey>,
    keyids: &[String],
    threshold: u32,
    canonical: &[u8],
    sigs: &[Signature],
) -> Result<()> {
    if threshold == 0 {
        return Err(Error::invalid(what, format!("{role} threshold is 0")));
    }
    let valid = count_valid(keys, keyids, canonical, sigs);
    if valid < threshold as usize {
        return Err(Error::ThresholdNotMet {
            what: what.to_string(),
            role: role.to_string(),
            valid,
            threshold,
        });
    }
    Ok(())
}

fn require_threshold(
    what: &str,
    root: &RootMetadata,
    role: Role,
    canonical: &[u8],
    sigs: &[Signature],
) -> Result<()> {
    let rk = root.role_keys(role)?;
    require_keys_threshold(
        what,
        role.name(),
        &root.keys,
        &rk.keyids,
        rk.threshold,
        canonical,
        sigs,
    )
}

fn check_expiry(what: &str, expires: &str, now: OffsetDateTime) -> Result<()> {
    let t = parse_tuf(expires)?;
    if t <= now {
        return Err(Error::Expired {
            what: what.to_string(),
            expires: expires.to_string(),
        });
    }
    Ok(())
}

fn check_size(what: &str, bytes: &[u8], limit: u64) -> Result<()> {
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: what.to_string(),
            limit,
            actual: bytes.len() as u64,
        });
    }
    Ok(())
}

/// A root whose signatures have been checked: the client's anchor of trust.
#[derive(Clone, Debug)]
pub struct TrustedRoot {
    root: RootMetadata,
    bytes: Vec<u8>,
}

impl TrustedRoot {
    /// Accepts a first root because one of `pinned` keys (the keys compiled into or shipped with
    /// the app) is a root key of it and signed it, and the root's own threshold is met.
    /// Expiry is checked later, after the root chain has been walked.
    pub fn bootstrap(
        bytes: &[u8],
        pinned: &[PublicKey],
        _now: OffsetDateTime,
        limits: &Limits,
    ) -> Result<Self> {
        let what = "root.json";
        check_size(what, bytes, limits.max_small_metadata)?;
        let (root, canonical, sigs): (RootMetadata, _, _) = parse_and_count(what, bytes, limits)?;
        require_threshold(what, &root, Role::Root, &canonical, &sigs)?;
        let rk = root.role_keys(Role::Root)?;
        let pinned_signed = pinned.iter().any(|p| {
            let id = p.key_id();
            rk.keyids.contains(&id)
                && sigs
                    .iter()
                    .any(|s| s.keyid == id && p.verify(&canonical, &s.sig))
        });
        if !pinned_signed {
            return Err(Error::Key {
                what: format!("{what} version {}", root.version),
                reason: "is not signed by the pinned root key".into(),
            });
        }
        Ok(TrustedRoot {
            root,
            bytes: bytes.to_vec(),
        })
    }

    /// Reloads a root that this client trusted before (from its own state); its own signatures
    /// are checked again.
    pub fn from_trusted_bytes(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let what = "trusted root.json";
        check_size(what, bytes, limits.max_small_metadata)?;
        let (root, canonical, sigs): (RootMetadata, _, _) = parse_and_count(what, bytes, limits)?;
        require_threshold(what, &root, Role::Root, &canonical, &sigs)?;
        Ok(TrustedRoot {
            root,
            bytes: bytes.to_vec(),
        })
    }

    /// Moves to the next root version (spec 5.3): it must be signed by a threshold of the
    /// current root keys and of its own root keys, and its version must be exactly one more.
    pub fn update(&mut self, bytes: &[u8], limits: &Limits) -> Result<()> {
        let what = format!("{}.root.json", self.root.version + 1);
        check_size(&what, bytes, limits.max_small_metadata)?;
        let (new, canonical, sigs): (RootMetadata, _, _) = parse_and_count(&what, bytes, limits)?;
        require_threshold(&what, &self.root, Role::Root, &canonical, &sigs)?;
        require_threshold(&what, &new, Role::Root, &canonical, &sigs)?;
        if new.version != self.root.version + 1 {
            return Err(Error::invalid(
                &what,
                format!(
                    "has version {}, expected {}",
                    new.version,
                    self.root.version + 1
                ),
            ));
        }
        self.root = new;
        self.bytes = bytes.to_vec();
        Ok(())
    }

    /// Fails when the root has expired.
    pub fn check_expiry(&self, now: OffsetDateTime) -> Result<()> {
        check_expiry(
            &format!("{}.root.json", self.root.version),
            &self.root.expires,
            now,
        )
    }

    /// The root metadata.
    pub fn root(&self) -> &RootMetadata {
        &self.root
    }

    /// The bytes it was loaded from (to store as the client's trusted root).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The client's view of a repository while it updates metadata (spec 5.4 to 5.6): each
/// `update_*` checks signatures against the trusted root, version numbers against what was
/// trusted before (rollback), pins against the parent role (mix-and-match) and expiry (freeze).
#[derive(Clone, Debug)]
pub struct TrustedSet {
    root: TrustedRoot,
    now: OffsetDateTime,
    limits: Limits,
    timestamp: Option<TimestampMetadata>,
    snapshot: Option<SnapshotMetadata>,
    targets: Option<TargetsMetadata>,
    old_timestamp: Option<TimestampMetadata>,
    old_snapshot: Option<SnapshotMetadata>,
    /// Whether [`TrustedSet::update_timestamp`] kept the trusted timestamp (the offered one
    /// had the same version).
    kept_old_timestamp: bool,
}

impl TrustedSet {
    /// Starts from a root whose chain has been walked; fails when it has expired.
    pub fn new(root: TrustedRoot, now: OffsetDateTime, limits: Limits) -> Result<Self> {
        root.check_expiry(now)?;
        Ok(TrustedSet {
            root,
            now,
            limits,
            timestamp: None,
            snapshot: None,
            targets: None,
            old_timestamp: None,
            old_snapshot: None,
            kept_old_timestamp: false,
        })
    }

    /// Records the timestamp and snapshot this client trusted on its last run (from its state)
    /// so that older versions are refused. Their signatures must still verify under the current
    /// root; documents that no longer verify (after a key rotation) are ignored, as the spec says.
    pub fn remember_previous(&mut self, timestamp: Option<&[u8]>, snapshot: Option<&[u8]>) {
        let root = self.root.root.clone();
        if let Some(b) = timestamp {
            if let Ok((t, c, s)) =
                parse_and_count::<TimestampMetadata>("trusted timestamp.json", b, &self.limits)
            {
                if require_threshold("", &root, Role::Timestamp, &c, &s).is_ok() {
                    self.old_timestamp = Some(t);
                }
            }
        }
        if let Some(b) = snapshot {
            if let Ok((t, c, s)) =
                parse_and_count::<SnapshotMetadata>("trusted snapshot.json", b, &self.limits)
            {
                if require_threshold("", &root, Role::Snapshot, &c, &s).is_ok() {
                    self.old_snapshot = Some(t);
                }
            }
        }
    }

    /// Checks a new timestamp (spec 5.4).
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<&TimestampMetadata> {
        let what = "timestamp.json";
        check_size(what, bytes, self.limits.max_small_metadata)?;
        let (ts, c, s): (TimestampMetadata, _, _) = parse_and_count(what, bytes, &self.limits)?;
        require_threshold(what, self.root.root(), Role::Timestamp, &c, &s)?;
        let snap_meta = ts
            .meta
            .get("snapshot.json")
            .ok_or_else(|| Error::invalid(what, "does not pin snapshot.json"))?;
        if let Some(old) = &self.old_timestamp {
            if ts.version < old.version {
                return Err(Error::Rollback {
                    what: what.into(),
                    trusted: old.version,
                    offered: ts.version,
                });
            }
            if ts.version == old.version {
                // Spec 5.4.3.1: a timestamp of the version already trusted is discarded, even
                // when its content differs; the trusted one stays in force.
                let old = old.clone();
                check_expiry("trusted timestamp.json", &old.expires, self.now)?;
                self.kept_old_timestamp = true;
                return Ok(self.timestamp.insert(old));
            }
            if let Some(old_snap) = old.meta.get("snapshot.json") {
                if snap_meta.version < old_snap.version {
                    return Err(Error::Rollback {
                        what: "snapshot.json (as pinned by timestamp.json)".into(),
                        trusted: old_snap.version,
                        offered: snap_meta.version,
                    });
                }
            }
        }
        check_expiry(what, &ts.expires, self.now)?;
        self.kept_old_timestamp = false;
        Ok(self.timestamp.insert(ts))
    }

    /// Whether the last [`TrustedSet::update_timestamp`] kept the trusted timestamp because
    /// the offered one had the same version (so the offered bytes must not be stored).
    pub fn kept_old_timestamp(&self) -> bool {
        self.kept_old_timestamp
    }

    /// The file name to fetch for snapshot (consistent snapshots: `N.snapshot.json`).
    pub fn snapshot_file_name(&self) -> Result<String> {
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| Error::invalid("snapshot.json", "timestamp not loaded yet"))?;
        let v = ts
            .meta
            .get("snapshot.json")
            .map(|m| m.version)
            .ok_or_else(|| Error::invalid("timestamp.json", "does not pin snapshot.json"))?;
        Ok(if self.root.root().consistent_snapshot {
            format!("{v}.snapshot.json")
        } else {
            "snapshot.json".into()
        })
    }

    /// The largest snapshot the timestamp allows.
    pub fn snapshot_max_len(&self) -> u64 {
        self.timestamp
            .as_ref()
            .and_then(|t| t.meta.get("snapshot.json"))
            .and_then(|m| m.length)
            .unwrap_or(self.limits.max_small_metadata)
    }

    /// Checks a new snapshot (spec 5.5).
    pub fn update_snapshot(&mut self, bytes: &[u8]) -> Result<&SnapshotMetadata> {
        let what = self.snapshot_file_name()?;
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| Error::invalid(&what, "timestamp not loaded yet"))?;
        let pin = ts
            .meta
            .get("snapshot.json")
            .ok_or_else(|| Error::invalid("timestamp.json", "does not pin snapshot.json"))?
            .clone();
        check_meta_pin(&what, bytes, &pin, self.limits.max_small_metadata)?;
        let (snap, c, s): (SnapshotMetadata, _, _) = parse_and_count(&what, bytes, &self.limits)?;
        require_threshold(&what, self.root.root(), Role::Snapshot, &c, &s)?;
        if snap.version != pin.version {
            return Err(Error::invalid(
                &what,
                format!(
                    "has version {}, timestamp.json pins version {} (mix-and-match)",
                    snap.version, pin.version
                ),
            ));
        }
        if let Some(old) = &self.old_snapshot {
            for (name, m) in &old.meta {
                match snap.meta.get(name) {
                    None => {
                        return Err(Error::invalid(
                            &what,
                            format!("no longer lists {name}, which the trusted snapshot did"),
                        ))
                    }
                    Some(n) if n.version < m.version => {
                        return Err(Error::Rollback {
                            what: name.clone(),
                            trusted: m.version,
                            offered: n.version,
                        })
                    }
                    _ => {}
                }
            }
        }
        check_expiry(&what, &snap.expires, self.now)?;
        Ok(self.snapshot.insert(snap))
    }

    /// The file name to fetch for targets (`N.targets.json`) and its pin from snapshot.
    pub fn targets_file(&self) -> Result<(String, MetaFile)> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| Error::invalid("targets.json", "snapshot not loaded yet"))?;
        let m = snap
            .meta
            .get("targets.json")
            .ok_or_else(|| Error::invalid("snapshot.json", "does not pin targets.json"))?;
        let name = if self.root.root().consistent_snapshot {
            format!("{}.targets.json", m.version)
        } else {
            "targets.json".into()
        };
        Ok((name, m.clone()))
    }

    /// Checks new targets metadata (spec 5.6).
    pub fn update_targets(&mut self, bytes: &[u8]) -> Result<&TargetsMetadata> {
        let (what, pin) = self.targets_file()?;
        check_meta_pin(&what, bytes, &pin, self.limits.max_large_metadata)?;
        let (t, c, s): (TargetsMetadata, _, _) = parse_and_count(&what, bytes, &self.limits)?;
        require_threshold(&what, self.root.root(), Role::Targets, &c, &s)?;
        check_targets_doc(&what, &t, &pin, &self.limits, self.now)?;
        Ok(self.targets.insert(t))
    }

    /// The metadata file to fetch for the delegated role `name` (`N.NAME.json` with consistent
    /// snapshots, the name percent-encoded) and its pin from snapshot. Fails when snapshot does
    /// not list the role: such a delegation is not followed.
    pub fn delegated_file(&self, name: &str) -> Result<(String, MetaFile)> {
        if Role::ALL.iter().any(|r| r.name() == name) {
            return Err(Error::invalid(
                "targets delegations",
                format!("delegate to {name:?}, the name of a top-level role"),
            ));
        }
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| Error::invalid(name, "snapshot not loaded yet"))?;
        let m = snap.meta.get(&format!("{name}.json")).ok_or_else(|| {
            Error::invalid(
                "snapshot.json",
                format!("does not list delegated role {name:?}; the delegation is not followed"),
            )
        })?;
        let quoted = role_file_name(name);
        let file = if self.root.root().consistent_snapshot {
            format!("{}.{quoted}.json", m.version)
        } else {
            format!("{quoted}.json")
        };
        Ok((file, m.clone()))
    }

    /// Checks the metadata of delegated targets role `name` as delegated by `delegator` (spec
    /// 5.6 for a delegated role): the pin from snapshot, a threshold of the keys the delegator
    /// names for it, the pinned version, expiry and size limits. Returns the verified document;
    /// the delegation is checked every time, so a role reached through another delegator is
    /// verified again against that delegator's keys.
    pub fn verify_delegated(
        &self,
        name: &str,
        delegator: &TargetsMetadata,
        bytes: &[u8],
    ) -> Result<TargetsMetadata> {
        let (what, pin) = self.delegated_file(name)?;
        let delegations = delegator
            .delegations
            .as_ref()
            .ok_or_else(|| Error::invalid(&what, "its delegator has no delegations"))?;
        let role = delegations
            .role(name)
            .ok_or_else(|| Error::invalid(&what, "its delegator does not delegate to it"))?;
        check_meta_pin(&what, bytes, &pin, self.limits.max_large_metadata)?;
        let (t, c, s): (TargetsMetadata, _, _) = parse_and_count(&what, bytes, &self.limits)?;
        require_keys_threshold(
            &what,
            name,
            &delegations.keys,
            &role.keyids,
            role.threshold,
            &c,
            &s,
        )?;
        check_targets_doc(&what, &t, &pin, &self.limits, self.now)?;
        Ok(t)
    }

    /// The verified targets, once loaded.
    pub fn targets(&self) -> Option<&TargetsMetadata> {
        self.targets.as_ref()
    }

    /// The verified timestamp, once loaded.
    pub fn timestamp(&self) -> Option<&TimestampMetadata> {
        self.timestamp.as_ref()
    }

    /// The verified snapshot, once loaded.
    pub fn snapshot(&self) -> Option<&SnapshotMetadata> {
        self.snapshot.as_ref()
    }

    /// The trusted root.
    pub fn root(&self) -> &TrustedRoot {
        &self.root
    }
}

/// The file-name form of a role name: every byte but ASCII letters, digits and `-._~`
/// percent-encoded, so that a name like `../x` or `a/b` stays one URL path segment and one file
/// name.
pub fn role_file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The checks of signed targets metadata (top-level or delegated) after its signatures: the
/// version snapshot pins, the entry bound and expiry.
fn check_targets_doc(
    what: &str,
    t: &TargetsMetadata,
    pin: &MetaFile,
    limits: &Limits,
    now: OffsetDateTime,
) -> Result<()> {
    if t.version != pin.version {
        return Err(Error::invalid(
            what,
            format!(
                "has version {}, snapshot pins version {} (mix-and-match)",
                t.version, pin.version
            ),
        ));
    }
    check_targets_size(what, t, limits)?;
    check_expiry(what, &t.expires, now)
}

fn check_targets_size(what: &str, t: &TargetsMetadata, limits: &Limits) -> Result<()> {
    let delegated = t
        .delegations
        .as_ref()
        .map_or(0, |d| d.roles.as_ref().map_or(0, Vec::len) + d.keys.len());
    let entries = t.targets.len().saturating_add(delegated);
    if entries > limits.max_entries {
        return Err(Error::TooLarge {
            what: format!("{what} targets and delegations"),
            limit: limits.max_entries as u64,
            actual: entries as u64,
        });
    }
    Ok(())
}

fn check_meta_pin(what: &str, bytes: &[u8], pin: &MetaFile, limit: u64) -> Result<()> {
    check_size(what, bytes, pin.length.unwrap_or(limit).min(limit))?;
    if let Some(len) = pin.length {
        if bytes.len() as u64 != len {
            return Err(Error::LengthMismatch {
                what: what.into(),
                expected: len,
                actual: bytes.len() as u64,
            });
        }
    }
    if let Some(h) = &pin.hashes {
        check_tuf_hashes(what, bytes, h)?;
    }
    Ok(())
}

/// Verifies any role's document against `root` (signatures only; used by `patch-create verify`
/// and by tools that inspect a repository).
pub fn verify_role<T: Metadata>(
    what: &str,
    bytes: &[u8],
    root: &RootMetadata,
    limits: &Limits,
) -> Result<Signed<T>> {
    let (typed, canonical, sigs) = parse_and_count::<T>(what, bytes, limits)?;
    require_threshold(what, root, T::ROLE, &canonical, &sigs)?;
    Ok(Signed {
        signatures: sigs,
        signed: typed,
    })
}

/// Verifies the signatures of delegated targets role `name` against the keys and threshold
/// `delegations` names for it (signatures only: no pin, version or expiry check; for the
/// release engineer's tooling, which reads its own repository). Clients use
/// [`TrustedSet::verify_delegated`].
pub fn verify_delegated_role(
    what: &str,
    bytes: &[u8],
    name: &str,
    delegations: &Delegations,
    limits: &Limits,
) -> Result<Signed<TargetsMetadata>> {
    let role = delegations
        .role(name)
        .ok_or_else(|| Error::invalid(what, format!("role {name:?} is not delegated")))?;
    let (typed, canonical, sigs) = parse_and_count::<TargetsMetadata>(what, bytes, limits)?;
    require_keys_threshold(
        what,
        name,
        &delegations.keys,
        &role.keyids,
        role.threshold,
        &canonical,
        &sigs,
    )?;
    check_targets_size(what, &typed, limits)?;
    Ok(Signed {
        signatures: sigs,
        signed: typed,
    })
}

/// Parses a document without checking signatures (for a release engineer's own tools reading
/// their own repository, e.g. to find the next version number). Never use for client decisions.
pub fn parse_unverified<T: Metadata>(
    what: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Signed<T>> {
    let (typed, _c, sigs) = parse_and_count::<T>(what, bytes, limits)?;
    Ok(Signed {
        signatures: sigs,
        signed: typed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time_util::now;

    fn key(n: u8) -> KeyPair {
        KeyPair::from_seed([n; 32])
    }

    fn later() -> OffsetDateTime {
        now() + time::Duration::days(30)
    }

    fn repo(k: &KeyPair, targets_version: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let root = Signed::sign(RootMetadata::new_single_key(&k.public(), 1, later()), &[k])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        let targets = Signed::sign(TargetsMetadata::new(targets_version, later()), &[k])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        let snap = Signed::sign(
            SnapshotMetadata::new(targets_version, later(), targets_version, &targets),
            &[k],
        )
        .unwrap()
        .to_canonical_bytes()
        .unwrap();
        let ts = Signed::sign(
            TimestampMetadata::new(targets_version, later(), targets_version, &snap),
            &[k],
        )
        .unwrap()
        .to_canonical_bytes()
        .unwrap();
        (root, ts, snap, targets)
    }

    #[test]
    fn good_chain_is_accepted() {
        let k = key(1);
        let (root, ts, snap, targets) = repo(&k, 3);
        let l = Limits::default();
        let r = TrustedRoot::bootstrap(&root, &[k.public()], now(), &l).unwrap();
        let mut set = TrustedSet::new(r, now(), l).unwrap();
        set.update_timestamp(&ts).unwrap();
        assert_eq!(set.snapshot_file_name().unwrap(), "3.snapshot.json");
        set.update_snapshot(&snap).unwrap();
        set.update_targets(&targets).unwrap();
        assert_eq!(set.targets().unwrap().version, 3);
    }

    #[test]
    fn root_signed_by_another_key_is_refused() {
        let (root, ..) = repo(&key(1), 1);
        let err = TrustedRoot::bootstrap(&root, &[key(2).public()], now(), &Limits::default());
        assert!(err.is_err());
    }

    #[test]
    fn rollback_of_timestamp_is_refused() {
        let k = key(1);
        let (root, ts_old, ..) = repo(&k, 2);
        let (_, ts_new, ..) = repo(&k, 5);
        let l = Limits::default();
        let r = TrustedRoot::bootstrap(&root, &[k.public()], now(), &l).unwrap();
        let mut set = TrustedSet::new(r, now(), l).unwrap();
        set.remember_previous(Some(&ts_new), None);
        match set.update_timestamp(&ts_old) {
            Err(Error::Rollback {
                trusted: 5,
                offered: 2,
                ..
            }) => {}
            other => panic!("expected rollback, got {other:?}"),
        }
    }

    #[test]
    fn expired_timestamp_is_refused() {
        let k = key(1);
        let (root, ..) = repo(&k, 1);
        let ts = Signed::sign(
            TimestampMetadata::new(1, now() - time::Duration::seconds(5), 1, b"x"),
            &[&k],
        )
        .unwrap()
        .to_canonical_bytes()
        .unwrap();
        let l = Limits::default();
        let r = TrustedRoot::bootstrap(&root, &[k.public()], now(), &l).unwrap();
        let mut set = TrustedSet::new(r, now(), l).unwrap();
        assert!(matches!(
            set.update_timestamp(&ts),
            Err(Error::Expired { .. })
        ));
    }

    #[test]
    fn snapshot_not_matching_timestamp_pin_is_refused() {
        let k = key(1);
        let (root, ts, _snap, _) = repo(&k, 2);
        let (_, _, other_snap, _) = repo(&k, 3);
        let l = Limits::default();
        let r = TrustedRoot::bootstrap(&root, &[k.public()], now(), &l).unwrap();
        let mut set = TrustedSet::new(r, now(), l).unwrap();
        set.update_timestamp(&ts).unwrap();
        assert!(set.update_snapshot(&other_snap).is_err());
    }

    #[test]
    fn root_rotation_needs_old_and_new_keys() {
        let (k1, k2) = (key(1), key(2));
        let l = Limits::default();
        let (root1, ..) = repo(&k1, 1);
        let mut r = TrustedRoot::bootstrap(&root1, &[k1.public()], now(), &l).unwrap();
        let root2 = RootMetadata::new_single_key(&k2.public(), 2, later());
        // Only the new key: refused.
        let only_new = Signed::sign(root2.clone(), &[&k2])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        assert!(r.clone().update(&only_new, &l).is_err());
        let both = Signed::sign(root2, &[&k1, &k2])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        r.update(&both, &l).unwrap();
        assert_eq!(r.root().version, 2);
    }

    #[test]
    fn threshold_counts_distinct_keys() {
        let (k1, k2) = (key(1), key(2));
        let mut root = RootMetadata::new_single_key(&k1.public(), 1, later());
        root.set_role(Role::Targets, &[k1.public(), k2.public()], 2);
        let root_bytes = Signed::sign(root, &[&k1])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        let l = Limits::default();
        let r = TrustedRoot::bootstrap(&root_bytes, &[k1.public()], now(), &l).unwrap();
        let t = TargetsMetadata::new(1, later());
        let one = Signed::sign(t.clone(), &[&k1])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        assert!(matches!(
            verify_role::<TargetsMetadata>("t", &one, r.root(), &l),
            Err(Error::ThresholdNotMet {
                valid: 1,
                threshold: 2,
                ..
            })
        ));
        let two = Signed::sign(t, &[&k1, &k2])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        verify_role::<TargetsMetadata>("t", &two, r.root(), &l).unwrap();
    }

    #[test]
    fn duplicate_signature_key_ids_are_refused() {
        let k = key(1);
        let (root, ..) = repo(&k, 1);
        let l = Limits::default();
        let r = TrustedRoot::bootstrap(&root, &[k.public()], now(), &l).unwrap();
        let doubled = Signed::sign(TargetsMetadata::new(1, later()), &[&k, &k])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        // The threshold (1) is met by either signature; the spec still says MUST refuse.
        let err = verify_role::<TargetsMetadata>("t", &doubled, r.root(), &l).unwrap_err();
        assert!(err.to_string().contains("two signatures"), "{err}");
    }

    #[test]
    fn equal_version_timestamp_keeps_the_trusted_one() {
        let k = key(1);
        let (root, ts, ..) = repo(&k, 2);
        let other = Signed::sign(TimestampMetadata::new(2, later(), 7, b"other"), &[&k])
            .unwrap()
            .to_canonical_bytes()
            .unwrap();
        let l = Limits::default();
        let r = TrustedRoot::bootstrap(&root, &[k.public()], now(), &l).unwrap();
        let mut set = TrustedSet::new(r, now(), l).unwrap();
        set.remember_previous(Some(&ts), None);
        let kept = set.update_timestamp(&other).unwrap();
        assert_eq!(kept.meta["snapshot.json"].version, 2);
        assert!(set.kept_old_timestamp());
    }

    #[test]
    fn key_id_covers_unknown_fields_and_ecdsa_verifies() {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let json = serde_json::json!({
            "keytype": "ecdsa",
            "scheme": "ecdsa-sha2-nistp256",
            "keyval": {"public": pem},
            "x-owner": "@someone",
        });
        let k: PublicKey = serde_json::from_value(json.clone()).unwrap();
        let expected = Sha256::of(&canonical_json(&json).unwrap()).to_hex();
        assert_eq!(k.key_id(), expected);
        let sig: p256::ecdsa::DerSignature = sk.sign(b"msg");
        assert!(k.verify(b"msg", &hex::encode(sig.as_bytes())));
        assert!(!k.verify(b"msh", &hex::encode(sig.as_bytes())));
    }

    #[test]
    fn delegation_paths_match_per_segment() {
        assert!(path_pattern_matches("*.md", "README.md"));
        assert!(!path_pattern_matches("*.md", "releases/README.md"));
        assert!(!path_pattern_matches("*.md", "README.MD"));
        assert!(path_pattern_matches("foo-?.tgz", "foo-1.tgz"));
        assert!(!path_pattern_matches("foo-?.tgz", "foo-alpha.tgz"));
        assert!(path_pattern_matches("releases/*/*", "releases/x/x_v1"));
        assert!(path_pattern_matches("a/[a-c]?", "a/bz"));
        assert!(!path_pattern_matches("a/[!a-c]", "a/b"));
        assert!(path_pattern_matches("*", ""));
    }
}
