//! Test support: the real control plane and the Cognito emulator behind the proxy.
//!
//! `testbed()` finds a running test bed (from the environment `make test` exports, or
//! from `.local/env`), and starts one with `testbed/up.sh` when there is none. Each test
//! gets its own namespace (`TestNs`) so tests run in parallel, its own `kube::Client`,
//! its own identity pools, and the proxy's control API (`Proxy`) to program faults and
//! read exact call counts per pool. The proxy also answers STS `GetCallerIdentity`
//! (`Proxy::sts_calls`, `aws_cli`, `sts_client`), and `SecretMirror` projects a Secret into
//! a directory the way the kubelet does for a pod's volume.

pub mod inproc;
pub mod mirror;

pub use mirror::{MirrorError, SecretData, SecretMirror};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

/// Where the test bed is.
#[derive(Debug, Clone)]
pub struct TestBed {
    pub kubeconfig: PathBuf,
    /// The proxy (what the controller talks to): `AWS_ENDPOINT_URL_COGNITO_IDENTITY`.
    pub cognito_endpoint: String,
    /// Where STS is answered (the same proxy): `AWS_ENDPOINT_URL_STS`.
    pub sts_endpoint: String,
    /// moto itself.
    pub emulator_url: String,
    pub region: String,
    pub demo_pool: String,
    /// Directory with kubectl, kube-apiserver, kube-controller-manager.
    pub bin: PathBuf,
    /// The project venv (aws CLI, boto3, moto).
    pub venv: PathBuf,
    /// The proxy as pods on the node reach it (`IN_CLUSTER_AWS_ENDPOINT_URL`).
    pub in_cluster_endpoint: Option<String>,
}

impl TestBed {
    /// The environment for a child process (controller, kubectl, aws) to reach the test bed.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = format!(
            "{}:{}:{}",
            self.bin.display(),
            self.venv.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        vec![
            ("KUBECONFIG".into(), self.kubeconfig.display().to_string()),
            (
                "AWS_ENDPOINT_URL_COGNITO_IDENTITY".into(),
                self.cognito_endpoint.clone(),
            ),
            ("AWS_ENDPOINT_URL_STS".into(), self.sts_endpoint.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_DEFAULT_REGION".into(), self.region.clone()),
            ("PATH".into(), path),
        ]
    }
}

/// The project root (this crate lives in `tests/support`).
pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn parse_env_file(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect(),
    )
}

fn from_map(m: &BTreeMap<String, String>) -> Option<TestBed> {
    let cognito_endpoint = m.get("AWS_ENDPOINT_URL_COGNITO_IDENTITY")?.clone();
    Some(TestBed {
        kubeconfig: PathBuf::from(m.get("KUBECONFIG")?),
        // A test bed started before the proxy spoke STS has no such line: same proxy.
        sts_endpoint: m
            .get("AWS_ENDPOINT_URL_STS")
            .cloned()
            .unwrap_or_else(|| cognito_endpoint.clone()),
        cognito_endpoint,
        emulator_url: m.get("COGNITO_EMULATOR_URL")?.clone(),
        region: m.get("AWS_REGION")?.clone(),
        demo_pool: m.get("DEMO_IDENTITY_POOL_ID")?.clone(),
        bin: PathBuf::from(m.get("TESTBED_BIN")?),
        venv: PathBuf::from(m.get("TESTBED_VENV")?),
        in_cluster_endpoint: m.get("IN_CLUSTER_AWS_ENDPOINT_URL").cloned(),
    })
}

/// The running test bed; starts one (once per test binary) when none is up.
pub fn testbed() -> &'static TestBed {
    static BED: OnceLock<TestBed> = OnceLock::new();
    BED.get_or_init(|| {
        let env_file = root().join(".local/env");
        let up = std::process::Command::new(root().join("testbed/up.sh"))
            .status()
            .expect("run testbed/up.sh");
        assert!(up.success(), "testbed/up.sh failed");
        let vars = parse_env_file(&env_file).expect("read .local/env");
        from_map(&vars).expect(".local/env lacks a variable")
    })
}

