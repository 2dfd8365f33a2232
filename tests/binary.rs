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

fn controller(ns: &str, log: &Path) -> ControllerProcess {
    ControllerProcess::start(
        Path::new(BIN),
        log,
        &[
            ("WATCH_NAMESPACES", ns),
            ("LOG_LEVEL", "debug"),
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
    let first = controller(&ns.name, &dir.join("controller.log"));
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
    let second = controller(&ns.name, &dir.join("controller2.log"));
    wait_ready(&ns.name, "app", 30);
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

/// Flow Basic through the real binary at debug level: Ready, a refusal, a rotation; the
/// OpenID tokens (credentials too: STS trades them for the role's) and the credentials
/// the proxy issued appear nowhere the controller writes.
#[tokio::test]
async fn binary_never_shows_the_basic_flows_token_or_credentials() {
    let proxy = Proxy::new();
    let (pool, role) = proxy.basic_pool(3600).await;
    let ns = TestNs::new("binary-basic").await;
    let dir = test_dir(&ns.name);
    install_crd();
    let ctl = controller(&ns.name, &dir.join("controller.log"));
    kubectl_apply(&format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\nmetadata: {{name: app, namespace: {}}}\nspec: {{identityPoolId: \"{pool}\", flow: Basic, roleArn: \"{role}\"}}\n",
        ns.name
    ));
    wait_ready(&ns.name, "app", 60);
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
    let resource = kubectl(&["-n", &ns.name, "get", "cuc", "app", "-o", "json"]);
    assert!(resource.contains("assumed-role/"), "{resource}");
    let tokens = proxy.open_id_tokens().await;
    assert!(!tokens.is_empty());
    let mut secrets: Vec<(&str, String)> = tokens.into_iter().map(|t| ("token", t)).collect();
    for c in proxy.issued().await {
        for k in ["AccessKeyId", "SecretKey", "SessionToken"] {
            secrets.push((k, c[k].as_str().unwrap().to_string()));
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
