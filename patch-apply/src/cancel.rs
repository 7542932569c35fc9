//! [`Cancel`]: the handle an app keeps to stop an update (a GUI's Cancel button).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A cancellation token shared between the app and an [`crate::Updater`]. Clones share one
/// flag: the app keeps a clone, gives another to [`crate::Config::cancel`], and calls
/// [`Cancel::cancel`] from any thread. The updater looks at it at safe points (between
/// download chunks, between files while staging, before the commit) and then fails with
/// [`Error::Cancelled`]; the app dir keeps its old version (a commit already under way is
/// finished, as the journal requires), downloads stay in the cache so that a later apply
/// resumes them.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token not cancelled.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Asks every updater holding a clone of this token to stop at its next safe point.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Makes the token usable again (for the next update).
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called (and not reset since).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Error::Cancelled)` once cancelled: a safe point.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

impl PartialEq for Cancel {
    /// Two tokens are equal when they share one flag.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_flag_and_reset_clears_it() {
        let a = Cancel::new();
        let b = a.clone();
        assert!(b.check().is_ok());
        a.cancel();
        assert!(b.is_cancelled());
        assert!(matches!(b.check(), Err(Error::Cancelled)));
        assert_eq!(a, b);
        assert_ne!(a, Cancel::new());
        b.reset();
        assert!(!a.is_cancelled());
    }
}