/// The helm binary, built from the Go module proxy by the test bed (once).
pub fn helm() -> &'static PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg("source testbed/lib.sh >/dev/null && ensure_helm >&2 && helm_bin_dir")
            .current_dir(root())
            .output()
            .expect("run testbed/lib.sh");
        assert!(
            out.status.success(),
            "building helm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("helm")
    })
}

/// Runs the test bed's helm against it (its own cache and config dirs), whatever its
/// outcome: for cleanup that must not panic in a panic.
pub fn helm_try(args: &[&str]) -> std::process::Output {
    let tmp = std::env::temp_dir().join("cuc-helm");
    std::process::Command::new(helm())
        .args(args)
        .envs(testbed().env())
        .env("HELM_CACHE_HOME", tmp.join("cache"))
        .env("HELM_CONFIG_HOME", tmp.join("config"))
        .env("HELM_DATA_HOME", tmp.join("data"))
        .output()
        .expect("run helm")
}

/// Runs the test bed's helm against it (its own cache and config dirs); panics with its
/// output when it fails, else returns its stdout.
pub fn helm_ok(args: &[&str]) -> String {
    let out = helm_try(args);
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kubeconfig file that acts as `user` (impersonation by the admin), for RBAC tests.
pub fn impersonating_kubeconfig(user: &str, groups: &[&str], path: &Path) {
    let admin = std::fs::read_to_string(&testbed().kubeconfig).expect("admin kubeconfig");
    let mut extra = format!("    as: {user}\n    as-groups:\n");
    for g in groups {
        extra.push_str(&format!("    - {g}\n"));
    }
    let out = admin.replacen("  user:\n", &format!("  user:\n{extra}"), 1);
    assert_ne!(out, admin, "unexpected kubeconfig layout");
    std::fs::write(path, out).expect("write kubeconfig");
}

/// A kube client from a kubeconfig file.
pub async fn client_from(path: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(cfg).expect("client")
}

/// A kube client for the admin identity of the test bed.
pub async fn client() -> kube::Client {
    let kc = Kubeconfig::read_from(&testbed().kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(cfg).expect("client")
}

/// A namespace of the test's own, deleted by `cleanup()`.
pub struct TestNs {
    pub name: String,
    pub client: kube::Client,
}

impl TestNs {
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let name = format!("{prefix}-{}", rand_suffix());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"cognito-unauth-controller.test": "true"}}
        }))
        .expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        Self { name, client }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

