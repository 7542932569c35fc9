//! Fetching repository files: the [`transport::Transport`] trait, local directories, mirrors
//! and resumable `.part` files ([`transport`]), and the HTTP(S) transport with its retries,
//! timeouts and Range resume ([`http`]).
//!
//! May use: `error`, `events`, `state`. Nothing here knows what a file means: every download
//! is bounded by and checked against the size and hash the caller took from signed metadata.

pub mod http;
pub mod transport;
