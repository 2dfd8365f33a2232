//! The real binary, as `make run` and a Deployment run it: configured by the environment
//! (`AWS_ENDPOINT_URL_COGNITO_IDENTITY`, `KUBECONFIG`), watched with `kubectl wait`, its
//! Secret used by the real aws CLI and boto3, stopped by SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use testbed_support::{
    ControllerProcess, Proxy, TestNs, cuc_manifest, install_crd, kubectl, kubectl_apply, test_dir,
    testbed, wait_ready,
};

const BIN: &str = env!("CARGO_BIN_EXE_cognito-unauth-controller");

fn controller(ns: &str, log: &Path, level: &str) -> ControllerProcess {
    ControllerProcess::start(
        Path::new(BIN),
        log,
        &[
            ("WATCH_NAMESPACES", ns),
            ("LOG_LEVEL", level),
            ("LOG_FORMAT", "json"),
        ],
    )
}

/// Runs an AWS client with the test bed's environment plus `extra`; returns stdout.
fn aws_client(cmd: &Path, args: &[&str], extra: &[(&str, &str)]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .envs(testbed().env())
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cmd.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        cmd.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn binary_issues_credentials_that_real_aws_clients_accept() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("binary").await;
    let dir = test_dir(&ns.name);
    install_crd();
    let first = controller(&ns.name, &dir.join("controller.log"), "debug");
    kubectl_apply(&cuc_manifest(&ns.name, "app", &pool));
    wait_ready(&ns.name, "app", 60);
    let cols = kubectl(&["-n", &ns.name, "get", "cuc", "app", "--no-headers"]);
    assert!(
        cols.contains(&pool) && cols.contains("True") && cols.contains(" app "),
        "{cols}"
    );

    // The Secret works both ways: as env vars and as a shared credentials file.
    let secret = ns.api::<Secret>().get("app").await.unwrap();
    let data = secret.data.unwrap();
    let get = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    let creds_file = dir.join("credentials");
    std::fs::write(&creds_file, get("credentials")).unwrap();
    let sts = testbed().emulator_url.clone();
    let who = aws_client(
        &testbed().venv.join("bin/aws"),
        &["sts", "get-caller-identity", "--output", "json"],
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", creds_file.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", &sts),
        ],
    );
    assert!(who.contains("Arn"), "{who}");
    let who = aws_client(
        &testbed().venv.join("bin/python"),
        &[
            "-c",
            "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", &get("AWS_ACCESS_KEY_ID")),
            ("AWS_SECRET_ACCESS_KEY", &get("AWS_SECRET_ACCESS_KEY")),
            ("AWS_SESSION_TOKEN", &get("AWS_SESSION_TOKEN")),
            ("AWS_ENDPOINT_URL_STS", &sts),
        ],
    );
    assert!(who.starts_with("arn:aws:"), "{who}");

    // A failure and a drift repair, so errors and every event kind are in what we scan.
    let throttle = proxy
        .add_rule(
            serde_json::json!({"pool": pool, "error": "TooManyRequestsException", "times": 1}),
        )
        .await;
    kubectl(&[
        "-n",
        &ns.name,
        "annotate",
        "cuc/app",
        "cognito.kubecred.io/force-rotate=1",
    ]);
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=jsonpath={.status.lastFailureReason}=Throttled",
        "cuc/app",
        "--timeout=30s",
    ]);
    proxy.delete_rule(throttle).await;
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=jsonpath={.metadata.annotations.cognito\\.kubecred\\.io/force-rotate}=1",
        "secret/app",
        "--timeout=30s",
    ]);
    kubectl(&["-n", &ns.name, "delete", "secret", "app"]);
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=create",
        "secret/app",
        "--timeout=30s",
    ]);

    // spec.verify: STS is called signed with the credentials; the SDK's debug logging of
    // the signing identity must not show them either.
    kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "cuc/app",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"verify":true}}"#,
    ]);
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=condition=Verified",
        "cuc/app",
        "--timeout=30s",
    ]);

    // SIGTERM: exits 0. A restart with valid credentials makes no Cognito call.
    assert!(first.terminate().success());
    let calls = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    let second = controller(&ns.name, &dir.join("controller2.log"), "debug");
    // Ready is the first process's: the window must follow the second one's own
    // reconcile of the resource, or nothing happening in it would prove nothing.
    testbed_support::eventually(
        Duration::from_secs(30),
        "the second process to reconcile the resource",
        || async {
            let done = second
                .metric("cognito_unauth_controller_reconciliations_total")
                .await?;
            (done >= 1.0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a window in which nothing may happen
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    assert!(second.terminate().success());

    // Nothing the controller wrote carries the credentials the proxy issued: its logs at
    // debug level, the events, the resource (status, conditions, error messages).
    let logs = std::fs::read_to_string(dir.join("controller.log")).unwrap()
        + &std::fs::read_to_string(dir.join("controller2.log")).unwrap();
    assert!(
        logs.contains("credentials rotated") && logs.contains("rotation failed"),
        "debug log incomplete?"
    );
    let events = kubectl(&["-n", &ns.name, "get", "events", "-o", "json"]);
    assert!(
        events.contains("RotationFailed") && events.contains("CredentialsRotated"),
        "{events}"
    );
    let resource = kubectl(&["-n", &ns.name, "get", "cuc", "app", "-o", "json"]);
    let issued = proxy.issued().await;
    assert!(issued.len() >= 3, "{} credentials issued", issued.len());
    for c in issued {
        for k in ["AccessKeyId", "SecretKey", "SessionToken"] {
            let v = c[k].as_str().unwrap();
            for (what, text) in [
                ("logs", &logs),
                ("events", &events),
                ("the resource", &resource),
            ] {
                assert!(!text.contains(v), "{k} leaked into {what}");
            }
        }
    }
    ns.cleanup().await;
}

/// Flow Basic, and flow Enhanced with verify, through the real binary at LOG_LEVEL=trace:
/// Ready, a refusal, a rotation; the OpenID tokens (credentials too: STS trades them for
/// the role's) and the credentials the proxy issued, plain or base64, appear nowhere the
/// controller writes (the SDK logs them at debug and trace: src/common/logging.rs caps it).
#[tokio::test]
async fn binary_never_shows_the_basic_flows_token_or_credentials() {
    let proxy = Proxy::new();
    let (pool, role) = proxy.basic_pool(3600).await;
    let ns = TestNs::new("binary-basic").await;
    let dir = test_dir(&ns.name);
    install_crd();
    let ctl = controller(&ns.name, &dir.join("controller.log"), "trace");
    kubectl_apply(&format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\nmetadata: {{name: app, namespace: {}}}\nspec: {{identityPoolId: \"{pool}\", flow: Basic, roleArn: \"{role}\"}}\n",
        ns.name
    ));
    wait_ready(&ns.name, "app", 60);
    // Flow Enhanced with verify: GetCredentialsForIdentity's answer, and STS
    // GetCallerIdentity signed with the new credentials.
    kubectl_apply(&format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\nmetadata: {{name: enhanced, namespace: {}}}\nspec: {{identityPoolId: \"{pool}\", verify: true}}\n",
        ns.name
    ));
    wait_ready(&ns.name, "enhanced", 60);
    // A refusal (the role stops trusting the pool), then a rotation once it trusts again.
    proxy.put_role(&role, &[], 3600).await;
    kubectl(&[
        "-n",
        &ns.name,
        "annotate",
        "cuc/app",
        "cognito.kubecred.io/force-rotate=1",
    ]);
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=jsonpath={.status.lastFailureReason}=RoleAccessDenied",
        "cuc/app",
        "--timeout=30s",
    ]);
    proxy.put_role(&role, &[&pool], 3600).await;
    kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "cuc/app",
        "--type=merge",
        "-p",
        r#"{"spec":{"renewBefore":"25m"}}"#,
    ]);
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=jsonpath={.metadata.annotations.cognito\\.kubecred\\.io/force-rotate}=1",
        "secret/app",
        "--timeout=30s",
    ]);
    wait_ready(&ns.name, "app", 30);
    assert!(ctl.terminate().success());

    let logs = std::fs::read_to_string(dir.join("controller.log")).unwrap();
    assert!(
        logs.contains("credentials rotated") && logs.contains("RoleAccessDenied"),
        "debug log incomplete?"
    );
    let events = kubectl(&["-n", &ns.name, "get", "events", "-o", "json"]);
    let resource = kubectl(&["-n", &ns.name, "get", "cuc", "-o", "json"]);
    let items: serde_json::Value = serde_json::from_str(&resource).unwrap();
    for item in items["items"].as_array().unwrap() {
        let arn = item["status"]["assumedRoleArn"]
            .as_str()
            .unwrap_or_default();
        assert!(arn.contains("assumed-role/"), "{item}");
    }
    assert_eq!(items["items"].as_array().unwrap().len(), 2);
    let tokens = proxy.open_id_tokens().await;
    assert!(!tokens.is_empty());
    let mut secrets: Vec<(&str, String)> = tokens.into_iter().map(|t| ("token", t)).collect();
    for c in proxy.issued().await {
        for k in ["AccessKeyId", "SecretKey", "SessionToken"] {
            let v = c[k].as_str().unwrap().to_string();
            // As the Secret's data carries it too (a request body logged whole).
            let b64 =
                serde_json::to_value(k8s_openapi::ByteString(v.clone().into_bytes())).unwrap();
            secrets.push((k, b64.as_str().unwrap().to_string()));
            secrets.push((k, v));
        }
    }
    for (k, v) in &secrets {
        for (what, text) in [
            ("logs", &logs),
            ("events", &events),
            ("the resource", &resource),
        ] {
            assert!(!text.contains(v.as_str()), "{k} leaked into {what}");
        }
    }
    ns.cleanup().await;
}

