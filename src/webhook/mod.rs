//! The injection webhook (`cognito-unauth-controller webhook`, its own process). Owns the
//! admission of pods (below), the pod it makes of an annotated one ([`inject`], pure),
//! its serving certificate ([`certs`], pure) and the `caBundle` of its configuration.
//! May use: [`crate::crd`], [`crate::common`], and the Secret's format from
//! [`crate::reconcile::secret`] (which keys hold what); it writes no CognitoUnauthCredential
//! and no credential Secret, and calls no AWS API.
//!
//! A mutating admission webhook for pods, served over TLS by every
//! replica (no leader: any replica answers), and the loop that keeps what the API server
//! needs to call it in place.
//!
//! - [`admit`]: an AdmissionReview in, the answer out: the pod's ask ([`inject::requested`]),
//!   the named `CognitoUnauthCredential` from a watch cache, the pod it becomes
//!   ([`inject::inject`]) as a JSON patch, warnings, or a refusal that says what to fix.
//! - [`Configurator`]: the serving certificate ([`crate::webhook::certs`]) in its Secret, loaded into
//!   the TLS server, and the `caBundle` of every webhook in its MutatingWebhookConfiguration:
//!   the one field of that object it writes. The chart owns all the rest (rules, selectors,
//!   match conditions, failure policy, client config), and a ValidatingAdmissionPolicy in
//!   the chart refuses any other change by the webhook's ServiceAccount.
//! - [`track_accounts`]: every ServiceAccount and the `cognito.kubecred.io/credential` it
//!   carries, from a metadata-only watch: in a namespace labelled `cognito.kubecred.io/inject: enabled` the
//!   API server calls the webhook for every pod, and this cache says which ones to inject.
//! - [`serve`]: the HTTPS server.

pub mod certs;
pub mod inject;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::common::http::Health;
use crate::common::metrics::Metrics;
use crate::crd::CognitoUnauthCredential;
use certs::{Bundle, Lifetimes, Step};
use inject::{ANN_INJECT, ANN_SA_CREDENTIAL, SidecarImage, Target};

/// Field manager of what the webhook writes.
const MANAGER: &str = "cognito-unauth-webhook";
/// The configuration is checked at least this often (a caBundle reset by hand, a missed event).
const RECHECK: Duration = Duration::from_secs(60);
/// What an admission may spend on API calls (a cache miss), all of them together: well
/// inside the API server's timeout for the webhook (the chart's 5 s).
const LOOKUP_BUDGET: Duration = Duration::from_secs(3);
/// TLS handshakes in progress at once; more wait in the listen backlog.
const MAX_HANDSHAKES: usize = 64;
/// A handshake not done in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the certificate or key in the Secret is unreadable")]
    Pem,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the webhook's Service does not exist: no certificate is made without it")]
    NoService,
}

impl WebhookError {
    /// A low-cardinality label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Cert(_) => "certificate",
            Self::Tls(_) => "tls",
            Self::Pem => "pem",
            Self::Io(_) => "io",
            Self::NoService => "no_service",
        }
    }
}

/// Everything the webhook is told by its flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the HTTPS server listens.
    pub address: SocketAddr,
    /// The namespace the webhook runs in (its Secret's).
    pub namespace: String,
    /// The Service the API server calls (the certificate's DNS names).
    pub service: String,
    /// The Secret holding the serving certificate.
    pub tls_secret: String,
    /// The MutatingWebhookConfiguration whose webhooks' `caBundle` it keeps.
    pub configuration: String,
    /// Make and renew the certificate and publish its CA (false: cert-manager does both,
    /// the webhook only loads the Secret).
    pub manage_certificate: bool,
    pub lifetimes: Lifetimes,
    pub sidecar: SidecarImage,
}

// ----------------------------------------------------------------------------- TLS

/// The certificate the TLS server presents: whatever the Secret holds now.
#[derive(Debug, Default)]
pub struct CertSlot {
    current: RwLock<Option<(Arc<CertifiedKey>, String)>>,
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        crate::read(&self.current).as_ref().map(|(k, _)| k.clone())
    }
}

impl CertSlot {
    /// Loads `cert`/`key` (PEM) unless they are what is loaded already; true when it changed.
    fn load(&self, cert: &str, key: &str) -> Result<bool, WebhookError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        if crate::read(&self.current)
            .as_ref()
            .is_some_and(|(_, c)| c == cert)
        {
            return Ok(false);
        }
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| WebhookError::Pem)?;
        let der = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| WebhookError::Pem)?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        *crate::write(&self.current) = Some((certified, cert.to_string()));
        Ok(true)
    }

    pub fn is_loaded(&self) -> bool {
        crate::read(&self.current).is_some()
    }
}

