//! One resource's reconcile. Owns the decisions, each pure and unit-tested: what to do
//! ([`plan`]), when ([`schedule`]), the Secret's bytes and what a Secret read back says
//! ([`secret`]), the status and its conditions ([`status`]), what the watch saw of our
//! Secrets ([`seen`]), whose turn it is ([`fair`]) and which workloads to restart
//! ([`restart`]); and the steps below that carry them out against the API server and
//! Cognito. May use: [`crate::crd`], [`crate::common`], [`crate::aws`]. Knows nothing of
//! the webhook or of how the controller is wired ([`crate::runtime`] calls in here).
//!
//! One reconcile, in steps: read inputs → decide (pure, `plan`) → fetch from Cognito →
//! render the Secret (pure, `secret`) → apply it → write status (only when it changed).
//!
//! A [`Reconciliation`] holds one reconcile's inputs and the status being built, with
//! one short method per plan branch. Cognito failures and Secret writes the API server
//! refuses are not reconcile errors: they become the `Ready` condition, an event and a
//! retry scheduled in status (so a restart keeps the backoff, and our own status write
//! does not cause another attempt). Only other Kubernetes API failures are returned as
//! errors, and `error_policy` retries those with backoff.

pub mod fair;
#[cfg(test)]
mod io_tests;
#[cfg(test)]
mod mock;
pub mod plan;
#[cfg(test)]
mod properties;
pub mod restart;
pub mod schedule;
pub mod secret;
pub mod seen;
pub mod status;

use crate::crd::conditions;
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

use crate::aws::cognito::{Cognito, CognitoError};
use crate::aws::cognito::{Credentials, RoleSession};
use crate::common::bounded::Users;
use crate::common::events::{Event, EventType, Recorder};
use crate::common::metrics::Metrics;
use crate::crd::conditions::reason;
use crate::crd::{
    CognitoUnauthCredential, CognitoUnauthCredentialStatus, FORCE_ROTATE_ANNOTATION,
    RolloutRestartStatus,
};
use crate::lock;
use fair::Gate;
use plan::{Inputs, Kept, Plan, SecretState, Why};
use restart::Duty;
use secret::{Observed, Owner, Provenance};
use seen::SeenSecrets;
use status::{Builder, show, time};

/// Field manager for every write, and the events' reporting controller.
pub const MANAGER: &str = crate::reconcile::secret::FIELD_MANAGER;

/// Failures that make a reconcile return an error (and retry with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
    #[error("the resource has no {0}")]
    MissingField(&'static str),
    /// The Secret read just before a write is not ours (replaced since the watch saw it).
    #[error("the Secret was replaced by one this resource does not own")]
    SecretTaken,
}

impl Error {
    /// A short, fixed label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "kube_conflict",
            Error::Kube(_) => "kube_api",
            Error::MissingField(_) => "invalid_object",
            Error::SecretTaken => "secret_conflict",
        }
    }
}

/// What this controller remembers about one resource between reconciles. An entry
/// exists only while there is something to remember, and goes with the resource.
#[derive(Debug, Default)]
struct Memory {
    uid: String,
    /// Consecutive Kubernetes API failures, for `error_policy`'s backoff.
    api_failures: u32,
    /// Status we wrote that the watch cache may not show yet.
    written: Option<Written>,
    /// An identity (pool, id) from GetId that could not be saved in status yet.
    pending_identity: Option<(String, String)>,
    /// When this process last rotated for a new force-rotate value (forgotten with the
    /// process: a restart allows one forced rotation more).
    last_forced: Option<Timestamp>,
}

impl Memory {
    fn is_empty(&self) -> bool {
        self.api_failures == 0
            && self.written.is_none()
            && self.pending_identity.is_none()
            && self.last_forced.is_none()
    }
}

/// A status we wrote, and the statuses it replaced that the cache may still show.
#[derive(Debug)]
struct Written {
    status: CognitoUnauthCredentialStatus,
    superseded: Vec<CognitoUnauthCredentialStatus>,
}

/// How many replaced statuses are remembered while the cache lags.
const SUPERSEDED_KEPT: usize = 8;

/// What every reconcile shares.
pub struct Context<C> {
    pub client: kube::Client,
    pub cognito: C,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// One entry per resource that needs remembering, keyed `namespace/name`.
    memory: Mutex<HashMap<String, Memory>>,
    /// When reconciling (re)started, in Unix seconds: see `plan::startup_slot`.
    started: AtomicI64,
    /// What the watch saw of our Secrets (filled by `controller`).
    pub seen: SeenSecrets,
    /// Whose turn it is to reconcile (round-robin between namespaces).
    pub gate: Gate,
    /// The region each resource uses: what the Cognito client keeps for a region goes
    /// when its last resource leaves it.
    regions: Mutex<Users>,
    /// The least time between two forced rotations of one resource.
    force_interval: Duration,
}

/// How the reconciles share the controller (from `controller::Settings`).
#[derive(Debug, Clone, Copy)]
pub struct Sharing {
    /// Reconciles running at once, handed out round-robin between namespaces.
    pub slots: usize,
    /// The least time between two forced rotations of one resource.
    pub force_interval: Duration,
}

