//! cognito-unauth-controller: keeps Amazon Cognito guest (unauthenticated) credentials
//! fresh in Kubernetes Secrets.
//!
//! Each concern has its own module: the API types ([`crd`]); the pure steps that decide
//! ([`plan`]), schedule ([`schedule`]), render and read the Secret ([`secret`]) and build
//! conditions ([`status`]); what the watch saw of our Secrets ([`seen`]); the Cognito
//! client behind a trait ([`cognito`]) and its pacing under the quotas ([`quota`]); fair
//! turns between namespaces ([`fair`]); the reconcile steps with their I/O
//! ([`reconcile`]); metrics ([`metrics`]) and the admin
//! HTTP server ([`http`]); and the runtime wiring ([`controller`]) with its leader election
//! ([`lease`]), events with compact series ([`events`]), and rollout restarts of the
//! workloads that read the credentials ([`restart`]); what reaches the logs ([`logging`]); every watch backs off as
//! client-go's reflectors do ([`backoff`]); state keyed by user input is bounded
//! ([`bounded`]).
//!
//! The injection webhook (`cognito-unauth-controller webhook`) has its own: the pod it
//! makes of an annotated pod ([`inject`], pure), its serving certificate ([`certs`], pure),
//! and the admission server with the loop that keeps its certificate and configuration
//! ([`webhook`]); [`sidecar`] is the `serve-credentials` sidecar it adds to pods whose image
//! has no shell.

pub mod backoff;
pub mod bounded;
pub mod certs;
pub mod cognito;
pub mod controller;
pub mod crd;
pub mod events;
pub mod fair;
pub mod flags;
pub mod http;
pub mod inject;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod plan;
#[cfg(test)]
mod properties;
pub mod quota;
pub mod reconcile;
pub mod restart;
pub mod schedule;
pub mod secret;
pub mod seen;
pub mod sidecar;
pub mod status;
pub mod webhook;

/// Locks a mutex. A panic elsewhere while holding it leaves plain data (maps, counters)
/// that is still usable, so a poisoned lock is taken as it is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Reads an RwLock; a poisoned one is read as it is (see [`lock`]).
pub(crate) fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Writes an RwLock; a poisoned one is written as it is (see [`lock`]).
pub(crate) fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