// ------------------------------------------------------------------ configuration

/// Every ServiceAccount the release serves: "namespace/name" → the credential its
/// annotation names, or `None` without the annotation. Accounts without it are kept too
/// (a name, a few dozen bytes each), so that a pod of such an account is answered from the
/// cache: only an account not seen yet (created a moment ago beside its Deployment, or
/// before the first listing) costs a GET.
pub type Annotated = Arc<RwLock<BTreeMap<String, Option<String>>>>;

/// What the admission path reads instead of the API server: the annotated
/// ServiceAccounts and the `CognitoUnauthCredential`s, each from a watch that backs off on
/// errors, per watched namespace (or one for the cluster). [`Caches::start`] runs them
/// until shutdown.
#[derive(Clone)]
pub struct Caches {
    scopes: Vec<Scope>,
    /// Left to other releases (cluster-wide scope only).
    excluded: Vec<String>,
}

/// The caches of one namespace (`None`: every namespace).
#[derive(Clone)]
struct Scope {
    namespace: Option<String>,
    accounts: Annotated,
    credentials: reflector::Store<CognitoUnauthCredential>,
    /// True once the ServiceAccounts have been listed.
    accounts_synced: tokio::sync::watch::Receiver<bool>,
}

impl Caches {
    /// Starts the watches until `shutdown`: in each of `namespaces` (a release with
    /// watchNamespaces has Roles there and nothing cluster-wide), or cluster-wide when
    /// there are none, without the `excluded` namespaces (other releases' teams).
    pub fn start(
        client: &Client,
        namespaces: &[String],
        excluded: &[String],
        shutdown: &CancellationToken,
    ) -> Self {
        let scopes: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        let fields = crate::common::watch::excluding(excluded);
        let scopes = scopes
            .into_iter()
            .map(|namespace| {
                let fields = if namespace.is_none() {
                    fields.clone()
                } else {
                    None
                };
                Scope::start(client, namespace, fields, shutdown)
            })
            .collect();
        Self {
            scopes,
            excluded: excluded.to_vec(),
        }
    }

    /// The caches that cover `namespace`; none when the release does not watch it.
    fn scope(&self, namespace: &str) -> Option<&Scope> {
        if self.excluded.iter().any(|n| n == namespace) {
            return None;
        }
        self.scopes
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))
    }

    /// Returns once every cache holds a complete listing.
    async fn synced(&self) {
        for scope in &self.scopes {
            let mut accounts = scope.accounts_synced.clone();
            // An Err means the tracker stopped (shutdown): nothing to wait for then.
            let _ = accounts.wait_for(|s| *s).await;
            let _ = scope.credentials.wait_until_ready().await;
        }
    }
}

impl Scope {
    fn start(
        client: &Client,
        namespace: Option<String>,
        fields: Option<String>,
        shutdown: &CancellationToken,
    ) -> Self {
        fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
            <K as Resource>::DynamicType: Default,
        {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let accounts = Annotated::default();
        let (synced_tx, accounts_synced) = tokio::sync::watch::channel(false);
        let sas: Api<PartialObjectMeta<ServiceAccount>> = api(client, namespace.as_deref());
        let config = || match &fields {
            Some(f) => watcher::Config::default().fields(f),
            None => watcher::Config::default(),
        };
        tokio::spawn(until(
            shutdown.clone(),
            track_accounts(sas, config(), accounts.clone(), synced_tx),
        ));
        let (credentials, writer) = reflector::store();
        let cucs: Api<CognitoUnauthCredential> = api(client, namespace.as_deref());
        tokio::spawn(until(
            shutdown.clone(),
            reflector(
                writer,
                watcher(cucs, config())
                    .backoff(crate::common::watch::Backoff::default())
                    .modify(crate::crd::slim),
            )
            .for_each(|e| {
                if let Err(e) = e {
                    warn!(error = %e, "watching CognitoUnauthCredentials");
                }
                std::future::ready(())
            }),
        ));
        Self {
            namespace,
            accounts,
            credentials,
            accounts_synced,
        }
    }
}

/// Keeps the certificate, the TLS server's copy of it, and the webhook configuration.
pub struct Configurator {
    client: Client,
    settings: Settings,
    slot: Arc<CertSlot>,
    metrics: Arc<Metrics>,
}

/// What the webhook configuration holds now.
#[derive(Debug, Default)]
struct Observed {
    /// False while the configuration does not exist (not installed yet).
    exists: bool,
    /// Each webhook's name and `caBundle`.
    ca_bundles: Vec<(String, Option<String>)>,
    /// What we apply is conditional on it, so that a replica that read an older Secret
    /// can never put an older caBundle back over a newer one.
    version: Option<String>,
}

impl Configurator {
    pub fn new(
        client: Client,
        settings: Settings,
        slot: Arc<CertSlot>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            settings,
            slot,
            metrics,
        }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn configurations(&self) -> Api<MutatingWebhookConfiguration> {
        Api::all(self.client.clone())
    }

