//! Conditions and status, the cert-manager way: one `Ready` condition with a reason,
//! observedGeneration, and a lastTransitionTime that moves only when the condition's
//! status changes. Pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::CognitoUnauthCredentialStatus;

pub const READY: &str = "Ready";
/// With spec.verify: whether STS accepted the last credentials fetched.
pub const VERIFIED: &str = "Verified";
/// With spec.rolloutRestartTargets: whether the targets run with the Secret's credentials.
pub const ROLLOUT_RESTART: &str = "RolloutRestart";

/// The reasons the `Ready` condition can carry.
pub mod reason {
    pub const CREDENTIALS_ISSUED: &str = "CredentialsIssued";
    pub const SUSPENDED: &str = "Suspended";
    pub const IDENTITY_POOL_NOT_FOUND: &str = "IdentityPoolNotFound";
    pub const GUEST_ACCESS_DISABLED: &str = "GuestAccessDisabled";
    pub const INVALID_POOL_CONFIGURATION: &str = "InvalidPoolConfiguration";
    pub const INVALID_PARAMETER: &str = "InvalidParameter";
    pub const THROTTLED: &str = "Throttled";
    pub const COGNITO_UNAVAILABLE: &str = "CognitoUnavailable";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const EXPIRED: &str = "Expired";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PENDING: &str = "Pending";
    /// `Ready` False and `Verified` False: STS refused the new credentials.
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
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

    /// Reasons after which the next attempt waits the slow, terminal schedule.
    pub fn is_terminal(reason: &str) -> bool {
        matches!(
            reason,
            IDENTITY_POOL_NOT_FOUND
                | GUEST_ACCESS_DISABLED
                | INVALID_POOL_CONFIGURATION
                | INVALID_PARAMETER
                | INVALID_SPEC
        )
    }
}

/// A timestamp as Kubernetes' `Time`, whole seconds (what the API server keeps anyway,
/// so a value read back compares equal to the one computed).
pub fn time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// The `Ready` condition as it should be now.
pub fn ready(
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
    previous: &[Condition],
) -> Condition {
    condition(READY, status, reason, message, generation, now, previous)
}

/// A condition of `type_` as it should be now; its lastTransitionTime moves only when
/// its status changes.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
    previous: &[Condition],
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The previous `Ready` condition, if any.
pub fn ready_of(status: &CognitoUnauthCredentialStatus) -> Option<&Condition> {
    condition_of(status, READY)
}

/// Replaces (or adds) the condition of the same type.
pub fn set_condition(conditions: &mut Vec<Condition>, c: Condition) {
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(slot) => *slot = c,
        None => conditions.push(c),
    }
}

/// Removes the condition of that type.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of that type, if any.
pub fn condition_of<'a>(
    status: &'a CognitoUnauthCredentialStatus,
    type_: &str,
) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// RFC 3339, whole seconds, for messages.
pub fn show(t: Timestamp) -> String {
    time(t).0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = ready(
            true,
            reason::CREDENTIALS_ISSUED,
            "a".into(),
            Some(1),
            at(100),
            &[],
        );
        assert_eq!(first.last_transition_time, time(at(100)));
        // Same status, new reason and message: time kept.
        let second = ready(
            false,
            reason::THROTTLED,
            "b".into(),
            Some(1),
            at(200),
            std::slice::from_ref(&first),
        );
        assert_eq!(second.last_transition_time, time(at(200)));
        let third = ready(
            false,
            reason::EXPIRED,
            "c".into(),
            Some(2),
            at(300),
            std::slice::from_ref(&second),
        );
        assert_eq!(third.last_transition_time, time(at(200)));
        assert_eq!(third.observed_generation, Some(2));
        assert_eq!(
            (third.status.as_str(), third.reason.as_str()),
            ("False", "Expired")
        );
    }

    #[test]
    fn set_condition_replaces_by_type() {
        let mut v = vec![];
        set_condition(
            &mut v,
            ready(
                true,
                reason::CREDENTIALS_ISSUED,
                "x".into(),
                None,
                at(1),
                &[],
            ),
        );
        set_condition(
            &mut v,
            ready(false, reason::THROTTLED, "y".into(), None, at(2), &[]),
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].reason, "Throttled");
        let verified = condition(
            VERIFIED,
            true,
            reason::CALLER_IDENTITY_VERIFIED,
            "z".into(),
            None,
            at(3),
            &v,
        );
        assert_eq!(verified.last_transition_time, time(at(3)));
        set_condition(&mut v, verified);
        assert_eq!(v.len(), 2);
        remove_condition(&mut v, VERIFIED);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].type_, READY);
    }

    #[test]
    fn time_drops_subseconds() {
        let t = Timestamp::new(1_800_000_000, 999_000_000).unwrap();
        assert_eq!(time(t).0, at(1_800_000_000));
        assert_eq!(show(t), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn terminal_reasons() {
        assert!(reason::is_terminal(reason::GUEST_ACCESS_DISABLED));
        assert!(!reason::is_terminal(reason::THROTTLED));
        assert!(!reason::is_terminal(reason::EXPIRED));
    }
}
