//! Conditions and status, the cert-manager way: one `Ready` condition with a reason,
//! observedGeneration, and a lastTransitionTime that moves only when the condition's
//! status changes. Pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::CognitoUnauthCredentialStatus;
use crate::crd::conditions::{READY, reason};
use crate::reconcile::schedule;
use crate::reconcile::secret::Provenance;

/// A timestamp as Kubernetes' `Time`, whole seconds (what the API server keeps anyway,
/// so a value read back compares equal to the one computed).
pub fn time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
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

/// RFC 3339, whole seconds, for messages (the one format, shared with the Secret).
pub use crate::reconcile::schedule::rfc3339 as show;

/// When the next attempt is due after the failures recorded in `status`.
pub fn retry_due(status: &CognitoUnauthCredentialStatus, seed: &str) -> Option<Timestamp> {
    let failed = u32::try_from(status.failed_attempts.unwrap_or(0)).unwrap_or(0);
    let last = status.last_failure_time.as_ref()?.0;
    let terminal = status
        .last_failure_reason
        .as_deref()
        .is_some_and(reason::is_terminal);
    schedule::retry_due(failed, last, terminal, seed)
}

/// The status one reconcile computes: it starts from the old one, and says how each
/// condition should be now, keeping lastTransitionTime the cert-manager way.
#[derive(Debug, Clone)]
pub struct Builder {
    old: CognitoUnauthCredentialStatus,
    next: CognitoUnauthCredentialStatus,
    generation: Option<i64>,
    now: Timestamp,
}

