//! The injection webhook: a mutating admission webhook for pods, served over TLS by every
//! replica (no leader: any replica answers), and the loop that keeps what the API server
//! needs to call it in place.
//!
//! - [`admit`]: an AdmissionReview in, the answer out: the pod's ask ([`inject::requested`]),
//!   the named `CognitoUnauthCredential` read from the API server, the pod it becomes
//!   ([`inject::inject`]) as a JSON patch, warnings, or a refusal that says what to fix.
//! - [`Configurator`]: the serving certificate ([`crate::certs`]) in its Secret, loaded into
//!   the TLS server, and the MutatingWebhookConfiguration's `caBundle` and
//!   `matchConditions`: the API server calls the webhook only for pods with the annotation
//!   or whose ServiceAccount has one, so no other pod waits on it or fails with it.
//! - [`serve`]: the HTTPS server.

use std::collections::{BTreeMap, BTreeSet};
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
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::certs::{self, Bundle, Lifetimes, Step};
use crate::crd::CognitoUnauthCredential;
use crate::http::Health;
use crate::inject::{self, ANN_INJECT, ANN_SA_CREDENTIAL, SidecarImage, Target};
use crate::metrics::Metrics;

/// Field manager of what the webhook writes.
const MANAGER: &str = "cognito-unauth-webhook";
/// The name of the one match condition the webhook keeps.
pub const MATCH_CONDITION: &str = "asks-for-cognito-credentials";
/// The configuration is checked at least this often (a caBundle reset by hand, a missed event).
const RECHECK: Duration = Duration::from_secs(60);
/// An API call from the admission path gives up after this long (the API server's own
/// timeout for the webhook is longer).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(4);

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
    /// The MutatingWebhookConfiguration and the webhook in it.
    pub configuration: String,
    pub webhook: String,
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

/// ServiceAccounts with the annotation: "namespace/name" → the credential's name.
pub type Annotated = Arc<RwLock<BTreeMap<String, String>>>;

/// The CEL match condition: the pod has the annotation, or runs as one of `accounts`
/// ("namespace/name"). Names are DNS labels and subdomains: no quoting is needed, and
/// anything else is left out.
pub fn match_expression(accounts: &BTreeSet<String>) -> String {
    let pod = format!(
        "(has(object.metadata.annotations) && '{ANN_INJECT}' in object.metadata.annotations)"
    );
    let listed: Vec<String> = accounts
        .iter()
        .filter(|a| {
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-./".contains(&b))
        })
        .map(|a| format!("'{a}'"))
        .collect();
    if listed.is_empty() {
        return pod;
    }
    format!(
        "{pod} || (request.namespace + '/' + (has(object.spec.serviceAccountName) ? object.spec.serviceAccountName : 'default')) in [{}]",
        listed.join(", ")
    )
}

/// Keeps the certificate, the TLS server's copy of it, and the webhook configuration.
pub struct Configurator {
    client: Client,
    settings: Settings,
    slot: Arc<CertSlot>,
    annotated: Annotated,
    metrics: Arc<Metrics>,
}

/// What the webhook configuration holds now for our webhook.
#[derive(Debug, Default)]
struct Observed {
    /// False while the configuration does not exist (not installed yet).
    exists: bool,
    ca_bundle: Option<String>,
    expression: Option<String>,
    /// What we apply is conditional on it, so that a replica that read an older Secret
    /// can never put an older caBundle back over a newer one.
    version: Option<String>,
}