pub fn rand_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// The proxy's control API.
#[derive(Clone)]
pub struct Proxy {
    base: String,
    http: reqwest::Client,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Proxy {
    pub fn new() -> Self {
        Self {
            base: format!("{}/_proxy", testbed().cognito_endpoint),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("proxy control call");
        let status = resp.status();
        let v: Value = resp.json().await.expect("proxy JSON");
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// Creates an identity pool on moto; returns its id.
    pub async fn create_pool(&self, guest: bool) -> String {
        let region = &testbed().region;
        let v = self
            .call(
                reqwest::Method::POST,
                "/pools",
                Some(json!({"name": format!("t_{}", rand_suffix()), "region": region, "guest": guest})),
            )
            .await;
        v["IdentityPoolId"].as_str().expect("pool id").to_string()
    }

    /// A guest-enabled pool of the caller's own whose credentials are unique per call and
    /// live `lifetime_seconds`, with Cognito's semantics (unknown pool, guest off) on.
    pub async fn realistic_pool(&self, lifetime_seconds: u64) -> String {
        let pool = self.create_pool(true).await;
        self.add_rule(json!({
            "pool": pool,
            "unique_credentials": true,
            "lifetime_seconds": lifetime_seconds,
            "semantics": true,
        }))
        .await;
        pool
    }

    /// A guest-enabled pool that allows the basic flow (AllowClassicFlow), with Cognito's
    /// semantics on, and a role of its own that trusts the pool's unauthenticated
    /// identities with a MaxSessionDuration of `max_session_seconds`. Returns the pool
    /// and the role's ARN.
    pub async fn basic_pool(&self, max_session_seconds: u64) -> (String, String) {
        let region = &testbed().region;
        let v = self
            .call(
                reqwest::Method::POST,
                "/pools",
                Some(json!({"name": format!("b_{}", rand_suffix()), "region": region, "guest": true, "classic": true})),
            )
            .await;
        let pool = v["IdentityPoolId"].as_str().expect("pool id").to_string();
        self.add_rule(json!({"pool": pool, "semantics": true}))
            .await;
        let role = format!(
            "arn:aws:iam::123456789012:role/guest-full-{}",
            rand_suffix()
        );
        self.put_role(&role, &[&pool], max_session_seconds).await;
        (pool, role)
    }

    /// Adds or replaces the IAM role `arn` for AssumeRoleWithWebIdentity: trusted by the
    /// unauthenticated identities of `trusted_pools`, at most `max_session_seconds`.
    pub async fn put_role(&self, arn: &str, trusted_pools: &[&str], max_session_seconds: u64) {
        self.call(
            reqwest::Method::POST,
            "/roles",
            Some(json!({
                "arn": arn,
                "trusted_pools": trusted_pools,
                "amr": "unauthenticated",
                "max_session_seconds": max_session_seconds,
            })),
        )
        .await;
    }

    /// Turns the basic flow (AllowClassicFlow) of `pool` on or off.
    pub async fn set_classic(&self, pool: &str, classic: bool) {
        self.call(
            reqwest::Method::PUT,
            &format!("/pools/{pool}"),
            Some(json!({"classic": classic})),
        )
        .await;
    }

    /// Every OpenID token GetOpenIdToken handed out (for the no-leak checks).
    pub async fn open_id_tokens(&self) -> Vec<String> {
        let v = self.call(reqwest::Method::GET, "/issued", None).await;
        v["open_id_tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn set_guest(&self, pool: &str, guest: bool) {
        self.call(
            reqwest::Method::PUT,
            &format!("/pools/{pool}"),
            Some(json!({"guest": guest})),
        )
        .await;
    }

    pub async fn delete_pool(&self, pool: &str) {
        self.call(reqwest::Method::DELETE, &format!("/pools/{pool}"), None)
            .await;
    }

    pub async fn delete_identity(&self, identity: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/identities/{identity}"),
            None,
        )
        .await;
    }

    /// Adds a rule (see testbed/cognito/README.md); returns its id.
    pub async fn add_rule(&self, rule: Value) -> u64 {
        let v = self.call(reqwest::Method::POST, "/rules", Some(rule)).await;
        v["id"].as_u64().expect("rule id")
    }

    pub async fn delete_rule(&self, id: u64) {
        self.call(reqwest::Method::DELETE, &format!("/rules/{id}"), None)
            .await;
    }

    /// Calls the proxy received for `pool`, by operation.
    pub async fn pool_calls(&self, pool: &str, operation: &str) -> u64 {
        let v = self.call(reqwest::Method::GET, "/calls", None).await;
        v["pools"][pool][operation].as_u64().unwrap_or(0)
    }

    /// Every credential the proxy handed out (for the no-leak checks).
    pub async fn issued(&self) -> Vec<Value> {
        let v = self.call(reqwest::Method::GET, "/issued", None).await;
        v["credentials"].as_array().cloned().unwrap_or_default()
    }

    /// The unauthenticated role of a pool the proxy created (`Roles.unauthenticated`).
    pub async fn unauth_role(&self, pool: &str) -> String {
        let v = self
            .call(reqwest::Method::GET, &format!("/pools/{pool}"), None)
            .await;
        v["Roles"]["unauthenticated"]
            .as_str()
            .expect("the pool has an unauthenticated role")
            .to_string()
    }

    /// The STS calls made with credentials of `pool`, oldest first: `time`, `action`,
    /// `access_key_id`, `identity_id`, `pool`, `class` (current, previous, expired,
    /// unknown, bad_token, bad_signature), `expires_at`, `user_agent`, `outcome`.
    pub async fn sts_calls(&self, pool: &str) -> Vec<Value> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/sts-calls?pool={pool}"),
                None,
            )
            .await;
        v["calls"].as_array().cloned().unwrap_or_default()
    }

    /// Forgets the STS calls recorded for `pool` (the proxy keeps knowing its credentials).
    pub async fn clear_sts_calls(&self, pool: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/sts-calls?pool={pool}"),
            None,
        )
        .await;
    }
}

