//! The production runtime of the real binary: /readyz, /metrics, leader election on a
//! Lease with failover, and SIGTERM releasing the Lease.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::wait::await_condition;
use serde_json::json;
use testbed_support::{
    ControllerProcess, Proxy, TestNs, cuc_manifest, eventually, install_crd, kubectl,
    kubectl_apply, test_dir, wait_ready,
};

const BIN: &str = env!("CARGO_BIN_EXE_cognito-unauth-controller");

fn start(ns: &str, log: &Path, extra: &[(&str, &str)]) -> ControllerProcess {
    let mut env = vec![("WATCH_NAMESPACES", ns)];
    env.extend_from_slice(extra);
    ControllerProcess::start(Path::new(BIN), log, &env)
}

/// Leader election with a 6 s lease for replica `id`.
fn leader_election<'a>(ns: &'a str, id: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("LEADER_ELECT", "true"),
        ("LEADER_ELECTION_NAMESPACE", ns),
        ("LEADER_ELECTION_LEASE_DURATION_SECONDS", "6"),
        ("LEADER_ELECTION_RENEW_GRACE_SECONDS", "2"),
        ("POD_NAME", id),
    ]
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

#[tokio::test]
async fn readyz_and_metrics_show_the_resource_and_cognito_calls() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("metrics").await;
    install_crd();
    let dir = test_dir(&ns.name);
    let p = start(&ns.name, &dir.join("c.log"), &[]);
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

    kubectl_apply(&cuc_manifest(&ns.name, "app", &pool));
    wait_ready(&ns.name, "app", 30);
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

    assert!(p.terminate().success());
    ns.cleanup().await;
}

#[tokio::test]
async fn one_leader_reconciles_and_a_standby_takes_over_without_rotating() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("leader").await;
    install_crd();
    let dir = test_dir(&ns.name);
    let le = |id: &'static str| leader_election(&ns.name, id);
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
    let b = start(&ns.name, &dir.join("b.log"), &le("replica-b"));
    // The standby is ready too (readiness does not depend on leading).
    eventually(Duration::from_secs(30), "standby /readyz 200", || async {
        get(b.port, "/readyz").await.filter(|(s, _)| *s == 200)
    })
    .await;

    kubectl_apply(&cuc_manifest(&ns.name, "app", &pool));
    wait_ready(&ns.name, "app", 30);
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
    a.signal("-KILL");
    let _ = a.wait_exit();
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
    println!("leader failover took {took:?} (lease duration 6 s)");
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

    testbed_support::record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "failover",
        "Leader SIGKILLed while idle; a standby holds",
        "exactly one replica reconciles; the standby takes the Lease within the lease duration and rotates nothing still valid",
        &format!(
            "takeover {:.1}s after the kill (lease 6 s); 0 extra Cognito calls",
            took.as_secs_f64()
        ),
    );

    // SIGTERM: the leader releases the Lease and exits 0.
    assert!(b.terminate().success());
    let l = leases.get("cognito-unauth-controller").await.unwrap();
    assert_eq!(holder(Some(&l)), "", "the Lease was not released");
    ns.cleanup().await;
}

/// Leader failover in the middle of a rotation: the leader dies with
/// GetCredentialsForIdentity in flight; the standby takes the Lease and finishes the
/// rotation once, with the same identity.
#[tokio::test]
async fn leader_failover_during_a_rotation_finishes_it_once() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("failover-rotation").await;
    install_crd();
    let dir = test_dir(&ns.name);
    let le = |id: &'static str| leader_election(&ns.name, id);
    let mut a = start(&ns.name, &dir.join("a.log"), &le("replica-a"));
    kubectl_apply(&cuc_manifest(&ns.name, "app", &pool));
    wait_ready(&ns.name, "app", 30);
    let b = start(&ns.name, &dir.join("b.log"), &le("replica-b"));
    let key = |s: &k8s_openapi::api::core::v1::Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("AWS_ACCESS_KEY_ID"))
            .map(|v| v.0.clone())
    };
    let before = key(&ns
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get("app")
        .await
        .unwrap());

    proxy
        .add_rule(json!({"pool": pool, "operation": "GetCredentialsForIdentity", "delay_ms": 4000, "times": 1}))
        .await;
    kubectl(&[
        "-n",
        &ns.name,
        "annotate",
        "cuc/app",
        "cognito.kubecred.io/force-rotate=1",
    ]);
    eventually(
        Duration::from_secs(20),
        "the rotation in flight",
        || async {
            (proxy.pool_calls(&pool, "GetCredentialsForIdentity").await == 2).then_some(())
        },
    )
    .await;
    let killed = std::time::Instant::now();
    a.signal("-KILL");
    let _ = a.wait_exit();
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=jsonpath={.metadata.annotations.cognito\\.kubecred\\.io/force-rotate}=1",
        "secret/app",
        "--timeout=30s",
    ]);
    let took = killed.elapsed();
    let secret = ns
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get("app")
        .await
        .unwrap();
    assert!(
        cognito_unauth_controller::secret::inspect(&secret, "", "/var/run/secrets/cognito").intact
    );
    assert_ne!(key(&secret), before);
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing more may happen
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        3,
        "one lost call, one by the new leader"
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    assert!(b.terminate().success());
    testbed_support::record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "failover-rotation",
        "Leader SIGKILLed with GetCredentialsForIdentity in flight; a standby holds",
        "the standby takes the Lease and finishes the rotation once (same identity); the Secret is intact throughout",
        &format!(
            "rotation finished {:.1}s after the kill (lease 6 s); 1 GetId; 3 GetCredentialsForIdentity (1 initial, 1 lost, 1 by the new leader)",
            took.as_secs_f64()
        ),
    );
    ns.cleanup().await;
}
