//! Looking at an app directory or a release tree: the parallel BLAKE3 scan ([`scan`]), the
//! scan cache that lets a no-op check stat instead of hash ([`scan_cache`]), and what the
//! updater owns there ([`ownership`]).
//!
//! May use: `error`, `state`. Only reads the tree (the scan cache is written in the state
//! directory).

pub mod ownership;
pub mod scan;
pub mod scan_cache;
