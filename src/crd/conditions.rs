//! The conditions' vocabulary: their types, the reasons they carry and what each reason
//! means for the next attempt. Part of the API (users match on them, `kubectl wait`
//! names them); the reconcile's status builder, the metrics, the Cognito errors and the
//! webhook's refusals all use these. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::CognitoUnauthCredentialStatus;

pub const READY: &str = "Ready";
/// With spec.verify: whether STS accepted the last credentials fetched.
pub const VERIFIED: &str = "Verified";
/// With spec.rolloutRestartTargets: whether the targets run with the Secret's credentials.
pub const ROLLOUT_RESTART: &str = "RolloutRestart";

/// The reasons the conditions can carry, and what each means for the next attempt.
pub mod reason {
    pub const CREDENTIALS_ISSUED: &str = "CredentialsIssued";
    pub const SUSPENDED: &str = "Suspended";
    pub const IDENTITY_POOL_NOT_FOUND: &str = "IdentityPoolNotFound";
    /// Cognito no longer knows the identity, and a new one could not be used either.
    pub const IDENTITY_NOT_FOUND: &str = "IdentityNotFound";
    pub const GUEST_ACCESS_DISABLED: &str = "GuestAccessDisabled";
    /// Cognito refused the identity for another reason than guest access being off
    /// (e.g. the identity is disabled, or linked to a login).
    pub const NOT_AUTHORIZED: &str = "NotAuthorized";
    pub const INVALID_POOL_CONFIGURATION: &str = "InvalidPoolConfiguration";
    pub const INVALID_PARAMETER: &str = "InvalidParameter";
    pub const THROTTLED: &str = "Throttled";
    pub const COGNITO_UNAVAILABLE: &str = "CognitoUnavailable";
    /// Flow Basic: GetOpenIdToken refused, the pool does not allow the basic (classic)
    /// flow (AllowClassicFlow off).
    pub const CLASSIC_FLOW_DISABLED: &str = "ClassicFlowDisabled";
    /// Flow Basic: STS AccessDenied, the role does not exist or does not trust this
    /// pool's unauthenticated identities (trust policy `aud`, `amr`).
    pub const ROLE_ACCESS_DENIED: &str = "RoleAccessDenied";
    /// Flow Basic: STS refused DurationSeconds, longer than the role's
    /// MaxSessionDuration.
    pub const INVALID_SESSION_DURATION: &str = "InvalidSessionDuration";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The Secret could not be written: it is immutable, or the API server refused the
    /// write (an admission webhook or policy, missing RBAC).
    pub const SECRET_WRITE_FAILED: &str = "SecretWriteFailed";
    pub const EXPIRED: &str = "Expired";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PENDING: &str = "Pending";
    /// `Ready` False and `Verified` False: STS refused the new credentials.
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// `Verified` Unknown: STS could not be asked (timeout, 5xx, throttling).
    pub const VERIFICATION_UNAVAILABLE: &str = "VerificationUnavailable";
    /// `Verified` True.
    pub const CALLER_IDENTITY_VERIFIED: &str = "CallerIdentityVerified";
    /// `RolloutRestart` True: the targets were rolled for the credentials in the Secret.
    pub const TARGETS_RESTARTED: &str = "RolloutRestartTriggered";
    /// `RolloutRestart` True: the targets started with these credentials (first issue,
    /// or targets just added); they roll at the next rotation.
    pub const NO_ROTATION_YET: &str = "NoRotationSinceTargetsSet";
    /// `RolloutRestart` False: a target does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// `RolloutRestart` False: the controller may not patch a target (RBAC).
    pub const RESTART_FORBIDDEN: &str = "Forbidden";
    /// `RolloutRestart` False: the patch failed otherwise.
    pub const RESTART_FAILED: &str = "PatchFailed";

    /// What a `Ready` reason means for the next attempt.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Class {
        /// Good, or a state the user chose (suspend): nothing to retry.
        Settled,
        /// A failed attempt that may succeed by itself: exponential backoff from 5 s.
        Transient,
        /// A failed attempt that needs a change in AWS or in the spec: about every 5 min.
        Terminal,
        /// Something in the cluster blocks the attempt before any call is made (a Secret
        /// we do not own, an immutable Secret): not an attempt, so not counted as a
        /// failure; a Secret not ours is rechecked every minute, ours (watched) when it changes.
        Blocked,
        /// Derived from the kept credentials (Expired), not the cause of a failure.
        Derived,
    }

    /// The one table of `Ready` reasons.
    pub const READY_REASONS: [(&str, Class); 19] = [
        (CREDENTIALS_ISSUED, Class::Settled),
        (SUSPENDED, Class::Settled),
        (PENDING, Class::Settled),
        (IDENTITY_POOL_NOT_FOUND, Class::Terminal),
        (GUEST_ACCESS_DISABLED, Class::Terminal),
        (NOT_AUTHORIZED, Class::Terminal),
        (INVALID_POOL_CONFIGURATION, Class::Terminal),
        (INVALID_PARAMETER, Class::Terminal),
        (INVALID_SPEC, Class::Terminal),
        (CLASSIC_FLOW_DISABLED, Class::Terminal),
        (ROLE_ACCESS_DENIED, Class::Terminal),
        (INVALID_SESSION_DURATION, Class::Terminal),
        (IDENTITY_NOT_FOUND, Class::Transient),
        (THROTTLED, Class::Transient),
        (COGNITO_UNAVAILABLE, Class::Transient),
        (VERIFICATION_FAILED, Class::Transient),
        (SECRET_WRITE_FAILED, Class::Transient),
        (SECRET_CONFLICT, Class::Blocked),
        (EXPIRED, Class::Derived),
    ];

    /// The class of `reason`; an unknown reason (written by an older or newer version)
    /// is treated as transient.
    pub fn class(reason: &str) -> Class {
        READY_REASONS
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(Class::Transient, |(_, c)| *c)
    }

    /// Reasons after which the next attempt waits the slow, terminal schedule.
    pub fn is_terminal(reason: &str) -> bool {
        class(reason) == Class::Terminal
    }
}

/// The previous `Ready` condition, if any.
pub fn ready_of(status: &CognitoUnauthCredentialStatus) -> Option<&Condition> {
    condition_of(status, READY)
}

/// The condition of that type, if any.
pub fn condition_of<'a>(
    status: &'a CognitoUnauthCredentialStatus,
    type_: &str,
) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}