/// `kubectl wait --for=condition=CONDITION` on the resources labelled `selector`.
fn wait_for(ns: &str, condition: &str, selector: &str, seconds: u32) {
    kubectl(&[
        "-n",
        ns,
        "wait",
        &format!("--for=condition={condition}"),
        "cuc",
        "-l",
        selector,
        &format!("--timeout={seconds}s"),
    ]);
}

/// The process's resident memory now and at its peak (VmRSS, VmHWM), in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One namespace's user at their worst (issue 21), with only what a namespace's `edit`
/// role allows: 100 resources at the schema's largest, 50 Secrets of 1 MiB carrying our
/// label and owned by them, and 200 resources naming a region each.
/// The controller started among them peaks at no more than twice what it settled at
/// with the 20 good resources alone, never restarts, reads no foreign Secret's data,
/// and keeps the good resources Ready without a call.
#[tokio::test]
async fn a_hostile_tenant_costs_the_shared_controller_bounded_memory() {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::PostParams;
    use serde_json::json;

    let proxy = Proxy::new();
    // Credentials that live an hour: the good resources have no rotation due during the
    // test, however long a busy machine makes it.
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("hostile").await;
    let dir = test_dir(&ns.name);
    install_crd();
    let good: Vec<String> = (0..20)
        .map(|i| {
            cuc_manifest(&ns.name, &format!("good-{i}"), &pool)
                .replace("metadata:\n", "metadata:\n  labels: {role: good}\n")
        })
        .collect();
    kubectl_apply(&good.join("---\n"));
    let settled = controller(&ns.name, &dir.join("settled.log"), "info");
    wait_for(&ns.name, "Ready", "role=good", 90);
    let (idle, _) = memory_kib(settled.child.id());
    assert!(settled.terminate().success());
    let get_ids = proxy.pool_calls(&pool, "GetId").await;
    let get_creds = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;

    let cucs: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<cognito_unauth_controller::crd::CognitoUnauthCredential>(
            &(),
        ),
    );
    let uuid = |i: usize| format!("{i:08x}-0000-4000-8000-000000000000");
    let mut hostile: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            let mut spec =
                cognito_unauth_controller::crd::limits::largest(&format!("us-east-1:{}", uuid(i)));
            // A Secret name of its own, at the same length.
            let name = format!("large-{i}-");
            spec.secret_name = Some(format!("{name:n<253}"));
            json!({
                "apiVersion": "cognito.kubecred.io/v1alpha1",
                "kind": "CognitoUnauthCredential",
                "metadata": {"name": format!("large-{i}"), "labels": {"role": "hostile"}},
                "spec": spec,
            })
        })
        .collect();
    // 200 regions of the pattern's shape, none of them AWS's.
    hostile.extend((0..200).map(|i| {
        let region = format!(
            "zz-{}{}-{}",
            char::from(b'a' + (i / 26 % 26) as u8),
            char::from(b'a' + (i % 26) as u8),
            1 + i / 676
        );
        json!({
            "apiVersion": "cognito.kubecred.io/v1alpha1",
            "kind": "CognitoUnauthCredential",
            "metadata": {"name": format!("region-{i}"), "labels": {"role": "hostile"}},
            "spec": {"identityPoolId": format!("{region}:{}", uuid(i))},
        })
    }));
    let created: Vec<kube::api::DynamicObject> = futures::stream::iter(hostile)
        .map(|o| {
            let cucs = cucs.clone();
            async move {
                let o: kube::api::DynamicObject = serde_json::from_value(o).expect("object");
                cucs.create(&PostParams::default(), &o).await
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .expect("the schema admits the largest resources");
    // 50 Secrets of 1 MiB, labelled as ours, each owned by a large resource.
    let secrets = ns.api::<Secret>();
    let owners = created
        .iter()
        .filter(|o| {
            o.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("large-"))
        })
        .take(50);
    futures::stream::iter(owners)
        .map(|o| {
            let secrets = secrets.clone();
            let s: Secret = serde_json::from_value(json!({
                "metadata": {
                    "name": format!("planted-{}", o.metadata.name.as_deref().unwrap_or_default()),
                    "labels": {"app.kubernetes.io/managed-by": "cognito-unauth-controller"},
                    "ownerReferences": [{
                        "apiVersion": "cognito.kubecred.io/v1alpha1",
                        "kind": "CognitoUnauthCredential",
                        "name": o.metadata.name,
                        "uid": o.metadata.uid,
                        "controller": true,
                    }],
                },
                "data": {"blob": k8s_openapi::ByteString(vec![b'x'; 1 << 20])},
            }))
            .expect("secret");
            async move { secrets.create(&PostParams::default(), &s).await }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .expect("planted Secrets");

    let mut attacked = controller(&ns.name, &dir.join("attacked.log"), "info");
    wait_for(&ns.name, "Ready=False", "role=hostile", 300);
    wait_for(&ns.name, "Ready", "role=good", 30);
    let (now, peak) = memory_kib(attacked.child.id());
    assert!(
        attacked.child.try_wait().expect("wait").is_none(),
        "the controller exited"
    );
    let figures = format!(
        "| controller RSS | KiB |\n| --- | --- |\n\
         | settled, 20 good resources | {idle} |\n\
         | among 100 largest resources, 50 planted 1 MiB Secrets, 200 regions: now | {now} |\n\
         | the same: peak (VmHWM) | {peak} |\n\
         | budget (2 x settled) | {} |\n",
        2 * idle
    );
    eprintln!("{figures}");
    if std::env::var_os("CUC_WRITE_DOCS").is_some() {
        testbed_support::write_docs_section(
            "tenant-memory",
            "tests/binary.rs, make tenant-figures",
            &figures,
        );
    }
    assert!(
        peak <= 2 * idle,
        "peak {peak} KiB among the hostile resources, more than twice the settled {idle} KiB"
    );
    // The good resources cost no call after the restart.
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, get_ids);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        get_creds
    );
    assert!(attacked.terminate().success());
    ns.cleanup().await;
}

/// One namespace's burst does not hold back another's (issue 21): the controller on its
/// defaults watches every namespace (one work queue for all, as the chart's default
/// install runs; GetId paced at 95% of Cognito's default 25 a second). Namespace B holds 10
/// resources whose credentials live 60 s; just before their rotations come due, namespace
/// A creates 1,000 resources (42 s of GetIds), and B creates 10 more. Slots go round-robin between namespaces with work
/// waiting (`fair::Gate`) and only slot holders queue under the quota, so:
/// - each of B's due rotations (GetCredentialsForIdentity, not the contended GetId) waits
///   at most for one slot to free: bound slots / (0.95 * rate) plus 5 s for the calls and
///   writes themselves on a machine this busy;
/// - B's i-th new resource is served within 2i + slots turns of the GetId bucket: bound
///   (2 * 10 + slots) / (0.95 * rate) plus 5 s.
/// Without the gate, kube-runtime gave its workers to A's 200 first (they came due first)
/// and B's work waited for A's whole burst. Runs alone (testbed/tests.toml): a controller
/// of all namespaces would act on every other test's resources.
#[tokio::test]
async fn a_busy_namespace_leaves_the_others_their_share() {
    use cognito_unauth_controller::crd::CognitoUnauthCredential;
    use futures::{StreamExt, TryStreamExt};
    use jiff::Timestamp;
    use kube::api::PostParams;
    use testbed_support::eventually;

    // The controller's defaults (COGNITO_GET_ID_RATE, CONCURRENCY).
    const RATE: f64 = 25.0;
    const SLOTS: f64 = 8.0;
    const A_COUNT: usize = 1000;
    const B_COUNT: usize = 10;
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let short = proxy.realistic_pool(60).await;
    let a = TestNs::new("busy").await;
    let b = TestNs::new("fair").await;
    let dir = test_dir(&a.name);
    install_crd();
    let mut ctl = ControllerProcess::start(
        Path::new(BIN),
        &dir.join("controller.log"),
        &[
            ("WATCH_NAMESPACES", ""),
            ("LOG_LEVEL", "info"),
            ("LOG_FORMAT", "json"),
        ],
    );
    let create = |ns: &TestNs, prefix: &'static str, count: usize, pool: &str| {
        let api = ns.api::<CognitoUnauthCredential>();
        let pool = pool.to_string();
        async move {
            futures::stream::iter(0..count)
                .map(|i| {
                    let api = api.clone();
                    let o: CognitoUnauthCredential = serde_json::from_value(serde_json::json!({
                        "apiVersion": "cognito.kubecred.io/v1alpha1",
                        "kind": "CognitoUnauthCredential",
                        "metadata": {"name": format!("{prefix}-{i}"), "labels": {"side": prefix}},
                        "spec": {"identityPoolId": pool},
                    }))
                    .expect("resource");
                    async move { api.create(&PostParams::default(), &o).await }
                })
                .buffer_unordered(16)
                .try_collect::<Vec<_>>()
                .await
                .expect("created")
        }
    };
    let status_of = |o: &CognitoUnauthCredential| {
        let st = o.status.clone().unwrap_or_default();
        (
            st.last_rotation_time.map(|t| t.0),
            st.renewal_time.map(|t| t.0),
        )
    };
    let list = |ns: &TestNs, side: &'static str| {
        let api = ns.api::<CognitoUnauthCredential>();
        async move {
            api.list(&kube::api::ListParams::default().labels(&format!("side={side}")))
                .await
                .expect("list")
                .items
        }
    };
    // B's resources with short-lived credentials, issued.
    create(&b, "due", B_COUNT, &short).await;
    wait_for(&b.name, "Ready", "side=due", 60);
    let issued: Vec<(String, Timestamp, Timestamp)> = list(&b, "due")
        .await
        .iter()
        .map(|o| {
            let (rotated, renewal) = status_of(o);
            (
                o.metadata.name.clone().unwrap_or_default(),
                rotated.expect("issued"),
                renewal.expect("renewal"),
            )
        })
        .collect();
    let first_due = issued.iter().map(|(_, _, r)| *r).min().expect("10");
    // A's burst starts 3 s before the first of B's rotations comes due (a point in time,
    // not a condition: nothing to watch for).
    let until = first_due.duration_since(Timestamp::now()) - jiff::SignedDuration::from_secs(3);
    if until.is_positive() {
        tokio::time::sleep(until.unsigned_abs()).await;
    }
    let burst = Timestamp::now();
    create(&a, "a", A_COUNT, &pool).await;
    create(&b, "new", B_COUNT, &pool).await;
    wait_for(&b.name, "Ready", "side=new", 120);
    // Each of B's rotations: from when it was due to when it was done.
    let rotation_delays: Vec<f64> = eventually(Duration::from_secs(120), "B's rotations", || {
        let issued = issued.clone();
        let list = list(&b, "due");
        async move {
            let now = list.await;
            issued
                .iter()
                .map(|(name, first, due)| {
                    let o = now
                        .iter()
                        .find(|o| o.metadata.name.as_deref() == Some(name))?;
                    let rotated = status_of(o).0.filter(|t| t > first)?;
                    Some(rotated.duration_since(*due).as_secs_f64())
                })
                .collect::<Option<Vec<f64>>>()
        }
    })
    .await;
    let rotation_max = rotation_delays.iter().copied().fold(0.0, f64::max);
    // Each of B's new resources: from its creation to its Ready condition.
    let waited = |ns: &TestNs, side: &'static str| {
        let list = list(ns, side);
        async move {
            list.await
                .iter()
                .map(|o| {
                    let created = o.metadata.creation_timestamp.as_ref().expect("created").0;
                    let ready = o
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                        .expect("Ready")
                        .last_transition_time
                        .0;
                    ready.duration_since(created).as_secs_f64()
                })
                .fold(0.0, f64::max)
        }
    };
    let new_max = waited(&b, "new").await;
    wait_for(&a.name, "Ready", "side=a", 300);
    let a_max = waited(&a, "a").await;
    let get_ids = proxy.pool_calls(&pool, "GetId").await;
    let rotation_bound = SLOTS / (0.95 * RATE) + 5.0;
    let new_bound = (2.0 * B_COUNT as f64 + SLOTS) / (0.95 * RATE) + 5.0;
    let figures = format!(
        "| GetId quota | A's new resources | B's work during A's burst | B's longest wait | bound | A's last Ready after its creation |\n\
         | --- | --- | --- | --- | --- | --- |\n\
         | {RATE}/s | {A_COUNT} | {B_COUNT} rotations coming due | {rotation_max:.1} s after due | {rotation_bound:.1} s | {a_max:.0} s |\n\
         | {RATE}/s | {A_COUNT} | {B_COUNT} new resources (created after A's) | {new_max:.0} s to Ready | {new_bound:.1} s | |\n"
    );
    eprintln!("{figures}");
    assert!(
        ctl.child.try_wait().expect("wait").is_none(),
        "the controller exited (log: {})",
        dir.display()
    );
    assert_eq!(
        get_ids,
        (A_COUNT + B_COUNT) as u64,
        "one GetId per resource"
    );
    // The contention was real: A's burst outlasted B's waits several times over, and B's
    // rotations came due while it went on.
    assert!(
        a_max >= A_COUNT as f64 / RATE * 0.8,
        "A's resources were Ready within {a_max} s: the quota did not hold them"
    );
    let burst_end = burst + jiff::SignedDuration::from_secs_f64(A_COUNT as f64 / RATE * 0.8);
    assert!(
        issued
            .iter()
            .all(|(_, _, due)| *due >= burst && *due <= burst_end),
        "B's rotations were not all due during A's burst ({burst} .. {burst_end}): {issued:?}"
    );
    assert!(
        rotation_max <= rotation_bound,
        "B's rotations came up to {rotation_max} s late behind A's burst (fair share: {rotation_bound:.1} s)"
    );
    assert!(
        new_max <= new_bound,
        "B's new resources waited up to {new_max} s behind A's burst (fair share: {new_bound:.1} s)"
    );
    if std::env::var_os("CUC_WRITE_DOCS").is_some() {
        testbed_support::write_docs_section(
            "tenant-fairness",
            "tests/binary.rs, make tenant-figures",
            &figures,
        );
    }
    drop(ctl);
    a.cleanup().await;
    b.cleanup().await;
}
