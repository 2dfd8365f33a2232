//! Amazon Cognito Identity and the STS calls of the basic flow, behind a trait so tests
//! can inject faults.
//!
//! GetId, GetCredentialsForIdentity, GetOpenIdToken and STS AssumeRoleWithWebIdentity
//! are public, unsigned APIs: the clients are built with no credentials provider, and
//! the SDK sends no Authorization header. The endpoints come from the SDK's standard
//! configuration (`AWS_ENDPOINT_URL_COGNITO_IDENTITY`, `AWS_ENDPOINT_URL_STS` or
//! `AWS_ENDPOINT_URL`). The SDK's own retries are off: the controller owns the retry
//! schedule, so every call it makes is one call on the wire.

use crate::common::bounded::Bounded;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cognitoidentity::Client;
use aws_sdk_cognitoidentity::error::{ProvideErrorMetadata, SdkError};
use jiff::Timestamp;

use crate::crd::conditions::reason;

/// Temporary AWS credentials. Debug never prints the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: Timestamp,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// What STS AssumeRoleWithWebIdentity is asked for (flow Basic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSession {
    pub role_arn: String,
    /// RoleSessionName.
    pub session_name: String,
    /// DurationSeconds.
    pub duration_seconds: u32,
}

/// Why Cognito did not hand out credentials. Messages are Cognito's own words or the
/// transport's; they never carry credential material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CognitoError {
    #[error("identity pool not found: {0}")]
    PoolNotFound(String),
    #[error("identity not found: {0}")]
    IdentityNotFound(String),
    #[error("guest access is not allowed: {0}")]
    GuestAccessDisabled(String),
    #[error("Cognito refused the identity: {0}")]
    NotAuthorized(String),
    #[error("invalid identity pool configuration: {0}")]
    InvalidPoolConfiguration(String),
    #[error("Cognito rejected a parameter: {0}")]
    InvalidParameter(String),
    #[error("throttled by Cognito: {0}")]
    Throttled(String),
    #[error("Cognito unavailable: {0}")]
    Unavailable(String),
    /// GetOpenIdToken refused: the pool does not allow the basic (classic) flow.
    #[error("the identity pool does not allow the basic (classic) flow: {0}")]
    ClassicFlowDisabled(String),
    /// STS AccessDenied: the role does not exist, or its trust policy does not allow
    /// this pool's unauthenticated identities.
    #[error("STS AssumeRoleWithWebIdentity refused the role: {0}")]
    RoleAccessDenied(String),
    /// STS ValidationError about DurationSeconds: longer than the role allows.
    #[error("STS AssumeRoleWithWebIdentity refused the session duration: {0}")]
    InvalidSessionDuration(String),
    /// STS ValidationError about another parameter (e.g. the session name).
    #[error("STS AssumeRoleWithWebIdentity rejected a parameter: {0}")]
    StsInvalidParameter(String),
    #[error("throttled by STS AssumeRoleWithWebIdentity: {0}")]
    StsThrottled(String),
    /// No verdict from STS AssumeRoleWithWebIdentity (5xx, transport, a token it could
    /// not check): asked again with a fresh token.
    #[error("STS AssumeRoleWithWebIdentity unavailable: {0}")]
    StsUnavailable(String),
    #[error("malformed response from Cognito: {0}")]
    Malformed(String),
    #[error("STS GetCallerIdentity refused the new credentials: {0}")]
    VerificationFailed(String),
    /// STS could not give a verdict (timeout, 5xx, throttling): not a refusal.
    #[error("STS GetCallerIdentity could not be asked: {0}")]
    VerificationUnavailable(String),
}

