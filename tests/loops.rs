//! Every loop bounded (issue 11), on the real API server: a reconcile that finds nothing
//! to do writes nothing and calls nothing, on every error path too; a Secret that cannot
//! be written says so; per-object memory goes with the object; crash windows close.
//!
//! Each test first proves that reconciles ran in its quiet window (the controller's own
//! reconciliations counter moved), so "zero writes" is not "zero reconciles".

use std::path::PathBuf;
use std::time::Duration;

use cognito_unauth_controller::aws::cognito::Timeouts;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use testbed_support::{
    Proxy, TestNs, client_from, controller_rbac, eventually, impersonating_kubeconfig, kubectl,
    kubectl_stdin, record_fault,
};

use testbed_support::inproc::*;

/// The controller reconciles `name` at least once more than `before` (it was touched).
async fn touched_and_reconciled(ns: &TestNs, ctl: &Running, name: &str, token: &str) {
    let before = ctl.reconciles();
    merge_patch(
        ns,
        name,
        json!({"metadata": {"annotations": {"test.example/touch": token}}}),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "a reconcile after the touch",
        || async { (ctl.reconciles() > before).then_some(()) },
    )
    .await;
}

/// Issue 11, bug 1: a Secret name held by someone else is reported once; the next
/// reconciles write nothing, count nothing, call nothing.
#[tokio::test]
async fn a_secret_conflict_is_said_once_and_settles() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("conflict-settles").await;
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app"}, "stringData": {"k": "theirs"}
    }))
    .unwrap();
    ns.api::<Secret>()
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    let first = wait_reason(&ns, "app", "False", "SecretConflict").await;
    // Before the fix: ~120 status writes a second, failedAttempts climbing.
    let counting = writes_during(&ns, "app", "app", Duration::from_secs(6));
    let touching = async {
        // Two reconciles inside the window, each caused by a touch (which is itself one
        // write of the resource, counted below).
        tokio::time::sleep(Duration::from_secs(1)).await;
        touched_and_reconciled(&ns, &ctl, "app", "1").await;
        touched_and_reconciled(&ns, &ctl, "app", "2").await;
    };
    let (writes, ()) = tokio::join!(counting, touching);
    assert_eq!(
        writes,
        2,
        "only the two touches may write; the controller wrote {}",
        writes.len() - 2
    );
    let now = ns
        .api::<cognito_unauth_controller::crd::CognitoUnauthCredential>()
        .get("app")
        .await
        .unwrap();
    let st = now.status.unwrap();
    assert_eq!(
        st.failed_attempts,
        first.status.as_ref().unwrap().failed_attempts
    );
    assert_eq!(
        st.failed_attempts, None,
        "a conflict is not a failed attempt"
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 0);
    let ev = events(&ns, "app").await;
    assert_eq!(
        ev.iter().filter(|(_, r, _)| r == "SecretConflict").count(),
        1,
        "{ev:?}"
    );
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "conflict-settles",
        "An unowned Secret holds the name, and the resource is reconciled again and again",
        "said once (one event, one status write); later reconciles write nothing, count no failure, call nothing",
        &format!(
            "{} controller writes over 6 s with 2 reconciles in it; failedAttempts unset; 0 Cognito calls",
            writes.len() - 2
        ),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// Issue 11, bug 2: a data key another writer adds is theirs. Before the fix every
