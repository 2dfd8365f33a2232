//! What a user types first, on the test bed's node (issue 24): the README's "Installing on
//! a cluster" commands, run as the README writes them, with the chart's defaults.
//!
//! Until issue 24 the default install crash-looped: the webhook (on by default) refused
//! the `3.1536e+07` the chart rendered for its CA lifetime, and no test installed the
//! defaults (every install set the lifetimes itself). Here:
//!
//! 1. the README's `helm install` line is taken from README.md and run by a shell as it
//!    stands. Its image, `registry.example.com/cognito-unauth-controller:0.1.0`, is this
//!    tree's image under that name in the node's containerd (nothing is pulled: the
//!    default pull policy is IfNotPresent). Appended, because this bed is not AWS and
//!    not empty: the emulator's endpoints, `--take-ownership` (other tests applied the
//!    CRD already) and `--wait`;
//! 2. every pod of the release (the controller and both webhook replicas) is Ready;
//! 3. the README's next commands, in the namespace they name (`kubectl apply -f
//!    examples/demo.yaml` with a pool id put in, `kubectl wait`, `get`, `describe`):
//!    the resource is Ready and its Secret holds credentials;
//! 4. a pod annotated `cognito.kubecred.io/inject: demo` is injected by the default
//!    webhook, and runs;
//! 5. the README's team release beside it (`excludeNamespaces` on this one,
//!    `watchNamespaces` on the team's): the team's resource is written by the team's
//!    controller alone, and each annotated pod is mutated by exactly one webhook, the one
//!    of the release that serves its namespace (the audit log names every webhook the API
//!    server called for a pod).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use serde_json::Value;
use testbed_support::{
    Proxy, audit_log, client, eventually, helm, kubectl, kubectl_apply, kubectl_stdin, pod_ready,
    root, testbed,
};

const RELEASE: &str = "cuc";
const NAMESPACE: &str = "cognito-unauth-controller";
const README_IMAGE: &str = "registry.example.com/cognito-unauth-controller:0.1.0";
/// The README's team release, and the namespace it watches.
const TEAM_RELEASE: &str = "cuc-team-b";
const TEAM_RELEASE_NS: &str = "team-b-system";
const TEAM_NS: &str = "team-b";

/// The configurations whose webhooks the API server called for the pod `ns/name`'s
/// creation (a server-side apply: a `patch` that creates), from the audit log's
/// `mutation.webhook.admission.k8s.io` annotations, each with whether it mutated the pod.
fn webhooks_called(ns: &str, name: &str, since: jiff::Timestamp) -> Vec<(String, bool)> {
    audit_log()
        .into_iter()
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t >= since)
        })
        .filter(|e| {
            (e["verb"] == "create" || e["verb"] == "patch")
                && e["objectRef"]["subresource"].is_null()
                && e["stage"] == "ResponseComplete"
                && e["objectRef"]["resource"] == "pods"
                && e["objectRef"]["namespace"] == ns
                && e["objectRef"]["name"] == name
        })
        .flat_map(|e| {
            e["annotations"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("mutation.webhook.admission.k8s.io/"))
                .filter_map(|(_, v)| serde_json::from_str::<Value>(v.as_str()?).ok())
                .map(|v| {
                    (
                        v["configuration"].as_str().unwrap_or_default().to_string(),
                        v["mutated"] == true,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An annotated pod in `ns`, which must be injected (it is not run).
fn annotated_pod(ns: &str, name: &str) {
    kubectl_apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         \x20 annotations: {{cognito.kubecred.io/inject: demo}}\nspec:\n  containers:\n\
         \x20 - {{name: app, image: \"registry.k8s.io/pause:3.10.2\", imagePullPolicy: Never}}\n"
    ));
}

/// The commands of README.md's `## Installing on a cluster` section: its `sh` blocks,
/// with continuation lines joined.
fn readme_install_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Installing on a cluster")
        .expect("README.md has '## Installing on a cluster'");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in section[..end].lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = line.split("  #").next().unwrap_or_default().trim_end();
        match code.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(code);
                if !pending.trim().is_empty() {
                    commands.push(pending.trim().to_string());
                }
                pending.clear();
            }
        }
    }
    commands
}

fn sh(script: &str) -> String {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(root())
        .envs(testbed().env())
        .output()
        .expect("bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}\n{text}");
    text
}

/// Cleans up when dropped, also when the test fails: a cluster-wide release left behind
/// would reconcile every other test's resources.
struct CleanUp(String);

impl Drop for CleanUp {
    fn drop(&mut self) {
        clean_up(&self.0);
    }
}

/// The releases, the demo resources and the pods, as a rerun on the same bed (or the
/// tests after this one) must not find them.
fn clean_up(helm_env: &str) {
    let _ = kubectl_stdin(
        &[
            "delete",
            "pod",
            "team-injected",
            "-n",
            TEAM_NS,
            "--ignore-not-found",
            "--wait=false",
        ],
        "",
    );
    let _ = kubectl_stdin(
        &[
            "delete",
            "pod",
            "readme-injected",
            "-n",
            "default",
            "--ignore-not-found",
            "--wait=false",
        ],
        "",
    );
    let _ = kubectl_stdin(
        &[
            "delete",
            "cuc",
            "demo",
            "-n",
            "default",
            "--ignore-not-found",
        ],
        "",
    );
    // Not asserted: this also runs when the test failed (a panic in a panic aborts).
    for (release, ns) in [(TEAM_RELEASE, TEAM_RELEASE_NS), (RELEASE, NAMESPACE)] {
        let _ = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{helm_env} helm uninstall {release} -n {ns} --ignore-not-found --wait --timeout 120s"
            ))
            .current_dir(root())
            .envs(testbed().env())
            .output();
    }
    // The README creates the team's namespace: a rerun must find it gone.
    let _ = kubectl_stdin(
        &[
            "delete",
            "namespace",
            TEAM_NS,
            TEAM_RELEASE_NS,
            "--ignore-not-found",
            "--timeout=120s",
        ],
        "",
    );
    let _ = kubectl_stdin(
        &[
            "delete",
            "namespace",
            NAMESPACE,
            "--ignore-not-found",
            "--wait=false",
        ],
        "",
    );
}

