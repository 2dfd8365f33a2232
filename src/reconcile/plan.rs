//! The decision: given the resource, its status, the Secret and the clock, what to do
//! now and when to look again. Pure, so every branch is unit tested without a cluster.

use std::time::Duration;

use jiff::Timestamp;

use crate::aws::cognito::{Credentials, RoleSession};
use crate::crd::{CognitoUnauthCredentialSpec, CognitoUnauthCredentialStatus, Flow};
use crate::reconcile::schedule;
use crate::reconcile::secret::{self, Facts, Observed, Provenance, Seen};
use crate::reconcile::status;

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
    /// A new force-rotate value is not honoured before this (the last forced rotation
    /// plus the minimum interval between forced rotations); None: at once.
    pub force_not_before: Option<Timestamp>,
    pub renew_before: Duration,
    /// Fixes the jitter for this resource (its uid).
    pub seed: &'a str,
    /// When this controller started reconciling (process start or leadership).
    pub started: Timestamp,
    /// An identity (pool, id) this controller got from GetId but could not save in
    /// status yet.
    pub pending_identity: Option<(&'a str, &'a str)>,
    /// Flow Basic: what AssumeRoleWithWebIdentity is to be asked for (`role_session`);
    /// None for flow Enhanced.
    pub session: Option<&'a RoleSession>,
}

/// A spec the API server should have refused (an older CRD, a direct etcd write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("flow Basic needs spec.roleArn")]
    NoRoleArn,
    #[error("spec.sessionDuration: {0}")]
    Duration(#[from] schedule::DurationError),
    #[error("spec.sessionDuration {0} is outside 15m..12h")]
    DurationRange(String),
}

/// STS's bounds on AssumeRoleWithWebIdentity's DurationSeconds (the CRD's 15m..12h).
const SESSION_SECONDS: std::ops::RangeInclusive<u64> = 900..=43_200;

/// The longest RoleSessionName STS takes.
const SESSION_NAME_MAX: usize = 64;

/// The default RoleSessionName: `<namespace>-<name>`, kept to STS's characters
/// (`[\w+=,.@-]`; Kubernetes names have nothing else) and length (at most 64; a longer
/// one keeps its start and ends in a hash of the whole, so two long names stay apart).
pub fn default_session_name(namespace: &str, name: &str) -> String {
    let full: String = format!("{namespace}-{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if full.len() <= SESSION_NAME_MAX {
        return full;
    }
    let hash = schedule::unit_fraction(&full, 0);
    let suffix = format!("-{:08x}", (hash * f64::from(u32::MAX)) as u32);
    format!("{}{suffix}", &full[..SESSION_NAME_MAX - suffix.len()])
}

/// What AssumeRoleWithWebIdentity is asked for under `spec` (flow Basic), for the
/// resource `namespace`/`name`; None for flow Enhanced.
pub fn role_session(
    spec: &CognitoUnauthCredentialSpec,
    namespace: &str,
    name: &str,
) -> Result<Option<RoleSession>, SpecError> {
    if spec.flow != Flow::Basic {
        return Ok(None);
    }
    let role_arn = spec.role_arn.clone().ok_or(SpecError::NoRoleArn)?;
    let duration = schedule::parse_go_duration(spec.session_duration())?.as_secs();
    if !SESSION_SECONDS.contains(&duration) {
        return Err(SpecError::DurationRange(
            spec.session_duration().to_string(),
        ));
    }
    Ok(Some(RoleSession {
        role_arn,
        session_name: spec
            .role_session_name
            .clone()
            .unwrap_or_else(|| default_session_name(namespace, name)),
        duration_seconds: u32::try_from(duration).unwrap_or(u32::MAX),
    }))
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
    pub expiration: Timestamp,
    /// The key material, when the Secret was read (None when the watch's fingerprint
    /// said it holds what the status says: read only if a step needs it).
    pub credentials: Option<Credentials>,
    pub provenance: Provenance,
    pub renewal: Timestamp,
}

impl Kept {
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expiration <= now
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

/// What one reconcile does, with what it decided on.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// A Secret we do not own holds the name. Not an attempt and not a failure: no call
    /// is made, nothing is counted, and the status says so once.
    Conflict,
    /// No Cognito calls while suspended.
    Suspended { kept: Option<Kept> },
    /// The last attempt failed and the next is not due before `until`.
    Backoff {
        until: Timestamp,
        kept: Option<Kept>,
    },
    /// New credentials are needed, but our Secret is immutable: it can only be deleted
    /// (the controller then writes a new one). No call is made, nothing is counted.
    Immutable { why: Why, kept: Option<Kept> },
    /// Fetch credentials; reuse `identity` when there is one for this pool.
    Rotate {
        why: Why,
        identity: Option<String>,
        kept: Option<Kept>,
    },
    /// The Secret holds good credentials; look again at `wake`. `repair`: write the
    /// same credentials again (older layout, or the template's metadata missing).
    /// `forced_at`: a new force-rotate value waits until then (the minimum interval
    /// between forced rotations).
    Wait {
        kept: Kept,
        wake: Timestamp,
        repair: bool,
        forced_at: Option<Timestamp>,
    },
}

