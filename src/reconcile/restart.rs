//! Rollout restarts of the workloads that read the credentials as environment variables
//! (spec.rolloutRestartTargets). Deciding is pure ([`duty`], [`summarize`]); the patch is
//! the one piece of I/O ([`patch_target`]).
//!
//! The value written to the pod template is derived from the credentials' issue time,
//! so the same rotation always writes the same value: a retry or a controller that
//! crashed after patching cannot roll a workload twice for one rotation.

use jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;

use crate::crd::conditions::reason;
use crate::crd::{RolloutRestartStatus, RolloutRestartTarget};

/// The pod-template annotation that rolls a workload.
pub const RESTARTED_AT_ANNOTATION: &str = "cognito.kubecred.io/restartedAt";

/// What the targets need for the credentials now in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Duty {
    /// No targets: no bookkeeping (and none kept).
    NoTargets,
    /// The targets were rolled for (or started with) these credentials.
    Done,
    /// First issue, or targets just set: the targets start with these credentials.
    /// Record them; nothing to roll.
    Baseline,
    /// The credentials changed since: roll the targets with this annotation value.
    Restart { stamp: String },
}

/// The annotation value for credentials issued at `issued_at` (also what status records):
/// the Secret's own issued-at value, RFC 3339 at full (nanosecond) precision, so the same
/// for every attempt of one rotation and different for two rotations within one second.
pub fn stamp(issued_at: Timestamp) -> String {
    crate::reconcile::secret::rfc3339_precise(issued_at)
}

/// What to do for the targets, given the bookkeeping and the Secret's issue time.
pub fn duty(
    targets: &[RolloutRestartTarget],
    done: Option<&RolloutRestartStatus>,
    issued_at: Timestamp,
) -> Duty {
    if targets.is_empty() {
        return Duty::NoTargets;
    }
    let current = stamp(issued_at);
    match done.and_then(|d| d.credentials_issued_at.as_deref()) {
        None => Duty::Baseline,
        Some(t) if t == current => Duty::Done,
        Some(_) => Duty::Restart { stamp: current },
    }
}

/// How one patch went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Restarted,
    NotFound,
    Forbidden,
    /// Any other failure (its HTTP status or a transport error, never object content).
    Failed(String),
}

impl Outcome {
    /// A short, fixed label for the metric.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Restarted => "triggered",
            Outcome::NotFound => "not_found",
            Outcome::Forbidden => "forbidden",
            Outcome::Failed(_) => "failed",
        }
    }

    /// A missing target has no pods with old credentials: nothing to retry. A refused or
    /// failed patch leaves pods with old credentials: retry.
    fn retry(&self) -> bool {
        matches!(self, Outcome::Forbidden | Outcome::Failed(_))
    }
}

/// What the outcomes of one round mean for status and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
    /// Note of the Normal `RolloutRestartTriggered` event, when some target was rolled.
    pub triggered: Option<String>,
    /// Note of the Warning `RolloutRestartFailed` event, when some target was not.
    pub failed: Option<String>,
    /// The round is over for these credentials (else retry later).
    pub done: bool,
}

fn show(t: &RolloutRestartTarget) -> String {
    format!("{}/{}", t.kind.as_str(), t.name)
}

/// Turns the outcomes of one round into a condition, events and whether it is done.
pub fn summarize(outcomes: &[(RolloutRestartTarget, Outcome)], stamp: &str) -> Summary {
    let rolled: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Restarted)
        .map(|(t, _)| show(t))
        .collect();
    let problems: Vec<String> = outcomes
        .iter()
        .filter_map(|(t, o)| match o {
            Outcome::Restarted => None,
            Outcome::NotFound => Some(format!("{} not found", show(t))),
            Outcome::Forbidden => Some(format!(
                "{}: patch forbidden (the chart's rolloutRestart.enabled grants it)",
                show(t)
            )),
            Outcome::Failed(e) => Some(format!("{}: {e}", show(t))),
        })
        .collect();
    let worst = outcomes
        .iter()
        .map(|(_, o)| o)
        .fold(None, |acc, o| match o {
            Outcome::Forbidden => Some(reason::RESTART_FORBIDDEN),
            Outcome::Failed(_) if acc != Some(reason::RESTART_FORBIDDEN) => {
                Some(reason::RESTART_FAILED)
            }
            Outcome::NotFound if acc.is_none() => Some(reason::TARGET_NOT_FOUND),
            _ => acc,
        });
    let triggered = (!rolled.is_empty()).then(|| {
        format!(
            "Restarted {} for new credentials ({RESTARTED_AT_ANNOTATION}={stamp})",
            rolled.join(", ")
        )
    });
    let failed = (!problems.is_empty()).then(|| problems.join("; "));
    let done = !outcomes.iter().any(|(_, o)| o.retry());
    match worst {
        None => Summary {
            ok: true,
            reason: reason::TARGETS_RESTARTED,
            message: triggered.clone().unwrap_or_default(),
            triggered,
            failed,
            done,
        },
        Some(r) => {
            let mut message = failed.clone().unwrap_or_default();
            if let Some(t) = &triggered {
                message = format!("{message}. {t}");
            }
            if !done {
                message.push_str("; will retry");
            }
            Summary {
                ok: false,
                reason: r,
                message,
                triggered,
                failed,
                done,
            }
        }
    }
}

