//! Amazon Cognito Identity and STS: the five operations the controller calls, behind the
//! [`cognito::Cognito`] trait (the SDK client, and a fake in tests); their errors, each
//! mapped to the condition reason it shows; the pacing of those calls under Cognito's
//! quotas ([`quota`]); and their metering.
//!
//! Owns every AWS call: no other folder holds an SDK client. May use: [`crate::crd`] (the
//! condition reasons) and [`crate::common`] (metrics, bounded maps). Knows nothing of
//! Secrets, status or the reconcile that calls it.

pub mod cognito;
#[cfg(test)]
pub mod fake;
pub mod metered;
pub mod quota;