impl Configurator {
    pub fn new(
        client: Client,
        settings: Settings,
        slot: Arc<CertSlot>,
        annotated: Annotated,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            settings,
            slot,
            annotated,
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
        let hook = mwc
            .webhooks
            .into_iter()
            .flatten()
            .find(|w| w.name == self.settings.webhook);
        Ok(Observed {
            exists: true,
            ca_bundle: hook
                .as_ref()
                .and_then(|w| w.client_config.ca_bundle.clone())
                .and_then(|b| String::from_utf8(b.0).ok()),
            expression: hook
                .and_then(|w| w.match_conditions)
                .into_iter()
                .flatten()
                .find(|c| c.name == MATCH_CONDITION)
                .map(|c| c.expression),
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
            let observed = self.observe().await?;
            if !self.settings.manage_certificate {
                if let Some(s) = &secret {
                    self.load_external(s)?;
                }
                self.publish(None, &observed).await?;
                return Ok(next);
            }
            let is_published = |b: &Bundle| {
                observed
                    .ca_bundle
                    .as_deref()
                    .zip(b.cas.first())
                    .is_some_and(|(p, ca)| certs::split_pem(p).contains(ca))
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

    /// Applies the caBundle (when we manage it) and the match condition where the
    /// configuration differs from them; writes nothing when it holds them already.
    async fn publish(
        &self,
        ca_bundle: Option<String>,
        observed: &Observed,
    ) -> Result<(), WebhookError> {
        let accounts: BTreeSet<String> = crate::read(&self.annotated).keys().cloned().collect();
        let expression = match_expression(&accounts);
        let bundle_held = ca_bundle.is_none() || observed.ca_bundle == ca_bundle;
        // Not installed (yet): nothing calls us; a watch event brings us back.
        if !observed.exists
            || (bundle_held && observed.expression.as_deref() == Some(expression.as_str()))
        {
            return Ok(());
        }
        let mut hook = json!({
            "name": self.settings.webhook,
            "matchConditions": [{"name": MATCH_CONDITION, "expression": expression}],
        });
        if let Some(b) = ca_bundle {
            // ByteString serializes as base64, as the API wants caBundle.
            hook["clientConfig"] = json!({"caBundle": k8s_openapi::ByteString(b.into_bytes())});
        }
        let patch = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": self.settings.configuration, "resourceVersion": observed.version},
            "webhooks": [hook],
        });
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

/// Runs the configurator until `shutdown`, woken by changes to its Secret, its
/// configuration and annotated ServiceAccounts, and by its own schedule.
pub async fn configure(
    mut configurator: Configurator,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let client = configurator.client.clone();
    let settings = configurator.settings.clone();
    let wake = Arc::new(Notify::new());
    let synced = Arc::new(Notify::new());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let sas: Api<PartialObjectMeta<ServiceAccount>> = Api::all(client.clone());
    let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    tokio::spawn(watcher(secrets, by_name(&settings.tls_secret)).for_each(wake_on(wake.clone())));
    // A change to the configuration (a helm upgrade resetting the match condition, a
    // caBundle edited by hand) is applied over at once.
    tokio::spawn(watcher(mwcs, by_name(&settings.configuration)).for_each(wake_on(wake.clone())));
    tokio::spawn(track_accounts(
        sas,
        configurator.annotated.clone(),
        wake.clone(),
        synced.clone(),
    ));
    // The first pass waits for the ServiceAccounts' first listing (the match condition).
    tokio::select! {
        () = synced.notified() => {}
        () = shutdown.cancelled() => return,
    }
    // A pass reads the Secret and the configuration (two GETs) and writes only what
    // differs; it runs when woken by a change, when a renewal is due, and once a minute.
    // The heartbeat has its own pace.
    let mut failures = 0u32;
    let mut due = tokio::time::Instant::now();
    loop {
        health.beat();
        if tokio::time::Instant::now() >= due {
            let wait = match configurator.pass().await {
                Ok(next) => {
                    failures = 0;
                    health.set_ready(configurator.slot.is_loaded());
                    next
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, label = e.label(), "webhook configuration pass failed");
                    Duration::from_secs(2u64.saturating_pow(failures.min(5)))
                }
            };
            due = tokio::time::Instant::now() + wait;
        }
        let beat = tokio::time::Instant::now() + crate::http::BEAT_EVERY;
        tokio::select! {
            () = wake.notified() => due = tokio::time::Instant::now(),
            () = tokio::time::sleep_until(due.min(beat)) => {}
            () = shutdown.cancelled() => return,
        }
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

/// Keeps `annotated` equal to the ServiceAccounts that carry the annotation.
async fn track_accounts(
    api: Api<PartialObjectMeta<ServiceAccount>>,
    annotated: Annotated,
    wake: Arc<Notify>,
    synced: Arc<Notify>,
) {
    // Only metadata: the annotation is all it needs, and a cluster has many accounts.
    type Meta = PartialObjectMeta<ServiceAccount>;
    let key = |sa: &Meta| format!("{}/{}", sa.namespace().unwrap_or_default(), sa.name_any());
    let value = |sa: &Meta| sa.annotations().get(ANN_SA_CREDENTIAL).cloned();
    let mut fresh: Option<BTreeMap<String, String>> = None;
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                fresh = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(sa)) => {
                if let (Some(f), Some(v)) = (fresh.as_mut(), value(&sa)) {
                    f.insert(key(&sa), v);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                let f = fresh.take().unwrap_or_default();
                *crate::write(&annotated) = f;
                synced.notify_one();
                true
            }
            Ok(watcher::Event::Apply(sa)) => {
                let mut map = crate::write(&annotated);
                match value(&sa) {
                    Some(v) => map.insert(key(&sa), v.clone()) != Some(v),
                    None => map.remove(&key(&sa)).is_some(),
                }
            }
            Ok(watcher::Event::Delete(sa)) => crate::write(&annotated).remove(&key(&sa)).is_some(),
            Err(e) => {
                warn!(error = %e, "watching ServiceAccounts");
                false
            }
        };
        if changed {
            wake.notify_one();
        }
    }
}

// ------------------------------------------------------------------------ admission

#[derive(Clone)]
struct AppState {
    client: Client,
    annotated: Annotated,
    sidecar: SidecarImage,
    metrics: Arc<Metrics>,
}

/// Answers one AdmissionReview for a pod.
pub async fn admit(
    client: &Client,
    annotated: &Annotated,
    sidecar: &SidecarImage,
    req: &AdmissionRequest<DynamicObject>,
) -> (AdmissionResponse, &'static str) {
    let resp = AdmissionResponse::from(req);
    let Some(obj) = &req.object else {
        return (resp, "unchanged");
    };
    let namespace = req.namespace.clone().unwrap_or_default();
    let pod = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => return (resp.deny(format!("unreadable pod: {e}")), "error"),
    };
    let sa_name = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let pod_annotations = obj.annotations().clone();
    let sa_credential = if pod_annotations.contains_key(ANN_INJECT) {
        None
    } else {
        match account_credential(client, annotated, &namespace, &sa_name).await {
            Ok(c) => c,
            Err(e) => {
                return (
                    resp.deny(format!(
                        "could not read ServiceAccount {namespace}/{sa_name}: {e}"
                    )),
                    "error",
                );
            }
        }
    };
    let names = inject::container_names(&pod);
    let ask = match inject::requested(&pod_annotations, sa_credential.as_deref(), &names) {
        Ok(Some(a)) => a,
        Ok(None) => return (resp, "unchanged"),
        Err(r) => return (resp.deny(r.0), "refused"),
    };
    let api: Api<CognitoUnauthCredential> = Api::namespaced(client.clone(), &namespace);
    let cuc = match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(&ask.name)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return (
                resp.deny(format!(
                    "could not read CognitoUnauthCredential {namespace}/{}: {e}",
                    ask.name
                )),
                "error",
            );
        }
        Err(_) => {
            return (
                resp.deny(format!(
                    "reading CognitoUnauthCredential {namespace}/{} timed out",
                    ask.name
                )),
                "error",
            );
        }
    };
    let target = Target::new(&ask.name, cuc.as_ref().map(|c| &c.spec));
    let injected = match inject::inject(&pod, &namespace, &ask, &target, sidecar) {
        Ok(i) => i,
        Err(r) => return (resp.deny(r.0), "refused"),
    };
    let patch = json_patch::diff(&pod, &injected.pod);
    let outcome = if patch.0.is_empty() {
        "unchanged"
    } else {
        "injected"
    };
    let mut resp = if patch.0.is_empty() {
        resp
    } else {
        match resp.with_patch(patch) {
            Ok(r) => r,
            Err(e) => {
                return (
                    AdmissionResponse::from(req).deny(format!("could not encode the patch: {e}")),
                    "error",
                );
            }
        }
    };
    if !injected.warnings.is_empty() {
        resp.warnings = Some(injected.warnings);
    }
    (resp, outcome)
}

