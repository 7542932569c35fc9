//! Writes and extends patch repositories from release trees.
pub mod content;
pub mod encode;
pub mod error;
pub mod gc;
pub mod keyfile;
pub mod keys_admin;
pub mod maintenance;
pub mod pack;
pub mod progress;
pub mod release;
pub mod repair;
pub mod repo;
pub mod sa_scan;
pub mod serve;
pub mod split_pack;
pub mod verify;
pub mod window;

pub use error::{Error, Result};
