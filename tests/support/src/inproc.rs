//! For the integration tests that drive the library directly: an in-process controller
//! for one namespace, and waits on the resource and its Secret (on watches, never sleeps).

use std::sync::Arc;
use std::time::Duration;

use crate::{TestNs, install_crd, testbed};
use cognito_unauth_controller::aws::cognito::{SdkCognito, Timeouts, load_sdk_config};
use cognito_unauth_controller::common::http::Health;
use cognito_unauth_controller::common::metrics::Metrics;
use cognito_unauth_controller::crd::CognitoUnauthCredential;
use cognito_unauth_controller::runtime::controller::{self, Settings};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a wait on the resource or its Secret may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// An in-process controller for one namespace; stops gracefully on `stop()`.
pub struct Running {
    /// The controller's metrics (rendered as /metrics would).
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    pub async fn start(ns: &TestNs) -> Self {
        Self::start_with(ns, Timeouts::default()).await
    }

    pub async fn start_with(ns: &TestNs, timeouts: Timeouts) -> Self {
        Self::start_as(ns, ns.client.clone(), timeouts).await
    }

    /// As `start_with`, acting as `client` (e.g. an identity with less RBAC).
    pub async fn start_as(ns: &TestNs, client: kube::Client, timeouts: Timeouts) -> Self {
        Self::start_tuned(ns, client, timeouts, |_| {}).await
    }

    /// As `start_as`, with `tune` changing the controller's settings.
    pub async fn start_tuned(
        ns: &TestNs,
        client: kube::Client,
        timeouts: Timeouts,
        tune: impl FnOnce(&mut Settings),
    ) -> Self {
        install_crd();
        let sdk = load_sdk_config(timeouts, Some(&testbed().cognito_endpoint)).await;
        let (tx, rx) = oneshot::channel::<()>();
        let mut settings = Settings {
            namespaces: vec![ns.name.clone()],
            ..Settings::default()
        };
        tune(&mut settings);
        let metrics = Arc::new(Metrics::new());
        let shared = metrics.clone();
        let task = tokio::spawn(async move {
            let health = Arc::new(Health::default());
            let stop = async move {
                let _ = rx.await;
            };
            let telemetry = controller::Telemetry { metrics, health };
            controller::run(client, SdkCognito::new(sdk), settings, telemetry, stop).await;
        });
        Self {
            metrics: shared,
            stop: Some(tx),
            task,
        }
    }