/// reconcile saw drift and rotated: tens of Cognito calls and Secret writes a second.
#[tokio::test]
async fn a_data_key_someone_else_adds_is_left_alone_and_costs_nothing() {
    let (proxy, pool, ns, ctl) = app_ready("foreign-key", 3600, json!({})).await;
    let secrets = ns.api::<Secret>();
    let before = secrets.get("app").await.unwrap();
    let reconciles = ctl.reconciles();
    // What a user does: kubectl patch secret app --type merge -p '{"data":{"EXTRA_KEY":"eA=="}}'
    kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "secret",
        "app",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"EXTRA_KEY":"eA=="}}"#,
    ]);
    let counting = writes_during(&ns, "app", "app", Duration::from_secs(6));
    let touching = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        touched_and_reconciled(&ns, &ctl, "app", "1").await;
    };
    let (writes, ()) = tokio::join!(counting, touching);
    assert!(
        ctl.reconciles() >= reconciles + 2.0,
        "the Secret change and the touch were reconciled"
    );
    assert_eq!(writes, 1, "only the touch may write");
    let after = secrets.get("app").await.unwrap();
    assert_eq!(text(&after, "EXTRA_KEY"), "x", "their key stays");
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "config",
        "credential-process.json",
    ] {
        assert_eq!(
            text(&after, k),
            text(&before, k),
            "{k} unchanged: no rotation"
        );
    }
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "foreign-key",
        "Someone adds a data key to the Secret (kubectl patch secret --type merge -p '{\"data\":{\"EXTRA_KEY\":\"eA==\"}}')",
        "their key stays; no rotation, no Secret write, no Cognito call; Ready stays True",
        &format!(
            "{} controller writes over 6 s with 2 reconciles; 1 GetCredentialsForIdentity in all",
            writes.len() - 1
        ),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// Issue 11, bug 3: an immutable Secret. Before the fix Ready stayed CredentialsIssued
/// past the credentials' expiry, and each retry fetched credentials and threw them away.
#[tokio::test]
async fn an_immutable_secret_is_reported_expires_honestly_and_costs_no_calls() {
    let (proxy, pool, ns, ctl) = app_ready("immutable", 20, json!({"renewBefore": "5m"})).await;
    kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "secret",
        "app",
        "--type",
        "merge",
        "-p",
        r#"{"immutable":true}"#,
    ]);
    let calls = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    // Renewal comes at two thirds of 20 s: new credentials are needed and cannot be written.
    let o = wait_reason(&ns, "app", "False", "SecretWriteFailed").await;
    let msg = &o.status.as_ref().unwrap().conditions[0].message;
    assert!(
        msg.contains("immutable") && msg.contains("Delete it"),
        "{msg}"
    );
    let o = wait_reason(&ns, "app", "False", "Expired").await;
    assert!(
        o.status.as_ref().unwrap().conditions[0]
            .message
            .contains("immutable")
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls,
        "no call whose result could not be written"
    );
    let ev = events(&ns, "app").await;
    assert!(
        ev.iter()
            .any(|(t, r, m)| t == "Warning" && r == "RotationFailed" && m.contains("immutable")),
        "{ev:?}"
    );
    assert!(
        ctl.sample(
            "cognito_unauth_controller_rotation_failures_total{reason=\"SecretWriteFailed\"}"
        ) >= 1.0
    );
    // The way out the message names: delete it; a new one is written at once.
    kubectl(&["-n", &ns.name, "delete", "secret", "app"]);
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    assert_eq!(ns.api::<Secret>().get("app").await.unwrap().immutable, None);
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "immutable-secret",
        "The Secret is made immutable while Ready (20 s credentials)",
        "at renewal Ready=False/SecretWriteFailed naming the way out, then Expired at expiry; Warning event; no Cognito call; deleting it recovers",
        "SecretWriteFailed, then Expired; 0 GetCredentialsForIdentity while immutable; recovered after the delete",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// A ValidatingAdmissionPolicy refusing `operations` on the Secret `secret` in `ns`
/// (what an admission webhook or a policy engine does), in force once this returns.
fn deny_secret(ns: &str, secret: &str, operations: &str) -> String {
    let name = format!("deny-{ns}-{secret}");
    let manifest = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
    resourceRules:
    - {{apiGroups: [""], apiVersions: [v1], operations: [{operations}], resources: [secrets]}}
  validations:
  - expression: "request.name != '{secret}'"
    message: "policy says no to Secret {secret}"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
"#
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    name
}

fn allow_again(policy: &str) {
    kubectl(&["delete", "validatingadmissionpolicybinding", policy]);
    kubectl(&["delete", "validatingadmissionpolicy", policy]);
}

