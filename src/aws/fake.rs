//! A [`Cognito`] for tests: every operation answers a fixed success, or the error it was
//! told to give ([`Fake::fail`]), and every call is recorded with its region.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;

use crate::aws::cognito::{
    Assumed, Cognito, CognitoError, Credentials, OpenIdToken, Operation, RoleSession,
};

/// The fake's credentials: an hour long from when they are asked for.
pub fn credentials() -> Credentials {
    Credentials {
        access_key_id: "ASIAFAKE".into(),
        secret_access_key: "fake-secret".into(),
        session_token: "fake-session".into(),
        expiration: Timestamp::now() + jiff::SignedDuration::from_hours(1),
    }
}

#[derive(Default)]
pub struct Fake {
    calls: Mutex<Vec<(Operation, String)>>,
    failures: Mutex<HashMap<Operation, CognitoError>>,
    /// Answered once each, before `failures`.
    once: Mutex<Vec<(Operation, CognitoError)>>,
}

impl Fake {
    /// From now on `op` answers `err`.
    pub fn fail(&self, op: Operation, err: CognitoError) {
        crate::lock(&self.failures).insert(op, err);
    }

    /// The next call of `op` (only) answers `err`.
    pub fn fail_once(&self, op: Operation, err: CognitoError) {
        crate::lock(&self.once).push((op, err));
    }

    /// The operations called so far, in order.
    pub fn operations(&self) -> Vec<Operation> {
        crate::lock(&self.calls).iter().map(|(op, _)| *op).collect()
    }

    /// Every call so far: its operation and region, in order.
    pub fn calls(&self) -> Vec<(Operation, String)> {
        crate::lock(&self.calls).clone()
    }

    fn answer<T>(&self, op: Operation, region: &str, ok: T) -> Result<T, CognitoError> {
        crate::lock(&self.calls).push((op, region.to_string()));
        let mut once = crate::lock(&self.once);
        if let Some(i) = once.iter().position(|(o, _)| *o == op) {
            return Err(once.remove(i).1);
        }
        drop(once);
        match crate::lock(&self.failures).get(&op) {
            Some(e) => Err(e.clone()),
            None => Ok(ok),
        }
    }
}

impl Cognito for Fake {
    async fn get_id(&self, region: &str, _pool: &str) -> Result<String, CognitoError> {
        let n = crate::lock(&self.calls).len();
        self.answer(Operation::GetId, region, format!("{region}:fake-{n}"))
    }

    async fn get_credentials(
        &self,
        region: &str,
        _identity_id: &str,
        _custom_role_arn: Option<&str>,
    ) -> Result<Credentials, CognitoError> {
        self.answer(Operation::GetCredentialsForIdentity, region, credentials())
    }

    async fn caller_identity(
        &self,
        region: &str,
        _creds: &Credentials,
    ) -> Result<String, CognitoError> {
        let arn = "arn:aws:sts::123456789012:assumed-role/guest/fake".to_string();
        self.answer(Operation::GetCallerIdentity, region, arn)
    }

    async fn get_open_id_token(
        &self,
        region: &str,
        _identity_id: &str,
    ) -> Result<OpenIdToken, CognitoError> {
        let token = OpenIdToken::new("fake-token".into());
        self.answer(Operation::GetOpenIdToken, region, token)
    }

    async fn assume_role_with_web_identity(
        &self,
        region: &str,
        session: &RoleSession,
        _token: &OpenIdToken,
    ) -> Result<Assumed, CognitoError> {
        let assumed = Assumed {
            credentials: credentials(),
            assumed_role_arn: format!("{}/{}", session.role_arn, session.session_name),
        };
        self.answer(Operation::AssumeRoleWithWebIdentity, region, assumed)
    }
}