/// Sets the restart annotation on one target's pod template (a merge patch of that one
/// key, so it never conflicts with the workload's owner).
pub async fn patch_target(
    client: &kube::Client,
    namespace: &str,
    target: &RolloutRestartTarget,
    stamp: &str,
    field_manager: &str,
) -> Outcome {
    let gvk = GroupVersionKind::gvk("apps", "v1", target.kind.as_str());
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk));
    let patch = json!({
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}
    });
    let pp = PatchParams {
        field_manager: Some(field_manager.to_string()),
        ..PatchParams::default()
    };
    match api.patch(&target.name, &pp, &Patch::Merge(&patch)).await {
        Ok(_) => Outcome::Restarted,
        Err(kube::Error::Api(s)) if s.code == 404 => Outcome::NotFound,
        Err(kube::Error::Api(s)) if s.code == 403 => Outcome::Forbidden,
        Err(kube::Error::Api(s)) => Outcome::Failed(format!("HTTP {} {}", s.code, s.reason)),
        Err(_) => Outcome::Failed("the API server could not be reached".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WorkloadKind;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn target(kind: WorkloadKind, name: &str) -> RolloutRestartTarget {
        RolloutRestartTarget {
            kind,
            name: name.into(),
        }
    }

    fn done_for(s: i64) -> RolloutRestartStatus {
        RolloutRestartStatus {
            credentials_issued_at: Some(stamp(at(s))),
            restarted_at: None,
        }
    }

    #[test]
    fn rolls_only_when_the_credentials_changed_since() {
        let t = vec![target(WorkloadKind::Deployment, "web")];
        assert_eq!(duty(&[], Some(&done_for(0)), at(10)), Duty::NoTargets);
        // First issue or targets just set: the pods start with these.
        assert_eq!(duty(&t, None, at(10)), Duty::Baseline);
        // A controller restart or status-only change: same credentials, nothing.
        assert_eq!(duty(&t, Some(&done_for(10)), at(10)), Duty::Done);
        assert_eq!(
            duty(&t, Some(&done_for(10)), at(3610)),
            Duty::Restart {
                stamp: stamp(at(3610))
            }
        );
        // Two rotations within one second are two rotations.
        let a = Timestamp::new(1_800_000_000, 230_000_000).unwrap();
        let b = Timestamp::new(1_800_000_000, 532_000_000).unwrap();
        let after_a = RolloutRestartStatus {
            credentials_issued_at: Some(stamp(a)),
            restarted_at: None,
        };
        assert_eq!(duty(&t, Some(&after_a), a), Duty::Done);
        assert_eq!(
            duty(&t, Some(&after_a), b),
            Duty::Restart { stamp: stamp(b) }
        );
    }

    #[test]
    fn the_stamp_is_full_precision_and_the_same_for_one_rotation() {
        assert_eq!(stamp(at(0)), "2027-01-15T08:00:00.000000000Z");
        let precise = Timestamp::new(1_800_000_000, 123_456_789).unwrap();
        assert_eq!(stamp(precise), "2027-01-15T08:00:00.123456789Z");
        assert_eq!(stamp(at(5)), stamp(at(5)));
    }

    #[test]
    fn all_rolled_is_a_true_condition_and_one_normal_event() {
        let s = summarize(
            &[
                (target(WorkloadKind::Deployment, "web"), Outcome::Restarted),
                (target(WorkloadKind::StatefulSet, "db"), Outcome::Restarted),
            ],
            "T",
        );
        assert!(s.ok && s.done);
        assert_eq!(s.reason, reason::TARGETS_RESTARTED);
        assert_eq!(
            s.triggered.as_deref(),
            Some(
                "Restarted Deployment/web, StatefulSet/db for new credentials (cognito.kubecred.io/restartedAt=T)"
            )
        );
        assert_eq!(s.failed, None);
    }

    #[test]
    fn a_missing_target_is_reported_but_not_retried() {
        let s = summarize(
            &[
                (target(WorkloadKind::Deployment, "web"), Outcome::Restarted),
                (target(WorkloadKind::DaemonSet, "gone"), Outcome::NotFound),
            ],
            "T",
        );
        assert!(!s.ok && s.done);
        assert_eq!(s.reason, reason::TARGET_NOT_FOUND);
        assert_eq!(s.failed.as_deref(), Some("DaemonSet/gone not found"));
        assert!(s.triggered.is_some());
    }

    #[test]
    fn a_forbidden_patch_wins_the_reason_and_is_retried() {
        let s = summarize(
            &[
                (target(WorkloadKind::Deployment, "a"), Outcome::NotFound),
                (
                    target(WorkloadKind::Deployment, "b"),
                    Outcome::Failed("HTTP 500 x".into()),
                ),
                (target(WorkloadKind::Deployment, "c"), Outcome::Forbidden),
            ],
            "T",
        );
        assert!(!s.ok && !s.done);
        assert_eq!(s.reason, reason::RESTART_FORBIDDEN);
        assert!(s.message.ends_with("; will retry"), "{}", s.message);
        assert_eq!(s.triggered, None);
    }
}
