//! [`ReleaseManifest`]: every file, directory and symlink of one release (docs/format.md §5).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::hash::{Blake3, Pin};
use crate::layout::STATE_DIR;
use crate::limits::Limits;
use crate::relpath::{resolve_link_target, RelPath};
use crate::version::Version;

/// The `format` value of manifests this build writes and reads.
pub const MANIFEST_FORMAT: &str = "patchkit-manifest-1";

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Node {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// BLAKE3 of the content.
        blake3: Blake3,
        /// Whether the executable bit is set.
        #[serde(default, skip_serializing_if = "is_false")]
        exec: bool,
    },
    /// A directory (listed so that empty directories survive).
    Dir,
    /// A symbolic link whose target stays inside the tree.
    Symlink {
        /// The link's target, relative to the link's directory.
        target: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Node {
    /// The content pin of a file.
    pub fn file_pin(&self) -> Option<Pin> {
        match self {
            Node::File { size, blake3, .. } => Some(Pin {
                size: *size,
                blake3: *blake3,
            }),
            _ => None,
        }
    }
}

/// One path of a release.
///
/// Deserialized by hand ([`Entry`]'s `Deserialize` below): serde's derive for a `flatten`ed
/// internally tagged enum buffers every field of every entry, which dominated the parse of a
/// 100,000-entry manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Where it lives in the tree.
    pub path: RelPath,
    /// What it is.
    #[serde(flatten)]
    pub node: Node,
    /// For files: changing it needs the app restarted (executables, shared libraries, or paths
    /// the release engineer declared as code).
    #[serde(default, skip_serializing_if = "is_false")]
    pub code: bool,
    /// For files: the repair file holding this file alone, compressed (size and BLAKE3 of the
    /// repair file's bytes). Its location follows from the content hash (`layout::blob_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<Pin>,
}

/// Every path of one release, sorted by path, plus the settings a client needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The application's name.
    pub app: String,
    /// The release version.
    pub version: Version,
    /// Glob patterns of paths that belong to the user, not the release: never shipped, never
    /// deleted by an update.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Glob patterns of paths the updater owns although no release lists them (caches the
    /// app writes, such as `*.pyc`): an update may delete or replace them. Anything in an app
    /// directory that is neither listed by a known release nor matched here belongs to the
    /// user and is never deleted (docs/format.md §5.3). Optional; absent means none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owned: Vec<String>,
    /// The release engineer declared that installing it needs a restart whatever changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart_required: bool,
    /// Release notes for people (plain text or Markdown), one string per line: canonical JSON
    /// writes control characters such as newlines unescaped, which strict JSON parsers refuse,
    /// so the text is kept as lines ([`ReleaseManifest::notes_text`] joins them). At most
    /// [`MAX_NOTES`] bytes in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Links for people (the issue a release fixes, a changelog): `http(s)://` URLs, at most
    /// [`MAX_LINKS`] of at most [`MAX_LINK_LEN`] bytes each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// Every path, sorted by path (byte order of the `/`-separated string).
    pub entries: Vec<Entry>,
}

/// Longest release notes, in bytes.
pub const MAX_NOTES: usize = 16 * 1024;
/// Most links on one release.
pub const MAX_LINKS: usize = 16;
/// Longest link, in bytes.
pub const MAX_LINK_LEN: usize = 2048;

