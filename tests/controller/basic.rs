//! Flow Basic (issue 15) against the real API server and the proxy, whose STS checks the
//! OpenID token, the role's trust and its MaxSessionDuration: the same contract as the
//! enhanced flow (one identity, the Secret's keys, rotation from the real Expiration,
//! honest status), its own calls, and its refusals as rows of the fault matrix.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use testbed_support::{AwsCredentials, aws_cli, restarted_at};

use super::faults::{SecretLog, max_attempts, record, step_after};
use super::*;

/// The calls the proxy counted for a pool, by operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Calls {
    get_id: u64,
    open_id_token: u64,
    assume_role: u64,
    /// GetCredentialsForIdentity: the enhanced flow's call.
    enhanced: u64,
}

impl std::ops::Sub for Calls {
    type Output = Calls;
    fn sub(self, o: Calls) -> Calls {
        Calls {
            get_id: self.get_id - o.get_id,
            open_id_token: self.open_id_token - o.open_id_token,
            assume_role: self.assume_role - o.assume_role,
            enhanced: self.enhanced - o.enhanced,
        }
    }
}

async fn calls(proxy: &Proxy, pool: &str) -> Calls {
    Calls {
        get_id: proxy.pool_calls(pool, "GetId").await,
        open_id_token: proxy.pool_calls(pool, "GetOpenIdToken").await,
        assume_role: proxy.pool_calls(pool, "AssumeRoleWithWebIdentity").await,
        enhanced: proxy.pool_calls(pool, "GetCredentialsForIdentity").await,
    }
}

fn calls_of(get_id: u64, open_id_token: u64, assume_role: u64, enhanced: u64) -> Calls {
    Calls {
        get_id,
        open_id_token,
        assume_role,
        enhanced,
    }
}

fn basic_spec(pool: &str, role: &str) -> Value {
    json!({"identityPoolId": pool, "flow": "Basic", "roleArn": role})
}

/// The credentials in a Secret, for the aws CLI.
fn secret_credentials(s: &Secret) -> AwsCredentials {
    let exp: Timestamp = text(s, "AWS_CREDENTIAL_EXPIRATION").parse().unwrap();
    AwsCredentials {
        access_key_id: text(s, "AWS_ACCESS_KEY_ID"),
        secret_access_key: text(s, "AWS_SECRET_ACCESS_KEY"),
        session_token: text(s, "AWS_SESSION_TOKEN"),
        expiration: exp.as_second(),
    }
}

/// How long the Secret's credentials were issued for, in seconds.
fn lifetime(s: &Secret) -> f64 {
    let issued: Timestamp = annotation(s, secret::ANN_ISSUED_AT).parse().unwrap();
    let exp: Timestamp = text(s, "AWS_CREDENTIAL_EXPIRATION").parse().unwrap();
    exp.duration_since(issued).as_secs_f64()
}

fn assumed_role_arn(o: &CognitoUnauthCredential) -> Option<String> {
    o.status.as_ref()?.assumed_role_arn.clone()
}

