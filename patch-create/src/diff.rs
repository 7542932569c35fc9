//! Diffing and encoding release files: bsdiff-style matches over a suffix array
//! ([`sa_scan`]), the bounded-memory windowed mode ([`window`]), the choice of each file's
//! encoding ([`encode`]), the split-diff streams ([`streams`]) and members ([`split_pack`]),
//! zstd settings ([`compress`]) and the binary artifacts that carry them ([`pack`]).
//!
//! May use: `error` (and `formats`). Works on bytes and files given to it; knows nothing of
//! repositories, keys or releases.

pub mod compress;
pub mod encode;
pub mod exe;
pub mod pack;
pub mod sa_scan;
pub mod split_pack;
pub mod streams;
pub mod window;
