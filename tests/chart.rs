//! The Helm chart on the real API server: lint, schema, server-side apply of the rendered
//! manifests in both modes, and the controller running with exactly the chart's RBAC
//! (impersonating the chart's ServiceAccount) through the whole credential flow.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use testbed_support::{
    CHART, ControllerProcess, Proxy, TestNs, client_from, cuc_manifest, deployment_observed,
    eventually, helm, impersonating_kubeconfig, kubectl, kubectl_apply, kubectl_stdin,
    owned_replica_sets, rand_suffix, test_dir, testbed, wait_ready,
};

fn helm_cmd(args: &[&str]) -> std::process::Output {
    Command::new(helm())
        .args(args)
        .envs(testbed().env())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("cuc-helm/cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("cuc-helm/config"),
        )
        .env("HELM_DATA_HOME", std::env::temp_dir().join("cuc-helm/data"))
        .output()
        .expect("run helm")
}

fn template(release: &str, ns: &str, sets: &[&str]) -> Result<String, String> {
    // The test bed's node runs what these tests apply: the chart's own image is not on
    // it, and `Never` keeps the kubelet from asking a registry (a test's value wins).
    let mut args = vec![
        "template",
        release,
        CHART,
        "--namespace",
        ns,
        "--set",
        "image.pullPolicy=Never",
        // The controller's objects; the webhook's are rendered and installed by
        // tests/node_webhook.rs (a test's own value wins).
        "--set",
        "webhook.enabled=false",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = helm_cmd(&args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The chart rendered in namespaced mode for `ns` (a Role there, nothing cluster-wide for
/// the controller) without the CRD (the tests apply crds/ themselves), with `sets`.
fn namespaced_template(release: &str, ns: &str, sets: &[&str]) -> String {
    let watch = format!("watchNamespaces={{{ns}}}");
    let mut all = vec![watch.as_str(), "crds.install=false"];
    all.extend_from_slice(sets);
    template(release, ns, &all).expect("render")
}

/// Whether `doc` is one of the ClusterRoles the built-in view/edit/admin roles aggregate
/// (rbac.aggregateToView/Edit): rules for people, bound to no one by the chart.
fn aggregated(doc: &serde_json::Value) -> bool {
    doc["metadata"]["labels"].as_object().is_some_and(|l| {
        l.keys()
            .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
    })
}

/// Every object in `manifests` (a rendering), in order.
fn documents(manifests: &str) -> Vec<serde_json::Value> {
    manifests
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d.is_object())
        .collect()
}

/// Every Role and ClusterRole in `manifests` that the controller is bound to, in order.
fn roles(manifests: &str) -> Vec<serde_json::Value> {
    documents(manifests)
        .into_iter()
        .filter(|d| (d["kind"] == "Role" || d["kind"] == "ClusterRole") && !aggregated(d))
        .collect()
}

/// Deletes the cluster-scoped RBAC objects of `release` (ClusterRoles, bindings), which
/// a namespace's cleanup leaves behind.
fn delete_cluster_rbac(release: &str) {
    kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "--ignore-not-found",
    ]);
}

fn kinds(manifests: &str) -> Vec<String> {
    manifests
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

/// The controller binary with the chart's ServiceAccount's permissions, nothing more.
fn controller_as(sa_ns: &str, sa: &str, dir: &Path, env: &[(&str, &str)]) -> ControllerProcess {
    let kubeconfig = dir.join("impersonated.kubeconfig");
    impersonating_kubeconfig(
        &format!("system:serviceaccount:{sa_ns}:{sa}"),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{sa_ns}"),
            "system:authenticated",
        ],
        &kubeconfig,
    );
    let kc = kubeconfig.display().to_string();
    let mut all = vec![("KUBECONFIG", kc.as_str())];
    all.extend_from_slice(env);
    ControllerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_cognito-unauth-controller")),
        &dir.join("controller.log"),
        &all,
    )
}

async fn cuc_ready(ns: &TestNs, pool: &str) {
    kubectl_apply(&cuc_manifest(&ns.name, "app", pool));
    wait_ready(&ns.name, "app", 60);
    let s = ns.api::<Secret>().get("app").await.expect("the Secret");
    assert!(s.data.is_some_and(|d| d.contains_key("AWS_SESSION_TOKEN")));
}

