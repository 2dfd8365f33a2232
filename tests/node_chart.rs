//! `helm install` for real: the chart's Deployment runs our image on the test bed's node,
//! in a namespace that enforces Pod Security `restricted`, with in-cluster config and the
//! chart's ServiceAccount (no impersonation, no host process). One test walks a release
//! through its life, measuring as it goes:
//!
//! 1. install (1 replica): the pod is Running and Ready; a CognitoUnauthCredential becomes
//!    Ready and its Secret is written by the pod's ServiceAccount (the audit log says who);
//!    `/metrics`, scraped from the pod's IP, shows the resource;
//! 2. `helm upgrade` with 1 replica (the rolling update runs the new pod beside the old
//!    one): no Cognito call and no rollout restart of the target; the Lease passes from
//!    the old pod to the new one;
//! 3. `helm upgrade` to 2 replicas, then `kubectl delete pod` of the leader: the other
//!    pod takes the Lease within the lease duration, rotates nothing, and reconciles a new
//!    resource;
//! 4. `helm uninstall`: the CRD, the resources and their Secrets stay (README, "Upgrading
//!    and uninstalling"); the controller, its RBAC and its pods go.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use testbed_support::{
    CHART, Proxy, TestNs, eventually, helm_ok, kubectl, kubectl_apply, pod_ready, rand_suffix,
    restarted_at, restricted, test_dir, testbed, wait_ready, writers,
};

/// The chart's default `leaderElection.leaseDurationSeconds`.
const LEASE_SECONDS: u64 = 15;

/// The release's controller pods that are not being deleted, by name.
async fn controller_pods(api: &Api<Pod>, release: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().expect("pod name")
}

