//! The recipes in examples/ on the real API server, with the real binary: each applies
//! as it is (server-side, strict field validation, so a field the CRD or the Deployment
//! schema does not know fails; Pod Security `restricted` without a warning), its
//! resource becomes Ready, and its Deployment consumes what the Secret really holds:
//! every key it names, the Secret it mounts, every file its environment points into the
//! mount, and for credential_process the very path the Secret's `config` names. The
//! deployment controller makes each Deployment a ReplicaSet, and where the recipe lists
//! the Deployment as a rollout-restart target, a rotation rolls it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cognito_unauth_controller::crd::{
    CognitoUnauthCredential, DEFAULT_MOUNT_PATH, RolloutRestartTarget, WorkloadKind,
};
use cognito_unauth_controller::reconcile::secret;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use kube::api::Api;
use testbed_support::{
    ControllerProcess, LOCAL_AWS_CLI, PUBLIC_AWS_CLI, Proxy, TestNs, deployment_observed,
    install_crd, kubectl, kubectl_stdin, owned_replica_sets, root, test_dir, wait_ready,
};

const BIN: &str = env!("CARGO_BIN_EXE_cognito-unauth-controller");
const PLACEHOLDER: &str = "DEMO_IDENTITY_POOL_ID";
const RESTARTED_AT: &str = "cognito.kubecred.io/restartedAt";

/// The examples with a test of their own here; `demo.yaml` is `make run`'s.
const RECIPES: [&str; 3] = [
    "env-vars-restart.yaml",
    "credential-process.yaml",
    "credentials-file.yaml",
];
/// The examples of a resource alone (how it gets its credentials), tested here too.
const RESOURCES: [&str; 2] = ["flow-basic.yaml", "verify.yaml"];
/// Tested elsewhere: `make run`'s demo (tests/node_defaults.rs), and the injection recipe,
/// which needs the chart's webhook (tests/node_webhook.rs runs it as a pod).
const ELSEWHERE: [&str; 2] = ["demo.yaml", "injection.yaml"];
const ROLE_PLACEHOLDER: &str = "DEMO_ROLE_ARN";

fn example(file: &str) -> String {
    std::fs::read_to_string(root().join("examples").join(file))
        .unwrap_or_else(|e| panic!("examples/{file}: {e}"))
}

/// `kubectl apply --server-side --validate=strict` into `ns` (plus `extra` flags): the
/// warnings (stderr) when the API server accepted everything, else its refusal.
fn apply_strict(ns: &str, manifests: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec![
        "apply",
        "-n",
        ns,
        "--server-side",
        "--validate=strict",
        "--field-manager",
        "examples",
        "-f",
        "-",
    ];
    args.extend_from_slice(extra);
    let out = kubectl_stdin(&args, manifests);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(stderr)
    }
}

/// The name of the one object of `kind` in `manifests`.
fn name_of(manifests: &str, kind: &str) -> String {
    let names: Vec<String> = manifests
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d["kind"] == kind)
        .map(|d| d["metadata"]["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names.len(), 1, "one {kind} per recipe: {names:?}");
    names.into_iter().next().expect("name")
}

/// How a pod spec uses the Secret `secret`, checked against the keys it really has.
#[derive(Debug, Default)]
struct Consumption {
    /// Environment variables set from a key of the Secret, by variable name.
    env_keys: BTreeMap<String, String>,
    /// Literal environment values, by variable name.
    env_values: BTreeMap<String, String>,
    /// Containers that import the whole Secret with envFrom.
    env_from: usize,
    /// Where the Secret is mounted (whole, never by subPath).
    mounts: BTreeSet<String>,
    /// Everything that does not match the Secret, in words.
    problems: Vec<String>,
}

fn containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers.iter().flatten().chain(&pod.containers)
}