    /// The value of a metric sample (the first line starting with `series`), as /metrics shows it.
    pub fn sample(&self, series: &str) -> f64 {
        let text = self.metrics.render().expect("render metrics");
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Reconciles run so far.
    pub fn reconciles(&self) -> f64 {
        self.sample("cognito_unauth_controller_reconciliations_total")
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(STOP_WAIT, &mut self.task)
            .await
            .expect("controller stops in time")
            .expect("controller task");
    }
}

pub async fn create_cuc(ns: &TestNs, name: &str, spec: Value) -> CognitoUnauthCredential {
    let obj: CognitoUnauthCredential = serde_json::from_value(json!({
        "apiVersion": "cognito.kubecred.io/v1alpha1",
        "kind": "CognitoUnauthCredential",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("resource");
    ns.api::<CognitoUnauthCredential>()
        .create(&PostParams::default(), &obj)
        .await
        .expect("create resource")
}

/// The status and reason of the condition `type_`, if the resource has one.
pub fn condition(obj: &CognitoUnauthCredential, type_: &str) -> Option<(String, String)> {
    let c = obj
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

pub fn ready(obj: &CognitoUnauthCredential) -> Option<(String, String)> {
    condition(obj, "Ready")
}

/// Waits (on a watch, not a sleep) until the resource satisfies `pred`.
pub async fn wait_cuc(
    ns: &TestNs,
    name: &str,
    what: &str,
    pred: impl Fn(&CognitoUnauthCredential) -> bool,
) -> CognitoUnauthCredential {
    wait_cuc_within(ns, name, what, STOP_WAIT, pred).await
}

/// Waits (on a watch) at most `limit` until the resource satisfies `pred`.
pub async fn wait_cuc_within(
    ns: &TestNs,
    name: &str,
    what: &str,
    limit: Duration,
    pred: impl Fn(&CognitoUnauthCredential) -> bool,
) -> CognitoUnauthCredential {
    let api = ns.api::<CognitoUnauthCredential>();
    let cond = move |o: Option<&CognitoUnauthCredential>| o.is_some_and(&pred);
    match tokio::time::timeout(limit, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(o))) => o,
        other => {
            let now = api.get_opt(name).await.ok().flatten();
            panic!(
                "timed out waiting for {what} on {name}: {other:?}\nstatus now: {:#?}",
                now.and_then(|o| o.status)
            )
        }
    }
}

/// Waits (on a watch) until the Secret satisfies `pred`.
pub async fn wait_secret(
    ns: &TestNs,
    name: &str,
    what: &str,
    pred: impl Fn(&Secret) -> bool,
) -> Secret {
    let cond = move |o: Option<&Secret>| o.is_some_and(&pred);
    match tokio::time::timeout(STOP_WAIT, await_condition(ns.api::<Secret>(), name, cond)).await {
        Ok(Ok(Some(s))) => s,
        other => panic!("timed out waiting for {what} on Secret {name}: {other:?}"),
    }
}

pub fn annotation(s: &Secret, key: &str) -> String {
    s.annotations().get(key).cloned().unwrap_or_default()
}

pub async fn wait_reason(
    ns: &TestNs,
    name: &str,
    status: &str,
    reason: &str,
) -> CognitoUnauthCredential {
    let (s, r) = (status.to_string(), reason.to_string());
    wait_cuc(ns, name, &format!("Ready={status}/{reason}"), move |o| {
        ready(o) == Some((s.clone(), r.clone()))
    })
    .await
}

pub fn text(s: &Secret, key: &str) -> String {
    let data = s.data.as_ref().expect("secret data");
    String::from_utf8(
        data.get(key)
            .unwrap_or_else(|| panic!("missing {key}"))
            .0
            .clone(),
    )
    .expect("utf-8")
}

pub fn rotation(o: &CognitoUnauthCredential) -> Option<jiff::Timestamp> {
    o.status.as_ref()?.last_rotation_time.as_ref().map(|t| t.0)
}

/// Whether the resource's status says what `s` holds: its issue time and expiry, both
/// in whole seconds as status keeps them. The issue time alone does not tell a rotation's
/// status: two rotations in one second share it (and a status equal in both is not
/// written again), while their expiries may lie a second apart.
pub fn says_what_it_holds(o: &CognitoUnauthCredential, s: &Secret) -> bool {
    let second = |key: &str| {
        annotation(s, key)
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok())
    };
    let expiration = o
        .status
        .as_ref()
        .and_then(|st| st.expiration.as_ref())
        .map(|t| t.0);
    second(cognito_unauth_controller::reconcile::secret::ANN_ISSUED_AT)
        .is_some_and(|i| rotation(o) == Some(i))
        && second(cognito_unauth_controller::reconcile::secret::ANN_EXPIRATION)
            .is_some_and(|e| expiration == Some(e))
}

pub async fn events(ns: &TestNs, name: &str) -> Vec<(String, String, String)> {
    let api: Api<Event> = ns.api();
    api.list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

/// Merge-patches the resource `name` (spec, metadata: whatever `patch` says).
pub async fn merge_patch(ns: &TestNs, name: &str, patch: Value) -> CognitoUnauthCredential {
    ns.api::<CognitoUnauthCredential>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch the resource")
}

/// Sets the force-rotate annotation of `name` to `token`.
pub async fn force_rotate(ns: &TestNs, name: &str, token: &str) -> CognitoUnauthCredential {
    merge_patch(
        ns,
        name,
        json!({"metadata": {"annotations": {"cognito.kubecred.io/force-rotate": token}}}),
    )
    .await
}

/// The writes seen during a window: one line per new version of the resource or its
/// Secret (what changed in it), so a failed count says which write it was.
#[derive(Default)]
pub struct Writes(pub Vec<String>);

impl Writes {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq<usize> for Writes {
    fn eq(&self, n: &usize) -> bool {
        self.0.len() == *n
    }
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} write(s)", self.0.len())?;
        for w in &self.0 {
            write!(f, "\n  {w}")?;
        }
        Ok(())
    }
}

/// What a test needs to tell one version of the resource from another (no key material).
fn describe_cuc(o: &CognitoUnauthCredential) -> String {
    let st = o.status.as_ref();
    let ready = st
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| format!("{} {} {:?}", c.status, c.reason, c.message));
    format!(
        "resource rv {}: generation {:?}, annotations {:?}, status {}",
        o.resource_version().unwrap_or_default(),
        o.metadata.generation,
        o.annotations(),
        st.map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.remove("conditions");
            }
            format!("{v} Ready {ready:?}")
        })
        .unwrap_or_default()
    )
}