/// Issue 11, bug 3: a write the API server refuses (a policy, like a webhook denial).
/// Reported as SecretWriteFailed with an event; attempts back off (each costs one call).
#[tokio::test]
async fn a_refused_secret_write_is_reported_and_backs_off() {
    let (proxy, pool, ns, ctl) = app_ready("refused", 3600, json!({})).await;
    let secrets = ns.api::<Secret>();
    let good = secrets.get("app").await.unwrap().data;
    let policy = deny_secret(&ns.name, "app", "UPDATE");
    // The policy is in force when a dry-run update of the Secret is refused.
    eventually(
        Duration::from_secs(30),
        "the policy to be in force",
        || async {
            let r = secrets
                .patch(
                    "app",
                    &PatchParams {
                        dry_run: true,
                        ..PatchParams::default()
                    },
                    &Patch::Merge(json!({"metadata": {"labels": {"probe": "x"}}})),
                )
                .await;
            r.is_err().then_some(())
        },
    )
    .await;
    let calls = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    let started = std::time::Instant::now();
    force_rotate(&ns, "app", "1").await;
    let o = wait_reason(&ns, "app", "False", "SecretWriteFailed").await;
    let st = o.status.unwrap();
    assert!(
        st.conditions[0].message.contains("policy says no"),
        "{}",
        st.conditions[0].message
    );
    assert!(
        st.conditions[0]
            .message
            .contains("keeps credentials valid until")
    );
    // Over a window, attempts follow the backoff (5 s, 10 s, ...), not the event loop.
    let window = Duration::from_secs(12);
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    let made = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await - calls;
    // Worked out by hand: attempts at 0, then after 2.5..5 s, then 5..10 s more: at most 3 in 12 s.
    assert!((1..=3).contains(&made), "{made} calls in 12 s");
    assert_eq!(
        secrets.get("app").await.unwrap().data,
        good,
        "the last good Secret is kept"
    );
    let ev = events(&ns, "app").await;
    assert!(
        ev.iter().any(|(t, r, m)| t == "Warning"
            && r == "RotationFailed"
            && m.contains("could not be written")),
        "{ev:?}"
    );
    allow_again(&policy);
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    assert_eq!(o.status.unwrap().failed_attempts, None);
    assert_ne!(secrets.get("app").await.unwrap().data, good);
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "refused-write",
        "The API server refuses Secret writes (a ValidatingAdmissionPolicy, as a webhook would)",
        "Ready=False/SecretWriteFailed with the API server's message; Warning event; the last good Secret kept; attempts back off (at most 3 in 12 s); recovers when allowed",
        &format!("{made} GetCredentialsForIdentity in 12 s; Secret unchanged; recovered"),
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// Issue 11, bugs 4 and 6: status writes refused. The identity GetId returned is not
/// lost (before the fix every retry called GetId again), the Secret is still written;
/// when status can be written again it says what the Secret holds (lastRotationTime
/// included); and the controller's memory of the resource goes with it.
#[tokio::test]
async fn refused_status_writes_lose_no_identity_and_memory_goes_with_the_resource() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("no-status").await;
    let user = format!("ctl-{}", ns.name);
    controller_rbac(&ns.name, &user, false, false);
    let kc = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.kubeconfig", ns.name));
    impersonating_kubeconfig(&user, &[], &kc);
    let ctl = Running::start_as(&ns, client_from(&kc).await, Timeouts::default()).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    let s = wait_secret(&ns, "app", "the Secret", |_| true).await;
    eventually(
        Duration::from_secs(40),
        "three failed reconciles",
        || async {
            (ctl.sample("cognito_unauth_controller_reconcile_errors_total") >= 3.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        proxy.pool_calls(&pool, "GetId").await,
        1,
        "one identity, however often status fails"
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );
    let identity = annotation(&s, "cognito.kubecred.io/identity-id");
    assert!(!identity.is_empty());
    assert!(ctl.sample("cognito_unauth_controller_tracked_objects") >= 1.0);

    // Status can be written again: it says what the Secret holds.
    controller_rbac(&ns.name, &user, true, false);
    touched_and_reconciled(&ns, &ctl, "app", "1").await;
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let st = o.status.unwrap();
    assert_eq!(st.identity_id.as_deref(), Some(identity.as_str()));
    let issued = annotation(&s, "cognito.kubecred.io/issued-at")
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert_eq!(
        st.last_rotation_time.unwrap().0.as_second(),
        issued.as_second()
    );

    // A crash window: the Secret is rotated but its status write fails; later status
    // must carry the new rotation time (before the fix it kept the first one forever).
    controller_rbac(&ns.name, &user, false, false);
    force_rotate(&ns, "app", "1").await;
    let rotated = wait_secret(&ns, "app", "the forced rotation", |s| {
        s.annotations()
            .get("cognito.kubecred.io/force-rotate")
            .map(String::as_str)
            == Some("1")
    })
    .await;
    controller_rbac(&ns.name, &user, true, false);
    touched_and_reconciled(&ns, &ctl, "app", "2").await;
    let issued = annotation(&rotated, "cognito.kubecred.io/issued-at")
        .parse::<jiff::Timestamp>()
        .unwrap();
    wait_cuc(
        &ns,
        "app",
        "lastRotationTime of the forced rotation",
        move |o| {
            o.status
                .as_ref()
                .and_then(|s| s.last_rotation_time.as_ref())
                .map(|t| t.0.as_second())
                == Some(issued.as_second())
        },
    )
    .await;
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);

    // Deleted: nothing remembered about it.
    kubectl(&["-n", &ns.name, "delete", "cuc", "app"]);
    eventually(
        Duration::from_secs(20),
        "no memory of the deleted resource",
        || async { (ctl.sample("cognito_unauth_controller_tracked_objects") == 0.0).then_some(()) },
    )
    .await;
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "status-refused",
        "Status writes refused (RBAC) from the first issue on, then a rotation whose status write fails",
        "one identity (GetId once); the Secret written; when status can be written it says what the Secret holds (identity, lastRotationTime); the resource's memory goes with it",
        "1 GetId over 3+ failed reconciles; lastRotationTime = the Secret's issue time after each; tracked objects 0 after the delete",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// Issue 11, bug 6: after a secretName change the old Secret is deleted once the new one
/// holds credentials; a failed delete is retried (its name stays in status).
#[tokio::test]
async fn the_secret_under_a_former_name_is_deleted_even_after_a_failed_delete() {
    let (proxy, pool, ns, ctl) = app_ready("rename", 3600, json!({"secretName": "one"})).await;
    let policy = deny_secret(&ns.name, "one", "DELETE");
    let secrets = ns.api::<Secret>();
    eventually(
        Duration::from_secs(30),
        "the policy to be in force",
        || async {
            let dp = kube::api::DeleteParams {
                dry_run: true,
                ..Default::default()
            };
            secrets.delete("one", &dp).await.is_err().then_some(())
        },
    )
    .await;
    merge_patch(&ns, "app", json!({"spec": {"secretName": "two"}})).await;
    let o = wait_cuc(
        &ns,
        "app",
        "the new Secret in use, the old one pending",
        |o| {
            o.status.as_ref().is_some_and(|s| {
                s.secret_name.as_deref() == Some("two") && s.previous_secret_names == ["one"]
            })
        },
    )
    .await;
    assert_eq!(ready(&o), Some(("True".into(), "CredentialsIssued".into())));
    assert!(
        secrets.get_opt("one").await.unwrap().is_some(),
        "kept while it cannot be deleted"
    );
    allow_again(&policy);
    eventually(Duration::from_secs(30), "the policy to be gone", || async {
        let dp = kube::api::DeleteParams {
            dry_run: true,
            ..Default::default()
        };
        secrets.delete("one", &dp).await.is_ok().then_some(())
    })
    .await;
    touched_and_reconciled(&ns, &ctl, "app", "1").await;
    wait_cuc(&ns, "app", "no former Secret left", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.previous_secret_names.is_empty())
    })
    .await;
    assert!(secrets.get_opt("one").await.unwrap().is_none());
    assert!(secrets.get_opt("two").await.unwrap().is_some());
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "rename-delete-fails",
        "spec.secretName changes while the old Secret cannot be deleted (a policy refuses)",
        "the new Secret is written and Ready; the old one is kept and listed in status.previousSecretNames until its delete succeeds",
        "old Secret kept while refused, deleted at the next reconcile after; 1 GetId",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// Issue 11, bug 7: with spec.verify, STS giving no answer is not a verdict: the fresh
/// credentials are written (before the fix they were thrown away until the Secret
/// expired), Verified is Unknown, and it is asked again.
#[tokio::test]
async fn an_sts_outage_does_not_throw_credentials_away() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("sts-outage").await;
    let ctl = Running::start(&ns).await;
    let rule = proxy
        .add_rule(
            json!({"pool": pool, "operation": "GetCallerIdentity", "error": "ServiceUnavailable"}),
        )
        .await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool, "verify": true})).await;
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    assert_eq!(
        condition(&o, "Verified"),
        Some(("Unknown".into(), "VerificationUnavailable".into()))
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );
    // A refusal is still a verdict: force a rotation under AccessDenied.
    proxy.delete_rule(rule).await;
    let refuse = proxy
        .add_rule(json!({"pool": pool, "operation": "GetCallerIdentity", "error": "InvalidClientTokenId"}))
        .await;
    let good = ns.api::<Secret>().get("app").await.unwrap().data;
    force_rotate(&ns, "app", "1").await;
    let o = wait_reason(&ns, "app", "False", "VerificationFailed").await;
    assert_eq!(
        condition(&o, "Verified"),
        Some(("False".into(), "VerificationFailed".into()))
    );
    assert_eq!(
        ns.api::<Secret>().get("app").await.unwrap().data,
        good,
        "refused credentials are not written"
    );
    proxy.delete_rule(refuse).await;
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "sts-outage",
        "spec.verify with STS answering 503 (no verdict), then InvalidClientTokenId (a verdict)",
        "no answer: the fresh credentials are written, Ready True, Verified Unknown/VerificationUnavailable; a refusal: not written, Ready False/VerificationFailed",
        "1 GetCredentialsForIdentity, Secret written under the outage; refused credentials kept out",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// A Secret the controller knows from the watch's fingerprint is read only when a step