impl CognitoError {
    /// The `Ready` reason (and metrics label) for this error; whether it is terminal
    /// or transient is the reason table's to say (`conditions::reason::class`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PoolNotFound(_) => reason::IDENTITY_POOL_NOT_FOUND,
            Self::IdentityNotFound(_) => reason::IDENTITY_NOT_FOUND,
            Self::GuestAccessDisabled(_) => reason::GUEST_ACCESS_DISABLED,
            Self::NotAuthorized(_) => reason::NOT_AUTHORIZED,
            Self::InvalidPoolConfiguration(_) => reason::INVALID_POOL_CONFIGURATION,
            Self::InvalidParameter(_) | Self::StsInvalidParameter(_) => reason::INVALID_PARAMETER,
            Self::Throttled(_) | Self::StsThrottled(_) => reason::THROTTLED,
            Self::Unavailable(_) | Self::Malformed(_) | Self::StsUnavailable(_) => {
                reason::COGNITO_UNAVAILABLE
            }
            Self::ClassicFlowDisabled(_) => reason::CLASSIC_FLOW_DISABLED,
            Self::RoleAccessDenied(_) => reason::ROLE_ACCESS_DENIED,
            Self::InvalidSessionDuration(_) => reason::INVALID_SESSION_DURATION,
            Self::VerificationFailed(_) => reason::VERIFICATION_FAILED,
            Self::VerificationUnavailable(_) => reason::VERIFICATION_UNAVAILABLE,
        }
    }
}

/// Cognito's message when a pool does not allow unauthenticated identities; any other
/// NotAuthorizedException is about the identity, not the pool.
const GUEST_ACCESS_OFF: &str = "Unauthenticated access is not supported";

/// Cognito's word in GetOpenIdToken's refusal when the pool does not allow the basic
/// flow ("Basic (classic) flow is not enabled, please use enhanced flow.", an
/// InvalidParameterException): any other InvalidParameterException is about a parameter.
const CLASSIC_FLOW_OFF: &str = "classic";

/// An OpenID token from GetOpenIdToken: a credential (STS trades it for the role's
/// credentials for 10 minutes). Debug never prints it, and nothing else shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenIdToken(String);

impl OpenIdToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token itself, for the one call that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for OpenIdToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenIdToken(<redacted>)")
    }
}

/// What AssumeRoleWithWebIdentity answered: the credentials and the assumed-role ARN
/// (AssumedRoleUser.Arn) they act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assumed {
    pub credentials: Credentials,
    pub assumed_role_arn: String,
}

/// The AWS calls the controller makes: Cognito's (GetId, GetCredentialsForIdentity,
/// GetOpenIdToken), STS AssumeRoleWithWebIdentity for the basic flow, and STS
/// GetCallerIdentity to verify new credentials (spec.verify).
pub trait Cognito: Send + Sync + 'static {
    /// GetId: a new identity in `pool`.
    fn get_id(
        &self,
        region: &str,
        pool: &str,
    ) -> impl Future<Output = Result<String, CognitoError>> + Send;
    /// GetCredentialsForIdentity for a guest identity.
    fn get_credentials(
        &self,
        region: &str,
        identity_id: &str,
        custom_role_arn: Option<&str>,
    ) -> impl Future<Output = Result<Credentials, CognitoError>> + Send;
    /// STS GetCallerIdentity signed with `creds`: the ARN they act as.
    fn caller_identity(
        &self,
        region: &str,
        creds: &Credentials,
    ) -> impl Future<Output = Result<String, CognitoError>> + Send;
    /// GetOpenIdToken for a guest identity (the basic flow's second call).
    fn get_open_id_token(
        &self,
        region: &str,
        identity_id: &str,
    ) -> impl Future<Output = Result<OpenIdToken, CognitoError>> + Send;
    /// STS AssumeRoleWithWebIdentity (unsigned) with an OpenID token from the pool.
    fn assume_role_with_web_identity(
        &self,
        region: &str,
        session: &RoleSession,
        token: &OpenIdToken,
    ) -> impl Future<Output = Result<Assumed, CognitoError>> + Send;
    /// No resource uses `region` any more: drop what is kept for it (SDK clients, quota
    /// buckets). A later call for it makes them again.
    fn forget_region(&self, _region: &str) {}
}

/// The AWS operations the controller calls: one vocabulary for the client (which
/// classifies each one's errors), the pacer (each has its quota) and the metrics (the
/// `operation` label is [`Operation::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    GetId,
    GetCredentialsForIdentity,
    GetOpenIdToken,
    AssumeRoleWithWebIdentity,
    GetCallerIdentity,
}

impl Operation {
    pub const ALL: [Self; 5] = [
        Self::GetId,
        Self::GetCredentialsForIdentity,
        Self::GetOpenIdToken,
        Self::AssumeRoleWithWebIdentity,
        Self::GetCallerIdentity,
    ];

