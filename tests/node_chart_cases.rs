//! Every case of the chart's `tests/cases/` installed on the test bed's node, not only
//! rendered (issue 20): `helm install --wait` with the case's values as they are, and
//! every pod of the release Ready; then `helm uninstall --wait`.
//!
//! What the bed adds to every case, and why (nothing else is changed):
//! - the emulator's endpoints (`cognito.endpointUrl`, `sts.endpointUrl`): this bed is not
//!   AWS, and no test sends a packet off the machine;
//! - `crds.install: false`: the bed's CRD is shared by every test running beside this one
//!   (tests/node_defaults.rs installs it through the chart, with `--take-ownership`);
//! - this tree's image (`localhost/cognito-unauth-controller:dev`, never pulled) for every
//!   case but `digest.yaml`, whose image is its point: its `repository@sha256:...` is
//!   this tree's image tagged so in the node's containerd for the test's length only.
//!   (Tagged under the chart's default name, it let the rendered Deployments of other
//!   tests start a second controller beside their own: CI saw it.)
//!
//! What a case needs that a user would bring is made first: the namespaces it watches,
//! the ServiceAccount it names, the RBAC of `rbac.create: false` (the chart's own, rendered
//! with `rbac.create: true`), the Prometheus Operator's kinds, a node label its affinity
//! requires. The one change for this bed: `webhook-host-network.yaml` runs one webhook
//! replica, as host-network pods of one Deployment cannot share one node's ports.
//!
//! The releases are installed side by side (the case whose `fullnameOverride` is the
//! other's full name after it). Their controllers watch every namespace and their
//! webhooks answer every annotated pod, so this test runs alone (testbed/tests.toml).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use testbed_support::{
    CHART, TestNs, helm_ok, helm_try, helm_uninstall, kubectl, kubectl_apply, kubectl_stdin,
    pod_ready, root, test_dir, testbed,
};

const LOCAL_IMAGE: &str = "localhost/cognito-unauth-controller:dev";
/// The image values of every case but digest.yaml.
const LOCAL_IMAGE_VALUES: &str =
    "image: {repository: localhost/cognito-unauth-controller, tag: dev, pullPolicy: Never}\n";

/// Removes the node's by-digest name of the image when the test ends, failed or not.
struct Untag(String);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source testbed/lib.sh >/dev/null && source testbed/node.sh && ctr_node images rm {} 2>/dev/null",
                self.0
            ))
            .current_dir(root())
            .output();
    }
}

/// What the test leaves in the cluster, removed when it ends, passed or failed: a failed
/// case must not leave ten releases whose controllers and webhooks act on every
/// namespace while the tests after this one run. Nothing here panics.
#[derive(Default)]
struct Leftovers {
    /// (release, namespace) of every release that may be installed.
    releases: Vec<(&'static str, String)>,
    /// Manifests applied for the cases (RBAC of `rbac.create: false`, the monitoring CRDs).
    manifests: Vec<String>,
    /// The node the cases' affinity label was put on.
    node: Option<String>,
    /// Namespaces made for the cases.
    namespaces: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for (release, ns) in &self.releases {
                s.spawn(move || {
                    helm_try(&[
                        "uninstall",
                        release,
                        "--namespace",
                        ns,
                        "--ignore-not-found",
                        "--wait",
                        "--timeout",
                        "120s",
                    ])
                });
            }
        });
        for doc in &self.manifests {
            let _ = kubectl_stdin(&["delete", "--ignore-not-found", "-f", "-"], doc);
        }
        if let Some(node) = &self.node {
            let _ = kubectl_stdin(
                &["label", "node", node, "node-role.example.com/system-"],
                "",
            );
        }
        for ns in &self.namespaces {
            let _ = kubectl_stdin(
                &[
                    "delete",
                    "namespace",
                    ns,
                    "--ignore-not-found",
                    "--wait=false",
                ],
                "",
            );
        }
    }
}

/// How one case is installed here.
struct Case {
    /// The file under the chart's tests/cases/.
    file: &'static str,
    /// The release name (the golden files' `cuc` where the case depends on it).
    release: &'static str,
    /// Values the bed adds to the case (beyond the endpoints and `crds.install`).
    overlay: &'static str,
    /// Namespaces the case names, made first.
    namespaces: &'static [&'static str],
    /// Pods of the release once installed: the controller's and the webhook's.
    pods: usize,
}