/// How a Secret's credentials match the spec: same pool and region, same flow, and
/// the same role (with Basic, the same session name and duration too).
fn matches_spec(
    p: &Provenance,
    spec: &CognitoUnauthCredentialSpec,
    session: Option<&RoleSession>,
) -> bool {
    p.identity_pool_id == spec.identity_pool_id
        && p.region == spec.region()
        && p.custom_role_arn == spec.custom_role_arn
        && p.session.as_ref() == session
}

/// The Secret's credentials when they are intact and from the current spec.
pub fn kept(i: &Inputs<'_>) -> Option<Kept> {
    let SecretState::Ours(o) = i.secret else {
        return None;
    };
    let (Some(expiration), Some(p)) = (o.expiration, &o.provenance) else {
        return None;
    };
    if !o.intact || !matches_spec(p, i.spec, i.session) {
        return None;
    }
    Some(Kept {
        expiration,
        credentials: o.credentials.clone(),
        provenance: p.clone(),
        renewal: schedule::renewal_time(p.issued_at, expiration, i.renew_before, i.seed),
    })
}

/// The resource a decision is about: its uid (the Secret's owner), namespace and name.
#[derive(Debug, Clone, Copy)]
pub struct Whose<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// What a Secret that the watch saw as `seen` holds, without reading it: if it is
/// exactly what this resource's status and spec say it should hold (same owner,
/// identity, role, expiry, force-rotate token, mount path and template), it is intact,
/// current and writable, with `seen`'s issue time. None when anything differs: then
/// the Secret is read, as always.
pub fn known(
    seen: Seen,
    whose: Whose<'_>,
    spec: &CognitoUnauthCredentialSpec,
    status: &CognitoUnauthCredentialStatus,
    force_token: Option<&str>,
) -> Option<Observed> {
    let session = role_session(spec, whose.namespace, whose.name).ok()?;
    let provenance = Provenance {
        identity_pool_id: spec.identity_pool_id.clone(),
        identity_id: status.identity_id.clone()?,
        region: spec.region().to_string(),
        custom_role_arn: spec.custom_role_arn.clone(),
        assumed_role_arn: session
            .as_ref()
            .and_then(|_| status.assumed_role_arn.clone()),
        session,
        issued_at: seen.issued_at,
        force_token: force_token.map(str::to_string),
    };
    let expiration = status.expiration.as_ref()?.0;
    let template = spec.secret_template.as_ref();
    let (labels, annotations) = secret::foreign_metadata(
        template.map(|t| &t.labels),
        template.map(|t| &t.annotations),
    );
    let fingerprint = secret::fingerprint(&Facts {
        owner_uid: whose.uid,
        provenance: &provenance,
        expiration,
        mount_path: spec.mount_path(),
        labels: &labels,
        annotations: &annotations,
    });
    (status.identity_pool_id.as_deref() == Some(spec.identity_pool_id.as_str())
        && fingerprint == seen.fingerprint)
        .then_some(Observed {
            owned: true,
            intact: true,
            current_layout: true,
            template_applied: true,
            immutable: false,
            expiration: Some(expiration),
            credentials: None,
            provenance: Some(provenance),
        })
}

