//! Writes and extends patch repositories from release trees.
pub mod content;
pub mod encode;
pub mod error;
pub mod gc;
pub mod keyfile;
pub mod pack;
pub mod progress;
pub mod release;
pub mod repo;
pub mod verify;

pub use error::{Error, Result};
