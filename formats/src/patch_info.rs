//! [`PatchInfo`]: what an incremental patch does to each file (docs/format.md §6.2).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exe_filter::ExeFilter;
use crate::exe_project::Projection;
use crate::hash::{Blake3, Pin};
use crate::limits::Limits;
use crate::relpath::RelPath;
use crate::version::Version;

/// The `format` value of patch infos without an `exe-split-diff` op (read by every client).
pub const PATCH_INFO_FORMAT: &str = "patchkit-patch-2";
/// The `format` value of patch infos with at least one `exe-split-diff` op.
pub const PATCH_INFO_FORMAT_EXE: &str = "patchkit-patch-3";
/// The `format` value of patch infos with at least one `exe-project-diff` op.
pub const PATCH_INFO_FORMAT_PROJECT: &str = "patchkit-patch-4";
/// The patch info format of a patch with an `exe-project-diff` op of rules 2
/// (docs/format.md §6.2.6): `.eh_frame` records and more RIP-relative forms.
pub const PATCH_INFO_FORMAT_PROJECT_2: &str = "patchkit-patch-5";
/// Name of the patch info member, always the first member of a patch archive.
pub const PATCH_INFO_MEMBER: &str = "patch-info.json";
/// Name of the second and last member: the ops' bytes, concatenated in op order.
pub const PATCH_DATA_MEMBER: &str = "data";

/// How a file of the new release is produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", rename_all = "kebab-case")]
pub enum Encoding {
    /// Same bytes as an old file (a rename or a copy): nothing is shipped.
    Copy {
        /// The old file.
        source: RelPath,
    },
    /// The whole new file, zstd-compressed.
    Full {
        /// Length of its bytes in the data member.
        member_size: u64,
    },
    /// A bsdiff-style patch (the `bidiff`/`bipatch` stream) against `source`, zstd-compressed.
    Bidiff {
        /// The old file the diff applies to.
        source: RelPath,
        /// Length of its bytes in the data member.
        member_size: u64,
    },
    /// A split diff against `source` (docs/encodings.md): bsdiff-style control, diff and extra
    /// streams, each zstd-compressed, behind their three varint lengths.
    SplitDiff {
        /// The old file the diff applies to.
        source: RelPath,
        /// Length of its bytes in the data member.
        member_size: u64,
    },
    /// The new file zstd-compressed with the old file as a reference prefix
    /// (`zstd --patch-from`).
    ZstdRef {
        /// The old file used as reference.
        source: RelPath,
        /// Length of its bytes in the data member.
        member_size: u64,
        /// The zstd window log the stream needs.
        window_log: u32,
    },
    /// A split diff between `source` and the new file, both run through the branch filter
    /// `filter` (docs/format.md §6.2.5): the client filters the old file, applies the diff and
    /// runs the filter backwards on the result.
    ExeSplitDiff {
        /// The old file the diff applies to.
        source: RelPath,
        /// Length of its bytes in the data member.
        member_size: u64,
        /// Architecture, operand span and code ranges of both files.
        filter: ExeFilter,
    },
    /// A split diff between the *projected* `source` and the new file (docs/format.md
    /// §6.2.6): the member starts with the equivalence map; the client projects the old file's
    /// references through it and applies the split diff that follows.
    ExeProjectDiff {
        /// The old file the diff applies to.
        source: RelPath,
        /// Length of its bytes in the data member.
        member_size: u64,
        /// Where the old file's references are, and both files' segments.
        project: Projection,
    },
}

impl Encoding {
    /// The old file this encoding reads, if any.
    pub fn source(&self) -> Option<&RelPath> {
        match self {
            Encoding::Copy { source }
            | Encoding::Bidiff { source, .. }
            | Encoding::SplitDiff { source, .. }
            | Encoding::ZstdRef { source, .. }
            | Encoding::ExeSplitDiff { source, .. }
            | Encoding::ExeProjectDiff { source, .. } => Some(source),
            Encoding::Full { .. } => None,
        }
    }

    /// How many bytes of the data member the op reads, if any.
    pub fn member_size(&self) -> Option<u64> {
        match self {
            Encoding::Copy { .. } => None,
            Encoding::Full { member_size }
            | Encoding::Bidiff { member_size, .. }
            | Encoding::SplitDiff { member_size, .. }
            | Encoding::ZstdRef { member_size, .. }
            | Encoding::ExeSplitDiff { member_size, .. }
            | Encoding::ExeProjectDiff { member_size, .. } => Some(*member_size),
        }
    }

    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Encoding::Copy { .. } => "copy",
            Encoding::Full { .. } => "full",
            Encoding::Bidiff { .. } => "bidiff",
            Encoding::SplitDiff { .. } => "split-diff",
            Encoding::ZstdRef { .. } => "zstd-ref",
            Encoding::ExeSplitDiff { .. } => "exe-split-diff",
            Encoding::ExeProjectDiff { .. } => "exe-project-diff",
        }
    }
}