/// A credential set Cognito handed out. `Debug` shows the key id and expiry only.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Expiration, seconds since the epoch.
    pub expiration: i64,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    /// From GetCredentialsForIdentity's answer; panics when a part is missing.
    pub fn from_cognito(c: aws_sdk_cognitoidentity::types::Credentials) -> Self {
        Self {
            access_key_id: c.access_key_id.expect("AccessKeyId"),
            secret_access_key: c.secret_key.expect("SecretKey"),
            session_token: c.session_token.expect("SessionToken"),
            expiration: c.expiration.expect("Expiration").secs(),
        }
    }

    /// The variables the AWS SDKs and the aws CLI read credentials from.
    pub fn env(&self) -> [(&'static str, &str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", &self.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_access_key),
            ("AWS_SESSION_TOKEN", &self.session_token),
        ]
    }
}

/// Runs the venv's aws CLI against the test bed with `creds` in its environment and no
/// config or credentials files. Returns the output whatever the exit status.
pub fn aws_cli(args: &[&str], creds: &AwsCredentials) -> std::process::Output {
    std::process::Command::new(testbed().venv.join("bin/aws"))
        .args(args)
        .envs(testbed().env())
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_MAX_ATTEMPTS", "1")
        .envs(creds.env())
        .output()
        .expect("run the aws CLI")
}

/// An STS client (aws-sdk-rust) pointed at the proxy, signing with `creds`, no retries.
pub async fn sts_client(creds: &AwsCredentials) -> aws_sdk_sts::Client {
    let bed = testbed();
    let provider = aws_sdk_sts::config::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        Some(creds.session_token.clone()),
        None,
        "testbed",
    );
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .credentials_provider(provider)
        .region(aws_config::Region::new(bed.region.clone()))
        .endpoint_url(&bed.sts_endpoint)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    aws_sdk_sts::Client::new(&conf)
}

/// GetCallerIdentity through aws-sdk-rust with `creds`: the caller's ARN, or STS's error
/// code (the whole error chain when there is no code, e.g. a connection failure).
pub async fn caller_arn(creds: &AwsCredentials) -> Result<String, String> {
    use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata};
    match sts_client(creds).await.get_caller_identity().send().await {
        Ok(out) => Ok(out.arn().unwrap_or_default().to_string()),
        Err(e) => Err(e
            .code()
            .map(str::to_string)
            .unwrap_or_else(|| DisplayErrorContext(&e).to_string())),
    }
}

/// An unsigned Cognito Identity client pointed at the proxy, as the controller builds it.
pub async fn cognito_client() -> aws_sdk_cognitoidentity::Client {
    let bed = testbed();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .no_credentials()
        .region(aws_config::Region::new(bed.region.clone()))
        .endpoint_url(&bed.cognito_endpoint)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    aws_sdk_cognitoidentity::Client::new(&conf)
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs kubectl against the test bed; panics with its stderr when it fails.
pub fn kubectl(args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .envs(testbed().env())
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs kubectl against the test bed with `input` on its stdin; returns its output
/// whatever the exit status.
pub fn kubectl_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new("kubectl")
        .args(args)
        .envs(testbed().env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to kubectl");
    child.wait_with_output().expect("kubectl")
}

/// Runs `script` in bash at the repository's root with testbed/lib.sh and testbed/node.sh
/// loaded (so `ctr_node` talks to the node's containerd), in the test bed's environment;
/// panics with its output unless it succeeds. Returns its stdout.
pub fn node_sh(script: &str) -> String {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source testbed/lib.sh >/dev/null && source testbed/node.sh && {script}"
        ))
        .current_dir(root())
        .envs(testbed().env())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The aws CLI image the recipes in examples/ name.
pub const PUBLIC_AWS_CLI: &str = "public.ecr.aws/aws-cli/aws-cli:2.27.0";
/// The local image with the same tools (sh, cat, aws; python3 with boto3) that `make up`
/// imports: the test bed's node never pulls.
pub const LOCAL_AWS_CLI: &str = "localhost/aws-client:dev";

/// The documents of examples/`file`, with `pool` put in and the local aws CLI image.
pub fn example_docs(file: &str, pool: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("examples").join(file)).expect("recipe");
    let text = text
        .replace("DEMO_IDENTITY_POOL_ID", pool)
        .replace(PUBLIC_AWS_CLI, LOCAL_AWS_CLI);
    text.split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| d.is_object())
        .collect()
}

