//! The chart's alerts against series recorded from a real run (issue 14). The controller
//! rotates 30 s credentials on the real API server; then Cognito throttles it until the
//! credentials it keeps have expired; then Cognito answers again. Its /metrics, scraped
//! every 15 s as the chart's ServiceMonitor has Prometheus do it (honorLabels: the series'
//! own labels win over the target's job, namespace and pod), become promtool's input
//! series, with the timestamps moved so that the first scrape is promtool's time 0.
//!
//! What must fire, and when, comes from the run's timeline (when the outage began, when
//! the kept credentials expired, when Ready came back), never from the rules: no alert
//! while rotations run on time; expired credentials page (CognitoCredentialsExpired, with
//! CognitoCredentialsExpiringSoon) and nothing else does in an outage of a few minutes;
//! all quiet again once Cognito answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::*;

/// Prometheus' scrape interval and the rules' evaluation interval in this test.
const SCRAPE: Duration = Duration::from_secs(15);
/// The target labels the chart's ServiceMonitor gives the controller's series (release
/// `cuc` in `cuc-system`, as testbed/alerts-test.sh renders the rules).
const TARGET: [(&str, &str); 3] = [
    ("job", "cuc-cognito-unauth-controller-metrics"),
    ("namespace", "cuc-system"),
    ("pod", "cuc-a"),
];

/// `name{a="1",b="2"} 3` → the series (name, labels) and the value.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => {
            let mut labels = BTreeMap::new();
            // Our label values have no quotes or commas.
            for pair in rest.strip_suffix('}')?.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=')?;
                labels.insert(k.to_string(), v.trim_matches('"').to_string());
            }
            (name.to_string(), labels)
        }
    };
    Some((name, labels, value))
}

/// A series as promtool writes it.
fn series(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// One scrape of /metrics as Prometheus stores it: target labels added where the series
/// has none of its own (honorLabels), timestamps made relative to `t0`.
fn scrape(text: &str, t0: f64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, mut labels, mut value)) = parse_sample(line) else {
            continue;
        };
        for (k, v) in TARGET {
            labels.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
        if name.ends_with("_timestamp_seconds") {
            value -= t0;
        }
        out.insert(series(&name, &labels), value);
    }
    out
}

#[test]
fn a_scrape_becomes_series_with_the_targets_labels_and_relative_times() {
    let text = "# HELP x\n\
        cognito_unauth_controller_credential_expiration_timestamp_seconds{namespace=\"ns\",name=\"app\"} 1030.5\n\
        cognito_unauth_controller_leader 1\n# EOF\n";
    let s = scrape(text, 1000.0);
    assert_eq!(
        s.get("cognito_unauth_controller_credential_expiration_timestamp_seconds{job=\"cuc-cognito-unauth-controller-metrics\",name=\"app\",namespace=\"ns\",pod=\"cuc-a\"}"),
        Some(&30.5)
    );
    assert_eq!(
        s.get("cognito_unauth_controller_leader{job=\"cuc-cognito-unauth-controller-metrics\",namespace=\"cuc-system\",pod=\"cuc-a\"}"),
        Some(&1.0)
    );
    assert_eq!(s.len(), 2);
}

/// The next evaluation at or after `t` seconds.
fn grid(t: f64) -> u64 {
    let step = SCRAPE.as_secs();
    (t.max(0.0) as u64).div_ceil(step) * step
}

/// promtool's check that exactly `alerts` (name, severity) fire for the resource at `at`.
/// The injection webhook's alerts are left out: this run has no webhook (no series from its
/// job, so CognitoUnauthWebhookNotReady would fire on absence); the chart's hand-written
/// cases check them.
fn firing(at: u64, alerts: &[(&str, &str)], resource: &BTreeMap<String, String>) -> Value {
    let samples: Vec<Value> = alerts
        .iter()
        .map(|(name, severity)| {
            let mut labels = resource.clone();
            labels.insert("alertname".into(), (*name).into());
            labels.insert("alertstate".into(), "firing".into());
            labels.insert("severity".into(), (*severity).into());
            json!({"labels": series("ALERTS", &labels), "value": 1})
        })
        .collect();
    json!({
        "expr": "ALERTS{alertstate=\"firing\", alertname!~\"CognitoUnauthWebhook.*\"}",
        "eval_time": format!("{at}s"),
        "exp_samples": samples,
    })
}

fn now() -> f64 {
    Timestamp::now().as_millisecond() as f64 / 1000.0
}

