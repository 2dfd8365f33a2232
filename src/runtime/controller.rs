//! Runtime wiring: the kube-runtime Controller over CognitoUnauthCredentials and the
//! Secrets they own (by label, metadata only: each is kept as a fingerprint, see `seen`),
//! driving `reconcile`;
//! one Controller per watched namespace (or one for all); optional leader election on a
//! coordination.k8s.io Lease, with only the leader reconciling.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::aws::cognito::Cognito;
use crate::aws::metered::{Meter, Metered};
use crate::aws::quota::{Paced, Pacer, Quotas};
use crate::common::events::Recorder;
use crate::common::http::{BEAT_EVERY, Health};
use crate::common::metrics::Metrics;
use crate::crd::CognitoUnauthCredential;
use crate::reconcile::secret::MANAGED_SELECTOR;
use crate::reconcile::{self, Context, MANAGER, Sharing};
use crate::runtime::lease;

/// How long in-flight reconciles may run on after a stop request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long the first reconciles wait for the list of our Secrets (then each reconcile
/// reads its Secret, as it would without the list).
const SECRETS_LISTED_WAIT: Duration = Duration::from_secs(30);

/// Leader election on a Lease.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    pub identity: String,
    /// A holder that stops renewing loses the Lease after this long.
    pub lease_duration: Duration,
    /// The holder renews this long before the Lease would expire.
    pub renew_grace: Duration,
}

/// The default least time between two forced rotations of one resource.
pub const FORCE_ROTATE_INTERVAL: Duration = Duration::from_secs(60);

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; all namespaces when empty.
    pub namespaces: Vec<String>,
    /// When all namespaces are watched: those left alone (a team's, with its own release).
    pub exclude_namespaces: Vec<String>,
    /// Reconciles running at once (per watched namespace; in all of them when all are
    /// watched), taking turns round-robin between namespaces.
    pub concurrency: u16,
    /// Identifies this replica in events.
    pub instance: Option<String>,
    pub leader_election: Option<LeaderElection>,
    /// Client-side pacing under Cognito's per-account quotas.
    pub quotas: Quotas,
    /// The least time between two forced rotations of one resource: a force-rotate
    /// value changed in a loop costs one Cognito call per interval, not one per change.
    pub force_rotate_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            concurrency: 8,
            instance: None,
            leader_election: None,
            quotas: Quotas::default(),
            force_rotate_interval: FORCE_ROTATE_INTERVAL,
        }
    }
}

/// What the controller reports to: its metrics, and the health that /readyz and /livez
/// answer from.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Runs until `shutdown` resolves: stops taking work, lets in-flight reconciles finish,
/// releases the Lease. With leader election, reconciles only while leading, and drops
/// in-flight work the moment leadership is lost (the lease module fences itself before
/// a standby could take over).
pub async fn run<C: Cognito>(
    client: kube::Client,
    cognito: C,
    settings: Settings,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let Telemetry { metrics, health } = telemetry;
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.cancel();
    });
    let recorder = Recorder::new(client.clone(), MANAGER, settings.instance.as_deref());
    // Paced outside Metered: the metrics count calls on the wire and their latency,
    // not the time spent waiting for a turn under the quota.
    let cognito = Paced::new(
        Pacer::new(settings.quotas),
        Metered::new(Meter(metrics.clone()), cognito),
    );
    // `concurrency` reconciles at once per watched namespace (or in all, when all are
    // watched), handed out round-robin between namespaces (fair::Gate).
    let scopes = settings.namespaces.len().max(1);
    let slots = usize::from(settings.concurrency.max(1)) * scopes;
    let sharing = Sharing {
        slots,
        force_interval: settings.force_rotate_interval,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        cognito,
        recorder,
        metrics,
        sharing,
    ));

    let Some(le) = settings.leader_election.clone() else {
        // Without leader election this replica is the one that reconciles.
        ctx.metrics.leading(true);
        run_controllers(&ctx, &settings, &health, stop).await;
        ctx.metrics.leading(false);
        return;
    };

    lead_then_run(&ctx, &settings, &health, &le, stop).await;
}

