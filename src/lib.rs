//! cognito-unauth-controller: keeps Amazon Cognito guest (unauthenticated) credentials
//! fresh in Kubernetes Secrets.
//!
//! Each concern has its own module: the API types ([`crd`]), the pure steps that
//! decide and schedule ([`schedule`]), the Secret's rendering and reading ([`secret`]).

pub mod crd;
pub mod schedule;
pub mod secret;
