//! Writes and extends patch repositories from release trees.
pub mod bundle;
pub mod diff;
pub mod error;
pub mod progress;
pub mod publish;
pub mod release;
pub mod repo;
pub mod serve;
pub mod verify;

// The modules' paths before they were grouped, kept so that code written against them
// (examples, tests, benchmarks) still compiles.
pub use diff::{encode, exe, pack, sa_scan, split_pack, window};
pub use release::{content, repair};
pub use repo::{gc, keyfile, keys_admin, maintenance, yank};

pub use error::{Error, Result};