impl<C: Cognito> Context<C> {
    pub fn new(
        client: kube::Client,
        cognito: C,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        sharing: Sharing,
    ) -> Self {
        Self {
            client,
            cognito,
            recorder,
            metrics,
            memory: Mutex::default(),
            started: AtomicI64::new(Timestamp::now().as_second()),
            seen: SeenSecrets::default(),
            gate: Gate::new(sharing.slots),
            regions: Mutex::default(),
            force_interval: sharing.force_interval,
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

    /// Runs `f` on the memory of `obj`, creating it (a resource of another uid under the
    /// same name starts afresh), dropping the entry when nothing is left in it.
    fn remember<R>(&self, obj: &CognitoUnauthCredential, f: impl FnOnce(&mut Memory) -> R) -> R {
        let uid = obj.uid().unwrap_or_default();
        let mut all = lock(&self.memory);
        let k = key(obj);
        let m = all.entry(k.clone()).or_default();
        if m.uid != uid {
            *m = Memory {
                uid,
                ..Memory::default()
            };
        }
        let r = f(m);
        self.settle(&mut all, &k);
        r
    }

    /// Runs `f` on the memory of `obj` only if there is some: the common case, a settled
    /// resource, costs one lookup and allocates nothing in the map.
    fn amend<R>(
        &self,
        obj: &CognitoUnauthCredential,
        f: impl FnOnce(&mut Memory) -> R,
    ) -> Option<R> {
        let uid = obj.uid().unwrap_or_default();
        let mut all = lock(&self.memory);
        let k = key(obj);
        let m = all.get_mut(&k).filter(|m| m.uid == uid)?;
        let r = f(m);
        self.settle(&mut all, &k);
        Some(r)
    }

    /// Drops the entry `k` when nothing is left in it; publishes the count.
    fn settle(&self, all: &mut HashMap<String, Memory>, k: &str) {
        if all.get(k).is_some_and(Memory::is_empty) {
            all.remove(k);
        }
        self.metrics.tracked_objects(all.len());
    }

    /// Forgets a resource that is gone: its memory and its metric series.
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        let mut all = lock(&self.memory);
        all.remove(&key);
        self.metrics.tracked_objects(all.len());
        self.metrics.forget(namespace, name);
        drop(all);
        let unused = lock(&self.regions).remove(&key);
        if let Some(region) = unused {
            self.cognito.forget_region(&region);
        }
    }

    /// `obj` uses the region its spec names now; the one it left goes if nobody uses it.
    fn uses_region(&self, obj: &CognitoUnauthCredential) {
        let unused = lock(&self.regions).set(&key(obj), obj.spec.region());
        if let Some(region) = unused {
            self.cognito.forget_region(&region);
        }
    }

    /// The newest status we know: the cached object's, unless it is one our own write
    /// replaced and the watch has not delivered that write yet. Deciding on a stale
    /// status would repeat a Cognito call or a write that already happened. Statuses
    /// are compared by content: resourceVersions are opaque and have no order.
    fn freshest_status(&self, obj: &CognitoUnauthCredential) -> CognitoUnauthCredentialStatus {
        let cached = obj.status.clone().unwrap_or_default();
        self.amend(obj, |m| {
            let (fresh, lagging) = freshest(m.written.as_ref(), cached.clone());
            if !lagging {
                m.written = None;
            }
            fresh
        })
        .unwrap_or(cached)
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
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::Kube)?;
        self.remember(obj, |m| {
            m.written = Some(supersede(m.written.take(), old, new))
        });
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

/// The status to decide on: the cached one, unless it is one that our last write
/// replaced (the cache lags: then what we wrote, and `true`). Once the cache shows our
/// write, or a status of someone else's, it has caught up (`false`: forget the write).
fn freshest(
    written: Option<&Written>,
    cached: CognitoUnauthCredentialStatus,
) -> (CognitoUnauthCredentialStatus, bool) {
    match written {
        Some(w) if w.superseded.contains(&cached) => (w.status.clone(), true),
        _ => (cached, false),
    }
}

/// What we remember after writing `new` over `old`: every status the cache may still show
/// instead of `new` is superseded. That is `old`, and also the status we wrote before in
/// this same reconcile (a new identity is saved on its own before the rotation's status:
/// the cache may deliver that one after both writes, and it must not be taken for someone
/// else's).
fn supersede(
    written: Option<Written>,
    old: &CognitoUnauthCredentialStatus,
    new: &CognitoUnauthCredentialStatus,
) -> Written {
    let (mut superseded, previous) = match written {
        Some(w) => (w.superseded, Some(w.status)),
        None => (Vec::new(), None),
    };
    for s in std::iter::once(old.clone()).chain(previous) {
        if s != *new && !superseded.contains(&s) {
            superseded.push(s);
        }
    }
    while superseded.len() > SUPERSEDED_KEPT {
        superseded.remove(0);
    }
    Written {
        status: new.clone(),
        superseded,
    }
}

/// The resource's force-rotate annotation.
fn force_token(obj: &CognitoUnauthCredential) -> Option<&str> {
    obj.annotations()
        .get(FORCE_ROTATE_ANNOTATION)
        .map(String::as_str)
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
    let n = ctx.remember(&obj, |m| {
        m.api_failures = m.api_failures.saturating_add(1);
        m.api_failures
    });
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
    // This namespace's turn first (fair::Gate: kube-runtime starts every due reconcile,
    // the gate lets `slots` of them run, round-robin between namespaces). The reconcile
    // is boxed only once it may run, so one that waits is a small future.
    let namespace = obj.metadata.namespace.as_deref().unwrap_or_default();
    let Some(_pass) = ctx.gate.enter(namespace).await else {
        // Shutting down (the gate is closed): this one is left for the next start.
        return Ok(Action::await_change());
    };
    Box::pin(reconcile_now(obj, ctx)).await
}

async fn reconcile_now<C: Cognito>(
    obj: Arc<CognitoUnauthCredential>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    ctx.metrics.reconciled();
    ctx.uses_region(&obj);
    if obj.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the Secret through its owner reference.
        ctx.forget(&obj.namespace().unwrap_or_default(), &obj.name_any());
        return Ok(Action::await_change());
    }
    let result = match Reconciliation::load(&obj, &ctx).await {
        Ok(Loaded::Ready(r)) => r.run().await,
        Ok(Loaded::Done(action)) => Ok(action),
        Err(e) => Err(e),
    };
    if result.is_ok() {
        ctx.amend(&obj, |m| m.api_failures = 0);
    }
    result
}

/// Writes our fields of the Secret `desired` names, by server-side apply, forced: a
/// concurrent writer of other fields (labels, annotations, its own data keys) neither
/// conflicts with us nor loses its change. `desired.metadata.uid` (the uid of the Secret
/// read as ours) is the precondition: if the Secret was deleted and another created under
/// its name since that read, the API server refuses with 409 Conflict and nothing is
/// written into it (tests/controller/main.rs recreates one between read and write).
pub async fn apply_secret(secrets: &Api<Secret>, desired: &Secret) -> Result<Secret, Error> {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    // k8s-openapi writes apiVersion and kind, as an apply needs.
    match secrets
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
    {
        Err(kube::Error::Api(s)) if uid_refused(&s) => Err(Error::SecretTaken),
        r => r.map_err(Error::Kube),
    }
}

/// The API server's answer to a write whose uid precondition failed: 422 with a cause on
/// `metadata.uid` ("field is immutable") for an apply, 409 for an update.
fn uid_refused(s: &kube::core::Status) -> bool {
    s.code == 409
        || (s.code == 422
            && s.details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.field == "metadata.uid")))
}

