//! Formats of the patch repository: the types both sides agree on.
//!
//! This crate holds what `patch-create` writes and `patch-apply` reads, and nothing that touches
//! the file system tree or the network:
//!
//! - [`relpath::RelPath`], the only way to name a file inside a release tree;
//! - [`hash`], BLAKE3 and SHA-256 digests and the [`hash::Pin`] that fixes an artifact's bytes;
//! - [`tuf`], The Update Framework's root, targets, snapshot and timestamp roles in canonical
//!   JSON, signed with Ed25519 ([`keys`]), and the client-side checks of spec section 5;
//! - [`manifest::ReleaseManifest`] (every file of a release) and [`patch_info::PatchInfo`]
//!   (what an incremental patch does to each file);
//! - [`container`], the magic and format version that start every binary artifact;
//! - [`layout`], where each file lives in a repository;
//! - [`limits::Limits`], the bound on every length read from untrusted input.
//! - [`fleet`], the device protocol between `patch-server` and the agent in `patch-apply`
//!   (`docs/fleet.md`): wire types and their bounds.
//! - [`txn`] (the journal, actions and install record of an app dir's state) and
//!   [`self_plan`] (the plan `patch-apply` hands to `self-patcher`): plain data, carried out by
//!   the `self-patcher` crate.
//!
//! # Example
//! ```
//! use formats::keys::KeyPair;
//! use formats::tuf::{Role, RootMetadata, Signed, TrustedRoot};
//! use formats::{limits::Limits, time_util::now};
//!
//! let key = KeyPair::generate().unwrap();
//! let root = RootMetadata::new_single_key(&key.public(), 1, now() + time::Duration::days(365));
//! let signed = Signed::sign(root, &[&key]).unwrap();
//! let bytes = signed.to_canonical_bytes().unwrap();
//! // A client that pins the public key accepts this root ...
//! let trusted = TrustedRoot::bootstrap(&bytes, &[key.public()], now(), &Limits::default()).unwrap();
//! assert_eq!(trusted.root().version, 1);
//! # let _ = Role::Root;
//! ```
//!
//! The repository format is specified in `docs/format.md`; module docs cite its sections.

pub mod container;
pub mod error;
pub mod exe_filter;
pub mod exe_project;
pub mod fleet;
pub mod hash;
pub mod keys;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod patch_info;
pub mod patterns;
pub mod relpath;
pub mod retry;
pub mod self_plan;
pub mod split_diff;
pub mod time_util;
pub mod tuf;
pub mod txn;
pub mod version;

pub use error::{Error, Result};
pub use hash::{Blake3, Pin, Sha256};
pub use relpath::RelPath;
pub use version::Version;
