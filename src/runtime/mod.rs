//! The controller process's wiring, at the top: the watches and the kube-runtime
//! controller that feeds [`crate::reconcile`] ([`controller`]), leader election
//! ([`lease`]), and the command-line flags' parsing helpers ([`flags`]).
//!
//! May use every folder below it (`crd`, `common`, `aws`, `reconcile`); nothing below
//! uses it. `main.rs` only parses the flags and calls in here or into [`crate::webhook`].

pub mod controller;
pub mod flags;
pub mod lease;