impl Builder {
    pub fn new(
        old: CognitoUnauthCredentialStatus,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Self {
        let mut next = old.clone();
        next.observed_generation = generation;
        Self {
            old,
            next,
            generation,
            now,
        }
    }

    /// The status this reconcile started from.
    pub fn old(&self) -> &CognitoUnauthCredentialStatus {
        &self.old
    }

    /// The status as computed so far.
    pub fn next(&self) -> &CognitoUnauthCredentialStatus {
        &self.next
    }

    /// For the fields that have no helper.
    pub fn next_mut(&mut self) -> &mut CognitoUnauthCredentialStatus {
        &mut self.next
    }

    pub fn changed(&self) -> bool {
        self.old != self.next
    }

    /// Sets the condition `type_` (True or False).
    pub fn set(&mut self, type_: &str, ok: bool, reason: &str, message: String) {
        let status = if ok { "True" } else { "False" };
        self.set_with(type_, status, reason, message);
    }

    /// Sets the condition `type_` to Unknown.
    pub fn unknown(&mut self, type_: &str, reason: &str, message: String) {
        self.set_with(type_, "Unknown", reason, message);
    }

    /// The condition `type_` as it should be now, its status as Kubernetes spells it
    /// (True, False, Unknown); its lastTransitionTime moves only when its status changes.
    fn set_with(&mut self, type_: &str, status: &str, reason: &str, message: String) {
        let status = status.to_string();
        let last_transition_time = self
            .old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| time(self.now), |c| c.last_transition_time.clone());
        let c = Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        };
        set_condition(&mut self.next.conditions, c);
    }

    pub fn remove(&mut self, type_: &str) {
        remove_condition(&mut self.next.conditions, type_);
    }

    /// `Ready` True.
    pub fn ready(&mut self, reason: &str, message: String) {
        self.set(READY, true, reason, message);
    }

    /// `Ready` False.
    pub fn not_ready(&mut self, reason: &str, message: String) {
        self.set(READY, false, reason, message);
    }

    /// The Secret holds good credentials (issued as `prov` says, expiring as `creds`
    /// says, next rotated at `renewal`): everything in status follows from the Secret,
    /// so a status lost in a crash is rebuilt the same.
    pub fn issued(&mut self, prov: &Provenance, expiration: Timestamp, renewal: Timestamp) {
        let n = &mut self.next;
        // An identity status already has for this pool wins (it may be newer than the
        // Secret's, when a recreated identity was saved but its Secret not yet written).
        if n.identity_id.is_none() || n.identity_pool_id.as_deref() != Some(&prov.identity_pool_id)
        {
            n.identity_id = Some(prov.identity_id.clone());
            n.identity_pool_id = Some(prov.identity_pool_id.clone());
        }
        if let Some(arn) = &prov.assumed_role_arn {
            // Flow Basic: AssumeRoleWithWebIdentity said which session these are.
            n.assumed_role_arn = Some(arn.clone());
        }
        n.last_rotation_time = Some(time(prov.issued_at));
        n.expiration = Some(time(expiration));
        n.renewal_time = Some(time(renewal));
        n.failed_attempts = None;
        n.last_failure_time = None;
        n.last_failure_reason = None;
        let msg = format!(
            "Credentials valid until {}; next rotation at {}",
            show(expiration),
            show(renewal)
        );
        self.ready(reason::CREDENTIALS_ISSUED, msg);
    }

    /// Good credentials kept, and a new force-rotate value waiting for `at` (at most one
    /// forced rotation per resource per minimum interval): said in `Ready`'s message.
    pub fn force_deferred(&mut self, at: Timestamp) {
        let (Some(expiration), Some(renewal)) = (&self.next.expiration, &self.next.renewal_time)
        else {
            return;
        };
        let msg = format!(
            "Credentials valid until {}; next rotation at {}; the new force-rotate value is honoured at {} (one forced rotation per resource per minimum interval)",
            show(expiration.0),
            show(renewal.0),
            show(at)
        );
        self.ready(reason::CREDENTIALS_ISSUED, msg);
    }

    /// Counts a failed attempt (of class Transient or Terminal); returns when the next
    /// attempt is due, by the same rule the next reconcile decides with.
    pub fn failed(&mut self, why: &str, seed: &str) -> Timestamp {
        let n = &mut self.next;
        n.failed_attempts = Some(self.old.failed_attempts.unwrap_or(0).saturating_add(1));
        n.last_failure_time = Some(time(self.now));
        n.last_failure_reason = Some(why.to_string());
        retry_due(n, seed).unwrap_or(self.now)
    }

    /// The status to write.
    pub fn build(self) -> CognitoUnauthCredentialStatus {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions::{VERIFIED, condition_of, ready_of};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    /// One reconcile after another, each starting from the status the last one wrote.
    fn step(
        old: &CognitoUnauthCredentialStatus,
        at_s: i64,
        generation: i64,
        f: impl FnOnce(&mut Builder),
    ) -> CognitoUnauthCredentialStatus {
        let mut b = Builder::new(old.clone(), Some(generation), at(at_s));
        f(&mut b);
        b.build()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = step(&Default::default(), 100, 1, |b| {
            b.ready(reason::CREDENTIALS_ISSUED, "a".into())
        });
        let c = ready_of(&first).unwrap();
        assert_eq!(c.last_transition_time, time(at(100)));
        // New status: the time moves.
        let second = step(&first, 200, 1, |b| {
            b.not_ready(reason::THROTTLED, "b".into())
        });
        assert_eq!(
            ready_of(&second).unwrap().last_transition_time,
            time(at(200))
        );
        // Same status, new reason and message: time kept.
        let third = step(&second, 300, 2, |b| {
            b.not_ready(reason::EXPIRED, "c".into())
        });
        let c = ready_of(&third).unwrap();
        assert_eq!(c.last_transition_time, time(at(200)));
        assert_eq!(c.observed_generation, Some(2));
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Expired"));
        assert_eq!(third.observed_generation, Some(2));
        // Nothing new: nothing changed, so nothing to write.
        let mut again = Builder::new(third.clone(), Some(2), at(400));
        again.not_ready(reason::EXPIRED, "c".into());
        assert!(!again.changed());
    }

    #[test]
    fn conditions_are_replaced_by_type_and_unknown_is_a_status() {
        let st = step(&Default::default(), 1, 1, |b| {
            b.ready(reason::CREDENTIALS_ISSUED, "x".into());
            b.not_ready(reason::THROTTLED, "y".into());
            b.unknown(VERIFIED, reason::VERIFICATION_UNAVAILABLE, "z".into());
        });
        assert_eq!(st.conditions.len(), 2);
        assert_eq!(ready_of(&st).unwrap().reason, "Throttled");
        let v = condition_of(&st, VERIFIED).unwrap();
        assert_eq!(
            (v.status.as_str(), v.last_transition_time.clone()),
            ("Unknown", time(at(1)))
        );
        let st = step(&st, 2, 1, |b| b.remove(VERIFIED));
        assert_eq!(st.conditions.len(), 1);
        assert_eq!(st.conditions[0].type_, READY);
    }

    /// A failure is counted once per attempt and schedules the next by the table's class:
    /// worked out by hand (first transient step 5 s with equal jitter: 2.5..5 s; terminal:
    /// 240..300 s).
    #[test]
    fn failures_count_and_schedule_by_class() {
        let mut b = Builder::new(Default::default(), Some(1), at(1000));
        let due = b.failed(reason::THROTTLED, "uid");
        assert!(
            due >= at(1000) + std::time::Duration::from_millis(2500) && due <= at(1005),
            "{due}"
        );
        let st = b.build();
        assert_eq!(st.failed_attempts, Some(1));
        let mut b = Builder::new(st, Some(1), at(1003));
        let due = b.failed(reason::GUEST_ACCESS_DISABLED, "uid");
        assert!(due >= at(1003 + 240) && due <= at(1003 + 300), "{due}");
        assert_eq!(b.next().failed_attempts, Some(2));
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