    /// The configuration as the API server has it.
    async fn observe(&self) -> Result<Observed, WebhookError> {
        let Some(mwc) = self
            .configurations()
            .get_opt(&self.settings.configuration)
            .await?
        else {
            return Ok(Observed::default());
        };
        Ok(Observed {
            exists: true,
            ca_bundles: mwc
                .webhooks
                .into_iter()
                .flatten()
                .map(|w| {
                    let bundle = w
                        .client_config
                        .ca_bundle
                        .and_then(|b| String::from_utf8(b.0).ok());
                    (w.name, bundle)
                })
                .collect(),
            version: mwc.metadata.resource_version,
        })
    }

    /// One pass: returns when to come back at the latest.
    pub async fn pass(&mut self) -> Result<Duration, WebhookError> {
        let now = jiff::Timestamp::now().as_second();
        let names = certs::service_dns_names(&self.settings.service, &self.settings.namespace);
        let mut next = RECHECK;
        // At most: a new CA, its publication, then the leaf.
        for _ in 0..3 {
            let secret = self.secrets().get_opt(&self.settings.tls_secret).await?;
            let stored = secret.as_ref().and_then(|s| {
                Bundle::from_secret(
                    s.data.as_ref()?,
                    s.metadata.annotations.as_ref().unwrap_or(&BTreeMap::new()),
                )
            });
            // cert-manager's: load it; its CA injector keeps caBundle (the webhook then
            // needs no access to its configuration at all).
            if !self.settings.manage_certificate {
                if let Some(s) = &secret {
                    self.load_external(s)?;
                }
                return Ok(next);
            }
            let observed = self.observe().await?;
            // Published: every webhook trusts the newest CA.
            let is_published = |b: &Bundle| {
                !observed.ca_bundles.is_empty()
                    && observed.ca_bundles.iter().all(|(_, p)| {
                        p.as_deref()
                            .zip(b.cas.first())
                            .is_some_and(|(p, ca)| certs::split_pem(p).contains(ca))
                    })
            };
            let step = certs::next_step(
                now,
                stored.as_ref(),
                &names,
                stored.as_ref().is_some_and(is_published),
            );
            match step {
                Step::Keep { at } => {
                    let Some(b) = stored else { break };
                    self.install(&b)?;
                    self.publish(Some(b.ca_bundle()), &observed).await?;
                    let wait = u64::try_from((at - now).max(1)).unwrap_or(1);
                    next = next.min(Duration::from_secs(wait));
                    break;
                }
                Step::Publish => {
                    if let Some(b) = &stored {
                        self.install(b)?;
                        self.publish(Some(b.ca_bundle()), &observed).await?;
                    }
                }
                Step::Fresh | Step::NewCa | Step::NewLeaf => {
                    let Some(b) =
                        certs::apply(step, now, stored.as_ref(), &self.settings.lifetimes, &names)?
                    else {
                        break;
                    };
                    if !self.store(secret, &b).await? {
                        // Another replica wrote first: read theirs.
                        continue;
                    }
                    info!(step = ?step, not_after = b.cert_not_after, "webhook certificate written");
                    if step != Step::NewCa {
                        self.install(&b)?;
                    }
                    self.publish(Some(b.ca_bundle()), &observed).await?;
                }
            }
        }
        Ok(next)
    }

