//! Credentials that reach workloads (issue 7), with real AWS clients: SDKs that re-read a
//! mounted `credential_process` file across rotations, rollout restarts of env-var
//! readers through the real deployment controller, and STS verification.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cognito_unauth_controller::crd::CognitoUnauthCredential;
use cognito_unauth_controller::reconcile::secret;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PostParams;
use serde_json::{Value, json};
use testbed_support::{
    AwsCredentials, Proxy, SecretMirror, TestNs, aws_cli, eventually, owned_replica_sets,
    restarted_at, test_dir, testbed,
};

use testbed_support::inproc::*;

/// Credentials as the Secret holds them, for the aws CLI's environment.
fn secret_credentials(s: &Secret) -> AwsCredentials {
    AwsCredentials {
        access_key_id: text(s, secret::KEY_ACCESS_KEY_ID),
        secret_access_key: text(s, secret::KEY_SECRET_ACCESS_KEY),
        session_token: text(s, secret::KEY_SESSION_TOKEN),
        expiration: 0,
    }
}

/// The environment of a pod that mounts the Secret at `mount` and sets only
/// `AWS_CONFIG_FILE` (no credentials in the environment, no other AWS files).
fn mounted_env(mount: &Path, home: &Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".into(), home.display().to_string()),
        (
            "AWS_CONFIG_FILE".into(),
            mount.join("config").display().to_string(),
        ),
        ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
        (
            "AWS_ENDPOINT_URL_STS".into(),
            testbed().sts_endpoint.clone(),
        ),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("AWS_MAX_ATTEMPTS".into(), "1".into()),
    ]
}

/// A long-lived boto3 client: one session, GetCallerIdentity every 0.3 s until `stop`
/// exists. Any error ends it with a non-zero status.
const BOTO3_LOOP: &str = r#"
import os, sys, time
import boto3
from botocore.config import Config
stop = sys.argv[1]
sts = boto3.session.Session().client("sts", config=Config(user_agent_extra="cuc-test-boto3", retries={"max_attempts": 1}))
while not os.path.exists(stop):
    sts.get_caller_identity()
    time.sleep(0.3)
"#;

fn spawn(cmd: &mut Command, env: &[(String, String)]) -> Child {
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a client")
}

fn finish(mut child: Child, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("client status") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "{what} failed: {err}");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The access keys one client used, in the order it used them, and the classes the
/// proxy gave its calls.
struct Usage {
    calls: usize,
    keys: Vec<String>,
    classes: BTreeMap<String, usize>,
    /// Times the client went back to a key it had already left.
    regressions: usize,
}

