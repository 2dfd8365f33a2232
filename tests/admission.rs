//! Bad input is refused at admission by the CRD's schema and CEL rules, on the real API
//! server, with a message a user understands. Server-side dry-run apply with strict field
//! validation (what `kubectl apply` does) so nothing is stored.

use cognito_unauth_controller::crd::{CognitoUnauthCredential, limits};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use testbed_support::{TestNs, install_crd};

const POOL: &str = "us-east-1:0a1b2c3d-1111-2222-3333-444455556666";
const ROLE: &str = "arn:aws:iam::123456789012:role/guest-full";

fn with(spec: Value) -> Value {
    json!({
        "apiVersion": "cognito.kubecred.io/v1alpha1",
        "kind": "CognitoUnauthCredential",
        "metadata": {"name": "x"},
        "spec": spec,
    })
}

/// `n` entries of a label or annotation map: 128-character keys, `len`-character values.
fn entries(n: usize, len: usize) -> Value {
    (0..n)
        .map(|i| (format!("example.com/{i:0>116}"), json!("v".repeat(len))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn dry_run(api: &Api<CognitoUnauthCredential>, obj: &Value) -> Result<(), String> {
    let pp = PatchParams::apply("admission-tests")
        .dry_run()
        .validation_strict();
    let name = obj["metadata"]["name"].as_str().unwrap_or("x");
    match api.patch(name, &pp, &Patch::Apply(obj)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.message),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn malformed_resources_are_refused_with_clear_messages() {
    let ns = TestNs::new("admission").await;
    install_crd();
    let api = ns.api::<CognitoUnauthCredential>();
    let long_pool = format!("us-east-1:{}", "0".repeat(50));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no spec",
            json!({"apiVersion": "cognito.kubecred.io/v1alpha1", "kind": "CognitoUnauthCredential", "metadata": {"name": "x"}}),
            "spec: Required value",
        ),
        (
            "empty spec",
            with(json!({})),
            "spec.identityPoolId: Required value",
        ),
        (
            "empty pool id",
            with(json!({"identityPoolId": ""})),
            "spec.identityPoolId",
        ),
        (
            "pool id without region",
            with(json!({"identityPoolId": "0a1b2c3d-1111-2222-3333-444455556666"})),
            "spec.identityPoolId: Invalid value",
        ),
        (
            "pool id with upper case",
            with(json!({"identityPoolId": "US-EAST-1:0A1B2C3D-1111-2222-3333-444455556666"})),
            "should match",
        ),
        (
            "pool id not a uuid",
            with(json!({"identityPoolId": "us-east-1:not-a-uuid"})),
            "should match",
        ),
        (
            "pool id too long",
            with(json!({"identityPoolId": long_pool})),
            "Too long: may not be",
        ),
        (
            "pool id a number",
            with(json!({"identityPoolId": 42})),
            ".spec.identityPoolId: expected string",
        ),
        (
            "region contradicts the pool",
            with(json!({"identityPoolId": POOL, "region": "eu-west-1"})),
            "region must equal the region prefix of identityPoolId",
        ),
        (
            "region malformed",
            with(json!({"identityPoolId": POOL, "region": "Tokyo"})),
            "spec.region: Invalid value",
        ),
        (
            "renewBefore unparseable",
            with(json!({"identityPoolId": POOL, "renewBefore": "twenty minutes"})),
            "spec.renewBefore: Invalid value",
        ),
        (
            "renewBefore without unit",
            with(json!({"identityPoolId": POOL, "renewBefore": "20"})),
            "spec.renewBefore: Invalid value",
        ),
        (
            "renewBefore too short",
            with(json!({"identityPoolId": POOL, "renewBefore": "4m59s"})),
            "renewBefore must be between 5m and 50m",
        ),
        (
            "renewBefore too long",
            with(json!({"identityPoolId": POOL, "renewBefore": "1h"})),
            "renewBefore must be between 5m and 50m",
        ),
        (
            "renewBefore negative",
            with(json!({"identityPoolId": POOL, "renewBefore": "-20m"})),
            "spec.renewBefore: Invalid value",
        ),
        (
            "renewBefore a number",
            with(json!({"identityPoolId": POOL, "renewBefore": 1200})),
            ".spec.renewBefore: expected string",
        ),
        (
            "secretName upper case",
            with(json!({"identityPoolId": POOL, "secretName": "My-Secret"})),
            "spec.secretName: Invalid value",
        ),
        (
            "secretName with slash",
            with(json!({"identityPoolId": POOL, "secretName": "other-ns/secret"})),
            "spec.secretName: Invalid value",
        ),
        (
            "secretName empty",
            with(json!({"identityPoolId": POOL, "secretName": ""})),
            "spec.secretName",
        ),
        (
            "secretName too long",
            with(json!({"identityPoolId": POOL, "secretName": "a".repeat(254)})),
            "Too long",
        ),
        (
            "unknown field",
            with(json!({"identityPoolId": POOL, "secretNamespace": "kube-system"})),
            ".spec.secretNamespace: field not declared in schema",
        ),
        (
            "suspend not a bool",
            with(json!({"identityPoolId": POOL, "suspend": "yes"})),
            ".spec.suspend: expected boolean",
        ),
        (
            "role ARN malformed",
            with(json!({"identityPoolId": POOL, "customRoleArn": "my-role"})),
            "spec.customRoleArn",
        ),
        (
            "mountPath relative",
            with(json!({"identityPoolId": POOL, "mountPath": "secrets/aws"})),
            "spec.mountPath: Invalid value",
        ),
        (
            "mountPath with a space (it is a credential_process command line)",
            with(json!({"identityPoolId": POOL, "mountPath": "/var/run/my secrets"})),
            "spec.mountPath: Invalid value",
        ),
        (
            "mountPath with a shell character",
            with(json!({"identityPoolId": POOL, "mountPath": "/tmp;rm -rf"})),
            "spec.mountPath: Invalid value",
        ),
        (
            "restart target of another kind",
            with(
                json!({"identityPoolId": POOL, "rolloutRestartTargets": [{"kind": "Pod", "name": "web"}]}),
            ),
            "spec.rolloutRestartTargets[0].kind: Unsupported value",
        ),
        (
            "restart target without a name",
            with(
                json!({"identityPoolId": POOL, "rolloutRestartTargets": [{"kind": "Deployment"}]}),
            ),
            "spec.rolloutRestartTargets[0].name: Required value",
        ),
        (
            "restart target named twice",
            with(
                json!({"identityPoolId": POOL, "rolloutRestartTargets": [{"kind": "Deployment", "name": "web"}, {"kind": "Deployment", "name": "web"}]}),
            ),
            "duplicate entries for key [kind=\"Deployment\",name=\"web\"]",
        ),
        (
            "verify not a bool",
            with(json!({"identityPoolId": POOL, "verify": "yes"})),
            ".spec.verify: expected boolean",
        ),
        (
            "template labels not strings",
            with(json!({"identityPoolId": POOL, "secretTemplate": {"labels": {"a": 1}}})),
            ".spec.secretTemplate.labels.a: expected string",
        ),
        // Flow Basic's fields (issue 15).
        (
            "flow unknown",
            with(json!({"identityPoolId": POOL, "flow": "Classic"})),
            "spec.flow: Unsupported value: \"Classic\"",
        ),
        (
            "flow in lower case",
            with(json!({"identityPoolId": POOL, "flow": "basic", "roleArn": ROLE})),
            "spec.flow: Unsupported value",
        ),
        (
            "flow Basic without roleArn",
            with(json!({"identityPoolId": POOL, "flow": "Basic"})),
            "roleArn is required when flow is Basic",
        ),
        (
            "roleArn with flow Enhanced",
            with(json!({"identityPoolId": POOL, "roleArn": ROLE})),
            "roleArn is only used with flow Basic",
        ),
        (
            "roleArn with flow Enhanced, said explicitly",
            with(json!({"identityPoolId": POOL, "flow": "Enhanced", "roleArn": ROLE})),
            "roleArn is only used with flow Basic",
        ),
        (
            "customRoleArn with flow Basic",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "customRoleArn": ROLE}),
            ),
            "customRoleArn is only used with flow Enhanced",
        ),
        (
            "roleArn malformed",
            with(json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": "guest-full"})),
            "spec.roleArn",
        ),
        (
            "roleArn of a user, not a role",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": "arn:aws:iam::123456789012:user/guest"}),
            ),
            "spec.roleArn: Invalid value",
        ),
        (
            "sessionDuration with flow Enhanced",
            with(json!({"identityPoolId": POOL, "sessionDuration": "2h"})),
            "sessionDuration is only used with flow Basic",
        ),
        (
            "sessionDuration too short",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "sessionDuration": "14m59s"}),
            ),
            "sessionDuration must be between 15m and 12h",
        ),
        (
            "sessionDuration too long",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "sessionDuration": "12h0m1s"}),
            ),
            "sessionDuration must be between 15m and 12h",
        ),
        (
            "sessionDuration unparseable",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "sessionDuration": "one hour"}),
            ),
            "spec.sessionDuration: Invalid value",
        ),
        (
            "sessionDuration a number of seconds",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "sessionDuration": 3600}),
            ),
            ".spec.sessionDuration: expected string",
        ),
        (
            "roleSessionName with flow Enhanced",
            with(json!({"identityPoolId": POOL, "roleSessionName": "app"})),
            "roleSessionName is only used with flow Basic",
        ),
        (
            "roleSessionName with a space",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "roleSessionName": "my app"}),
            ),
            "spec.roleSessionName: Invalid value",
        ),
        (
            "roleSessionName with a slash",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "roleSessionName": "ns/app"}),
            ),
            "spec.roleSessionName: Invalid value",
        ),
        (
            "roleSessionName of one character",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "roleSessionName": "a"}),
            ),
            "spec.roleSessionName",
        ),
        (
            "roleSessionName too long",
            with(
                json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "roleSessionName": "a".repeat(65)}),
            ),
            "Too long",
        ),
        (
            "17 template labels",
            with(json!({"identityPoolId": POOL, "secretTemplate": {"labels": entries(17, 63)}})),
            "must have at most 16 items",
        ),
        (
            "a template label value of 64 characters",
            with(json!({"identityPoolId": POOL, "secretTemplate": {"labels": entries(1, 64)}})),
            "secretTemplate.labels: each key at most 128 characters, each value at most 63",
        ),
        (
            "a template label key of 129 characters",
            with(
                json!({"identityPoolId": POOL, "secretTemplate": {"labels": {"k".repeat(129): "v"}}}),
            ),
            "secretTemplate.labels: each key at most 128 characters",
        ),
        (
            "17 template annotations",
            with(
                json!({"identityPoolId": POOL, "secretTemplate": {"annotations": entries(17, 1)}}),
            ),
            "must have at most 16 items",
        ),
        (
            "a template annotation of 1 MiB",
            with(
                json!({"identityPoolId": POOL, "secretTemplate": {"annotations": entries(1, 1 << 20)}}),
            ),
            "secretTemplate.annotations: each key at most 128 characters, each value at most 256",
        ),
        (
            "a template of more than 2048 characters in all",
            with(json!({"identityPoolId": POOL, "secretTemplate": {
                "labels": entries(8, 63),
                "annotations": entries(8, 1),
            }})),
            "secretTemplate: labels and annotations at most 2048 characters in all",
        ),
        (
            "9 rollout restart targets",
            with(
                json!({"identityPoolId": POOL, "rolloutRestartTargets": (0..9)
                .map(|i| json!({"kind": "Deployment", "name": format!("web-{i}")}))
                .collect::<Vec<_>>()}),
            ),
            "must have at most 8 items",
        ),
        (
            "roleArn of 641 characters",
            with(json!({"identityPoolId": POOL, "flow": "Basic",
                "roleArn": format!("{:r<641}", "arn:aws:iam::123456789012:role/")})),
            "spec.roleArn: Too long: may not be more than 640",
        ),
        (
            "mountPath of 257 characters",
            with(json!({"identityPoolId": POOL, "mountPath": format!("{:m<257}", "/")})),
            "spec.mountPath: Too long: may not be more than 256",
        ),
    ];
    assert!(cases.len() >= 20);
    let mut failures = vec![];
    for (what, obj, want) in &cases {
        match dry_run(&api, obj).await {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(msg) if !msg.contains(want) => {
                failures.push(format!("{what}: message {msg:?} lacks {want:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The same rules let good input through.
    let good = [
        json!({"identityPoolId": POOL}),
        json!({"identityPoolId": POOL, "region": "us-east-1", "renewBefore": "5m"}),
        json!({"identityPoolId": POOL, "renewBefore": "50m", "secretName": "app.aws-creds"}),
        json!({"identityPoolId": "ap-northeast-1:fc81b5de-4fa4-4087-adb5-4598fd25982a", "renewBefore": "45m0s", "suspend": true}),
        json!({"identityPoolId": "us-gov-west-1:fc81b5de-4fa4-4087-adb5-4598fd25982a", "customRoleArn": "arn:aws-us-gov:iam::123456789012:role/guest/app"}),
        json!({"identityPoolId": POOL, "mountPath": "/var/run/secrets/aws", "verify": true, "rolloutRestartTargets": [{"kind": "Deployment", "name": "web"}, {"kind": "StatefulSet", "name": "web"}, {"kind": "DaemonSet", "name": "agent.v2"}]}),
        json!({"identityPoolId": POOL, "flow": "Enhanced", "customRoleArn": ROLE}),
        json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE}),
        json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "sessionDuration": "15m", "renewBefore": "5m"}),
        json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": "arn:aws-cn:iam::123456789012:role/path/guest", "sessionDuration": "12h", "roleSessionName": "app@cluster.a_1=+,-", "verify": true}),
        json!({"identityPoolId": POOL, "flow": "Basic", "roleArn": ROLE, "sessionDuration": "1h30m", "roleSessionName": "a".repeat(64)}),
    ];
    // The largest spec the limits allow (the one that bounds a resource's size).
    let largest = serde_json::to_value(limits::largest(POOL)).expect("spec");
    assert_eq!(dry_run(&api, &with(largest)).await, Ok(()));
    for spec in good {
        assert_eq!(dry_run(&api, &with(spec.clone())).await, Ok(()), "{spec}");
    }
    ns.cleanup().await;
}