/// One file the patch produces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchOp {
    /// The file's path in the new release.
    pub path: RelPath,
    /// The produced file's size and hash (checked after). The source's expected pin is not
    /// repeated here: it is the source's pin in the version the patch starts from.
    pub new: Pin,
    /// How it is produced.
    #[serde(flatten)]
    pub encoding: Encoding,
}

/// The first member of a patch archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchInfo {
    /// Always [`PATCH_INFO_FORMAT`].
    pub format: String,
    /// The application.
    pub app: String,
    /// Version the patch applies to.
    pub from: Version,
    /// Version it produces.
    pub to: Version,
    /// Tree digest of the `from` release.
    pub from_tree: Blake3,
    /// Tree digest of the `to` release.
    pub to_tree: Blake3,
    /// Files the patch produces (new or changed content, renames), sorted by path. Files of the
    /// old release not listed here and not in `deletes` stay as they are.
    pub ops: Vec<PatchOp>,
    /// Old paths (files, links, directories) that are not in the new release.
    pub deletes: Vec<RelPath>,
}

/// The `format` a patch info with these ops has: [`PATCH_INFO_FORMAT_PROJECT_2`] when one of
/// them is `exe-project-diff` with rules 2, else [`PATCH_INFO_FORMAT_PROJECT`] when one is
/// `exe-project-diff`, else [`PATCH_INFO_FORMAT_EXE`] when one is `exe-split-diff`,
/// else [`PATCH_INFO_FORMAT`], so that patches without them stay readable by clients that
/// predate the encodings.
pub fn format_for(ops: &[PatchOp]) -> &'static str {
    if ops.iter().any(
        |op| matches!(&op.encoding, Encoding::ExeProjectDiff { project, .. } if project.rules >= 2),
    ) {
        PATCH_INFO_FORMAT_PROJECT_2
    } else if ops
        .iter()
        .any(|op| matches!(op.encoding, Encoding::ExeProjectDiff { .. }))
    {
        PATCH_INFO_FORMAT_PROJECT
    } else if ops
        .iter()
        .any(|op| matches!(op.encoding, Encoding::ExeSplitDiff { .. }))
    {
        PATCH_INFO_FORMAT_EXE
    } else {
        PATCH_INFO_FORMAT
    }
}

impl PatchInfo {
    /// A patch info of app `a`, 1.0.0 → 1.0.1, with one `full` op per member size (files
    /// `f0`, `f1`...): a fixture for archive tests of other crates (feature `test-fixtures`).
    #[cfg(feature = "test-fixtures")]
    pub fn fixture_with_full_members(sizes: &[u64]) -> PatchInfo {
        let path = |i: usize| RelPath::new(format!("f{i}")).expect("f<i> is a plain path");
        PatchInfo {
            format: PATCH_INFO_FORMAT.into(),
            app: "a".into(),
            from: Version::parse("1.0.0").expect("a version"),
            to: Version::parse("1.0.1").expect("a version"),
            from_tree: Blake3::of(b"1"),
            to_tree: Blake3::of(b"2"),
            ops: sizes
                .iter()
                .enumerate()
                .map(|(i, &member_size)| PatchOp {
                    path: path(i),
                    new: Pin::of(b"x"),
                    encoding: Encoding::Full { member_size },
                })
                .collect(),
            deletes: vec![],
        }
    }

