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
    kubectl, kubectl_apply, rand_suffix, test_dir, testbed,
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
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=condition=Ready",
        "cuc/app",
        "--timeout=60s",
    ]);
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
