//! The production runtime of the real binary: /readyz, /metrics, leader election on a
//! Lease with failover, and SIGTERM releasing the Lease.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::wait::await_condition;
use serde_json::json;
use testbed_support::{Proxy, TestNs, eventually, testbed};

struct Proc {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(ns: &str, log: &Path, extra: &[(&str, &str)]) -> Proc {
    let port = free_port();
    let out = std::fs::File::create(log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_cognito-unauth-controller"))
        .envs(testbed().env())
        .env("WATCH_NAMESPACES", ns)
        .env("METRICS_ADDRESS", format!("127.0.0.1:{port}"))
        .envs(extra.iter().copied())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start controller");
    Proc { child, port }
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// The value of the first sample line that starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn apply_cuc(ns: &str, name: &str, pool: &str) {
    let manifest = format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  identityPoolId: {pool}\n"
    );
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .envs(testbed().env())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("write");
    assert!(child.wait().expect("kubectl").success());
}

fn kubectl(args: &[&str]) {
    let ok = Command::new("kubectl")
        .args(args)
        .envs(testbed().env())
        .status()
        .expect("kubectl");
    assert!(ok.success(), "kubectl {args:?}");
}

fn install_crd() {
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/crds/"),
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/cognitounauthcredentials.cognito.kubecred.io",
        "--timeout=30s",
    ]);
}

fn signal(p: &Proc, sig: &str) {
    kubectl_free_kill(sig, p.child.id());
}