    /// AWS's name for it (Cognito Identity's or STS's action).
    pub const fn name(self) -> &'static str {
        match self {
            Self::GetId => "GetId",
            Self::GetCredentialsForIdentity => "GetCredentialsForIdentity",
            Self::GetOpenIdToken => "GetOpenIdToken",
            Self::AssumeRoleWithWebIdentity => "AssumeRoleWithWebIdentity",
            Self::GetCallerIdentity => "GetCallerIdentity",
        }
    }
}

/// What runs around every call of a wrapped [`Cognito`] ([`Wrapped`]): pacing, metering.
pub trait Around: Send + Sync + 'static {
    /// Runs `call`, operation `op` in `region`, with what this layer does before and after.
    fn around<T: Send>(
        &self,
        op: Operation,
        region: &str,
        call: impl Future<Output = Result<T, CognitoError>> + Send,
    ) -> impl Future<Output = Result<T, CognitoError>> + Send;
    /// No resource uses `region` any more: drop what is kept for it.
    fn forget_region(&self, _region: &str) {}
}

/// `inner` with `layer` around each of its calls: one call path, whatever the layer.
pub struct Wrapped<L, C> {
    layer: L,
    inner: C,
}

impl<L, C> Wrapped<L, C> {
    pub fn new(layer: L, inner: C) -> Self {
        Self { layer, inner }
    }
}

impl<L: Around, C: Cognito> Cognito for Wrapped<L, C> {
    async fn get_id(&self, region: &str, pool: &str) -> Result<String, CognitoError> {
        let call = self.inner.get_id(region, pool);
        self.layer.around(Operation::GetId, region, call).await
    }

    async fn get_credentials(
        &self,
        region: &str,
        identity_id: &str,
        custom_role_arn: Option<&str>,
    ) -> Result<Credentials, CognitoError> {
        let call = self
            .inner
            .get_credentials(region, identity_id, custom_role_arn);
        let op = Operation::GetCredentialsForIdentity;
        self.layer.around(op, region, call).await
    }

    async fn caller_identity(
        &self,
        region: &str,
        creds: &Credentials,
    ) -> Result<String, CognitoError> {
        let call = self.inner.caller_identity(region, creds);
        let op = Operation::GetCallerIdentity;
        self.layer.around(op, region, call).await
    }

    async fn get_open_id_token(
        &self,
        region: &str,
        identity_id: &str,
    ) -> Result<OpenIdToken, CognitoError> {
        let call = self.inner.get_open_id_token(region, identity_id);
        let op = Operation::GetOpenIdToken;
        self.layer.around(op, region, call).await
    }

    async fn assume_role_with_web_identity(
        &self,
        region: &str,
        session: &RoleSession,
        token: &OpenIdToken,
    ) -> Result<Assumed, CognitoError> {
        let call = self
            .inner
            .assume_role_with_web_identity(region, session, token);
        let op = Operation::AssumeRoleWithWebIdentity;
        self.layer.around(op, region, call).await
    }

    fn forget_region(&self, region: &str) {
        self.layer.forget_region(region);
        self.inner.forget_region(region);
    }
}

/// Timeouts for Cognito calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            operation: Duration::from_secs(10),
        }
    }
}

/// Loads the SDK's shared configuration without credentials (the calls are unsigned).
///
/// The endpoint is the SDK's standard one (`AWS_ENDPOINT_URL_COGNITO_IDENTITY` and friends)
/// unless `endpoint` overrides it (tests point an in-process controller at the proxy).
pub async fn load_sdk_config(timeouts: Timeouts, endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader
        // Each pool's region is set per client; a fixed base region keeps the SDK from
        // probing the environment for one (no instance-metadata calls).
        .region(Region::new("us-east-1"))
        .no_credentials()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(timeouts.connect)
                .operation_attempt_timeout(timeouts.operation)
                .operation_timeout(timeouts.operation)
                .build(),
        )
        .load()
        .await
}

/// Cognito through aws-sdk-cognitoidentity, and STS through aws-sdk-sts (unsigned, for
/// AssumeRoleWithWebIdentity), one client per region.
#[derive(Clone)]
pub struct SdkCognito {
    base: SdkConfig,
    clients: Arc<Mutex<Bounded<String, Client>>>,
    sts: Arc<Mutex<Bounded<String, aws_sdk_sts::Client>>>,
}