/// Splits release notes into the lines a manifest stores: `\r\n` and `\r` end lines too,
/// tabs become four spaces, trailing blank lines are dropped.
pub fn notes_lines(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<String> = text.split('\n').map(|l| l.replace('\t', "    ")).collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

/// Checks release notes (as lines) and links against the bounds above; `what` names the
/// release.
pub fn check_notes(what: &str, notes: &[String], links: &[String]) -> Result<()> {
    let total: usize = notes.iter().map(|l| l.len() + 1).sum();
    if total > MAX_NOTES {
        return Err(Error::TooLarge {
            what: format!("{what}: release notes"),
            limit: MAX_NOTES as u64,
            actual: total as u64,
        });
    }
    if let Some(i) = notes.iter().position(|l| l.chars().any(|c| c.is_control())) {
        return Err(Error::invalid(
            what,
            format!("release notes line {} holds control characters", i + 1),
        ));
    }
    if links.len() > MAX_LINKS {
        return Err(Error::invalid(what, format!("more than {MAX_LINKS} links")));
    }
    for l in links {
        let ok_scheme = l.starts_with("https://") || l.starts_with("http://");
        if !ok_scheme || l.len() > MAX_LINK_LEN || l.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Error::invalid(
                what,
                format!("link {l:?} is not an http(s) URL of at most {MAX_LINK_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

impl ReleaseManifest {
    /// Parses and validates a manifest; `what` names it in errors.
    pub fn from_json(what: &str, bytes: &[u8], limits: &Limits) -> Result<Self> {
        if bytes.len() as u64 > limits.max_large_metadata {
            return Err(Error::TooLarge {
                what: what.into(),
                limit: limits.max_large_metadata,
                actual: bytes.len() as u64,
            });
        }
        let m: ReleaseManifest = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: what.into(),
            source: e,
        })?;
        m.validate(what, limits)?;
        Ok(m)
    }

    /// Canonical JSON bytes of the manifest.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        crate::keys::canonical_json(self)
    }

    /// Checks the rules of docs/format.md §5: format, sorted unique paths, every ancestor listed
    /// as a directory, nothing below a symlink or inside the updater's state directory, symlink
    /// targets inside the tree, sizes within limits.
    pub fn validate(&self, what: &str, limits: &Limits) -> Result<()> {
        let bad = |r: String| Err(Error::invalid(what, r));
        if self.format != MANIFEST_FORMAT {
            return bad(format!("unknown format {:?}", self.format));
        }
        check_notes(what, &self.notes, &self.links)?;
        if self.entries.len() > limits.max_entries {
            return Err(Error::TooLarge {
                what: format!("{what} entries"),
                limit: limits.max_entries as u64,
                actual: self.entries.len() as u64,
            });
        }
        for w in self.entries.windows(2) {
            if w[0].path.as_str() >= w[1].path.as_str() {
                return bad(format!("entries not sorted or duplicated at {}", w[1].path));
            }
        }
        for e in &self.entries {
            if e.path.first_component() == STATE_DIR {
                return bad(format!("{} lies in the updater's state directory", e.path));
            }
            if let Node::File { size, .. } = e.node {
                if size > limits.max_file_size {
                    return Err(Error::TooLarge {
                        what: format!("{what}: {}", e.path),
                        limit: limits.max_file_size,
                        actual: size,
                    });
                }
            }
        }
        // The entries are sorted, so a parent (a proper prefix) comes before its children and
        // is found by binary search. Checking each entry's direct parent checks every ancestor:
        // the parent's own parent is checked at the parent's entry.
        // Siblings follow each other: the last parent found is usually the next one's too.
        let mut last_dir: Option<&str> = None;
        for (i, e) in self.entries.iter().enumerate() {
            let path = e.path.as_str();
            if let Some(cut) = path.rfind('/') {
                let parent = &path[..cut];
                let found = if last_dir == Some(parent) {
                    Some(&Node::Dir)
                } else {
                    self.entries[..i]
                        .binary_search_by(|x| x.path.as_str().cmp(parent))
                        .ok()
                        .map(|j| &self.entries[j].node)
                };
                if matches!(found, Some(Node::Dir)) {
                    last_dir = Some(parent);
                }
                match found {
                    Some(Node::Dir) => {}
                    Some(_) => return bad(format!("{path} lies below non-directory {parent}")),
                    None => return bad(format!("{path} has no directory entry for {parent}")),
                }
            }
            if let Node::Symlink { target } = &e.node {
                if resolve_link_target(&e.path, target).is_none() {
                    return bad(format!(
                        "symlink {} -> {target} points outside the tree",
                        e.path
                    ));
                }
            }
        }
        Ok(())
    }

    /// The release notes as text (lines joined with `\n`), if there are any.
    pub fn notes_text(&self) -> Option<String> {
        (!self.notes.is_empty()).then(|| self.notes.join("\n"))
    }

    /// The tree digest of this release (see [`tree_digest`]).
    pub fn tree_digest(&self) -> Blake3 {
        tree_digest(self.entries.iter().map(|e| (&e.path, &e.node)))
    }

    /// Entries by path.
    pub fn by_path(&self) -> BTreeMap<&RelPath, &Entry> {
        self.entries.iter().map(|e| (&e.path, e)).collect()
    }

    /// Paths of regular files, as a set.
    pub fn file_paths(&self) -> BTreeSet<&RelPath> {
        self.entries
            .iter()
            .filter(|e| matches!(e.node, Node::File { .. }))
            .map(|e| &e.path)
            .collect()
    }

    /// Total bytes of all regular files.
    pub fn total_file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.node.file_pin())
            .map(|p| p.size)
            .sum()
    }

    /// Sum of the repair file sizes of every entry (a shared repair file counts per entry).
    pub fn total_repair_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.repair)
            .map(|p| p.size)
            .sum()
    }
}