fn kubectl_free_kill(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

async fn exit_status(p: &mut Proc) -> std::process::ExitStatus {
    eventually(Duration::from_secs(20), "the controller to exit", || {
        let s = p.child.try_wait().expect("wait");
        async move { s }
    })
    .await
}

#[tokio::test]
async fn readyz_and_metrics_show_the_resource_and_cognito_calls() {
    let proxy = Proxy::new();
    let pool = proxy.create_pool(true).await;
    proxy
        .add_rule(json!({"pool": pool, "unique_credentials": true, "lifetime_seconds": 3600}))
        .await;
    let ns = TestNs::new("metrics").await;
    install_crd();
    let dir = std::env::temp_dir().join(format!("cuc-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = start(&ns.name, &dir.join("c.log"), &[]);
    assert_eq!(
        eventually(Duration::from_secs(30), "/livez", || get(p.port, "/livez"))
            .await
            .0,
        200
    );
    eventually(Duration::from_secs(30), "/readyz 200", || async {
        get(p.port, "/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await;

    apply_cuc(&ns.name, "app", &pool);
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=condition=Ready",
        "cuc/app",
        "--timeout=30s",
    ]);
    let obj = ns
        .api::<cognito_unauth_controller::crd::CognitoUnauthCredential>()
        .get("app")
        .await
        .unwrap();
    let exp = obj.status.unwrap().expiration.unwrap().0.as_second() as f64;
    let labels = format!("{{namespace=\"{}\",name=\"app\"}}", ns.name);
    let (status, text) = eventually(
        Duration::from_secs(10),
        "metrics with the resource",
        || async {
            get(p.port, "/metrics")
                .await
                .filter(|(_, t)| t.contains(&labels))
        },
    )
    .await;
    assert_eq!(status, 200);
    let m = |series: &str| sample(&text, series);
    assert_eq!(
        m(&format!(
            "cognito_unauth_controller_credential_expiration_timestamp_seconds{labels}"
        )),
        Some(exp)
    );
    assert!(
        m(&format!(
            "cognito_unauth_controller_credential_renewal_timestamp_seconds{labels}"
        ))
        .is_some_and(|r| r < exp)
    );
    assert_eq!(
        m(&format!(
            "cognito_unauth_controller_credential_ready_status{{namespace=\"{}\",name=\"app\",condition=\"True\"}}",
            ns.name
        )),
        Some(1.0)
    );
    assert_eq!(
        m("cognito_unauth_controller_cognito_requests_total{operation=\"GetId\",outcome=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        m(
            "cognito_unauth_controller_cognito_requests_total{operation=\"GetCredentialsForIdentity\",outcome=\"ok\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        m("cognito_unauth_controller_rotations_total"),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("cognito_unauth_controller_cognito_request_duration_seconds_bucket{"));
    assert!(text.contains("cognito_unauth_controller_build_info{version=\""));

    // The counter moves with a throttled attempt.
    proxy
        .add_rule(json!({"pool": pool, "error": "TooManyRequestsException", "times": 1}))
        .await;
    kubectl(&[
        "-n",
        &ns.name,
        "annotate",
        "cuc/app",
        "cognito.kubecred.io/force-rotate=1",
    ]);
    eventually(Duration::from_secs(15), "a Throttled outcome", || async {
        get(p.port, "/metrics").await.filter(|(_, t)| {
            sample(t, "cognito_unauth_controller_cognito_requests_total{operation=\"GetCredentialsForIdentity\",outcome=\"Throttled\"}") == Some(1.0)
        })
    })
    .await;

    signal(&p, "-TERM");
    assert!(exit_status(&mut p).await.success());
    ns.cleanup().await;
}

#[tokio::test]
async fn one_leader_reconciles_and_a_standby_takes_over_without_rotating() {
    let proxy = Proxy::new();
    let pool = proxy.create_pool(true).await;
    proxy
        .add_rule(json!({"pool": pool, "unique_credentials": true, "lifetime_seconds": 3600}))
        .await;
    let ns = TestNs::new("leader").await;
    install_crd();
    let dir = std::env::temp_dir().join(format!("cuc-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let le = |id: &'static str| {
        vec![
            ("LEADER_ELECT", "true"),
            ("LEADER_ELECTION_NAMESPACE", ns.name.as_str()),
            ("LEADER_ELECTION_LEASE_DURATION_SECONDS", "6"),
            ("LEADER_ELECTION_RENEW_GRACE_SECONDS", "2"),
            ("POD_NAME", id),
        ]
    };
    let mut a = start(&ns.name, &dir.join("a.log"), &le("replica-a"));
    let leases = ns.api::<Lease>();
    let holder = |l: Option<&Lease>| {
        l.and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default()
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            leases.clone(),
            "cognito-unauth-controller",
            move |l: Option<&Lease>| holder(l) == "replica-a",
        ),
    )
    .await
    .expect("replica-a leads")
    .unwrap();
    let mut b = start(&ns.name, &dir.join("b.log"), &le("replica-b"));
    // The standby is ready too (readiness does not depend on leading).
    eventually(Duration::from_secs(30), "standby /readyz 200", || async {
        get(b.port, "/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await;

    apply_cuc(&ns.name, "app", &pool);
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=condition=Ready",
        "cuc/app",
        "--timeout=30s",
    ]);
    let reconciles = |port| async move {
        get(port, "/metrics")
            .await
            .and_then(|(_, t)| sample(&t, "cognito_unauth_controller_reconciliations_total"))
    };
    assert!(reconciles(a.port).await.is_some_and(|n| n >= 1.0));
    assert_eq!(
        reconciles(b.port).await,
        Some(0.0),
        "the standby must not reconcile"
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );

    // Kill the leader outright: the standby takes over within the lease duration.
    let killed_at = std::time::Instant::now();
    signal(&a, "-KILL");
    let _ = exit_status(&mut a).await;
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(
            leases.clone(),
            "cognito-unauth-controller",
            move |l: Option<&Lease>| holder(l) == "replica-b",
        ),
    )
    .await
    .expect("replica-b takes over")
    .unwrap();
    let took = killed_at.elapsed();
    assert!(took <= Duration::from_secs(6 + 3), "takeover took {took:?}");
    eventually(
        Duration::from_secs(20),
        "the new leader to reconcile",
        || async move { reconciles(b.port).await.filter(|n| *n >= 1.0) },
    )
    .await;
    // No valid credentials were rotated at failover.
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);

    // SIGTERM: the leader releases the Lease and exits 0.
    signal(&b, "-TERM");
    assert!(exit_status(&mut b).await.success());
    let l = leases.get("cognito-unauth-controller").await.unwrap();
    assert_eq!(holder(Some(&l)), "", "the Lease was not released");
    ns.cleanup().await;
}
