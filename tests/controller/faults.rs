//! The fault matrix: each test injects one fault through the proxy (or kills the
//! controller), watches every version of the Secret while it lasts, counts Cognito calls,
//! clears it, and measures recovery. Each passing test writes its row to
//! `$CARGO_TARGET_TMPDIR/fault-matrix/`; `make reliability` turns the rows into
//! docs/reliability.md.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use testbed_support::{ControllerProcess, cuc_manifest, kubectl_apply, test_dir, wait_ready};

use super::*;

/// One version of the Secret as a watch saw it.
#[derive(Debug, Clone)]
struct Seen {
    intact: bool,
    access_key: String,
    resource_version: Option<String>,
}

/// Every version of one Secret while a fault lasts (None: it was deleted).
pub(crate) struct SecretLog {
    seen: Arc<Mutex<Vec<Option<Seen>>>>,
    task: JoinHandle<()>,
    api: kube::Api<Secret>,
    name: String,
}

impl SecretLog {
    pub(crate) fn start(ns: &TestNs, name: &str) -> Self {
        let seen: Arc<Mutex<Vec<Option<Seen>>>> = Arc::default();
        let sink = seen.clone();
        let stream = watcher(
            ns.api::<Secret>(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        );
        let task = tokio::spawn(async move {
            let mut stream = stream.boxed();
            while let Some(ev) = stream.next().await {
                let entry = match ev {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                        Some(Some(Seen {
                            intact: secret::inspect(&s, "", "/var/run/secrets/cognito", None)
                                .intact,
                            access_key: s
                                .data
                                .as_ref()
                                .and_then(|d| d.get("AWS_ACCESS_KEY_ID"))
                                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                                .unwrap_or_default(),
                            resource_version: s.metadata.resource_version.clone(),
                        }))
                    }
                    Ok(watcher::Event::Delete(_)) => Some(None),
                    _ => None,
                };
                if let Some(e) = entry {
                    sink.lock().expect("log").push(e);
                }
            }
        });
        Self {
            seen,
            task,
            api: ns.api::<Secret>(),
            name: name.to_string(),
        }
    }

    /// Stops watching, once the watch has delivered the version the API server holds now
    /// (a write just before the call may still be on its way); asserts that every version
    /// was present and intact; returns the number of distinct credentials seen.
    pub(crate) async fn finish(self, what: &str) -> usize {
        if let Some(now) = self.api.get_opt(&self.name).await.expect("get the Secret") {
            let rv = now.metadata.resource_version;
            let seen = self.seen.clone();
            testbed_support::eventually(
                Duration::from_secs(30),
                "the watch's last version",
                || {
                    let delivered = seen
                        .lock()
                        .expect("log")
                        .iter()
                        .flatten()
                        .any(|s| s.resource_version == rv);
                    async move { delivered.then_some(()) }
                },
            )
            .await;
        }
        self.task.abort();
        let seen = self.seen.lock().expect("log").clone();
        assert!(!seen.is_empty(), "{what}: the watch saw nothing");
        let mut keys = Vec::<String>::new();
        for (i, s) in seen.iter().enumerate() {
            let s = s
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: the Secret was deleted (version {i})"));
            assert!(
                s.intact,
                "{what}: version {i} of the Secret was partial or edited"
            );
            if keys.last() != Some(&s.access_key) {
                keys.push(s.access_key.clone());
            }
        }
        keys.len()
    }
}

/// A row of docs/reliability.md.
pub(crate) fn record(id: &str, fault: &str, asserted: &str, measured: &str) {
    testbed_support::record_fault(env!("CARGO_TARGET_TMPDIR"), id, fault, asserted, measured);
}

/// When attempt n+1 can come at the earliest after a first failed attempt at 0, worked
/// out by hand from the documented rule (not from the code under test): each wait is at
/// least half its step, and the steps are 5, 10, 20, 40, 80, 160 s, then 300 s.
const EARLIEST_ATTEMPT_S: [f64; 10] = [0.0, 2.5, 7.5, 17.5, 37.5, 77.5, 157.5, 307.5, 457.5, 607.5];

/// The most attempts the backoff allows within `window` after a first failed attempt.
pub(crate) fn max_attempts(window: Duration) -> u64 {
    EARLIEST_ATTEMPT_S
        .iter()
        .filter(|t| **t <= window.as_secs_f64())
        .count() as u64
}

