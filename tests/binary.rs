//! The real binary, as `make run` and a Deployment run it: configured by the environment
//! (`AWS_ENDPOINT_URL_COGNITO_IDENTITY`, `KUBECONFIG`), watched with `kubectl wait`, its
//! Secret used by the real aws CLI and boto3, stopped by SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use testbed_support::{Proxy, TestNs, testbed};

fn controller(ns: &str, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_cognito-unauth-controller"))
        .envs(testbed().env())
        .env("WATCH_NAMESPACES", ns)
        .env("METRICS_ADDRESS", "127.0.0.1:0")
        .env("LOG_LEVEL", "debug")
        .env("LOG_FORMAT", "json")
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start controller")
}

fn run(cmd: &str, args: &[&str], extra: &[(&str, &str)]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .envs(testbed().env())
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sigterm_and_wait(mut child: Child) -> std::process::ExitStatus {
    run("kill", &["-TERM", &child.id().to_string()], &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "controller ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn binary_issues_credentials_that_real_aws_clients_accept() {
    let proxy = Proxy::new();
    let pool = proxy.create_pool(true).await;
    proxy
        .add_rule(json!({"pool": pool, "unique_credentials": true, "lifetime_seconds": 3600}))
        .await;
    let ns = TestNs::new("binary").await;
    let dir = std::env::temp_dir().join(format!("cuc-binary-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("controller.log");

    run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/crds/"),
        ],
        &[],
    );
    run(
        "kubectl",
        &[
            "wait",
            "--for=condition=Established",
            "crd/cognitounauthcredentials.cognito.kubecred.io",
            "--timeout=30s",
        ],
        &[],
    );
    let child = controller(&ns.name, &log);
    let manifest = dir.join("cuc.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\nmetadata:\n  name: app\n  namespace: {}\nspec:\n  identityPoolId: {pool}\n",
            ns.name
        ),
    )
    .unwrap();
    run("kubectl", &["apply", "-f", manifest.to_str().unwrap()], &[]);
    run(
        "kubectl",
        &[
            "-n",
            &ns.name,
            "wait",
            "--for=condition=Ready",
            "cuc/app",
            "--timeout=60s",
        ],
        &[],
    );
    let cols = run(
        "kubectl",
        &["-n", &ns.name, "get", "cuc", "app", "--no-headers"],
        &[],
    );
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
    let aws = testbed().venv.join("bin/aws");
    let who = run(
        aws.to_str().unwrap(),
        &["sts", "get-caller-identity", "--output", "json"],
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", creds_file.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", &sts),
        ],
    );
    assert!(who.contains("Arn"), "{who}");
    let py = testbed().venv.join("bin/python");
    let who = run(
        py.to_str().unwrap(),
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

    // SIGTERM: exits 0. A restart with valid credentials makes no Cognito call.
    assert!(sigterm_and_wait(child).success());
    let calls = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    let child = controller(&ns.name, &dir.join("controller2.log"));
    run(
        "kubectl",
        &[
            "-n",
            &ns.name,
            "wait",
            "--for=condition=Ready",
            "cuc/app",
            "--timeout=30s",
        ],
        &[],
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // a window in which nothing may happen
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    assert!(sigterm_and_wait(child).success());

    // Debug logs never carry the credentials the proxy issued.
    let logs = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.join("controller2.log")).unwrap();
    assert!(logs.contains("credentials rotated"), "debug log is empty?");
    for c in proxy.issued().await {
        for k in ["AccessKeyId", "SecretKey", "SessionToken"] {
            let v = c[k].as_str().unwrap();
            assert!(!logs.contains(v), "{k} leaked into the logs");
        }
    }
    ns.cleanup().await;
}
