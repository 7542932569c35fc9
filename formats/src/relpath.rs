//! [`RelPath`]: a safe relative path inside a release tree (docs/format.md §2).
//!
//! It is the only way the rest of the toolchain names a file of a release. Its constructor
//! refuses everything that could escape the tree or mean different things on different
//! platforms, so code that joins a `RelPath` onto a directory never writes outside it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// A relative path with `/` separators: no empty, `.` or `..` component, no leading `/`, no
/// NUL, backslash or control character, no drive prefix, and no name reserved on Windows.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// Checks `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        check(&s)?;
        Ok(RelPath(s))
    }

    /// Converts a relative file-system path (as found by walking a tree) to a `RelPath`.
    /// Refuses paths that are not valid UTF-8.
    pub fn from_path(path: &Path) -> Result<Self> {
        let mut out = String::new();
        for comp in path.components() {
            match comp {
                std::path::Component::Normal(c) => {
                    let c = c.to_str().ok_or_else(|| Error::UnsafePath {
                        path: path.to_string_lossy().into_owned(),
                        reason: "not valid UTF-8",
                    })?;
                    if !out.is_empty() {
                        out.push('/');
                    }
                    out.push_str(c);
                }
                _ => {
                    return Err(Error::UnsafePath {
                        path: path.to_string_lossy().into_owned(),
                        reason: "not a plain relative path",
                    })
                }
            }
        }
        RelPath::new(out)
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `root` joined with this path, using the platform's separator.
    pub fn to_path(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        for c in self.0.split('/') {
            p.push(c);
        }
        p
    }

    /// The components of the path.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent directory, or `None` for a top-level name.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_string()))
    }

    /// Every proper ancestor, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> Vec<RelPath> {
        let mut out = Vec::new();
        for (i, ch) in self.0.char_indices() {
            if ch == '/' {
                out.push(RelPath(self.0[..i].to_string()));
            }
        }
        out
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// `self/name`, checked.
    pub fn join(&self, name: &str) -> Result<RelPath> {
        RelPath::new(format!("{}/{}", self.0, name))
    }

    /// The first component.
    pub fn first_component(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

const WINDOWS_RESERVED: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

fn check(s: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::UnsafePath {
            path: s.to_string(),
            reason,
        })
    };
    if s.is_empty() {
        return bad("empty path");
    }
    if s.len() > MAX_PATH_BYTES {
        return bad("path longer than 4096 bytes");
    }
    if s.starts_with('/') {
        return bad("absolute path");
    }
    // Printable ASCII without a backslash (nearly every path) needs none of the next checks.
    let plain = s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\');
    if !plain && s.chars().any(|c| c == '\0') {
        return bad("contains NUL");
    }
    if !plain && s.chars().any(|c| c == '\\') {
        return bad("contains a backslash");
    }
    if !plain && s.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    for comp in s.split('/') {
        if comp.is_empty() {
            return bad("empty component");
        }
        if comp == "." || comp == ".." {
            return bad("`.` or `..` component");
        }
        if comp.len() > MAX_COMPONENT_BYTES {
            return bad("component longer than 255 bytes");
        }
        if comp.len() >= 2 && comp.as_bytes()[1] == b':' {
            return bad("drive prefix or colon stream");
        }
        let stem = comp.split('.').next().unwrap_or(comp);
        if WINDOWS_RESERVED
            .iter()
            .any(|r| r.eq_ignore_ascii_case(stem))
        {
            return bad("name reserved on Windows");
        }
    }
    Ok(())
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::new(s).map_err(serde::de::Error::custom)
    }
}

/// Resolves a symlink's target relative to the link's own directory and returns the path it
/// points at inside the tree, or `None` when it escapes the tree (or is absolute).
pub fn resolve_link_target(link: &RelPath, target: &str) -> Option<Vec<String>> {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return None;
    }
    let mut stack: Vec<String> = link
        .parent()
        .map(|p| p.components().map(str::to_string).collect())
        .unwrap_or_default();
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            c => stack.push(c.to_string()),
        }
    }
    Some(stack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ok(s: &str) {
        assert!(RelPath::new(s).is_ok(), "{s:?} should be accepted");
    }
    fn check_bad(s: &str) {
        assert!(RelPath::new(s).is_err(), "{s:?} should be refused");
    }

    #[test]
    fn accepts_plain_relative_paths() {
        for s in [
            "a",
            "a/b/c.txt",
            "données/résumé.txt",
            "日本語/ファイル.dat",
            "with space/x",
        ] {
            check_ok(s);
        }
    }

    #[test]
    fn refuses_escaping_and_platform_specific_paths() {
        for s in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "C:/x",
            "c:x",
            "a\0b",
            "CON",
            "dir/nul.txt",
            "lpt1",
            "a\nb",
        ] {
            check_bad(s);
        }
        check_bad(&"x".repeat(256));
    }

    #[test]
    fn ancestors_and_parent() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        let anc: Vec<_> = p.ancestors().iter().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert_eq!(p.file_name(), "c");
    }

    #[test]
    fn link_targets_are_resolved_inside_the_tree() {
        let l = RelPath::new("lib/libx.so.1").unwrap();
        assert_eq!(
            resolve_link_target(&l, "libx.so"),
            Some(vec!["lib".into(), "libx.so".into()])
        );
        assert_eq!(
            resolve_link_target(&l, "../data"),
            Some(vec!["data".into()])
        );
        assert_eq!(resolve_link_target(&l, "../../etc"), None);
        assert_eq!(resolve_link_target(&l, "/etc/passwd"), None);
    }
}