#[tokio::test]
async fn the_alerts_on_series_recorded_from_a_real_run() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(30).await;
    let ns = TestNs::new("alerts").await;
    let ctl = Running::start(&ns).await;

    // Prometheus: a scrape every 15 s from now (promtool's time 0) to the end.
    let t0 = now();
    let scrapes: Arc<Mutex<Vec<BTreeMap<String, f64>>>> = Arc::default();
    let metrics = ctl.metrics.clone();
    let recorded = scrapes.clone();
    let prometheus = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SCRAPE);
        loop {
            tick.tick().await;
            let text = metrics.render().expect("render metrics");
            recorded.lock().unwrap().push(scrape(&text, t0));
        }
    });

    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    // Healthy: rotations every 20 s or so. This wait is the length of the recording.
    tokio::time::sleep(Duration::from_secs(90)).await;
    let rotations = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    assert!(rotations >= 4, "{rotations} issues in the healthy phase");

    // Cognito throttles every call until the kept credentials have expired and
    // CognitoCredentialsExpired has had its minute, with a scrape and an evaluation to
    // spare.
    let outage = now() - t0;
    let rule = proxy
        .add_rule(json!({"pool": pool, "error": "TooManyRequestsException"}))
        .await;
    // The kept credentials run out within their 30 s life.
    let o = wait_cuc_within(
        &ns,
        "app",
        "Ready=False/Expired",
        Duration::from_secs(90),
        |o| ready(o) == Some(("False".into(), "Expired".into())),
    )
    .await;
    let expired = o.status.unwrap().expiration.unwrap().0.as_second() as f64 - t0;
    let expired_check = grid(expired + 60.0 + 2.0 * SCRAPE.as_secs_f64());
    let until = t0 + expired_check as f64 + SCRAPE.as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64((until - now()).max(0.0))).await;
    proxy.delete_rule(rule).await;
    let answered = now() - t0;
    // A spec change retries at once (the backoff has grown to minutes by now), as a user
    // who fixed the cause would.
    merge_patch(&ns, "app", json!({"spec": {"renewBefore": "10m"}})).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let ready = now() - t0;
    let quiet_check = grid(ready + 2.0 * SCRAPE.as_secs_f64());
    tokio::time::sleep(Duration::from_secs_f64(
        (t0 + quiet_check as f64 + SCRAPE.as_secs_f64() - now()).max(0.0),
    ))
    .await;
    prometheus.abort();
    ctl.stop().await;

    // promtool's input: every series, a value per scrape (`_` where it had none).
    let scrapes = scrapes.lock().unwrap().clone();
    let names: BTreeSet<&String> = scrapes.iter().flat_map(|s| s.keys()).collect();
    let input: Vec<Value> = names
        .iter()
        .map(|name| {
            let values: Vec<String> = scrapes
                .iter()
                .map(|s| s.get(*name).map_or("_".to_string(), |v| v.to_string()))
                .collect();
            json!({"series": name, "values": values.join(" ")})
        })
        .collect();
    let throttled = names
        .iter()
        .any(|n| n.contains("cognito_requests_total") && n.contains("outcome=\"Throttled\""));
    assert!(throttled, "the throttled calls are in the recording");

    let mut resource: BTreeMap<String, String> = TARGET
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    resource.insert("namespace".into(), ns.name.clone());
    resource.insert("name".into(), "app".into());
    let mut checks = Vec::new();
    // Rotations on time: nothing fires, at any evaluation before the outage.
    let mut t = 0;
    while (t as f64) < outage {
        checks.push(firing(t, &[], &resource));
        t += SCRAPE.as_secs();
    }
    // Expired credentials page; an outage of a few minutes pages nothing else (not
    // NotReady, RotationOverdue or Throttled, which wait longer).
    assert!(
        (expired_check as f64) < answered,
        "the outage lasted past the check"
    );
    checks.push(firing(
        expired_check,
        &[
            ("CognitoCredentialsExpiringSoon", "warning"),
            ("CognitoCredentialsExpired", "critical"),
        ],
        &resource,
    ));
    // Cognito answers, new credentials: all quiet within two scrapes of Ready.
    checks.push(firing(quiet_check, &[], &resource));
    assert!(
        scrapes.len() as u64 * SCRAPE.as_secs() > quiet_check,
        "recorded up to the last check"
    );

    let test = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "15s",
        "tests": [{
            "name": format!(
                "recorded: healthy to {outage:.0}s, Cognito throttling from then to {answered:.0}s (credentials expired at {expired:.0}s), Ready again at {ready:.0}s"
            ),
            "interval": "15s",
            "input_series": input,
            "promql_expr_test": checks,
        }],
    });
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("alerts");
    std::fs::create_dir_all(&dir).unwrap();
    // JSON is YAML: promtool reads it as it is.
    let file = dir.join("recorded_test.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&test).unwrap()).unwrap();
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testbed/alerts-test.sh"
    ))
    .arg(&file)
    .output()
    .expect("run testbed/alerts-test.sh");
    assert!(
        out.status.success(),
        "promtool on {}:\n{}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ns.cleanup().await;
}