/// How soon a Secret we do not own (not in our watch) is looked at again.
const BLOCKED_RECHECK: Duration = Duration::from_secs(60);
/// How soon a rollout restart that could not be done (forbidden, failed) is retried.
const RESTART_RETRY: Duration = Duration::from_secs(60);
/// How soon verification is asked again after STS gave no answer.
const VERIFY_RETRY: Duration = Duration::from_secs(60);
/// How soon the deletion of a Secret under a former name is tried again.
const CLEANUP_RETRY: Duration = Duration::from_secs(60);
/// How soon to look again when the Secret changed between the watch's news and a read
/// (the watch brings the change too; this only bounds the wait).
const CHANGED_RECHECK: Duration = Duration::from_secs(1);

/// The Secret under the current name, as far as this reconcile knows it.
enum Existing {
    /// Read in this reconcile (None: there is none).
    Read(Option<Box<Secret>>),
    /// Not read: the watch saw it hold exactly what the status says (`plan::known`).
    Known(Box<Observed>),
}

enum Loaded<'a, C> {
    Ready(Box<Reconciliation<'a, C>>),
    Done(Action),
}

/// One reconcile of one resource: its inputs, and the status being built.
struct Reconciliation<'a, C> {
    ctx: &'a Context<C>,
    obj: &'a CognitoUnauthCredential,
    ns: String,
    uid: String,
    secret_name: String,
    secrets: Api<Secret>,
    api: Api<CognitoUnauthCredential>,
    now: Timestamp,
    renew_before: Duration,
    /// Flow Basic: what AssumeRoleWithWebIdentity is asked for; None for Enhanced.
    session: Option<RoleSession>,
    existing: Existing,
    status: Builder,
    /// An identity GetId created in this reconcile (said in the rotation's event).
    created: Option<String>,
}

/// New credentials, and what they came from.
struct Fetched {
    identity_id: String,
    credentials: Credentials,
    /// Flow Basic: AssumeRoleWithWebIdentity's AssumedRoleUser.Arn.
    assumed_role_arn: Option<String>,
}

impl<'a, C: Cognito> Reconciliation<'a, C> {
    /// Reads what the decision needs: the freshest status and the Secret.
    async fn load(
        obj: &'a CognitoUnauthCredential,
        ctx: &'a Context<C>,
    ) -> Result<Loaded<'a, C>, Error> {
        let ns = obj.namespace().ok_or(Error::MissingField("namespace"))?;
        let uid = obj.uid().ok_or(Error::MissingField("uid"))?;
        let now = Timestamp::now();
        let secret_name = obj
            .spec
            .secret_name
            .clone()
            .unwrap_or_else(|| obj.name_any());
        let api: Api<CognitoUnauthCredential> = Api::namespaced(ctx.client.clone(), &ns);
        let mut status = Builder::new(ctx.freshest_status(obj), obj.metadata.generation, now);
        let next = status.next_mut();
        if let Some(prev) = next.secret_name.clone()
            && prev != secret_name
            && !next.previous_secret_names.contains(&prev)
        {
            next.previous_secret_names.push(prev);
        }
        next.previous_secret_names.retain(|p| *p != secret_name);
        next.secret_name = Some(secret_name.clone());