/// The same for the Secret: its metadata and the names of its keys.
fn describe_secret(s: &Secret) -> String {
    let managers: Vec<String> = s
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            format!(
                "{}/{}@{:?}",
                m.manager.as_deref().unwrap_or("?"),
                m.operation.as_deref().unwrap_or("?"),
                m.time.as_ref().map(|t| t.0)
            )
        })
        .collect();
    format!(
        "Secret rv {}: labels {:?}, annotations {:?}, keys {:?}, managers {managers:?}",
        s.resource_version().unwrap_or_default(),
        s.labels(),
        s.annotations(),
        s.data.iter().flatten().map(|(k, _)| k).collect::<Vec<_>>()
    )
}

/// Every write of resource `name` and Secret `secret` during `window`, each described.
/// The first sighting of each object is its current version, not a write.
pub async fn writes_during(ns: &TestNs, name: &str, secret: &str, window: Duration) -> Writes {
    let cucs = watcher(
        ns.api::<CognitoUnauthCredential>(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .map(|o| o.map(|o| ("resource", o.resource_version(), describe_cuc(&o))))
    .boxed();
    let secrets = watcher(
        ns.api::<Secret>(),
        watcher::Config::default().fields(&format!("metadata.name={secret}")),
    )
    .applied_objects()
    .map(|o| o.map(|o| ("secret", o.resource_version(), describe_secret(&o))))
    .boxed();
    let mut merged = futures::stream::select(cucs, secrets);
    let mut first = std::collections::BTreeSet::new();
    let mut versions = std::collections::BTreeSet::new();
    let mut writes = Writes::default();
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            item = merged.next() => match item {
                Some(Ok((kind, rv, what))) => {
                    // A relist after a watch gap shows a version again: not a write.
                    if versions.insert(rv) && !first.insert(kind) {
                        writes.0.push(what);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    writes
}

/// A fresh pool with `lifetime` s credentials, a namespace named after `prefix`, a
/// controller for it, and the resource `app` (`spec` plus the pool) Ready.
pub async fn app_ready(
    prefix: &str,
    lifetime: u64,
    mut spec: Value,
) -> (crate::Proxy, String, TestNs, Running) {
    let proxy = crate::Proxy::new();
    let pool = proxy.realistic_pool(lifetime).await;
    let ns = TestNs::new(prefix).await;
    let ctl = Running::start(&ns).await;
    spec["identityPoolId"] = json!(pool);
    create_cuc(&ns, "app", spec).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    (proxy, pool, ns, ctl)
}

/// A Deployment `name` whose pods read the Secret `app` as env vars (a rollout-restart
/// target; its pods never pull an image).
pub fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    // The test bed's node runs this pod: never pull.
                    "imagePullPolicy": "Never",
                    "envFrom": [{"secretRef": {"name": "app"}}],
                }]},
            },
        },
    }))
    .expect("deployment")
}
