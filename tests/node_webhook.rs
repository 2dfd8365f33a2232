//! The injection webhook on the test bed's node, installed by the chart (two replicas, its
//! own certificate), with real pods:
//!
//! - a Deployment annotated `cognito.kubecred.io/inject` (the aws CLI), a Deployment whose
//!   ServiceAccount is annotated (boto3, one client for the pod's life), and a pod from an
//!   image with no shell (aws-sdk-go-v2, `inject-mode: container-credentials`) carry no
//!   volume, mount or credential variable in their manifests, and sign with every
//!   credential set the controller writes through 3 rotations, with no failed call;
//! - a Deployment injected from a resource of flow Basic (the controller's STS endpoint
//!   set by the chart's `sts.endpointUrl`) signs as the role that resource names: the aws
//!   CLI in it prints the assumed-role ARN, and STS saw the Secret's key from it;
//! - examples/injection.yaml, applied whole (resource and Deployment at once): its pod is
//!   injected and signs as the pool's guest role with its Secret's key, no call failing;
//! - meanwhile pods are admitted (server dry-run) every 300 ms while the serving
//!   certificate (60 s) and its CA (150 s) are renewed: not one admission fails;
//! - a pod without the annotation, in a namespace that has not opted in, is never sent to
//!   the webhook (its admission counter does not move) and is stored as submitted; in the
//!   opted-in namespace (`cognito.kubecred.io/inject: enabled`) it is sent (the counter
//!   moves by one) and stored as submitted too;
//! - malformed annotations are refused, each with its message, and no such pod exists;
//! - admission latency over 200 creations (p50/p99, beside the same pod without the
//!   annotation) is printed, and written to docs/benchmarks.md by `make admission-latency`;
//! - with no webhook replica running, annotated pods are refused and the others created;
//!   back up, the refused Deployment's pod is created with its credentials: both measured;
//! - `helm uninstall` removes the configuration and the webhook's Secret.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use testbed_support::{
    BOTO3_LOOP, Proxy, TestNs, apply_docs, eventually, example_in_pods, failed, helm_install,
    helm_uninstall, install_crd, keys_used, kubectl, kubectl_apply, opt_in, rand_suffix,
    restricted, testbed, ua_is_boto3, ua_is_cli, ua_is_go, wait_ready, webhook_values,
    write_docs_section, writers,
};

const LIFETIME: u64 = 420;
const ROTATIONS: usize = 3;
const CERT_LIFETIME: i64 = 60;
const CA_LIFETIME: i64 = 150;

/// A restricted pod spec running `command` in `image`, with only the test bed's STS
/// endpoint in its environment (nothing about credentials).
fn pod_spec(image: &str, command: Value, sa: Option<&str>) -> Value {
    let endpoint = testbed()
        .in_cluster_endpoint
        .clone()
        .expect("IN_CLUSTER_AWS_ENDPOINT_URL: the test bed has no node");
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "app", "image": image, "imagePullPolicy": "Never",
            "env": [
                {"name": "AWS_ENDPOINT_URL_STS", "value": endpoint},
                {"name": "HOME", "value": "/tmp"},
                {"name": "INTERVAL", "value": "3"},
            ],
            "resources": {"requests": {"cpu": "1m"}},
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
        }],
    });
    if !command.is_null() {
        spec["containers"][0]["command"] = command;
    }
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    spec
}

fn deployment(name: &str, annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": annotations}, "spec": spec},
        },
    })
}

/// A Deployment `name` injected from resource `credential`, whose aws CLI prints the ARN
/// it acts as every 3 s (FAILED when a call fails).
fn aws_cli_loop(name: &str, credential: &str) -> Value {
    deployment(
        name,
        json!({"cognito.kubecred.io/inject": credential}),
        pod_spec(
            "localhost/aws-client:dev",
            json!([
                "sh",
                "-c",
                "while true; do aws sts get-caller-identity --query Arn --output text || echo FAILED; sleep 3; done"
            ]),
            None,
        ),
    )
}

/// The excluded container's loop: what the sidecar answers it, every 5 s.
const PEEK_LOOP: &str = r#"
import os, time, urllib.request, urllib.error
url = "http://127.0.0.1:9911/credentials"
def status(headers):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:
        return type(e).__name__