const CASES: &[Case] = &[
    Case {
        file: "defaults.yaml",
        release: "c-defaults",
        overlay: "",
        namespaces: &[],
        pods: 3,
    },
    Case {
        file: "ha-pdb.yaml",
        release: "c-ha",
        overlay: "",
        namespaces: &[],
        pods: 4,
    },
    Case {
        // Its extraVolumes name the ConfigMap `cuc-proxy-ca`: the release is `cuc`.
        file: "hatches.yaml",
        release: "cuc",
        overlay: "",
        namespaces: &[],
        pods: 3,
    },
    Case {
        file: "monitoring.yaml",
        release: "c-monitoring",
        overlay: "",
        namespaces: &[],
        pods: 3,
    },
    Case {
        file: "namespaced.yaml",
        release: "c-namespaced",
        overlay: "",
        namespaces: &["team-a", "team-b"],
        pods: 3,
    },
    Case {
        file: "openshift.yaml",
        release: "c-openshift",
        overlay: "",
        namespaces: &[],
        pods: 3,
    },
    Case {
        file: "rbac-off.yaml",
        release: "c-rbac-off",
        overlay: "",
        namespaces: &[],
        pods: 3,
    },
    Case {
        file: "second-release.yaml",
        release: "c-second",
        overlay: "",
        namespaces: &["team-c"],
        pods: 3,
    },
    Case {
        file: "webhook-host-network.yaml",
        release: "c-host",
        overlay: "webhook: {replicaCount: 1}\n",
        namespaces: &[],
        pods: 2,
    },
    // After hatches: its fullnameOverride `cuc` is hatches' full name.
    Case {
        file: "digest.yaml",
        release: "c-digest",
        overlay: "",
        namespaces: &[],
        pods: 3,
    },
];

fn cases_dir() -> PathBuf {
    Path::new(CHART).join("tests/cases")
}

