//! Faults on the test bed's node, rows of the fault matrix (docs/reliability.md): the
//! controller's pod killed mid-rotation, then the kubelet restarted, then containerd
//! restarted, while a workload (the credential_process recipe's boto3 client, one client
//! for its whole life) calls STS every second with what the mounted Secret holds.
//!
//! A test binary of its own (cargo runs test binaries one after another) because it
//! restarts parts of the node every other pod of the bed runs on. `make reliability` runs
//! it; `make test` skips it (about 6 minutes: it waits for real rotations and the kubelet's
//! real Secret refresh).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use testbed_support::{
    Proxy, TestNs, helm_install, helm_ok, kubectl, kubectl_apply, rand_suffix, record_fault, root,
    test_dir, testbed, wait_ready,
};

/// Credentials live 7 minutes and renewBefore is 5m: a rotation every 100-120 s, and the
/// previous credentials stay valid 5 minutes after it; both longer than the kubelet's
/// refresh (up to ~1.5 min, docs/usage.md), so the reader sees every rotation.
const LIFETIME: u64 = 420;
const LEASE_SECONDS: u64 = 15;

const READER: &str = r#"
import json, time, boto3
c = boto3.client("sts")
while True:
    try:
        key = json.load(open("/var/run/secrets/cognito/credential-process.json"))["AccessKeyId"]
    except Exception as e:
        key = "unreadable:%s" % e
    try:
        c.get_caller_identity()
        ok = "ok"
    except Exception as e:
        ok = "FAILED %s" % e
    print("%.3f file=%s call=%s" % (time.time(), key, ok), flush=True)
    time.sleep(1)
"#;

fn secret_key(s: &Secret) -> String {
    String::from_utf8(
        s.data.as_ref().expect("data")["AWS_ACCESS_KEY_ID"]
            .0
            .clone(),
    )
    .expect("key")
}

/// Container ids and restart counts of every pod in `ns`, by pod name.
async fn containers(api: &Api<Pod>) -> Vec<(String, String, i32)> {
    let mut v: Vec<_> = api
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .flat_map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            p.status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .into_iter()
                .map(move |c| {
                    (
                        name.clone(),
                        c.container_id.unwrap_or_default(),
                        c.restart_count,
                    )
                })
        })
        .collect();
    v.sort();
    v
}

/// Waits (polling every `every`, at most `limit`) until `f` gives `Some`.
async fn poll<T, F, Fut>(limit: Duration, every: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(every).await;
    }
}

/// When the reader first saw `key` in its mounted file (its own clock: the same machine).
fn reader_saw(log: &str, key: &str) -> Option<f64> {
    log.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let t: f64 = it.next()?.parse().ok()?;
        (it.next()? == format!("file={key}")).then_some(t)
    })
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn restart_node(part: &str) -> f64 {
    let t = Instant::now();
    let ok = std::process::Command::new(root().join("testbed/restart-node.sh"))
        .arg(part)
        .env("DOWN_SECONDS", "5")
        .status()
        .expect("restart-node.sh");
    assert!(ok.success(), "restarting {part} failed");
    t.elapsed().as_secs_f64()
}