/// With leader election: the controllers run while this replica holds the Lease, and
/// stop the moment it does not.
async fn lead_then_run<C: Cognito>(
    ctx: &Arc<Context<C>>,
    settings: &Settings,
    health: &Arc<Health>,
    le: &LeaderElection,
    stop: CancellationToken,
) {
    let client = ctx.client.clone();
    let (tx, mut leading) = watch::channel(false);
    let elector_stop = CancellationToken::new();
    let candidate = lease::Candidate {
        api: Api::namespaced(client.clone(), &le.lease_namespace),
        name: le.lease_name.clone(),
        me: le.identity.clone(),
    };
    let elector = tokio::spawn(lease::elect(
        candidate,
        lease::Timing::new(le.lease_duration, le.renew_grace),
        tx,
        elector_stop.clone(),
    ));
    // A standby replica is ready: it is waiting for the Lease, as it should.
    health.set_ready(true);
    info!(lease = %le.lease_name, identity = %le.identity, "waiting for leadership");
    let mut beat = tokio::time::interval(BEAT_EVERY);
    'standby: loop {
        // A standby beats from here; the leader from its controllers' task.
        loop {
            tokio::select! {
                _ = stop.cancelled() => break 'standby,
                r = leading.wait_for(|l| *l) => if r.is_err() { break 'standby } else { break },
                _ = beat.tick() => health.beat(),
            }
        }
        info!(identity = %le.identity, "leading: starting to reconcile");
        ctx.metrics.leading(true);
        let controllers = run_controllers(ctx, settings, health, stop.child_token());
        tokio::pin!(controllers);
        tokio::select! {
            _ = &mut controllers => {}
            // Lost, or could not renew in time: in-flight work is dropped at once, not
            // finished. Reconciles are idempotent: a dropped one leaves the old or the
            // new Secret, never a partial one, and the next leader finishes the job.
            _ = leading.wait_for(|l| !*l) => {
                warn!(identity = %le.identity, "lost leadership: stopped reconciling");
            }
        }
        ctx.metrics.leading(false);
        if stop.is_cancelled() {
            break;
        }
    }
    // Leadership is given up only after reconciling stopped.
    elector_stop.cancel();
    if let Err(e) = elector.await {
        error!(error = %e, "leader election task failed");
    }
}

async fn run_controllers<C: Cognito>(
    ctx: &Arc<Context<C>>,
    settings: &Settings,
    health: &Arc<Health>,
    stop: CancellationToken,
) {
    ctx.mark_started();
    // A new term lists our Secrets again; what an earlier one saw may be stale.
    ctx.seen.clear();
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut runs = Vec::new();
    for scope in scopes {
        let (store, run) = scope_controller(ctx, &settings.exclude_namespaces, scope, &stop);
        stores.push(store);
        runs.push(run);
    }
    // Dropped with this function's future (leadership lost): aborts the readiness task.
    let mut tasks = JoinSet::new();
    let ready_health = health.clone();
    tasks.spawn(async move {
        // The store's readiness is a oneshot that wakes only its latest waiter, and the
        // controller's own runner waits on it too: so re-poll instead of waiting once.
        for store in &stores {
            while tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
                .await
                .is_err()
            {}
        }
        ready_health.set_ready(true);
        info!("caches synced; ready");
    });
    // Graceful shutdown lets in-flight reconciles finish; it cannot end a controller whose
    // caches never synced (e.g. its list is forbidden), so after a stop request give it a
    // bounded grace, then abandon the rest. Reconciles are idempotent: abandoning one
    // leaves either the old or the new Secret, never a partial one.
    // The heartbeat is polled by the same task as the controllers: if that task stops
    // being polled, /livez says so.
    let heart = health.clone();
    let beating = async move {
        let mut beat = tokio::time::interval(BEAT_EVERY);
        loop {
            beat.tick().await;
            heart.beat();
        }
    };
    tokio::select! {
        _ = join_all(runs) => {}
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => warn!(grace = ?SHUTDOWN_GRACE, "in-flight work did not finish in time; abandoned"),
        () = beating => {}
    }
    tasks.abort_all();
    info!("controller stopped");
}

