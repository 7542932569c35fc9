//! The HTTP API: the device endpoints (`device`; `crash_files` for uploads of crash reports), the admin API (`admin`), what both share
//! (`common`: state, bounded body reading, token checks) and the router with its bounds
//! (`router`).

pub mod admin;
pub mod common;
pub mod crash_files;
pub mod device;
pub mod router;
