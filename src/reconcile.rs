//! One reconcile, in steps: read inputs → decide (pure, `plan`) → fetch from Cognito →
//! render the Secret (pure, `secret`) → apply it → write status (only when it changed).
//!
//! Cognito failures are not reconcile errors: they become the `Ready` condition, an
//! event and a scheduled retry (persisted in status, so a restart keeps the backoff and
//! our own status write does not cause another call). Only Kubernetes API failures are
//! returned as errors, and `error_policy` retries those with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::cognito::{Cognito, CognitoError};
use crate::crd::{
    CognitoUnauthCredential, CognitoUnauthCredentialStatus, FORCE_ROTATE_ANNOTATION,
    RolloutRestartStatus,
};
use crate::events::{Event, EventType, Recorder};
use crate::metrics::Metrics;
use crate::plan::{self, Inputs, Kept, Plan, SecretState, Why};
use crate::restart::{self, Duty};
use crate::schedule;
use crate::secret::{self, Credentials, Owner, Provenance};
use crate::status::{self, reason, show, time};

/// Field manager for every write, and the events' reporting controller.
pub const MANAGER: &str = "cognito-unauth-controller";

/// Failures that make a reconcile return an error (and retry with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
    #[error("the resource has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// A short, fixed label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "kube_conflict",
            Error::Kube(_) => "kube_api",
            Error::MissingField(_) => "invalid_object",
        }
    }
}

/// What every reconcile shares.
pub struct Context<C> {
    pub client: kube::Client,
    pub cognito: C,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive API failures per object, for `error_policy`'s backoff.
    api_failures: Mutex<HashMap<String, u32>>,
    /// Status we wrote that the watch cache may not show yet: resourceVersion and status.
    written: Mutex<HashMap<String, (u64, CognitoUnauthCredentialStatus)>>,
    /// When reconciling (re)started, in Unix seconds: see `plan::startup_slot`.
    started: AtomicI64,
}