/// The longest wait before the next attempt after `failures` failed ones (the full step,
/// by hand: 5, 10, 20, 40, 80, 160, then 300 s).
pub(crate) fn step_after(failures: u64) -> Duration {
    const STEPS_S: [u64; 7] = [5, 10, 20, 40, 80, 160, 300];
    let i = usize::try_from(failures.max(1) - 1)
        .unwrap_or(usize::MAX)
        .min(STEPS_S.len() - 1);
    Duration::from_secs(STEPS_S[i])
}

async fn creds_calls(proxy: &Proxy, pool: &str) -> u64 {
    proxy.pool_calls(pool, "GetCredentialsForIdentity").await
}

async fn force(ns: &TestNs, name: &str, token: &str) {
    ns.api::<CognitoUnauthCredential>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"cognito.kubecred.io/force-rotate": token}}}),
            ),
        )
        .await
        .expect("annotate");
}

async fn spec_change(ns: &TestNs, name: &str, renew_before: &str) {
    ns.api::<CognitoUnauthCredential>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"renewBefore": renew_before}})),
        )
        .await
        .expect("patch spec");
}

/// A transient fault for `window`: Secret kept and intact, calls bounded by the backoff,
/// the right reason, and Ready again within one backoff step once it clears, with one
/// rotation.
async fn transient(id: &str, fault: &str, rule: Value, reason: &str, timeouts: Timeouts) {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new(id).await;
    let ctl = Running::start_with(&ns, timeouts).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let log = SecretLog::start(&ns, "app");
    let before = creds_calls(&proxy, &pool).await;

    let mut rule = rule;
    rule["pool"] = json!(pool);
    let rule_id = proxy.add_rule(rule).await;
    force(&ns, "app", "during-fault").await;
    wait_reason(&ns, "app", "False", reason).await;
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await; // the fault lasts this long
    let attempts = creds_calls(&proxy, &pool).await - before;
    let bound = max_attempts(window + Duration::from_secs(3));
    assert!(
        (1..=bound).contains(&attempts),
        "{fault}: {attempts} attempts in {window:?}, the backoff allows at most {bound}"
    );
    let st = ns
        .api::<CognitoUnauthCredential>()
        .get("app")
        .await
        .unwrap()
        .status
        .unwrap();
    // An attempt may still be in flight (slow responses): it is counted by the proxy first.
    let failed = st.failed_attempts.unwrap_or(0) as u64;
    assert!(
        failed == attempts || failed + 1 == attempts,
        "{fault}: failedAttempts {failed} vs {attempts} calls"
    );
    assert_eq!(ready_of_status(&st).0, reason);

    // Every call until the rule goes fails, also one made since the count above (the
    // machine may be busy): counted just before it goes (the backoff's attempts are
    // seconds apart, none falls between this count and the delete).
    let failed_calls = creds_calls(&proxy, &pool).await - before;
    proxy.delete_rule(rule_id).await;
    let cleared = std::time::Instant::now();
    // The next attempt is due at most one step (5 s × 2^(n-1), capped) after the last
    // failure.
    let next_step = step_after(failed_calls);
    let recovered = tokio::time::timeout(
        next_step + Duration::from_secs(5),
        wait_reason(&ns, "app", "True", "CredentialsIssued"),
    )
    .await;
    assert!(
        recovered.is_ok(),
        "{fault}: not Ready within one backoff step ({next_step:?}) after it cleared"
    );
    let took = cleared.elapsed();
    // Exactly one more call: the successful one.
    assert_eq!(
        writes_during(&ns, "app", "app", Duration::from_secs(2)).await,
        0,
        "{fault}: writes after recovery"
    );
    assert_eq!(
        creds_calls(&proxy, &pool).await - before,
        failed_calls + 1,
        "{fault}: a duplicate rotation"
    );
    let distinct = log.finish(fault).await;
    assert_eq!(
        distinct, 2,
        "{fault}: the Secret changed other than once (old, then new)"
    );
    record(
        id,
        fault,
        &format!(
            "Ready=False/{reason} while it lasts; Secret kept and intact in every version; at most {bound} calls in {}s; Ready within one backoff step after; one rotation",
            window.as_secs()
        ),
        &format!(
            "{attempts} calls in {}s; Ready {:.1}s after clearing (step ≤ {}s); Secret changed once",
            window.as_secs(),
            took.as_secs_f64(),
            next_step.as_secs()
        ),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

fn ready_of_status(
    st: &cognito_unauth_controller::crd::CognitoUnauthCredentialStatus,
) -> (String, String) {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn fault_throttling() {
    transient(
        "throttling",
        "Cognito throttles (TooManyRequestsException)",
        json!({"error": "TooManyRequestsException"}),
        "Throttled",
        Timeouts::default(),
    )
    .await;
}

#[tokio::test]
async fn fault_http_503_burst() {
    transient(
        "http-503",
        "HTTP 503 burst (HTML body)",
        json!({"http_status": 503}),
        "CognitoUnavailable",
        Timeouts::default(),
    )
    .await;
}

#[tokio::test]
async fn fault_internal_error() {
    transient(
        "http-500",
        "HTTP 500 InternalErrorException",
        json!({"error": "InternalErrorException"}),
        "CognitoUnavailable",
        Timeouts::default(),
    )
    .await;
}

#[tokio::test]
async fn fault_connection_reset() {
    transient(
        "reset",
        "TCP connection reset",
        json!({"connection": "reset"}),
        "CognitoUnavailable",
        Timeouts::default(),
    )
    .await;
}

#[tokio::test]
async fn fault_slow_responses() {
    let short = Timeouts {
        connect: Duration::from_secs(1),
        operation: Duration::from_secs(1),
    };
    transient(
        "slow",
        "Responses slower than the client timeout (2.5 s vs 1 s)",
        json!({"delay_ms": 2500}),
        "CognitoUnavailable",
        short,
    )
    .await;
}

/// Terminal faults on a pool that worked: the Secret is kept, one attempt per ~5 minutes.
#[tokio::test]
async fn fault_terminal_on_a_pool_that_worked() {
    let proxy = Proxy::new();
    let ns = TestNs::new("terminal-faults").await;
    let ctl = Running::start(&ns).await;
    let cases = ["guest-off", "invalid-config", "pool-deleted"];
    let mut pools = vec![];
    for name in cases {
        let pool = proxy.realistic_pool(3600).await;
        create_cuc(&ns, name, json!({"identityPoolId": pool})).await;
        pools.push(pool);
    }
    for name in cases {
        wait_reason(&ns, name, "True", "CredentialsIssued").await;
    }
    let logs: Vec<_> = cases.iter().map(|n| SecretLog::start(&ns, n)).collect();
    proxy.set_guest(&pools[0], false).await;
    let invalid = proxy
        .add_rule(json!({"pool": pools[1], "error": "InvalidIdentityPoolConfigurationException"}))
        .await;
    proxy.delete_pool(&pools[2]).await;
    let before: Vec<u64> =
        futures::future::join_all(pools.iter().map(|p| creds_calls(&proxy, p))).await;
    for name in cases {
        force(&ns, name, "during-fault").await;
    }
    wait_reason(&ns, "guest-off", "False", "GuestAccessDisabled").await;
    wait_reason(&ns, "invalid-config", "False", "InvalidPoolConfiguration").await;
    wait_reason(&ns, "pool-deleted", "False", "IdentityPoolNotFound").await;
    let window = Duration::from_secs(8);
    tokio::time::sleep(window).await; // terminal errors must not retry in this window
    for (i, p) in pools.iter().enumerate() {
        assert_eq!(
            creds_calls(&proxy, p).await - before[i],
            1,
            "{}: retried a terminal error",
            cases[i]
        );
    }
    // Deleted pool: Cognito forgot the identity, so one GetId was tried, and refused.
    assert_eq!(proxy.pool_calls(&pools[2], "GetId").await, 2);

    // The fault clears; a spec change retries at once.
    proxy.set_guest(&pools[0], true).await;
    proxy.delete_rule(invalid).await;
    for name in &cases[..2] {
        spec_change(&ns, name, "25m").await;
        wait_reason(&ns, name, "True", "CredentialsIssued").await;
    }
    for (name, log) in cases.iter().zip(logs) {
        let distinct = log.finish(name).await;
        let want = if *name == "pool-deleted" { 1 } else { 2 };
        assert_eq!(distinct, want, "{name}");
    }
    let asserted = "the right reason; Secret kept and intact; one attempt, no retry within 8 s (terminal: ~5 min); Ready at once after the fix and a spec change";
    record(
        "guest-off",
        "Guest access turned off on a pool that worked",
        asserted,
        "GuestAccessDisabled; 1 call; Ready after re-enabling",
    );
    record(
        "invalid-config",
        "Pool without an unauthenticated role (InvalidIdentityPoolConfigurationException)",
        asserted,
        "InvalidPoolConfiguration; 1 call; Ready after the fix",
    );
    record(
        "pool-deleted",
        "Identity pool deleted",
        "IdentityPoolNotFound; Secret kept until it expires; one GetCredentialsForIdentity and one GetId, then ~5 min",
        "IdentityPoolNotFound; 1 + 1 calls; Secret untouched",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// The emulator unreachable for longer than the credentials' lifetime.
#[tokio::test]
async fn fault_cognito_down_longer_than_the_lifetime() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(8).await;
    let ns = TestNs::new("down").await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let expiration = o.status.unwrap().expiration.unwrap().0;
    let log = SecretLog::start(&ns, "app");
    let rule = proxy
        .add_rule(json!({"pool": pool, "connection": "reset"}))
        .await;
    wait_reason(&ns, "app", "False", "CognitoUnavailable").await;
    let expired = wait_reason(&ns, "app", "False", "Expired").await;
    let at = jiff::Timestamp::now();
    assert!(at >= expiration, "Expired before the credentials expired");
    let msg = ready_of_status(expired.status.as_ref().unwrap()).1;
    assert!(msg.contains("expired at"), "{msg}");
    let down_for = Duration::from_secs(12);
    tokio::time::sleep(down_for.saturating_sub(Duration::from_secs(8))).await;
    let attempts = creds_calls(&proxy, &pool).await - 1;
    let bound = max_attempts(down_for + Duration::from_secs(4));
    assert!(
        attempts <= bound,
        "{attempts} attempts, the backoff allows {bound}"
    );
    proxy.delete_rule(rule).await;
    let cleared = std::time::Instant::now();
    let step = step_after(attempts);
    tokio::time::timeout(
        step + Duration::from_secs(5),
        wait_reason(&ns, "app", "True", "CredentialsIssued"),
    )
    .await
    .expect("Ready within one backoff step after Cognito came back");
    let took = cleared.elapsed();
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    assert_eq!(log.finish("down").await, 2);
    record(
        "down",
        "Cognito unreachable (every connection reset) for longer than the credentials' 8 s lifetime",
        "CognitoUnavailable, then Expired only once the kept credentials expired; Secret kept and intact; calls bounded by the backoff; Ready within one backoff step after; same identity",
        &format!(
            "{attempts} calls while down; Expired {}s after expiry at the earliest; Ready {:.1}s after it came back",
            at.duration_since(expiration).as_secs(),
            took.as_secs_f64()
        ),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// The real binary for a new namespace and pool, with `operation`'s first call held 3 s
/// by the proxy: applies the resource and SIGKILLs the controller while that call is in
/// flight. Returns what the restart needs.
async fn killed_mid_call(
    prefix: &str,
    operation: &str,
) -> (Proxy, String, TestNs, std::path::PathBuf) {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    proxy
        .add_rule(json!({"pool": pool, "operation": operation, "delay_ms": 3000, "times": 1}))
        .await;
    let ns = TestNs::new(prefix).await;
    install_crd();
    let dir = test_dir(&ns.name);
    let mut first = ControllerProcess::start(
        Path::new(BIN),
        &dir.join("first.log"),
        &[("WATCH_NAMESPACES", ns.name.as_str())],
    );
    kubectl_apply(&cuc_manifest(&ns.name, "app", &pool));
    testbed_support::eventually(Duration::from_secs(30), "the call in flight", || async {
        (proxy.pool_calls(&pool, operation).await == 1).then_some(())
    })
    .await;
    first.signal("-KILL");
    let _ = first.wait_exit();
    assert!(
        ns.api::<Secret>().get_opt("app").await.unwrap().is_none(),
        "a Secret appeared"
    );
    (proxy, pool, ns, dir)
}

const BIN: &str = env!("CARGO_BIN_EXE_cognito-unauth-controller");

/// SIGKILL while GetCredentialsForIdentity is in flight: the identity survives (written to
/// status before the call), nothing half-written, and the restart finishes the job with
/// no second GetId.
#[tokio::test]
async fn fault_sigkill_between_fetch_and_write() {
    let (proxy, pool, ns, dir) = killed_mid_call("sigkill", "GetCredentialsForIdentity").await;
    let st = ns
        .api::<CognitoUnauthCredential>()
        .get("app")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(st.identity_id.is_some(), "the identity was not kept");

    let second = ControllerProcess::start(
        Path::new(BIN),
        &dir.join("second.log"),
        &[("WATCH_NAMESPACES", ns.name.as_str())],
    );
    wait_ready(&ns.name, "app", 30);
    assert_eq!(
        proxy.pool_calls(&pool, "GetId").await,
        1,
        "a second identity was created"
    );
    assert_eq!(creds_calls(&proxy, &pool).await, 2);
    let s = ns.api::<Secret>().get("app").await.unwrap();
    assert!(secret::inspect(&s, "", "/var/run/secrets/cognito", None).intact);
    assert!(second.terminate().success());
    record(
        "sigkill-fetch",
        "Controller SIGKILLed while GetCredentialsForIdentity is in flight",
        "no Secret half-written; identity kept in status; after restart Ready with the same identity (1 GetId) and one more GetCredentialsForIdentity",
        "no Secret until the restart; 1 GetId, 2 GetCredentialsForIdentity",
    );
    ns.cleanup().await;
}

/// A conflicting writer: another client patches the Secret as fast as it can while the
/// controller rotates. The controller applies only its own fields (server-side apply,
/// uid as precondition), so neither write is lost and no credentials are wasted.
#[tokio::test]
async fn fault_conflicting_writer() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("conflict-writer").await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let log = SecretLog::start(&ns, "app");
    let before = creds_calls(&proxy, &pool).await;

    let secrets = ns.api::<Secret>();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let (secrets, stop) = (secrets.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let patch = json!({"metadata": {"labels": {"other-writer": n.to_string()}}});
                let _ = secrets
                    .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
            n
        })
    };
    // The other writer is writing before the rotation starts (else the rotation could
    // land before its first label, and the check below would prove nothing).
    wait_secret(&ns, "app", "the other writer's first label", |s| {
        s.labels().contains_key("other-writer")
    })
    .await;
    force(&ns, "app", "under-contention").await;
    let rotated = wait_secret(&ns, "app", "the forced rotation", |s| {
        annotation(s, "cognito.kubecred.io/force-rotate") == "under-contention"
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = storm.await.expect("storm");
    assert!(secret::inspect(&rotated, "", "/var/run/secrets/cognito", None).intact);
    assert!(
        rotated.labels().contains_key("other-writer"),
        "the other writer's label was dropped"
    );
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    assert_eq!(
        creds_calls(&proxy, &pool).await - before,
        1,
        "credentials were thrown away on a conflict"
    );
    assert_eq!(log.finish("conflicting writer").await, 2);
    record(
        "conflicting-writer",
        "Another client patches the Secret continuously while the controller rotates",
        "the rotation completes; the other writer's fields are kept; every version intact; one GetCredentialsForIdentity (our write applies only our fields, so it meets no 409)",
        &format!("{writes} competing writes; 1 call; rotation completed"),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// SIGKILL at another point: while GetId is in flight, before any identity is stored.
/// That identity is lost with the process (Cognito created it, nobody recorded it); the
/// restart creates one more and converges, with nothing half-written.
#[tokio::test]
async fn fault_sigkill_during_get_id() {
    let (proxy, pool, ns, dir) = killed_mid_call("sigkill-getid", "GetId").await;
    let second = ControllerProcess::start(
        Path::new(BIN),
        &dir.join("second.log"),
        &[("WATCH_NAMESPACES", ns.name.as_str())],
    );
    wait_ready(&ns.name, "app", 30);
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 2);
    assert_eq!(creds_calls(&proxy, &pool).await, 1);
    let s = ns.api::<Secret>().get("app").await.unwrap();
    let st = ns
        .api::<CognitoUnauthCredential>()
        .get("app")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        st.identity_id.as_deref(),
        Some(annotation(&s, "cognito.kubecred.io/identity-id").as_str())
    );
    assert!(secret::inspect(&s, "", "/var/run/secrets/cognito", None).intact);
    assert!(second.terminate().success());
    record(
        "sigkill-getid",
        "Controller SIGKILLed while GetId is in flight (no identity stored yet)",
        "no Secret half-written; after restart Ready with one identity in status and Secret; the lost call's identity is the only waste",
        "2 GetId (1 lost with the process), 1 GetCredentialsForIdentity",
    );
    ns.cleanup().await;
}