async fn ready_message(ns: &TestNs, name: &str) -> String {
    let o = ns.api::<CognitoUnauthCredential>().get(name).await.unwrap();
    o.status
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// No OpenID token and no credential the proxy handed out appears in the resource's
/// status, its events or its Secret's metadata.
async fn nothing_leaks(proxy: &Proxy, ns: &TestNs, name: &str) {
    let o = ns.api::<CognitoUnauthCredential>().get(name).await.unwrap();
    let status = serde_json::to_string(&o.status).unwrap();
    let events: Vec<String> = events(ns, name)
        .await
        .into_iter()
        .map(|(_, _, m)| m)
        .collect();
    let meta = ns
        .api::<Secret>()
        .get_opt(name)
        .await
        .unwrap()
        .map(|s| serde_json::to_string(&s.metadata).unwrap())
        .unwrap_or_default();
    let tokens = proxy.open_id_tokens().await;
    assert!(!tokens.is_empty(), "no OpenID token was handed out");
    let mut secrets: Vec<String> = tokens;
    for c in proxy.issued().await {
        for k in ["SecretKey", "SessionToken"] {
            if let Some(v) = c[k].as_str() {
                secrets.push(v.to_string());
            }
        }
    }
    for s in &secrets {
        assert!(!status.contains(s.as_str()), "a credential in status");
        assert!(
            !meta.contains(s.as_str()),
            "a credential in the Secret's metadata"
        );
        assert!(
            events.iter().all(|m| !m.contains(s.as_str())),
            "a credential in an event"
        );
    }
}

/// A Basic resource: Ready with the chosen role's credentials, which the aws CLI uses;
/// their lifetime is sessionDuration's; a renewal costs one GetOpenIdToken, one
/// AssumeRoleWithWebIdentity, one Secret write and one status write, and no GetId.
#[tokio::test]
async fn basic_flow_issues_the_roles_credentials_and_rotates_for_four_operations() {
    let proxy = Proxy::new();
    // Role maximum 2 h: sessionDuration 2h is allowed.
    let (pool, role) = proxy.basic_pool(7200).await;
    // A pool whose credentials STS makes last 30 s (a rule), for a renewal within the test.
    let (short_pool, short_role) = proxy.basic_pool(3600).await;
    proxy
        .add_rule(json!({"pool": short_pool, "operation": "AssumeRoleWithWebIdentity", "lifetime_seconds": 30}))
        .await;
    let ns = TestNs::new("basic").await;
    let ctl = Running::start(&ns).await;
    let mut app = basic_spec(&pool, &role);
    app["sessionDuration"] = json!("2h");
    app["verify"] = json!(true);
    create_cuc(&ns, "app", app).await;
    let mut quarter = basic_spec(&pool, &role);
    quarter["sessionDuration"] = json!("15m");
    quarter["roleSessionName"] = json!("quarter@test");
    create_cuc(&ns, "quarter", quarter).await;

    // 1. Ready, with the role's credentials, for sessionDuration.
    let obj = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let s = ns.api::<Secret>().get("app").await.unwrap();
    let want = testbed_support::assumed_role(&role, &format!("{}-app", ns.name));
    assert_eq!(assumed_role_arn(&obj).as_deref(), Some(want.as_str()));
    assert_eq!(
        condition(&obj, "Verified"),
        Some(("True".into(), "CallerIdentityVerified".into()))
    );
    assert_eq!(annotation(&s, "cognito.kubecred.io/flow"), "Basic");
    assert_eq!(annotation(&s, "cognito.kubecred.io/role-arn"), role);
    assert_eq!(annotation(&s, "cognito.kubecred.io/assumed-role-arn"), want);
    let life = lifetime(&s);
    assert!(
        (7195.0..=7201.0).contains(&life),
        "lifetime {life}s, not 2h"
    );
    let st = obj.status.clone().unwrap();
    let exp = st.expiration.as_ref().unwrap().0;
    let before = exp.duration_since(st.renewal_time.unwrap().0).as_secs();
    assert!(
        (1200..=1260).contains(&before),
        "renews {before}s before expiry, not renewBefore (20 m, up to 60 s jitter)"
    );
    for key in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "credentials",
        "credential-process.json",
        "config",
    ] {
        assert!(!text(&s, key).is_empty(), "{key}");
    }

    // The aws CLI with the Secret's credentials acts as the chosen role.
    let out = aws_cli(
        &["sts", "get-caller-identity", "--output", "json"],
        &secret_credentials(&s),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["Arn"], want.as_str());

    // 15 minutes: renewBefore (20 m) is not shorter, so two thirds (600 s), less up to
    // 5% of the lifetime (45 s) of jitter: 300..345 s before expiry.
    let q = wait_reason(&ns, "quarter", "True", "CredentialsIssued").await;
    let qs = ns.api::<Secret>().get("quarter").await.unwrap();
    let life = lifetime(&qs);
    assert!((895.0..=901.0).contains(&life), "lifetime {life}s, not 15m");
    let qst = q.status.clone().unwrap();
    let before = qst
        .expiration
        .unwrap()
        .0
        .duration_since(qst.renewal_time.unwrap().0)
        .as_secs();
    assert!((300..=346).contains(&before), "{before}");
    assert_eq!(
        assumed_role_arn(&q).as_deref(),
        Some(testbed_support::assumed_role(&role, "quarter@test").as_str())
    );
    // Two resources, two identities; each: GetId, GetOpenIdToken, AssumeRoleWithWebIdentity.
    assert_eq!(calls(&proxy, &pool).await, calls_of(2, 2, 2, 0));

    // 2. A renewal: exactly 1 GetOpenIdToken + 1 AssumeRoleWithWebIdentity + 1 Secret
    // write + 1 status write. 30 s credentials renew two thirds in (18.5..20 s after the
    // issue) and next 20 s after that: a window to 30 s after the issue holds exactly one.
    create_cuc(&ns, "short", basic_spec(&short_pool, &short_role)).await;
    // The workloads' side of the contract too: a rollout-restart target starts with the
    // first credentials and rolls when the basic flow renews them (a pool of its own, so
    // the counts below stay the short pool's).
    let (roll_pool, roll_role) = proxy.basic_pool(3600).await;
    proxy
        .add_rule(json!({"pool": roll_pool, "operation": "AssumeRoleWithWebIdentity", "lifetime_seconds": 30}))
        .await;
    let deployments = ns.api::<Deployment>();
    deployments
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("deployment");
    let mut rolled = basic_spec(&roll_pool, &roll_role);
    rolled["rolloutRestartTargets"] = json!([{"kind": "Deployment", "name": "web"}]);
    create_cuc(&ns, "rolled", rolled).await;
    let first = wait_reason(&ns, "short", "True", "CredentialsIssued").await;
    let secret0 = ns.api::<Secret>().get("short").await.unwrap();
    let issued: Timestamp = annotation(&secret0, secret::ANN_ISSUED_AT).parse().unwrap();
    let c0 = calls(&proxy, &short_pool).await;
    assert_eq!(c0, calls_of(1, 1, 1, 0));
    let left = (issued + jiff::SignedDuration::from_secs(30)).duration_since(Timestamp::now());
    assert!(
        left > jiff::SignedDuration::from_secs(15),
        "the window must open well before the renewal ({left:?} left)"
    );
    let writes = writes_during(&ns, "short", "short", left.unsigned_abs()).await;
    let renewed = calls(&proxy, &short_pool).await - c0;
    assert_eq!(
        renewed,
        calls_of(0, 1, 1, 0),
        "one renewal: no GetId, no GetCredentialsForIdentity"
    );
    assert_eq!(writes, 2, "one Secret write and one status write");
    let secret1 = ns.api::<Secret>().get("short").await.unwrap();
    assert_ne!(
        text(&secret1, "AWS_ACCESS_KEY_ID"),
        text(&secret0, "AWS_ACCESS_KEY_ID")
    );
    let t0 = rotation(&first).unwrap();
    let second = wait_cuc(&ns, "short", "the renewal's status", |o| {
        rotation(o).is_some_and(|t| t > t0)
    })
    .await;
    assert_eq!(
        second.status.as_ref().unwrap().identity_id,
        first.status.as_ref().unwrap().identity_id
    );

    // The target rolled once, for the renewal, with the stamp status records.
    let r = wait_cuc(&ns, "rolled", "the target rolled for the renewal", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.rollout_restart.as_ref())
            .is_some_and(|r| r.restarted_at.is_some())
    })
    .await;
    let stamp = r
        .status
        .as_ref()
        .unwrap()
        .rollout_restart
        .clone()
        .unwrap()
        .restarted_at;
    assert_eq!(restarted_at(&deployments.get("web").await.unwrap()), stamp);
    assert_eq!(
        condition(&r, "RolloutRestart"),
        Some(("True".into(), "RolloutRestartTriggered".into()))
    );

    // 3. Cognito forgets the identity: GetOpenIdToken answers ResourceNotFound, and a new
    // identity is created once (one GetId), as in the enhanced flow.
    let id0 = q.status.as_ref().unwrap().identity_id.clone().unwrap();
    proxy.delete_identity(&id0).await;
    let c = calls(&proxy, &pool).await;
    force_rotate(&ns, "quarter", "forgotten").await;
    let old = id0.clone();
    wait_secret(&ns, "quarter", "credentials of a new identity", move |s| {
        let id = annotation(s, "cognito.kubecred.io/identity-id");
        !id.is_empty() && id != old
    })
    .await;
    wait_reason(&ns, "quarter", "True", "CredentialsIssued").await;
    // The refused token, then GetId, a token and STS for the new identity.
    assert_eq!(calls(&proxy, &pool).await - c, calls_of(1, 2, 1, 0));
    let ev = events(&ns, "quarter").await;
    assert!(
        ev.iter()
            .any(|(t, r, _)| t == "Warning" && r == "IdentityRecreated"),
        "{ev:?}"
    );

    // Counted in the metrics by operation and outcome.
    for op in ["GetOpenIdToken", "AssumeRoleWithWebIdentity"] {
        let series = format!(
            "cognito_unauth_controller_cognito_requests_total{{operation=\"{op}\",outcome=\"ok\"}}"
        );
        assert!(ctl.sample(&series) >= 5.0, "{series}");
    }
    nothing_leaks(&proxy, &ns, "app").await;
    nothing_leaks(&proxy, &ns, "short").await;
    ctl.stop().await;
    ns.cleanup().await;
}

