//! Progress reporting from the library to whatever front end runs it.

/// Receives progress of long phases. Implementations must be cheap and thread-safe: `advance`
/// is called from worker threads.
pub trait Progress: Sync {
    /// A phase starts, with its total amount of work (files or bytes; 0 if unknown).
    fn start(&self, phase: &str, total: u64);
    /// Some work of the current phase is done.
    fn advance(&self, amount: u64);
    /// The current phase ended.
    fn finish(&self);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _amount: u64) {}
    fn finish(&self) {}
}