    /// Writes the bundle; false when another writer got there first (create raced, or the
    /// Secret changed since it was read).
    async fn store(&self, current: Option<Secret>, b: &Bundle) -> Result<bool, WebhookError> {
        let (data, annotations) = b.to_secret_data();
        let api = self.secrets();
        let result = match current {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.settings.tls_secret.clone()),
                        annotations: Some(annotations),
                        // Never an orphan: without its Service (being uninstalled) the
                        // webhook is unreachable anyway, and a Secret made now would stay.
                        owner_references: Some(vec![
                            self.owner().await?.ok_or(WebhookError::NoService)?,
                        ]),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".to_string()),
                    data: Some(data),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret)
                    .await
                    .map(|_| ())
            }
            Some(mut s) => {
                // resourceVersion kept: a concurrent write makes this a conflict.
                s.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .extend(annotations);
                s.data = Some(data);
                s.metadata.managed_fields = None;
                api.replace(&self.settings.tls_secret, &PostParams::default(), &s)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The webhook's Service (the chart's) owns the Secret the webhook makes, so that
    /// uninstalling the chart removes it too (garbage collection).
    async fn owner(&self) -> Result<Option<OwnerReference>, WebhookError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        Ok(services
            .get_opt(&self.settings.service)
            .await?
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .and_then(|s| s.controller_owner_ref(&()))
            .map(|mut r| {
                r.controller = Some(false);
                r.block_owner_deletion = None;
                r
            }))
    }

    fn install(&self, b: &Bundle) -> Result<(), WebhookError> {
        if self.slot.load(&b.cert, &b.key)? {
            info!(not_after = b.cert_not_after, "serving certificate loaded");
        }
        self.metrics.webhook_certificate(b.cert_not_after);
        self.metrics.webhook_schedule(
            certs::renew_at(b.cert_not_before, b.cert_not_after),
            certs::renew_at(b.ca_not_before, b.ca_not_after),
            b.ca_not_after,
        );
        Ok(())
    }

    /// Loads a Secret written by someone else (cert-manager): tls.crt and tls.key only.
    fn load_external(&self, s: &Secret) -> Result<(), WebhookError> {
        let get = |k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        if let (Some(cert), Some(key)) = (get(certs::KEY_CERT), get(certs::KEY_KEY))
            && self.slot.load(&cert, &key)?
        {
            info!("serving certificate loaded from the Secret");
        }
        Ok(())
    }

    /// Applies `ca_bundle` to every webhook of the configuration that does not hold it;
    /// writes nothing when all do (or when the certificate is cert-manager's: its CA
    /// injector writes the caBundle). The apply names only `caBundle`: the chart owns every
    /// other field, and the webhook's field manager owns nothing else.
    async fn publish(
        &self,
        ca_bundle: Option<String>,
        observed: &Observed,
    ) -> Result<(), WebhookError> {
        let Some(patch) =
            ca_bundle.and_then(|b| ca_bundle_patch(&self.settings.configuration, observed, &b))
        else {
            return Ok(());
        };
        self.configurations()
            .patch(
                &self.settings.configuration,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }
}

/// The apply that puts `bundle` in every webhook of the configuration: `None` when each
/// holds it already, or while the configuration does not exist (nothing calls us then; a
/// watch event brings us back). It names `caBundle` and nothing else, conditional on the
/// resourceVersion read, so a replica that read an older Secret never puts an older
/// bundle back over a newer one.
fn ca_bundle_patch(
    configuration: &str,
    observed: &Observed,
    bundle: &str,
) -> Option<serde_json::Value> {
    if !observed.exists
        || observed
            .ca_bundles
            .iter()
            .all(|(_, b)| b.as_deref() == Some(bundle))
    {
        return None;
    }
    // ByteString serializes as base64, as the API wants caBundle.
    let encoded = k8s_openapi::ByteString(bundle.as_bytes().to_vec());
    let hooks: Vec<serde_json::Value> = observed
        .ca_bundles
        .iter()
        .map(|(name, _)| json!({"name": name, "clientConfig": {"caBundle": encoded}}))
        .collect();
    Some(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configuration, "resourceVersion": observed.version},
        "webhooks": hooks,
    }))
}

