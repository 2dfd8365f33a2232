//! The injection webhook's configuration under what real clusters do to it (issue 20), on
//! the test bed's node, installed by the chart (two replicas, its own certificate):
//!
//! - pods are admitted continuously, through a ServiceAccount's annotation in an opted-in
//!   namespace (`cognito.kubecred.io/inject: enabled`) and through the pod annotation,
//!   while 3 `helm upgrade`s roll the webhook and 3 server-side re-applies of
//!   `helm get manifest` (what Argo CD and Flux do) run, and the CA is renewed: every one is
//!   injected, none refused; afterwards `kubectl diff --server-side` of the configuration
//!   shows nothing;
//! - the 500 annotated ServiceAccounts those pods run as have 253-character names: nothing
//!   in the configuration grows with them, and its caBundle still renews;
//! - as the webhook's ServiceAccount (impersonated), changing the configuration's failure
//!   policy, rules, selectors, match conditions or client config is refused, and deleting
//!   it too; changing its caBundle is allowed;
//! - a resource whose Secret name was taken first by a planted Secret (with a
//!   `credential_process` command in its `config`) is refused, the refusal naming the
//!   conflict, as is a resource that does not exist;
//! - the release watches one namespace: the webhook reads there through a RoleBinding, and
//!   its one cluster-wide permission is its own configuration;
//! - with the webhook's bindings removed for 60 s and its pods replaced meanwhile
//!   (their first lists are refused), its requests to the API server stay few (counted
//!   from the audit log), and once the binding is back its replicas turn ready and inject;
//! - on the node's network (`webhook.hostNetwork`) with its own ServiceAccount, the webhook
//!   serves admissions on the node's address.

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use testbed_support::{
    CHART, Proxy, TestNs, audit_log, eventually, helm_install, helm_ok, helm_uninstall,
    install_crd, kubectl, kubectl_apply, kubectl_stdin, opt_in, rand_suffix, restricted, testbed,
    wait_ready, webhook_values,
};

const ACCOUNTS: usize = 500;
const UPGRADES: usize = 3;
const REAPPLIES: usize = 3;
const CERT_LIFETIME: i64 = 60;
const CA_LIFETIME: i64 = 120;

/// The i-th annotated ServiceAccount: 253 characters, the longest name there is.
fn account(i: usize) -> String {
    let head = format!("sa-{i:03}-");
    format!("{head}{}", "a".repeat(253 - head.len()))
}

/// A pod (for a server dry-run) that asks through `annotations` or runs as `sa`.
fn pod(annotations: Value, sa: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "annotations": annotations},
        "spec": {
            "serviceAccountName": sa,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app", "image": "localhost/aws-client:dev", "command": ["true"],
                "securityContext": {"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .expect("a Pod")
}

fn injected(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.name == "cognito-credentials"))
}

