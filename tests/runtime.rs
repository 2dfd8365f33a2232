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
        cognito_unauth_controller::reconcile::secret::inspect(
            &secret,
            "",
            "/var/run/secrets/cognito",
            None
        )
        .intact
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
        "the standby takes the Lease and finishes the rotation once (same identity); the Secret is intact after",
        &format!(
            "rotation finished {:.1}s after the kill (lease 6 s); 1 GetId; 3 GetCredentialsForIdentity (1 initial, 1 lost, 1 by the new leader)",
            took.as_secs_f64()
        ),
    );
    ns.cleanup().await;
}

/// Issue 11, bug 5: a leader that cannot renew its Lease (here: its Lease permission is
/// taken away; everything else still works, the worst case of a partial partition)
/// stops reconciling before the standby can take over, so no work is done twice.
/// Before the fix it went on reconciling (and rotating) next to the new leader.
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_the_standby_takes_over() {
    let proxy = Proxy::new();
    // Short-lived credentials: a rotation falls due while both replicas run.
    let pool = proxy.realistic_pool(24).await;
    let ns = TestNs::new("fencing").await;
    install_crd();
    let dir = test_dir(&ns.name);
    let mut replicas = Vec::new();
    for id in ["replica-a", "replica-b"] {
        testbed_support::controller_rbac(&ns.name, id, true, true);
        let kc = dir.join(format!("{id}.kubeconfig"));
        testbed_support::impersonating_kubeconfig(id, &[], &kc);
        replicas.push(kc);
    }
    let kc = |i: usize| replicas[i].to_string_lossy().to_string();
    let (kc_a, kc_b) = (kc(0), kc(1));
    let mut env_a = leader_election(&ns.name, "replica-a");
    env_a.push(("KUBECONFIG", &kc_a));
    let mut env_b = leader_election(&ns.name, "replica-b");
    env_b.push(("KUBECONFIG", &kc_b));
    let a = start(&ns.name, &dir.join("a.log"), &env_a);
    let leases = ns.api::<Lease>();
    let holder = |l: Option<&Lease>| {
        l.and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default()
    };
    let holds = |who: &'static str| {
        let leases = leases.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(
                    leases,
                    "cognito-unauth-controller",
                    move |l: Option<&Lease>| holder(l) == who,
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("{who} holds the lease"))
            .unwrap();
        }
    };
    holds("replica-a").await;
    let b = start(&ns.name, &dir.join("b.log"), &env_b);
    kubectl_apply(&cuc_manifest(&ns.name, "app", &pool));
    wait_ready(&ns.name, "app", 30);
    let metric = |port: u16, series: &'static str| async move {
        get(port, "/metrics")
            .await
            .and_then(|(_, t)| sample(&t, series))
            .unwrap_or(0.0)
    };
    const RECONCILES: &str = "cognito_unauth_controller_reconciliations_total";
    assert_eq!(
        metric(b.port, RECONCILES).await,
        0.0,
        "the standby must not reconcile"
    );

    // Cut replica-a off from its Lease.
    let cut = std::time::Instant::now();
    kubectl(&["-n", &ns.name, "delete", "rolebinding", "lease-replica-a"]);
    holds("replica-b").await;
    let takeover = cut.elapsed();
    let a_after = metric(a.port, RECONCILES).await;
    // Work arrives: a touch, then the next rotation (credentials live 24 s).
    kubectl(&[
        "-n",
        &ns.name,
        "annotate",
        "cuc/app",
        "test.example/touch=1",
    ]);
    let first = ns
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get("app")
        .await
        .unwrap();
    let issued = |s: &k8s_openapi::api::core::v1::Secret| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("cognito.kubecred.io/issued-at").cloned())
    };
    let before = issued(&first);
    let rotated = tokio::time::timeout(
        Duration::from_secs(40),
        await_condition(
            ns.api::<k8s_openapi::api::core::v1::Secret>(),
            "app",
            move |s: Option<&k8s_openapi::api::core::v1::Secret>| {
                s.is_some_and(|s| issued(s) != before)
            },
        ),
    )
    .await
    .expect("the next rotation")
    .unwrap();
    assert!(rotated.is_some());
    // Let a second rotator, if any, finish its call.
    eventually(
        Duration::from_secs(10),
        "the new leader's reconciles",
        || async { (metric(b.port, RECONCILES).await >= 2.0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        metric(a.port, RECONCILES).await,
        a_after,
        "the fenced leader reconciled after the takeover"
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        2,
        "one call for the first issue, one for the rotation: none twice"
    );
    let log = std::fs::read_to_string(dir.join("a.log")).unwrap_or_default();
    assert!(
        log.contains("stopped leading"),
        "replica-a's log says it fenced itself"
    );
    println!(
        "takeover {:.1}s after the cut (lease 6 s, renew deadline 4 s)",
        takeover.as_secs_f64()
    );
    testbed_support::record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "fencing",
        "Leader cannot renew its Lease (its Lease permission removed; the rest of the API still works); a standby holds",
        "the leader stops reconciling within its renew deadline, before the standby takes over; the standby does the work; no rotation twice",
        &format!(
            "takeover {:.1}s after the cut (lease 6 s); 0 reconciles by the old leader after it; 2 GetCredentialsForIdentity (first issue + 1 rotation)",
            takeover.as_secs_f64()
        ),
    );
    drop(a);
    assert!(b.terminate().success());
    ns.cleanup().await;
}