/// Runs the configurator until `shutdown`, woken by changes to its Secret and its
/// configuration and by its own schedule. Every watch backs off on errors (a forbidden
/// list or an API outage is not a hot loop) and stops at `shutdown`. The replica is ready
/// once `caches` are synced and a serving certificate is loaded.
pub async fn configure(
    mut configurator: Configurator,
    caches: Caches,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let client = configurator.client.clone();
    let settings = configurator.settings.clone();
    let wake = Arc::new(Notify::new());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    tokio::spawn(until(
        shutdown.clone(),
        watcher(secrets, by_name(&settings.tls_secret))
            .backoff(crate::common::watch::Backoff::default())
            .for_each(wake_on(wake.clone())),
    ));
    // A caBundle reset (by hand, or by a tool that applies the chart's manifest with it)
    // is put back at once. With cert-manager's certificate, its CA injector keeps it.
    if settings.manage_certificate {
        tokio::spawn(until(
            shutdown.clone(),
            watcher(mwcs, by_name(&settings.configuration))
                .backoff(crate::common::watch::Backoff::default())
                .for_each(wake_on(wake.clone())),
        ));
    }
    // Ready (below) only once the caches are synced: before that, a pod in an opted-in
    // namespace would be decided on an empty cache.
    tokio::select! {
        () = caches.synced() => {}
        () = shutdown.cancelled() => return,
    }
    // A pass reads the Secret and the configuration (two GETs) and writes only what
    // differs; it runs when woken by a change, when a renewal is due, and once a minute.
    // The heartbeat has its own pace.
    // After a failed pass: the watches' backoff (0.8 s doubling to 30 s, with jitter, so
    // that two replicas that failed together do not retry together).
    let mut backoff = crate::common::watch::Backoff::default();
    let mut due = tokio::time::Instant::now();
    loop {
        health.beat();
        if tokio::time::Instant::now() >= due {
            let wait = match configurator.pass().await {
                Ok(next) => {
                    backoff = crate::common::watch::Backoff::default();
                    configurator
                        .metrics
                        .webhook_configured(jiff::Timestamp::now().as_second());
                    // Once shutdown began, unready stays (the drain).
                    let ready = configurator.slot.is_loaded() && !shutdown.is_cancelled();
                    health.set_ready(ready);
                    configurator.metrics.webhook_ready(ready);
                    next
                }
                Err(e) => {
                    warn!(error = %e, label = e.label(), "webhook configuration pass failed");
                    backoff.next().unwrap_or(RECHECK)
                }
            };
            due = tokio::time::Instant::now() + wait;
        }
        let beat = tokio::time::Instant::now() + crate::common::http::BEAT_EVERY;
        tokio::select! {
            () = wake.notified() => due = tokio::time::Instant::now(),
            () = tokio::time::sleep_until(due.min(beat)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Runs `work` until it ends or `shutdown`.
async fn until(shutdown: CancellationToken, work: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = work => {}
        () = shutdown.cancelled() => {}
    }
}

/// A watcher's consumer that wakes the configurator on every event.
fn wake_on<K>(
    wake: Arc<Notify>,
) -> impl FnMut(Result<watcher::Event<K>, watcher::Error>) -> std::future::Ready<()> {
    move |_| {
        wake.notify_one();
        std::future::ready(())
    }
}

/// Keeps `annotated` equal to the ServiceAccounts and their annotation; sets `synced`
/// after the first complete listing.
async fn track_accounts(
    api: Api<PartialObjectMeta<ServiceAccount>>,
    config: watcher::Config,
    annotated: Annotated,
    synced: tokio::sync::watch::Sender<bool>,
) {
    // Only metadata: the annotation is all it needs, and a cluster has many accounts.
    type Meta = PartialObjectMeta<ServiceAccount>;
    let key = |sa: &Meta| format!("{}/{}", sa.namespace().unwrap_or_default(), sa.name_any());
    let value = |sa: &Meta| sa.annotations().get(ANN_SA_CREDENTIAL).cloned();
    let mut fresh: Option<BTreeMap<String, Option<String>>> = None;
    let mut stream = watcher(api, config)
        .backoff(crate::common::watch::Backoff::default())
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => fresh = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(sa)) => {
                if let Some(f) = fresh.as_mut() {
                    f.insert(key(&sa), value(&sa));
                }
            }
            Ok(watcher::Event::InitDone) => {
                *crate::write(&annotated) = fresh.take().unwrap_or_default();
                synced.send_replace(true);
            }
            Ok(watcher::Event::Apply(sa)) => {
                crate::write(&annotated).insert(key(&sa), value(&sa));
            }
            Ok(watcher::Event::Delete(sa)) => {
                crate::write(&annotated).remove(&key(&sa));
            }
            Err(e) => warn!(error = %e, "watching ServiceAccounts"),
        }
    }
}

// ------------------------------------------------------------------------ admission

#[derive(Clone)]
struct AppState {
    client: Client,
    caches: Caches,
    sidecar: SidecarImage,
    metrics: Arc<Metrics>,
    /// Cancelled when the replica drains: each answer then closes its connection, so the
    /// API server opens its next one to a replica that stays.
    draining: CancellationToken,
}

/// What an admission came to: the metrics' `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Patched with the credentials.
    Injected,
    /// Admitted as it came (not asked, or nothing to add).
    Unchanged,
    /// Refused with a reason that says what to fix.
    Refused,
    /// Refused because something failed on our side.
    Error,
}

impl Outcome {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Unchanged => "unchanged",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }
}