/// Regions with a client kept (the least recently used goes): a cluster's resources name
/// a handful, but any string of a region's shape is accepted, and each would otherwise
/// add a client kept for ever.
pub const REGIONS_KEPT: usize = 32;

impl SdkCognito {
    pub fn new(base: SdkConfig) -> Self {
        Self {
            base,
            clients: Arc::new(Mutex::new(Bounded::new(REGIONS_KEPT))),
            sts: Arc::new(Mutex::new(Bounded::new(REGIONS_KEPT))),
        }
    }

    /// STS for the region, with no credentials provider (as the base configuration):
    /// AssumeRoleWithWebIdentity is sent unsigned.
    fn sts(&self, region: &str) -> aws_sdk_sts::Client {
        let mut clients = crate::lock(&self.sts);
        clients
            .get_or_insert_with(&region.to_string(), || {
                let conf = aws_sdk_sts::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()))
                    .build();
                aws_sdk_sts::Client::from_conf(conf)
            })
            .clone()
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = crate::lock(&self.clients);
        clients
            .get_or_insert_with(&region.to_string(), || {
                let conf = aws_sdk_cognitoidentity::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()))
                    .build();
                Client::from_conf(conf)
            })
            .clone()
    }
}

/// What a call that got no answer from the service comes to, in fixed words (the
/// transport's, never the request's): one wording for Cognito and STS alike.
fn no_answer<E>(err: &SdkError<E, aws_sdk_cognitoidentity::config::http::HttpResponse>) -> String {
    match err {
        SdkError::TimeoutError(_) => "timed out".to_string(),
        SdkError::DispatchFailure(d) if d.is_timeout() => "timed out".to_string(),
        SdkError::DispatchFailure(d) if d.is_io() => "connection failed or was reset".to_string(),
        SdkError::DispatchFailure(_) => "request could not be sent".to_string(),
        SdkError::ResponseError(r) => {
            format!("unreadable response (HTTP {})", r.raw().status().as_u16())
        }
        _ => "request could not be built".to_string(),
    }
}

/// A service's refusal as the SDK read it.
struct Refusal {
    code: Option<String>,
    status: u16,
    message: String,
}

impl Refusal {
    /// The words for a refusal that maps to no reason of its own.
    fn unexplained(&self) -> String {
        match &self.code {
            Some(code) => format!("{code} (HTTP {}): {}", self.status, self.message),
            None => format!("HTTP {}", self.status),
        }
    }
}

/// What a call came to: the service's refusal, or (no answer) the fixed words saying so.
/// One reading for the Cognito, STS verification and AssumeRoleWithWebIdentity classifiers.
fn answer<E>(
    err: &SdkError<E, aws_sdk_cognitoidentity::config::http::HttpResponse>,
) -> Result<Refusal, String>
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(se) => Ok(Refusal {
            code: se.err().code().map(str::to_string),
            status: se.raw().status().as_u16(),
            message: se.err().message().unwrap_or("no message").to_string(),
        }),
        _ => Err(no_answer(err)),
    }
}

/// Maps an SDK error to what the controller does about it.
fn classify<E>(
    err: SdkError<E, aws_sdk_cognitoidentity::config::http::HttpResponse>,
    op: Operation,
) -> CognitoError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let r = match answer(&err) {
        Ok(r) => r,
        Err(no_answer) => return CognitoError::Unavailable(no_answer),
    };
    let msg = r.message.clone();
    match r.code.as_deref() {
        Some("ResourceNotFoundException") if op != Operation::GetId => {
            CognitoError::IdentityNotFound(msg)
        }
        Some("ResourceNotFoundException") => CognitoError::PoolNotFound(msg),
        Some("NotAuthorizedException") if msg.contains(GUEST_ACCESS_OFF) => {
            CognitoError::GuestAccessDisabled(msg)
        }
        Some("InvalidParameterException" | "NotAuthorizedException")
            if op == Operation::GetOpenIdToken
                && msg.to_ascii_lowercase().contains(CLASSIC_FLOW_OFF) =>
        {
            CognitoError::ClassicFlowDisabled(msg)
        }
        Some("NotAuthorizedException") => CognitoError::NotAuthorized(msg),
        Some("InvalidIdentityPoolConfigurationException") => {
            CognitoError::InvalidPoolConfiguration(msg)
        }
        Some("InvalidParameterException") => CognitoError::InvalidParameter(msg),
        Some("TooManyRequestsException" | "LimitExceededException" | "ThrottlingException") => {
            CognitoError::Throttled(msg)
        }
        _ => CognitoError::Unavailable(r.unexplained()),
    }
}