while True:
    token = "token-file" if os.path.exists(os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/secrets/cognito-credentials-token/token")) else "no-token-file"
    print(status({}), status({"Authorization": "0" * 64}), token, flush=True)
    time.sleep(5)
"#;

/// A call from boto3 in the container-credentials pod (its app id, AWS_SDK_UA_APP_ID).
fn ua_is_tokened(c: &Value) -> bool {
    c["user_agent"]
        .as_str()
        .is_some_and(|u| u.contains("Boto3/") && u.contains("app/tokened"))
}

/// The access key id in Secret `name`.
async fn access_key(secrets: &Api<Secret>, name: &str) -> String {
    let s = secrets.get(name).await.expect("Secret");
    String::from_utf8(s.data.expect("data")["AWS_ACCESS_KEY_ID"].0.clone()).expect("key")
}

fn pod(name: &str, annotations: Value, spec: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    }))
    .expect("a Pod")
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Admissions answered by the webhook's pods, from their `/metrics`.
async fn admissions(slices: &Api<EndpointSlice>, service: &str) -> f64 {
    scraped(
        slices,
        service,
        "cognito_unauth_controller_webhook_admissions_total{",
    )
    .await
}

/// The sum over the webhook's pods of the samples whose line starts with `series`, from
/// their `/metrics`, found as the chart's ServiceMonitor has Prometheus find them: the
/// ready endpoints of the webhook Service's `metrics` port.
async fn scraped(slices: &Api<EndpointSlice>, service: &str, series: &str) -> f64 {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http");
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("the webhook Service's EndpointSlices");
    let mut targets = Vec::new();
    for slice in list.items {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .and_then(|p| p.port)
            .expect("the webhook Service has a metrics port");
        for e in slice.endpoints {
            if e.conditions.and_then(|c| c.ready) == Some(true) {
                targets.extend(e.addresses.into_iter().map(|a| format!("{a}:{port}")));
            }
        }
    }
    assert!(!targets.is_empty(), "no ready webhook endpoint to scrape");
    let mut total = 0.0;
    for target in targets {
        let body = http
            .get(format!("http://{target}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        total += body
            .lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

/// What the scenarios of the test below share: the release's namespace and names, the
/// application namespace (opted in) and another (not), and the APIs they use.
struct Bed {
    rel: TestNs,
    app: TestNs,
    other: TestNs,
    release: String,
    hook: String,
    mwc_name: String,
    mwcs: Api<MutatingWebhookConfiguration>,
    hook_slices: Api<EndpointSlice>,
    pods: Api<Pod>,
    other_pods: Api<Pod>,
    dry: PostParams,
}

#[tokio::test]
async fn annotated_pods_get_rotating_credentials_and_no_other_pod_is_touched() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(LIFETIME).await;
    let (classic_pool, classic_role) = proxy.basic_pool(3600).await;
    let rel = TestNs::new("node-wh").await;
    let app = TestNs::new("node-wh-app").await;
    // Pods here are not sent to the webhook unless annotated.
    let other = TestNs::new("node-wh-other").await;
    restricted(&rel.name);
    restricted(&app.name);
    restricted(&other.name);
    // The ServiceAccount path: every pod of this namespace is sent to the webhook.
    opt_in(&app.name);
    install_crd();
    let release = format!("w{}", rand_suffix());
    let full = format!("{release}-cognito-unauth-controller");
    let hook = format!("{full}-webhook");
    let mwc_name = format!("{hook}-{}", rel.name);
    let endpoint = testbed().in_cluster_endpoint.clone().expect("endpoint");
    let values = webhook_values(
        &rel.name,
        &app.name,
        CA_LIFETIME,
        CERT_LIFETIME,
        &format!("sts: {{endpointUrl: \"{endpoint}\"}}\n"),
    );
    let t = Instant::now();
    helm_install(&release, &rel.name, &values, &[]);
    println!("helm install --wait: {:.1} s", t.elapsed().as_secs_f64());
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(rel.client.clone());
    eventually(Duration::from_secs(30), "the caBundle", || async {
        let m = mwcs.get(&mwc_name).await.ok()?;
        m.webhooks?[0].client_config.ca_bundle.as_ref()?;
        Some(())
    })
    .await;
    let hook_slices: Api<EndpointSlice> = rel.api();
    let pods: Api<Pod> = app.api();
    let secrets: Api<Secret> = app.api();

    // The resource, and a ServiceAccount that names it.
    kubectl_apply(&format!(
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\n\
         metadata: {{name: app, namespace: {ns}}}\n\
         spec: {{identityPoolId: \"{pool}\", renewBefore: 5m}}\n---\n\
         apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\n\
         metadata: {{name: classic, namespace: {ns}}}\n\
         spec: {{identityPoolId: \"{classic_pool}\", flow: Basic, roleArn: \"{classic_role}\"}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\n\
         metadata: {{name: reader, namespace: {ns}, annotations: {{cognito.kubecred.io/credential: app}}}}\n",
        ns = app.name
    ));
    wait_ready(&app.name, "app", 60);
    wait_ready(&app.name, "classic", 60);
    // The ServiceAccount's pods are injected from the moment the resource is issued
    // (docs/usage.md).
    let t = Instant::now();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually(
        Duration::from_secs(30),
        "a pod of the annotated ServiceAccount injected",
        || async {
            let p = pod(
                "by-account",
                json!({}),
                pod_spec("localhost/aws-client:dev", json!(["true"]), Some("reader")),
            );
            let created = pods.create(&dry, &p).await.ok()?;
            created
                .spec?
                .volumes?
                .iter()
                .any(|v| v.name == "cognito-credentials")
                .then_some(())
        },
    )
    .await;
    let listed_after = t.elapsed();
    println!(
        "a pod of the annotated ServiceAccount injected after {:.2} s",
        listed_after.as_secs_f64()
    );
    assert!(listed_after < Duration::from_secs(5), "{listed_after:?}");

    // Admissions all along, while the certificate and its CA are renewed.
    let stop = tokio_util::sync::CancellationToken::new();
    let admitting = tokio::spawn({
        let pods = pods.clone();
        let stop = stop.clone();
        async move {
            let (mut ok, mut errors) = (0u32, Vec::new());
            let p = pod(
                "dry",
                json!({"cognito.kubecred.io/inject": "app"}),
                pod_spec("localhost/aws-client:dev", json!(["true"]), None),
            );
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            while !stop.is_cancelled() {
                match pods.create(&dry, &p).await {
                    Ok(created) => {
                        assert!(
                            created
                                .spec
                                .and_then(|s| s.volumes)
                                .is_some_and(|v| v.iter().any(|v| v.name == "cognito-credentials")),
                            "a dry-run pod not injected"
                        );
                        ok += 1;
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (ok, errors)
        }
    });
    let renewals = tokio::spawn({
        let rel_secrets: Api<Secret> = rel.api();
        let name = format!("{hook}-tls");
        let stop = stop.clone();
        async move {
            let (mut leaves, mut cas) = (BTreeSet::new(), BTreeSet::new());
            while !stop.is_cancelled() {
                if let Ok(s) = rel_secrets.get(&name).await {
                    let a = s.metadata.annotations.unwrap_or_default();
                    leaves.extend(a.get("cognito.kubecred.io/cert-not-before").cloned());
                    cas.extend(a.get("cognito.kubecred.io/ca-not-before").cloned());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (leaves.len(), cas.len())
        }
    });

    // The three workloads: nothing about credentials in their manifests.
    let cli = aws_cli_loop("cli", "app");
    let boto = deployment(
        "boto",
        json!({}),
        pod_spec(
            "localhost/aws-client:dev",
            json!(["python3", "-u", "-c", BOTO3_LOOP]),
            Some("reader"),
        ),
    );
    let noshell = deployment(
        "noshell",
        json!({"cognito.kubecred.io/inject": "app", "cognito.kubecred.io/inject-mode": "container-credentials"}),
        pod_spec("localhost/go-sts:dev", Value::Null, None),
    );
    // Flow Basic: the same injection, credentials of the role the resource names.
    let classic = aws_cli_loop("classic", "classic");
    // The sidecar's token: boto3 in the selected container (its calls marked app/tokened),
    // and a container left out that asks the sidecar without the token and with a wrong
    // one, and looks for the token file.
    let tokened = {
        let mut spec = pod_spec(
            "localhost/aws-client:dev",
            json!(["python3", "-u", "-c", BOTO3_LOOP]),
            None,
        );
        spec["containers"][0]["env"]
            .as_array_mut()
            .expect("env")
            .push(json!({"name": "AWS_SDK_UA_APP_ID", "value": "tokened"}));
        let mut peek = spec["containers"][0].clone();
        peek["name"] = json!("peek");
        peek["command"] = json!(["python3", "-u", "-c", PEEK_LOOP]);
        spec["containers"]
            .as_array_mut()
            .expect("containers")
            .push(peek);
        deployment(
            "tokened",
            json!({"cognito.kubecred.io/inject": "app",
                   "cognito.kubecred.io/inject-mode": "container-credentials",
                   "cognito.kubecred.io/containers": "app"}),
            spec,
        )
    };
    for d in [&cli, &boto, &noshell, &classic, &tokened] {
        kubectl_apply(
            &serde_yaml::to_string(&{
                let mut d = d.clone();
                d["metadata"]["namespace"] = json!(app.name);
                d
            })
            .expect("yaml"),
        );
    }
    // examples/injection.yaml as it is (its pool put in, the local image, the pod pointed
    // at the proxy's STS), its resource and Deployment applied together as a user would:
    // pods are refused until the resource is issued, and the ReplicaSet retries.
    // Credentials of an hour, as Cognito's: none of its rotations falls in the test.
    let example_pool = proxy.realistic_pool(3600).await;
    apply_docs(
        &app.name,
        &example_in_pods("injection.yaml", &example_pool, "20m"),
    );
    kubectl(&[
        "-n",
        &app.name,
        "wait",
        "--for=condition=Available",
        "deployment/cli",
        "deployment/boto",
        "deployment/noshell",
        "deployment/classic",
        "deployment/tokened",
        "deployment/inject-app",
        "--timeout=180s",
    ]);
    the_workloads_are_injected_as_asked(&pods, &app.name).await;

    // Rotations: each workload signs with every credential set written.
    let mut written: Vec<String> = Vec::new();
    let start = Instant::now();
    let deadline = Duration::from_secs(ROTATIONS as u64 * 125 + 180);
    type Agent = (&'static str, fn(&Value) -> bool);
    let agents: [Agent; 4] = [
        ("aws CLI", ua_is_cli),
        ("boto3", |c| ua_is_boto3(c) && !ua_is_tokened(c)),
        ("aws-sdk-go-v2", ua_is_go),
        ("boto3 through the sidecar, with its token", ua_is_tokened),
    ];
    loop {
        let s = secrets.get("app").await.expect("Secret");
        let k =
            String::from_utf8(s.data.expect("data")["AWS_ACCESS_KEY_ID"].0.clone()).expect("key");
        if written.last() != Some(&k) {
            written.push(k);
        }
        if written.len() > ROTATIONS {
            let calls = proxy.sts_calls(&pool).await;
            if agents.iter().all(|(_, f)| {
                written[ROTATIONS..]
                    .iter()
                    .any(|k| keys_used(&calls, f).contains(k))
            }) {
                break;
            }
        }
        assert!(
            start.elapsed() < deadline,
            "after {:?}: keys written {written:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "{ROTATIONS} rotations followed by every workload in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    stop.cancel();
    let calls = proxy.sts_calls(&pool).await;
    assert!(failed(&calls).is_empty(), "{:#?}", failed(&calls));
    let all: BTreeSet<String> = written[..=ROTATIONS].iter().cloned().collect();
    for (what, f) in agents {
        let used = keys_used(&calls, f);
        assert!(
            all.is_subset(&used),
            "{what}: signed with {used:?}, written {written:?}"
        );
    }
    // Flow Basic: the injected pod acts as the role the resource names, with the
    // Secret's credentials, and no call of it failed.
    let want = testbed_support::assumed_role(&classic_role, &format!("{}-classic", app.name));
    let logs = kubectl(&["-n", &app.name, "logs", "deployment/classic", "-c", "app"]);
    assert!(
        !logs.is_empty() && logs.lines().all(|l| l.trim() == want),
        "the Basic pod printed {logs:?}, not only {want}"
    );
    let key = access_key(&secrets, "classic").await;
    let classic_calls = proxy.sts_calls(&classic_pool).await;
    assert!(
        keys_used(&classic_calls, ua_is_cli).contains(&key),
        "STS never saw the Basic Secret's key from the aws CLI: {classic_calls:#?}"
    );
    assert!(
        failed(&classic_calls).is_empty(),
        "{:#?}",
        failed(&classic_calls)
    );
    println!("flow Basic in a pod: the aws CLI signs as {want}");
    // The injection recipe: its pod signs as the pool's guest role with its Secret's key.
    let want = testbed_support::assumed_role(
        &proxy.unauth_role(&example_pool).await,
        testbed_support::COGNITO_SESSION,
    );
    let logs = kubectl(&[
        "-n",
        &app.name,
        "logs",
        "deployment/inject-app",
        "-c",
        "app",
    ]);
    assert!(
        logs.contains(&want) && !logs.contains("FAILED"),
        "examples/injection.yaml's pod printed {logs:?}"
    );
    let key = access_key(&secrets, "inject-app").await;
    let example_calls = proxy.sts_calls(&example_pool).await;
    assert!(keys_used(&example_calls, ua_is_cli).contains(&key));
    assert!(
        failed(&example_calls).is_empty(),
        "{:#?}",
        failed(&example_calls)
    );
    println!("examples/injection.yaml: its pod signs as {want}");
    // The container left out of the sidecar's token: refused without it (401) and with a
    // wrong one (403), and the token file is not there.
    let peeked = kubectl(&["-n", &app.name, "logs", "deployment/tokened", "-c", "peek"]);
    assert!(
        !peeked.is_empty() && peeked.lines().all(|l| l.trim() == "401 403 no-token-file"),
        "the excluded container saw {peeked:?}"
    );
    println!(
        "the excluded container of the container-credentials pod: {} requests, each refused (401 without the token, 403 with a wrong one)",
        2 * peeked.lines().count()
    );
    let (ok, errors) = admitting.await.expect("admission loop");
    let (leaves, cas) = renewals.await.expect("renewals");
    println!(
        "{ok} admissions during {leaves} serving certificates and {cas} CAs; {} failed",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "admissions failed during renewals: {errors:#?}"
    );
    assert!(
        leaves >= 4 && cas >= 2,
        "renewals seen: {leaves} certificates, {cas} CAs"
    );
    let other_pods: Api<Pod> = other.api();
    let bed = Bed {
        rel,
        app,
        other,
        release,
        hook,
        mwc_name,
        mwcs,
        hook_slices,
        pods,
        other_pods,
        dry,
    };
    the_configuration_changes_only_with_its_ca_bundle(&bed, leaves, cas).await;
    pods_without_the_annotation_are_left_as_submitted(&bed).await;
    bad_inputs_are_refused_with_what_to_fix(&bed).await;
    let table = admission_latency(&bed).await;
    let outage = the_webhook_down_and_back(&bed).await;
    if std::env::var_os("CUC_WRITE_DOCS").is_some() {
        write_docs_section(
            "admission-latency",
            "tests/node_webhook.rs, make admission-latency",
            &format!("{table}\n{outage}"),
        );
    }

    uninstall_leaves_nothing(bed).await;
}

/// Each workload's pod as the webhook made it: the Secret mounted and AWS_CONFIG_FILE for
/// credential-process, the sidecar and the container endpoint for container-credentials
/// (in an image that has no shell).
async fn the_workloads_are_injected_as_asked(pods: &Api<Pod>, app_ns: &str) {
    let running = pods.list(&ListParams::default()).await.expect("pods").items;
    let spec_of = |app_label: &str| -> Value {
        let p = running
            .iter()
            .find(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app"))
                    .map(String::as_str)
                    == Some(app_label)
            })
            .unwrap_or_else(|| panic!("a pod of {app_label}"));
        serde_json::to_value(p.spec.as_ref().expect("spec")).expect("json")
    };
    for a in ["cli", "boto", "inject-app"] {
        let s = spec_of(a);
        let c = &s["containers"][0];
        assert!(
            c["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .any(|m| m["mountPath"] == "/var/run/secrets/cognito"
                    && m["name"] == "cognito-credentials"),
            "{a}: {s}"
        );
        assert!(
            c["env"]
                .as_array()
                .expect("env")
                .iter()
                .any(|e| e["name"] == "AWS_CONFIG_FILE"
                    && e["value"] == "/var/run/secrets/cognito/config")
        );
    }
    let s = spec_of("noshell");
    assert_eq!(s["initContainers"][0]["name"], "cognito-credentials", "{s}");
    assert_eq!(s["initContainers"][0]["restartPolicy"], "Always");
    assert!(
        s["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "AWS_CONTAINER_CREDENTIALS_FULL_URI")
    );
    // The image really has no shell.
    let out = std::process::Command::new("kubectl")
        .envs(testbed().env())
        .args([
            "-n",
            app_ns,
            "exec",
            "deploy/noshell",
            "-c",
            "app",
            "--",
            "sh",
            "-c",
            "true",
        ])
        .output()
        .expect("kubectl exec");
    assert!(!out.status.success(), "the no-shell image ran sh");
}

/// The webhook configuration is written only when its caBundle changes, and a caBundle removed
/// by hand comes back.
async fn the_configuration_changes_only_with_its_ca_bundle(bed: &Bed, leaves: usize, cas: usize) {
    let Bed {
        rel,
        hook,
        mwc_name,
        mwcs,
        ..
    } = bed;
    // The configuration is written only when its caBundle changes: the first one, and per
    // CA the new one joining the bundle and the old one leaving; a leaf renewal changes
    // nothing there. Both replicas may try the same change (one is refused on its
    // resourceVersion), hence twice that.
    let hook_user = format!("system:serviceaccount:{}:{hook}", rel.name);
    let patches = writers("mutatingwebhookconfigurations", None, mwc_name)
        .into_iter()
        .filter(|u| *u == hook_user)
        .count();
    println!(
        "{patches} writes of the webhook configuration for {leaves} certificates and {cas} CAs"
    );
    assert!(
        patches <= 2 * (1 + 2 * cas),
        "{patches} writes of the webhook configuration for {leaves} certificates and {cas} CAs"
    );

    // A caBundle removed by hand is put back by the webhook (its watch of the configuration).
    let removed = Instant::now();
    kubectl(&[
        "patch",
        "mutatingwebhookconfiguration",
        mwc_name,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/webhooks/1/clientConfig/caBundle"}]"#,
    ]);
    eventually(Duration::from_secs(10), "the caBundle back", || async {
        let m = mwcs.get(mwc_name).await.ok()?;
        m.webhooks?[1].client_config.ca_bundle.as_ref()?;
        Some(())
    })
    .await;
    println!(
        "a caBundle removed by hand was back after {:.2} s",
        removed.elapsed().as_secs_f64()
    );
}

/// A pod without the annotation: outside the opted-in namespace the webhook is not called;
/// inside it, it is (once) and leaves the pod as submitted.
async fn pods_without_the_annotation_are_left_as_submitted(bed: &Bed) {
    let Bed {
        hook,
        hook_slices,
        pods,
        other_pods,
        ..
    } = bed;
    // A pod without the annotation: outside the opted-in namespace the webhook is not
    // called; inside it, it is (once) and leaves the pod as submitted.
    let plain_spec = pod_spec("localhost/aws-client:dev", json!(["sleep", "600"]), None);
    for (what, api, calls) in [("not opted in", &other_pods, 0.0), ("opted in", &pods, 1.0)] {
        let before = admissions(hook_slices, hook).await;
        let plain = api
            .create(
                &PostParams::default(),
                &pod("plain", json!({}), plain_spec.clone()),
            )
            .await
            .expect("create");
        let stored = serde_json::to_value(plain.spec.expect("spec")).expect("json");
        assert!(
            stored["volumes"]
                .as_array()
                .is_none_or(|v| v.iter().all(|v| v["name"] != "cognito-credentials")),
            "{what}"
        );
        assert_eq!(
            stored["containers"][0]["env"], plain_spec["containers"][0]["env"],
            "{what}"
        );
        assert!(stored["initContainers"].is_null(), "{what}");
        assert_eq!(
            admissions(hook_slices, hook).await - before,
            calls,
            "{what}: webhook calls for a pod without the annotation"
        );
    }
}

/// Malformed annotations and resources that cannot be injected: refused, each with what to fix.
async fn bad_inputs_are_refused_with_what_to_fix(bed: &Bed) {
    let Bed { pods, .. } = bed;
    // Malformed annotations: refused with what to fix.
    let two = {
        let mut s = pod_spec("localhost/aws-client:dev", json!(["true"]), None);
        s["containers"][0]["volumeMounts"] =
            json!([{"name": "x", "mountPath": "/var/run/secrets/cognito"}]);
        s["volumes"] = json!([{"name": "x", "emptyDir": {}}]);
        s
    };
    let host_network = {
        let mut s = pod_spec("localhost/aws-client:dev", json!(["true"]), None);
        s["hostNetwork"] = json!(true);
        s
    };
    let cases: Vec<(Value, Value, &str)> = vec![
        (
            json!({"cognito.kubecred.io/inject": "app", "cognito.kubecred.io/inject-mode": "container-credentials"}),
            host_network,
            "for a hostNetwork pod is the node's",
        ),
        (
            json!({"cognito.kubecred.io/inject": ""}),
            Value::Null,
            "is empty",
        ),
        (
            json!({"cognito.kubecred.io/inject": "App"}),
            Value::Null,
            "lowercase",
        ),
        (
            json!({"cognito.kubecred.io/inject": "my_app"}),
            Value::Null,
            "lowercase",
        ),
        (
            json!({"cognito.kubecred.io/inject": "-app"}),
            Value::Null,
            "start and end",
        ),
        (
            json!({"cognito.kubecred.io/inject": "a".repeat(254)}),
            Value::Null,
            "253",
        ),
        (
            json!({"cognito.kubecred.io/inject": "app", "cognito.kubecred.io/containers": "web"}),
            Value::Null,
            "no container named web",
        ),
        (
            json!({"cognito.kubecred.io/inject": "app", "cognito.kubecred.io/containers": "app,"}),
            Value::Null,
            "empty entry",
        ),
        (
            json!({"cognito.kubecred.io/inject": "app", "cognito.kubecred.io/inject-mode": "env"}),
            Value::Null,
            "not a mode",
        ),
        (
            json!({"cognito.kubecred.io/inject": "app"}),
            two,
            "already mounts volume x",
        ),
    ];
    for (i, (annotations, spec, want)) in cases.iter().enumerate() {
        let spec = if spec.is_null() {
            pod_spec("localhost/aws-client:dev", json!(["true"]), None)
        } else {
            spec.clone()
        };
        let err = pods
            .create(
                &PostParams::default(),
                &pod(&format!("bad-{i}"), annotations.clone(), spec),
            )
            .await
            .expect_err(want);
        assert!(err.to_string().contains(want), "case {i}: {err}");
    }
    let left: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with("bad-"))
        .collect();
    assert!(left.is_empty(), "refused pods exist: {left:?}");
}

/// Admission latency, annotated against plain pods: the table for docs/benchmarks.md.
async fn admission_latency(bed: &Bed) -> String {
    let Bed {
        app,
        hook,
        hook_slices,
        pods,
        other_pods,
        dry,
        ..
    } = bed;
    // The workloads (their SDK loops) are stopped first: on two cores they would time
    // the machine, not the admission.
    kubectl(&[
        "-n",
        &app.name,
        "scale",
        "deployment",
        "--all",
        "--replicas=0",
    ]);
    eventually(
        Duration::from_secs(120),
        "the workloads' pods gone",
        || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items;
            // The bare pods left (sleep) cost nothing; the Deployments' loops do.
            left.iter()
                .all(|p| p.metadata.owner_references.is_none())
                .then_some(())
        },
    )
    .await;
    // Admission latency: the same pod with and without the annotation (the latter where
    // the webhook is not called for it), one after the other, so that both see the same
    // machine; the first 20 of each are not counted (connections, caches).
    let p_with = pod(
        "lat",
        json!({"cognito.kubecred.io/inject": "app"}),
        pod_spec("localhost/aws-client:dev", json!(["true"]), None),
    );
    let p_without = pod(
        "lat",
        json!({}),
        pod_spec("localhost/aws-client:dev", json!(["true"]), None),
    );
    // Where the annotated pods' time goes: the API server's own measure of its webhook
    // calls (encoding the review, the round trip, decoding the answer), and the
    // webhook's of its answers.
    let apiserver_calls = || {
        let text = kubectl(&["get", "--raw", "/metrics"]);
        let sample = |suffix: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with(&format!(
                        "apiserver_admission_webhook_admission_duration_seconds_{suffix}{{name=\"pods.cognito.kubecred.io\""
                    ))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        (sample("sum"), sample("count"))
    };
    let webhook_answers = || async {
        (
            scraped(
                hook_slices,
                hook,
                "cognito_unauth_controller_webhook_admission_duration_seconds_sum ",
            )
            .await,
            scraped(
                hook_slices,
                hook,
                "cognito_unauth_controller_webhook_admission_duration_seconds_count ",
            )
            .await,
        )
    };
    const WARM: usize = 20;
    const TIMED: usize = 200;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut api_before, mut hook_before) = ((0.0, 0.0), (0.0, 0.0));
    for i in 0..WARM + TIMED {
        if i == WARM {
            api_before = apiserver_calls();
            hook_before = webhook_answers().await;
        }
        for (p, api, ms) in [
            (&p_with, &pods, &mut with),
            (&p_without, &other_pods, &mut without),
        ] {
            let t = Instant::now();
            api.create(dry, p).await.expect("dry-run create");
            if i >= WARM {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let api_after = apiserver_calls();
    let hook_after = webhook_answers().await;
    with.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    let mean_ms = |before: (f64, f64), after: (f64, f64)| {
        (after.0 - before.0) * 1000.0 / (after.1 - before.1).max(1.0)
    };
    let api_ms = mean_ms(api_before, api_after);
    let hook_ms = mean_ms(hook_before, hook_after);
    let row = |what: &str, ms: &[f64]| {
        format!(
            "| {what} | {:.1} | {:.1} | {:.1} |",
            quantile(ms, 0.5),
            quantile(ms, 0.99),
            ms[ms.len() - 1]
        )
    };
    let table = format!(
        "| pod creation (server dry-run), {TIMED} each, alternating | p50 ms | p99 ms | max ms |\n| --- | --- | --- | --- |\n{}\n{}\n\n\
         Annotated over not annotated: p50 {:.2}×, p99 {:.2}×. Of an annotated pod's time, the API \
         server's call to the webhook took {api_ms:.2} ms on average (its own \
         `apiserver_admission_webhook_admission_duration_seconds`: encoding the review, the \
         round trip, decoding the answer), of which the webhook's answer took {hook_ms:.2} ms \
         (its `cognito_unauth_controller_webhook_admission_duration_seconds`).\n",
        row(
            "annotated: through the webhook (TLS, the resource from its watch cache, the patch)",
            &with
        ),
        row("not annotated: the webhook is not called", &without),
        quantile(&with, 0.5) / quantile(&without, 0.5),
        quantile(&with, 0.99) / quantile(&without, 0.99),
    );
    println!("{table}");
    assert!(
        quantile(&with, 0.99) < 1000.0,
        "p99 {:.1} ms",
        quantile(&with, 0.99)
    );
    // The webhook's own part: no API call, only its caches (a GET alone is a millisecond).
    assert!(
        hook_ms < 1.5,
        "the webhook answered in {hook_ms:.2} ms on average"
    );
    table
}

/// The webhook down: annotated pods refused, the others created; then back. What was
/// measured, for docs/benchmarks.md.
async fn the_webhook_down_and_back(bed: &Bed) -> String {
    let Bed {
        rel,
        app,
        hook,
        pods,
        other_pods,
        ..
    } = bed;
    // The webhook down: annotated pods refused, the others created; then back.
    kubectl(&[
        "-n",
        &rel.name,
        "scale",
        &format!("deployment/{hook}"),
        "--replicas=0",
    ]);
    kubectl(&[
        "-n",
        &rel.name,
        "wait",
        "--for=delete",
        "pod",
        "-l",
        "app.kubernetes.io/component=webhook",
        "--timeout=60s",
    ]);
    let t = Instant::now();
    let refused = pods
        .create(
            &PostParams::default(),
            &pod(
                "during",
                json!({"cognito.kubecred.io/inject": "app"}),
                pod_spec("localhost/aws-client:dev", json!(["true"]), None),
            ),
        )
        .await
        .expect_err("an annotated pod while no webhook runs");
    let refusal_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(
        refused.to_string().contains("failed calling webhook"),
        "{refused}"
    );
    let t = Instant::now();
    other_pods
        .create(
            &PostParams::default(),
            &pod(
                "plain-during",
                json!({}),
                pod_spec("localhost/aws-client:dev", json!(["sleep", "600"]), None),
            ),
        )
        .await
        .expect("a plain pod while no webhook runs");
    let plain_ms = t.elapsed().as_secs_f64() * 1000.0;
    let late = deployment(
        "late",
        json!({"cognito.kubecred.io/inject": "app"}),
        pod_spec("localhost/aws-client:dev", json!(["sleep", "600"]), None),
    );
    kubectl_apply(
        &serde_yaml::to_string(&{
            let mut d = late.clone();
            d["metadata"]["namespace"] = json!(app.name);
            d
        })
        .expect("yaml"),
    );
    // Its ReplicaSet cannot create the pod (FailedCreate), and none exists.
    eventually(Duration::from_secs(30), "FailedCreate for late", || async {
        let out = kubectl(&[
            "-n",
            &app.name,
            "get",
            "events",
            "--field-selector",
            "reason=FailedCreate",
            "-o",
            "name",
        ]);
        (!out.trim().is_empty()).then_some(())
    })
    .await;
    let none = pods
        .list(&ListParams::default().labels("app=late"))
        .await
        .expect("pods")
        .items;
    assert!(
        none.is_empty(),
        "an annotated pod was created without the webhook"
    );
    kubectl(&[
        "-n",
        &rel.name,
        "scale",
        &format!("deployment/{hook}"),
        "--replicas=2",
    ]);
    let t = Instant::now();
    kubectl(&[
        "-n",
        &rel.name,
        "rollout",
        "status",
        &format!("deployment/{hook}"),
        "--timeout=120s",
    ]);
    let webhook_back_s = t.elapsed().as_secs_f64();
    kubectl(&[
        "-n",
        &app.name,
        "wait",
        "--for=condition=Available",
        "deployment/late",
        "--timeout=180s",
    ]);
    let late_s = t.elapsed().as_secs_f64();
    let late_pod = pods
        .list(&ListParams::default().labels("app=late"))
        .await
        .expect("pods")
        .items;
    let late_spec = serde_json::to_value(late_pod[0].spec.as_ref().expect("spec")).expect("json");
    assert!(
        late_spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["name"] == "cognito-credentials")
    );
    let outage = format!(
        "With no webhook replica running, an annotated pod was refused in {refusal_ms:.0} ms and a pod \
         without the annotation created in {plain_ms:.0} ms; scaled back up, the replicas were Ready after \
         {webhook_back_s:.1} s and the Deployment whose pod had been refused had it available \
         {late_s:.1} s after the scale-up (its ReplicaSet's retry backoff included).\n"
    );
    println!("{outage}");
    outage
}

/// Uninstall: the configuration and the webhook's own Secret go; the namespaces too.
async fn uninstall_leaves_nothing(bed: Bed) {
    let Bed {
        rel,
        app,
        other,
        release,
        hook,
        mwc_name,
        mwcs,
        ..
    } = bed;
    // Uninstall: the configuration and the webhook's own Secret go.
    helm_uninstall(&release, &rel.name);
    assert!(mwcs.get_opt(&mwc_name).await.expect("get").is_none());
    let rel_secrets: Api<Secret> = rel.api();
    eventually(
        Duration::from_secs(60),
        "the webhook's Secret collected",
        || async {
            rel_secrets
                .get_opt(&format!("{hook}-tls"))
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    app.cleanup().await;
    other.cleanup().await;
    rel.cleanup().await;
}
