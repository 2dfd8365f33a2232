//! The recipes in examples/ as real pods on the test bed's node, through 3 rotations, with
//! the kubelet's own Secret-volume refresh (default settings: nothing shortened).
//!
//! One test runs the three recipes side by side, each with its own pool and resource:
//! credentials live `LIFETIME` s and `renewBefore` is its minimum (5m), so a rotation comes
//! every 100-120 s (the jitter takes up to 5% of the lifetime) and the previous credentials
//! stay valid 300 s after it. Both are longer than the kubelet's propagation delay
//! (docs/usage.md: up to ~1.5 min, `testbed/propagation.sh`): a pod can see every
//! rotation, and none of its calls has to use expired credentials.
//! The proxy's STS record (`Proxy::sts_calls`: key used, whether it was valid, user agent)
//! says what each workload signed with.
//!
//! - credential-process.yaml: the aws CLI (a new process every few seconds) and boto3 (one
//!   client for the pod's whole life) in the same pod both sign with every credential set
//!   the controller wrote, and no call fails;
//! - env-vars-restart.yaml: the Deployment is rolled at each rotation and the new pods sign
//!   with the new credentials; no call fails;
//! - credentials-file.yaml: its rolled pods follow the rotations, and the documented limits
//!   hold: a long-running boto3 client (a pod that is not rolled) keeps signing with the
//!   credentials it read at start although the kubelet updated the file under it, and a
//!   `subPath` mount of the same file never changes.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};
use testbed_support::{
    BOTO3_LOOP, ControllerProcess, LOCAL_AWS_CLI, Proxy, TestNs, apply_docs, example_in_pods,
    failed, install_crd, keys_used, kubectl, test_dir, testbed, ua_is_boto3, ua_is_cli, wait_ready,
};

const BIN: &str = env!("CARGO_BIN_EXE_cognito-unauth-controller");
const LIFETIME: u64 = 420;
const ROTATIONS: usize = 3;

/// Reads the file the kubelet updates and its `subPath` copy, and signs with one client
/// built at start from the shared credentials file.
const STALE_LOOP: &str = r#"
import time, configparser, boto3
def key(path):
    cp = configparser.ConfigParser()
    cp.read(path)
    return cp["default"]["aws_access_key_id"]
c = boto3.client("sts")
while True:
    ok = "ok"
    try:
        c.get_caller_identity()
    except Exception as e:
        ok = "FAILED %s" % e
    print("file=%s subpath=%s call=%s" % (key("/var/run/aws/credentials"), key("/sub/credentials"), ok), flush=True)
    time.sleep(3)
"#;

