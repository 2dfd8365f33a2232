//! The Helm chart on the real API server: lint, schema, server-side apply of the rendered
//! manifests in both modes, and the controller running with exactly the chart's RBAC
//! (impersonating the chart's ServiceAccount) through the whole credential flow.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use testbed_support::{
    ControllerProcess, Proxy, TestNs, client_from, cuc_manifest, helm, impersonating_kubeconfig,
    kubectl, kubectl_apply, rand_suffix, test_dir, testbed, wait_ready,
};

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/cognito-unauth-controller"
);

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
    let mut args = vec!["template", release, CHART, "--namespace", ns];
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
        "unknownKey=1",
    ];
    for b in bad {
        let err = template("x", "default", &[b]).expect_err(b);
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{b}: {err}"
        );
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
    kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        &sa,
        "--ignore-not-found",
    ]);
    ns.cleanup().await;
}

#[tokio::test]
async fn namespaced_mode_works_in_its_namespace_and_is_refused_elsewhere() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("chart-ns").await;
    let other = TestNs::new("chart-other").await;
    let release = format!("n{}", rand_suffix());
    let rendered = template(
        &release,
        &ns.name,
        &[
            &format!("watchNamespaces={{{}}}", ns.name),
            "crds.install=false",
        ],
    )
    .expect("render");
    let k = kinds(&rendered);
    assert!(
        !k.iter().any(|x| x.starts_with("Cluster")),
        "namespaced mode must not grant anything cluster-wide: {k:?}"
    );
    assert!(
        !k.iter().any(|x| x == "CustomResourceDefinition"),
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
    ns.cleanup().await;
    other.cleanup().await;
}

/// One run of the full flow as `sa`: issue, force a rotation (a second event of the same
/// reason is a patch), rename the Secret (the old one is deleted); leader election on.
/// Returns whether anything was refused (in the log) or the flow did not complete.
fn flow_as(ns: &str, sa: &str, pool: &str) -> bool {
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
    let name = "app".to_string();
    kubectl_apply(&cuc_manifest(ns, &name, pool));
    let wait = |what: &str| {
        Command::new("kubectl")
            .args([
                "-n",
                ns,
                "wait",
                what,
                &format!("cuc/{name}"),
                "--timeout=12s",
            ])
            .envs(testbed().env())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let mut completed = wait("--for=condition=Ready");
    if completed {
        kubectl(&[
            "-n",
            ns,
            "annotate",
            &format!("cuc/{name}"),
            "cognito.kubecred.io/force-rotate=1",
        ]);
        let rotated = Command::new("kubectl")
            .args([
                "-n",
                ns,
                "wait",
                "--for=jsonpath={.metadata.annotations.cognito\\.kubecred\\.io/force-rotate}=1",
                &format!("secret/{name}"),
                "--timeout=12s",
            ])
            .envs(testbed().env())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        completed = rotated;
        kubectl_apply(&format!(
            "{}  secretName: {name}-renamed\n",
            cuc_manifest(ns, &name, pool)
        ));
        let deleted = Command::new("kubectl")
            .args([
                "-n",
                ns,
                "wait",
                "--for=delete",
                &format!("secret/{name}"),
                "--timeout=12s",
            ])
            .envs(testbed().env())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        completed &= deleted;
    }
    // Exit status aside: without its Lease permissions the controller exits with an error.
    let _ = child.terminate();
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
    !completed || log.contains("forbidden") || log.contains("Forbidden")
}

/// The chart's RBAC is the minimum: with all of it the flow runs clean; with any single
/// verb removed, the API server refuses something the controller does.
#[tokio::test]
async fn every_verb_in_the_chart_rbac_is_needed() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("minimal-rbac").await;
    let release = format!("m{}", rand_suffix());
    let rendered = template(
        &release,
        &ns.name,
        &[
            &format!("watchNamespaces={{{}}}", ns.name),
            "replicaCount=2",
            "crds.install=false",
        ],
    )
    .expect("render");
    let docs: Vec<serde_json::Value> = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d["kind"] == "Role")
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
    assert!(grants.len() >= 14, "{grants:?}");

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
    assert!(!full, "the chart's full RBAC was refused something");

    let mut spaces = vec![];
    let mut labels = vec![];
    for (role, i, verb) in &grants {
        let vns = TestNs::new("minus").await;
        kubectl_apply(&variant(&vns.name, Some((role, *i, verb))));
        let resource = role["rules"][*i]["resources"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        labels.push(format!("{verb} {resource}"));
        spaces.push(vns);
    }
    // Blocking runs (processes, kubectl wait) side by side on the blocking pool.
    let results: Vec<bool> = futures::future::join_all(spaces.iter().map(|vns| {
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
        .filter(|(_, refused)| !**refused)
        .map(|(l, _)| l.clone())
        .collect();
    assert!(
        unneeded.is_empty(),
        "verbs the flow never needed: {unneeded:?}"
    );
    for vns in spaces {
        vns.cleanup().await;
    }
    ns.cleanup().await;
}
