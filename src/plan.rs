//! The decision: given the resource, its status, the Secret and the clock, what to do
//! now and when to look again. Pure, so every branch is unit tested without a cluster.

use std::time::Duration;

use jiff::Timestamp;

use crate::crd::{CognitoUnauthCredentialSpec, CognitoUnauthCredentialStatus};
use crate::schedule;
use crate::secret::{Credentials, Observed, Provenance};
use crate::status::reason;

/// What the Secret of that name is.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretState {
    Absent,
    /// Exists without our controller owner reference: never touched.
    Foreign,
    Ours(Box<Observed>),
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub now: Timestamp,
    pub spec: &'a CognitoUnauthCredentialSpec,
    pub generation: Option<i64>,
    pub status: &'a CognitoUnauthCredentialStatus,
    pub secret: &'a SecretState,
    /// The resource's force-rotate annotation.
    pub force_token: Option<&'a str>,
    pub renew_before: Duration,
    /// Fixes the jitter for this resource (its uid).
    pub seed: &'a str,
    /// When this controller started reconciling (process start or leadership).
    pub started: Timestamp,
}

/// Overdue renewals found in the first minute after a start are spread over up to this
/// long (never past half the credentials' remaining life), so a controller coming back
/// after downtime does not rotate everything in one burst.
pub const STARTUP_SPREAD: Duration = Duration::from_secs(60);

/// When an overdue renewal found at start-up is due: `started` plus this resource's
/// share of the spread, capped at half the time left before `expiration`.
pub fn startup_slot(started: Timestamp, expiration: Timestamp, seed: &str) -> Timestamp {
    let spread = jiff::SignedDuration::try_from(STARTUP_SPREAD).unwrap_or_default();
    let room = (expiration.duration_since(started) / 2).max(jiff::SignedDuration::ZERO);
    started
        + spread
            .min(room)
            .mul_f64(schedule::unit_fraction(seed, u64::MAX))
}

/// Good credentials the Secret holds for the current spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub credentials: Credentials,
    pub provenance: Provenance,
    pub renewal: Timestamp,
}

impl Kept {
    pub fn expired(&self, now: Timestamp) -> bool {
        self.credentials.expiration <= now
    }
}

/// Why credentials are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No Secret yet.
    Initial,
    /// The Secret was edited or is incomplete.
    Drift,
    /// The Secret's credentials are for another pool, region or role.
    SpecChanged,
    /// The force-rotate annotation has a new value.
    Forced,
    /// The renewal time has come.
    Renewal,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Initial => "initial issue",
            Why::Drift => "the Secret was changed or removed",
            Why::SpecChanged => "the spec changed",
            Why::Forced => "force-rotate annotation",
            Why::Renewal => "renewal time reached",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// A Secret we do not own holds the name.
    Conflict,
    /// No Cognito calls while suspended.
    Suspended,
    /// The last attempt failed and the next is not due before `until`.
    Backoff { until: Timestamp },
    /// Fetch credentials; reuse `identity` when there is one for this pool.
    Rotate { why: Why, identity: Option<String> },
    /// Nothing to do before `renewal`.
    Wait { renewal: Timestamp },
}

fn matches_spec(p: &Provenance, spec: &CognitoUnauthCredentialSpec) -> bool {
    p.identity_pool_id == spec.identity_pool_id
        && p.region == spec.region()
        && p.custom_role_arn == spec.custom_role_arn
}

/// The Secret's credentials when they are intact and from the current spec.
pub fn kept(i: &Inputs<'_>) -> Option<Kept> {
    let SecretState::Ours(o) = i.secret else {
        return None;
    };
    let (Some(c), Some(p)) = (&o.credentials, &o.provenance) else {
        return None;
    };
    if !o.intact || !matches_spec(p, i.spec) {
        return None;
    }
    Some(Kept {
        credentials: c.clone(),
        provenance: p.clone(),
        renewal: schedule::renewal_time(p.issued_at, c.expiration, i.renew_before, i.seed),
    })
}