/// The credential a ServiceAccount names: from the watched map, else (a pod created in the
/// moment between the annotation and the watch event) read from the API server.
async fn account_credential(
    client: &Client,
    annotated: &Annotated,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, kube::Error> {
    if let Some(c) = crate::read(annotated).get(&format!("{namespace}/{name}")) {
        return Ok(Some(c.clone()));
    }
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name))
        .await
        .map_err(|_| {
            kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            )))
        })??;
    Ok(sa.and_then(|s| s.annotations().get(ANN_SA_CREDENTIAL).cloned()))
}

async fn mutate(
    State(state): State<AppState>,
    axum::Json(review): axum::Json<AdmissionReview<DynamicObject>>,
) -> axum::Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            state.metrics.admission("error", started);
            return axum::Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let (resp, outcome) = admit(&state.client, &state.annotated, &state.sidecar, &req).await;
    state.metrics.admission(outcome, started);
    if outcome == "refused" || outcome == "error" {
        info!(
            namespace = req.namespace.as_deref().unwrap_or(""),
            outcome, "pod admission refused"
        );
    }
    axum::Json(resp.into_review())
}

/// Serves `POST /mutate` over TLS with whatever certificate `slot` holds, until `shutdown`.
pub async fn serve(
    client: Client,
    settings: &Settings,
    slot: Arc<CertSlot>,
    annotated: Annotated,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
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
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                r = tcp.accept() => match r {
                    Ok(a) => a,
                    Err(e) => { warn!(error = %e, "accept"); continue; }
                },
                () = accepting.cancelled() => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            // Handshakes run apart: a slow client does not hold up the others.
            tokio::spawn(async move {
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                {
                    let _ = tx.send((tls, peer)).await;
                }
            });
        }
    });
    let app = Router::new()
        .route("/mutate", post(mutate))
        .with_state(AppState {
            client,
            annotated,
            sidecar: settings.sidecar.clone(),
            metrics,
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

    #[test]
    fn the_match_condition_lists_annotated_accounts_only_when_there_are_some() {
        let none = match_expression(&BTreeSet::new());
        assert_eq!(
            none,
            "(has(object.metadata.annotations) && 'cognito.kubecred.io/inject' in object.metadata.annotations)"
        );
        let some: BTreeSet<String> = ["a/app".to_string(), "b/x'y".to_string()].into();
        let expr = match_expression(&some);
        assert!(expr.starts_with(&none));
        assert!(expr.ends_with("in ['a/app']"), "{expr}");
    }
}