fn consumption(pod: &PodSpec, secret: &str, keys: &BTreeSet<String>) -> Consumption {
    let mut c = Consumption::default();
    // Secret volumes: the Secret itself, with the files it really has.
    let mut volumes = BTreeMap::new();
    for v in pod.volumes.iter().flatten() {
        let Some(s) = &v.secret else { continue };
        let name = s.secret_name.as_deref().unwrap_or_default();
        if name != secret {
            c.problems
                .push(format!("volume {} mounts Secret {name}", v.name));
        }
        let mut files: BTreeSet<String> = keys.clone();
        if let Some(items) = &s.items {
            files.clear();
            for i in items {
                if !keys.contains(&i.key) {
                    c.problems
                        .push(format!("volume {} names missing key {}", v.name, i.key));
                }
                files.insert(i.path.clone());
            }
        }
        volumes.insert(v.name.clone(), files);
    }
    for ct in containers(pod) {
        let mut files_at = BTreeMap::new();
        for m in ct.volume_mounts.iter().flatten() {
            let Some(files) = volumes.get(&m.name) else {
                continue;
            };
            if m.sub_path.is_some() || m.sub_path_expr.is_some() {
                c.problems.push(format!(
                    "{}: subPath mount of the Secret at {} (never updated)",
                    ct.name, m.mount_path
                ));
            }
            c.mounts.insert(m.mount_path.clone());
            files_at.insert(m.mount_path.trim_end_matches('/').to_string(), files);
        }
        for e in ct.env.iter().flatten() {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                if r.name != secret {
                    c.problems
                        .push(format!("{}: {} reads Secret {}", ct.name, e.name, r.name));
                } else if !keys.contains(&r.key) {
                    c.problems.push(format!(
                        "{}: {} reads key {}, which the Secret does not have",
                        ct.name, e.name, r.key
                    ));
                }
                c.env_keys.insert(e.name.clone(), r.key.clone());
            }
            if let Some(v) = &e.value {
                c.env_values.insert(e.name.clone(), v.clone());
                // A path into the mounted Secret must name one of its files.
                for (dir, files) in &files_at {
                    if let Some(file) = v.strip_prefix(&format!("{dir}/"))
                        && !files.contains(file)
                    {
                        c.problems.push(format!(
                            "{}: {}={v}, but the Secret has no {file}",
                            ct.name, e.name
                        ));
                    }
                }
            }
        }
        for f in ct.env_from.iter().flatten() {
            if let Some(r) = &f.secret_ref {
                if r.name != secret {
                    c.problems
                        .push(format!("{}: envFrom Secret {}", ct.name, r.name));
                }
                c.env_from += 1;
            }
        }
    }
    c
}

/// Non-root and a read-only root filesystem for every container, as the recipes promise.
fn locked_down(pod: &PodSpec) -> Vec<String> {
    let pod_non_root = pod
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        == Some(true);
    containers(pod)
        .filter_map(|ct| {
            let sc = ct.security_context.as_ref();
            let non_root = sc.and_then(|s| s.run_as_non_root).unwrap_or(pod_non_root);
            let read_only = sc.and_then(|s| s.read_only_root_filesystem) == Some(true);
            (!non_root || !read_only).then(|| {
                format!(
                    "{}: runAsNonRoot {non_root}, readOnlyRootFilesystem {read_only}",
                    ct.name
                )
            })
        })
        .collect()
}

/// The pod-template restart annotation of each ReplicaSet of the Deployment (empty for
/// a template without one).
async fn replica_sets(ns: &TestNs, d: &Deployment) -> Vec<String> {
    owned_replica_sets(&ns.client, &ns.name, d)
        .await
        .into_iter()
        .map(|rs| {
            rs.spec
                .and_then(|s| s.template)
                .and_then(|t| t.metadata)
                .and_then(|m| m.annotations)
                .and_then(|mut a| a.remove(RESTARTED_AT))
                .unwrap_or_default()
        })
        .collect()
}

/// What one recipe shows.
enum Recipe {
    /// Key references in the environment; rolled at each rotation.
    EnvVars,
    /// AWS_CONFIG_FILE on the mount at spec.mountPath; no credentials in the environment.
    CredentialProcess,
    /// AWS_SHARED_CREDENTIALS_FILE on the mount; rolled at each rotation.
    CredentialsFile,
}