impl<C: Cognito> Context<C> {
    pub fn new(
        client: kube::Client,
        cognito: C,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            cognito,
            recorder,
            metrics,
            api_failures: Mutex::default(),
            written: Mutex::default(),
            started: AtomicI64::new(Timestamp::now().as_second()),
        }
    }

    /// Records that reconciling starts now (at start-up, or on becoming the leader).
    pub fn mark_started(&self) {
        self.started
            .store(Timestamp::now().as_second(), Ordering::Relaxed);
    }

    fn started(&self) -> Timestamp {
        Timestamp::from_second(self.started.load(Ordering::Relaxed))
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        lock(&self.api_failures)
    }

    /// The newest status we know: the cached object's, unless we wrote a newer one the
    /// watch has not delivered yet. Deciding on a stale status would repeat a Cognito
    /// call or a write that already happened.
    fn freshest_status(&self, obj: &CognitoUnauthCredential) -> CognitoUnauthCredentialStatus {
        let mut written = lock(&self.written);
        let k = key(obj);
        let cached_rv = obj.resource_version().and_then(|v| v.parse::<u64>().ok());
        if let Some((rv, st)) = written.get(&k) {
            if cached_rv.is_some_and(|c| c < *rv) {
                return st.clone();
            }
            written.remove(&k);
        }
        obj.status.clone().unwrap_or_default()
    }

    /// Writes status with server-side apply, only when it changed.
    async fn write_status(
        &self,
        api: &Api<CognitoUnauthCredential>,
        obj: &CognitoUnauthCredential,
        old: &CognitoUnauthCredentialStatus,
        new: &CognitoUnauthCredentialStatus,
    ) -> Result<(), Error> {
        if old == new {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": CognitoUnauthCredential::api_version(&()),
            "kind": CognitoUnauthCredential::kind(&()),
            "status": new,
        });
        let written = api
            .patch_status(
                &obj.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::Kube)?;
        if let Some(rv) = written
            .resource_version()
            .and_then(|v| v.parse::<u64>().ok())
        {
            lock(&self.written).insert(key(obj), (rv, new.clone()));
        }
        Ok(())
    }

    async fn event(
        &self,
        obj: &CognitoUnauthCredential,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason,
            note: &note,
            action: "Reconcile",
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn key(obj: &CognitoUnauthCredential) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Retries after Kubernetes API errors: capped exponential backoff with jitter.
pub fn error_policy<C: Cognito>(
    obj: Arc<CognitoUnauthCredential>,
    err: &Error,
    ctx: Arc<Context<C>>,
) -> Action {
    let n = {
        let mut f = ctx.failures();
        let n = f.entry(key(&obj)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = schedule::backoff(n, obj.uid().as_deref().unwrap_or_default());
    ctx.metrics.reconcile_error(err.metric_label());
    warn!(error = %err, label = err.metric_label(), attempt = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Requeue a little after `at` (never in the past, never immediately).
fn requeue_at(now: Timestamp, at: Timestamp) -> Action {
    Action::requeue(schedule::until(now, at) + Duration::from_millis(200))
}

#[tracing::instrument(skip_all, fields(namespace = obj.namespace(), name = %obj.name_any()))]
pub async fn reconcile<C: Cognito>(
    obj: Arc<CognitoUnauthCredential>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    ctx.metrics.reconciled();
    let result = reconcile_inner(&obj, &ctx).await;
    if result.is_ok() {
        ctx.failures().remove(&key(&obj));
    }
    result
}

async fn reconcile_inner<C: Cognito>(
    obj: &CognitoUnauthCredential,
    ctx: &Context<C>,
) -> Result<Action, Error> {
    if obj.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the Secret through its owner reference.
        lock(&ctx.written).remove(&key(obj));
        ctx.metrics
            .forget(&obj.namespace().unwrap_or_default(), &obj.name_any());
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().ok_or(Error::MissingField("namespace"))?;
    let uid = obj.uid().ok_or(Error::MissingField("uid"))?;
    let name = obj.name_any();
    let now = Timestamp::now();
    let old = ctx.freshest_status(obj);
    let secret_name = obj.spec.secret_name.clone().unwrap_or_else(|| name.clone());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let api: Api<CognitoUnauthCredential> = Api::namespaced(ctx.client.clone(), &ns);

    let mut next = old.clone();
    next.secret_name = Some(secret_name.clone());
    next.observed_generation = obj.metadata.generation;
    let generation = obj.metadata.generation;

    let renew_before = match schedule::parse_go_duration(obj.spec.renew_before()) {
        Ok(d) => d,
        Err(e) => {
            // Admission refuses this; an older CRD or a direct etcd write could still let it in.
            set_ready(
                &mut next,
                false,
                reason::INVALID_SPEC,
                e.to_string(),
                generation,
                now,
                &old,
            );
            ctx.write_status(&api, obj, &old, &next).await?;
            return Ok(Action::await_change());
        }
    };

    let existing = secrets.get_opt(&secret_name).await.map_err(Error::Kube)?;
    let secret_state = match &existing {
        None => SecretState::Absent,
        Some(s) => {
            let o = secret::inspect(s, &uid, obj.spec.mount_path());
            if o.owned {
                SecretState::Ours(Box::new(o))
            } else {
                SecretState::Foreign
            }
        }
    };
    let inputs = Inputs {
        now,
        spec: &obj.spec,
        generation,
        status: &old,
        secret: &secret_state,
        force_token: obj
            .annotations()
            .get(FORCE_ROTATE_ANNOTATION)
            .map(String::as_str),
        renew_before,
        seed: &uid,
        started: ctx.started(),
    };
    let kept = plan::kept(&inputs);
    let decision = plan::decide(&inputs);
    debug!(plan = ?decision, "decided");

    let action = match decision {
        Plan::Conflict => {
            let msg = format!(
                "Secret {secret_name} exists and is not owned by this resource; it is left untouched. Delete it or choose another spec.secretName."
            );
            if status::ready_of(&old).map(|c| c.reason.as_str()) != Some(reason::SECRET_CONFLICT) {
                ctx.event(
                    obj,
                    EventType::Warning,
                    reason::SECRET_CONFLICT,
                    msg.clone(),
                )
                .await;
            }
            let delay = record_failure(&mut next, &old, reason::SECRET_CONFLICT, now, &uid);
            set_ready(
                &mut next,
                false,
                reason::SECRET_CONFLICT,
                msg,
                generation,
                now,
                &old,
            );
            Action::requeue(delay)
        }
        Plan::Suspended => {
            next.renewal_time = None;
            match &kept {
                Some(k) if !k.expired(now) => {
                    let exp = k.credentials.expiration;
                    next.expiration = Some(time(exp));
                    let msg = format!(
                        "Rotation is suspended; the Secret holds credentials valid until {}",
                        show(exp)
                    );
                    set_ready(
                        &mut next,
                        true,
                        reason::SUSPENDED,
                        msg,
                        generation,
                        now,
                        &old,
                    );
                    requeue_at(now, exp)
                }
                _ => {
                    let msg =
                        "Rotation is suspended; the Secret holds no valid credentials".to_string();
                    set_ready(
                        &mut next,
                        false,
                        reason::SUSPENDED,
                        msg,
                        generation,
                        now,
                        &old,
                    );
                    Action::await_change()
                }
            }
        }
        Plan::Backoff { until } => {
            if let Some(k) = kept.as_ref().filter(|k| k.expired(now)) {
                let last = old.last_failure_reason.clone().unwrap_or_default();
                let msg = format!(
                    "The credentials in the Secret expired at {}; the last attempt failed ({last}); next attempt at {}",
                    show(k.credentials.expiration),
                    show(until)
                );
                set_ready(
                    &mut next,
                    false,
                    reason::EXPIRED,
                    msg,
                    generation,
                    now,
                    &old,
                );
            }
            let wake = match &kept {
                Some(k) if !k.expired(now) => until.min(k.credentials.expiration),
                _ => until,
            };
            requeue_at(now, wake)
        }
        Plan::Wait { renewal } => {
            let Some(k) = kept else {
                return Err(Error::MissingField("kept credentials"));
            };
            let layout_current = matches!(&secret_state, SecretState::Ours(o) if o.current_layout);
            if let Some(s) = &existing
                && (!template_applied(s, obj) || !layout_current)
            {
                apply_secret(
                    &secrets,
                    obj,
                    &secret_name,
                    &uid,
                    &k.credentials,
                    &k.provenance,
                    existing.as_ref(),
                )
                .await?;
            }
            mark_issued(&mut next, &k, generation, now, &old);
            if obj.spec.verify == Some(true) {
                // Verification just turned on (or the spec changed): check the kept
                // credentials once; a failure is reported, the Secret stays.
                let checked = status::condition_of(&old, status::VERIFIED)
                    .is_some_and(|c| c.observed_generation == generation);
                if !checked {
                    let r = ctx
                        .cognito
                        .caller_identity(obj.spec.region(), &k.credentials)
                        .await;
                    mark_verified(
                        &mut next,
                        r.as_ref().map(String::as_str),
                        generation,
                        now,
                        &old,
                    );
                }
            } else {
                mark_verified_off(&mut next);
            }
            let retry = roll_out(
                ctx,
                obj,
                &ns,
                k.provenance.issued_at,
                &mut next,
                generation,
                now,
            )
            .await;
            requeue_at(now, retry.map_or(renewal, |r| renewal.min(now + r)))
        }
        Plan::Rotate { why, identity } => {
            rotate(
                ctx,
                obj,
                RotateArgs {
                    why,
                    identity,
                    kept: kept.as_ref(),
                    existing: existing.as_ref(),
                    secret_name: &secret_name,
                    uid: &uid,
                    renew_before,
                    now,
                    api: &api,
                    secrets: &secrets,
                    old: &old,
                    next: &mut next,
                },
            )
            .await?
        }
    };

    ctx.write_status(&api, obj, &old, &next).await?;
    ctx.metrics.observe(&ns, &name, &next);
    Ok(action)
}

struct RotateArgs<'a> {
    why: Why,
    identity: Option<String>,
    kept: Option<&'a Kept>,
    existing: Option<&'a Secret>,
    secret_name: &'a str,
    uid: &'a str,
    renew_before: Duration,
    now: Timestamp,
    api: &'a Api<CognitoUnauthCredential>,
    secrets: &'a Api<Secret>,
    old: &'a CognitoUnauthCredentialStatus,
    next: &'a mut CognitoUnauthCredentialStatus,
}

/// Records a new identity in status at once, so a crash before the Secret is written
/// does not cost another GetId.
async fn remember_identity<C: Cognito>(
    ctx: &Context<C>,
    obj: &CognitoUnauthCredential,
    a: &mut RotateArgs<'_>,
    id: &str,
    recreated: bool,
) -> Result<(), Error> {
    a.next.identity_id = Some(id.to_string());
    a.next.identity_pool_id = Some(obj.spec.identity_pool_id.clone());
    let mut persisted = a.old.clone();
    persisted.identity_id = a.next.identity_id.clone();
    persisted.identity_pool_id = a.next.identity_pool_id.clone();
    ctx.write_status(a.api, obj, a.old, &persisted).await?;
    if recreated {
        let msg = format!("Cognito no longer knows the previous identity; created identity {id}");
        ctx.event(obj, EventType::Warning, "IdentityRecreated", msg)
            .await;
    } else {
        ctx.event(
            obj,
            EventType::Normal,
            "IdentityCreated",
            format!("Created Cognito identity {id}"),
        )
        .await;
    }
    info!(identity = id, recreated, "identity created");
    Ok(())
}

async fn fetch<C: Cognito>(
    ctx: &Context<C>,
    obj: &CognitoUnauthCredential,
    a: &mut RotateArgs<'_>,
) -> Result<Result<(String, Credentials), CognitoError>, Error> {
    let spec = &obj.spec;
    let region = spec.region();
    let role = spec.custom_role_arn.as_deref();
    let reused = a.identity.clone();
    let id = match reused.clone() {
        Some(id) => id,
        None => match ctx.cognito.get_id(region, &spec.identity_pool_id).await {
            Ok(id) => {
                remember_identity(ctx, obj, a, &id, false).await?;
                id
            }
            Err(e) => return Ok(Err(e)),
        },
    };
    match ctx.cognito.get_credentials(region, &id, role).await {
        Ok(c) => Ok(Ok((id, c))),
        Err(CognitoError::IdentityNotFound(_)) if reused.is_some() => {
            let id = match ctx.cognito.get_id(region, &spec.identity_pool_id).await {
                Ok(id) => id,
                Err(e) => return Ok(Err(e)),
            };
            remember_identity(ctx, obj, a, &id, true).await?;
            Ok(ctx
                .cognito
                .get_credentials(region, &id, role)
                .await
                .map(|c| (id, c)))
        }
        Err(e) => Ok(Err(e)),
    }
}

async fn rotate<C: Cognito>(
    ctx: &Context<C>,
    obj: &CognitoUnauthCredential,
    mut a: RotateArgs<'_>,
) -> Result<Action, Error> {
    let generation = obj.metadata.generation;
    let now = a.now;
    let mut fetched = fetch(ctx, obj, &mut a).await?;
    if obj.spec.verify != Some(true) {
        mark_verified_off(a.next);
    } else if let Ok((_, creds)) = &fetched {
        // Verified before they are written: refused credentials never replace good ones.
        let r = ctx.cognito.caller_identity(obj.spec.region(), creds).await;
        mark_verified(
            a.next,
            r.as_ref().map(String::as_str),
            generation,
            now,
            a.old,
        );
        if let Err(e) = r {
            fetched = Err(e);
        }
    }
    match fetched {
        Ok((identity_id, mut creds)) => {
            // The Secret keeps the issue time at full precision (it tells two rotations
            // in one second apart) and the expiration in whole seconds: what is computed
            // now from them equals what is computed later from what is read back, or the
            // next reconcile would see a different status and write it again.
            let issued_at = Timestamp::now();
            creds.expiration = time(creds.expiration).0;
            let prov = Provenance {
                identity_pool_id: obj.spec.identity_pool_id.clone(),
                identity_id: identity_id.clone(),
                region: obj.spec.region().to_string(),
                custom_role_arn: obj.spec.custom_role_arn.clone(),
                issued_at,
                force_token: obj.annotations().get(FORCE_ROTATE_ANNOTATION).cloned(),
            };
            apply_secret(
                a.secrets,
                obj,
                a.secret_name,
                a.uid,
                &creds,
                &prov,
                a.existing,
            )
            .await?;
            let renewal =
                schedule::renewal_time(issued_at, creds.expiration, a.renew_before, a.uid);
            let kept = Kept {
                credentials: creds,
                provenance: prov,
                renewal,
            };
            a.next.identity_id = Some(identity_id);
            a.next.identity_pool_id = Some(obj.spec.identity_pool_id.clone());
            a.next.last_rotation_time = Some(time(issued_at));
            mark_issued(a.next, &kept, generation, now, a.old);
            let msg = format!(
                "Rotated credentials ({}); valid until {}; next rotation at {}",
                a.why.as_str(),
                show(kept.credentials.expiration),
                show(renewal)
            );
            info!(why = a.why.as_str(), expiration = %show(kept.credentials.expiration), renewal = %show(renewal), "credentials rotated");
            ctx.metrics.rotated();
            ctx.event(obj, EventType::Normal, "CredentialsRotated", msg)
                .await;
            remove_previous_secret(a.secrets, a.old, a.secret_name, a.uid).await?;
            let ns = obj.namespace().unwrap_or_default();
            let retry = roll_out(ctx, obj, &ns, issued_at, a.next, generation, now).await;
            Ok(requeue_at(
                now,
                retry.map_or(renewal, |r| renewal.min(now + r)),
            ))
        }
        Err(e) => {
            let delay = record_failure(a.next, a.old, e.reason(), now, a.uid);
            let retry = now + delay;
            // The event's note leaves out the retry time: repeats of one failure fold into
            // one event's series, and an event's note cannot change.
            let (reason, note) = match a.kept {
                Some(k) if k.expired(now) => (
                    reason::EXPIRED,
                    format!(
                        "The credentials in the Secret expired at {}; rotation failed: {e}",
                        show(k.credentials.expiration),
                    ),
                ),
                Some(k) => (
                    e.reason(),
                    format!(
                        "Rotation failed: {e}; the Secret keeps credentials valid until {}",
                        show(k.credentials.expiration),
                    ),
                ),
                None => (e.reason(), format!("Could not get credentials: {e}")),
            };
            let msg = format!("{note}; next attempt at {}", show(retry));
            warn!(reason = e.reason(), error = %e, retry_in = ?delay, "rotation failed");
            ctx.metrics.rotation_failed(e.reason());
            ctx.event(obj, EventType::Warning, "RotationFailed", note)
                .await;
            set_ready(a.next, false, reason, msg, generation, now, a.old);
            let wake = match a.kept {
                Some(k) if !k.expired(now) => retry.min(k.credentials.expiration),
                _ => retry,
            };
            Ok(requeue_at(now, wake))
        }
    }
}

/// How soon a rollout restart that could not be done (forbidden, failed) is retried.
const RESTART_RETRY: Duration = Duration::from_secs(60);

/// Rolls the spec's targets when the credentials in the Secret (issued at `issued_at`)
/// are newer than the ones they were rolled for. Returns a retry delay when a patch
/// must be tried again. Failures are reported (condition, event, metric), never
/// returned: the Secret is good either way.
async fn roll_out<C: Cognito>(
    ctx: &Context<C>,
    obj: &CognitoUnauthCredential,
    ns: &str,
    issued_at: Timestamp,
    next: &mut CognitoUnauthCredentialStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Duration> {
    let targets = &obj.spec.rollout_restart_targets;
    let previous = next.conditions.clone();
    let set = |next: &mut CognitoUnauthCredentialStatus, ok: bool, why: &str, msg: String| {
        let c = status::condition(
            status::ROLLOUT_RESTART,
            ok,
            why,
            msg,
            generation,
            now,
            &previous,
        );
        status::set_condition(&mut next.conditions, c);
    };
    match restart::duty(targets, next.rollout_restart.as_ref(), issued_at) {
        Duty::NoTargets => {
            next.rollout_restart = None;
            status::remove_condition(&mut next.conditions, status::ROLLOUT_RESTART);
            None
        }
        Duty::Done => None,
        Duty::Baseline => {
            next.rollout_restart = Some(RolloutRestartStatus {
                credentials_issued_at: Some(restart::stamp(issued_at)),
                restarted_at: None,
            });
            let msg = format!(
                "The targets start with the credentials issued at {}; they roll when these are replaced",
                show(issued_at)
            );
            set(next, true, reason::NO_ROTATION_YET, msg);
            None
        }
        Duty::Restart { stamp } => {
            let mut outcomes = Vec::with_capacity(targets.len());
            for t in targets {
                let o = restart::patch_target(&ctx.client, ns, t, &stamp, MANAGER).await;
                ctx.metrics.rollout_restart(t.kind.as_str(), o.label());
                outcomes.push((t.clone(), o));
            }
            let sum = restart::summarize(&outcomes, &stamp);
            if let Some(note) = sum.triggered.clone() {
                info!(stamp = %stamp, "rollout restart triggered");
                ctx.event(obj, EventType::Normal, "RolloutRestartTriggered", note)
                    .await;
            }
            if let Some(note) = sum.failed.clone() {
                warn!(reason = sum.reason, "rollout restart incomplete");
                ctx.event(obj, EventType::Warning, "RolloutRestartFailed", note)
                    .await;
            }
            set(next, sum.ok, sum.reason, sum.message);
            if sum.done {
                next.rollout_restart = Some(RolloutRestartStatus {
                    credentials_issued_at: Some(stamp.clone()),
                    restarted_at: Some(stamp),
                });
                None
            } else {
                Some(RESTART_RETRY)
            }
        }
    }
}

/// The `Verified` condition and assumedRoleArn after a GetCallerIdentity.
fn mark_verified(
    next: &mut CognitoUnauthCredentialStatus,
    result: Result<&str, &CognitoError>,
    generation: Option<i64>,
    now: Timestamp,
    old: &CognitoUnauthCredentialStatus,
) {
    let c = match result {
        Ok(arn) => {
            next.assumed_role_arn = Some(arn.to_string());
            status::condition(
                status::VERIFIED,
                true,
                reason::CALLER_IDENTITY_VERIFIED,
                format!("STS GetCallerIdentity accepted the credentials as {arn}"),
                generation,
                now,
                &old.conditions,
            )
        }
        Err(e) => status::condition(
            status::VERIFIED,
            false,
            reason::VERIFICATION_FAILED,
            e.to_string(),
            generation,
            now,
            &old.conditions,
        ),
    };
    status::set_condition(&mut next.conditions, c);
}

/// Without spec.verify: no `Verified` condition, no assumedRoleArn.
fn mark_verified_off(next: &mut CognitoUnauthCredentialStatus) {
    next.assumed_role_arn = None;
    status::remove_condition(&mut next.conditions, status::VERIFIED);
}

/// Counts a failed attempt in status; returns the delay before the next one.
fn record_failure(
    next: &mut CognitoUnauthCredentialStatus,
    old: &CognitoUnauthCredentialStatus,
    why: &str,
    now: Timestamp,
    seed: &str,
) -> Duration {
    let failed = old.failed_attempts.unwrap_or(0).saturating_add(1);
    next.failed_attempts = Some(failed);
    next.last_failure_time = Some(time(now));
    next.last_failure_reason = Some(why.to_string());
    // The same rule the next reconcile uses to decide whether the retry is due, from
    // the same (whole-second) stored time, so the wake-up and the decision agree.
    plan::retry_due(next, seed).map_or(schedule::BACKOFF_BASE, |due| schedule::until(now, due))
}

/// Status for good credentials in the Secret.
fn mark_issued(
    next: &mut CognitoUnauthCredentialStatus,
    k: &Kept,
    generation: Option<i64>,
    now: Timestamp,
    old: &CognitoUnauthCredentialStatus,
) {
    if next.identity_id.is_none()
        || next.identity_pool_id.as_deref() != Some(k.provenance.identity_pool_id.as_str())
    {
        next.identity_id = Some(k.provenance.identity_id.clone());
        next.identity_pool_id = Some(k.provenance.identity_pool_id.clone());
    }
    if next.last_rotation_time.is_none() {
        next.last_rotation_time = Some(time(k.provenance.issued_at));
    }
    next.expiration = Some(time(k.credentials.expiration));
    next.renewal_time = Some(time(k.renewal));
    next.failed_attempts = None;
    next.last_failure_time = None;
    next.last_failure_reason = None;
    let msg = format!(
        "Credentials valid until {}; next rotation at {}",
        show(k.credentials.expiration),
        show(k.renewal)
    );
    set_ready(
        next,
        true,
        reason::CREDENTIALS_ISSUED,
        msg,
        generation,
        now,
        old,
    );
}

fn set_ready(
    next: &mut CognitoUnauthCredentialStatus,
    ok: bool,
    why: &str,
    msg: String,
    generation: Option<i64>,
    now: Timestamp,
    old: &CognitoUnauthCredentialStatus,
) {
    let c = status::ready(ok, why, msg, generation, now, &old.conditions);
    status::set_condition(&mut next.conditions, c);
}

/// Whether the Secret carries the template's labels and annotations.
fn template_applied(s: &Secret, obj: &CognitoUnauthCredential) -> bool {
    let Some(t) = &obj.spec.secret_template else {
        return true;
    };
    let has = |have: &Option<std::collections::BTreeMap<String, String>>,
               want: &std::collections::BTreeMap<String, String>| {
        want.iter()
            .filter(|(k, _)| {
                !k.starts_with("cognito.kubecred.io/") && k.as_str() != secret::MANAGED_BY_LABEL
            })
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    has(&s.metadata.labels, &t.labels) && has(&s.metadata.annotations, &t.annotations)
}

/// Creates the Secret, or applies our fields to ours (uid as the precondition). Never
/// takes over a Secret someone else created.
async fn apply_secret(
    secrets: &Api<Secret>,
    obj: &CognitoUnauthCredential,
    name: &str,
    uid: &str,
    creds: &Credentials,
    prov: &Provenance,
    existing: Option<&Secret>,
) -> Result<(), Error> {
    let owner = Owner {
        api_version: CognitoUnauthCredential::api_version(&()).to_string(),
        kind: CognitoUnauthCredential::kind(&()).to_string(),
        name: obj.name_any(),
        uid: uid.to_string(),
    };
    let ns = obj.namespace().unwrap_or_default();
    let mut desired = secret::render(
        name,
        &ns,
        &owner,
        obj.spec.secret_template.as_ref(),
        creds,
        prov,
        obj.spec.mount_path(),
    );
    match existing {
        None => {
            let pp = PostParams {
                field_manager: Some(MANAGER.to_string()),
                ..PostParams::default()
            };
            // Never takes over: if someone created it meanwhile, this fails with 409 and
            // the next reconcile reports the conflict.
            secrets.create(&pp, &desired).await.map_err(Error::Kube)?;
        }
        Some(current) => {
            // Server-side apply of our fields only, forced: a concurrent writer of other
            // fields (labels, annotations) neither conflicts with us nor loses its change.
            // The uid is the precondition: if the Secret was replaced by another object of
            // the same name, the API server refuses, and we never write into it.
            desired.metadata.uid = current.metadata.uid.clone();
            let mut value = serde_json::to_value(&desired)
                .map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
            value["apiVersion"] = json!("v1");
            value["kind"] = json!("Secret");
            secrets
                .patch(
                    name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&value),
                )
                .await
                .map_err(Error::Kube)?;
        }
    }
    Ok(())
}

/// After spec.secretName changed: delete the Secret we wrote under the old name.
async fn remove_previous_secret(
    secrets: &Api<Secret>,
    old: &CognitoUnauthCredentialStatus,
    current: &str,
    uid: &str,
) -> Result<(), Error> {
    let Some(prev) = old.secret_name.as_deref().filter(|p| *p != current) else {
        return Ok(());
    };
    let Some(s) = secrets.get_opt(prev).await.map_err(Error::Kube)? else {
        return Ok(());
    };
    if !secret::inspect(&s, uid, crate::crd::DEFAULT_MOUNT_PATH).owned {
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: s.metadata.uid.clone(),
            resource_version: s.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match secrets.delete(prev, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}
