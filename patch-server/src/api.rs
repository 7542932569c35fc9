//! The HTTP API: the device endpoints (`device`), the admin API (`admin`), what both share
//! (`common`: state, bounded body reading, token checks) and the router with its bounds
//! (`router`).

pub mod admin;
pub mod common;
pub mod device;
pub mod router;