fn usage(calls: &[Value], ua: &str) -> Usage {
    let mut mine: Vec<&Value> = calls
        .iter()
        .filter(|c| c["user_agent"].as_str().unwrap_or_default().contains(ua))
        .collect();
    mine.sort_by(|a, b| a["time"].as_f64().partial_cmp(&b["time"].as_f64()).unwrap());
    let mut keys: Vec<String> = Vec::new();
    let mut classes = BTreeMap::new();
    let mut regressions = 0;
    for c in &mine {
        let k = c["access_key_id"].as_str().unwrap_or_default().to_string();
        *classes
            .entry(c["class"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
        if keys.last() != Some(&k) {
            if keys.contains(&k) {
                regressions += 1;
            }
            keys.push(k);
        }
    }
    Usage {
        calls: mine.len(),
        keys,
        classes,
        regressions,
    }
}

#[tokio::test]
async fn sdk_clients_follow_rotations_through_a_mounted_secret() {
    let proxy = Proxy::new();
    let ns = TestNs::new("mount").await;
    // 30 s credentials: renewBefore (20m) exceeds them, so they rotate at two thirds.
    let pool = proxy.realistic_pool(30).await;
    let dir = test_dir(&ns.name);
    let mount = dir.join("volume");
    let ctl = Running::start(&ns).await;
    create_cuc(
        &ns,
        "app",
        json!({"identityPoolId": pool, "mountPath": mount.display().to_string()}),
    )
    .await;
    let first = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    // The kubelet's part: project the Secret into the "volume".
    let mirror = SecretMirror::start(ns.client.clone(), &ns.name, "app", &mount).expect("mirror");
    let want_config = format!(
        "credential_process = cat {}/credential-process.json\n",
        mount.display()
    );
    mirror
        .wait_for(
            |d| {
                d.get("config")
                    .is_some_and(|c| String::from_utf8_lossy(c).contains(&want_config))
            },
            WAIT,
        )
        .await
        .expect("the volume holds the config file");

    // Three long-lived clients, each only told AWS_CONFIG_FILE.
    let env = mounted_env(&mount, &dir);
    let stop = dir.join("stop");
    let _ = std::fs::remove_file(&stop);
    let boto3 = spawn(
        Command::new(testbed().venv.join("bin/python"))
            .arg("-c")
            .arg(BOTO3_LOOP)
            .arg(&stop),
        &env,
    );
    let cli = spawn(
        Command::new("bash").arg("-c").arg(format!(
            "while [ ! -e '{}' ]; do '{}' sts get-caller-identity --output text || exit 1; sleep 0.3; done",
            stop.display(),
            testbed().venv.join("bin/aws").display()
        )),
        &env,
    );
    let rust_stop = Arc::new(AtomicBool::new(false));
    let rust_calls = Arc::new(AtomicUsize::new(0));
    let rust = {
        let config = mount.join("config");
        let stop = rust_stop.clone();
        let calls = rust_calls.clone();
        tokio::spawn(async move {
            use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
            let files = EnvConfigFiles::builder()
                .with_file(EnvConfigFileKind::Config, config)
                .build();
            let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .profile_files(files)
                .app_name(aws_config::AppName::new("cuc-test-rust").expect("app name"))
                .endpoint_url(&testbed().sts_endpoint)
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .load()
                .await;
            let sts = aws_sdk_sts::Client::new(&conf);
            while !stop.load(Ordering::Relaxed) {
                sts.get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| format!("{}", aws_sdk_sts::error::DisplayErrorContext(&e)))?;
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok::<(), String>(())
        })
    };

    // Three rotations while they run.
    let mut last = rotation(&first).expect("rotation time");
    for n in 1..=3 {
        let o = wait_cuc(&ns, "app", &format!("rotation {n}"), move |o| {
            rotation(o).is_some_and(|t| t > last)
        })
        .await;
        last = rotation(&o).expect("rotation time");
    }
    let newest = text(
        &ns.api::<Secret>().get("app").await.expect("secret"),
        secret::KEY_ACCESS_KEY_ID,
    );
    // Each client moves on to the newest key (watched through the proxy's record).
    let uas = ["cuc-test-boto3", "aws-cli/", "app/cuc-test-rust"];
    eventually(WAIT, "every client signs with the newest key", || {
        let proxy = &proxy;
        let pool = &pool;
        let newest = &newest;
        async move {
            let calls = proxy.sts_calls(pool).await;
            uas.iter()
                .all(|ua| usage(&calls, ua).keys.last() == Some(newest))
                .then_some(())
        }
    })
    .await;
    std::fs::write(&stop, b"").expect("stop file");
    rust_stop.store(true, Ordering::Relaxed);
    finish(boto3, "boto3");
    finish(cli, "aws CLI");
    rust.await
        .expect("rust client task")
        .expect("aws-sdk-rust client");

    let calls = proxy.sts_calls(&pool).await;
    for ua in uas {
        let u = usage(&calls, ua);
        let bad: usize = u
            .classes
            .iter()
            .filter(|(c, _)| !matches!(c.as_str(), "current" | "previous"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            bad, 0,
            "{ua}: calls with expired or invalid credentials: {:?}",
            u.classes
        );
        assert!(
            u.keys.len() >= 4,
            "{ua}: used {} keys over 3 rotations: {:?}",
            u.keys.len(),
            u.classes
        );
        assert_eq!(u.regressions, 0, "{ua} went back to an older key");
        assert_eq!(u.keys.last(), Some(&newest), "{ua}");
        eprintln!(
            "{ua}: {} calls, {} keys, {:?}",
            u.calls,
            u.keys.len(),
            u.classes
        );
    }
    // Clients that re-read the file on each call sign with the newest key but for the
    // moment between a fetch and the Secret write reaching the volume.
    for ua in ["cuc-test-boto3", "aws-cli/"] {
        let u = usage(&calls, ua);
        let previous = u.classes.get("previous").copied().unwrap_or(0);
        assert!(
            previous <= 3,
            "{ua}: {previous} of {} calls used a superseded key",
            u.calls
        );
    }
    assert!(rust_calls.load(Ordering::Relaxed) > 0);
    assert!(mirror.versions() >= 4, "{} versions", mirror.versions());
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn verify_publishes_the_role_and_refused_credentials_never_replace_good_ones() {
    let proxy = Proxy::new();
    let ns = TestNs::new("verify").await;
    let pool = proxy.realistic_pool(3600).await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool, "verify": true})).await;
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let want = testbed_support::assumed_role(
        &proxy.unauth_role(&pool).await,
        testbed_support::COGNITO_SESSION,
    );
    let st = o.status.clone().expect("status");
    assert_eq!(st.assumed_role_arn.as_deref(), Some(want.as_str()));
    assert_eq!(
        condition(&o, "Verified"),
        Some(("True".into(), "CallerIdentityVerified".into()))
    );
    assert_eq!(proxy.pool_calls(&pool, "GetCallerIdentity").await, 1);

    // The seed's last step: the Secret's env keys work with the aws CLI.
    let secrets = ns.api::<Secret>();
    let good = secrets.get("app").await.expect("secret");
    let out = aws_cli(
        &[
            "sts",
            "get-caller-identity",
            "--query",
            "Arn",
            "--output",
            "text",
        ],
        &secret_credentials(&good),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);

    // STS refuses the next credentials: they are not written.
    let rule = proxy
        .add_rule(json!({"pool": pool, "operation": "GetCallerIdentity", "error": "InvalidClientTokenId"}))
        .await;
    let creds_before = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    force_rotate(&ns, "app", "1").await;
    let o = wait_reason(&ns, "app", "False", "VerificationFailed").await;
    assert_eq!(
        condition(&o, "Verified"),
        Some(("False".into(), "VerificationFailed".into()))
    );
    let msg = &o.status.as_ref().unwrap().conditions[0].message;
    assert!(msg.contains("InvalidClientTokenId"), "{msg}");
    assert_eq!(
        secrets.get("app").await.expect("secret").data,
        good.data,
        "refused credentials must not replace good ones"
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        creds_before + 1
    );
    // Cleared: a spec change retries at once, and the new credentials are written.
    proxy.delete_rule(rule).await;
    merge_patch(&ns, "app", json!({"spec": {"renewBefore": "25m"}})).await;
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    assert_eq!(
        condition(&o, "Verified"),
        Some(("True".into(), "CallerIdentityVerified".into()))
    );
    assert_ne!(secrets.get("app").await.expect("secret").data, good.data);
    testbed_support::record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "sts-refuses-verification",
        "STS refuses the new credentials (`verify: true`, InvalidClientTokenId)",
        "Ready and Verified False `VerificationFailed`; the Secret's bytes unchanged; one fetch per attempt; a spec change retries at once",
        "Secret kept byte for byte; 1 GetCredentialsForIdentity for the refused attempt; Verified True again after the fault cleared",
    );

    // Verification off: no Verified condition, no ARN.
    merge_patch(&ns, "app", json!({"spec": {"verify": false}})).await;
    let o = wait_cuc(&ns, "app", "Verified removed", |o| {
        condition(o, "Verified").is_none()
    })
    .await;
    assert_eq!(o.status.unwrap().assumed_role_arn, None);
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn an_older_secret_layout_is_completed_without_a_cognito_call() {
    let proxy = Proxy::new();
    let ns = TestNs::new("layout").await;
    let pool = proxy.realistic_pool(3600).await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    ctl.stop().await;
    // What the previous version wrote: no credential-process.json, no config.
    let secrets = ns.api::<Secret>();
    let mut s = secrets.get("app").await.expect("secret");
    let data = s.data.as_mut().expect("data");
    data.remove(secret::KEY_CREDENTIAL_PROCESS);
    data.remove(secret::KEY_CONFIG_FILE);
    let sum = secret::checksum(data);
    s.annotations_mut().insert(secret::ANN_CHECKSUM.into(), sum);
    let legacy = secrets
        .replace("app", &PostParams::default(), &s)
        .await
        .expect("write the old layout");
    let calls = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    let ctl = Running::start(&ns).await;
    let upgraded = wait_secret(&ns, "app", "the new keys", |s| {
        s.data
            .as_ref()
            .is_some_and(|d| d.contains_key(secret::KEY_CONFIG_FILE))
    })
    .await;
    assert_eq!(
        text(&upgraded, secret::KEY_ACCESS_KEY_ID),
        text(&legacy, secret::KEY_ACCESS_KEY_ID),
        "same credentials"
    );
    assert!(secret::inspect(&upgraded, "", "/var/run/secrets/cognito", None).current_layout);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls
    );
    ctl.stop().await;
    ns.cleanup().await;
}

