//! [`PathPatterns`]: glob lists such as ignore patterns and code/resource declarations
//! (docs/format.md §5.2).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::relpath::RelPath;

/// A compiled list of globs. `*` does not cross `/`; `**` does. A pattern without `/`
/// matches the file name at any depth (`*.log` matches `a/b/c.log`); a pattern that
/// matches a directory matches everything below it.
#[derive(Clone, Debug)]
pub struct PathPatterns {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PathPatterns {
    /// Compiles `patterns`.
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let bad = |e: globset::Error| Error::BadPattern {
                pattern: p.clone(),
                reason: e.kind().to_string(),
            };
            let trimmed = p.trim_end_matches('/');
            let anchored = if trimmed.contains('/') {
                trimmed.trim_start_matches('/').to_string()
            } else {
                format!("**/{trimmed}")
            };
            for g in [anchored.clone(), format!("{anchored}/**")] {
                b.add(
                    GlobBuilder::new(&g)
                        .literal_separator(true)
                        .build()
                        .map_err(bad)?,
                );
            }
        }
        let set = b.build().map_err(|e| Error::BadPattern {
            pattern: patterns.join(" "),
            reason: e.to_string(),
        })?;
        Ok(PathPatterns {
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// An empty list, which matches nothing.
    pub fn empty() -> Self {
        PathPatterns {
            patterns: Vec::new(),
            set: GlobSet::empty(),
        }
    }

    /// Whether `path` matches any pattern.
    pub fn matches(&self, path: &RelPath) -> bool {
        !self.patterns.is_empty() && self.set.is_match(path.as_str())
    }

    /// The source patterns.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pats: &[&str], path: &str) -> bool {
        let pats: Vec<String> = pats.iter().map(|s| s.to_string()).collect();
        PathPatterns::new(&pats)
            .unwrap()
            .matches(&RelPath::new(path).unwrap())
    }

    #[test]
    fn glob_semantics() {
        assert!(m(&["*.log"], "a/b/c.log"));
        assert!(m(&["*.log"], "c.log"));
        assert!(!m(&["logs/*.txt"], "x/logs/a.txt"));
        assert!(m(&["logs/*.txt"], "logs/a.txt"));
        assert!(!m(&["logs/*.txt"], "logs/sub/a.txt"));
        assert!(m(&["user/"], "user/settings/a.ini"));
        assert!(m(&["saves/**"], "saves/x/y"));
        assert!(!m(&[], "anything"));
    }
}
