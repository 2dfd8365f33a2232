//! Every Cognito and STS call counted and timed in the metrics: a [`Cognito`] that wraps
//! another.

use std::sync::Arc;
use std::time::Instant;

use crate::aws::cognito::{Assumed, Cognito, CognitoError, Credentials, OpenIdToken, RoleSession};
use crate::common::metrics::Metrics;

/// A Cognito client that records every call in the metrics.
pub struct Metered<C> {
    inner: C,
    metrics: Arc<Metrics>,
}

impl<C> Metered<C> {
    pub fn new(inner: C, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

fn outcome<T>(r: &Result<T, CognitoError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

impl<C: Cognito> Cognito for Metered<C> {
    fn forget_region(&self, region: &str) {
        self.inner.forget_region(region);
    }

    async fn get_id(&self, region: &str, pool: &str) -> Result<String, CognitoError> {
        let started = Instant::now();
        let r = self.inner.get_id(region, pool).await;
        self.metrics.request("GetId", started, outcome(&r));
        r
    }

    async fn get_credentials(
        &self,
        region: &str,
        identity_id: &str,
        custom_role_arn: Option<&str>,
    ) -> Result<Credentials, CognitoError> {
        let started = Instant::now();
        let r = self
            .inner
            .get_credentials(region, identity_id, custom_role_arn)
            .await;
        self.metrics
            .request("GetCredentialsForIdentity", started, outcome(&r));
        r
    }

    async fn caller_identity(
        &self,
        region: &str,
        creds: &Credentials,
    ) -> Result<String, CognitoError> {
        let started = Instant::now();
        let r = self.inner.caller_identity(region, creds).await;
        self.metrics
            .request("GetCallerIdentity", started, outcome(&r));
        r
    }

    async fn get_open_id_token(
        &self,
        region: &str,
        identity_id: &str,
    ) -> Result<OpenIdToken, CognitoError> {
        let started = Instant::now();
        let r = self.inner.get_open_id_token(region, identity_id).await;
        self.metrics.request("GetOpenIdToken", started, outcome(&r));
        r
    }

    async fn assume_role_with_web_identity(
        &self,
        region: &str,
        session: &RoleSession,
        token: &OpenIdToken,
    ) -> Result<Assumed, CognitoError> {
        let started = Instant::now();
        let r = self
            .inner
            .assume_role_with_web_identity(region, session, token)
            .await;
        self.metrics
            .request("AssumeRoleWithWebIdentity", started, outcome(&r));
        r
    }
}
