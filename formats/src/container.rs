//! The header that starts every binary artifact (docs/format.md §6).
//!
//! Each binary artifact (installer, patch, repair file) is a zstd stream whose first frame is a
//! zstd *skippable frame* carrying our magic, the artifact kind and the format version. Standard
//! `zstd -d` skips that frame, so `zstd -dc x.patch | tar t` works with stock tools, while our
//! readers refuse anything that does not carry the right header.
//!
//! Layout (24 bytes, little-endian): `u32 0x184D2A5E` (skippable-frame magic), `u32 16` (frame
//! size), `b"PATCHKIT"`, a 4-byte kind (`INST`, `PTCH`, `RPAR`), `u32` format version.

use std::io::{Read, Write};

use crate::error::{Error, Result};

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 24;
/// The zstd skippable-frame magic we use.
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// Our magic inside the frame.
pub const MAGIC: &[u8; 8] = b"PATCHKIT";
/// The current format version of every artifact kind.
pub const FORMAT_VERSION: u32 = 1;

/// Kinds of binary artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    /// The whole release as a compressed tar.
    Installer,
    /// An incremental patch: a compressed tar of patch info and per-file members.
    Patch,
    /// One file of a release, compressed on its own.
    Repair,
}

impl ArtifactKind {
    fn tag(self) -> &'static [u8; 4] {
        match self {
            ArtifactKind::Installer => b"INST",
            ArtifactKind::Patch => b"PTCH",
            ArtifactKind::Repair => b"RPAR",
        }
    }
}

/// The 24-byte header for `kind`.
pub fn header(kind: ArtifactKind) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&16u32.to_le_bytes());
    h[8..16].copy_from_slice(MAGIC);
    h[16..20].copy_from_slice(kind.tag());
    h[20..24].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Writes the header for `kind`.
pub fn write_header<W: Write>(w: &mut W, kind: ArtifactKind) -> std::io::Result<()> {
    w.write_all(&header(kind))
}

/// Checks a header; `what` names the artifact in the error.
pub fn check_header(what: &str, bytes: &[u8], kind: ArtifactKind) -> Result<()> {
    let bad = |reason: String| Error::BadContainer {
        what: what.to_string(),
        reason,
    };
    if bytes.len() < HEADER_LEN {
        return Err(bad("too short for an artifact header".into()));
    }
    if bytes[0..4] != SKIPPABLE_MAGIC.to_le_bytes()
        || bytes[4..8] != 16u32.to_le_bytes()
        || &bytes[8..16] != MAGIC
    {
        return Err(bad("does not start with the PATCHKIT magic".into()));
    }
    if &bytes[16..20] != kind.tag() {
        return Err(bad(format!(
            "is a {:?} artifact, expected {:?}",
            String::from_utf8_lossy(&bytes[16..20]),
            String::from_utf8_lossy(kind.tag())
        )));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[20..24]);
    let version = u32::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )));
    }
    Ok(())
}

/// Reads and checks the header from a stream, leaving it positioned at the zstd payload.
pub fn read_header<R: Read>(what: &str, r: &mut R, kind: ArtifactKind) -> Result<()> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h).map_err(|e| Error::BadContainer {
        what: what.to_string(),
        reason: format!("cannot read header: {e}"),
    })?;
    check_header(what, &h, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_refusals() {
        let h = header(ArtifactKind::Patch);
        check_header("p", &h, ArtifactKind::Patch).unwrap();
        assert!(check_header("p", &h, ArtifactKind::Installer).is_err());
        assert!(check_header("p", &h[..10], ArtifactKind::Patch).is_err());
        let mut bad = h;
        bad[20] = 9;
        assert!(check_header("p", &bad, ArtifactKind::Patch).is_err());
        let mut bad = h;
        bad[9] ^= 1;
        assert!(check_header("p", &bad, ArtifactKind::Patch).is_err());
    }
}