/// A digest of a whole tree: BLAKE3 over one line per entry in path order
/// (`f EXEC SIZE BLAKE3 PATH`, `d PATH`, `l PATH\0TARGET`, each followed by `\n`).
/// Two trees with the same digest have the same paths, contents, exec bits and links; a client
/// uses it to recognise which release an install is from its files alone.
pub fn tree_digest<'a>(entries: impl IntoIterator<Item = (&'a RelPath, &'a Node)>) -> Blake3 {
    // Lines are gathered in a buffer and hashed in large pieces (no allocation per entry).
    const FLUSH: usize = 1 << 16;
    let mut h = blake3::Hasher::new();
    let mut buf: Vec<u8> = Vec::with_capacity(FLUSH + 8192);
    let mut hex = [0u8; 64];
    for (path, node) in entries {
        match node {
            Node::File { size, blake3, exec } => {
                buf.extend_from_slice(if *exec { b"f 1 " } else { b"f 0 " });
                push_decimal(&mut buf, *size);
                buf.push(b' ');
                // Encoding 32 bytes into a 64-byte buffer cannot fail.
                if hex::encode_to_slice(blake3.0, &mut hex).is_ok() {
                    buf.extend_from_slice(&hex);
                }
                buf.push(b' ');
                buf.extend_from_slice(path.as_str().as_bytes());
            }
            Node::Dir => {
                buf.extend_from_slice(b"d ");
                buf.extend_from_slice(path.as_str().as_bytes());
            }
            Node::Symlink { target } => {
                buf.extend_from_slice(b"l ");
                buf.extend_from_slice(path.as_str().as_bytes());
                buf.push(0);
                buf.extend_from_slice(target.as_bytes());
            }
        }
        buf.push(b'\n');
        if buf.len() >= FLUSH {
            h.update(&buf);
            buf.clear();
        }
    }
    h.update(&buf);
    Blake3(*h.finalize().as_bytes())
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Value of each byte as a lowercase hex digit; 0xff for anything else.
const HEX_DIGIT: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// 64 lowercase hex digits as 32 bytes (`None` for anything else).
fn decode_hex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (HEX_DIGIT[pair[0] as usize], HEX_DIGIT[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

/// A digest in lowercase hex, read from a borrowed or transient string (no allocation).
struct HexDigest(Blake3);

impl<'de> Deserialize<'de> for HexDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HexDigest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a blake3 digest as 64 lowercase hex digits")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<HexDigest, E> {
                match decode_hex32(s.as_bytes()) {
                    Some(b) => Ok(HexDigest(Blake3(b))),
                    // The general parser words the error.
                    None => s.parse().map(HexDigest).map_err(E::custom),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// [`Pin`] read through [`HexDigest`].
#[derive(Deserialize)]
struct PinDe {
    size: u64,
    blake3: HexDigest,
}

/// The fields of an entry; every key is matched without allocating.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum EntryField {
    Path,
    Type,
    Size,
    Blake3,
    Exec,
    Target,
    Code,
    Repair,
    #[serde(other)]
    Unknown,
}

/// The `type` tag of an entry.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a manifest entry")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entry, A::Error> {
                fn once<T, E: de::Error>(
                    slot: &mut Option<T>,
                    v: T,
                    name: &'static str,
                ) -> std::result::Result<(), E> {
                    if slot.replace(v).is_some() {
                        return Err(E::duplicate_field(name));
                    }
                    Ok(())
                }
                let mut path: Option<RelPath> = None;
                let mut kind: Option<EntryKind> = None;
                let mut size: Option<u64> = None;
                let mut blake3: Option<Blake3> = None;
                let mut exec: Option<bool> = None;
                let mut target: Option<String> = None;
                let mut code: Option<bool> = None;
                let mut repair: Option<Option<Pin>> = None;
                while let Some(k) = map.next_key::<EntryField>()? {
                    match k {
                        EntryField::Path => once(&mut path, map.next_value()?, "path")?,
                        EntryField::Type => once(&mut kind, map.next_value()?, "type")?,
                        EntryField::Size => once(&mut size, map.next_value()?, "size")?,
                        EntryField::Blake3 => {
                            let HexDigest(h) = map.next_value()?;
                            once(&mut blake3, h, "blake3")?
                        }
                        EntryField::Exec => once(&mut exec, map.next_value()?, "exec")?,
                        EntryField::Target => once(&mut target, map.next_value()?, "target")?,
                        EntryField::Code => once(&mut code, map.next_value()?, "code")?,
                        EntryField::Repair => {
                            let p: Option<PinDe> = map.next_value()?;
                            let p = p.map(|p| Pin {
                                size: p.size,
                                blake3: p.blake3.0,
                            });
                            once(&mut repair, p, "repair")?
                        }
                        EntryField::Unknown => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                let path = path.ok_or_else(|| de::Error::missing_field("path"))?;
                let node = match kind.ok_or_else(|| de::Error::missing_field("type"))? {
                    EntryKind::File => Node::File {
                        size: size.ok_or_else(|| de::Error::missing_field("size"))?,
                        blake3: blake3.ok_or_else(|| de::Error::missing_field("blake3"))?,
                        exec: exec.unwrap_or(false),
                    },
                    EntryKind::Dir => Node::Dir,
                    EntryKind::Symlink => Node::Symlink {
                        target: target.ok_or_else(|| de::Error::missing_field("target"))?,
                    },
                };
                Ok(Entry {
                    path,
                    node,
                    code: code.unwrap_or(false),
                    repair: repair.flatten(),
                })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    pub(crate) fn sample() -> ReleaseManifest {
        ReleaseManifest {
            format: MANIFEST_FORMAT.into(),
            app: "demo".into(),
            version: Version::parse("1.0.0").unwrap(),
            ignore: vec!["*.log".into()],
            owned: vec![],
            restart_required: false,
            notes: vec![],
            links: vec![],
            entries: vec![
                Entry {
                    path: p("bin"),
                    node: Node::Dir,
                    code: false,
                    repair: None,
                },
                Entry {
                    path: p("bin/app"),
                    node: Node::File {
                        size: 3,
                        blake3: Blake3::of(b"abc"),
                        exec: true,
                    },
                    code: true,
                    repair: Some(Pin::of(b"zzz")),
                },
                Entry {
                    path: p("link"),
                    node: Node::Symlink {
                        target: "bin/app".into(),
                    },
                    code: false,
                    repair: None,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_validate() {
        let m = sample();
        let bytes = m.to_json().unwrap();
        let back = ReleaseManifest::from_json("m", &bytes, &Limits::default()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.tree_digest(), m.tree_digest());
    }

    #[test]
    fn refuses_bad_trees() {
        let l = Limits::default();
        let mut m = sample();
        m.entries.remove(0);
        assert!(m.validate("m", &l).is_err(), "missing parent dir");
        let mut m = sample();
        m.entries[2].node = Node::Symlink {
            target: "../../etc/passwd".into(),
        };
        assert!(m.validate("m", &l).is_err(), "escaping symlink");
        let mut m = sample();
        m.entries.swap(1, 2);
        assert!(m.validate("m", &l).is_err(), "unsorted");
        let mut m = sample();
        m.entries.push(Entry {
            path: p("link/x"),
            node: Node::Dir,
            code: false,
            repair: None,
        });
        assert!(m.validate("m", &l).is_err(), "below a symlink");
    }

    /// The digest as first specified (one formatted line per entry), to pin the fast one to it.
    fn reference_digest(m: &ReleaseManifest) -> Blake3 {
        let mut h = blake3::Hasher::new();
        for e in &m.entries {
            let line = match &e.node {
                Node::File { size, blake3, exec } => {
                    format!("f {} {size} {blake3} {}\n", u8::from(*exec), e.path)
                }
                Node::Dir => format!("d {}\n", e.path),
                Node::Symlink { target } => format!("l {}\0{target}\n", e.path),
            };
            h.update(line.as_bytes());
        }
        Blake3(*h.finalize().as_bytes())
    }

    #[test]
    fn tree_digest_matches_the_specified_lines() {
        let mut m = sample();
        assert_eq!(m.tree_digest(), reference_digest(&m));
        for (i, size) in [0, 9, 10, u64::MAX].into_iter().enumerate() {
            m.entries.push(Entry {
                path: p(&format!("f{i}")),
                node: Node::File {
                    size,
                    blake3: Blake3::of(&size.to_le_bytes()),
                    exec: i % 2 == 0,
                },
                code: false,
                repair: None,
            });
        }
        // Enough entries to cross the internal buffer's flush size.
        for i in 0..3000 {
            m.entries.push(Entry {
                path: p(&format!("g{i:05}")),
                node: Node::Dir,
                code: false,
                repair: None,
            });
        }
        assert_eq!(m.tree_digest(), reference_digest(&m));
    }

    fn parse_entry(json: &str) -> std::result::Result<Entry, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn entry_parser_accepts_what_the_format_allows() {
        let h = Blake3::of(b"x").to_hex();
        let e = parse_entry(&format!(
            r#"{{"blake3":"{h}","code":true,"exec":true,"path":"a/b","repair":{{"blake3":"{h}","size":2}},"size":1,"type":"file","future":[1,{{"x":2}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            e,
            Entry {
                path: p("a/b"),
                node: Node::File {
                    size: 1,
                    blake3: Blake3::of(b"x"),
                    exec: true
                },
                code: true,
                repair: Some(Pin {
                    size: 2,
                    blake3: Blake3::of(b"x")
                }),
            }
        );
        let d = parse_entry(r#"{"type":"dir","path":"a"}"#).unwrap();
        assert_eq!(d.node, Node::Dir);
        let l = parse_entry(r#"{"type":"symlink","path":"l","target":"a"}"#).unwrap();
        assert_eq!(l.node, Node::Symlink { target: "a".into() });
        // Escaped strings are not borrowed from the input; they parse all the same.
        let esc = parse_entry(&format!(
            r#"{{"type":"file","path":"\u0061","size":1,"blake3":"{}"}}"#,
            h.replacen('a', "\\u0061", 1)
        ));
        if h.contains('a') {
            assert_eq!(esc.unwrap().path, p("a"));
        }
    }

    #[test]
    fn entry_parser_refuses_bad_entries() {
        let h = Blake3::of(b"x").to_hex();
        for (json, why) in [
            (
                r#"{"type":"file","path":"a","size":1}"#.to_string(),
                "no blake3",
            ),
            (
                format!(r#"{{"type":"file","path":"a","blake3":"{h}"}}"#),
                "no size",
            ),
            (r#"{"type":"symlink","path":"a"}"#.to_string(), "no target"),
            (r#"{"path":"a"}"#.to_string(), "no type"),
            (r#"{"type":"dir"}"#.to_string(), "no path"),
            (r#"{"type":"pipe","path":"a"}"#.to_string(), "unknown type"),
            (r#"{"type":"dir","path":"../a"}"#.to_string(), "unsafe path"),
            (
                r#"{"type":"dir","path":"a","path":"b"}"#.to_string(),
                "duplicate field",
            ),
            (
                format!(
                    r#"{{"type":"file","path":"a","size":1,"blake3":"{}"}}"#,
                    h.to_uppercase()
                ),
                "uppercase hex",
            ),
            (
                format!(
                    r#"{{"type":"file","path":"a","size":1,"blake3":"{}"}}"#,
                    &h[1..]
                ),
                "short hex",
            ),
            (
                format!(
                    r#"{{"type":"file","path":"a","size":1,"blake3":"{}g"}}"#,
                    &h[1..]
                ),
                "not hex",
            ),
            (
                format!(r#"{{"type":"file","path":"a","size":-1,"blake3":"{h}"}}"#),
                "negative size",
            ),
            (r#"["dir","a"]"#.to_string(), "not an object"),
        ] {
            assert!(parse_entry(&json).is_err(), "{why}: {json}");
        }
    }

    #[test]
    fn every_ancestor_must_be_a_listed_directory() {
        let l = Limits::default();
        let entry = |path: &str, node: Node| Entry {
            path: p(path),
            node,
            code: false,
            repair: None,
        };
        let file = || Node::File {
            size: 0,
            blake3: Blake3::of(b""),
            exec: false,
        };
        let with = |entries: Vec<Entry>| ReleaseManifest {
            entries,
            ..sample()
        };
        let ok = with(vec![
            entry("a", Node::Dir),
            entry("a/b", Node::Dir),
            entry("a/b/c", file()),
            entry("a/b/d", file()),
            entry("a/e", file()),
        ]);
        ok.validate("m", &l).unwrap();
        let gap = with(vec![entry("a", Node::Dir), entry("a/b/c", file())]);
        let err = gap.validate("m", &l).unwrap_err().to_string();
        assert!(err.contains("no directory entry for a/b"), "{err}");
        let top = with(vec![entry("a/b", Node::Dir), entry("a/b/c", file())]);
        assert!(top.validate("m", &l).is_err(), "missing top directory");
        let under_file = with(vec![entry("a", file()), entry("a/b", file())]);
        let err = under_file.validate("m", &l).unwrap_err().to_string();
        assert!(err.contains("below non-directory a"), "{err}");
    }
}
