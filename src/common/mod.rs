//! What the controller and the webhook both stand on, below every other folder: the
//! backoff of every watch and its namespace filter ([`watch`]), state keyed by user input kept bounded
//! ([`bounded`]), what reaches the logs ([`logging`]), the metrics registry ([`metrics`]),
//! events with compact series ([`events`]), and the admin HTTP server with its health
//! checks ([`http`]).
//!
//! Owns no Kubernetes object and makes no decision. May use: [`crate::crd`] (the API
//! types its metrics describe). Nothing here uses `aws`, `reconcile`, `webhook` or
//! `runtime`.

pub mod bounded;
pub mod events;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod watch;
