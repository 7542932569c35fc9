//! The updater that apps embed.
pub mod archive;
pub mod atomic;
pub mod commit;
pub mod decode;
pub mod error;
pub mod events;
pub mod http;
pub mod plan;
pub mod preflight;
pub mod repo_view;
pub mod scan;
pub mod stage;
pub mod state;
pub mod transport;
pub mod trust;
pub mod updater;

pub use error::{Error, Result};
pub use events::Event;
pub use plan::Method;
pub use updater::{ApplyReport, CheckReport, Config, MethodChoice, Updater};