async fn holder(leases: &Api<Lease>, lease: &str) -> Option<String> {
    leases
        .get_opt(lease)
        .await
        .expect("lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// `/metrics` of the pod, over HTTP to its IP (as Prometheus scrapes it), once it has `want`.
async fn scrape_until(pod: &Pod, want: &str) -> String {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    let url = format!("http://{ip}:8080/metrics");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http");
    eventually(Duration::from_secs(60), &format!("{want} at {url}"), || {
        let http = http.clone();
        let url = url.clone();
        async move {
            let body = http.get(&url).send().await.ok()?.text().await.ok()?;
            body.contains(want).then_some(body)
        }
    })
    .await
}

#[tokio::test]
async fn the_chart_runs_on_the_node_through_install_upgrade_failover_and_uninstall() {
    let bed = testbed();
    let endpoint = bed
        .in_cluster_endpoint
        .clone()
        .expect("IN_CLUSTER_AWS_ENDPOINT_URL in .local/env: the test bed has no node");
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let rel_ns = TestNs::new("node-rel").await;
    let watch = TestNs::new("node-watch").await;
    restricted(&rel_ns.name);
    let release = format!("k{}", rand_suffix());
    let full = format!("{release}-cognito-unauth-controller");
    let dir = test_dir(&rel_ns.name);
    let values = dir.join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "image: {{repository: localhost/cognito-unauth-controller, tag: dev, pullPolicy: Never}}\n\
             watchNamespaces: [{watch}]\n\
             rolloutRestart: {{enabled: true}}\n\
             # The webhook has its own test (node_webhook.rs); here only the controller.\n\
             webhook: {{enabled: false}}\n\
             extraEnv:\n\
             - {{name: AWS_ENDPOINT_URL_COGNITO_IDENTITY, value: \"{endpoint}\"}}\n\
             - {{name: AWS_ENDPOINT_URL_STS, value: \"{endpoint}\"}}\n",
            watch = watch.name
        ),
    )
    .expect("values");
    let values = values.display().to_string();
    let pods: Api<Pod> = rel_ns.api();
    let leases: Api<Lease> = rel_ns.api();

    // A workload the resource rolls (the pause image: it only has to exist and run).
    kubectl_apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: app, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata: {{labels: {{app: app}}}}
    spec:
      containers:
      - {{name: app, image: "registry.k8s.io/pause:3.10.2", imagePullPolicy: Never}}
"#,
        ns = watch.name
    ));

    // 1. Install. The CRD may exist already (other tests apply crds/): the release takes
    // it over, and `crds.keep` leaves it behind at uninstall.
    let t = Instant::now();
    helm_ok(&[
        "install",
        &release,
        CHART,
        "--namespace",
        &rel_ns.name,
        "--values",
        &values,
        "--take-ownership",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let install_s = t.elapsed().as_secs_f64();
    let first = controller_pods(&pods, &release).await;
    assert_eq!(first.len(), 1, "one replica");
    let first = &first[0];
    assert!(
        pod_ready(first),
        "helm --wait returned before the pod was Ready"
    );
    assert_eq!(
        first.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("testbed-node")
    );
    // Leader election is on with one replica too (so a rolling update never has two
    // reconcilers): the pod holds the Lease.
    let lease_holder = eventually(Duration::from_secs(30), "the Lease", || async {
        holder(&leases, &full).await
    })
    .await;
    assert_eq!(lease_holder, name(first));

    kubectl_apply(&format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\n\
         metadata: {{name: creds, namespace: {ns}}}\n\
         spec:\n  identityPoolId: {pool}\n  rolloutRestartTargets: [{{kind: Deployment, name: app}}]\n",
        ns = watch.name
    ));
    let t = Instant::now();
    wait_ready(&watch.name, "creds", 60);
    let ready_s = t.elapsed().as_secs_f64();
    let secret = watch
        .api::<Secret>()
        .get("creds")
        .await
        .expect("the Secret");
    assert!(
        secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("credential-process.json"))
    );
    let sa_user = format!("system:serviceaccount:{}:{full}", rel_ns.name);
    let writers = eventually(
        Duration::from_secs(10),
        "the Secret's writes in the audit log",
        || async {
            let w = writers("secrets", Some(&watch.name), "creds");
            (!w.is_empty()).then_some(w)
        },
    )
    .await;
    assert!(
        writers.iter().all(|w| *w == sa_user),
        "the Secret must be written by the pod's ServiceAccount {sa_user} only: {writers:?}"
    );

    let body = scrape_until(
        first,
        &format!(
            "cognito_unauth_controller_credential_ready_status{{namespace=\"{}\",name=\"creds\",condition=\"True\"}} 1",
            watch.name
        ),
    )
    .await;
    assert!(body.contains("cognito_unauth_controller_build_info{"));

    let deployments: Api<Deployment> = watch.api();
    let app_before = deployments.get("app").await.expect("app");
    let gets = |op: &'static str| {
        let proxy = proxy.clone();
        let pool = pool.clone();
        async move { proxy.pool_calls(&pool, op).await }
    };
    let (get_id, get_creds) = (gets("GetId").await, gets("GetCredentialsForIdentity").await);
    assert_eq!((get_id, get_creds), (1, 1));

    // 2. A rolling update with one replica: the new pod starts beside the old one.
    let t = Instant::now();
    helm_ok(&[
        "upgrade",
        &release,
        CHART,
        "--namespace",
        &rel_ns.name,
        "--values",
        &values,
        "--set-string",
        "podAnnotations.revision=2",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let second = controller_pods(&pods, &release).await;
    let second = second
        .iter()
        .find(|p| name(p) != name(first))
        .expect("a new pod")
        .clone();
    let took_over = eventually(
        Duration::from_secs(LEASE_SECONDS + 30),
        "the new pod to take the Lease",
        || async { (holder(&leases, &full).await == Some(name(&second))).then(Instant::now) },
    )
    .await;
    let upgrade_handover_s = took_over.duration_since(t).as_secs_f64();
    // The new leader has reconciled the resource once it shows it in its metrics.
    scrape_until(
        &second,
        &format!(
            "cognito_unauth_controller_credential_ready_status{{namespace=\"{}\",name=\"creds\",condition=\"True\"}} 1",
            watch.name
        ),
    )
    .await;
    let upgrade_calls = (
        gets("GetId").await - get_id,
        gets("GetCredentialsForIdentity").await - get_creds,
    );
    assert_eq!(
        upgrade_calls,
        (0, 0),
        "helm upgrade made Cognito calls (GetId, GetCredentialsForIdentity)"
    );
    let app_after = deployments.get("app").await.expect("app");
    assert_eq!(
        restarted_at(&app_after),
        restarted_at(&app_before),
        "helm upgrade rolled the target again"
    );
    assert_eq!(
        app_after.metadata.generation,
        app_before.metadata.generation
    );

    // 3. Two replicas; the leader's pod deleted (graceful, as `kubectl delete pod` does).
    helm_ok(&[
        "upgrade",
        &release,
        CHART,
        "--namespace",
        &rel_ns.name,
        "--values",
        &values,
        "--set-string",
        "podAnnotations.revision=2",
        "--set",
        "replicaCount=2",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let two = eventually(Duration::from_secs(60), "two Ready pods", || async {
        let p = controller_pods(&pods, &release).await;
        (p.len() == 2 && p.iter().all(pod_ready)).then_some(p)
    })
    .await;
    // The kubelet has been probing /livez and /readyz all along: no restart.
    for p in controller_pods(&pods, &release).await {
        let restarts: i32 = p
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| c.restart_count)
            .sum();
        assert_eq!(restarts, 0, "{} restarted", name(&p));
    }
    // The Lease may still name a pod of the previous revision for a moment (it releases
    // it as it stops): wait for one of these two to hold it.
    let leader = eventually(
        Duration::from_secs(LEASE_SECONDS + 30),
        "one of the two pods to lead",
        || async {
            let h = holder(&leases, &full).await?;
            two.iter().any(|p| name(p) == h).then_some(h)
        },
    )
    .await;
    let t = Instant::now();
    kubectl(&["-n", &rel_ns.name, "delete", "pod", &leader, "--wait=false"]);
    // How soon the kubelet stops the pod is the node's business (on a busy node it has
    // taken over 45 s); from the moment the leader lets go (it releases the Lease as it
    // stops), another replica must take it within the lease duration: the standby, or
    // the Deployment's replacement pod if it starts first.
    let let_go = eventually(
        Duration::from_secs(180),
        "the deleted leader to let go of the Lease",
        || async {
            (holder(&leases, &full).await.as_deref() != Some(leader.as_str())).then(Instant::now)
        },
    )
    .await;
    let (successor, failover) = eventually(
        Duration::from_secs(LEASE_SECONDS + 30),
        "another replica to take the Lease",
        || async {
            let h = holder(&leases, &full)
                .await
                .filter(|h| !h.is_empty() && *h != leader)?;
            Some((h, let_go.elapsed()))
        },
    )
    .await;
    eprintln!(
        "failover: the leader let go {:?} after its deletion, {successor} led {failover:?} after that",
        let_go - t
    );
    assert!(
        failover <= Duration::from_secs(LEASE_SECONDS),
        "handover took {failover:?}, more than the lease ({LEASE_SECONDS} s)"
    );
    let successor = pods.get(&successor).await.expect("the new leader's pod");
    // The new leader works: a new resource (its own pool) becomes Ready...
    let pool2 = proxy.realistic_pool(3600).await;
    kubectl_apply(&testbed_support::cuc_manifest(
        &watch.name,
        "second",
        &pool2,
    ));
    wait_ready(&watch.name, "second", 60);
    scrape_until(
        &successor,
        &format!(
            "cognito_unauth_controller_credential_ready_status{{namespace=\"{}\",name=\"creds\",condition=\"True\"}} 1",
            watch.name
        ),
    )
    .await;
    // ... and nothing was rotated twice: still the one GetId and one credential set.
    assert_eq!(
        (gets("GetId").await, gets("GetCredentialsForIdentity").await),
        (1, 1),
        "the failover called Cognito for a resource whose Secret was valid"
    );
    assert_eq!(
        proxy.pool_calls(&pool2, "GetCredentialsForIdentity").await,
        1
    );

    // 4. Uninstall.
    helm_ok(&[
        "uninstall",
        &release,
        "--namespace",
        &rel_ns.name,
        "--wait",
        "--timeout",
        "120s",
    ]);
    kubectl(&[
        "-n",
        &rel_ns.name,
        "wait",
        "--for=delete",
        "pod",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "--timeout=60s",
    ]);
    kubectl(&["get", "crd", "cognitounauthcredentials.cognito.kubecred.io"]);
    for (kind, n) in [
        ("cuc", "creds"),
        ("cuc", "second"),
        ("secret", "creds"),
        ("secret", "second"),
    ] {
        kubectl(&["-n", &watch.name, "get", kind, n]);
    }
    let left = kubectl(&[
        "-n",
        &rel_ns.name,
        "get",
        "deployment,serviceaccount,role,rolebinding,service",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "name",
    ]);
    assert_eq!(left.trim(), "", "helm uninstall left {left}");
    let left = kubectl(&[
        "-n",
        &watch.name,
        "get",
        "role,rolebinding",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "name",
    ]);
    assert_eq!(left.trim(), "", "helm uninstall left {left}");

    println!(
        "node chart: install {install_s:.1} s (helm --wait); resource Ready {ready_s:.1} s \
         after apply; upgrade with 1 replica: Cognito calls {upgrade_calls:?}, Lease to the new \
         pod {upgrade_handover_s:.1} s after the upgrade started; leader pod deleted: another \
         replica leads after {:.1} s (lease {LEASE_SECONDS} s)",
        failover.as_secs_f64()
    );
    watch.cleanup().await;
    rel_ns.cleanup().await;
}