#[tokio::test]
async fn recipes_run_as_pods_through_three_rotations() {
    let proxy = Proxy::new();
    let ns = TestNs::new("node-wl").await;
    install_crd();
    let dir = test_dir(&ns.name);
    let _controller = ControllerProcess::start(
        Path::new(BIN),
        &dir.join("controller.log"),
        &[("WATCH_NAMESPACES", &ns.name)],
    );
    let endpoint = testbed().in_cluster_endpoint.clone().expect("endpoint");
    let recipes = [
        ("credential-process.yaml", "process-app", "process-app-aws"),
        ("env-vars-restart.yaml", "env-app", "env-app-aws"),
        ("credentials-file.yaml", "file-app", "file-app-aws"),
    ];
    let mut pools = Vec::new();
    for (file, _, _) in recipes {
        let pool = proxy.realistic_pool(LIFETIME).await;
        let mut docs = example_in_pods(file, &pool, "5m");
        if file == "credential-process.yaml" {
            // boto3 beside the CLI: one client for the pod's life.
            let spec = &mut docs
                .iter_mut()
                .find(|d| d["kind"] == "Deployment")
                .expect("Deployment")["spec"]["template"]["spec"];
            let mut boto = spec["containers"][0].clone();
            boto["name"] = json!("boto3");
            boto["command"] = json!(["python3", "-u", "-c"]);
            boto["args"] = json!([BOTO3_LOOP]);
            spec["containers"].as_array_mut().unwrap().push(boto);
        }
        apply_docs(&ns.name, &docs);
        pools.push(pool);
    }
    // The credentials file's limits: a pod that is not rolled, with one boto3 client, and
    // a subPath mount of the same file.
    apply_docs(
        &ns.name,
        &[json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "file-longrun"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                    "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "app", "image": LOCAL_AWS_CLI, "imagePullPolicy": "Never",
                    "command": ["python3", "-u", "-c", STALE_LOOP],
                    "env": [
                        {"name": "AWS_SHARED_CREDENTIALS_FILE", "value": "/var/run/aws/credentials"},
                        {"name": "AWS_DEFAULT_REGION", "value": testbed().region},
                        {"name": "AWS_ENDPOINT_URL_STS", "value": endpoint},
                    ],
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [
                        {"name": "aws", "mountPath": "/var/run/aws", "readOnly": true},
                        {"name": "aws", "mountPath": "/sub/credentials", "subPath": "credentials", "readOnly": true},
                    ],
                }],
                "volumes": [{"name": "aws", "secret": {"secretName": "file-app-aws", "defaultMode": 0o440}}],
            },
        })],
    );
    for (_, cuc, _) in recipes {
        wait_ready(&ns.name, cuc, 60);
    }
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=condition=Ready",
        "pod",
        "--all",
        "--timeout=120s",
    ]);

    // Follow each Secret's key until ROTATIONS rotations, and until the workloads signed
    // with the last one (that takes the kubelet's propagation for the mounted recipes).
    let secrets: Api<Secret> = ns.api();
    let mut written: Vec<Vec<String>> = vec![Vec::new(); recipes.len()];
    let start = Instant::now();
    let deadline = Duration::from_secs(ROTATIONS as u64 * 125 + 150);
    loop {
        for (i, (_, _, secret)) in recipes.iter().enumerate() {
            let s = secrets.get(secret).await.expect("Secret");
            let k = String::from_utf8(s.data.expect("data")["AWS_ACCESS_KEY_ID"].0.clone())
                .expect("key");
            if written[i].last() != Some(&k) {
                written[i].push(k);
            }
        }
        let rotated = written.iter().all(|w| w.len() > ROTATIONS);
        if rotated {
            let process = proxy.sts_calls(&pools[0]).await;
            let env = proxy.sts_calls(&pools[1]).await;
            let file = proxy.sts_calls(&pools[2]).await;
            // Signed with the last rotation's key or a later one.
            let late = |i: usize, used: BTreeSet<String>| {
                written[i][ROTATIONS..].iter().any(|k| used.contains(k))
            };
            if late(0, keys_used(&process, ua_is_cli))
                && late(0, keys_used(&process, ua_is_boto3))
                && late(1, keys_used(&env, ua_is_cli))
                && late(2, keys_used(&file, ua_is_cli))
            {
                break;
            }
        }
        assert!(
            start.elapsed() < deadline,
            "after {:?}: keys written {written:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let took = start.elapsed();
    let all = |i: usize| -> BTreeSet<String> { written[i][..=ROTATIONS].iter().cloned().collect() };

    // credential_process: both clients signed with every credential set; nothing failed.
    let process = proxy.sts_calls(&pools[0]).await;
    assert!(failed(&process).is_empty(), "{:#?}", failed(&process));
    for (what, f) in [
        ("aws CLI", ua_is_cli as fn(&Value) -> bool),
        ("boto3", ua_is_boto3),
    ] {
        let used = keys_used(&process, f);
        assert!(
            all(0).is_subset(&used),
            "credential_process, {what}: signed with {used:?}, written {:?}",
            written[0]
        );
    }
    // Environment variables: rolled at each rotation, and every set used by new pods.
    let env = proxy.sts_calls(&pools[1]).await;
    assert!(failed(&env).is_empty(), "{:#?}", failed(&env));
    assert!(all(1).is_subset(&keys_used(&env, ua_is_cli)));
    let rs = kubectl(&[
        "-n",
        &ns.name,
        "get",
        "rs",
        "-l",
        "app=env-app",
        "-o",
        "name",
    ]);
    assert!(
        rs.lines().count() > ROTATIONS,
        "env-app rolled fewer than {ROTATIONS} times: {rs}"
    );
    // The credentials file: the rolled pods follow; the long-running client does not,
    // and neither does the subPath mount.
    let file = proxy.sts_calls(&pools[2]).await;
    assert!(all(2).is_subset(&keys_used(&file, ua_is_cli)));
    let stale = keys_used(&file, ua_is_boto3);
    assert_eq!(
        stale,
        BTreeSet::from([written[2][0].clone()]),
        "the long-running boto3 client kept its first credentials"
    );
    let log = kubectl(&["-n", &ns.name, "logs", "file-longrun"]);
    let on_file: BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("file=")?.split_whitespace().next())
        .collect();
    let on_subpath: BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.strip_prefix("subpath="))
        .collect();
    assert!(
        on_file.len() > 1,
        "the kubelet updated the mounted file: {on_file:?}"
    );
    assert_eq!(
        on_subpath,
        BTreeSet::from([written[2][0].as_str()]),
        "a subPath mount is never updated"
    );
    for d in ["process-app", "env-app", "file-app"] {
        let logs = kubectl(&[
            "-n",
            &ns.name,
            "logs",
            &format!("deployment/{d}"),
            "--all-containers",
        ]);
        assert!(!logs.contains("FAILED"), "{d}: {logs}");
    }
    println!(
        "node workloads: {ROTATIONS} rotations of {LIFETIME} s credentials followed in {:.0} s; \
         STS calls: credential_process {} (0 failed), env vars {} (0 failed), credentials file {} \
         (the long-running client's: {} with its first key); the file showed {} keys, the subPath 1",
        took.as_secs_f64(),
        process.len(),
        env.len(),
        file.len(),
        file.iter().filter(|c| ua_is_boto3(c)).count(),
        on_file.len()
    );
    ns.cleanup().await;
}
