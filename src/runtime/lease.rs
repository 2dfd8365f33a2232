//! Leader election on a coordination.k8s.io Lease, with self-fencing.
//!
//! The rules are client-go's: a standby takes the Lease only after it has seen the
//! record unchanged for the whole lease duration, timed on its own clock (so clock skew
//! between replicas does not matter); the holder renews every retry period. And the
//! holder fences itself: when no renewal has succeeded for the renew deadline (shorter
//! than the lease duration), it says "not leading" at once, whatever the reason (the
//! API server unreachable, the Lease forbidden, a conflict), so it has stopped before
//! any standby could take over. The deciding part is pure ([`Record::step`]).

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How the Lease is held.
#[derive(Debug, Clone)]
pub struct Timing {
    /// A holder that stops renewing loses the Lease after this long.
    pub lease_duration: Duration,
    /// The holder stops leading when it could not renew for this long (< lease_duration).
    pub renew_deadline: Duration,
    /// How often the holder renews, and a standby looks.
    pub retry_period: Duration,
}

impl Timing {
    /// From a lease duration and the grace before it ends: the holder fences itself at
    /// `lease_duration - grace`, and renews five times within that.
    pub fn new(lease_duration: Duration, grace: Duration) -> Self {
        let lease_duration = lease_duration.max(Duration::from_secs(2));
        let grace = grace.clamp(Duration::from_secs(1), lease_duration / 2);
        let renew_deadline = lease_duration - grace;
        Self {
            lease_duration,
            renew_deadline,
            retry_period: (renew_deadline / 5).max(Duration::from_millis(200)),
        }
    }
}

/// What a look at the Lease calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease: create it, held by us.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free, or not renewed for the lease duration: take it.
    Take,
    /// Someone else holds it.
    Wait,
}

/// What this replica has seen of the Lease record: its version, and when (on our own
/// clock) that version was first seen.
#[derive(Debug, Default)]
pub struct Record {
    seen: Option<(String, Instant)>,
}

