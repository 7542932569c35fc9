//! Alerts (docs/fleet.md, "Alerts"): conditions a release engineer is told about, opened once
//! and resolved once, delivered by webhook and e-mail.
//!
//! - [`Condition`]s: a failed update, a silent device, a device reporting a problem in its
//!   state document, a rollout halted. Each has a stable key (`failed-update:<device>`,
//!   `silent:<device>`, `problem:<device>`, `rollout-halted:<rollout>`).
//! - Deciding is pure ([`checkin_changes`], [`deliver::backoff`], [`deliver::give_up`]):
//!   plain data in, [`Change`]s out; the check-in handler only loads, calls and stores.
//! - De-duplication is in the database ([`store`]): at most one open alert per key (a unique
//!   index, so two server instances cannot both open it); opening and resolving write the
//!   notifications to an outbox in the same transaction, so check-ins never wait on delivery.
//! - Delivery ([`deliver`]): a background task of every instance claims due outbox rows with a
//!   lease, posts HMAC-signed JSON or sends e-mail, and retries with exponential backoff up to
//!   a bound, then marks the row failed.
//!
//! The rollout code raises and clears `rollout-halted` through [`raise`] and [`clear`]; the
//! dashboard shows [`list`].

pub mod condition;
pub mod deliver;
pub mod store;

pub use condition::{
    check_problem, checkin_changes, cut, device_keys, failure_detail, key_of, problem_of, title,
    AlertEvent, Change, CheckinFacts, Condition, DEVICE_KINDS, MAX_DETAIL, MAX_PROBLEM,
};
pub use deliver::{spawn, AlertOptions, DeliveryOptions, SmtpConfig};
pub use store::{
    add_destination, clear, destinations, list, raise, remove_destination, sweep_silent,
    AlertFilter, AlertView, DeliveryView, Destination,
};