        // Admission refuses these; an older CRD or a direct etcd write could still let
        // them in.
        let parsed = schedule::parse_go_duration(obj.spec.renew_before())
            .map_err(|e| e.to_string())
            .and_then(|rb| {
                plan::role_session(&obj.spec, &ns, &obj.name_any())
                    .map(|session| (rb, session))
                    .map_err(|e| e.to_string())
            });
        let (renew_before, session) = match parsed {
            Ok(p) => p,
            Err(e) => {
                status.not_ready(reason::INVALID_SPEC, e);
                ctx.write_status(&api, obj, status.old(), status.next())
                    .await?;
                return Ok(Loaded::Done(Action::await_change()));
            }
        };
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        // A Secret the watch saw holding what the status says is not read again (a
        // restart reads none); any other is.
        let name = obj.name_any();
        let whose = plan::Whose {
            uid: &uid,
            namespace: &ns,
            name: &name,
        };
        let known = ctx
            .seen
            .get(&ns, &secret_name)
            .and_then(|seen| plan::known(seen, whose, &obj.spec, status.old(), force_token(obj)));
        let existing = match known {
            Some(o) => Existing::Known(Box::new(o)),
            None => Existing::Read(
                secrets
                    .get_opt(&secret_name)
                    .await
                    .map_err(Error::Kube)?
                    .map(Box::new),
            ),
        };
        Ok(Loaded::Ready(Box::new(Self {
            ctx,
            obj,
            ns,
            uid,
            secret_name,
            secrets,
            api,
            now,
            renew_before,
            session,
            existing,
            status,
            created: None,
        })))
    }

    /// Decides, acts on the decision, writes status if it changed.
    async fn run(mut self) -> Result<Action, Error> {
        let spec = &self.obj.spec;
        let secret_state = match &self.existing {
            Existing::Known(o) => SecretState::Ours(o.clone()),
            Existing::Read(s) => self.state_of(s.as_deref()),
        };
        let (pending, last_forced) = self
            .ctx
            .amend(self.obj, |m| (m.pending_identity.clone(), m.last_forced))
            .unwrap_or_default();
        let force_not_before = last_forced.map(|t| t + self.ctx.force_interval);
        let old = self.status.old().clone();
        let decision = plan::decide(&Inputs {
            now: self.now,
            spec,
            generation: self.obj.metadata.generation,
            status: &old,
            secret: &secret_state,
            force_token: force_token(self.obj),
            force_not_before,
            renew_before: self.renew_before,
            seed: &self.uid,
            started: self.ctx.started(),
            pending_identity: pending.as_ref().map(|(p, i)| (p.as_str(), i.as_str())),
            session: self.session.as_ref(),
        });
        debug!(plan = ?decision, "decided");
        let action = match decision {
            Plan::Conflict => self.conflict().await,
            Plan::Suspended { kept } => self.suspended(kept.as_ref()),
            Plan::Backoff { until, kept } => self.backoff(until, kept.as_ref()),
            Plan::Immutable { why, kept } => self.immutable(why, kept.as_ref()).await,
            Plan::Wait {
                kept,
                wake,
                repair,
                forced_at,
            } => self.wait(&kept, wake, repair, forced_at).await?,
            Plan::Rotate {
                why,
                identity,
                kept,
            } => self.rotate(why, identity, kept.as_ref()).await?,
        };
        self.ctx
            .write_status(&self.api, self.obj, self.status.old(), self.status.next())
            .await?;
        self.ctx
            .metrics
            .observe(&self.ns, &self.obj.name_any(), self.status.next());
        Ok(action)
    }

    /// What a Secret read under the current name is to this resource.
    fn state_of(&self, s: Option<&Secret>) -> SecretState {
        let spec = &self.obj.spec;
        match s {
            None => SecretState::Absent,
            Some(s) if !secret::owned_by(s, &self.uid) => SecretState::Foreign,
            Some(s) => SecretState::Ours(Box::new(secret::inspect(
                s,
                &self.uid,
                spec.mount_path(),
                spec.secret_template.as_ref(),
            ))),
        }
    }

    /// The Secret under the current name, read now if this reconcile has not read it.
    async fn read(&mut self) -> Result<Option<&Secret>, Error> {
        if let Existing::Known(_) = self.existing {
            let s = self
                .secrets
                .get_opt(&self.secret_name)
                .await
                .map_err(Error::Kube)?;
            self.existing = Existing::Read(s.map(Box::new));
        }
        Ok(match &self.existing {
            Existing::Read(s) => s.as_deref(),
            Existing::Known(_) => None,
        })
    }

    /// The key material of the kept credentials: as read in this reconcile, or read
    /// now. None when the Secret no longer holds them (changed since the watch saw it).
    async fn key_material(&mut self, k: &Kept) -> Result<Option<Credentials>, Error> {
        if let Some(c) = &k.credentials {
            return Ok(Some(c.clone()));
        }
        let read = self.read().await?.cloned();
        Ok(match self.state_of(read.as_ref()) {
            SecretState::Ours(o)
                if o.intact
                    && o.provenance.as_ref() == Some(&k.provenance)
                    && o.expiration == Some(k.expiration) =>
            {
                o.credentials
            }
            _ => None,
        })
    }

    fn region(&self) -> &'a str {
        self.obj.spec.region()
    }

    /// Whether `Ready` already says `why` (so its event was sent).
    fn ready_was(&self, why: &str) -> bool {
        conditions::ready_of(self.status.old()).map(|c| c.reason.as_str()) == Some(why)
    }

    /// A Secret we do not own holds the name: said once, then looked at every minute.
    async fn conflict(&mut self) -> Action {
        let msg = format!(
            "Secret {} exists and is not owned by this resource; it is left untouched. Delete it or choose another spec.secretName.",
            self.secret_name
        );
        if !self.ready_was(reason::SECRET_CONFLICT) {
            self.ctx
                .event(
                    self.obj,
                    EventType::Warning,
                    reason::SECRET_CONFLICT,
                    msg.clone(),
                )
                .await;
        }
        self.status.not_ready(reason::SECRET_CONFLICT, msg);
        Action::requeue(BLOCKED_RECHECK)
    }

    fn suspended(&mut self, kept: Option<&Kept>) -> Action {
        self.status.next_mut().renewal_time = None;
        match kept {
            Some(k) if !k.expired(self.now) => {
                let exp = k.expiration;
                self.status.next_mut().expiration = Some(time(exp));
                let msg = format!(
                    "Rotation is suspended; the Secret holds credentials valid until {}",
                    show(exp)
                );
                self.status.ready(reason::SUSPENDED, msg);
                requeue_at(self.now, exp)
            }
            _ => {
                let msg = "Rotation is suspended; the Secret holds no valid credentials".into();
                self.status
                    .set(conditions::READY, false, reason::SUSPENDED, msg);
                Action::await_change()
            }
        }
    }

    fn backoff(&mut self, until: Timestamp, kept: Option<&Kept>) -> Action {
        if let Some(k) = kept.filter(|k| k.expired(self.now)) {
            let last = self
                .status
                .old()
                .last_failure_reason
                .clone()
                .unwrap_or_default();
            let msg = format!(
                "The credentials in the Secret expired at {}; the last attempt failed ({last}); next attempt at {}",
                show(k.expiration),
                show(until)
            );
            self.status.not_ready(reason::EXPIRED, msg);
        }
        requeue_at(self.now, self.wake(until, kept))
    }

    /// The earlier of `at` and the kept credentials' expiry (to say Expired on time).
    fn wake(&self, at: Timestamp, kept: Option<&Kept>) -> Timestamp {
        match kept {
            Some(k) if !k.expired(self.now) => at.min(k.expiration),
            _ => at,
        }
    }

    /// New credentials are needed but our Secret is immutable: no call (they could not
    /// be written); said once, looked at again when the Secret changes.
    async fn immutable(&mut self, why: Why, kept: Option<&Kept>) -> Action {
        let name = &self.secret_name;
        let (ready_reason, msg) = match kept {
            Some(k) if k.expired(self.now) => (
                reason::EXPIRED,
                format!(
                    "The credentials in the Secret expired at {}; Secret {name} is immutable and cannot be rotated: delete it and the controller writes a new one",
                    show(k.expiration)
                ),
            ),
            Some(k) => (
                reason::SECRET_WRITE_FAILED,
                format!(
                    "New credentials are needed ({}) but Secret {name} is immutable; it keeps credentials valid until {}. Delete it and the controller writes a new one",
                    why.as_str(),
                    show(k.expiration)
                ),
            ),
            None => (
                reason::SECRET_WRITE_FAILED,
                format!(
                    "Secret {name} is immutable and holds no usable credentials ({}): delete it and the controller writes a new one",
                    why.as_str()
                ),
            ),
        };
        if !self.ready_was(ready_reason) {
            warn!(reason = ready_reason, "the Secret is immutable");
            self.ctx
                .metrics
                .rotation_failed(reason::SECRET_WRITE_FAILED);
            self.ctx
                .event(self.obj, EventType::Warning, "RotationFailed", msg.clone())
                .await;
        }
        self.status.not_ready(ready_reason, msg);
        // Our Secret is watched: its deletion wakes us. Until then the only thing that
        // can change is the kept credentials expiring (to say Expired), so no recheck,
        // not even a GET a minute.
        match kept {
            Some(k) if !k.expired(self.now) => requeue_at(self.now, k.expiration),
            _ => Action::await_change(),
        }
    }

    /// The Secret holds good credentials: repair its layout if needed, verify once if
    /// asked, roll the targets if they run older credentials, clean up former Secrets.
    async fn wait(
        &mut self,
        k: &Kept,
        wake: Timestamp,
        repair: bool,
        forced_at: Option<Timestamp>,
    ) -> Result<Action, Error> {
        let verify = self.obj.spec.verify == Some(true);
        // Verification just turned on, the spec changed, or STS gave no answer last
        // time: check the kept credentials; a refusal is reported, the Secret stays.
        let unverified = verify
            && !conditions::condition_of(self.status.old(), conditions::VERIFIED).is_some_and(
                |c| c.observed_generation == self.obj.metadata.generation && c.status != "Unknown",
            );
        let creds = if repair || unverified {
            match self.key_material(k).await? {
                Some(c) => Some(c),
                None => return Ok(Action::requeue(CHANGED_RECHECK)),
            }
        } else {
            None
        };
        if repair && let Some(c) = &creds {
            match self.write_secret(c, &k.provenance).await {
                Err(Error::SecretTaken) => return Ok(self.conflict().await),
                r => r?,
            }
        }
        self.status.issued(&k.provenance, k.expiration, k.renewal);
        if let Some(at) = forced_at {
            self.status.force_deferred(at);
        }
        let mut retry = None;
        if !verify {
            self.verification_off();
        } else if let Some(c) = creds.as_ref().filter(|_| unverified) {
            let r = self.ctx.cognito.caller_identity(self.region(), c).await;
            retry = self.mark_verified(&r);
        }
        let rolled = self.roll_out(k.provenance.issued_at).await;
        let cleaned = self.remove_previous_secrets().await;
        let at = [retry, rolled, cleaned]
            .into_iter()
            .flatten()
            .map(|d| self.now + d)
            .fold(wake, Timestamp::min);
        Ok(requeue_at(self.now, at))
    }

    /// Fetches new credentials, verifies them if asked, writes the Secret.
    async fn rotate(
        &mut self,
        why: Why,
        identity: Option<String>,
        kept: Option<&Kept>,
    ) -> Result<Action, Error> {
        let Fetched {
            identity_id,
            credentials: mut creds,
            assumed_role_arn,
        } = match self.fetch(identity).await? {
            Ok(got) => got,
            Err(e) => return Ok(self.failed(e.reason(), &e.to_string(), kept).await),
        };
        let mut retry = None;
        if self.obj.spec.verify == Some(true) {
            // Verified before they are written: refused credentials never replace good
            // ones. No answer from STS is not a refusal: they are written.
            let r = self
                .ctx
                .cognito
                .caller_identity(self.region(), &creds)
                .await;
            if let Err(e @ CognitoError::VerificationFailed(_)) = &r {
                self.mark_verified(&r);
                return Ok(self.failed(e.reason(), &e.to_string(), kept).await);
            }
            retry = self.mark_verified(&r);
        } else {
            self.verification_off();
        }
        // The Secret keeps the issue time at full precision (it tells two rotations in
        // one second apart) and the expiration in whole seconds: what is computed now
        // from them equals what is computed later from what is read back, or the next
        // reconcile would see a different status and write it again.
        let issued_at = Timestamp::now();
        creds.expiration = time(creds.expiration).0;
        let prov = Provenance {
            identity_pool_id: self.obj.spec.identity_pool_id.clone(),
            identity_id,
            region: self.region().to_string(),
            custom_role_arn: self.obj.spec.custom_role_arn.clone(),
            session: self.session.clone(),
            assumed_role_arn,
            issued_at,
            force_token: force_token(self.obj).map(str::to_string),
        };
        if let Err(e) = self.write_secret(&creds, &prov).await {
            return match e {
                Error::SecretTaken => Ok(self.conflict().await),
                // Someone created it meanwhile: the next reconcile sees whose it is.
                Error::Kube(kube::Error::Api(s)) if s.code == 409 => {
                    Err(Error::Kube(kube::Error::Api(s)))
                }
                Error::Kube(kube::Error::Api(s)) => {
                    let detail = format!(
                        "the Secret could not be written: {} (HTTP {})",
                        s.message, s.code
                    );
                    Ok(self
                        .failed(reason::SECRET_WRITE_FAILED, &detail, kept)
                        .await)
                }
                other => Err(other),
            };
        }
        // The Secret carries the identity now.
        self.ctx.amend(self.obj, |m| m.pending_identity = None);
        if why == Why::Forced {
            let now = self.now;
            self.ctx.remember(self.obj, |m| m.last_forced = Some(now));
        }
        let renewal =
            schedule::renewal_time(issued_at, creds.expiration, self.renew_before, &self.uid);
        self.status.issued(&prov, creds.expiration, renewal);
        let created = match self.created.take() {
            Some(id) => format!("Created Cognito identity {id}; "),
            None => String::new(),
        };
        let msg = format!(
            "{created}Rotated credentials ({}); valid until {}; next rotation at {}",
            why.as_str(),
            show(creds.expiration),
            show(renewal)
        );
        info!(why = why.as_str(), expiration = %show(creds.expiration), renewal = %show(renewal), "credentials rotated");
        self.ctx.metrics.rotated();
        self.ctx
            .event(self.obj, EventType::Normal, "CredentialsRotated", msg)
            .await;
        let rolled = self.roll_out(issued_at).await;
        let cleaned = self.remove_previous_secrets().await;
        let at = [retry, rolled, cleaned]
            .into_iter()
            .flatten()
            .map(|d| self.now + d)
            .fold(renewal, Timestamp::min);
        Ok(requeue_at(self.now, at))
    }

    /// A failed attempt: counted in status (which schedules the next), reported as the
    /// `Ready` reason (or Expired), an event and a metric. The Secret is left as it is.
    async fn failed(&mut self, why: &str, detail: &str, kept: Option<&Kept>) -> Action {
        if let Some(id) = self.created.take() {
            let msg = format!("Created Cognito identity {id}");
            self.ctx
                .event(self.obj, EventType::Normal, "IdentityCreated", msg)
                .await;
        }
        let due = self.status.failed(why, &self.uid);
        // The event's note leaves out the retry time: repeats of one failure fold into
        // one event's series, and an event's note cannot change.
        let (ready_reason, note) = match kept {
            Some(k) if k.expired(self.now) => (
                reason::EXPIRED,
                format!(
                    "The credentials in the Secret expired at {}; rotation failed: {detail}",
                    show(k.expiration),
                ),
            ),
            Some(k) => (
                why,
                format!(
                    "Rotation failed: {detail}; the Secret keeps credentials valid until {}",
                    show(k.expiration),
                ),
            ),
            None => (why, format!("Could not get credentials: {detail}")),
        };
        let msg = format!("{note}; next attempt at {}", show(due));
        warn!(reason = why, error = detail, retry_at = %show(due), "rotation failed");
        self.ctx.metrics.rotation_failed(why);
        self.ctx
            .event(self.obj, EventType::Warning, "RotationFailed", note)
            .await;
        self.status.not_ready(ready_reason, msg);
        requeue_at(self.now, self.wake(due, kept))
    }

    /// GetId when there is no identity to reuse (saved at once), then the flow's calls
    /// (`issue`); a forgotten identity is replaced once.
    async fn fetch(
        &mut self,
        identity: Option<String>,
    ) -> Result<Result<Fetched, CognitoError>, Error> {
        let pool = self.obj.spec.identity_pool_id.clone();
        let region = self.region();
        let reused = identity.is_some();
        let id = match identity {
            Some(id) => id,
            None => match self.ctx.cognito.get_id(region, &pool).await {
                Ok(id) => {
                    self.remember_identity(&id, false).await;
                    id
                }
                Err(e) => return Ok(Err(e)),
            },
        };
        match self.issue(id).await {
            Err(CognitoError::IdentityNotFound(_)) if reused => {
                let id = match self.ctx.cognito.get_id(region, &pool).await {
                    Ok(id) => id,
                    Err(e) => return Ok(Err(e)),
                };
                self.remember_identity(&id, true).await;
                Ok(self.issue(id).await)
            }
            other => Ok(other),
        }
    }

    /// Credentials for identity `id` by the spec's flow: GetCredentialsForIdentity
    /// (Enhanced), or GetOpenIdToken then STS AssumeRoleWithWebIdentity (Basic). The
    /// OpenID token lives only in this call.
    async fn issue(&self, id: String) -> Result<Fetched, CognitoError> {
        let cognito = &self.ctx.cognito;
        let region = self.region();
        match &self.session {
            None => {
                let role = self.obj.spec.custom_role_arn.as_deref();
                let credentials = cognito.get_credentials(region, &id, role).await?;
                Ok(Fetched {
                    identity_id: id,
                    credentials,
                    assumed_role_arn: None,
                })
            }
            Some(session) => {
                let token = cognito.get_open_id_token(region, &id).await?;
                let assumed = cognito
                    .assume_role_with_web_identity(region, session, &token)
                    .await?;
                Ok(Fetched {
                    identity_id: id,
                    credentials: assumed.credentials,
                    assumed_role_arn: Some(assumed.assumed_role_arn),
                })
            }
        }
    }

    /// Saves a new identity in status at once, so a crash before the Secret is written
    /// does not cost another GetId. If that write fails, the identity is kept in memory
    /// until the Secret (or a later status write) carries it: never lost to a retry.
    async fn remember_identity(&mut self, id: &str, recreated: bool) {
        let pool = self.obj.spec.identity_pool_id.clone();
        let next = self.status.next_mut();
        next.identity_id = Some(id.to_string());
        next.identity_pool_id = Some(pool.clone());
        let mut persisted = self.status.old().clone();
        persisted.identity_id = Some(id.to_string());
        persisted.identity_pool_id = Some(pool.clone());
        if let Err(e) = self
            .ctx
            .write_status(&self.api, self.obj, self.status.old(), &persisted)
            .await
        {
            warn!(error = %e, "could not save the new identity in status; kept in memory");
            self.ctx.remember(self.obj, |m| {
                m.pending_identity = Some((pool, id.to_string()));
            });
        }
        if recreated {
            let msg =
                format!("Cognito no longer knows the previous identity; created identity {id}");
            self.ctx
                .event(self.obj, EventType::Warning, "IdentityRecreated", msg)
                .await;
        } else {
            // Said in the CredentialsRotated event that follows (one write fewer per
            // resource), or in its own event if the rotation fails.
            self.created = Some(id.to_string());
        }
        info!(identity = id, recreated, "identity created");
    }

    /// The `Verified` condition and assumedRoleArn after a GetCallerIdentity; returns
    /// when to ask again if STS gave no answer.
    fn mark_verified(&mut self, result: &Result<String, CognitoError>) -> Option<Duration> {
        match result {
            Ok(arn) => {
                self.status.next_mut().assumed_role_arn = Some(arn.clone());
                let msg = format!("STS GetCallerIdentity accepted the credentials as {arn}");
                self.status.set(
                    conditions::VERIFIED,
                    true,
                    reason::CALLER_IDENTITY_VERIFIED,
                    msg,
                );
                None
            }
            Err(e @ CognitoError::VerificationFailed(_)) => {
                self.status.set(
                    conditions::VERIFIED,
                    false,
                    reason::VERIFICATION_FAILED,
                    e.to_string(),
                );
                None
            }
            Err(e) => {
                self.status.unknown(
                    conditions::VERIFIED,
                    reason::VERIFICATION_UNAVAILABLE,
                    e.to_string(),
                );
                Some(VERIFY_RETRY)
            }
        }
    }

    /// Without spec.verify: no `Verified` condition; assumedRoleArn only when
    /// AssumeRoleWithWebIdentity said it (flow Basic: set from the Secret's provenance).
    fn verification_off(&mut self) {
        if self.session.is_none() {
            self.status.next_mut().assumed_role_arn = None;
        }
        self.status.remove(conditions::VERIFIED);
    }

    /// Creates the Secret, or applies our fields to ours (uid as the precondition).
    /// Never takes over a Secret someone else created.
    async fn write_secret(&mut self, creds: &Credentials, prov: &Provenance) -> Result<(), Error> {
        let owner = Owner {
            api_version: CognitoUnauthCredential::api_version(&()).to_string(),
            kind: CognitoUnauthCredential::kind(&()).to_string(),
            name: self.obj.name_any(),
            uid: self.uid.clone(),
        };
        let at = secret::Placement {
            name: &self.secret_name,
            namespace: &self.ns,
            owner: &owner,
            template: self.obj.spec.secret_template.as_ref(),
            mount_path: self.obj.spec.mount_path(),
        };
        let mut desired = secret::render(&at, creds, prov);
        let uid = self.uid.clone();
        let written = match self.read().await? {
            None => {
                let pp = PostParams {
                    field_manager: Some(MANAGER.to_string()),
                    ..PostParams::default()
                };
                // Never takes over: if someone created it meanwhile, this fails with 409
                // and the next reconcile reports the conflict.
                self.secrets
                    .create(&pp, &desired)
                    .await
                    .map_err(Error::Kube)?
            }
            // Known from the watch and read only now: someone may have replaced it since
            // (deleted ours, created theirs). It is not written into; the conflict is
            // reported, and the watch's entry for it goes.
            Some(current) if !secret::owned_by(current, &uid) => {
                self.ctx.seen.forget(&self.ns, &self.secret_name);
                return Err(Error::SecretTaken);
            }
            Some(current) => {
                desired.metadata.uid = current.metadata.uid.clone();
                match apply_secret(&self.secrets, &desired).await {
                    Err(Error::SecretTaken) => {
                        self.ctx.seen.forget(&self.ns, &self.secret_name);
                        return Err(Error::SecretTaken);
                    }
                    r => r?,
                }
            }
        };
        self.ctx.seen.note(&written.metadata);
        self.existing = Existing::Read(Some(Box::new(written)));
        Ok(())
    }

    /// Deletes the Secrets this resource wrote under former names (only ours, with uid
    /// and resourceVersion as preconditions). Each stays listed in status until it is
    /// gone, so a failed delete or a crash is retried; returns when to retry.
    async fn remove_previous_secrets(&mut self) -> Option<Duration> {
        let names = self.status.next().previous_secret_names.clone();
        let mut left = Vec::new();
        for name in names {
            match self.delete_if_ours(&name).await {
                Ok(()) => info!(secret = %name, "deleted the Secret under the former name"),
                Err(e) => {
                    warn!(secret = %name, error = %e, "could not delete the Secret under the former name");
                    left.push(name);
                }
            }
        }
        let retry = (!left.is_empty()).then_some(CLEANUP_RETRY);
        self.status.next_mut().previous_secret_names = left;
        retry
    }

    async fn delete_if_ours(&self, name: &str) -> Result<(), kube::Error> {
        let Some(s) = self.secrets.get_opt(name).await? else {
            return Ok(());
        };
        if !secret::owned_by(&s, &self.uid) {
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: s.metadata.uid.clone(),
                resource_version: s.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match self.secrets.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Rolls the spec's targets when the credentials in the Secret (issued at
    /// `issued_at`) are newer than the ones they were rolled for. Returns a retry
    /// delay when a patch must be tried again. Failures are reported (condition, event,
    /// metric), never returned: the Secret is good either way.
    async fn roll_out(&mut self, issued_at: Timestamp) -> Option<Duration> {
        let targets = &self.obj.spec.rollout_restart_targets;
        match restart::duty(
            targets,
            self.status.next().rollout_restart.as_ref(),
            issued_at,
        ) {
            Duty::NoTargets => {
                self.status.next_mut().rollout_restart = None;
                self.status.remove(conditions::ROLLOUT_RESTART);
                None
            }
            Duty::Done => None,
            Duty::Baseline => {
                self.status.next_mut().rollout_restart = Some(RolloutRestartStatus {
                    credentials_issued_at: Some(restart::stamp(issued_at)),
                    restarted_at: None,
                });
                let msg = format!(
                    "The targets start with the credentials issued at {}; they roll when these are replaced",
                    show(issued_at)
                );
                self.status.set(
                    conditions::ROLLOUT_RESTART,
                    true,
                    reason::NO_ROTATION_YET,
                    msg,
                );
                None
            }
            Duty::Restart { stamp } => {
                let mut outcomes = Vec::with_capacity(targets.len());
                for t in targets {
                    let o =
                        restart::patch_target(&self.ctx.client, &self.ns, t, &stamp, MANAGER).await;
                    self.ctx.metrics.rollout_restart(t.kind.as_str(), o.label());
                    outcomes.push((t.clone(), o));
                }
                let sum = restart::summarize(&outcomes, &stamp);
                if let Some(note) = sum.triggered.clone() {
                    info!(stamp = %stamp, "rollout restart triggered");
                    self.ctx
                        .event(self.obj, EventType::Normal, "RolloutRestartTriggered", note)
                        .await;
                }
                if let Some(note) = sum.failed.clone() {
                    warn!(reason = sum.reason, "rollout restart incomplete");
                    self.ctx
                        .event(self.obj, EventType::Warning, "RolloutRestartFailed", note)
                        .await;
                }
                self.status
                    .set(conditions::ROLLOUT_RESTART, sum.ok, sum.reason, sum.message);
                if sum.done {
                    self.status.next_mut().rollout_restart = Some(RolloutRestartStatus {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: &str) -> CognitoUnauthCredentialStatus {
        CognitoUnauthCredentialStatus {
            identity_id: Some(id.into()),
            ..Default::default()
        }
    }

    /// The cache may lag behind our writes by several: what it shows is judged by
    /// content, never by comparing resourceVersions (opaque strings with no order).
    #[test]
    fn a_lagging_cache_never_wins_over_our_writes() {
        let (b, w1, w2, other) = (st("b"), st("w1"), st("w2"), st("other"));
        let written = Written {
            status: w2.clone(),
            superseded: vec![b.clone(), w1.clone()],
        };
        // Worked examples: (cached, decided on, cache still lagging)
        let cases = [
            (b.clone(), w2.clone(), true),
            (w1.clone(), w2.clone(), true),
            (w2.clone(), w2.clone(), false),
            (other.clone(), other.clone(), false),
        ];
        for (cached, want, lagging) in cases {
            assert_eq!(
                freshest(Some(&written), cached.clone()),
                (want, lagging),
                "{cached:?}"
            );
        }
        assert_eq!(freshest(None, b.clone()), (b, false));
    }

    /// A first issue writes status twice from the same old one: the new identity alone,
    /// then the rotation's. Whichever of the three the cache shows, we decide on the last
    /// (before: the identity-only status, seen after both writes, was taken for someone
    /// else's, and a second GetCallerIdentity followed with spec.verify).
    #[test]
    fn both_writes_of_one_reconcile_are_superseded_by_the_last() {
        let (old, identity, rotated) = (st("old"), st("identity"), st("rotated"));
        let w = supersede(None, &old, &identity);
        let w = supersede(Some(w), &old, &rotated);
        for cached in [old.clone(), identity.clone()] {
            assert_eq!(freshest(Some(&w), cached), (rotated.clone(), true));
        }
        assert_eq!(
            freshest(Some(&w), rotated.clone()),
            (rotated.clone(), false)
        );
        assert_eq!(freshest(Some(&w), st("theirs")), (st("theirs"), false));
        // Bounded, and what we now hold is never superseded.
        let mut w = supersede(None, &st("s0"), &st("s1"));
        for i in 1..20 {
            w = supersede(Some(w), &st(&format!("s{i}")), &st(&format!("s{}", i + 1)));
        }
        assert!(w.superseded.len() <= SUPERSEDED_KEPT);
        assert!(!w.superseded.contains(&w.status));
    }
}