/// The controller of one scope (a namespace, or every one but the excluded): its
/// resources' cache, and its run until `stop`.
fn scope_controller<C: Cognito>(
    ctx: &Arc<Context<C>>,
    exclude_namespaces: &[String],
    scope: Option<String>,
    stop: &CancellationToken,
) -> (
    reflector::Store<CognitoUnauthCredential>,
    impl Future<Output = ()> + Send + use<C>,
) {
    let client = ctx.client.clone();
    // Watching every namespace: the excluded ones are left out by the API server.
    let fields = scope
        .is_none()
        .then(|| crate::common::watch::excluding(exclude_namespaces))
        .flatten();
    let scoped = move |c: watcher::Config| match &fields {
        Some(f) => c.fields(f),
        None => c,
    };
    let (cucs, secrets): (Api<CognitoUnauthCredential>, Api<PartialObjectMeta<Secret>>) =
        match &scope {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    // Our Secrets' metadata, each kept only as a fingerprint (`seen`); the controller
    // gets their owner references. Metadata only: anyone who may create a Secret can
    // put our label on it, and its data never enters this process.
    let seen_ctx = ctx.clone();
    let seen_scope = scope.clone();
    let owned = watcher(
        secrets,
        scoped(watcher::Config::default())
            .labels(MANAGED_SELECTOR)
            .any_semantic(),
    )
    .backoff(crate::common::watch::Backoff::default())
    .map_ok(move |ev| {
        seen_ctx.seen.follow(seen_scope.as_deref(), &ev);
        ev
    })
    .touched_objects();
    // Our own cache of the resources, slimmed (crd::slim): without managedFields,
    // labels and other tools' annotations, which the controller never reads and
    // whose size the schema cannot bound. Listed once the Secrets
    // are (or after SECRETS_LISTED_WAIT), so that the first reconciles know them
    // without reading each one.
    let (reader, writer) = reflector::store();
    let listed_ctx = ctx.clone();
    let listed_scope = scope.clone();
    let cuc_config = scoped(watcher::Config::default()).any_semantic();
    let trigger = futures::stream::once(async move {
        let ns = listed_scope.as_deref();
        if !listed_ctx.seen.wait_listed(ns, SECRETS_LISTED_WAIT).await {
            warn!(namespace = ns.unwrap_or("<all>"), wait = ?SECRETS_LISTED_WAIT, "our Secrets are not listed yet; reading each one instead");
        }
        watcher(cucs, cuc_config)
            .backoff(crate::common::watch::Backoff::default())
            .modify(crate::crd::slim)
            .reflect(writer)
            .touched_objects()
    })
    .flatten();
    let controller = Controller::for_stream(trigger, reader)
        .owns_stream(owned)
        // Every due reconcile starts; the context's gate decides which run (fairly
        // between namespaces, `concurrency` at a time). Limited here, kube-runtime
        // would start them in the order they came due: one namespace's thousand
        // new resources before another's due rotation.
        .with_config(controller::Config::default().concurrency(0));
    let store = controller.store();
    info!(
        namespace = scope.as_deref().unwrap_or("<all>"),
        "controller starting"
    );
    (store, run_until(controller, ctx.clone(), stop.clone()))
}

/// Runs `controller` until `stop`: in-flight reconciles finish, those waiting for a turn
/// leave; a deleted resource's memory and metrics go with it.
async fn run_until<C: Cognito>(
    controller: Controller<CognitoUnauthCredential>,
    ctx: Arc<Context<C>>,
    stop: CancellationToken,
) {
    let forget = ctx.clone();
    let gate = ctx.gate.clone();
    controller
        // In flight are finished; those waiting for a turn leave (fair::Gate).
        .graceful_shutdown_on(async move {
            stop.cancelled().await;
            gate.close();
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| {
            if let Err(controller::Error::ObjectNotFound(obj)) = &res {
                // Deleted: its Secret goes with it; so do its memory and metrics.
                forget.forget(obj.namespace.as_deref().unwrap_or_default(), &obj.name);
            } else if let Err(e) = &res
                && !matches!(e, controller::Error::ReconcilerFailed(..))
            {
                warn!(error = %e, "controller");
            }
            futures::future::ready(())
        })
        .await;
}