/// Answers one AdmissionReview for a pod. The ServiceAccount and the resource come from
/// `caches`; the API server is asked only when the cache does not have them or the
/// cached resource would be refused (it may have changed a moment ago), within one
/// budget for the whole admission ([`LOOKUP_BUDGET`]).
pub async fn admit(
    client: &Client,
    caches: &Caches,
    sidecar: &SidecarImage,
    req: &AdmissionRequest<DynamicObject>,
) -> (AdmissionResponse, Outcome) {
    let deadline = tokio::time::Instant::now() + LOOKUP_BUDGET;
    let resp = AdmissionResponse::from(req);
    let Some(obj) = &req.object else {
        return (resp, Outcome::Unchanged);
    };
    let namespace = req.namespace.clone().unwrap_or_default();
    let pod = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => return (resp.deny(format!("unreadable pod: {e}")), Outcome::Error),
    };
    let sa_name = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let pod_annotations = obj.annotations().clone();
    // The chart's namespaceSelector sends only the namespaces the release serves; a
    // configuration changed by hand could send others, which this release cannot read:
    // a pod that asked (annotation) is refused, any other passes unchanged.
    let Some(scope) = caches.scope(&namespace) else {
        if !pod_annotations.contains_key(ANN_INJECT) {
            return (resp, Outcome::Unchanged);
        }
        return (
            resp.deny(format!(
                "namespace {namespace} is not one this release of the webhook serves (the chart's watchNamespaces, excludeNamespaces): its pods get credentials from the release that serves it"
            )),
            Outcome::Refused,
        );
    };
    let sa_credential = if pod_annotations.contains_key(ANN_INJECT) {
        None
    } else {
        match account_credential(client, &scope.accounts, &namespace, &sa_name, deadline).await {
            Ok(c) => c,
            Err(e) => {
                return (
                    resp.deny(format!(
                        "could not read ServiceAccount {namespace}/{sa_name}: {e}"
                    )),
                    Outcome::Error,
                );
            }
        }
    };
    let names = inject::container_names(&pod);
    let ask = match inject::requested(&pod_annotations, sa_credential.as_deref(), &names) {
        Ok(Some(a)) => a,
        Ok(None) => return (resp, Outcome::Unchanged),
        Err(r) => return (resp.deny(r.0), Outcome::Refused),
    };
    let target = match credential(client, &scope.credentials, &namespace, &ask.name, deadline).await
    {
        Ok(Ok(t)) => t,
        Ok(Err(r)) => return (resp.deny(r.0), Outcome::Refused),
        Err(e) => {
            return (
                resp.deny(format!(
                    "could not read CognitoUnauthCredential {namespace}/{}: {e}",
                    ask.name
                )),
                Outcome::Error,
            );
        }
    };
    let injected = match inject::inject(&pod, &ask, &target, sidecar) {
        Ok(i) => i,
        Err(r) => return (resp.deny(r.0), Outcome::Refused),
    };
    patched(req, resp, &pod, injected)
}

/// The answer that makes `pod` the injected one: its JSON patch (none when nothing
/// changes) and warnings.
fn patched(
    req: &AdmissionRequest<DynamicObject>,
    resp: AdmissionResponse,
    pod: &serde_json::Value,
    injected: inject::Injected,
) -> (AdmissionResponse, Outcome) {
    let patch = json_patch::diff(pod, &injected.pod);
    let outcome = if patch.0.is_empty() {
        Outcome::Unchanged
    } else {
        Outcome::Injected
    };
    let mut resp = if patch.0.is_empty() {
        resp
    } else {
        match resp.with_patch(patch) {
            Ok(r) => r,
            Err(e) => {
                return (
                    AdmissionResponse::from(req).deny(format!("could not encode the patch: {e}")),
                    Outcome::Error,
                );
            }
        }
    };
    if !injected.warnings.is_empty() {
        resp.warnings = Some(injected.warnings);
    }
    (resp, outcome)
}

/// Why a lookup on the admission path failed.
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("no answer from the API server within the admission's budget")]
    TimedOut,
}

/// One GET within the admission's budget.
async fn get_by<T>(
    deadline: tokio::time::Instant,
    get: impl std::future::Future<Output = Result<Option<T>, kube::Error>>,
) -> Result<Option<T>, LookupError> {
    Ok(tokio::time::timeout_at(deadline, get)
        .await
        .map_err(|_| LookupError::TimedOut)??)
}

/// The credential a ServiceAccount names: from the cache, which holds every account,
/// annotated or not; from the API server only for an account the cache has not seen (made
/// a moment ago with its Deployment, its watch event not here yet, or before the first
/// listing). An annotation added to an existing account reaches the cache within its
/// watch's latency; a pod created in that instant is answered as before it.
async fn account_credential(
    client: &Client,
    annotated: &Annotated,
    namespace: &str,
    name: &str,
    deadline: tokio::time::Instant,
) -> Result<Option<String>, LookupError> {
    if let Some(c) = cached_account(annotated, namespace, name) {
        return Ok(c);
    }
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa: Option<ServiceAccount> = get_by(deadline, api.get_opt(name)).await?;
    Ok(sa.and_then(|s| s.annotations().get(ANN_SA_CREDENTIAL).cloned()))
}

/// What the cache knows of a ServiceAccount: `None` when it has not seen it, else the
/// credential its annotation names (`Some(None)`: no annotation).
fn cached_account(annotated: &Annotated, namespace: &str, name: &str) -> Option<Option<String>> {
    crate::read(annotated)
        .get(&format!("{namespace}/{name}"))
        .cloned()
}