/// STS error codes that are a verdict on the credentials (they will not be accepted
/// by asking again). Anything else (throttling, 5xx, a transport error) is not.
const STS_VERDICTS: [&str; 6] = [
    "InvalidClientTokenId",
    "AccessDenied",
    "ExpiredToken",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidAccessKeyId",
];

/// Maps an STS error: a refusal of the credentials, or no answer (never echoing
/// credentials: STS's messages do not carry them, and the transport's are fixed strings).
fn classify_sts<E>(err: SdkError<E, aws_sdk_sts::config::http::HttpResponse>) -> CognitoError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match answer(&err) {
        Ok(r) if r.code.as_deref().is_some_and(|c| STS_VERDICTS.contains(&c)) => {
            CognitoError::VerificationFailed(r.unexplained())
        }
        Ok(r) => CognitoError::VerificationUnavailable(r.unexplained()),
        Err(no_answer) => CognitoError::VerificationUnavailable(no_answer),
    }
}

/// STS error codes of AssumeRoleWithWebIdentity that say the request is refused as it
/// is; asking again does not help until the role, the pool or the spec changes.
/// AccessDenied: no such role, or its trust policy does not allow this pool (`aud`) or
/// unauthenticated identities (`amr`). ValidationError: a parameter (the duration above
/// the role's MaxSessionDuration, most likely). Anything else (throttling, 5xx, a token
/// STS could not check, a transport error) is no verdict: a fresh token next time.
fn classify_assume<E>(err: SdkError<E, aws_sdk_sts::config::http::HttpResponse>) -> CognitoError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let r = match answer(&err) {
        Ok(r) => r,
        Err(no_answer) => return CognitoError::StsUnavailable(no_answer),
    };
    let msg = r.message.clone();
    match r.code.as_deref() {
        Some("AccessDenied") => CognitoError::RoleAccessDenied(msg),
        Some("ValidationError") if msg.contains("DurationSeconds") => {
            CognitoError::InvalidSessionDuration(msg)
        }
        Some("ValidationError") => CognitoError::StsInvalidParameter(msg),
        Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded") => {
            CognitoError::StsThrottled(msg)
        }
        _ => CognitoError::StsUnavailable(r.unexplained()),
    }
}

/// The SDK's time as a timestamp.
fn timestamp(t: &aws_sdk_cognitoidentity::primitives::DateTime) -> Result<Timestamp, CognitoError> {
    Timestamp::new(t.secs(), t.subsec_nanos() as i32)
        .map_err(|_| CognitoError::Malformed("Expiration out of range".into()))
}

/// Turns AssumeRoleWithWebIdentity's answer into credentials and the assumed role,
/// refusing anything incomplete (never echoing what it got).
pub fn assumed_from(
    out: &aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityOutput,
) -> Result<Assumed, CognitoError> {
    let malformed =
        |what: &str| CognitoError::StsUnavailable(format!("malformed answer: no {what}"));
    let c = out.credentials().ok_or_else(|| malformed("Credentials"))?;
    let nonempty = |v: &str, what: &str| {
        (!v.is_empty())
            .then(|| v.to_string())
            .ok_or_else(|| malformed(what))
    };
    let assumed_role_arn = out
        .assumed_role_user()
        .map(|u| u.arn())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| malformed("AssumedRoleUser.Arn"))?
        .to_string();
    Ok(Assumed {
        credentials: Credentials {
            access_key_id: nonempty(c.access_key_id(), "AccessKeyId")?,
            secret_access_key: nonempty(c.secret_access_key(), "SecretAccessKey")?,
            session_token: nonempty(c.session_token(), "SessionToken")?,
            expiration: timestamp(c.expiration())?,
        },
        assumed_role_arn,
    })
}