/// examples/`file` made to run on the test bed's node: `renew_before` on its resource (a
/// quick rotation), its CLI loop every 5 s printing FAILED when a call fails, and its pods
/// pointed at the proxy's STS as pods see it.
pub fn example_in_pods(file: &str, pool: &str, renew_before: &str) -> Vec<Value> {
    let endpoint = testbed()
        .in_cluster_endpoint
        .clone()
        .expect("IN_CLUSTER_AWS_ENDPOINT_URL: the test bed has no node");
    let mut docs = example_docs(file, pool);
    for d in &mut docs {
        if d["kind"] == "CognitoUnauthCredential" {
            d["spec"]["renewBefore"] = json!(renew_before);
        }
        if d["kind"] == "Deployment" {
            // YAML 1.1 octal (`defaultMode: 0440`), which serde_yaml reads as a string.
            for v in d["spec"]["template"]["spec"]["volumes"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if let Some(m) = v["secret"]["defaultMode"].as_str() {
                    v["secret"]["defaultMode"] =
                        json!(u32::from_str_radix(m, 8).expect("octal mode"));
                }
            }
            let c = &mut d["spec"]["template"]["spec"]["containers"][0];
            let args = c["args"][0].as_str().expect("the loop").to_string();
            assert!(args.contains("sleep 300"), "{file}: {args}");
            c["args"][0] = json!(
                args.replace(
                    "aws sts get-caller-identity",
                    "aws sts get-caller-identity --output text || echo FAILED"
                )
                .replace("sleep 300", "sleep 5")
            );
            c["env"]
                .as_array_mut()
                .expect("env")
                .push(json!({"name": "AWS_ENDPOINT_URL_STS", "value": endpoint}));
            c["resources"]["requests"]["cpu"] = json!("1m");
        }
    }
    docs
}