#[test]
fn chart_lints_and_its_schema_rejects_bad_values() {
    let out = helm_cmd(&["lint", CHART, "--strict"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = helm_cmd(&[
        "lint",
        CHART,
        "--strict",
        "--set",
        "watchNamespaces={a,b}",
        "--set",
        "replicaCount=2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The Prometheus Operator objects render (their CRDs are not on the test bed).
    let monitoring = template(
        "x",
        "default",
        &["serviceMonitor.enabled=true", "prometheusRule.enabled=true"],
    )
    .expect("render");
    let k = kinds(&monitoring);
    assert!(
        k.iter().any(|x| x == "ServiceMonitor") && k.iter().any(|x| x == "PrometheusRule"),
        "{k:?}"
    );
    assert!(monitoring.contains(
        "cognito_unauth_controller_credential_expiration_timestamp_seconds - time() < 600"
    ));
    assert!(
        monitoring.contains(
            "cognito_unauth_controller_credential_ready_status{condition=\"False\"} == 1"
        )
    );

    let bad = [
        "replicaCount=-1",
        "logFormat=xml",
        "image.pullPolicy=Sometimes",
        "watchNamespaces[0]=Not_A_Namespace",
        "metrics.port=70000",
        "cognito.endpointUrl=ftp://x",
        "rolloutRestart.enabled=maybe",
        "rolloutRestart.verbs={update}",
        "unknownKey=1",
        "extraEnv[0].value=no-name",
        "extraEnv[0].name=X,extraEnv[0].nonsense=1",
        "extraEnv[0].name=X,extraEnv[0].value=1,extraEnv[0].valueFrom.fieldRef.fieldPath=x",
        "image.digest=latest",
        "rbac.create=maybe",
        "rbac.aggregateToAdmin=true",
        "cognito.getIdRatePerSecond=0",
        "sts.endpointUrl=ftp://x",
        "podSecurityContext.runAsUsr=1",
        "securityContext.privilegd=true",
        "strategy.type=Sometimes",
        "extraArgs[0]=",
        "extraVolumeMounts[0].name=x",
        "podDisruptionBudget.minAvailable=101%",
    ];
    for b in bad {
        let err = template("x", "default", &[b]).expect_err(b);
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{b}: {err}"
        );
    }

    // extraEnv: EnvVar objects appended to the controller container's environment.
    let rendered = template(
        "x",
        "default",
        &[
            "extraEnv[0].name=AWS_ENDPOINT_URL_STS,extraEnv[0].value=http://sts.example:8080",
            "extraEnv[1].name=NODE,extraEnv[1].valueFrom.fieldRef.fieldPath=spec.nodeName",
        ],
    )
    .expect("render");
    let deployment = documents(&rendered)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the Deployment");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let env = env.as_array().expect("env");
    assert_eq!(
        env[env.len() - 2..],
        [
            json!({"name": "AWS_ENDPOINT_URL_STS", "value": "http://sts.example:8080"}),
            json!({"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}),
        ]
    );
}

/// `rolloutRestart.enabled` adds exactly one rule, `patch` on the three apps workload
/// kinds, to the controller's role in each mode (the ClusterRole, or the Role in each
/// watched namespace) and changes nothing else; off, the default, no role names apps.
#[test]
fn rollout_restart_rbac_is_opt_in_and_patch_only() {
    let want = json!({
        "apiGroups": ["apps"],
        "resources": ["deployments", "statefulsets", "daemonsets"],
        "verbs": ["patch"],
    });
    let modes: [(&[&str], usize); 2] = [(&[], 1), (&["watchNamespaces={a,b}"], 2)];
    for (mode, controller_roles) in modes {
        let render = |extra: &str| {
            // Two replicas: the leader-election Role is rendered too (and must not change).
            let mut sets = vec!["replicaCount=2"];
            sets.extend_from_slice(mode);
            if !extra.is_empty() {
                sets.push(extra);
            }
            roles(&template("x", "default", &sets).expect("render"))
        };
        let default = render("");
        let off = render("rolloutRestart.enabled=false");
        let on = render("rolloutRestart.enabled=true");
        assert_eq!(default, off, "{mode:?}: off is the default");
        assert_eq!(off.len(), controller_roles + 1, "{mode:?}: {off:?}");
        for role in &off {
            for rule in role["rules"].as_array().expect("rules") {
                assert!(
                    !rule["apiGroups"]
                        .as_array()
                        .expect("apiGroups")
                        .contains(&json!("apps")),
                    "{mode:?}: an apps rule with rolloutRestart off: {role}"
                );
            }
        }
        assert_eq!(on.len(), off.len(), "{mode:?}");
        let mut gained = 0;
        for (before, after) in off.iter().zip(&on) {
            assert_eq!(before["metadata"], after["metadata"], "{mode:?}");
            let (b, a) = (
                before["rules"].as_array().expect("rules"),
                after["rules"].as_array().expect("rules"),
            );
            if a == b {
                let name = after["metadata"]["name"].as_str().expect("name");
                assert!(name.ends_with("-leader-election"), "{mode:?}: {name}");
                continue;
            }
            assert_eq!(&a[..b.len()], &b[..], "{mode:?}: other rules changed");
            assert_eq!(
                &a[b.len()..],
                std::slice::from_ref(&want),
                "{mode:?}: {after}"
            );
            gained += 1;
        }
        assert_eq!(gained, controller_roles, "{mode:?}: {on:?}");
    }
}

#[tokio::test]
async fn cluster_mode_rbac_is_enough_for_the_whole_flow() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("chart-cluster").await;
    let release = format!("c{}", rand_suffix());
    let rendered = template(
        &release,
        &ns.name,
        &[
            "replicaCount=2",
            "podDisruptionBudget.enabled=true",
            "networkPolicy.enabled=true",
        ],
    )
    .expect("render");
    let k = kinds(&rendered);
    for want in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
    }
    assert!(
        rendered.contains("readOnlyRootFilesystem: true")
            && rendered.contains("runAsNonRoot: true")
    );
    assert!(
        rendered.contains("name: LEADER_ELECT\n              value: \"true\""),
        "replicas > 1 must turn leader election on"
    );
    assert!(rendered.contains("helm.sh/resource-policy: keep"));
    // Pod Security "restricted" enforced on the release namespace: the API server warns
    // about any workload whose pods would violate it.
    kubectl(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let warnings = kubectl_apply(&rendered);
    assert!(
        !warnings.contains("PodSecurity"),
        "the chart's pods are not restricted-compliant: {warnings}"
    );

    let dir = test_dir(&ns.name);
    let sa = format!("{release}-cognito-unauth-controller");
    let child = controller_as(
        &ns.name,
        &sa,
        &dir,
        &[
            ("WATCH_NAMESPACES", &ns.name),
            ("LEADER_ELECT", "true"),
            ("LEADER_ELECTION_NAMESPACE", &ns.name),
            ("LEADER_ELECTION_LEASE_NAME", &sa),
            ("POD_NAME", "chart-replica"),
        ],
    );
    cuc_ready(&ns, &pool).await;
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );
    let lease = kubectl(&[
        "-n",
        &ns.name,
        "get",
        "lease",
        &sa,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, "chart-replica");
    assert!(child.terminate().success());
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the chart's RBAC fell short:\n{log}"
    );
    // Cluster-scoped objects of this release go with it.
    delete_cluster_rbac(&release);
    ns.cleanup().await;
}

#[tokio::test]
async fn namespaced_mode_works_in_its_namespace_and_is_refused_elsewhere() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("chart-ns").await;
    let other = TestNs::new("chart-other").await;
    let release = format!("n{}", rand_suffix());
    let rendered = namespaced_template(&release, &ns.name, &[]);
    // The only cluster-scoped RBAC: the aggregated ClusterRoles, bound to no one.
    let cluster: Vec<_> = documents(&rendered)
        .into_iter()
        .filter(|d| d["kind"].as_str().is_some_and(|k| k.starts_with("Cluster")))
        .collect();
    assert!(
        cluster
            .iter()
            .all(|d| d["kind"] == "ClusterRole" && aggregated(d)),
        "namespaced mode must not grant the controller anything cluster-wide: {cluster:?}"
    );
    assert!(
        !kinds(&rendered)
            .iter()
            .any(|x| x == "CustomResourceDefinition"),
        "crds.install=false"
    );
    kubectl_apply(&rendered);

    let dir = test_dir(&ns.name);
    let sa = format!("{release}-cognito-unauth-controller");
    let child = controller_as(&ns.name, &sa, &dir, &[("WATCH_NAMESPACES", &ns.name)]);
    cuc_ready(&ns, &pool).await;
    assert!(child.terminate().success());

    // The same identity is refused Secrets in any other namespace, by the API server.
    let client = client_from(&dir.join("impersonated.kubeconfig")).await;
    let theirs: Api<Secret> = Api::namespaced(client.clone(), &other.name);
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    for (what, r) in [
        (
            "list",
            theirs.list(&ListParams::default()).await.map(|_| ()),
        ),
        ("get", theirs.get("x").await.map(|_| ())),
        (
            "create",
            theirs.create(&PostParams::default(), &s).await.map(|_| ()),
        ),
    ] {
        match r {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{what}: {e:?}"),
            other => panic!("{what} in another namespace was not refused: {other:?}"),
        }
    }
    let all: Api<Namespace> = Api::all(client);
    assert!(
        matches!(all.list(&ListParams::default()).await, Err(kube::Error::Api(e)) if e.code == 403)
    );
    delete_cluster_rbac(&release);
    ns.cleanup().await;
    other.cleanup().await;
}

/// One of each kind the controller can roll, for spec.rolloutRestartTargets. Pods never
/// run on the test bed; the pod templates are what a restart changes.
const TARGETS: [(&str, &str); 3] = [
    ("Deployment", "web"),
    ("StatefulSet", "db"),
    ("DaemonSet", "agent"),
];

fn target_manifests(ns: &str) -> String {
    // The test bed's node runs these pods: `Never` keeps the kubelet from ever pulling.
    TARGETS
        .iter()
        .map(|(kind, name)| {
            format!(
                "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: c, image: registry.invalid/{name}, imagePullPolicy: Never}}]}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The resource `name` for `pool`, rolling every target in [`TARGETS`] and `extra`.
fn cuc_with_targets(
    ns: &str,
    name: &str,
    pool: &str,
    secret_name: Option<&str>,
    extra: &[(&str, &str)],
) -> String {
    let mut m = cuc_manifest(ns, name, pool);
    if let Some(s) = secret_name {
        m.push_str(&format!("  secretName: {s}\n"));
    }
    m.push_str("  rolloutRestartTargets:\n");
    for (kind, target) in TARGETS.iter().chain(extra) {
        m.push_str(&format!("  - {{kind: {kind}, name: {target}}}\n"));
    }
    m
}

/// `kubectl -n ns wait ARGS --timeout=Ns`: whether the condition was met in time.
fn waited(ns: &str, args: &[&str], seconds: u32) -> bool {
    Command::new("kubectl")
        .args(["-n", ns, "wait"])
        .args(args)
        .arg(format!("--timeout={seconds}s"))
        .envs(testbed().env())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The reason of the RolloutRestart condition of `cuc/name` (empty when there is none).
fn restart_reason(ns: &str, name: &str) -> String {
    kubectl(&[
        "-n",
        ns,
        "get",
        &format!("cuc/{name}"),
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"RolloutRestart\")].reason}",
    ])
}

/// Waits (at most `seconds`) for the RolloutRestart condition of `cuc/name` to say `reason`.
fn wait_restart_reason(ns: &str, name: &str, reason: &str, seconds: u32) -> bool {
    waited(
        ns,
        &[
            &format!(
                "--for=jsonpath={{.status.conditions[?(@.type==\"RolloutRestart\")].reason}}={reason}"
            ),
            &format!("cuc/{name}"),
        ],
        seconds,
    )
}

/// The `cognito.kubecred.io/restartedAt` annotation on each target's pod template.
fn target_stamps(ns: &str) -> Vec<String> {
    TARGETS
        .iter()
        .map(|(kind, name)| {
            kubectl(&[
                "-n",
                ns,
                "get",
                &format!("{kind}/{name}"),
                "-o",
                "jsonpath={.spec.template.metadata.annotations.cognito\\.kubecred\\.io/restartedAt}",
            ])
        })
        .collect()
}

/// What one run of [`flow_as`] came to.
#[derive(Debug)]
struct Flow {
    /// Every step completed and nothing was refused (in the log).
    clean: bool,
    /// The RolloutRestart condition's reason after the forced rotation, if it got there.
    restart_reason: Option<String>,
    /// `series.count` of each RolloutRestartFailed event at the end.
    restart_failed_series: Vec<String>,
}

/// One run of the full flow as `sa`, leader election on: issue; force a rotation, which
/// rolls every kind of rollout-restart target and reports a missing one; rename the
/// Secret (the old one is deleted), a rotation that rolls again and reports the missing
/// target with the same note, so that Warning extends its event series (a patch).
fn flow_as(ns: &str, sa: &str, pool: &str) -> Flow {
    let dir = test_dir(ns);
    let child = controller_as(
        ns,
        sa,
        &dir,
        &[
            ("WATCH_NAMESPACES", ns),
            ("LEADER_ELECT", "true"),
            ("LEADER_ELECTION_NAMESPACE", ns),
            ("LEADER_ELECTION_LEASE_NAME", sa),
            ("POD_NAME", "minimality"),
        ],
    );
    let name = "app";
    let missing = [("Deployment", "gone")];
    kubectl_apply(&target_manifests(ns));
    kubectl_apply(&cuc_with_targets(ns, name, pool, None, &missing));
    let cuc = format!("cuc/{name}");
    let mut completed = waited(ns, &["--for=condition=Ready", &cuc], 12);
    let mut reason = None;
    if completed {
        kubectl(&[
            "-n",
            ns,
            "annotate",
            &cuc,
            "cognito.kubecred.io/force-rotate=1",
        ]);
        completed = waited(
            ns,
            &[
                "--for=jsonpath={.metadata.annotations.cognito\\.kubecred\\.io/force-rotate}=1",
                &format!("secret/{name}"),
            ],
            12,
        );
        if completed {
            // New credentials: the targets are rolled, the missing one is reported.
            let rolled = wait_restart_reason(ns, name, "TargetNotFound", 12);
            reason = Some(restart_reason(ns, name));
            completed = rolled && target_stamps(ns).iter().all(|s| !s.is_empty());
        }
        let renamed = format!("{name}-renamed");
        kubectl_apply(&cuc_with_targets(ns, name, pool, Some(&renamed), &missing));
        completed &= waited(ns, &["--for=delete", &format!("secret/{name}")], 12);
        // The rename's rotation is rolled out (its events published) once status says so.
        let issued = kubectl(&[
            "-n",
            ns,
            "get",
            &format!("secret/{renamed}"),
            "-o",
            "jsonpath={.metadata.annotations.cognito\\.kubecred\\.io/issued-at}",
            "--ignore-not-found",
        ]);
        completed &= !issued.is_empty()
            && waited(
                ns,
                &[
                    &format!(
                        "--for=jsonpath={{.status.rolloutRestart.credentialsIssuedAt}}={issued}"
                    ),
                    &cuc,
                ],
                12,
            );
    }
    // Exit status aside: without its Lease permissions the controller exits with an error.
    let _ = child.terminate();
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    let series = kubectl(&[
        "-n",
        ns,
        "get",
        "events.v1.events.k8s.io",
        "-o",
        "jsonpath={range .items[?(@.reason==\"RolloutRestartFailed\")]}{.series.count}{\"\\n\"}{end}",
    ]);
    Flow {
        clean: completed && !log.contains("forbidden") && !log.contains("Forbidden"),
        restart_reason: reason,
        restart_failed_series: series.lines().map(str::to_string).collect(),
    }
}

/// The chart's RBAC is the minimum: with all of it the flow runs clean; with any single
/// verb on any single resource removed, the API server refuses something the controller
/// does. With rolloutRestart.enabled, so the rollout-restart patch is counted too: without
/// it on a kind, the rotation's restart comes back Forbidden.
#[tokio::test]
async fn every_verb_in_the_chart_rbac_is_needed() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("minimal-rbac").await;
    let release = format!("m{}", rand_suffix());
    let rendered = namespaced_template(
        &release,
        &ns.name,
        &["replicaCount=2", "rolloutRestart.enabled=true"],
    );
    // One rule per resource (the same grants), so a verb is removed from one resource.
    let docs: Vec<serde_json::Value> = roles(&rendered)
        .into_iter()
        .map(|mut role| {
            let rules: Vec<serde_json::Value> = role["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .flat_map(|rule| {
                    rule["resources"]
                        .as_array()
                        .expect("resources")
                        .iter()
                        .map(|r| {
                            let mut one = rule.clone();
                            one["resources"] = json!([r]);
                            one
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            role["rules"] = json!(rules);
            role
        })
        .collect();
    // (role name, rule index, verb) for every verb the chart grants.
    let mut grants = vec![];
    for role in &docs {
        for (i, rule) in role["rules"].as_array().expect("rules").iter().enumerate() {
            for verb in rule["verbs"].as_array().expect("verbs") {
                grants.push((role.clone(), i, verb.as_str().expect("verb").to_string()));
            }
        }
    }
    assert!(grants.len() >= 17, "{grants:?}");

    // Each variant in a namespace of its own (a controller acts on its whole namespace),
    // with a ServiceAccount bound to the chart's Roles less one verb.
    let variant = |ns: &str, skip: Option<(&serde_json::Value, usize, &str)>| {
        let mut out = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: controller, namespace: {ns}}}\n"
        );
        for role in &docs {
            let mut role = role.clone();
            if let Some((r, i, verb)) = skip
                && r["metadata"]["name"] == role["metadata"]["name"]
            {
                role["rules"][i]["verbs"]
                    .as_array_mut()
                    .expect("verbs")
                    .retain(|v| v != verb);
                // A rule left with no verb is not a valid rule: drop it.
                role["rules"]
                    .as_array_mut()
                    .expect("rules")
                    .retain(|r| r["verbs"].as_array().is_some_and(|v| !v.is_empty()));
            }
            let name = role["metadata"]["name"].as_str().expect("name").to_string();
            role["metadata"]["namespace"] = json!(ns);
            out.push_str("---\n");
            out.push_str(&serde_json::to_string(&role).expect("json"));
            out.push_str(&format!(
                "\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\nsubjects: [{{kind: ServiceAccount, name: controller, namespace: {ns}}}]\n"
            ));
        }
        out
    };
    kubectl_apply(&variant(&ns.name, None));
    let (n, p) = (ns.name.clone(), pool.clone());
    let full = tokio::task::spawn_blocking(move || flow_as(&n, "controller", &p))
        .await
        .expect("flow");
    assert!(
        full.clean,
        "the chart's full RBAC was refused something: {full:?}"
    );
    assert_eq!(full.restart_reason.as_deref(), Some("TargetNotFound"));
    // The repeated Warning is one event with a series of two: the flow needs `patch events`.
    assert_eq!(full.restart_failed_series, ["2"], "{full:?}");

    let mut spaces = vec![];
    let mut labels = vec![];
    for (role, i, verb) in &grants {
        let vns = TestNs::new("minus").await;
        kubectl_apply(&variant(&vns.name, Some((role, *i, verb))));
        let rule = &role["rules"][*i];
        let resource = rule["resources"][0].as_str().unwrap_or_default();
        labels.push((format!("{verb} {resource}"), rule["apiGroups"][0] == "apps"));
        spaces.push(vns);
    }
    assert_eq!(
        labels.iter().filter(|(_, apps)| *apps).count(),
        3,
        "{labels:?}"
    );
    // Blocking runs (processes, kubectl wait) side by side on the blocking pool.
    let results: Vec<Flow> = futures::future::join_all(spaces.iter().map(|vns| {
        let (n, p) = (vns.name.clone(), pool.clone());
        tokio::task::spawn_blocking(move || flow_as(&n, "controller", &p))
    }))
    .await
    .into_iter()
    .map(|r| r.expect("flow"))
    .collect();
    let unneeded: Vec<_> = labels
        .iter()
        .zip(&results)
        .filter(|(_, flow)| flow.clean)
        .map(|((l, _), _)| l.clone())
        .collect();
    assert!(
        unneeded.is_empty(),
        "verbs the flow never needed: {unneeded:?}"
    );
    // Without patch on one kind, that target's restart is refused, and said so.
    for ((label, apps), flow) in labels.iter().zip(&results) {
        if *apps {
            assert_eq!(
                flow.restart_reason.as_deref(),
                Some("Forbidden"),
                "{label}: {flow:?}"
            );
        }
    }
    for vns in spaces {
        vns.cleanup().await;
    }
    ns.cleanup().await;
}

/// With the chart's default (rolloutRestart.enabled=false) a rotation cannot roll the
/// targets: RolloutRestart=False, reason Forbidden, a Warning event that names the value,
/// no workload touched. With the value turned on for the release, the next rotation
/// rolls every target, and the deployment controller makes the Deployment a new
/// ReplicaSet.
#[tokio::test]
async fn rollout_restart_targets_need_the_chart_value() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("chart-restart").await;
    testbed_support::install_crd();
    let release = format!("r{}", rand_suffix());
    let render = |enabled: bool| {
        namespaced_template(
            &release,
            &ns.name,
            &[&format!("rolloutRestart.enabled={enabled}")],
        )
    };
    kubectl_apply(&render(false));
    let dir = test_dir(&ns.name);
    let sa = format!("{release}-cognito-unauth-controller");
    // Two forced rotations a few seconds apart: no minimum interval between them.
    let child = controller_as(
        &ns.name,
        &sa,
        &dir,
        &[
            ("WATCH_NAMESPACES", &ns.name),
            ("FORCE_ROTATE_MIN_INTERVAL_SECONDS", "0"),
        ],
    );
    kubectl_apply(&target_manifests(&ns.name));
    kubectl_apply(&cuc_with_targets(&ns.name, "app", &pool, None, &[]));
    wait_ready(&ns.name, "app", 60);
    // The first issue rolls nothing: the targets start with these credentials.
    assert!(wait_restart_reason(
        &ns.name,
        "app",
        "NoRotationSinceTargetsSet",
        30
    ));

    kubectl(&[
        "-n",
        &ns.name,
        "annotate",
        "cuc/app",
        "cognito.kubecred.io/force-rotate=1",
    ]);
    assert!(
        wait_restart_reason(&ns.name, "app", "Forbidden", 30),
        "RolloutRestart reason: {:?}",
        restart_reason(&ns.name, "app")
    );
    let status = kubectl(&[
        "-n",
        &ns.name,
        "get",
        "cuc/app",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"RolloutRestart\")].status}",
    ]);
    assert_eq!(status, "False");
    // The event is published before the status that reports it.
    let events = ns
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("events");
    let failed: Vec<&Event> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RolloutRestartFailed"))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].type_.as_deref(), Some("Warning"));
    let note = failed[0].note.as_deref().unwrap_or_default();
    assert!(note.contains("rolloutRestart.enabled"), "{note}");
    assert!(
        target_stamps(&ns.name).iter().all(String::is_empty),
        "a target was rolled without the permission"
    );
    let before = deployment_observed(ns.api(), "web", 1).await;

    // Turn the value on for the release; the next rotation rolls every target. (The
    // refused restart is also retried within a minute; the timeout allows for that.)
    kubectl_apply(&render(true));
    kubectl(&[
        "-n",
        &ns.name,
        "annotate",
        "--overwrite",
        "cuc/app",
        "cognito.kubecred.io/force-rotate=2",
    ]);
    assert!(
        wait_restart_reason(&ns.name, "app", "RolloutRestartTriggered", 90),
        "RolloutRestart reason: {:?}",
        restart_reason(&ns.name, "app")
    );
    let stamp = kubectl(&[
        "-n",
        &ns.name,
        "get",
        "cuc/app",
        "-o",
        "jsonpath={.status.rolloutRestart.restartedAt}",
    ]);
    assert!(!stamp.is_empty());
    assert_eq!(target_stamps(&ns.name), vec![stamp.clone(); TARGETS.len()]);

    // The deployment controller saw the new template and made it a ReplicaSet.
    let after = before.metadata.generation.expect("generation") + 1;
    let rolled = deployment_observed(ns.api(), "web", after).await;
    let stamps: Vec<String> = owned_replica_sets(&ns.client, &ns.name, &rolled)
        .await
        .iter()
        .map(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get("cognito.kubecred.io/restartedAt"))
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    // The template before, and the one of the last rotation. The refused restart of the
    // first forced rotation is retried (within a minute): when that retry lands after the
    // value is on and before the second rotation, it rolls once more. At most one roll
    // per rotation: 2 or 3 ReplicaSets (CI saw 3 on a busy machine).
    assert!(
        stamps.contains(&String::new()) && stamps.contains(&stamp),
        "no ReplicaSet for the template before, or for the restarted one: {stamps:?}"
    );
    assert!(
        (2..=3).contains(&stamps.len()),
        "one ReplicaSet before, one per restarted rotation: {stamps:?}"
    );
    assert!(child.terminate().success());
    delete_cluster_rbac(&release);
    ns.cleanup().await;
}

/// `helm ARGS`, expecting success; panics with its output otherwise.
fn helm_succeeds(args: &[&str]) {
    let out = helm_cmd(args);
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `helm install` arguments for `release` in `ns`, watching `ns`, with no pod at all
/// (replicaCount=0: what is at stake is Helm's ownership of the objects) and `extra`.
fn install_args(release: &str, ns: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "install",
        release,
        CHART,
        "--namespace",
        ns,
        "--set",
        "replicaCount=0",
        "--set",
        "image.pullPolicy=Never",
        "--set",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("watchNamespaces={{{ns}}}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The Helm release that owns the CRD (its `meta.helm.sh/release-name` annotation).
fn crd_owner() -> String {
    kubectl(&[
        "get",
        "crd",
        "cognitounauthcredentials.cognito.kubecred.io",
        "-o",
        "jsonpath={.metadata.annotations.meta\\.helm\\.sh/release-name}",
    ])
}

/// Two releases in one cluster: the first installs (and owns) the CRD; a second one with
/// `crds.install=true` is refused by Helm, because the CRD belongs to the first release;
/// with `crds.install=false` (README, "Installing on a cluster") it installs beside it,
/// their cluster-scoped objects apart (names from each release). Uninstalling both keeps
/// the CRD (`crds.keep`).
#[tokio::test]
async fn a_second_release_installs_beside_the_first_with_crds_install_false() {
    let first_ns = TestNs::new("chart-first").await;
    let second_ns = TestNs::new("chart-second").await;
    let (first, second) = (format!("f{}", rand_suffix()), format!("s{}", rand_suffix()));
    // The CRD may exist already (other tests apply crds/): the first release takes it over.
    let args = install_args(&first, &first_ns.name, &["--take-ownership"]);
    helm_succeeds(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(crd_owner(), first);

    let args = install_args(&second, &second_ns.name, &[]);
    let out = helm_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cognitounauthcredentials.cognito.kubecred.io"),
        "a second release with crds.install=true must be refused over the CRD: {err}"
    );
    // Nothing of it was kept (the failed install, if recorded, goes).
    helm_succeeds(&[
        "uninstall",
        &second,
        "--namespace",
        &second_ns.name,
        "--ignore-not-found",
    ]);

    let args = install_args(&second, &second_ns.name, &["--set", "crds.install=false"]);
    helm_succeeds(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for (release, ns) in [(&first, &first_ns.name), (&second, &second_ns.name)] {
        let status = helm_cmd(&["status", release, "--namespace", ns, "-o", "json"]);
        let status: serde_json::Value =
            serde_json::from_slice(&status.stdout).expect("helm status -o json");
        assert_eq!(status["info"]["status"], "deployed", "{release}: {status}");
        // Each release's own Role in its own namespace.
        kubectl(&[
            "-n",
            ns,
            "get",
            "role,rolebinding",
            &format!("{release}-cognito-unauth-controller"),
        ]);
    }
    assert_eq!(
        crd_owner(),
        first,
        "the second release must leave the CRD alone"
    );

    for (release, ns) in [(&second, &second_ns.name), (&first, &first_ns.name)] {
        helm_succeeds(&["uninstall", release, "--namespace", ns, "--wait"]);
    }
    kubectl(&["get", "crd", "cognitounauthcredentials.cognito.kubecred.io"]);
    for release in [&first, &second] {
        delete_cluster_rbac(release);
    }
    first_ns.cleanup().await;
    second_ns.cleanup().await;
}

/// `kubectl auth can-i VERB cognitounauthcredentials -n NS --as USER`.
fn can_i(user: &str, verb: &str, ns: &str) -> bool {
    let out = Command::new("kubectl")
        .args([
            "auth",
            "can-i",
            verb,
            "cognitounauthcredentials.cognito.kubecred.io",
            "-n",
            ns,
            "--as",
            user,
        ])
        .envs(testbed().env())
        .output()
        .expect("run kubectl auth can-i");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// rbac.aggregateToView/Edit: a namespace user bound to the built-in `edit` ClusterRole
/// can create, change and delete CognitoUnauthCredentials there; one bound to `view` can
/// get, list and watch them and nothing more. The kube-controller-manager's ClusterRole
/// aggregation controller copies the chart's rules into the built-in roles, a moment
/// after they are applied.
#[tokio::test]
async fn namespace_users_manage_resources_through_the_built_in_roles() {
    testbed_support::install_crd();
    let ns = TestNs::new("chart-aggregate").await;
    let release = format!("a{}", rand_suffix());
    let rendered = namespaced_template(&release, &ns.name, &["replicaCount=0"]);
    kubectl_apply(&rendered);
    let (editor, viewer) = (format!("editor-{}", ns.name), format!("viewer-{}", ns.name));
    kubectl_apply(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: editor, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}
subjects: [{{kind: User, name: {editor}, apiGroup: rbac.authorization.k8s.io}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: viewer, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}
subjects: [{{kind: User, name: {viewer}, apiGroup: rbac.authorization.k8s.io}}]
"#,
        ns = ns.name
    ));
    eventually(
        Duration::from_secs(30),
        "the built-in edit and view roles to aggregate the chart's rules",
        || async {
            (can_i(&editor, "create", &ns.name) && can_i(&viewer, "list", &ns.name)).then_some(())
        },
    )
    .await;
    let write = ["create", "update", "patch", "delete", "deletecollection"];
    for verb in ["get", "list", "watch"] {
        assert!(can_i(&editor, verb, &ns.name), "edit: {verb}");
        assert!(can_i(&viewer, verb, &ns.name), "view: {verb}");
    }
    for verb in write {
        assert!(can_i(&editor, verb, &ns.name), "edit: {verb}");
        assert!(!can_i(&viewer, verb, &ns.name), "view must not {verb}");
    }

    // For real, impersonated: the editor creates one, the viewer reads it and may not
    // delete it, the editor deletes it.
    let manifest = cuc_manifest(
        &ns.name,
        "app",
        "us-east-1:0a1b2c3d-1111-2222-3333-444455556666",
    );
    let created = kubectl_stdin(&["--as", &editor, "apply", "-f", "-"], &manifest);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    kubectl(&["--as", &viewer, "-n", &ns.name, "get", "cuc", "app"]);
    let refused = kubectl_stdin(
        &["--as", &viewer, "-n", &ns.name, "delete", "cuc", "app"],
        "",
    );
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("forbidden"),
        "view deleted a resource: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    kubectl(&["--as", &editor, "-n", &ns.name, "delete", "cuc", "app"]);

    delete_cluster_rbac(&release);
    ns.cleanup().await;
}

/// With watchNamespaces the webhook reads through a Role in each watched namespace and is
/// called for those namespaces only; cluster-wide it may touch its own configuration
/// (caBundle), and with cert-manager's certificate nothing at all (issue 20).
#[test]
fn a_namespaced_webhook_reads_only_its_namespaces() {
    let release = "nw";
    let hook = "nw-cognito-unauth-controller-webhook";
    for (source, cluster_rules) in [
        (
            "self",
            vec![json!({
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": [format!("{hook}-rel")],
                "verbs": ["get", "list", "watch", "patch"],
            })],
        ),
        ("certManager", vec![]),
    ] {
        let source = format!("webhook.certificate.source={source}");
        let rendered = template(
            release,
            "rel",
            &[
                "watchNamespaces={team-a,team-b}",
                "crds.install=false",
                "webhook.enabled=true",
                &source,
            ],
        )
        .expect("render");
        let docs = documents(&rendered);
        let granted: Vec<serde_json::Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" && !aggregated(d))
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(granted, cluster_rules, "{source}: cluster-wide grants");
        let bound: Vec<&serde_json::Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding")
            .collect();
        assert_eq!(
            bound.len(),
            usize::from(!cluster_rules.is_empty()),
            "{source}"
        );
        for ns in ["team-a", "team-b"] {
            let role = docs
                .iter()
                .find(|d| {
                    d["kind"] == "Role"
                        && d["metadata"]["name"] == format!("{hook}-reader")
                        && d["metadata"]["namespace"] == ns
                })
                .unwrap_or_else(|| panic!("{source}: the webhook's Role in {ns}"));
            assert_eq!(
                role["rules"],
                json!([
                    {"apiGroups": ["cognito.kubecred.io"], "resources": ["cognitounauthcredentials"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list", "watch"]},
                ]),
                "{source}: {ns}"
            );
        }
        let mwc = docs
            .iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .expect("the configuration");
        for w in mwc["webhooks"].as_array().expect("webhooks") {
            let exprs = w["namespaceSelector"]["matchExpressions"]
                .as_array()
                .expect("matchExpressions");
            assert!(
                exprs.contains(&json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]})),
                "{source}: {} is called for other namespaces: {exprs:?}",
                w["name"]
            );
        }
        let env = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == hook)
            .map(|d| d["spec"]["template"]["spec"]["containers"][0]["env"].clone())
            .expect("the webhook's Deployment");
        assert!(
            env.as_array().is_some_and(
                |e| e.contains(&json!({"name": "WATCH_NAMESPACES", "value": "team-a,team-b"}))
            ),
            "{source}: {env}"
        );
    }
}