/// Turns GetCredentialsForIdentity's answer into credentials, refusing anything incomplete.
pub fn credentials_from(
    out: Option<aws_sdk_cognitoidentity::types::Credentials>,
) -> Result<Credentials, CognitoError> {
    let c = out.ok_or_else(|| CognitoError::Malformed("no Credentials".into()))?;
    let nonempty = |v: Option<String>, what: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| CognitoError::Malformed(format!("no {what}")))
    };
    let exp = c
        .expiration
        .ok_or_else(|| CognitoError::Malformed("no Expiration".into()))?;
    let expiration = timestamp(&exp)?;
    Ok(Credentials {
        access_key_id: nonempty(c.access_key_id, "AccessKeyId")?,
        secret_access_key: nonempty(c.secret_key, "SecretKey")?,
        session_token: nonempty(c.session_token, "SessionToken")?,
        expiration,
    })
}

impl Cognito for SdkCognito {
    fn forget_region(&self, region: &str) {
        crate::lock(&self.clients).retain(|r| r != region);
        crate::lock(&self.sts).retain(|r| r != region);
    }

    async fn get_id(&self, region: &str, pool: &str) -> Result<String, CognitoError> {
        let out = self
            .client(region)
            .get_id()
            .identity_pool_id(pool)
            .send()
            .await
            .map_err(|e| classify(e, Operation::GetId))?;
        out.identity_id
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CognitoError::Malformed("no IdentityId".into()))
    }

    async fn get_credentials(
        &self,
        region: &str,
        identity_id: &str,
        custom_role_arn: Option<&str>,
    ) -> Result<Credentials, CognitoError> {
        let out = self
            .client(region)
            .get_credentials_for_identity()
            .identity_id(identity_id)
            .set_custom_role_arn(custom_role_arn.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify(e, Operation::GetCredentialsForIdentity))?;
        credentials_from(out.credentials)
    }

    async fn caller_identity(
        &self,
        region: &str,
        creds: &Credentials,
    ) -> Result<String, CognitoError> {
        let expiry = std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(creds.expiration.as_second()).unwrap_or(0));
        let signed = aws_sdk_sts::config::Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
            Some(creds.session_token.clone()),
            Some(expiry),
            "cognito-unauth-controller",
        );
        let conf = aws_sdk_sts::config::Builder::from(&self.base)
            .region(Region::new(region.to_string()))
            .credentials_provider(signed)
            .build();
        let out = aws_sdk_sts::Client::from_conf(conf)
            .get_caller_identity()
            .send()
            .await
            .map_err(classify_sts)?;
        out.arn
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CognitoError::VerificationFailed("no Arn in the answer".into()))
    }

    async fn get_open_id_token(
        &self,
        region: &str,
        identity_id: &str,
    ) -> Result<OpenIdToken, CognitoError> {
        let out = self
            .client(region)
            .get_open_id_token()
            .identity_id(identity_id)
            .send()
            .await
            .map_err(|e| classify(e, Operation::GetOpenIdToken))?;
        out.token
            .filter(|s| !s.is_empty())
            .map(OpenIdToken::new)
            .ok_or_else(|| CognitoError::Malformed("no Token".into()))
    }

    async fn assume_role_with_web_identity(
        &self,
        region: &str,
        session: &RoleSession,
        token: &OpenIdToken,
    ) -> Result<Assumed, CognitoError> {
        let duration = i32::try_from(session.duration_seconds).unwrap_or(i32::MAX);
        let out = self
            .sts(region)
            .assume_role_with_web_identity()
            .role_arn(&session.role_arn)
            .role_session_name(&session.session_name)
            .duration_seconds(duration)
            .web_identity_token(token.expose())
            .send()
            .await
            .map_err(classify_assume)?;
        assumed_from(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cognitoidentity::types::Credentials as Sdk;
    use aws_smithy_types::DateTime;

    fn with(ak: Option<&str>, sk: Option<&str>, st: Option<&str>, exp: bool) -> Sdk {
        Sdk::builder()
            .set_access_key_id(ak.map(String::from))
            .set_secret_key(sk.map(String::from))
            .set_session_token(st.map(String::from))
            .set_expiration(exp.then(|| DateTime::from_secs_and_nanos(1_800_000_000, 500)))
            .build()
    }

    fn full() -> Sdk {
        with(Some("AK"), Some("SK"), Some("ST"), true)
    }

    #[test]
    fn complete_answers_become_credentials() {
        let c = credentials_from(Some(full())).unwrap();
        assert_eq!(c.access_key_id, "AK");
        assert_eq!(c.expiration, Timestamp::new(1_800_000_000, 500).unwrap());
    }

    #[test]
    fn incomplete_answers_are_refused_without_echoing_secrets() {
        let cases = [
            (None, "no Credentials"),
            (
                Some(with(None, Some("SK"), Some("ST"), true)),
                "no AccessKeyId",
            ),
            (
                Some(with(Some("AK"), Some(""), Some("ST"), true)),
                "no SecretKey",
            ),
            (
                Some(with(Some("AK"), Some("SK"), None, true)),
                "no SessionToken",
            ),
            (
                Some(with(Some("AK"), Some("SK"), Some("ST"), false)),
                "no Expiration",
            ),
        ];
        for (input, want) in cases {
            let err = credentials_from(input).unwrap_err();
            assert_eq!(err, CognitoError::Malformed(want.into()));
            assert!(!err.to_string().contains("SK") && !err.to_string().contains("ST"));
        }
    }

    /// Each error's reason and class, written out (not derived from the table).
    #[test]
    fn every_error_has_its_reason_and_class() {
        use crate::crd::conditions::reason::{Class, class};
        let e = String::new;
        let cases = [
            (
                CognitoError::PoolNotFound(e()),
                "IdentityPoolNotFound",
                Class::Terminal,
            ),
            (
                CognitoError::IdentityNotFound(e()),
                "IdentityNotFound",
                Class::Transient,
            ),
            (
                CognitoError::GuestAccessDisabled(e()),
                "GuestAccessDisabled",
                Class::Terminal,
            ),
            (
                CognitoError::NotAuthorized(e()),
                "NotAuthorized",
                Class::Terminal,
            ),
            (
                CognitoError::InvalidPoolConfiguration(e()),
                "InvalidPoolConfiguration",
                Class::Terminal,
            ),
            (
                CognitoError::InvalidParameter(e()),
                "InvalidParameter",
                Class::Terminal,
            ),
            (CognitoError::Throttled(e()), "Throttled", Class::Transient),
            (
                CognitoError::Unavailable(e()),
                "CognitoUnavailable",
                Class::Transient,
            ),
            (
                CognitoError::Malformed(e()),
                "CognitoUnavailable",
                Class::Transient,
            ),
            (
                CognitoError::VerificationFailed(e()),
                "VerificationFailed",
                Class::Transient,
            ),
            (
                CognitoError::VerificationUnavailable(e()),
                "VerificationUnavailable",
                Class::Transient,
            ),
            (
                CognitoError::ClassicFlowDisabled(e()),
                "ClassicFlowDisabled",
                Class::Terminal,
            ),
            (
                CognitoError::RoleAccessDenied(e()),
                "RoleAccessDenied",
                Class::Terminal,
            ),
            (
                CognitoError::InvalidSessionDuration(e()),
                "InvalidSessionDuration",
                Class::Terminal,
            ),
            (
                CognitoError::StsThrottled(e()),
                "Throttled",
                Class::Transient,
            ),
            (
                CognitoError::StsUnavailable(e()),
                "CognitoUnavailable",
                Class::Transient,
            ),
        ];
        for (err, want, want_class) in cases {
            assert_eq!(err.reason(), want, "{err:?}");
            assert_eq!(class(err.reason()), want_class, "{err:?}");
        }
    }

    fn raw(status: u16) -> aws_sdk_sts::config::http::HttpResponse {
        aws_sdk_sts::config::http::HttpResponse::new(
            status.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::empty(),
        )
    }

    fn meta(code: &str, message: &str) -> aws_sdk_sts::error::ErrorMetadata {
        aws_sdk_sts::error::ErrorMetadata::builder()
            .code(code)
            .message(message)
            .build()
    }

    /// GetOpenIdToken's errors, with Cognito's own words (the classic-flow refusal as
    /// the aws CLI reports it, aws/aws-cli#7652).
    #[test]
    fn open_id_token_errors_say_what_the_pool_refused() {
        use aws_sdk_cognitoidentity::operation::get_open_id_token::GetOpenIdTokenError;
        let cases = [
            (
                "InvalidParameterException",
                "Basic (classic) flow is not enabled, please use enhanced flow.",
                "ClassicFlowDisabled",
            ),
            (
                "InvalidParameterException",
                "Invalid parameter.",
                "InvalidParameter",
            ),
            (
                "ResourceNotFoundException",
                "Identity 'x' not found.",
                "IdentityNotFound",
            ),
            (
                "NotAuthorizedException",
                "Unauthenticated access is not supported for this identity pool.",
                "GuestAccessDisabled",
            ),
            ("TooManyRequestsException", "Rate exceeded", "Throttled"),
            (
                "InternalErrorException",
                "An internal error occurred.",
                "CognitoUnavailable",
            ),
        ];
        for (code, message, want) in cases {
            let err = SdkError::service_error(
                GetOpenIdTokenError::generic(meta(code, message)),
                raw(400),
            );
            assert_eq!(
                classify(err, Operation::GetOpenIdToken).reason(),
                want,
                "{code}"
            );
        }
    }

    /// AssumeRoleWithWebIdentity's errors, in STS's words: the refusals are verdicts
    /// (terminal), everything else is no answer (transient).
    #[test]
    fn assume_role_errors_are_verdicts_or_no_answer() {
        use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError as E;
        let cases = [
            (
                "AccessDenied",
                "Not authorized to perform sts:AssumeRoleWithWebIdentity",
                403,
                "RoleAccessDenied",
            ),
            (
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
                400,
                "InvalidSessionDuration",
            ),
            (
                "ValidationError",
                "1 validation error detected: Value 'a b' at 'roleSessionName' failed to satisfy constraint",
                400,
                "InvalidParameter",
            ),
            ("Throttling", "Rate exceeded", 400, "Throttled"),
            (
                "InvalidIdentityToken",
                "Couldn't retrieve verification key from your identity provider",
                400,
                "CognitoUnavailable",
            ),
            (
                "ExpiredTokenException",
                "Token expired",
                400,
                "CognitoUnavailable",
            ),
            (
                "IDPCommunicationError",
                "Couldn't reach the IdP",
                400,
                "CognitoUnavailable",
            ),
            (
                "InternalFailure",
                "An internal error occurred.",
                500,
                "CognitoUnavailable",
            ),
        ];
        for (code, message, status, want) in cases {
            let err = SdkError::service_error(E::generic(meta(code, message)), raw(status));
            let got = classify_assume(err);
            assert_eq!(got.reason(), want, "{code}: {got}");
            assert!(got.to_string().contains("STS"), "{got}");
        }
    }

    #[test]
    fn an_open_id_token_is_never_shown() {
        let t = OpenIdToken::new("eyJraWQiOiJzZWNyZXQ".into());
        assert_eq!(format!("{t:?}"), "OpenIdToken(<redacted>)");
        assert_eq!(t.expose(), "eyJraWQiOiJzZWNyZXQ");
    }

    #[test]
    fn incomplete_assume_role_answers_are_refused() {
        use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityOutput as Out;
        use aws_sdk_sts::types::{AssumedRoleUser, Credentials as StsCredentials};
        let creds = |sk: &str| {
            StsCredentials::builder()
                .access_key_id("AK")
                .secret_access_key(sk)
                .session_token("ST")
                .expiration(DateTime::from_secs(1_800_000_000))
                .build()
                .unwrap()
        };
        let user = AssumedRoleUser::builder()
            .assumed_role_id("AROA:s")
            .arn("arn:aws:sts::123456789012:assumed-role/r/s")
            .build()
            .unwrap();
        let good = Out::builder()
            .credentials(creds("SK"))
            .assumed_role_user(user.clone())
            .build();
        let a = assumed_from(&good).unwrap();
        assert_eq!(
            a.assumed_role_arn,
            "arn:aws:sts::123456789012:assumed-role/r/s"
        );
        assert_eq!(
            a.credentials.expiration,
            Timestamp::from_second(1_800_000_000).unwrap()
        );
        let no_user = Out::builder().credentials(creds("SK")).build();
        let empty_secret = Out::builder()
            .credentials(creds(""))
            .assumed_role_user(user)
            .build();
        for (out, want) in [
            (no_user, "AssumedRoleUser.Arn"),
            (empty_secret, "SecretAccessKey"),
        ] {
            let err = assumed_from(&out).unwrap_err();
            assert!(err.to_string().ends_with(&format!("no {want}")), "{err}");
            assert_eq!(err.reason(), "CognitoUnavailable");
        }
    }
}