/// Server-side apply of `docs` into `ns` (field manager `tests`).
pub fn apply_docs(ns: &str, docs: &[Value]) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let out = kubectl_stdin(
        &[
            "apply",
            "-n",
            ns,
            "--server-side",
            "--field-manager",
            "tests",
            "-f",
            "-",
        ],
        &list.to_string(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl apply --server-side` of `manifests` (YAML, any number of documents); returns
/// kubectl's warnings (stderr).
pub fn kubectl_apply(manifests: &str) -> String {
    let out = kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "tests",
            "-f",
            "-",
        ],
        manifests,
    );
    assert!(
        out.status.success(),
        "the API server refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The Deployment `name` once the deployment controller has acted on generation
/// `generation` or later (it makes the template's ReplicaSet before it says so in status).
pub async fn deployment_observed(
    api: kube::Api<k8s_openapi::api::apps::v1::Deployment>,
    name: &str,
    generation: i64,
) -> k8s_openapi::api::apps::v1::Deployment {
    use k8s_openapi::api::apps::v1::Deployment;
    let done = move |d: Option<&Deployment>| {
        d.is_some_and(|d| {
            let seen = d.status.as_ref().and_then(|s| s.observed_generation);
            d.metadata.generation >= Some(generation) && seen == d.metadata.generation
        })
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(api, name, done),
    )
    .await
    .unwrap_or_else(|_| panic!("deployment/{name} generation {generation} not observed in 30 s"))
    .expect("watch")
    .expect("the Deployment")
}

/// The ReplicaSets the Deployment `d` owns (by owner reference), in `namespace`.
pub async fn owned_replica_sets(
    client: &kube::Client,
    namespace: &str,
    d: &k8s_openapi::api::apps::v1::Deployment,
) -> Vec<k8s_openapi::api::apps::v1::ReplicaSet> {
    kube::Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&kube::api::ListParams::default())
        .await
        .expect("replicasets")
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == d.metadata.uid.as_ref())
        })
        .collect()
}

/// Installs the CRD from crds/ and waits until it is Established.
pub fn install_crd() {
    let crds = root().join("crds");
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        "tests",
        "-f",
        &crds.display().to_string(),
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/cognitounauthcredentials.cognito.kubecred.io",
        "--timeout=30s",
    ]);
}

/// A minimal CognitoUnauthCredential manifest.
pub fn cuc_manifest(namespace: &str, name: &str, pool: &str) -> String {
    format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  identityPoolId: {pool}\n"
    )
}

/// The controller binary running as a child process, logging to a file.
pub struct ControllerProcess {
    pub child: std::process::Child,
    /// Port of its HTTP server (/livez, /readyz, /metrics) on 127.0.0.1.
    pub port: u16,
}

/// The port of the controller's "serving /livez, /readyz and /metrics" log line (text
/// or JSON format).
fn bound_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("serving /livez"))?;
    let at = line.find("127.0.0.1:")? + "127.0.0.1:".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl ControllerProcess {
    /// Starts `bin` with the test bed's environment plus `env`, logging to `log`. The
    /// HTTP server binds port 0 and the port is read from the log: a port picked free
    /// beforehand can be taken by another process before the controller binds it.
    pub fn start(bin: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let mut child = std::process::Command::new(bin)
            .envs(testbed().env())
            .env("METRICS_ADDRESS", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start controller");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let port = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(p) = bound_port(&text) {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the controller exited ({status}) before serving HTTP:\n{text}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the controller did not log its HTTP address:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, port }
    }

    /// The value of the sample whose line starts with `series` (a family's name, with its
    /// labels if it has any) in the process's `/metrics`; `None` while it has none.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    }

    /// Waits (at most 20 s) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the controller did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }
}

impl Drop for ControllerProcess {
    /// A test that fails half-way must not leave its controller running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fresh directory for a test's files (logs, kubeconfigs).
pub fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cuc-test-{name}"));
    std::fs::create_dir_all(&d).expect("test dir");
    d
}

/// Writes a row of docs/reliability.md (`make reliability` collects them) under
/// `target_tmpdir` (the test's `CARGO_TARGET_TMPDIR`). Call it when the test has passed.
pub fn record_fault(target_tmpdir: &str, id: &str, fault: &str, asserted: &str, measured: &str) {
    let dir = Path::new(target_tmpdir).join("fault-matrix");
    std::fs::create_dir_all(&dir).expect("fault-matrix dir");
    let row = json!({"id": id, "fault": fault, "asserted": asserted, "measured": measured, "result": "pass"});
    std::fs::write(dir.join(format!("{id}.json")), row.to_string()).expect("write row");
}

/// `kubectl wait --for=condition=Ready cuc/NAME` in `namespace`, for at most `seconds`.
pub fn wait_ready(namespace: &str, name: &str, seconds: u32) {
    kubectl(&[
        "-n",
        namespace,
        "wait",
        "--for=condition=Ready",
        &format!("cuc/{name}"),
        &format!("--timeout={seconds}s"),
    ]);
}

/// RBAC for a controller identity `user` in `ns`: a Role `ctl` with what the controller
/// needs (status writes only `with_status`), bound as `ctl-<user>`; with `lease`, a Role
/// `lease` for leader election, bound as `lease-<user>` (so a test can take just that
/// away). Applied with `kubectl apply`: calling it again with less takes rules away.
pub fn controller_rbac(ns: &str, user: &str, with_status: bool, lease: bool) {
    let status = if with_status {
        "- {apiGroups: [cognito.kubecred.io], resources: [cognitounauthcredentials/status], verbs: [patch]}\n"
    } else {
        ""
    };
    let mut manifest = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: ctl, namespace: {ns}}}
rules:
- {{apiGroups: [cognito.kubecred.io], resources: [cognitounauthcredentials], verbs: [get, list, watch]}}
{status}- {{apiGroups: [""], resources: [secrets], verbs: [get, list, watch, create, patch, delete]}}
- {{apiGroups: ["", events.k8s.io], resources: [events], verbs: [create, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ctl-{user}, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: ctl}}
subjects: [{{kind: User, name: {user}, apiGroup: rbac.authorization.k8s.io}}]
"#
    );
    if lease {
        manifest.push_str(&format!(
            r#"---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: lease, namespace: {ns}}}
rules:
- {{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: lease-{user}, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: lease}}
subjects: [{{kind: User, name: {user}, apiGroup: rbac.authorization.k8s.io}}]
"#
        ));
    }
    let out = kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The proxy's STS record (`Proxy::sts_calls`): a call from the aws CLI.
pub fn ua_is_cli(c: &Value) -> bool {
    c["user_agent"]
        .as_str()
        .is_some_and(|u| u.starts_with("aws-cli/"))
}

/// A call from boto3.
pub fn ua_is_boto3(c: &Value) -> bool {
    c["user_agent"]
        .as_str()
        .is_some_and(|u| u.contains("Boto3/"))
}

/// A call from aws-sdk-go-v2.
pub fn ua_is_go(c: &Value) -> bool {
    c["user_agent"]
        .as_str()
        .is_some_and(|u| u.contains("aws-sdk-go-v2/"))
}

/// The access key ids the calls that `f` selects signed with.
pub fn keys_used(
    calls: &[Value],
    f: impl Fn(&Value) -> bool,
) -> std::collections::BTreeSet<String> {
    calls
        .iter()
        .filter(|c| f(c))
        .filter_map(|c| c["access_key_id"].as_str().map(str::to_string))
        .collect()
}

/// The session name Cognito's enhanced flow gives every guest session.
pub const COGNITO_SESSION: &str = "CognitoIdentityCredentials";

/// What STS answers `get-caller-identity` with for session `session` of role `role_arn`
/// (`arn:aws:iam::ACCOUNT:role/[PATH/]NAME`): `arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`.
pub fn assumed_role(role_arn: &str, session: &str) -> String {
    let (account, name) = role_arn
        .strip_prefix("arn:aws:iam::")
        .and_then(|r| r.split_once(":role/"))
        .expect("a role ARN");
    let name = name.rsplit('/').next().unwrap_or(name);
    format!("arn:aws:sts::{account}:assumed-role/{name}/{session}")
}

/// The calls that did not succeed.
pub fn failed(calls: &[Value]) -> Vec<&Value> {
    calls.iter().filter(|c| c["outcome"] != "ok").collect()
}

/// A boto3 client made once, for the process's life, calling STS every 2 s and printing
/// FAILED on an error (a long-running SDK client, as most services have).
pub const BOTO3_LOOP: &str = r#"
import time, boto3
c = boto3.client("sts")
while True:
    try:
        c.get_caller_identity()
    except Exception as e:
        print("FAILED", e, flush=True)
    time.sleep(2)
"#;

/// `helm install RELEASE CHART --namespace NS --values VALUES EXTRA... --wait` (3 minutes
/// at most); helm's output.
pub fn helm_install(release: &str, ns: &str, values: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "install",
        release,
        CHART,
        "--namespace",
        ns,
        "--values",
        values,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--wait", "--timeout", "180s"]);
    helm_ok(&args)
}

/// `helm uninstall RELEASE --namespace NS --wait` (2 minutes at most).
pub fn helm_uninstall(release: &str, ns: &str) {
    helm_ok(&[
        "uninstall",
        release,
        "--namespace",
        ns,
        "--wait",
        "--timeout",
        "120s",
    ]);
}

/// Writes the values of a test release with the webhook (the local image, the CRD not
/// installed, `watchNamespaces: [app_ns]`, the emulator's endpoint, the webhook's CA and
/// certificate lifetimes, and `extra` YAML lines) under `test_dir(rel_ns)`; returns the
/// file's path.
pub fn webhook_values(rel_ns: &str, app_ns: &str, ca_s: i64, cert_s: i64, extra: &str) -> String {
    let endpoint = testbed()
        .in_cluster_endpoint
        .clone()
        .expect("IN_CLUSTER_AWS_ENDPOINT_URL: the test bed has no node");
    let values = test_dir(rel_ns).join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "image: {{repository: localhost/cognito-unauth-controller, tag: dev, pullPolicy: Never}}\n\
             crds: {{install: false}}\n\
             watchNamespaces: [{app_ns}]\n\
             extraEnv:\n\
             - {{name: AWS_ENDPOINT_URL_COGNITO_IDENTITY, value: \"{endpoint}\"}}\n\
             webhook:\n  certificate: {{caLifetimeSeconds: {ca_s}, certLifetimeSeconds: {cert_s}}}\n\
             {extra}"
        ),
    )
    .expect("values");
    values.display().to_string()
}

/// Labels namespace `ns` `cognito.kubecred.io/inject: enabled`: the injection webhook is
/// called for every pod there and injects those whose ServiceAccount names a credential.
pub fn opt_in(ns: &str) {
    kubectl(&[
        "label",
        "namespace",
        ns,
        "cognito.kubecred.io/inject=enabled",
    ]);
}

/// Labels namespace `ns` to enforce (and warn about) Pod Security `restricted`.
pub fn restricted(ns: &str) {
    kubectl(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
}

/// Every entry of the API server's audit log so far (testbed/audit-policy.yaml says
/// which requests it records), in order.
pub fn audit_log() -> Vec<Value> {
    let log = testbed()
        .kubeconfig
        .parent()
        .expect(".local")
        .join("run/audit.log");
    let text = std::fs::read_to_string(&log).expect("audit log");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// The API server's audit log entries for `resource` `namespace/name` (cluster-scoped:
/// `namespace` None) with one of `verbs`, completed (a refused call counts: it is a call
/// all the same), in order.
fn audited(resource: &str, namespace: Option<&str>, name: &str, verbs: &[&str]) -> Vec<Value> {
    audit_log()
        .into_iter()
        .filter(|e| {
            let o = &e["objectRef"];
            o["resource"] == resource
                && o["namespace"].as_str() == namespace
                && o["name"] == name
                && verbs.contains(&e["verb"].as_str().unwrap_or_default())
                && e["stage"] == "ResponseComplete"
        })
        .collect()
}

/// Who wrote `resource` `namespace/name`, from the audit log: the username of each
/// create, update, patch or delete, in order.
pub fn writers(resource: &str, namespace: Option<&str>, name: &str) -> Vec<String> {
    audited(
        resource,
        namespace,
        name,
        &["create", "update", "patch", "delete"],
    )
    .iter()
    .map(|e| {
        e["user"]["username"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
    .collect()
}

/// How many times `resource` `namespace/name` was read (GET), from the audit log.
pub fn reads(resource: &str, namespace: Option<&str>, name: &str) -> usize {
    audited(resource, namespace, name, &["get"]).len()
}

/// The `cognito.kubecred.io/restartedAt` annotation of a Deployment's pod template: set
/// by the controller when it rolls the Deployment for new credentials.
pub fn restarted_at(d: &k8s_openapi::api::apps::v1::Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("cognito.kubecred.io/restartedAt")
        .cloned()
}

/// The chart, as `helm` is given it.
pub const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../charts/cognito-unauth-controller"
);

/// Whether the pod's Ready condition is True.
pub fn pod_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Replaces the section NAME of docs/benchmarks.md (between
/// `<!-- NAME:begin (SOURCE) -->` and `<!-- NAME:end -->`) with `text`: a figure in the
/// docs is written by the run that measured it (`CUC_WRITE_DOCS=1`).
pub fn write_docs_section(name: &str, source: &str, text: &str) {
    let begin = format!("<!-- {name}:begin ({source}) -->");
    let end = format!("<!-- {name}:end -->");
    let path = root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).expect("docs/benchmarks.md");
    let (head, rest) = doc
        .split_once(&begin)
        .unwrap_or_else(|| panic!("docs/benchmarks.md has no {begin}"));
    let (_, tail) = rest
        .split_once(&end)
        .unwrap_or_else(|| panic!("docs/benchmarks.md has no {end}"));
    std::fs::write(&path, format!("{head}{begin}\n{text}{end}{tail}")).expect("write");
}