/// Applies `file` to a namespace of its own with a fresh pool, runs the controller
/// binary for it, and checks the recipe end to end.
async fn check(file: &str, recipe: Recipe) {
    let pool = Proxy::new().create_pool(true).await;
    let stem = file.trim_end_matches(".yaml");
    let ns = TestNs::new(&format!("ex-{stem}")).await;
    testbed_support::restricted(&ns.name);
    let (controller, dir) = controller_for(&ns);

    let text = example(file);
    let pool_line = format!("identityPoolId: {PLACEHOLDER}");
    assert_eq!(text.matches(&pool_line).count(), 1, "{file}: {pool_line}");
    // The test bed's node never pulls: the recipes' public aws CLI image becomes the
    // local one with the same tools (sh, cat, aws), which `make up` imported.
    assert_eq!(
        text.matches(PUBLIC_AWS_CLI).count(),
        1,
        "{file}: {PUBLIC_AWS_CLI}"
    );
    let manifests = text
        .replace(PLACEHOLDER, &pool)
        .replace(PUBLIC_AWS_CLI, LOCAL_AWS_CLI);
    let warnings =
        apply_strict(&ns.name, &manifests, &[]).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(
        !warnings.contains("Warning"),
        "{file}: the API server warned: {warnings}"
    );
    let cuc_name = name_of(&manifests, "CognitoUnauthCredential");
    let deploy_name = name_of(&manifests, "Deployment");
    wait_ready(&ns.name, &cuc_name, 60);

    let cuc = ns
        .api::<CognitoUnauthCredential>()
        .get(&cuc_name)
        .await
        .expect("the resource");
    let secret_name = cuc
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .expect("status.secretName");
    let secrets: Api<Secret> = ns.api();
    let s = secrets.get(&secret_name).await.expect("the Secret");
    let data = s.data.clone().expect("data");
    let keys: BTreeSet<String> = data.keys().cloned().collect();
    let text_of = |k: &str| String::from_utf8(data[k].0.clone()).expect("UTF-8");

    let deployments: Api<Deployment> = ns.api();
    let d = deployments.get(&deploy_name).await.expect("the Deployment");
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let used = consumption(pod, &secret_name, &keys);
    assert!(used.problems.is_empty(), "{file}: {:#?}", used.problems);
    let locked = locked_down(pod);
    assert!(locked.is_empty(), "{file}: {locked:?}");
    let mount_path = cuc.spec.mount_path().to_string();
    let rolled = cuc
        .spec
        .rollout_restart_targets
        .contains(&RolloutRestartTarget {
            kind: WorkloadKind::Deployment,
            name: deploy_name.clone(),
        });
    let cred_vars = [
        secret::KEY_ACCESS_KEY_ID,
        secret::KEY_SECRET_ACCESS_KEY,
        secret::KEY_SESSION_TOKEN,
    ];

    match recipe {
        Recipe::EnvVars => {
            for v in cred_vars {
                assert_eq!(
                    used.env_keys.get(v).map(String::as_str),
                    Some(v),
                    "{file}: {v}"
                );
            }
            assert!(
                rolled,
                "{file}: env readers must be rollout-restart targets"
            );
        }
        Recipe::CredentialProcess => {
            // A non-default mountPath, the same on both sides, named by the config.
            assert_ne!(mount_path, DEFAULT_MOUNT_PATH, "{file}");
            assert_eq!(
                used.mounts,
                BTreeSet::from([mount_path.clone()]),
                "{file}: the volumeMount must be spec.mountPath"
            );
            assert_eq!(
                used.env_values.get("AWS_CONFIG_FILE"),
                Some(&format!("{mount_path}/{}", secret::KEY_CONFIG_FILE)),
                "{file}"
            );
            let config = text_of(secret::KEY_CONFIG_FILE);
            let process: Vec<&str> = config
                .lines()
                .filter(|l| l.starts_with("credential_process"))
                .collect();
            assert_eq!(
                process,
                [format!(
                    "credential_process = cat {mount_path}/{}",
                    secret::KEY_CREDENTIAL_PROCESS
                )],
                "{file}: {config}"
            );
            let json: serde_json::Value =
                serde_json::from_str(&text_of(secret::KEY_CREDENTIAL_PROCESS)).expect("JSON");
            assert_eq!(json["Version"], 1);
            // Environment credentials would win over the config file in every SDK.
            for v in cred_vars {
                assert!(
                    !used.env_keys.contains_key(v) && !used.env_values.contains_key(v),
                    "{file}: {v} in the environment"
                );
            }
            assert_eq!(used.env_from, 0, "{file}: envFrom imports {cred_vars:?}");
            assert!(!rolled, "{file}: credential_process needs no restarts");
        }
        Recipe::CredentialsFile => {
            assert_eq!(used.mounts.len(), 1, "{file}: {:?}", used.mounts);
            let mount = used.mounts.iter().next().expect("the Secret is mounted");
            assert_eq!(
                used.env_values.get("AWS_SHARED_CREDENTIALS_FILE"),
                Some(&format!("{mount}/{}", secret::KEY_CREDENTIALS_FILE)),
                "{file}"
            );
            assert!(
                text_of(secret::KEY_CREDENTIALS_FILE).starts_with("[default]\n"),
                "{file}"
            );
            assert!(
                rolled,
                "{file}: a static credentials file needs a rollout restart"
            );
        }
    }

    // The deployment controller took the Deployment as it is: a ReplicaSet.
    let generation = d.metadata.generation.expect("generation");
    let d = deployment_observed(deployments.clone(), &deploy_name, generation).await;
    assert_eq!(replica_sets(&ns, &d).await, [""], "{file}");

    if rolled {
        // A rotation rolls the Deployment: a new ReplicaSet with the restart annotation.
        kubectl(&[
            "-n",
            &ns.name,
            "annotate",
            &format!("cuc/{cuc_name}"),
            "cognito.kubecred.io/force-rotate=1",
        ]);
        let cuc = waited(
            &ns,
            &cuc_name,
            "--for=jsonpath={.status.conditions[?(@.type==\"RolloutRestart\")].reason}=RolloutRestartTriggered",
            30,
        )
        .await;
        let stamp = cuc
            .status
            .and_then(|s| s.rollout_restart)
            .and_then(|r| r.restarted_at)
            .expect("status.rolloutRestart.restartedAt");
        let d = deployment_observed(deployments, &deploy_name, generation + 1).await;
        let mut stamps = replica_sets(&ns, &d).await;
        stamps.sort();
        assert_eq!(stamps, ["".to_string(), stamp], "{file}");
    }

    stopped_quietly(controller, &dir, file);
    ns.cleanup().await;
}

