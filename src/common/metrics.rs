//! Prometheus metrics (prometheus-client), cert-manager's model: per-resource expiration,
//! renewal and ready gauges, plus Cognito requests by operation and outcome with latency,
//! rotations, failures by reason, reconcile errors by class and build info.
//!
//! Per-resource series use the labels `namespace` and `name` only, and are removed when
//! the resource goes away, so the series count follows the resource count.

use crate::crd::conditions;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::crd::CognitoUnauthCredentialStatus;

/// A resource's labels. The names are shared by its five series (one allocation each
/// instead of one per series: a few hundred bytes per resource at scale).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// True, False or Unknown; the series for the current value is 1, the others 0.
    pub condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: String,
    /// `ok` or the condition reason of the error (Throttled, CognitoUnavailable, ...).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabels {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: String,
    /// triggered, not_found, forbidden or failed.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// Every metric the controller exports, registered under `cognito_unauth_controller_`.
pub struct Metrics {
    pub registry: Registry,
    expiration: Family<ResourceLabels, FloatGauge>,
    renewal: Family<ResourceLabels, FloatGauge>,
    ready: Family<ReadyLabels, Gauge>,
    cognito_requests: Family<RequestLabels, Counter>,
    cognito_latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    rotations: Counter,
    rotation_failures: Family<ReasonLabels, Counter>,
    reconcile_errors: Family<ClassLabels, Counter>,
    reconciliations: Counter,
    rollout_restarts: Family<RestartLabels, Counter>,
    tracked: Gauge,
    leader: Gauge,
    admissions: Family<OutcomeLabels, Counter>,
    admission_latency: Histogram,
    webhook_certificate_expiration: FloatGauge,
    webhook_certificate_renewal: FloatGauge,
    webhook_ca_expiration: FloatGauge,
    webhook_ca_renewal: FloatGauge,
    webhook_ready: Gauge,
    webhook_configured: FloatGauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// injected, unchanged, refused or error.
    pub outcome: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cognito_unauth_controller");
        let m = Self {
            expiration: Family::default(),
            renewal: Family::default(),
            ready: Family::default(),
            cognito_requests: Family::default(),
            cognito_latency: Family::new_with_constructor(latency_histogram),
            rotations: Counter::default(),
            rotation_failures: Family::default(),
            reconcile_errors: Family::default(),
            reconciliations: Counter::default(),
            rollout_restarts: Family::default(),
            tracked: Gauge::default(),
            leader: Gauge::default(),
            admissions: Family::default(),
            // From 0.5 ms: an admission answered from memory takes well under a millisecond.
            admission_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            webhook_certificate_expiration: FloatGauge::default(),
            webhook_certificate_renewal: FloatGauge::default(),
            webhook_ca_expiration: FloatGauge::default(),
            webhook_ca_renewal: FloatGauge::default(),
            webhook_ready: Gauge::default(),
            webhook_configured: FloatGauge::default(),
            registry: Registry::default(),
        };
        Self::register_controller(&m, &mut registry);
        Self::register_webhook(&m, &mut registry);
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "Build information; always 1", build);
        Self { registry, ..m }
    }

    /// The controller's families: per resource, per AWS call, per reconcile.
    fn register_controller(m: &Self, registry: &mut Registry) {
        registry.register(
            "credential_expiration_timestamp_seconds",
            "When the credentials in the resource's Secret expire (Unix time)",
            m.expiration.clone(),
        );
        registry.register(
            "credential_renewal_timestamp_seconds",
            "When the controller will next rotate the resource's credentials (Unix time)",
            m.renewal.clone(),
        );
        registry.register(
            "credential_ready_status",
            "The resource's Ready condition: 1 for the current status (True, False or Unknown)",
            m.ready.clone(),
        );
        registry.register(
            "cognito_requests",
            "AWS calls (Cognito Identity; STS AssumeRoleWithWebIdentity with flow Basic, GetCallerIdentity with spec.verify) by operation and outcome",
            m.cognito_requests.clone(),
        );
        registry.register(
            "cognito_request_duration_seconds",
            "Latency of the AWS calls, by operation",
            m.cognito_latency.clone(),
        );
        registry.register(
            "rotations",
            "Credentials written to a Secret",
            m.rotations.clone(),
        );
        registry.register(
            "rotation_failures",
            "Failed attempts to get credentials, by condition reason",
            m.rotation_failures.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed on the Kubernetes API, by class",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconciliations",
            "Reconciles run",
            m.reconciliations.clone(),
        );
        registry.register(
            "rollout_restarts",
            "Rollout restarts of spec.rolloutRestartTargets, by kind and result",
            m.rollout_restarts.clone(),
        );
        registry.register(
            "tracked_objects",
            "Resources the controller holds per-object memory for (failures, unsynced writes); 0 when all are settled",
            m.tracked.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica reconciles (it holds the Lease, or runs without leader election); 0 while it stands by",
            m.leader.clone(),
        );
    }

    /// The injection webhook's families (registered in both processes; only the webhook
    /// sets them).
    fn register_webhook(m: &Self, registry: &mut Registry) {
        registry.register(
            "webhook_admissions",
            "Pod admissions answered by the injection webhook, by outcome (injected, unchanged, refused, error)",
            m.admissions.clone(),
        );
        registry.register(
            "webhook_admission_duration_seconds",
            "Time the injection webhook took to answer an admission request",
            m.admission_latency.clone(),
        );
        registry.register(
            "webhook_certificate_expiration_timestamp_seconds",
            "When the webhook's serving certificate expires (Unix time)",
            m.webhook_certificate_expiration.clone(),
        );
        registry.register(
            "webhook_certificate_renewal_timestamp_seconds",
            "When the webhook renews its serving certificate (Unix time; 0 with cert-manager's)",
            m.webhook_certificate_renewal.clone(),
        );
        registry.register(
            "webhook_ca_expiration_timestamp_seconds",
            "When the webhook's own CA expires (Unix time; 0 with cert-manager's)",
            m.webhook_ca_expiration.clone(),
        );
        registry.register(
            "webhook_ca_renewal_timestamp_seconds",
            "When the webhook renews its own CA (Unix time; 0 with cert-manager's)",
            m.webhook_ca_renewal.clone(),
        );
        registry.register(
            "webhook_ready",
            "1 while this webhook replica reports ready (a serving certificate loaded, its caches synced), else 0",
            m.webhook_ready.clone(),
        );
        registry.register(
            "webhook_configuration_success_timestamp_seconds",
            "When this webhook replica last found its certificate and configuration as they should be (Unix time)",
            m.webhook_configured.clone(),
        );
    }

    fn labels(namespace: &str, name: &str) -> ResourceLabels {
        ResourceLabels {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The Ready series of the resource `l`, one per condition status.
    fn ready_labels(l: &ResourceLabels) -> [ReadyLabels; 3] {
        ["True", "False", "Unknown"].map(|condition| ReadyLabels {
            namespace: l.namespace.clone(),
            name: l.name.clone(),
            condition,
        })
    }

    /// Sets the per-resource gauges from the status just computed.
    pub fn observe(&self, namespace: &str, name: &str, st: &CognitoUnauthCredentialStatus) {
        let l = Self::labels(namespace, name);
        match &st.expiration {
            Some(t) => {
                self.expiration
                    .get_or_create(&l)
                    .set(t.0.as_second() as f64);
            }
            None => {
                self.expiration.remove(&l);
            }
        }
        match &st.renewal_time {
            Some(t) => {
                self.renewal.get_or_create(&l).set(t.0.as_second() as f64);
            }
            None => {
                self.renewal.remove(&l);
            }
        }
        let current = conditions::ready_of(st).map_or("Unknown", |c| c.status.as_str());
        for rl in Self::ready_labels(&l) {
            self.ready
                .get_or_create(&rl)
                .set(i64::from(rl.condition == current));
        }
    }

    /// Drops the per-resource series of a resource that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        let l = Self::labels(namespace, name);
        self.expiration.remove(&l);
        self.renewal.remove(&l);
        for rl in Self::ready_labels(&l) {
            self.ready.remove(&rl);
        }
    }

    pub fn rotated(&self) {
        self.rotations.inc();
    }

    pub fn rotation_failed(&self, reason: &str) {
        self.rotation_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn rollout_restart(&self, kind: &str, result: &str) {
        self.rollout_restarts
            .get_or_create(&RestartLabels {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn reconcile_error(&self, class: &str) {
        self.reconcile_errors
            .get_or_create(&ClassLabels {
                class: class.to_string(),
            })
            .inc();
    }

    pub fn tracked_objects(&self, n: usize) {
        self.tracked.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// This replica started (true) or stopped (false) reconciling. One that stopped drops
    /// its per-resource series: the new leader exports them, and stale copies from a
    /// standby would keep alerts on the old values.
    pub fn leading(&self, yes: bool) {
        self.leader.set(i64::from(yes));
        if !yes {
            self.expiration.clear();
            self.renewal.clear();
            self.ready.clear();
        }
    }

    /// An admission answered by the webhook.
    pub fn admission(&self, outcome: &str, started: Instant) {
        self.admissions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
        self.admission_latency
            .observe(started.elapsed().as_secs_f64());
    }

    /// The serving certificate now loaded expires at `unix` seconds.
    pub fn webhook_certificate(&self, unix: i64) {
        // Unix seconds fit an f64 exactly.
        self.webhook_certificate_expiration.set(unix as f64);
    }

    /// When the webhook's own certificate and CA are due for renewal, and when the CA
    /// expires (Unix seconds).
    pub fn webhook_schedule(&self, cert_renewal: i64, ca_renewal: i64, ca_expiration: i64) {
        self.webhook_certificate_renewal.set(cert_renewal as f64);
        self.webhook_ca_renewal.set(ca_renewal as f64);
        self.webhook_ca_expiration.set(ca_expiration as f64);
    }

    /// This webhook replica reports ready, or not.
    pub fn webhook_ready(&self, ready: bool) {
        self.webhook_ready.set(i64::from(ready));
    }

    /// A configuration pass found everything as it should be at `unix` seconds.
    pub fn webhook_configured(&self, unix: i64) {
        self.webhook_configured.set(unix as f64);
    }

    pub fn reconciled(&self) {
        self.reconciliations.inc();
    }

    /// Counts one Cognito or STS call and observes its latency.
    pub fn request(&self, operation: &str, started: Instant, outcome: &str) {
        self.cognito_requests
            .get_or_create(&RequestLabels {
                operation: operation.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.cognito_latency
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions::reason;
    use crate::reconcile::status::{Builder, time};
    use jiff::Timestamp;

    #[test]
    fn per_resource_series_follow_status_and_go_away() {
        let m = Metrics::new();
        let exp = Timestamp::from_second(1_800_000_000).unwrap();
        let st = CognitoUnauthCredentialStatus {
            expiration: Some(time(exp)),
            renewal_time: Some(time(exp - jiff::SignedDuration::from_mins(20))),
            ..Default::default()
        };
        let mut b = Builder::new(st, None, exp);
        b.ready(reason::CREDENTIALS_ISSUED, String::new());
        let st = b.build();
        m.observe("ns", "app", &st);
        let text = m.render().unwrap();
        assert!(text.contains(
            "cognito_unauth_controller_credential_expiration_timestamp_seconds{namespace=\"ns\",name=\"app\"} 1800000000"
        ), "{text}");
        assert!(text.contains(
            "cognito_unauth_controller_credential_ready_status{namespace=\"ns\",name=\"app\",condition=\"True\"} 1"
        ));
        assert!(text.contains(
            "cognito_unauth_controller_credential_ready_status{namespace=\"ns\",name=\"app\",condition=\"False\"} 0"
        ));
        assert!(text.contains("cognito_unauth_controller_build_info{version="));
        m.forget("ns", "app");
        let text = m.render().unwrap();
        assert!(!text.contains("name=\"app\""), "{text}");
    }

    #[test]
    fn leader_gauge_follows_leadership() {
        let m = Metrics::new();
        // A standby (and the webhook, which never leads) exports 0, not nothing: the
        // alert on "no replica leads" needs the series.
        assert!(
            m.render()
                .unwrap()
                .contains("\ncognito_unauth_controller_leader 0\n")
        );
        m.leading(true);
        assert!(
            m.render()
                .unwrap()
                .contains("\ncognito_unauth_controller_leader 1\n")
        );
        let exp = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let st = CognitoUnauthCredentialStatus {
            expiration: Some(time(exp)),
            renewal_time: Some(time(exp)),
            ..Default::default()
        };
        m.observe("ns", "app", &st);
        m.leading(false);
        let text = m.render().unwrap();
        assert!(
            text.contains("\ncognito_unauth_controller_leader 0\n"),
            "{text}"
        );
        assert!(!text.contains("name=\"app\""), "{text}");
    }
}

/// Every metric name the chart's Grafana dashboard, its PrometheusRule (and the alerts'
/// unit tests), README.md and docs/ use is one a scrape of the controller holds.
#[cfg(test)]
mod names {
    use super::*;
    use crate::reconcile::status::time;
    use std::collections::BTreeSet;
    use std::path::Path;

    const PREFIX: &str = "cognito_unauth_controller_";

    fn read(path: &str) -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The exposition with a series in every family: an empty family is not rendered at
    /// all (no `# TYPE` line), so each is given one here.
    fn populated() -> String {
        let m = Metrics::new();
        let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let st = CognitoUnauthCredentialStatus {
            expiration: Some(time(t)),
            renewal_time: Some(time(t)),
            ..Default::default()
        };
        m.observe("ns", "app", &st);
        m.request("GetId", Instant::now(), "ok");
        m.rotated();
        m.rotation_failed("Throttled");
        m.reconcile_error("kube_api");
        m.reconciled();
        m.rollout_restart("Deployment", "triggered");
        m.tracked_objects(1);
        m.leading(true);
        m.admission("injected", Instant::now());
        m.webhook_certificate(1_800_000_000);
        m.webhook_schedule(1_799_000_000, 1_900_000_000, 1_950_000_000);
        m.webhook_ready(true);
        m.webhook_configured(1_700_000_000);
        m.render().unwrap()
    }

    /// (the families, by their `# TYPE` name; the series names a scrape holds).
    fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
        let text = populated();
        let families: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect();
        // Each family registered in this file has a series above.
        let registered = include_str!("metrics.rs")
            .matches(concat!("registry", ".register("))
            .count();
        assert_eq!(
            families.len(),
            registered,
            "a family without a series: {text}"
        );
        (families, series)
    }

    /// Every `cognito_unauth_controller_…` word in `text` (letters, digits, `_`).
    fn named(text: &str) -> BTreeSet<String> {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut names = BTreeSet::new();
        for (at, _) in text.match_indices(PREFIX) {
            if text[..at].chars().next_back().is_some_and(word) {
                continue;
            }
            let end = text[at..]
                .find(|c: char| !word(c))
                .map_or(text.len(), |n| at + n);
            if end > at + PREFIX.len() {
                names.insert(text[at..end].to_string());
            }
        }
        names
    }

    fn unknown(text: &str, known: &BTreeSet<String>) -> Vec<String> {
        named(text)
            .into_iter()
            .filter(|n| !known.contains(n))
            .collect()
    }

    /// The PromQL of a Grafana dashboard: targets' `expr`, variables' `query`/`definition`.
    fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition" | "query", serde_json::Value::String(s)) => {
                            out.push(s.clone());
                        }
                        _ => queries(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_dashboard_names_only_exported_series() {
        let (_, series) = exported();
        let json: serde_json::Value = serde_json::from_str(&read(
            "charts/cognito-unauth-controller/files/dashboard.json",
        ))
        .expect("the dashboard is JSON");
        let mut qs = Vec::new();
        queries(&json, &mut qs);
        let all = qs.join("\n");
        assert!(named(&all).len() >= 10, "few metrics: {qs:#?}");
        assert_eq!(
            unknown(&all, &series),
            Vec::<String>::new(),
            "dashboard.json"
        );
    }

    #[test]
    fn the_alerts_and_their_tests_name_only_exported_series() {
        let (_, series) = exported();
        // The template holds the expressions as written (helm fills in only thresholds
        // and the job); the unit tests' input series must be real series too.
        for path in [
            "charts/cognito-unauth-controller/templates/extras.yaml",
            "charts/cognito-unauth-controller/tests/prometheusrule_test.yaml",
        ] {
            let text = read(path);
            assert!(named(&text).len() >= 5, "{path}");
            assert_eq!(unknown(&text, &series), Vec::<String>::new(), "{path}");
        }
    }

    #[test]
    fn the_docs_name_only_exported_metrics() {
        let (families, series) = exported();
        // Prose may name a histogram by its family; a query may not.
        let known: BTreeSet<String> = families.union(&series).cloned().collect();
        let mut paths = vec!["README.md".to_string()];
        for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                paths.push(format!("docs/{}", p.file_name().unwrap().to_string_lossy()));
            }
        }
        for path in paths {
            assert_eq!(
                unknown(&read(&path), &known),
                Vec::<String>::new(),
                "{path}"
            );
        }
        // docs/metrics.md's table lists every family, by its name without the prefix.
        let table: BTreeSet<String> = read("docs/metrics.md")
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(n, _)| format!("{PREFIX}{n}")))
            .collect();
        assert_eq!(table, families, "docs/metrics.md's table");
    }

    #[test]
    fn a_misspelt_name_is_caught() {
        let (families, series) = exported();
        let q = "sum(rate(cognito_unauth_controller_rotation_total[5m])) + cognito_unauth_controller_leader";
        assert_eq!(
            unknown(q, &series),
            ["cognito_unauth_controller_rotation_total"]
        );
        // A histogram by its family name is no series; in prose it is known.
        let h = "cognito_unauth_controller_cognito_request_duration_seconds";
        assert_eq!(unknown(h, &series), [h]);
        assert!(families.contains(h));
    }
}