async fn replica_sets(ns: &TestNs, app: &str) -> BTreeSet<String> {
    let d = ns.api::<Deployment>().get(app).await.expect("deployment");
    owned_replica_sets(&ns.client, &ns.name, &d)
        .await
        .into_iter()
        .map(|r| r.name_any())
        .collect()
}

async fn wait_replica_sets(ns: &TestNs, app: &str, n: usize) -> BTreeSet<String> {
    eventually(WAIT, &format!("{n} ReplicaSets of {app}"), || async move {
        let rs = replica_sets(ns, app).await;
        (rs.len() == n).then_some(rs)
    })
    .await
}

#[tokio::test]
async fn restart_targets_roll_once_per_rotation_and_never_on_a_controller_restart() {
    let proxy = Proxy::new();
    let ns = TestNs::new("restart").await;
    let pool = proxy.realistic_pool(30).await;
    let deployments = ns.api::<Deployment>();
    deployments
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("deployment");
    let ctl = Running::start(&ns).await;
    create_cuc(
        &ns,
        "app",
        json!({
            "identityPoolId": pool,
            "rolloutRestartTargets": [
                {"kind": "Deployment", "name": "web"},
                {"kind": "Deployment", "name": "missing"},
            ],
        }),
    )
    .await;
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    // First issue: the pods start with these credentials; nothing to roll.
    assert_eq!(
        condition(&o, "RolloutRestart"),
        Some(("True".into(), "NoRotationSinceTargetsSet".into()))
    );
    let mut seen = wait_replica_sets(&ns, "web", 1).await;
    assert_eq!(restarted_at(&deployments.get("web").await.unwrap()), None);

    let mut last = rotation(&o).expect("rotation");
    for n in 1..=2usize {
        let o = wait_cuc(&ns, "app", &format!("rolled for rotation {n}"), move |o| {
            let st = o.status.as_ref();
            // The roll is recorded against the credentials' issue time (full precision).
            let issued = st
                .and_then(|s| s.rollout_restart.as_ref())
                .and_then(|r| r.credentials_issued_at.as_deref())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok());
            rotation(o).is_some_and(|t| t > last) && issued == rotation(o)
        })
        .await;
        last = rotation(&o).unwrap();
        let st = o.status.clone().unwrap();
        let stamp = st.rollout_restart.unwrap().restarted_at.expect("stamp");
        // The missing target is reported; the real one rolled.
        assert_eq!(
            condition(&o, "RolloutRestart"),
            Some(("False".into(), "TargetNotFound".into()))
        );
        let d = deployments.get("web").await.unwrap();
        assert_eq!(restarted_at(&d).as_deref(), Some(stamp.as_str()));
        assert!(stamp.contains('.') && stamp.ends_with('Z'), "{stamp}");
        let now = wait_replica_sets(&ns, "web", 1 + n).await;
        assert!(now.is_superset(&seen));
        seen = now;
    }
    let text = ctl.metrics.render().unwrap();
    assert!(
        text.contains(r#"rollout_restarts_total{kind="Deployment",result="triggered"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"rollout_restarts_total{kind="Deployment",result="not_found"} 2"#),
        "{text}"
    );
    let ev = events(&ns, "app").await;
    let triggered = ev
        .iter()
        .filter(|(t, r, _)| t == "Normal" && r == "RolloutRestartTriggered")
        .count();
    assert_eq!(triggered, 2, "{ev:?}");
    // Two rotations, each failing for the same target with the same note: one Warning
    // event whose series counts both.
    let failed = ev
        .iter()
        .filter(|(t, r, m)| {
            t == "Warning"
                && r == "RolloutRestartFailed"
                && m.contains("Deployment/missing not found")
        })
        .count();
    assert_eq!(failed, 1, "one Warning event series: {ev:?}");

    testbed_support::record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "restart-target-missing",
        "A rollout-restart target does not exist (next to one that does)",
        "the real target rolls once per rotation; `RolloutRestart` False `TargetNotFound`; one Warning event series; not retried",
        &format!(
            "2 rotations: 2 new ReplicaSets, {triggered} RolloutRestartTriggered events, metric not_found=2; none after a controller restart"
        ),
    );

    // A controller restart rolls nothing: same template, same ReplicaSets until the next
    // rotation (watched until the restarted controller has reconciled the resource).
    ctl.stop().await;
    let generation = deployments.get("web").await.unwrap().metadata.generation;
    let ctl = Running::start(&ns).await;
    let before = rotation(
        &ns.api::<CognitoUnauthCredential>()
            .get("app")
            .await
            .unwrap(),
    );
    // The restarted controller's first reconcile writes nothing (status unchanged), so
    // wait for the next rotation's roll instead and check nothing happened before it.
    let o = wait_cuc(&ns, "app", "the next rotation", move |o| {
        rotation(o) > before
    })
    .await;
    let d = deployments.get("web").await.unwrap();
    let stamp = o.status.unwrap().rollout_restart.unwrap().restarted_at;
    assert_eq!(
        d.metadata.generation,
        generation.map(|g| g + 1),
        "exactly one roll since the controller restart: the next rotation's"
    );
    assert_eq!(restarted_at(&d), stamp);
    wait_replica_sets(&ns, "web", 4).await;
    ctl.stop().await;
    ns.cleanup().await;
}