impl Record {
    /// Decides from the Lease as read at `now` (our clock).
    pub fn step(
        &mut self,
        lease: Option<&Lease>,
        me: &str,
        lease_duration: Duration,
        now: Instant,
    ) -> Step {
        let Some(lease) = lease else {
            self.seen = None;
            return Step::Create;
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let since = match &self.seen {
            Some((v, t)) if *v == version => *t,
            _ => {
                self.seen = Some((version, now));
                now
            }
        };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        match holder {
            Some(h) if h == me => Step::Renew,
            None => Step::Take,
            Some(_) if now.duration_since(since) >= lease_duration => Step::Take,
            Some(_) => Step::Wait,
        }
    }
}

/// Who runs for which Lease.
pub struct Candidate {
    /// The Leases of the Lease's namespace.
    pub api: Api<Lease>,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (the Lease's holderIdentity while it leads).
    pub me: String,
}

/// Runs leader election until `stop` is cancelled, publishing whether this replica
/// leads on `leading`; releases the Lease at the end if it holds it.
pub async fn elect(
    candidate: Candidate,
    timing: Timing,
    leading: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let Candidate { api, name, me } = candidate;
    let mut record = Record::default();
    // When the last successful renewal (or acquisition) was sent: the fence counts from
    // the request's start, since the API server may have stamped it any time after.
    let mut renewed: Option<Instant> = None;
    loop {
        let started = Instant::now();
        // A request that hangs must not hold off the fence.
        let limit = match renewed {
            Some(t) => timing.renew_deadline.saturating_sub(t.elapsed()),
            None => timing.renew_deadline,
        }
        .max(Duration::from_millis(100));
        let attempt = tokio::time::timeout(limit, try_once(&api, &name, &me, &timing, &mut record));
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            r = attempt => r,
        };
        match outcome {
            Ok(Ok(true)) => {
                renewed = Some(started);
                if leading.send_if_modified(|l| !std::mem::replace(l, true)) {
                    info!(lease = %name, identity = %me, "acquired the lease");
                }
            }
            Ok(Ok(false)) => {
                renewed = None;
                if leading.send_if_modified(|l| std::mem::replace(l, false)) {
                    warn!(lease = %name, "another replica holds the lease");
                }
            }
            Ok(Err(e)) => warn!(lease = %name, error = %e, "lease request failed"),
            Err(_) => warn!(lease = %name, "lease request timed out"),
        }
        if let Some(t) = renewed
            && t.elapsed() >= timing.renew_deadline
        {
            renewed = None;
            leading.send_replace(false);
            warn!(lease = %name, deadline = ?timing.renew_deadline, "could not renew the lease in time: stopped leading");
        }
        // Look again after the retry period, or at the fence if that comes first.
        let pause = match renewed {
            Some(t) => timing
                .retry_period
                .min(timing.renew_deadline.saturating_sub(t.elapsed())),
            None => timing.retry_period,
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let held = *leading.borrow();
    leading.send_replace(false);
    if held {
        match release(&api, &name, &me).await {
            Ok(()) => info!(lease = %name, "lease released"),
            Err(e) => warn!(lease = %name, error = %e, "could not release the lease"),
        }
    }
}

/// One look at the Lease; `Ok(true)` when we hold it after this (created, renewed or
/// taken), `Ok(false)` when someone else does or got there first.
async fn try_once(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    timing: &Timing,
    record: &mut Record,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    let now = MicroTime(Timestamp::now());
    let step = record.step(current.as_ref(), me, timing.lease_duration, Instant::now());
    let duration = i32::try_from(timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let result = match (step, current) {
        (Step::Wait, _) => return Ok(false),
        (Step::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_string()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (step, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if step == Step::Take {
                spec.holder_identity = Some(me.to_string());
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(duration);
            spec.renew_time = Some(now);
            update(api, name, &lease, &lease.spec).await
        }
        (_, None) => return Ok(false),
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (no holder), so a standby takes it at once.
async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
    let Some(lease) = api.get_opt(name).await? else {
        return Ok(());
    };
    let held = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        == Some(me);
    if !held {
        return Ok(());
    }
    // null, not absent: a merge patch leaves absent fields as they are.
    let spec = serde_json::json!({"holderIdentity": null, "leaseDurationSeconds": 1});
    update(api, name, &lease, &spec).await?;
    Ok(())
}

/// Writes the Lease's spec as read and changed, with the resourceVersion read as the
/// precondition (a merge patch that carries it): of two replicas taking the Lease at
/// once, one gets 409. A patch, so the RBAC is the usual get, create, patch.
async fn update<S: serde::Serialize + std::fmt::Debug>(
    api: &Api<Lease>,
    name: &str,
    read: &Lease,
    spec: &S,
) -> Result<Lease, kube::Error> {
    /// The patch: the spec, and the resourceVersion it was read at.
    #[derive(Debug, serde::Serialize)]
    struct Update<'a, S> {
        metadata: Version<'a>,
        spec: &'a S,
    }
    #[derive(Debug, serde::Serialize)]
    struct Version<'a> {
        #[serde(rename = "resourceVersion")]
        resource_version: &'a Option<String>,
    }
    let patch = Update {
        metadata: Version {
            resource_version: &read.metadata.resource_version,
        },
        spec,
    };
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(version: &str, holder: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn timing_fences_before_the_lease_can_be_taken() {
        // Worked examples: (lease, grace) -> (deadline, retry).
        let cases = [
            (15, 5, 10_000, 2_000),
            (6, 2, 4_000, 800),
            (2, 5, 1_000, 200),
        ];
        for (lease_s, grace_s, deadline_ms, retry_ms) in cases {
            let t = Timing::new(Duration::from_secs(lease_s), Duration::from_secs(grace_s));
            assert_eq!(
                t.renew_deadline,
                Duration::from_millis(deadline_ms),
                "{lease_s}/{grace_s}"
            );
            assert_eq!(
                t.retry_period,
                Duration::from_millis(retry_ms),
                "{lease_s}/{grace_s}"
            );
            assert!(t.renew_deadline < t.lease_duration);
        }
    }

    #[test]
    fn a_standby_takes_over_only_after_seeing_no_change_for_the_lease_duration() {
        let d = Duration::from_secs(6);
        let t0 = Instant::now();
        let mut r = Record::default();
        assert_eq!(r.step(None, "b", d, t0), Step::Create);
        assert_eq!(r.step(Some(&lease("1", Some("a"))), "b", d, t0), Step::Wait);
        // Renewed by a at 5 s: the clock starts again.
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            r.step(Some(&lease("2", Some("a"))), "b", d, at(5)),
            Step::Wait
        );
        assert_eq!(
            r.step(Some(&lease("2", Some("a"))), "b", d, at(10)),
            Step::Wait
        );
        assert_eq!(
            r.step(Some(&lease("2", Some("a"))), "b", d, at(11)),
            Step::Take
        );
        // Released: taken at once.
        let mut r = Record::default();
        assert_eq!(r.step(Some(&lease("3", None)), "b", d, t0), Step::Take);
        assert_eq!(r.step(Some(&lease("3", Some(""))), "b", d, t0), Step::Take);
        // Ours: renewed.
        assert_eq!(
            r.step(Some(&lease("4", Some("b"))), "b", d, t0),
            Step::Renew
        );
    }
}
