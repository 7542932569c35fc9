//! HTTP(S) transport (placeholder until the delivery work lands: refuses clearly).

use crate::error::{Error, Result};
use crate::transport::Transport;

/// Opens an HTTP(S) repository.
pub fn open(url: &str) -> Result<Box<dyn Transport>> {
    Err(Error::Fetch {
        url: url.to_string(),
        reason: "http repositories are not supported by this build yet".into(),
    })
}