#[tokio::test]
#[ignore = "restarts the node under every pod: make reliability runs it alone"]
async fn node_faults_controller_pod_killed_kubelet_and_containerd_restarted() {
    let bed = testbed();
    let endpoint = bed.in_cluster_endpoint.clone().expect("a node");
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(LIFETIME).await;
    let rel = TestNs::new("node-fault-rel").await;
    let w = TestNs::new("node-fault").await;
    kubectl(&[
        "label",
        "namespace",
        &rel.name,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let release = format!("f{}", rand_suffix());
    let dir = test_dir(&rel.name);
    let values = dir.join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "image: {{repository: localhost/cognito-unauth-controller, tag: dev, pullPolicy: Never}}\n\
             watchNamespaces: [{}]\n\
             extraEnv:\n\
             - {{name: AWS_ENDPOINT_URL_COGNITO_IDENTITY, value: \"{endpoint}\"}}\n",
            w.name
        ),
    )
    .expect("values");
    helm_install(
        &release,
        &rel.name,
        &values.display().to_string(),
        &["--take-ownership"],
    );
    kubectl_apply(&format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\n\
         metadata: {{name: app, namespace: {}}}\nspec:\n  identityPoolId: {pool}\n  renewBefore: 5m\n",
        w.name
    ));
    wait_ready(&w.name, "app", 60);
    let reader: Value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reader", "namespace": w.name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
            "containers": [{
                "name": "reader", "image": "localhost/aws-client:dev", "imagePullPolicy": "Never",
                "command": ["python3", "-u", "-c", READER],
                "env": [
                    {"name": "AWS_CONFIG_FILE", "value": "/var/run/secrets/cognito/config"},
                    {"name": "AWS_ENDPOINT_URL_STS", "value": endpoint},
                    {"name": "HOME", "value": "/tmp"},
                ],
                "volumeMounts": [{"name": "aws", "mountPath": "/var/run/secrets/cognito", "readOnly": true}],
            }],
            "volumes": [{"name": "aws", "secret": {"secretName": "app", "defaultMode": 0o440}}],
        },
    });
    kubectl_apply(&serde_yaml::to_string(&reader).expect("yaml"));
    kubectl(&[
        "-n",
        &w.name,
        "wait",
        "--for=condition=Ready",
        "pod/reader",
        "--timeout=120s",
    ]);
    let secrets: Api<Secret> = w.api();
    let rel_pods: Api<Pod> = rel.api();
    let w_pods: Api<Pod> = w.api();
    let calls = |op: &'static str| {
        let proxy = proxy.clone();
        let pool = pool.clone();
        async move { proxy.pool_calls(&pool, op).await }
    };

    // 1. The controller's process SIGKILLed (containerd kills the task: no SIGTERM, no
    //    Lease release) while its GetCredentialsForIdentity for a rotation is in flight.
    let first_key = secret_key(&secrets.get("app").await.expect("Secret"));
    proxy
        .add_rule(json!({"pool": pool, "operation": "GetCredentialsForIdentity", "delay_ms": 5000, "times": 1}))
        .await;
    poll(
        Duration::from_secs(180),
        Duration::from_millis(100),
        "a rotation to start",
        || async { (calls("GetCredentialsForIdentity").await >= 2).then_some(()) },
    )
    .await;
    let pod = rel_pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("pods")
        .items
        .into_iter()
        .next()
        .expect("the controller pod");
    let cid = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].container_id.clone())
        .expect("container id");
    let cid = cid.trim_start_matches("containerd://").to_string();
    let killed = Instant::now();
    testbed_support::node_sh(&format!("ctr_node tasks kill -s SIGKILL {cid}"));
    let second_key = poll(
        Duration::from_secs(90),
        Duration::from_millis(200),
        "the rotation finished by the restarted controller",
        || async {
            let k = secret_key(&secrets.get("app").await.ok()?);
            (k != first_key).then_some(k)
        },
    )
    .await;
    let finished = killed.elapsed().as_secs_f64();
    let (get_id, get_creds) = (
        calls("GetId").await,
        calls("GetCredentialsForIdentity").await,
    );
    assert_eq!(get_id, 1, "the identity was kept");
    assert_eq!(get_creds, 3, "initial, the lost call, the redone one");
    let restarts = containers(&rel_pods).await;
    assert!(
        restarts.iter().any(|(_, _, n)| *n >= 1),
        "the kubelet restarted the container: {restarts:?}"
    );
    let sts = proxy.sts_calls(&pool).await;
    assert!(
        sts.iter().all(|c| c["outcome"] == "ok"),
        "a workload call failed"
    );
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "node-controller-pod-killed",
        "The controller's container SIGKILLed on the node (chart release, 1 replica) with a rotation's GetCredentialsForIdentity in flight",
        "the kubelet restarts it; it waits out the Lease, finishes the rotation once with the same identity; a pod reading the mounted Secret through credential_process has no failed call",
        &format!(
            "rotation finished {finished:.1}s after the kill (lease {LEASE_SECONDS} s); 1 GetId; 3 GetCredentialsForIdentity (initial, lost, redone); {} workload STS calls, 0 failed",
            sts.len()
        ),
    );

    // 2-3. The kubelet, then containerd, restarted (5 s down each). Nothing running stops,
    //    and the next rotation still reaches the pod's file.
    let before = containers(&w_pods).await;
    let before_ctl = containers(&rel_pods).await;
    let kubelet_s = restart_node("kubelet");
    let containerd_s = restart_node("containerd");
    assert_eq!(
        containers(&w_pods).await,
        before,
        "a workload container was restarted"
    );
    assert_eq!(
        containers(&rel_pods).await,
        before_ctl,
        "the controller was restarted"
    );
    let third_key = poll(
        Duration::from_secs(180),
        Duration::from_secs(1),
        "a rotation after the restarts",
        || async {
            let k = secret_key(&secrets.get("app").await.ok()?);
            (k != second_key).then_some(k)
        },
    )
    .await;
    let written = now();
    let seen = poll(
        Duration::from_secs(180),
        Duration::from_secs(2),
        "the reader to see the new key",
        || async {
            let log = kubectl(&["-n", &w.name, "logs", "reader"]);
            reader_saw(&log, &third_key)
        },
    )
    .await;
    let log = kubectl(&["-n", &w.name, "logs", "reader"]);
    assert!(!log.contains("FAILED"), "the reader failed:\n{log}");
    assert!(
        !log.contains("unreadable"),
        "the reader could not read its file:\n{log}"
    );
    let sts = proxy.sts_calls(&pool).await;
    assert!(
        sts.iter().all(|c| c["outcome"] == "ok"),
        "a workload call failed"
    );
    let used: std::collections::BTreeSet<&str> = sts
        .iter()
        .filter_map(|c| c["access_key_id"].as_str())
        .collect();
    assert!(
        used.contains(third_key.as_str()),
        "the reader signs with the rotated key"
    );
    let delay = seen - written;
    for (id, part, took) in [
        ("node-kubelet-restarted", "kubelet", kubelet_s),
        ("node-containerd-restarted", "containerd", containerd_s),
    ] {
        record_fault(
            env!("CARGO_TARGET_TMPDIR"),
            id,
            &format!(
                "The node's {part} stopped (SIGTERM) for 5 s and started again, with the controller and a workload running on the node"
            ),
            "no container restarts (same container ids and counts); the workload reads valid credentials throughout (no failed STS call, the file always readable); the next rotation reaches the pod's file and is used",
            &format!(
                "{part} back and the node Ready in {took:.1}s; the next rotation was in the pod's file {delay:.0}s after the Secret changed (polled every 1-2 s; kubelet then containerd restarted back to back); {} workload STS calls, 0 failed",
                sts.len()
            ),
        );
    }
    helm_ok(&["uninstall", &release, "--namespace", &rel.name, "--wait"]);
    w.cleanup().await;
    rel.cleanup().await;
}