/// The resource's [`Target`] when the controller has issued its Secret (else the
/// refusal): from the cache; from the API server when the cache does not have it or would
/// refuse it (created or issued a moment ago, its watch event not here yet).
async fn credential(
    client: &Client,
    cached: &reflector::Store<CognitoUnauthCredential>,
    namespace: &str,
    name: &str,
    deadline: tokio::time::Instant,
) -> Result<Result<Target, inject::Refusal>, LookupError> {
    let key = reflector::ObjectRef::new(name).within(namespace);
    if let Some(cuc) = cached.get(&key)
        && let Ok(t) = Target::issued(namespace, name, Some(&cuc))
    {
        return Ok(Ok(t));
    }
    let api: Api<CognitoUnauthCredential> = Api::namespaced(client.clone(), namespace);
    let fresh: Option<CognitoUnauthCredential> = get_by(deadline, api.get_opt(name)).await?;
    Ok(Target::issued(namespace, name, fresh.as_ref()))
}

async fn mutate(
    State(state): State<AppState>,
    axum::Json(review): axum::Json<AdmissionReview<DynamicObject>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let answer = answer(&state, review).await;
    let mut response = axum::Json(encoded(answer)).into_response();
    if state.draining.is_cancelled() {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The review in the API server's own encoding. kube-core writes `response.patch` (Go's
/// `[]byte`) as an array of numbers, which the API server accepts but decodes number by
/// number; Go writes a base64 string, a third of the size.
fn encoded(mut review: AdmissionReview<DynamicObject>) -> serde_json::Value {
    let patch = review.response.as_mut().and_then(|r| r.patch.take());
    // Infallible: every map in a review has string keys.
    let mut json = serde_json::to_value(&review).unwrap_or_default();
    if let (Some(patch), Some(response)) = (patch, json.get_mut("response"))
        && let Some(response) = response.as_object_mut()
    {
        response.insert(
            "patch".to_string(),
            serde_json::Value::String(base64_of(&patch)),
        );
    }
    json
}

/// Standard base64 with padding, as Go's encoding/json writes a `[]byte`.
fn base64_of(bytes: &[u8]) -> String {
    // k8s-openapi's ByteString is serialized exactly so.
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn answer(
    state: &AppState,
    review: AdmissionReview<DynamicObject>,
) -> AdmissionReview<DynamicObject> {
    let started = Instant::now();
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            state.metrics.admission(Outcome::Error.label(), started);
            return AdmissionResponse::invalid(e.to_string()).into_review();
        }
    };
    let (resp, outcome) = admit(&state.client, &state.caches, &state.sidecar, &req).await;
    state.metrics.admission(outcome.label(), started);
    if matches!(outcome, Outcome::Refused | Outcome::Error) {
        info!(
            namespace = req.namespace.as_deref().unwrap_or(""),
            outcome = outcome.label(),
            "pod admission refused"
        );
    }
    resp.into_review()
}

/// What the server answers with, and when it stops.
pub struct Serving {
    pub client: Client,
    pub caches: Caches,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the replica drains: every answer then closes its connection.
    pub draining: CancellationToken,
    /// Cancelled to stop serving.
    pub shutdown: CancellationToken,
}

/// Serves `POST /mutate` over TLS with whatever certificate `slot` holds, until `shutdown`;
/// from `draining` on, every answer closes its connection.
pub async fn serve(
    settings: &Settings,
    slot: Arc<CertSlot>,
    with: Serving,
) -> Result<(), WebhookError> {
    let Serving {
        client,
        caches,
        metrics,
        draining,
        shutdown,
    } = with;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let tcp = TcpListener::bind(settings.address).await?;
    let local = tcp.local_addr()?;
    info!(address = %local, "serving the injection webhook (POST /mutate)");
    let (tx, rx) = mpsc::channel(64);
    let accepting = shutdown.clone();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // No connection is taken while MAX_HANDSHAKES are in progress.
            let permit = tokio::select! {
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = accepting.cancelled() => return,
            };
            let (stream, peer) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(a) => a,
                    Err(e) => { warn!(error = %e, "accept"); continue; }
                },
                () = accepting.cancelled() => return,
            };
            // An answer is one small write after another (TLS records): none waits for
            // the previous one's acknowledgement.
            if let Err(e) = stream.set_nodelay(true) {
                warn!(error = %e, "TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            // Handshakes run apart: a slow client does not hold up the others.
            tokio::spawn(async move {
                let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                drop(permit);
                if let Ok(Ok(tls)) = done {
                    let _ = tx.send((tls, peer)).await;
                }
            });
        }
    });
    let app = Router::new()
        .route("/mutate", post(mutate))
        .with_state(AppState {
            client,
            caches,
            sidecar: settings.sidecar.clone(),
            metrics,
            draining,
        });
    axum::serve(TlsListener { rx, local }, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

struct TlsListener {
    rx: mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(namespace: Option<&str>) -> Scope {
        let (credentials, _writer) = reflector::store();
        let (_synced, accounts_synced) = tokio::sync::watch::channel(false);
        Scope {
            namespace: namespace.map(str::to_string),
            accounts: Annotated::default(),
            credentials,
            accounts_synced,
        }
    }

    #[test]
    fn a_release_serves_its_namespaces_and_no_excluded_one() {
        let team = Caches {
            scopes: vec![scope(Some("a")), scope(Some("b"))],
            excluded: vec![],
        };
        let served = |c: &Caches, ns: &str| c.scope(ns).map(|s| s.namespace.clone());
        assert_eq!(served(&team, "b"), Some(Some("b".into())));
        assert_eq!(served(&team, "c"), None);
        let cluster = Caches {
            scopes: vec![scope(None)],
            excluded: vec!["team-a".into()],
        };
        assert_eq!(served(&cluster, "anything"), Some(None));
        assert_eq!(served(&cluster, "team-a"), None);
    }

    fn observed(bundles: &[(&str, Option<&str>)]) -> Observed {
        Observed {
            exists: true,
            ca_bundles: bundles
                .iter()
                .map(|(n, b)| (n.to_string(), b.map(str::to_string)))
                .collect(),
            version: Some("42".into()),
        }
    }

    #[test]
    fn the_apply_names_only_the_ca_bundle_of_each_webhook() {
        let o = observed(&[("pods.x", Some("old")), ("accounts.x", None)]);
        let patch = ca_bundle_patch("cfg", &o, "new").expect("a change");
        let b64 = "bmV3"; // base64("new")
        assert_eq!(
            patch,
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "cfg", "resourceVersion": "42"},
                "webhooks": [
                    {"name": "pods.x", "clientConfig": {"caBundle": b64}},
                    {"name": "accounts.x", "clientConfig": {"caBundle": b64}},
                ],
            })
        );
    }

    #[test]
    fn nothing_is_written_when_every_webhook_holds_the_bundle_or_there_is_no_configuration() {
        let held = observed(&[("pods.x", Some("b")), ("accounts.x", Some("b"))]);
        assert_eq!(ca_bundle_patch("cfg", &held, "b"), None);
        assert_eq!(ca_bundle_patch("cfg", &Observed::default(), "b"), None);
        // One webhook behind is enough to write (both named: the apply is the whole set).
        let behind = observed(&[("pods.x", Some("b")), ("accounts.x", Some("a"))]);
        assert!(ca_bundle_patch("cfg", &behind, "b").is_some());
    }

    #[test]
    fn an_account_seen_without_the_annotation_is_answered_from_the_cache() {
        let annotated = Annotated::default();
        crate::write(&annotated).insert("ns/with".into(), Some("app".into()));
        crate::write(&annotated).insert("ns/without".into(), None);
        assert_eq!(
            cached_account(&annotated, "ns", "with"),
            Some(Some("app".into()))
        );
        // Known, not annotated: no injection, and no GET.
        assert_eq!(cached_account(&annotated, "ns", "without"), Some(None));
        // Not seen yet (or another namespace's): the API server is asked.
        assert_eq!(cached_account(&annotated, "ns", "new"), None);
        assert_eq!(cached_account(&annotated, "other", "with"), None);
    }

    #[test]
    fn the_patch_is_sent_as_go_encodes_bytes() {
        let patch = json_patch::Patch(vec![json_patch::PatchOperation::Remove(
            json_patch::RemoveOperation {
                path: json_patch::jsonptr::PointerBuf::parse("/metadata/labels").expect("path"),
            },
        )]);
        let mut resp = AdmissionResponse::invalid("x");
        resp.allowed = true;
        let resp = resp.with_patch(patch).expect("patch");
        let raw = resp.patch.clone().expect("bytes");
        let json = encoded(resp.into_review());
        let b64 = json["response"]["patch"].as_str().expect("a base64 string");
        let decoded: k8s_openapi::ByteString = serde_json::from_value(json!(b64)).expect("base64");
        assert_eq!(decoded.0, raw);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&decoded.0).expect("json"),
            json!([{"op": "remove", "path": "/metadata/labels"}])
        );
        assert_eq!(json["response"]["patchType"], "JSONPatch");
        // No patch, no key.
        let plain = encoded(AdmissionResponse::invalid("y").into_review());
        assert!(plain["response"].get("patch").is_none());
        assert_eq!(plain["response"]["allowed"], false);
    }
}