/// The Prometheus Operator's two kinds the monitoring case installs, as bare CRDs.
fn monitoring_crds() -> String {
    ["ServiceMonitor", "PrometheusRule"]
        .iter()
        .map(|kind| {
            let plural = format!("{}s", kind.to_lowercase());
            json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
                "spec": {
                    "group": "monitoring.coreos.com", "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
                },
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The chart's own RBAC for a release of `case` in `ns`, as a user of `rbac.create: false`
/// brings it: `helm template` with `rbac.create: true`, its RBAC objects only.
fn rbac_of(case: &Path, release: &str, ns: &str) -> String {
    let rendered = helm_ok(&[
        "template",
        release,
        CHART,
        "--namespace",
        ns,
        "--values",
        &case.display().to_string(),
        "--set",
        "rbac.create=true",
    ]);
    let kinds = ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"];
    let docs: Vec<String> = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| d["kind"].as_str().is_some_and(|k| kinds.contains(&k)))
        .map(|d| d.to_string())
        .collect();
    assert!(!docs.is_empty(), "the chart renders no RBAC");
    docs.join("\n---\n")
}

#[tokio::test]
async fn every_chart_case_installs_on_the_node() {
    // Every case has a plan here.
    let on_disk: BTreeSet<String> = std::fs::read_dir(cases_dir())
        .expect("the chart's tests/cases")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let planned: BTreeSet<String> = CASES.iter().map(|c| c.file.to_string()).collect();
    assert_eq!(on_disk, planned, "a chart case without a plan here");

    let endpoint = testbed()
        .in_cluster_endpoint
        .clone()
        .expect("IN_CLUSTER_AWS_ENDPOINT_URL: the test bed has no node");
    // The images the cases name, in the node's containerd.
    let digest_case = std::fs::read_to_string(cases_dir().join("digest.yaml")).expect("digest");
    let digest_values: Value = serde_yaml::from_str(&digest_case).expect("digest.yaml");
    let by_digest = format!(
        "{}@{}",
        digest_values["image"]["repository"]
            .as_str()
            .expect("repository"),
        digest_values["image"]["digest"].as_str().expect("digest")
    );
    testbed_support::node_sh(&format!(
        "ctr_node images tag --force {LOCAL_IMAGE} {by_digest} 2>/dev/null"
    ));
    let _untag = Untag(by_digest.clone());

    // The CRD the releases do not install: on a bed where no other test ran yet, it is
    // not there, and every controller and webhook would wait for it until `--wait` ends.
    testbed_support::install_crd();
    let mut leftovers = Leftovers::default();
    // What the cases need that a user would bring.
    let crds = monitoring_crds();
    leftovers.manifests.push(crds.clone());
    kubectl_apply(&crds);
    // The bed's one node (testbed/lib.sh's NODE_NAME).
    let node = std::env::var("NODE_NAME").unwrap_or_else(|_| "testbed-node".into());
    leftovers.node = Some(node.clone());
    kubectl(&[
        "label",
        "node",
        &node,
        "node-role.example.com/system=",
        "--overwrite",
    ]);
    let fixed: Vec<&str> = CASES
        .iter()
        .flat_map(|c| c.namespaces.iter().copied())
        .collect();
    for ns in &fixed {
        // Still terminating after an earlier run: a namespace cannot be made until it is gone.
        let _ = kubectl_stdin(
            &[
                "wait",
                "--for=delete",
                &format!("namespace/{ns}"),
                "--timeout=120s",
            ],
            "",
        );
        leftovers.namespaces.push(ns.to_string());
        kubectl_apply(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string(),
        );
    }
    let mut namespaces = Vec::new();
    for case in CASES {
        let ns = TestNs::new(&format!("case-{}", case.release)).await;
        leftovers.namespaces.push(ns.name.clone());
        leftovers.releases.push((case.release, ns.name.clone()));
        namespaces.push(ns);
    }
    let mut plans = Vec::new();
    for (case, ns) in CASES.iter().zip(&namespaces) {
        let file = cases_dir().join(case.file);
        let values = test_dir(&ns.name).join("bed.yaml");
        std::fs::write(
            &values,
            format!(
                "cognito: {{endpointUrl: \"{endpoint}\"}}\nsts: {{endpointUrl: \"{endpoint}\"}}\n\
                 crds: {{install: false}}\n{}{}",
                if case.file == "digest.yaml" {
                    ""
                } else {
                    LOCAL_IMAGE_VALUES
                },
                case.overlay
            ),
        )
        .expect("values");
        if case.file == "rbac-off.yaml" {
            let rbac = rbac_of(&file, case.release, &ns.name);
            leftovers.manifests.insert(0, rbac.clone());
            kubectl_apply(&rbac);
        }
        if case.file == "webhook-host-network.yaml" {
            kubectl(&["-n", &ns.name, "create", "serviceaccount", "cuc-admission"]);
        }
        plans.push((case, ns.name.clone(), file, values));
    }

    let install = |(case, ns, file, values): &(&Case, String, PathBuf, PathBuf)| {
        let t = std::time::Instant::now();
        helm_ok(&[
            "install",
            case.release,
            CHART,
            "--namespace",
            ns,
            "--values",
            &file.display().to_string(),
            "--values",
            &values.display().to_string(),
            "--wait",
            "--timeout",
            "240s",
        ]);
        println!(
            "{}: helm install --wait {:.1} s",
            case.file,
            t.elapsed().as_secs_f64()
        );
    };
    let (first, last) = plans.split_at(plans.len() - 1);
    std::thread::scope(|s| {
        for p in first {
            s.spawn(move || install(p));
        }
    });
    // digest.yaml's fullnameOverride is hatches' full name: after hatches is gone.
    let hatches = plans
        .iter()
        .find(|(c, ..)| c.file == "hatches.yaml")
        .expect("hatches");
    check_pods(hatches.0, &hatches.1).await;
    helm_uninstall(hatches.0.release, &hatches.1);
    install(&last[0]);

    for (case, ns, ..) in &plans {
        if case.file != "hatches.yaml" {
            check_pods(case, ns).await;
        }
    }
    std::thread::scope(|s| {
        for (case, ns, ..) in &plans {
            if case.file != "hatches.yaml" {
                s.spawn(move || helm_uninstall(case.release, ns));
            }
        }
    });

    // Uninstalled by the test, so that a failing uninstall fails it; the rest goes with
    // the leftovers (already-uninstalled releases are skipped by `--ignore-not-found`).
    leftovers.releases.clear();
    drop(leftovers);
    for ns in namespaces {
        ns.cleanup().await;
    }
}

/// Every pod of the release in `ns` is Ready, and there are as many as the case says.
async fn check_pods(case: &Case, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(testbed_support::client().await, ns);
    let list = pods
        .list(
            &ListParams::default().labels(&format!("app.kubernetes.io/instance={}", case.release)),
        )
        .await
        .expect("pods");
    let live: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), case.pods, "{}: {live:#?}", case.file);
    assert!(live.iter().all(|p| pod_ready(p)), "{}", case.file);
}