/// The configuration's caBundle of each webhook.
async fn bundles(mwcs: &Api<MutatingWebhookConfiguration>, name: &str) -> Vec<Option<String>> {
    mwcs.get(name)
        .await
        .map(|m| {
            m.webhooks
                .unwrap_or_default()
                .into_iter()
                .map(|w| {
                    w.client_config
                        .ca_bundle
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One document of `helm get manifest`, by kind and name, as YAML.
fn manifest_doc(manifest: &str, kind: &str, name: &str) -> String {
    manifest
        .split("\n---")
        .find(|d| {
            let v: Value = serde_yaml::from_str(d).unwrap_or(Value::Null);
            v["kind"] == kind && v["metadata"]["name"] == name
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in the release's manifest"))
        .to_string()
}

#[tokio::test]
async fn upgrades_and_reapplies_leave_no_gap_and_the_webhook_may_change_only_its_ca_bundle() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let rel = TestNs::new("node-gw").await;
    let app = TestNs::new("node-gw-app").await;
    restricted(&rel.name);
    restricted(&app.name);
    opt_in(&app.name);
    install_crd();
    let release = format!("g{}", rand_suffix());
    let hook = format!("{release}-cognito-unauth-controller-webhook");
    let mwc_name = format!("{hook}-{}", rel.name);
    let hook_user = format!("system:serviceaccount:{}:{hook}", rel.name);
    let values = webhook_values(&rel.name, &app.name, CA_LIFETIME, CERT_LIFETIME, "");
    let run_helm = |verb: &str, extra: &[&str]| {
        let mut args = vec![
            verb,
            &release,
            CHART,
            "--namespace",
            &rel.name,
            "--values",
            &values,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--wait", "--timeout", "180s"]);
        helm_ok(&args)
    };
    run_helm("install", &[]);
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(rel.client.clone());
    eventually(Duration::from_secs(30), "both caBundles", || async {
        let b = bundles(&mwcs, &mwc_name).await;
        (b.len() == 2 && b.iter().all(Option::is_some)).then_some(())
    })
    .await;

    // The planted Secret first, then the resources and the 500 ServiceAccounts.
    kubectl_apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: planted, namespace: {ns}}}\n\
         stringData: {{config: \"[default]\\ncredential_process = sh -c 'echo planted'\\n\"}}\n",
        ns = app.name
    ));
    let mut docs = vec![format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\n\
         metadata: {{name: app, namespace: {ns}}}\nspec: {{identityPoolId: \"{pool}\"}}\n---\n\
         apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\n\
         metadata: {{name: planted, namespace: {ns}}}\nspec: {{identityPoolId: \"{pool}\"}}\n",
        ns = app.name
    )];
    docs.extend((0..ACCOUNTS).map(|i| {
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {}, namespace: {}, \
             annotations: {{cognito.kubecred.io/credential: app}}}}\n",
            account(i),
            app.name
        )
    }));
    kubectl_apply(&docs.join("---\n"));
    wait_ready(&app.name, "app", 60);
    kubectl(&[
        "-n",
        &app.name,
        "wait",
        "--for=jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}=SecretConflict",
        "cuc/planted",
        "--timeout=60s",
    ]);
    let pods: Api<Pod> = app.api();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };

    // Refusals: a Secret the controller does not own, a resource that does not exist.
    for (name, want) in [
        ("planted", "is not the controller's (SecretConflict)"),
        ("missing", "no CognitoUnauthCredential"),
    ] {
        let err = pods
            .create(
                &dry,
                &pod(json!({"cognito.kubecred.io/inject": name}), "default"),
            )
            .await
            .expect_err(name);
        assert!(err.to_string().contains(want), "{name}: {err}");
    }

    // Admissions all along: each second one pod through a (long) ServiceAccount and one
    // through the pod annotation, each sent without waiting for the ones before (on a
    // busy machine one admission can take seconds; the pace asked of the cluster stays).
    let stop = tokio_util::sync::CancellationToken::new();
    let window = Instant::now();
    let admitting = tokio::spawn({
        let (pods, stop, dry) = (pods.clone(), stop.clone(), dry.clone());
        async move {
            let mut sent = tokio::task::JoinSet::new();
            let mut i = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.is_cancelled() {
                tick.tick().await;
                let sa = account(i % ACCOUNTS);
                for (what, p) in [
                    ("ServiceAccount", pod(json!({}), &sa)),
                    (
                        "annotation",
                        pod(json!({"cognito.kubecred.io/inject": "app"}), "default"),
                    ),
                ] {
                    let (pods, dry) = (pods.clone(), dry.clone());
                    sent.spawn(async move {
                        // A request the API server never answered (the test client's
                        // connection dropped: a transport error, not an admission) is
                        // sent again, at most twice; every answer counts.
                        let mut resent = 0;
                        loop {
                            return match pods.create(&dry, &p).await {
                                Ok(created) if injected(&created) => Ok(resent),
                                Ok(_) => Err(format!("{what}: admitted without injection")),
                                Err(kube::Error::Api(e)) => Err(format!("{what}: {e}")),
                                Err(e) if resent < 2 => {
                                    resent += 1;
                                    eprintln!("{what}: sent again after {e}");
                                    continue;
                                }
                                Err(e) => Err(format!("{what}: {e}")),
                            };
                        }
                    });
                }
                i += 1;
            }
            let (mut ok, mut failures, mut resent) = (0usize, Vec::new(), 0usize);
            while let Some(r) = sent.join_next().await {
                match r {
                    Ok(Ok(n)) => {
                        ok += 1;
                        resent += n;
                    }
                    Ok(Err(f)) => failures.push(f),
                    Err(e) => failures.push(format!("task: {e}")),
                }
            }
            (ok, failures, resent)
        }
    });
    let first_bundle = bundles(&mwcs, &mwc_name).await;

    let t = Instant::now();
    for n in 0..UPGRADES {
        // A new pod template: the webhook's replicas roll (helm --wait: until they have).
        let cpu = format!("webhook.resources.requests.cpu={}m", 11 + n);
        run_helm("upgrade", &["--set", &cpu]);
    }
    let upgrades_s = t.elapsed().as_secs_f64();
    let manifest = helm_ok(&["get", "manifest", &release, "--namespace", &rel.name]);
    let t = Instant::now();
    for _ in 0..REAPPLIES {
        let out = kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "argocd-controller",
                "-f",
                "-",
            ],
            &manifest,
        );
        assert!(
            out.status.success(),
            "re-apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let reapplies_s = t.elapsed().as_secs_f64();
    // A CA renewal inside the window too (the CA lives CA_LIFETIME s, renewed at two
    // thirds): both webhooks' caBundle changes, with 500 annotated accounts in the cluster.
    eventually(
        Duration::from_secs(CA_LIFETIME as u64 + 30),
        "a CA renewal in both caBundles",
        || async {
            let now = bundles(&mwcs, &mwc_name).await;
            (now.len() == 2 && now[0] == now[1] && now[0] != first_bundle[0]).then_some(())
        },
    )
    .await;
    let window_s = window.elapsed().as_secs_f64();
    stop.cancel();
    let (ok, failures, resent) = admitting.await.expect("admission loop");
    println!(
        "{ok} pods admitted and injected in {window_s:.0} s, during {UPGRADES} helm upgrades \
         ({upgrades_s:.0} s), {REAPPLIES} server-side re-applies ({reapplies_s:.0} s) and a CA \
         renewal; {} refused or not injected; {resent} sent again after a transport error \
         between this test and the API server",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    // Two a second were sent (one per path), all admitted and injected.
    assert!(
        ok as f64 >= window_s,
        "only {ok} admissions in {window_s:.0} s"
    );
    // The configuration is what the chart renders (caBundle aside): nothing to re-apply.
    let doc = manifest_doc(&manifest, "MutatingWebhookConfiguration", &mwc_name);
    let diff = kubectl_stdin(&["diff", "--server-side", "-f", "-"], &doc);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff --server-side shows a difference:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let live =
        serde_json::to_value(mwcs.get(&mwc_name).await.expect("configuration")).expect("json");
    let conditions: Vec<&Value> = live["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .map(|w| &w["matchConditions"])
        .collect();
    let size = serde_json::to_string(&conditions).expect("json").len();
    assert!(
        size < 1000,
        "the match conditions grew with {ACCOUNTS} accounts: {size} bytes"
    );

    // As the webhook's ServiceAccount: only caBundle may change.
    let as_hook = |args: &[&str]| {
        let mut all = vec!["--as", &hook_user];
        all.extend_from_slice(args);
        let out = std::process::Command::new("kubectl")
            .args(&all)
            .envs(testbed().env())
            .output()
            .expect("kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let patch = |ops: &str| {
        as_hook(&[
            "patch",
            "mutatingwebhookconfiguration",
            &mwc_name,
            "--type=json",
            "-p",
            ops,
        ])
    };
    for (what, ops) in [
        (
            "failurePolicy",
            r#"[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Ignore"}]"#,
        ),
        (
            "rules",
            r#"[{"op":"add","path":"/webhooks/0/rules/0/operations/-","value":"UPDATE"}]"#,
        ),
        (
            "namespaceSelector",
            r#"[{"op":"replace","path":"/webhooks/1/namespaceSelector","value":{}}]"#,
        ),
        (
            "objectSelector",
            r#"[{"op":"replace","path":"/webhooks/0/objectSelector","value":{"matchLabels":{"x":"y"}}}]"#,
        ),
        (
            "matchConditions",
            r#"[{"op":"remove","path":"/webhooks/0/matchConditions"}]"#,
        ),
        (
            "clientConfig",
            r#"[{"op":"replace","path":"/webhooks/0/clientConfig/service/name","value":"elsewhere"}]"#,
        ),
        (
            "labels",
            r#"[{"op":"add","path":"/metadata/labels/x","value":"y"}]"#,
        ),
    ] {
        let (done, err) = patch(ops);
        assert!(!done, "the webhook's ServiceAccount changed {what}");
        assert!(
            err.contains("may change only clientConfig.caBundle"),
            "{what}: {err}"
        );
    }
    let (done, err) = as_hook(&["delete", "mutatingwebhookconfiguration", &mwc_name]);
    assert!(
        !done,
        "the webhook's ServiceAccount deleted its configuration"
    );
    println!("delete as the webhook: {}", err.trim());
    let current = bundles(&mwcs, &mwc_name).await[0]
        .clone()
        .expect("a caBundle");
    let b64 = base64_encode(current.as_bytes());
    let (done, err) = patch(&format!(
        r#"[{{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":"{b64}"}}]"#
    ));
    assert!(
        done,
        "the webhook's ServiceAccount may not set caBundle: {err}"
    );

    // The release watches one namespace: its webhook reads there through a RoleBinding,
    // and its one cluster-wide grant is its configuration (caBundle).
    let cluster_rules: Vec<Value> = manifest
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| {
            d["kind"] == "ClusterRole" && d["metadata"]["name"] == format!("{hook}-{}", rel.name)
        })
        .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        cluster_rules,
        vec![json!({
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [mwc_name],
            "verbs": ["get", "list", "watch", "patch"],
        })],
        "a namespaced release's webhook may do nothing else cluster-wide"
    );

    // The webhook's bindings gone for 60 s (the ClusterRoleBinding, and the RoleBinding in
    // the watched namespace), and its pods replaced meanwhile (a watch already open
    // outlives a lost permission; a new replica's first lists do not): few requests, then
    // recovery once the bindings are back.
    let binding = format!("{hook}-{}", rel.name);
    let binding_doc = manifest_doc(&manifest, "ClusterRoleBinding", &binding);
    let role_binding_doc = manifest
        .split("\n---")
        .find(|d| {
            let v: Value = serde_yaml::from_str(d).unwrap_or(Value::Null);
            v["kind"] == "RoleBinding"
                && v["metadata"]["name"] == format!("{hook}-reader")
                && v["metadata"]["namespace"] == app.name.as_str()
        })
        .expect("the webhook's RoleBinding in the watched namespace")
        .to_string();
    let removed_at = jiff::Timestamp::now();
    kubectl(&["delete", "clusterrolebinding", &binding]);
    kubectl(&[
        "-n",
        &app.name,
        "delete",
        "rolebinding",
        &format!("{hook}-reader"),
    ]);
    kubectl(&[
        "-n",
        &rel.name,
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/component=webhook",
        "--wait=false",
    ]);
    // A fixed window on purpose: the request rate over it is what is measured.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let restored_at = jiff::Timestamp::now();
    kubectl_apply(&binding_doc);
    kubectl_apply(&role_binding_doc);
    let requests = audit_log()
        .into_iter()
        .filter(|e| e["user"]["username"] == hook_user.as_str() && e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t >= removed_at && t < restored_at)
        })
        .count();
    println!(
        "webhook requests to the API server in the 60 s without its bindings (2 new replicas): {requests}"
    );
    assert!(
        requests <= 120,
        "{requests} requests in 60 s: the webhook's watches do not back off"
    );
    // Recovered: the new replicas list what they need (their watches' backoff is capped
    // at 30 s), turn ready, and inject.
    let t = Instant::now();
    kubectl(&[
        "-n",
        &rel.name,
        "rollout",
        "status",
        &format!("deployment/{hook}"),
        "--timeout=120s",
    ]);
    let created = pods
        .create(&dry, &pod(json!({}), &account(0)))
        .await
        .expect("a pod after the recovery");
    assert!(injected(&created));
    println!(
        "binding back: the webhook's replicas ready and injecting after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    helm_uninstall(&release, &rel.name);
    app.cleanup().await;
    rel.cleanup().await;
}

/// Base64, as the API writes a `caBundle` (k8s-openapi's ByteString).
fn base64_encode(bytes: &[u8]) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
        .expect("json")
        .as_str()
        .expect("a string")
        .to_string()
}

/// The webhook on the node's network (`webhook.hostNetwork`, on ports of the node: what
/// EKS with an overlay CNI needs), running as a ServiceAccount made beforehand
/// (`webhook.serviceAccount.create=false`): the API server calls it on the node's address
/// and an annotated pod is injected.
#[tokio::test]
async fn on_the_node_network_the_webhook_serves_admissions() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    // Not `restricted`: Pod Security refuses host-network pods there.
    let rel = TestNs::new("node-gwh").await;
    let app = TestNs::new("node-gwh-app").await;
    install_crd();
    let release = format!("h{}", rand_suffix());
    kubectl(&["-n", &rel.name, "create", "serviceaccount", "cuc-admission"]);
    // One replica: host-network pods of one Deployment cannot share a node's ports, and
    // the bed has one node.
    let values = webhook_values(
        &rel.name,
        &app.name,
        31_536_000,
        2_592_000,
        "  hostNetwork: true\n  securePort: 19443\n  metricsPort: 19081\n  replicaCount: 1\n  \
         serviceAccount: {create: false, name: cuc-admission}\n",
    );
    helm_install(&release, &rel.name, &values, &[]);
    let hooks: Vec<Pod> = rel
        .api::<Pod>()
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/component=webhook"))
        .await
        .expect("the webhook's pods")
        .items;
    assert_eq!(hooks.len(), 1);
    let spec = hooks[0].spec.clone().unwrap_or_default();
    let status = hooks[0].status.clone().unwrap_or_default();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.service_account_name.as_deref(), Some("cuc-admission"));
    assert!(
        status.pod_ip.is_some() && status.pod_ip == status.host_ip,
        "the webhook's pod is not on the node's address: {:?} vs {:?}",
        status.pod_ip,
        status.host_ip
    );
    kubectl_apply(&testbed_support::cuc_manifest(&app.name, "app", &pool));
    wait_ready(&app.name, "app", 60);
    let made = app
        .api::<Pod>()
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod(json!({"cognito.kubecred.io/inject": "app"}), "default"),
        )
        .await
        .expect("an annotated pod admitted through the host-network webhook");
    assert!(injected(&made), "the annotated pod was not injected");
    helm_uninstall(&release, &rel.name);
    app.cleanup().await;
    rel.cleanup().await;
}
