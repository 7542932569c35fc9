//! [`Limits`]: bounds on every length read from untrusted input (docs/format.md §9).

/// Upper bounds applied while reading repository data. The defaults suit releases of up to
/// a million files and single files of up to 64 GiB; callers may tighten them.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest root, timestamp or snapshot metadata file, in bytes.
    pub max_small_metadata: u64,
    /// Largest targets metadata, release manifest or patch info, in bytes.
    pub max_large_metadata: u64,
    /// Most entries in one release manifest or patch info.
    pub max_entries: usize,
    /// Largest single file in a release, in bytes.
    pub max_file_size: u64,
    /// Largest decompressed output of any one compressed stream, in bytes, unless the stream's
    /// signed size says less.
    pub max_decompressed: u64,
    /// Most signatures examined on one document.
    pub max_signatures: usize,
    /// Most root versions walked in one update.
    pub max_root_rotations: u64,
    /// Largest tar header block sequence (long names, pax extensions), in bytes.
    pub max_archive_header: u64,
    /// Largest old file a `zstd-ref` op may hold in memory as its reference prefix, in bytes
    /// (checked against the old file's signed size before anything is read; the creator uses
    /// the encoding only where old + new ≤ 24 MiB).
    pub max_ref_prefix: u64,
    /// Largest zstd window, as a power of two, that a decoder may allocate for one frame
    /// (checked against the frame header before decoding).
    pub max_window_log: u32,
    /// Most delegated targets roles visited while looking up one target (TUF's
    /// `max_delegations`).
    pub max_delegations: usize,
    /// Deepest chain of delegations followed from the top-level targets role.
    pub max_delegation_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_small_metadata: 1 << 20,
            max_large_metadata: 256 << 20,
            max_entries: 1_000_000,
            max_file_size: 64 << 30,
            max_decompressed: 64 << 30,
            max_signatures: 64,
            max_root_rotations: 1024,
            max_archive_header: 64 << 10,
            max_ref_prefix: 64 << 20,
            max_window_log: 27,
            max_delegations: 32,
            max_delegation_depth: 16,
        }
    }
}