/// Switching an existing resource between flows rotates once each way, keeps the
/// identity, and every version of the Secret meanwhile is complete.
#[tokio::test]
async fn fault_basic_switching_flows_rotates_once_and_keeps_the_identity() {
    let proxy = Proxy::new();
    let (pool, role) = proxy.basic_pool(3600).await;
    proxy
        .add_rule(json!({"pool": pool, "unique_credentials": true, "lifetime_seconds": 3600}))
        .await;
    let ns = TestNs::new("flow-switch").await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    let first = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let id0 = first.status.as_ref().unwrap().identity_id.clone().unwrap();
    assert_eq!(assumed_role_arn(&first), None);
    let log = SecretLog::start(&ns, "app");
    let c0 = calls(&proxy, &pool).await;
    assert_eq!(c0, calls_of(1, 0, 0, 1));

    // Enhanced → Basic.
    merge_patch(
        &ns,
        "app",
        json!({"spec": {"flow": "Basic", "roleArn": role}}),
    )
    .await;
    wait_secret(&ns, "app", "credentials of the basic flow", |s| {
        annotation(s, "cognito.kubecred.io/flow") == "Basic"
    })
    .await;
    let basic = wait_cuc(&ns, "app", "Ready for generation 2", |o| {
        o.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
            && ready(o) == Some(("True".into(), "CredentialsIssued".into()))
            && assumed_role_arn(o).is_some()
    })
    .await;
    assert_eq!(
        writes_during(&ns, "app", "app", Duration::from_secs(3)).await,
        0,
        "settled after the switch"
    );
    let to_basic = calls(&proxy, &pool).await - c0;
    assert_eq!(to_basic, calls_of(0, 1, 1, 0));
    assert_eq!(
        basic.status.as_ref().unwrap().identity_id.as_deref(),
        Some(id0.as_str())
    );
    let s = ns.api::<Secret>().get("app").await.unwrap();
    assert_eq!(annotation(&s, "cognito.kubecred.io/identity-id"), id0);
    let c1 = calls(&proxy, &pool).await;

    // Basic → Enhanced.
    merge_patch(
        &ns,
        "app",
        json!({"spec": {"flow": "Enhanced", "roleArn": null}}),
    )
    .await;
    wait_secret(&ns, "app", "credentials of the enhanced flow", |s| {
        annotation(s, "cognito.kubecred.io/flow") == "Enhanced"
    })
    .await;
    let enhanced = wait_cuc(&ns, "app", "Ready for generation 3", |o| {
        o.status.as_ref().and_then(|s| s.observed_generation) == Some(3)
            && ready(o) == Some(("True".into(), "CredentialsIssued".into()))
    })
    .await;
    assert_eq!(
        writes_during(&ns, "app", "app", Duration::from_secs(3)).await,
        0,
        "settled after the switch back"
    );
    let to_enhanced = calls(&proxy, &pool).await - c1;
    assert_eq!(to_enhanced, calls_of(0, 0, 0, 1));
    assert_eq!(
        enhanced.status.as_ref().unwrap().identity_id.as_deref(),
        Some(id0.as_str())
    );
    assert_eq!(
        assumed_role_arn(&enhanced),
        None,
        "no role session any more"
    );
    let distinct = log.finish("flow switch").await;
    assert_eq!(
        distinct, 3,
        "enhanced, basic, enhanced: one rotation each way"
    );
    record(
        "flow-switch",
        "An existing resource is switched Enhanced → Basic → Enhanced",
        "one rotation each way (the Secret's provenance records the flow and role); same identity; every Secret version present and intact; no writes once settled",
        &format!(
            "to Basic: {} GetOpenIdToken + {} AssumeRoleWithWebIdentity; back: {} GetCredentialsForIdentity; {} GetId; {distinct} distinct credentials, 0 writes once settled",
            to_basic.open_id_token,
            to_basic.assume_role,
            to_enhanced.enhanced,
            to_basic.get_id + to_enhanced.get_id
        ),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// The basic flow's refusals on a resource that worked: the reason, the Secret kept and
/// intact, one attempt (terminal: the next in 4..5 min, worked out by hand), Ready again
/// at once after the fix and a spec change. And a first issue with a duration the role
/// does not allow: reported once, not retried in a loop, no Secret.
#[tokio::test]
async fn fault_basic_refusals_are_terminal_and_keep_the_secret() {
    let proxy = Proxy::new();
    let ns = TestNs::new("basic-refusals").await;
    let ctl = Running::start(&ns).await;
    let cases = ["classic-off", "role-untrusted", "duration-over-max"];
    let mut pools = vec![];
    for name in cases {
        let (pool, role) = proxy.basic_pool(7200).await;
        let mut spec = basic_spec(&pool, &role);
        spec["sessionDuration"] = json!("2h");
        create_cuc(&ns, name, spec).await;
        pools.push((pool, role));
    }
    // A first issue asking more than the role allows (3 h against its 1 h).
    let (short_pool, short_role) = proxy.basic_pool(3600).await;
    let mut too_long = basic_spec(&short_pool, &short_role);
    too_long["sessionDuration"] = json!("3h");
    create_cuc(&ns, "too-long", too_long).await;
    for name in cases {
        wait_reason(&ns, name, "True", "CredentialsIssued").await;
    }
    let logs: Vec<_> = cases.iter().map(|n| SecretLog::start(&ns, n)).collect();
    let kept: Vec<_> = futures::future::join_all(
        cases
            .iter()
            .map(|n| async { ns.api::<Secret>().get(n).await.unwrap().data }),
    )
    .await;

    // The faults: the pool stops allowing the basic flow; the role stops trusting the
    // pool; the role's maximum drops below the 2 h asked for.
    proxy.set_classic(&pools[0].0, false).await;
    proxy.put_role(&pools[1].1, &[], 7200).await;
    proxy.put_role(&pools[2].1, &[&pools[2].0], 3600).await;
    let before: Vec<Calls> =
        futures::future::join_all(pools.iter().map(|(p, _)| calls(&proxy, p))).await;
    for name in cases {
        force_rotate(&ns, name, "during-fault").await;
    }
    wait_reason(&ns, "classic-off", "False", "ClassicFlowDisabled").await;
    wait_reason(&ns, "role-untrusted", "False", "RoleAccessDenied").await;
    wait_reason(&ns, "duration-over-max", "False", "InvalidSessionDuration").await;
    let first = wait_reason(&ns, "too-long", "False", "InvalidSessionDuration").await;
    let msg = ready_message(&ns, "too-long").await;
    assert!(msg.contains("MaxSessionDuration"), "{msg}");
    assert_eq!(
        first.status.as_ref().unwrap().failed_attempts,
        Some(1),
        "one attempt"
    );
    let window = Duration::from_secs(8);
    tokio::time::sleep(window).await; // a terminal refusal must not be retried in this window
    // Worked out by hand: the GetOpenIdToken refusal stops before STS; the two STS
    // refusals cost one token and one AssumeRoleWithWebIdentity; no GetId (the identity
    // is reused); no second attempt before 240 s.
    let want = [
        calls_of(0, 1, 0, 0),
        calls_of(0, 1, 1, 0),
        calls_of(0, 1, 1, 0),
    ];
    let mut seen = vec![];
    for (i, (p, _)) in pools.iter().enumerate() {
        let during = calls(&proxy, p).await - before[i];
        assert_eq!(during, want[i], "{}: calls during the fault", cases[i]);
        seen.push(during);
        let msg = ready_message(&ns, cases[i]).await;
        assert!(msg.contains("keeps credentials valid until"), "{msg}");
        let data = ns.api::<Secret>().get(cases[i]).await.unwrap().data;
        assert_eq!(data, kept[i], "{}: the Secret must be kept", cases[i]);
    }
    let first_issue = calls(&proxy, &short_pool).await;
    assert_eq!(
        first_issue,
        calls_of(1, 1, 1, 0),
        "too-long: one attempt, not a loop"
    );
    assert!(
        ns.api::<Secret>()
            .get_opt("too-long")
            .await
            .unwrap()
            .is_none()
    );

    // The fixes, each with a spec change (a terminal reason retries at once on one).
    proxy.set_classic(&pools[0].0, true).await;
    spec_change(&ns, "classic-off", "25m").await;
    proxy.put_role(&pools[1].1, &[&pools[1].0], 7200).await;
    spec_change(&ns, "role-untrusted", "25m").await;
    merge_patch(
        &ns,
        "duration-over-max",
        json!({"spec": {"sessionDuration": "1h"}}),
    )
    .await;
    merge_patch(&ns, "too-long", json!({"spec": {"sessionDuration": "1h"}})).await;
    for name in cases.iter().chain(&["too-long"]) {
        wait_reason(&ns, name, "True", "CredentialsIssued").await;
    }
    let s = ns.api::<Secret>().get("duration-over-max").await.unwrap();
    let life = lifetime(&s);
    assert!((3595.0..=3601.0).contains(&life), "{life}");
    for (name, log) in cases.iter().zip(logs) {
        assert_eq!(
            log.finish(name).await,
            2,
            "{name}: kept, then replaced once"
        );
    }
    let shown = |c: &Calls| {
        format!(
            "{} GetOpenIdToken, {} AssumeRoleWithWebIdentity, {} GetId in {}s",
            c.open_id_token,
            c.assume_role,
            c.get_id,
            window.as_secs()
        )
    };
    for name in cases {
        nothing_leaks(&proxy, &ns, name).await;
    }
    let asserted = "the reason (terminal); the Secret kept and intact in every version; one attempt and none within 8 s (the next in 240..300 s); Ready at once after the fix and a spec change";
    record(
        "basic-classic-off",
        "Flow Basic: the pool stops allowing the basic flow (AllowClassicFlow off; GetOpenIdToken InvalidParameterException)",
        asserted,
        &format!(
            "ClassicFlowDisabled; {}; Secret data unchanged; Ready after the fix",
            shown(&seen[0])
        ),
    );
    record(
        "basic-role-untrusted",
        "Flow Basic: the role's trust policy stops naming the pool (STS AccessDenied)",
        asserted,
        &format!(
            "RoleAccessDenied; {}; Secret data unchanged; Ready after the fix",
            shown(&seen[1])
        ),
    );
    record(
        "basic-duration-over-max",
        "Flow Basic: sessionDuration above the role's MaxSessionDuration (STS ValidationError), on a working resource and on a first issue",
        "InvalidSessionDuration (terminal), STS's message in Ready; a working resource keeps its Secret; a first issue makes one attempt and no Secret; Ready after sessionDuration is lowered",
        &format!(
            "InvalidSessionDuration; working resource: {}, Secret data unchanged; first issue: {} GetId, {} GetOpenIdToken, {} AssumeRoleWithWebIdentity, no Secret; Ready after sessionDuration 1h",
            shown(&seen[2]),
            first_issue.get_id,
            first_issue.open_id_token,
            first_issue.assume_role
        ),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

async fn spec_change(ns: &TestNs, name: &str, renew_before: &str) {
    merge_patch(ns, name, json!({"spec": {"renewBefore": renew_before}})).await;
}

/// STS gives no verdict (throttling, 503) for 10 s: transient, calls bounded by the
/// backoff, the Secret kept, Ready within one backoff step once STS answers again.
async fn basic_transient(id: &str, fault: &str, rule: Value, reason: &str) {
    let proxy = Proxy::new();
    let (pool, role) = proxy.basic_pool(3600).await;
    let ns = TestNs::new(id).await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", basic_spec(&pool, &role)).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let log = SecretLog::start(&ns, "app");
    let before = calls(&proxy, &pool).await;
    let mut rule = rule;
    rule["pool"] = json!(pool);
    rule["operation"] = json!("AssumeRoleWithWebIdentity");
    let rule_id = proxy.add_rule(rule).await;
    force_rotate(&ns, "app", "during-fault").await;
    wait_reason(&ns, "app", "False", reason).await;
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await; // the fault lasts this long
    let during = calls(&proxy, &pool).await - before;
    let attempts = during.assume_role;
    let bound = max_attempts(window + Duration::from_secs(3));
    assert!(
        (1..=bound).contains(&attempts),
        "{fault}: {attempts} attempts, the backoff allows at most {bound}"
    );
    // One token per attempt (one more if an attempt is between its two calls); no GetId.
    assert!(
        during.open_id_token == attempts || during.open_id_token == attempts + 1,
        "{during:?}"
    );
    assert_eq!((during.get_id, during.enhanced), (0, 0));
    assert!(ready_message(&ns, "app").await.contains("STS"));
    // Attempts begun by the time the fault is gone (each begins with its token) bound
    // the failures: the next attempt is due at most one step after the last of them.
    proxy.delete_rule(rule_id).await;
    let cleared = std::time::Instant::now();
    let begun = (calls(&proxy, &pool).await - before).open_id_token;
    let next_step = step_after(begun);
    tokio::time::timeout(
        next_step + Duration::from_secs(5),
        wait_reason(&ns, "app", "True", "CredentialsIssued"),
    )
    .await
    .unwrap_or_else(|_| panic!("{fault}: not Ready within one backoff step ({next_step:?})"));
    let took = cleared.elapsed();
    assert_eq!(
        writes_during(&ns, "app", "app", Duration::from_secs(2)).await,
        0,
        "{fault}: writes after recovery"
    );
    let total = calls(&proxy, &pool).await - before;
    // Every attempt begun failed or is the one that succeeded: no extra rotation.
    assert!(
        total.assume_role <= begun + 1 && total.assume_role == total.open_id_token,
        "{fault}: a duplicate rotation: {total:?} after {begun} attempts begun"
    );
    assert_eq!(total.get_id, 0);
    assert_eq!(
        log.finish(fault).await,
        2,
        "{fault}: the Secret changed other than once"
    );
    record(
        id,
        fault,
        &format!(
            "Ready=False/{reason} while it lasts; Secret kept and intact in every version; at most {bound} attempts in {}s (each 1 GetOpenIdToken + 1 AssumeRoleWithWebIdentity, no GetId); Ready within one backoff step after; one rotation",
            window.as_secs()
        ),
        &format!(
            "{attempts} attempts in {}s, {} failed in all; Ready {:.1}s after clearing (step ≤ {}s); Secret changed once",
            window.as_secs(),
            total.assume_role - 1,
            took.as_secs_f64(),
            next_step.as_secs()
        ),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn fault_basic_sts_throttling() {
    basic_transient(
        "basic-sts-throttling",
        "Flow Basic: STS throttles AssumeRoleWithWebIdentity (Throttling)",
        json!({"error": "Throttling"}),
        "Throttled",
    )
    .await;
}

#[tokio::test]
async fn fault_basic_sts_unavailable() {
    basic_transient(
        "basic-sts-503",
        "Flow Basic: STS answers 503 ServiceUnavailable",
        json!({"error": "ServiceUnavailable"}),
        "CognitoUnavailable",
    )
    .await;
}