/// The identity to reuse for this pool: from status, else the one this controller got
/// but could not save in status yet, else the Secret's.
pub fn reusable_identity(i: &Inputs<'_>) -> Option<String> {
    let pool = &i.spec.identity_pool_id;
    if let (Some(id), Some(p)) = (&i.status.identity_id, &i.status.identity_pool_id)
        && p == pool
    {
        return Some(id.clone());
    }
    if let Some((p, id)) = i.pending_identity
        && p == pool
    {
        return Some(id.to_string());
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

pub fn decide(i: &Inputs<'_>) -> Plan {
    if matches!(i.secret, SecretState::Foreign) {
        return Plan::Conflict;
    }
    let kept = kept(i);
    if i.spec.suspend == Some(true) {
        return Plan::Suspended { kept };
    }
    let spec_changed_since_failure = i.status.observed_generation != i.generation;
    if let Some(until) = status::retry_due(i.status, i.seed)
        && i.now < until
        && !spec_changed_since_failure
    {
        return Plan::Backoff { until, kept };
    }
    let rotate = |why: Why, kept: Option<Kept>| {
        if matches!(i.secret, SecretState::Ours(o) if o.immutable) {
            Plan::Immutable { why, kept }
        } else {
            Plan::Rotate {
                why,
                identity: reusable_identity(i),
                kept,
            }
        }
    };
    let Some(k) = kept else {
        let why = match i.secret {
            SecretState::Ours(o) if o.intact => Why::SpecChanged,
            SecretState::Ours(_) => Why::Drift,
            _ => Why::Initial,
        };
        return rotate(why, None);
    };
    let mut forced_at = None;
    if let Some(token) = i.force_token
        && k.provenance.force_token.as_deref() != Some(token)
    {
        match i.force_not_before {
            Some(t) if i.now < t => forced_at = Some(t),
            _ => return rotate(Why::Forced, Some(k)),
        }
    }
    let mut wake = k.renewal;
    if i.now >= k.renewal {
        // Overdue when we started (e.g. after downtime): take this resource's slot.
        let slot = startup_slot(i.started, k.expiration, i.seed);
        if k.renewal < i.started && i.now < slot {
            wake = slot;
        } else {
            return rotate(Why::Renewal, Some(k));
        }
    }
    let repair = match i.secret {
        SecretState::Ours(o) => !o.immutable && (!o.current_layout || !o.template_applied),
        _ => false,
    };
    Plan::Wait {
        kept: k,
        wake: forced_at.map_or(wake, |t| t.min(wake)),
        repair,
        forced_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::CognitoUnauthCredentialStatus as Status;
    use crate::crd::conditions::reason;
    use crate::reconcile::secret::Observed;
    use crate::reconcile::status::time;

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

    /// Our Secret with credentials issued at `issued` for `lifetime` seconds.
    fn ours(issued: i64, lifetime: i64) -> Observed {
        Observed {
            owned: true,
            intact: true,
            current_layout: true,
            template_applied: true,
            immutable: false,
            expiration: Some(at(issued + lifetime)),
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
                session: None,
                assumed_role_arn: None,
                issued_at: at(issued),
                force_token: None,
            }),
        }
    }

    const ROLE: &str = "arn:aws:iam::123456789012:role/guest-full";

    fn basic_spec() -> CognitoUnauthCredentialSpec {
        CognitoUnauthCredentialSpec {
            flow: Flow::Basic,
            role_arn: Some(ROLE.into()),
            ..spec()
        }
    }

    /// What `basic_spec()` asks AssumeRoleWithWebIdentity for (resource ns/app).
    fn session() -> RoleSession {
        RoleSession {
            role_arn: ROLE.into(),
            session_name: "ns-app".into(),
            duration_seconds: 3600,
        }
    }

    /// Our Secret with credentials of the basic flow, as `basic_spec()` asks.
    fn basic(issued: i64, lifetime: i64) -> SecretState {
        let mut o = ours(issued, lifetime);
        let p = o.provenance.as_mut().unwrap();
        p.session = Some(session());
        p.assumed_role_arn =
            Some("arn:aws:sts::123456789012:assumed-role/guest-full/ns-app".into());
        SecretState::Ours(Box::new(o))
    }

    fn synced() -> Status {
        Status {
            identity_id: Some(ID.into()),
            identity_pool_id: Some(POOL.into()),
            observed_generation: Some(1),
            ..Default::default()
        }
    }

    fn failing(n: i32, last: i64, why: &str) -> Status {
        Status {
            failed_attempts: Some(n),
            last_failure_time: Some(time(at(last))),
            last_failure_reason: Some(why.into()),
            ..synced()
        }
    }

    /// One worked example: the situation, and what the plan must be.
    struct Case {
        name: &'static str,
        now: i64,
        spec: CognitoUnauthCredentialSpec,
        status: Status,
        secret: SecretState,
        force: Option<&'static str>,
        /// A new force-rotate value is honoured from then (seconds from `at(0)`).
        force_not_before: Option<i64>,
        generation: i64,
        started: i64,
        pending: Option<&'static str>,
        /// The plan in a few words (see `brief`).
        want: &'static str,
        /// For plans with a time: the window it must fall in, in seconds from `at(0)`,
        /// worked out by hand from the rules in the docs (not from the code).
        window: Option<(i64, i64)>,
    }

    fn case(name: &'static str, want: &'static str) -> Case {
        Case {
            name,
            now: 10,
            spec: spec(),
            status: synced(),
            secret: SecretState::Ours(Box::new(ours(0, 3600))),
            force: None,
            force_not_before: None,
            generation: 1,
            started: -1_000_000,
            pending: None,
            want,
            window: None,
        }
    }

    /// What a plan comes to, in a few words, and its time if it has one.
    fn brief(p: &Plan) -> (String, Option<Timestamp>) {
        match p {
            Plan::Conflict => ("conflict".into(), None),
            Plan::Suspended { kept } => (format!("suspended kept={}", kept.is_some()), None),
            Plan::Backoff { until, kept } => {
                (format!("backoff kept={}", kept.is_some()), Some(*until))
            }
            Plan::Immutable { why, kept } => {
                (format!("immutable {why:?} kept={}", kept.is_some()), None)
            }
            Plan::Rotate {
                why,
                identity,
                kept,
            } => (
                format!(
                    "rotate {why:?} identity={} kept={}",
                    if identity.is_some() { "reused" } else { "new" },
                    kept.is_some()
                ),
                None,
            ),
            Plan::Wait {
                wake,
                repair,
                forced_at,
                ..
            } => (
                format!("wait repair={repair} forced_at={}", forced_at.is_some()),
                Some(*wake),
            ),
        }
    }

    fn with(f: impl FnOnce(&mut Observed)) -> SecretState {
        let mut o = ours(0, 3600);
        f(&mut o);
        SecretState::Ours(Box::new(o))
    }

    #[test]
    fn worked_examples() {
        let cases = vec![
            Case {
                status: Status::default(),
                secret: SecretState::Absent,
                ..case("first issue", "rotate Initial identity=new kept=false")
            },
            // 1 h lifetime, renewBefore 20 m: renewal at 40 min, less up to 60 s of jitter.
            Case {
                window: Some((2340, 2400)),
                ..case(
                    "fresh credentials wait for renewal",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                now: 2400,
                ..case(
                    "renewal time reached",
                    "rotate Renewal identity=reused kept=true",
                )
            },
            // moto's 90 s lifetime: renewBefore (20 m) is longer, so two thirds (60 s),
            // less up to 5% of the lifetime (4.5 s) of jitter.
            Case {
                now: 1,
                secret: SecretState::Ours(Box::new(ours(0, 90))),
                window: Some((55, 60)),
                ..case(
                    "short lifetime: two thirds",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                secret: SecretState::Foreign,
                ..case("foreign Secret", "conflict")
            },
            Case {
                secret: SecretState::Foreign,
                spec: CognitoUnauthCredentialSpec {
                    suspend: Some(true),
                    ..spec()
                },
                ..case("foreign Secret while suspended", "conflict")
            },
            // A conflict is not an attempt: failures recorded earlier do not change it.
            Case {
                secret: SecretState::Foreign,
                status: failing(7, 0, reason::THROTTLED),
                ..case("foreign Secret after failures", "conflict")
            },
            Case {
                now: 5000,
                spec: CognitoUnauthCredentialSpec {
                    suspend: Some(true),
                    ..spec()
                },
                ..case("suspended, expired", "suspended kept=true")
            },
            Case {
                secret: with(|o| o.intact = false),
                ..case("edited Secret", "rotate Drift identity=reused kept=false")
            },
            Case {
                spec: CognitoUnauthCredentialSpec {
                    custom_role_arn: Some("arn:aws:iam::123456789012:role/x".into()),
                    ..spec()
                },
                ..case(
                    "role changed",
                    "rotate SpecChanged identity=reused kept=false",
                )
            },
            Case {
                spec: CognitoUnauthCredentialSpec {
                    identity_pool_id: "us-east-1:22222222-0000-0000-0000-000000000002".into(),
                    ..spec()
                },
                ..case("pool changed", "rotate SpecChanged identity=new kept=false")
            },
            Case {
                status: Status::default(),
                ..case(
                    "status lost: identity from the Secret",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                status: Status::default(),
                secret: with(|o| o.intact = false),
                ..case(
                    "status lost, Secret edited",
                    "rotate Drift identity=reused kept=false",
                )
            },
            Case {
                status: Status::default(),
                secret: SecretState::Absent,
                pending: Some(ID),
                ..case(
                    "identity saved only in memory",
                    "rotate Initial identity=reused kept=false",
                )
            },
            Case {
                force: Some("2"),
                ..case(
                    "force-rotate, new value",
                    "rotate Forced identity=reused kept=true",
                )
            },
            Case {
                force: Some("1"),
                secret: with(|o| o.provenance.as_mut().unwrap().force_token = Some("1".into())),
                window: Some((2340, 2400)),
                ..case(
                    "force-rotate, value already answered",
                    "wait repair=false forced_at=false",
                )
            },
            // The last forced rotation was at 0; one a minute at most: honoured at 60.
            Case {
                force: Some("2"),
                force_not_before: Some(60),
                window: Some((60, 60)),
                ..case(
                    "force-rotate again within the minimum interval: waits",
                    "wait repair=false forced_at=true",
                )
            },
            Case {
                now: 60,
                force: Some("2"),
                force_not_before: Some(60),
                ..case(
                    "force-rotate again, the interval over",
                    "rotate Forced identity=reused kept=true",
                )
            },
            // Renewal comes first when it is due before the interval ends.
            Case {
                now: 2400,
                force: Some("2"),
                force_not_before: Some(2500),
                ..case(
                    "force-rotate waiting, renewal due",
                    "rotate Renewal identity=reused kept=true",
                )
            },
            // Third transient failure at 100: a 20 s step, equal jitter: 110..120.
            Case {
                now: 101,
                status: failing(3, 100, reason::THROTTLED),
                window: Some((110, 120)),
                ..case("transient failure backs off", "backoff kept=true")
            },
            Case {
                now: 121,
                status: failing(3, 100, reason::THROTTLED),
                window: Some((2340, 2400)),
                ..case(
                    "backoff over, renewal not due",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                now: 101,
                status: failing(3, 100, reason::THROTTLED),
                generation: 2,
                window: Some((2340, 2400)),
                ..case(
                    "spec changed during backoff",
                    "wait repair=false forced_at=false",
                )
            },
            // Terminal: 5 min less up to 20%: 240..300 s after the failure.
            Case {
                now: 1,
                status: failing(1, 0, reason::GUEST_ACCESS_DISABLED),
                secret: SecretState::Absent,
                window: Some((240, 300)),
                ..case("terminal failure waits minutes", "backoff kept=false")
            },
            Case {
                now: 1,
                status: failing(1, 0, reason::NOT_AUTHORIZED),
                secret: SecretState::Absent,
                window: Some((240, 300)),
                ..case("NotAuthorized is terminal", "backoff kept=false")
            },
            // A Secret write refused: transient, first step 5 s: 2.5..5 s.
            Case {
                now: 1,
                status: failing(1, 0, reason::SECRET_WRITE_FAILED),
                secret: SecretState::Absent,
                window: Some((2, 5)),
                ..case("refused write backs off", "backoff kept=false")
            },
            Case {
                now: 2400,
                secret: with(|o| o.immutable = true),
                ..case("immutable Secret at renewal", "immutable Renewal kept=true")
            },
            Case {
                secret: with(|o| o.immutable = true),
                window: Some((2340, 2400)),
                ..case(
                    "immutable Secret, nothing due",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                secret: with(|o| {
                    o.immutable = true;
                    o.current_layout = false;
                }),
                window: Some((2340, 2400)),
                ..case(
                    "immutable Secret in an old layout is left alone",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                secret: with(|o| o.current_layout = false),
                window: Some((2340, 2400)),
                ..case(
                    "old layout repaired with the same credentials",
                    "wait repair=true forced_at=false",
                )
            },
            Case {
                secret: with(|o| o.template_applied = false),
                window: Some((2340, 2400)),
                ..case(
                    "template labels missing",
                    "wait repair=true forced_at=false",
                )
            },
            // Down from 0 to 3000 (renewal at ~40 min was missed): the slot is within
            // min(60 s, half the 600 s left) of the start.
            Case {
                now: 3000,
                started: 3000,
                window: Some((3000, 3060)),
                ..case(
                    "overdue at start: spread",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                now: 3000,
                started: 100,
                ..case(
                    "came due after the start: not delayed",
                    "rotate Renewal identity=reused kept=true",
                )
            },
            // Flow Basic: same contract, other parameters.
            Case {
                spec: basic_spec(),
                status: Status::default(),
                secret: SecretState::Absent,
                ..case(
                    "basic: first issue",
                    "rotate Initial identity=new kept=false",
                )
            },
            Case {
                spec: basic_spec(),
                secret: basic(0, 3600),
                window: Some((2340, 2400)),
                ..case(
                    "basic: fresh credentials wait",
                    "wait repair=false forced_at=false",
                )
            },
            // A 12 h session: renewBefore (20 m) ahead of the real Expiration at 43200,
            // less up to 60 s of jitter.
            Case {
                spec: CognitoUnauthCredentialSpec {
                    session_duration: Some("12h".into()),
                    ..basic_spec()
                },
                secret: {
                    let SecretState::Ours(mut o) = basic(0, 43_200) else {
                        unreachable!()
                    };
                    o.provenance
                        .as_mut()
                        .unwrap()
                        .session
                        .as_mut()
                        .unwrap()
                        .duration_seconds = 43_200;
                    SecretState::Ours(o)
                },
                window: Some((41_940, 42_000)),
                ..case(
                    "basic: 12 h session renews 20 m ahead",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                spec: CognitoUnauthCredentialSpec {
                    session_duration: Some("60m".into()),
                    ..basic_spec()
                },
                secret: basic(0, 3600),
                window: Some((2340, 2400)),
                ..case(
                    "basic: the same duration spelled 60m",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                status: Status::default(),
                spec: basic_spec(),
                secret: basic(0, 3600),
                window: Some((2340, 2400)),
                ..case(
                    "basic: status lost, identity from the Secret",
                    "wait repair=false forced_at=false",
                )
            },
            Case {
                spec: basic_spec(),
                ..case(
                    "switch Enhanced to Basic: once, same identity",
                    "rotate SpecChanged identity=reused kept=false",
                )
            },
            Case {
                secret: basic(0, 3600),
                ..case(
                    "switch Basic to Enhanced: once, same identity",
                    "rotate SpecChanged identity=reused kept=false",
                )
            },
            Case {
                spec: CognitoUnauthCredentialSpec {
                    role_arn: Some("arn:aws:iam::123456789012:role/other".into()),
                    ..basic_spec()
                },
                secret: basic(0, 3600),
                ..case(
                    "basic: role changed",
                    "rotate SpecChanged identity=reused kept=false",
                )
            },
            Case {
                spec: CognitoUnauthCredentialSpec {
                    session_duration: Some("2h".into()),
                    ..basic_spec()
                },
                secret: basic(0, 3600),
                ..case(
                    "basic: sessionDuration changed",
                    "rotate SpecChanged identity=reused kept=false",
                )
            },
            Case {
                spec: CognitoUnauthCredentialSpec {
                    role_session_name: Some("app@cluster-a".into()),
                    ..basic_spec()
                },
                secret: basic(0, 3600),
                ..case(
                    "basic: roleSessionName changed",
                    "rotate SpecChanged identity=reused kept=false",
                )
            },
            Case {
                now: 2400,
                spec: basic_spec(),
                secret: basic(0, 3600),
                ..case(
                    "basic: renewal time reached",
                    "rotate Renewal identity=reused kept=true",
                )
            },
            // The basic flow's refusals are terminal: 240..300 s after the failure.
            Case {
                now: 1,
                spec: basic_spec(),
                status: failing(1, 0, reason::CLASSIC_FLOW_DISABLED),
                secret: SecretState::Absent,
                window: Some((240, 300)),
                ..case("ClassicFlowDisabled is terminal", "backoff kept=false")
            },
            Case {
                now: 1,
                spec: basic_spec(),
                status: failing(1, 0, reason::ROLE_ACCESS_DENIED),
                secret: basic(-100, 3600),
                window: Some((240, 300)),
                ..case("RoleAccessDenied is terminal", "backoff kept=true")
            },
            Case {
                now: 1,
                spec: basic_spec(),
                status: failing(1, 0, reason::INVALID_SESSION_DURATION),
                secret: SecretState::Absent,
                window: Some((240, 300)),
                ..case("InvalidSessionDuration is terminal", "backoff kept=false")
            },
            Case {
                now: 101,
                spec: basic_spec(),
                status: failing(1, 100, reason::INVALID_SESSION_DURATION),
                secret: SecretState::Absent,
                generation: 2,
                ..case(
                    "InvalidSessionDuration, then the spec changes: at once",
                    "rotate Initial identity=reused kept=false",
                )
            },
        ];
        for c in &cases {
            let session = role_session(&c.spec, "ns", "app").unwrap();
            let i = Inputs {
                now: at(c.now),
                spec: &c.spec,
                generation: Some(c.generation),
                status: &c.status,
                secret: &c.secret,
                force_token: c.force,
                force_not_before: c.force_not_before.map(at),
                renew_before: Duration::from_secs(1200),
                seed: "uid",
                started: at(c.started),
                pending_identity: c.pending.map(|id| (POOL, id)),
                session: session.as_ref(),
            };
            let (got, when) = brief(&decide(&i));
            assert_eq!(got, c.want, "{}", c.name);
            if let Some((lo, hi)) = c.window {
                let t = when.unwrap_or_else(|| panic!("{}: no time", c.name));
                assert!(
                    t >= at(lo) && t <= at(hi),
                    "{}: {t} not in {lo}..{hi}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn role_sessions_follow_the_spec_and_sts_rules() {
        assert_eq!(role_session(&spec(), "ns", "app"), Ok(None));
        assert_eq!(
            role_session(&basic_spec(), "ns", "app"),
            Ok(Some(session()))
        );
        let named = CognitoUnauthCredentialSpec {
            role_session_name: Some("given".into()),
            session_duration: Some("15m".into()),
            ..basic_spec()
        };
        let s = role_session(&named, "ns", "app").unwrap().unwrap();
        assert_eq!(
            (s.session_name.as_str(), s.duration_seconds),
            ("given", 900)
        );
        // What admission refuses, refused again (an older CRD could let it in).
        let no_role = CognitoUnauthCredentialSpec {
            role_arn: None,
            ..basic_spec()
        };
        assert_eq!(
            role_session(&no_role, "ns", "app"),
            Err(SpecError::NoRoleArn)
        );
        for bad in ["14m59s", "12h1s", "1 h"] {
            let spec = CognitoUnauthCredentialSpec {
                session_duration: Some(bad.into()),
                ..basic_spec()
            };
            assert!(role_session(&spec, "ns", "app").is_err(), "{bad}");
        }
    }

    #[test]
    fn default_session_names_keep_to_sts_rules() {
        assert_eq!(default_session_name("team-a", "app.v2"), "team-a-app.v2");
        // Longest Kubernetes names: a 63-character namespace, a 253-character name.
        let (ns, name) = ("n".repeat(63), "a".repeat(253));
        let long = default_session_name(&ns, &name);
        let other = default_session_name(&ns, &format!("{}b", "a".repeat(252)));
        for s in [&long, &other] {
            assert_eq!(s.len(), 64, "{s}");
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)),
                "{s}"
            );
        }
        assert_ne!(long, other, "two long names stay apart");
        assert_eq!(long, default_session_name(&ns, &name), "stable");
        assert_eq!(default_session_name("a", "b"), "a-b");
        assert_eq!(default_session_name("ns", "ü"), "ns--");
    }

    #[test]
    fn the_startup_spread_covers_the_minute_and_never_more_than_half_the_life_left() {
        let started = at(3000);
        let slots: Vec<Timestamp> = (0..200)
            .map(|n| startup_slot(started, at(3600), &format!("uid-{n}")))
            .collect();
        assert!(slots.iter().all(|s| *s >= started && *s <= at(3060)));
        let (lo, hi) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
        assert!(hi.duration_since(*lo).as_secs() > 50, "spread {lo}..{hi}");
        // 60 s left: at most 30 s of spread.
        for n in 0..100 {
            assert!(startup_slot(at(3540), at(3600), &format!("uid-{n}")) <= at(3570));
        }
        // Already expired: no delay at all.
        assert_eq!(startup_slot(at(4000), at(3600), "uid"), at(4000));
    }

    /// The status after issuing `prov`'s credentials (what the rotation writes).
    fn issued_status(prov: &Provenance, expiration: Timestamp) -> Status {
        Status {
            identity_id: Some(prov.identity_id.clone()),
            identity_pool_id: Some(prov.identity_pool_id.clone()),
            expiration: Some(time(expiration)),
            assumed_role_arn: prov.assumed_role_arn.clone(),
            ..synced()
        }
    }

    /// A Secret the watch saw is known without a read exactly when it holds what the
    /// status and spec say; then the decision is the same as with the Secret read.
    #[test]
    fn a_seen_secret_is_known_only_when_it_holds_what_the_status_says() {
        use crate::crd::SecretTemplate;
        use crate::reconcile::secret::{Placement, render};
        let owner = crate::reconcile::secret::tests::owner();
        let template = SecretTemplate {
            labels: [("team".to_string(), "a".to_string())].into(),
            annotations: [("note".to_string(), "n".to_string())].into(),
        };
        let mut spec = basic_spec();
        spec.secret_template = Some(template.clone());
        spec.mount_path = Some("/creds/".into());
        let SecretState::Ours(o) = basic(0, 3600) else {
            unreachable!()
        };
        let (creds, mut prov) = (
            o.credentials.clone().unwrap(),
            o.provenance.clone().unwrap(),
        );
        // Issued at sub-second precision, as rotations are.
        prov.issued_at = at(0) + jiff::SignedDuration::from_millis(250);
        prov.force_token = Some("2".into());
        let secret = crate::reconcile::secret::tests::written(render(
            &Placement {
                name: "app",
                namespace: "ns",
                owner: &owner,
                template: Some(&template),
                mount_path: "/creds",
            },
            &creds,
            &prov,
        ));
        let seen = secret::seen(&secret.metadata).expect("an intact Secret has a fingerprint");
        assert_eq!(seen.issued_at, prov.issued_at);
        let status = issued_status(&prov, creds.expiration);
        let known_with =
            |spec: &CognitoUnauthCredentialSpec, status: &Status, force: Option<&str>| {
                known(
                    seen,
                    Whose {
                        uid: "uid-1",
                        namespace: "ns",
                        name: "app",
                    },
                    spec,
                    status,
                    force,
                )
            };
        let o = known_with(&spec, &status, Some("2")).expect("known");
        let read = secret::inspect(&secret, "uid-1", spec.mount_path(), Some(&template));
        assert_eq!(o.provenance, read.provenance);
        assert_eq!(o.expiration, read.expiration);
        assert!(read.intact && read.current_layout && read.template_applied && read.owned);
        assert_eq!(o.credentials, None, "no key material without a read");
        // Same decision as with the Secret read, but for the key material it keeps.
        let decide_on = |o: Observed| {
            let state = SecretState::Ours(Box::new(o));
            let sess = session();
            let i = Inputs {
                now: at(100),
                spec: &spec,
                generation: Some(1),
                status: &status,
                secret: &state,
                force_token: Some("2"),
                force_not_before: None,
                renew_before: Duration::from_secs(600),
                seed: "uid-1",
                started: at(0),
                pending_identity: None,
                session: Some(&sess),
            };
            match decide(&i) {
                Plan::Wait {
                    mut kept,
                    wake,
                    repair,
                    ..
                } => {
                    kept.credentials = None;
                    (kept, wake, repair)
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(decide_on(o), decide_on(read));

        // Anything else, and the Secret is read.
        let other_identity = Status {
            identity_id: Some("us-east-1:22222222-0000-0000-0000-000000000002".into()),
            ..status.clone()
        };
        let other_expiry = Status {
            expiration: Some(time(creds.expiration + jiff::SignedDuration::from_secs(1))),
            ..status.clone()
        };
        let other_pool_in_status = Status {
            identity_pool_id: Some("us-east-1:99999999-0000-0000-0000-000000000009".into()),
            ..status.clone()
        };
        let no_identity = Status {
            identity_id: None,
            ..status.clone()
        };
        for (what, st) in [
            ("another identity", &other_identity),
            ("another expiry", &other_expiry),
            ("another pool in status", &other_pool_in_status),
            ("no identity", &no_identity),
        ] {
            assert_eq!(known_with(&spec, st, Some("2")), None, "{what}");
        }
        assert_eq!(
            known_with(&spec, &status, Some("3")),
            None,
            "a new force token"
        );
        assert_eq!(known_with(&spec, &status, None), None, "the token removed");
        let changed = |f: &dyn Fn(&mut CognitoUnauthCredentialSpec)| {
            let mut s = spec.clone();
            f(&mut s);
            known_with(&s, &status, Some("2"))
        };
        assert!(
            changed(&|s| s.mount_path = Some("/creds".into())).is_some(),
            "same mount path"
        );
        assert_eq!(
            changed(&|s| s.mount_path = Some("/other".into())),
            None,
            "mount path"
        );
        assert_eq!(
            changed(&|s| s.session_duration = Some("2h".into())),
            None,
            "duration"
        );
        assert_eq!(
            changed(&|s| s.role_arn = Some(format!("{ROLE}-2"))),
            None,
            "role"
        );
        assert_eq!(
            changed(&|s| s.role_session_name = Some("x".into())),
            None,
            "session name"
        );
        assert_eq!(
            changed(&|s| s.region = Some("eu-west-1".into())),
            None,
            "region"
        );
        assert_eq!(
            changed(&|s| s.secret_template.as_mut().unwrap().labels.clear()),
            None,
            "template"
        );
        assert_eq!(
            known(
                seen,
                Whose {
                    uid: "uid-2",
                    namespace: "ns",
                    name: "app"
                },
                &spec,
                &status,
                Some("2")
            ),
            None,
            "owner"
        );
        // Someone else's label on the Secret, an edited value, an immutable Secret.
        let mut labelled = secret.clone();
        labelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        let seen_labelled = secret::seen(&labelled.metadata).unwrap();
        assert_eq!(
            known(
                seen_labelled,
                Whose {
                    uid: "uid-1",
                    namespace: "ns",
                    name: "app"
                },
                &spec,
                &status,
                Some("2")
            ),
            None
        );
        // Edited data and immutable show in managedFields (the watch never sees data).
        let edited = crate::reconcile::secret::tests::touched(
            secret.clone(),
            "kubectl-edit",
            serde_json::json!({"f:data": {"f:AWS_ACCESS_KEY_ID": {}}}),
        );
        assert_eq!(secret::seen(&edited.metadata), None);
        let immutable = crate::reconcile::secret::tests::touched(
            secret.clone(),
            "kubectl-edit",
            serde_json::json!({"f:immutable": {}}),
        );
        assert_eq!(secret::seen(&immutable.metadata), None);
        // A Secret written before the mount path was recorded is read (and kept).
        let mut legacy = secret.clone();
        legacy
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(secret::ANN_MOUNT_PATH);
        assert_eq!(secret::seen(&legacy.metadata), None);
    }
}