/// The CRD, and the controller binary for `ns` alone (JSON logs in its test directory).
fn controller_for(ns: &TestNs) -> (ControllerProcess, std::path::PathBuf) {
    install_crd();
    let dir = test_dir(&ns.name);
    let controller = ControllerProcess::start(
        Path::new(BIN),
        &dir.join("controller.log"),
        &[("WATCH_NAMESPACES", &ns.name), ("LOG_FORMAT", "json")],
    );
    (controller, dir)
}

/// The controller stops cleanly, and logged no warning or error (`what`: for the message).
fn stopped_quietly(controller: ControllerProcess, dir: &Path, what: &str) {
    assert!(controller.terminate().success(), "{what}: controller exit");
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    assert!(
        !log.contains("\"level\":\"WARN\"") && !log.contains("\"level\":\"ERROR\""),
        "{what}: the controller complained:\n{log}"
    );
}

#[tokio::test]
async fn env_vars_restart_example_works() {
    check("env-vars-restart.yaml", Recipe::EnvVars).await;
}

#[tokio::test]
async fn credential_process_example_works() {
    check("credential-process.yaml", Recipe::CredentialProcess).await;
}

#[tokio::test]
async fn credentials_file_example_works() {
    check("credentials-file.yaml", Recipe::CredentialsFile).await;
}

/// Every example passes strict validation (a server-side dry run, so demo.yaml's
/// `namespace: default` is not touched), each recipe has its test above, and the check
/// does catch drift: a misspelt field is refused, not dropped.
#[tokio::test]
async fn every_example_is_valid_and_checked() {
    let pool = Proxy::new().create_pool(true).await;
    let ns = TestNs::new("ex-strict").await;
    install_crd();
    let mut files: Vec<String> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut want: Vec<String> = [&RECIPES[..], &RESOURCES, &ELSEWHERE]
        .concat()
        .iter()
        .map(|f| f.to_string())
        .collect();
    want.sort();
    assert_eq!(files, want, "an example without a test here");
    for f in &files {
        let manifests = example(f)
            .replace(PLACEHOLDER, &pool)
            .replace(ROLE_PLACEHOLDER, "arn:aws:iam::123456789012:role/guest");
        // demo.yaml names its namespace (default); the recipes take the current one.
        let target = manifests
            .split("\n---")
            .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
            .find_map(|d| d["metadata"]["namespace"].as_str().map(str::to_string))
            .unwrap_or_else(|| ns.name.clone());
        // A dry run checks validity; a field owned by another manager (a `make run` on
        // this test bed applied demo.yaml) is no conflict for it.
        if let Err(e) = apply_strict(
            &target,
            &manifests,
            &["--dry-run=server", "--force-conflicts"],
        ) {
            panic!("{f}: {e}");
        }
    }
    let drifted = example("credential-process.yaml")
        .replace(PLACEHOLDER, &pool)
        .replacen("  mountPath:", "  mountPth:", 1);
    let err = apply_strict(&ns.name, &drifted, &["--dry-run=server"])
        .expect_err("a field the CRD does not have was accepted");
    assert!(err.contains("mountPth"), "{err}");
    ns.cleanup().await;
}