/// needs its key material: spec.verify turned on for a Ready resource reads it once,
/// asks STS once, rotates nothing and leaves the Secret as it was; the next turns read
/// nothing.
#[tokio::test]
async fn verification_turned_on_reads_the_known_secret_once_and_rotates_nothing() {
    let (proxy, pool, ns, ctl) = app_ready("verify-on", 3600, json!({})).await;
    let data = ns.api::<Secret>().get("app").await.unwrap().data;
    let issued = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    let reads = testbed_support::reads("secrets", Some(&ns.name), "app");
    merge_patch(&ns, "app", json!({"spec": {"verify": true}})).await;
    let o = wait_cuc(&ns, "app", "Verified", |o| {
        condition(o, "Verified").is_some_and(|(s, _)| s == "True")
    })
    .await;
    assert_eq!(
        condition(&o, "Verified"),
        Some(("True".into(), "CallerIdentityVerified".into()))
    );
    // The turns that follow (our status write) settle without reading or calling.
    assert_eq!(
        writes_during(&ns, "app", "app", Duration::from_secs(3)).await,
        0
    );
    assert_eq!(
        testbed_support::reads("secrets", Some(&ns.name), "app") - reads,
        1,
        "one read, for the key material STS is asked about"
    );
    assert_eq!(proxy.pool_calls(&pool, "GetCallerIdentity").await, 1);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        issued
    );
    assert_eq!(ns.api::<Secret>().get("app").await.unwrap().data, data);
    ctl.stop().await;
    ns.cleanup().await;
}