    /// Parses and validates; `what` names the patch in errors.
    pub fn from_json(what: &str, bytes: &[u8], limits: &Limits) -> Result<Self> {
        if bytes.len() as u64 > limits.max_large_metadata {
            return Err(Error::TooLarge {
                what: what.into(),
                limit: limits.max_large_metadata,
                actual: bytes.len() as u64,
            });
        }
        let p: PatchInfo = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: what.into(),
            source: e,
        })?;
        p.validate(what, limits)?;
        Ok(p)
    }

    /// Canonical JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        crate::keys::canonical_json(self)
    }

    /// Total length of the data member: the sum of the ops' member sizes.
    pub fn data_size(&self) -> u64 {
        self.ops
            .iter()
            .filter_map(|op| op.encoding.member_size())
            .fold(0u64, u64::saturating_add)
    }

    /// Checks format, counts, sizes, and that every op has a unique path.
    pub fn validate(&self, what: &str, limits: &Limits) -> Result<()> {
        if ![
            PATCH_INFO_FORMAT,
            PATCH_INFO_FORMAT_EXE,
            PATCH_INFO_FORMAT_PROJECT,
            PATCH_INFO_FORMAT_PROJECT_2,
        ]
        .contains(&self.format.as_str())
        {
            return Err(Error::invalid(
                what,
                format!("unknown format {:?}", self.format),
            ));
        }
        if self.format != format_for(&self.ops) {
            return Err(Error::invalid(
                what,
                format!(
                    "format {:?} does not match its ops ({:?} is the one they need)",
                    self.format,
                    format_for(&self.ops)
                ),
            ));
        }
        if self.ops.len() + self.deletes.len() > limits.max_entries {
            return Err(Error::TooLarge {
                what: format!("{what} entries"),
                limit: limits.max_entries as u64,
                actual: (self.ops.len() + self.deletes.len()) as u64,
            });
        }
        for w in self.ops.windows(2) {
            if w[0].path >= w[1].path {
                return Err(Error::invalid(
                    what,
                    format!("ops not sorted or duplicated at {}", w[1].path),
                ));
            }
        }
        for op in &self.ops {
            if op.new.size > limits.max_file_size {
                return Err(Error::TooLarge {
                    what: format!("{what}: {}", op.path),
                    limit: limits.max_file_size,
                    actual: op.new.size,
                });
            }
            if let Some(size) = op.encoding.member_size() {
                if size > limits.max_file_size {
                    return Err(Error::TooLarge {
                        what: format!("{what}: bytes of {}", op.path),
                        limit: limits.max_file_size,
                        actual: size,
                    });
                }
            }
            if let Encoding::ExeSplitDiff { filter, .. } = &op.encoding {
                filter.validate(&format!("{what}: {}", op.path), op.new.size)?;
            }
            if let Encoding::ExeProjectDiff { project, .. } = &op.encoding {
                // The old file's size is checked again, against its pin, when it is read.
                project.validate(
                    &format!("{what}: {}", op.path),
                    crate::exe_project::MAX_OLD_SIZE,
                )?;
            }
            if let Encoding::ZstdRef { window_log, .. } = op.encoding {
                if !(10..=31).contains(&window_log) {
                    return Err(Error::invalid(
                        what,
                        format!("{}: window log {window_log} out of range", op.path),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = PatchInfo {
            format: PATCH_INFO_FORMAT.into(),
            app: "demo".into(),
            from: Version::parse("1.0.0").unwrap(),
            to: Version::parse("2.0.0").unwrap(),
            from_tree: Blake3::of(b"a"),
            to_tree: Blake3::of(b"b"),
            ops: vec![
                PatchOp {
                    path: RelPath::new("a").unwrap(),
                    new: Pin::of(b"y"),
                    encoding: Encoding::Bidiff {
                        source: RelPath::new("a").unwrap(),
                        member_size: 10,
                    },
                },
                PatchOp {
                    path: RelPath::new("b").unwrap(),
                    new: Pin::of(b"x"),
                    encoding: Encoding::Copy {
                        source: RelPath::new("c").unwrap(),
                    },
                },
            ],
            deletes: vec![RelPath::new("c").unwrap()],
        };
        let bytes = p.to_json().unwrap();
        assert_eq!(
            PatchInfo::from_json("p", &bytes, &Limits::default()).unwrap(),
            p
        );
        let mut dup = p.clone();
        dup.ops[1].path = dup.ops[0].path.clone();
        assert!(dup.validate("p", &Limits::default()).is_err());
    }

    fn exe_patch(filter: ExeFilter) -> PatchInfo {
        let ops = vec![PatchOp {
            path: RelPath::new("bin/app").unwrap(),
            new: Pin {
                size: 1000,
                blake3: Blake3::of(b"n"),
            },
            encoding: Encoding::ExeSplitDiff {
                source: RelPath::new("bin/app").unwrap(),
                member_size: 10,
                filter,
            },
        }];
        PatchInfo {
            format: format_for(&ops).into(),
            app: "demo".into(),
            from: Version::parse("1.0.0").unwrap(),
            to: Version::parse("2.0.0").unwrap(),
            from_tree: Blake3::of(b"a"),
            to_tree: Blake3::of(b"b"),
            ops,
            deletes: vec![],
        }
    }

    #[test]
    fn exe_project_diff_needs_format_4_and_rules_2_format_5() {
        use crate::exe_filter::Arch;
        let project = Projection {
            arch: Arch::X86_64,
            old_code: vec![[64, 500]],
            old_segments: vec![[0, 0x1000, 1000]],
            new_segments: vec![[0, 0x1000, 1000]],
            old_rela: Some([600, 48]),
            old_eh_frame_hdr: None,
            new_eh_frame_hdr_addr: None,
            old_eh_frame: None,
            rules: 1,
        };
        let mut p = exe_patch(ExeFilter {
            arch: Arch::X86_64,
            span_log: 24,
            old_code: vec![],
            new_code: vec![],
        });
        p.ops[0].encoding = Encoding::ExeProjectDiff {
            source: RelPath::new("bin/app").unwrap(),
            member_size: 10,
            project: project.clone(),
        };
        p.format = format_for(&p.ops).into();
        assert_eq!(p.format, PATCH_INFO_FORMAT_PROJECT);
        let bytes = p.to_json().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""encoding":"exe-project-diff""#), "{text}");
        assert_eq!(
            PatchInfo::from_json("p", &bytes, &Limits::default()).unwrap(),
            p
        );
        for format in [PATCH_INFO_FORMAT, PATCH_INFO_FORMAT_EXE] {
            let mut q = p.clone();
            q.format = format.into();
            let e = q.validate("p", &Limits::default()).unwrap_err().to_string();
            assert!(e.contains(PATCH_INFO_FORMAT_PROJECT), "{e}");
        }
        // A projection that the client could not hold is refused while parsing.
        let mut q = p.clone();
        q.ops[0].encoding = Encoding::ExeProjectDiff {
            source: RelPath::new("bin/app").unwrap(),
            member_size: 10,
            project: Projection {
                old_eh_frame_hdr: Some([0, 12]),
                ..project.clone()
            },
        };
        assert!(q.validate("p", &Limits::default()).is_err());
        // Rules 2 (`.eh_frame` and more forms) need format 5; the JSON says `"rules":2`, and
        // rules 1 stay without the key, as format 4 wrote them.
        assert!(!text.contains("rules"), "{text}");
        let mut r = p.clone();
        r.ops[0].encoding = Encoding::ExeProjectDiff {
            source: RelPath::new("bin/app").unwrap(),
            member_size: 10,
            project: Projection {
                old_eh_frame: Some([700, 100]),
                rules: 2,
                ..project.clone()
            },
        };
        r.format = format_for(&r.ops).into();
        assert_eq!(r.format, PATCH_INFO_FORMAT_PROJECT_2);
        let bytes = r.to_json().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(r#""rules":2"#));
        assert_eq!(
            PatchInfo::from_json("p", &bytes, &Limits::default()).unwrap(),
            r
        );
        let mut q = r.clone();
        q.format = PATCH_INFO_FORMAT_PROJECT.into();
        let e = q.validate("p", &Limits::default()).unwrap_err().to_string();
        assert!(e.contains(PATCH_INFO_FORMAT_PROJECT_2), "{e}");
        // Rules a client does not know, and `.eh_frame` under rules 1, are refused.
        for (rules, eh) in [(3, None), (0, None), (1, Some([700, 100]))] {
            let mut q = r.clone();
            q.ops[0].encoding = Encoding::ExeProjectDiff {
                source: RelPath::new("bin/app").unwrap(),
                member_size: 10,
                project: Projection {
                    old_eh_frame: eh,
                    rules,
                    ..project.clone()
                },
            };
            q.format = format_for(&q.ops).into();
            assert!(
                q.validate("p", &Limits::default()).is_err(),
                "rules {rules}"
            );
        }
    }

    #[test]
    fn exe_split_diff_needs_format_3_and_sane_ranges() {
        use crate::exe_filter::Arch;
        let good = ExeFilter {
            arch: Arch::X86_64,
            span_log: 24,
            old_code: vec![[64, 500], [600, 10]],
            new_code: vec![[64, 936]],
        };
        let p = exe_patch(good.clone());
        assert_eq!(p.format, PATCH_INFO_FORMAT_EXE);
        let bytes = p.to_json().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""encoding":"exe-split-diff""#), "{text}");
        assert_eq!(
            PatchInfo::from_json("p", &bytes, &Limits::default()).unwrap(),
            p
        );
        // A patch-2 info cannot carry the encoding.
        let mut old_format = p.clone();
        old_format.format = PATCH_INFO_FORMAT.into();
        let e = old_format
            .validate("p", &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(PATCH_INFO_FORMAT_EXE), "{e}");
        // Ranges past the new file, overlapping ranges and a wild span are refused.
        for bad in [
            ExeFilter {
                new_code: vec![[64, 937]],
                ..good.clone()
            },
            ExeFilter {
                old_code: vec![[0, 10], [5, 10]],
                ..good.clone()
            },
            ExeFilter {
                span_log: 31,
                ..good.clone()
            },
        ] {
            let e = exe_patch(bad)
                .validate("p", &Limits::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("bin/app"), "{e}");
        }
    }

    #[test]
    fn unknown_encoding_is_refused_by_name() {
        // What a client that predates an encoding says: the tag is named.
        let p = exe_patch(ExeFilter {
            arch: crate::exe_filter::Arch::Aarch64,
            span_log: 16,
            old_code: vec![],
            new_code: vec![],
        });
        let text = String::from_utf8(p.to_json().unwrap())
            .unwrap()
            .replace("exe-split-diff", "exe-split-diff-9");
        let e = PatchInfo::from_json("p", text.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("exe-split-diff-9"), "{e}");
    }
}