/// The identity to reuse for this pool, from status or else from the Secret.
pub fn reusable_identity(i: &Inputs<'_>) -> Option<String> {
    let pool = &i.spec.identity_pool_id;
    if let (Some(id), Some(p)) = (&i.status.identity_id, &i.status.identity_pool_id)
        && p == pool
    {
        return Some(id.clone());
    }
    match i.secret {
        SecretState::Ours(o) => o
            .provenance
            .as_ref()
            .filter(|p| &p.identity_pool_id == pool)
            .map(|p| p.identity_id.clone()),
        _ => None,
    }
}

/// When the next attempt is due after `failed_attempts` failures, the last at `last`.
pub fn retry_due(status: &CognitoUnauthCredentialStatus, seed: &str) -> Option<Timestamp> {
    let failed = u32::try_from(status.failed_attempts.unwrap_or(0)).unwrap_or(0);
    if failed == 0 {
        return None;
    }
    let last = status.last_failure_time.as_ref()?.0;
    let terminal = status
        .last_failure_reason
        .as_deref()
        .is_some_and(reason::is_terminal);
    let delay = if terminal {
        schedule::terminal_retry(failed, seed)
    } else {
        schedule::backoff(failed, seed)
    };
    Some(last + delay)
}

pub fn decide(i: &Inputs<'_>) -> Plan {
    if matches!(i.secret, SecretState::Foreign) {
        return Plan::Conflict;
    }
    if i.spec.suspend == Some(true) {
        return Plan::Suspended;
    }
    let spec_changed_since_failure = i.status.observed_generation != i.generation;
    if let Some(until) = retry_due(i.status, i.seed)
        && i.now < until
        && !spec_changed_since_failure
    {
        return Plan::Backoff { until };
    }
    let identity = reusable_identity(i);
    let Some(k) = kept(i) else {
        let why = match i.secret {
            SecretState::Ours(o) if o.intact => Why::SpecChanged,
            SecretState::Ours(_) => Why::Drift,
            _ => Why::Initial,
        };
        return Plan::Rotate { why, identity };
    };
    if let Some(token) = i.force_token
        && k.provenance.force_token.as_deref() != Some(token)
    {
        return Plan::Rotate {
            why: Why::Forced,
            identity,
        };
    }
    if i.now >= k.renewal {
        // Overdue when we started (e.g. after downtime): take this resource's slot.
        if k.renewal < i.started {
            let slot = startup_slot(i.started, k.credentials.expiration, i.seed);
            if i.now < slot {
                return Plan::Wait { renewal: slot };
            }
        }
        return Plan::Rotate {
            why: Why::Renewal,
            identity,
        };
    }
    Plan::Wait { renewal: k.renewal }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::time;
    use jiff::SignedDuration;

    const POOL: &str = "us-east-1:00000000-0000-0000-0000-000000000001";
    const ID: &str = "us-east-1:11111111-0000-0000-0000-000000000001";

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn spec() -> CognitoUnauthCredentialSpec {
        CognitoUnauthCredentialSpec {
            identity_pool_id: POOL.into(),
            ..Default::default()
        }
    }

    fn observed(issued: i64, lifetime: i64, force: Option<&str>) -> SecretState {
        SecretState::Ours(Box::new(Observed {
            owned: true,
            intact: true,
            current_layout: true,
            credentials: Some(Credentials {
                access_key_id: "a".into(),
                secret_access_key: "b".into(),
                session_token: "c".into(),
                expiration: at(issued + lifetime),
            }),
            provenance: Some(Provenance {
                identity_pool_id: POOL.into(),
                identity_id: ID.into(),
                region: "us-east-1".into(),
                custom_role_arn: None,
                issued_at: at(issued),
                force_token: force.map(String::from),
            }),
        }))
    }

    fn inputs<'a>(
        now: i64,
        spec: &'a CognitoUnauthCredentialSpec,
        status: &'a CognitoUnauthCredentialStatus,
        secret: &'a SecretState,
    ) -> Inputs<'a> {
        Inputs {
            now: at(now),
            spec,
            generation: Some(1),
            status,
            secret,
            force_token: None,
            renew_before: Duration::from_secs(1200),
            seed: "uid",
            started: at(-1_000_000),
        }
    }

    fn synced() -> CognitoUnauthCredentialStatus {
        CognitoUnauthCredentialStatus {
            identity_id: Some(ID.into()),
            identity_pool_id: Some(POOL.into()),
            observed_generation: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn first_issue_gets_an_identity() {
        let (s, st) = (spec(), CognitoUnauthCredentialStatus::default());
        let p = decide(&inputs(0, &s, &st, &SecretState::Absent));
        assert_eq!(
            p,
            Plan::Rotate {
                why: Why::Initial,
                identity: None
            }
        );
    }

    #[test]
    fn waits_for_the_renewal_time_then_rotates_with_the_same_identity() {
        let (s, st) = (spec(), synced());
        let secret = observed(0, 3600, None);
        let Plan::Wait { renewal } = decide(&inputs(10, &s, &st, &secret)) else {
            panic!()
        };
        assert!(renewal <= at(2400) && renewal >= at(2340));
        let p = decide(&inputs(2400, &s, &st, &secret));
        assert_eq!(
            p,
            Plan::Rotate {
                why: Why::Renewal,
                identity: Some(ID.into())
            }
        );
    }

    #[test]
    fn short_lifetimes_rotate_at_two_thirds() {
        let (s, st) = (spec(), synced());
        let secret = observed(0, 90, None);
        let Plan::Wait { renewal } = decide(&inputs(1, &s, &st, &secret)) else {
            panic!()
        };
        assert!(renewal <= at(60) && renewal >= at(55), "{renewal}");
    }

    #[test]
    fn a_foreign_secret_is_a_conflict_even_when_suspended() {
        let s = CognitoUnauthCredentialSpec {
            suspend: Some(true),
            ..spec()
        };
        let st = synced();
        assert_eq!(
            decide(&inputs(0, &s, &st, &SecretState::Foreign)),
            Plan::Conflict
        );
    }

    #[test]
    fn suspended_makes_no_calls_even_when_expired() {
        let s = CognitoUnauthCredentialSpec {
            suspend: Some(true),
            ..spec()
        };
        let st = synced();
        let secret = observed(0, 90, None);
        assert_eq!(decide(&inputs(1000, &s, &st, &secret)), Plan::Suspended);
    }

    #[test]
    fn drift_and_spec_changes_rotate() {
        let st = synced();
        let SecretState::Ours(mut o) = observed(0, 3600, None) else {
            panic!()
        };
        o.intact = false;
        let drifted = SecretState::Ours(o);
        assert_eq!(
            decide(&inputs(10, &spec(), &st, &drifted)),
            Plan::Rotate {
                why: Why::Drift,
                identity: Some(ID.into())
            }
        );
        let role = CognitoUnauthCredentialSpec {
            custom_role_arn: Some("arn:aws:iam::123456789012:role/x".into()),
            ..spec()
        };
        let secret = observed(0, 3600, None);
        assert_eq!(
            decide(&inputs(10, &role, &st, &secret)),
            Plan::Rotate {
                why: Why::SpecChanged,
                identity: Some(ID.into())
            }
        );
    }

    #[test]
    fn a_new_pool_needs_a_new_identity() {
        let other = CognitoUnauthCredentialSpec {
            identity_pool_id: "us-east-1:22222222-0000-0000-0000-000000000002".into(),
            ..spec()
        };
        let st = synced();
        let secret = observed(0, 3600, None);
        assert_eq!(
            decide(&inputs(10, &other, &st, &secret)),
            Plan::Rotate {
                why: Why::SpecChanged,
                identity: None
            }
        );
    }

    #[test]
    fn identity_survives_a_lost_status_through_the_secret() {
        let st = CognitoUnauthCredentialStatus::default();
        let secret = observed(0, 3600, None);
        assert_eq!(
            reusable_identity(&inputs(10, &spec(), &st, &secret)),
            Some(ID.into())
        );
    }

    #[test]
    fn force_rotate_once_per_new_value() {
        let (s, st) = (spec(), synced());
        let secret = observed(0, 3600, Some("1"));
        let mut i = inputs(10, &s, &st, &secret);
        i.force_token = Some("1");
        assert!(matches!(decide(&i), Plan::Wait { .. }));
        i.force_token = Some("2");
        assert_eq!(
            decide(&i),
            Plan::Rotate {
                why: Why::Forced,
                identity: Some(ID.into())
            }
        );
    }

    #[test]
    fn failures_back_off_until_due_unless_the_spec_changed() {
        let s = spec();
        let st = CognitoUnauthCredentialStatus {
            failed_attempts: Some(3),
            last_failure_time: Some(time(at(100))),
            last_failure_reason: Some(reason::THROTTLED.into()),
            ..synced()
        };
        let secret = observed(0, 3600, None);
        let Plan::Backoff { until } = decide(&inputs(101, &s, &st, &secret)) else {
            panic!()
        };
        // Third attempt: a 20 s step with equal jitter.
        assert!(until >= at(110) && until <= at(120), "{until}");
        assert!(matches!(
            decide(&inputs(121, &s, &st, &secret)),
            Plan::Wait { .. }
        ));
        let mut i = inputs(101, &s, &st, &secret);
        i.generation = Some(2);
        assert!(matches!(decide(&i), Plan::Wait { .. }));
    }

    #[test]
    fn terminal_failures_wait_minutes() {
        let s = spec();
        let st = CognitoUnauthCredentialStatus {
            failed_attempts: Some(1),
            last_failure_time: Some(time(at(0))),
            last_failure_reason: Some(reason::GUEST_ACCESS_DISABLED.into()),
            ..synced()
        };
        let Plan::Backoff { until } = decide(&inputs(1, &s, &st, &SecretState::Absent)) else {
            panic!()
        };
        assert!(until.duration_since(at(0)) >= SignedDuration::from_secs(240));
    }

    #[test]
    fn overdue_renewals_found_at_start_are_spread_over_the_first_minute() {
        let spec = spec();
        let status = synced();
        // Issued at 0 for 1 h; renewal ~40 min; the controller was down and starts at 50 min.
        let secret = observed(0, 3600, None);
        let started = at(3000);
        let mut i = inputs(3000, &spec, &status, &secret);
        i.started = started;
        let slots: Vec<Timestamp> = (0..200)
            .map(|n| startup_slot(started, at(3600), &format!("uid-{n}")))
            .collect();
        assert!(
            slots
                .iter()
                .all(|s| *s >= started && *s <= started + SignedDuration::from_secs(60))
        );
        let spread = slots
            .iter()
            .max()
            .unwrap()
            .duration_since(*slots.iter().min().unwrap());
        assert!(spread > SignedDuration::from_secs(50), "spread {spread:?}");
        let slot = startup_slot(started, at(3600), "uid");
        match decide(&i) {
            Plan::Wait { renewal } => assert_eq!(renewal, slot),
            other => panic!("{other:?}"),
        }
        i.now = slot;
        assert!(matches!(
            decide(&i),
            Plan::Rotate {
                why: Why::Renewal,
                ..
            }
        ));
    }

    #[test]
    fn the_startup_spread_never_uses_more_than_half_the_remaining_life() {
        let started = at(3540);
        for n in 0..100 {
            let slot = startup_slot(started, at(3600), &format!("uid-{n}"));
            assert!(slot <= at(3570), "{slot}");
        }
        // Already expired: no delay at all.
        assert_eq!(startup_slot(at(4000), at(3600), "uid"), at(4000));
    }

    #[test]
    fn renewals_that_come_due_after_the_start_are_not_delayed() {
        let spec = spec();
        let status = synced();
        let secret = observed(0, 3600, None);
        let mut i = inputs(3000, &spec, &status, &secret);
        i.started = at(100);
        assert!(matches!(
            decide(&i),
            Plan::Rotate {
                why: Why::Renewal,
                ..
            }
        ));
    }
}