/// Resource `name` once `kubectl wait FOR` says so (within `timeout` seconds).
async fn waited(ns: &TestNs, name: &str, wait_for: &str, timeout: u64) -> CognitoUnauthCredential {
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        wait_for,
        &format!("cuc/{name}"),
        &format!("--timeout={timeout}s"),
    ]);
    ns.api::<CognitoUnauthCredential>()
        .get(name)
        .await
        .expect("the resource")
}

/// Resource `name` once Verified: its Verified reason and its assumed role.
async fn verified(ns: &TestNs, name: &str) -> (String, String) {
    let cuc = waited(ns, name, "--for=condition=Verified", 60).await;
    let status = cuc.status.expect("status");
    let reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Verified")
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    (reason, status.assumed_role_arn.unwrap_or_default())
}

/// flow-basic.yaml and verify.yaml, applied as they are (with a pool, and the role the
/// basic flow assumes, put in) beside the controller binary: both become Ready and
/// Verified; the basic one's Secret holds credentials of the role it names, for the
/// session it asks (2h), obtained through GetOpenIdToken; the verified one's, of the
/// pool's guest role.
#[tokio::test]
async fn flow_basic_and_verify_examples_work() {
    let proxy = Proxy::new();
    // The role allows 2h sessions: the recipe asks for them.
    let (basic_pool, role) = proxy.basic_pool(7200).await;
    let pool = proxy.create_pool(true).await;
    let ns = TestNs::new("ex-resources").await;
    let (controller, dir) = controller_for(&ns);
    let basic = example("flow-basic.yaml");
    let role_line = format!("roleArn: {ROLE_PLACEHOLDER}");
    assert_eq!(basic.matches(&role_line).count(), 1, "flow-basic.yaml");
    let basic = basic
        .replace(PLACEHOLDER, &basic_pool)
        .replace(ROLE_PLACEHOLDER, &role);
    let verify = example("verify.yaml").replace(PLACEHOLDER, &pool);
    for (file, manifests) in [("flow-basic.yaml", &basic), ("verify.yaml", &verify)] {
        let warnings =
            apply_strict(&ns.name, manifests, &[]).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!warnings.contains("Warning"), "{file}: {warnings}");
    }
    let basic_name = name_of(&basic, "CognitoUnauthCredential");
    let verify_name = name_of(&verify, "CognitoUnauthCredential");
    wait_ready(&ns.name, &basic_name, 60);
    wait_ready(&ns.name, &verify_name, 60);

    let (reason, arn) = verified(&ns, &basic_name).await;
    assert_eq!(reason, "CallerIdentityVerified");
    let session = format!("{}-{basic_name}", ns.name);
    assert_eq!(arn, testbed_support::assumed_role(&role, &session));
    assert_eq!(proxy.pool_calls(&basic_pool, "GetOpenIdToken").await, 1);
    let secrets: Api<Secret> = ns.api();
    let s = secrets.get(&basic_name).await.expect("the Secret");
    let data = s.data.expect("data");
    let expiration = String::from_utf8(data[secret::KEY_EXPIRATION].0.clone()).expect("UTF-8");
    let expires: jiff::Timestamp = expiration.parse().expect("RFC 3339");
    let left = expires.duration_since(jiff::Timestamp::now()).as_secs();
    assert!(
        (6900..=7200).contains(&left),
        "the 2h session has {left} s left"
    );

    let (reason, arn) = verified(&ns, &verify_name).await;
    assert_eq!(reason, "CallerIdentityVerified");
    let guest = proxy.unauth_role(&pool).await;
    assert_eq!(
        arn,
        testbed_support::assumed_role(&guest, testbed_support::COGNITO_SESSION)
    );

    stopped_quietly(controller, &dir, "flow-basic.yaml, verify.yaml");
    ns.cleanup().await;
}