#[tokio::test]
async fn the_readmes_install_commands_run_on_the_node_with_the_chart_defaults() {
    let bed = testbed();
    let endpoint = bed
        .in_cluster_endpoint
        .clone()
        .expect("IN_CLUSTER_AWS_ENDPOINT_URL in .local/env: the test bed has no node");
    let helm_dir = helm()
        .parent()
        .expect("helm's directory")
        .display()
        .to_string();
    let tmp = std::env::temp_dir().join("cuc-helm-readme");
    let helm_env = format!(
        "export PATH={helm_dir}:$PATH HELM_CACHE_HOME={t}/cache HELM_CONFIG_HOME={t}/config HELM_DATA_HOME={t}/data;",
        t = tmp.display()
    );
    let commands = readme_install_commands();
    let install = commands
        .iter()
        .find(|c| c.starts_with("helm install cuc "))
        .expect("the README's helm install");
    assert!(
        install.contains(&format!(
            "--set image.repository={}",
            README_IMAGE.split(':').next().unwrap_or_default()
        )) && install.contains("--set image.tag=0.1.0"),
        "the README's install no longer names {README_IMAGE}: update this test's image name\n{install}"
    );
    // Nothing but the image: the defaults are what is installed.
    assert_eq!(install.matches("--set").count(), 2, "{install}");

    // The image the README names is this tree's, in the node's containerd.
    testbed_support::node_sh(&format!(
        "ctr_node images tag --force localhost/cognito-unauth-controller:dev {README_IMAGE} 2>/dev/null"
    ));
    clean_up(&helm_env);
    let _clean_up = CleanUp(helm_env.clone());
    // What the audit log says from here on is this run's.
    let started = jiff::Timestamp::now();

    // 1. The README's line, as it stands, plus what this bed needs.
    let t = std::time::Instant::now();
    sh(&format!(
        "{helm_env} {install} --set cognito.endpointUrl={endpoint} --set sts.endpointUrl={endpoint} \
         --take-ownership --wait --timeout 240s"
    ));
    println!(
        "helm install (README, defaults) --wait: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 2. Every pod of the release is Ready: one controller, two webhook replicas.
    let pods: Api<Pod> = Api::namespaced(client().await, NAMESPACE);
    let ready = eventually(
        Duration::from_secs(120),
        "every pod of the release Ready",
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(
                        &ListParams::default()
                            .labels(&format!("app.kubernetes.io/instance={RELEASE}")),
                    )
                    .await
                    .ok()?;
                let live: Vec<Pod> = list
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                (live.len() == 3 && live.iter().all(pod_ready)).then_some(live)
            }
        },
    )
    .await;
    for p in &ready {
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or_default();
        assert_eq!(restarts, 0, "{:?} restarted", p.metadata.name);
    }

    // 3. The README's next commands, with a pool id put in.
    let pool = Proxy::new().realistic_pool(3600).await;
    let apply = commands
        .iter()
        .find(|c| c.starts_with("kubectl apply -f examples/demo.yaml"))
        .expect("the README's kubectl apply");
    let demo = std::fs::read_to_string(root().join("examples/demo.yaml"))
        .expect("examples/demo.yaml")
        .replace("DEMO_IDENTITY_POOL_ID", &pool);
    let dir = root().join("target/node-defaults");
    std::fs::create_dir_all(dir.join("examples")).expect("dir");
    std::fs::write(dir.join("examples/demo.yaml"), demo).expect("demo.yaml");
    for cmd in commands.iter().skip_while(|c| *c != apply) {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .current_dir(&dir)
            .envs(bed.env())
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let secret: Secret = Api::namespaced(client().await, "default")
        .get("demo-aws-credentials")
        .await
        .expect("the demo Secret");
    assert!(
        secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("AWS_SESSION_TOKEN") && d.contains_key("config")),
        "the Secret holds credentials"
    );

    // 4. A pod annotated for injection is injected by the default webhook, and runs.
    kubectl_apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: readme-injected\n  namespace: default\n\
         \x20 annotations: {cognito.kubecred.io/inject: demo}\nspec:\n  containers:\n\
         \x20 - {name: app, image: \"registry.k8s.io/pause:3.10.2\", imagePullPolicy: Never}\n",
    );
    let pod: Pod = Api::namespaced(client().await, "default")
        .get("readme-injected")
        .await
        .expect("the pod");
    let spec = pod.spec.as_ref().expect("spec");
    assert!(
        spec.volumes.iter().flatten().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("demo-aws-credentials")),
        "the pod mounts the demo Secret: {:?}",
        spec.volumes
    );
    let env: Vec<&str> = spec.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(env.contains(&"AWS_CONFIG_FILE"), "{env:?}");
    kubectl(&[
        "wait",
        "-n",
        "default",
        "--for=condition=Ready",
        "pod/readme-injected",
        "--timeout=120s",
    ]);

    // 5. The README's team release beside this one.
    let cluster_hook = format!("{RELEASE}-cognito-unauth-controller-webhook-{NAMESPACE}");
    let team_hook = format!("{TEAM_RELEASE}-cognito-unauth-controller-webhook-{TEAM_RELEASE_NS}");
    assert_eq!(
        webhooks_called("default", "readme-injected", started),
        vec![(cluster_hook.clone(), true)],
        "the default release's pod"
    );
    let team_commands: Vec<&String> = commands
        .iter()
        .skip_while(|c| *c != "kubectl create namespace team-b")
        .take(3)
        .collect();
    assert!(
        team_commands.len() == 3
            && team_commands[1].starts_with(&format!("helm upgrade {RELEASE} "))
            && team_commands[2].starts_with(&format!("helm install {TEAM_RELEASE} ")),
        "the README's team release commands changed: {team_commands:?}"
    );
    sh(team_commands[0]);
    sh(&format!(
        "{helm_env} {} --wait --timeout 240s",
        team_commands[1]
    ));
    sh(&format!(
        "{helm_env} {} --set cognito.endpointUrl={endpoint} --set sts.endpointUrl={endpoint} \
         --wait --timeout 240s",
        team_commands[2]
    ));
    let team_demo = std::fs::read_to_string(dir.join("examples/demo.yaml")).expect("demo.yaml");
    let out = kubectl_stdin(&["apply", "-n", TEAM_NS, "-f", "-"], &team_demo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kubectl(&[
        "wait",
        "-n",
        TEAM_NS,
        "--for=condition=Ready",
        "cuc/demo",
        "--timeout=120s",
    ]);
    annotated_pod(TEAM_NS, "team-injected");
    assert_eq!(
        webhooks_called(TEAM_NS, "team-injected", started),
        vec![(team_hook.clone(), true)],
        "the team's pod: mutated by the team's webhook alone"
    );
    // The cluster-wide controller left the team's resource and Secret alone: every write
    // in the team's namespace came from the team's controller.
    let cluster_sa =
        format!("system:serviceaccount:{NAMESPACE}:{RELEASE}-cognito-unauth-controller");
    let team_sa =
        format!("system:serviceaccount:{TEAM_RELEASE_NS}:{TEAM_RELEASE}-cognito-unauth-controller");
    let writers: std::collections::BTreeSet<String> = audit_log()
        .into_iter()
        .filter(|e| {
            e["objectRef"]["namespace"] == TEAM_NS
                && e["stage"] == "ResponseComplete"
                && ["create", "update", "patch", "delete"]
                    .contains(&e["verb"].as_str().unwrap_or_default())
                && ["secrets", "cognitounauthcredentials"]
                    .contains(&e["objectRef"]["resource"].as_str().unwrap_or_default())
        })
        .filter_map(|e| e["user"]["username"].as_str().map(str::to_string))
        .filter(|u| u.starts_with("system:serviceaccount:"))
        .collect();
    assert!(
        writers.contains(&team_sa) && !writers.contains(&cluster_sa),
        "writers of the team's Secret and resource: {writers:?}"
    );
    println!(
        "a team release beside the defaults: the team's pod mutated by {team_hook} alone, \
         the default release's by {cluster_hook} alone; writers in {TEAM_NS}: {writers:?}"
    );
}
