//! The controller against the real API server and the Cognito emulator behind the proxy.
//!
//! Each test has its own namespace, its own identity pool (so the proxy's counts are its
//! own) and its own in-process controller watching only that namespace.

use std::time::Duration;

use cognito_unauth_controller::aws::cognito::Timeouts;
use cognito_unauth_controller::crd::CognitoUnauthCredential;
use cognito_unauth_controller::reconcile::{self, secret};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use testbed_support::{Proxy, TestNs, install_crd, testbed};

use testbed_support::inproc::*;

/// The fault matrix (docs/reliability.md is generated from it).
mod faults;

/// Flow Basic (issue 15): its contract, and its faults as rows of the matrix.
mod basic;

/// The chart's alerts, with promtool, on series recorded from a run (issue 14).
mod alerts;

fn rand_number() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000_000_000
}

#[tokio::test]
async fn issues_a_complete_secret_with_one_identity_and_honest_status() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("issue").await;
    let ctl = Running::start(&ns).await;
    create_cuc(
        &ns,
        "app",
        json!({"identityPoolId": pool, "secretTemplate": {"labels": {"team": "a"}, "annotations": {"note": "n"}}}),
    )
    .await;
    let obj = wait_reason(&ns, "app", "True", "CredentialsIssued").await;

    let s = ns.api::<Secret>().get("app").await.unwrap();
    let issued = proxy.issued().await;
    // The proxy's record is shared by every test running at once: ours is the set with
    // the Secret's key id (the last one issued may be another test's).
    let key = text(&s, "AWS_ACCESS_KEY_ID");
    let last = issued
        .iter()
        .rev()
        .find(|c| c["AccessKeyId"] == key.as_str())
        .expect("the Secret holds credentials the proxy issued");
    assert_eq!(
        text(&s, "AWS_ACCESS_KEY_ID"),
        last["AccessKeyId"].as_str().unwrap()
    );
    assert_eq!(
        text(&s, "AWS_SECRET_ACCESS_KEY"),
        last["SecretKey"].as_str().unwrap()
    );
    assert_eq!(
        text(&s, "AWS_SESSION_TOKEN"),
        last["SessionToken"].as_str().unwrap()
    );
    assert_eq!(text(&s, "AWS_REGION"), testbed().region);
    assert_eq!(text(&s, "AWS_DEFAULT_REGION"), testbed().region);
    let exp = text(&s, "AWS_CREDENTIAL_EXPIRATION");
    assert_eq!(exp.len(), 20, "{exp}");
    assert!(exp.ends_with('Z'));
    assert_eq!(
        text(&s, "credentials"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
            last["AccessKeyId"].as_str().unwrap(),
            last["SecretKey"].as_str().unwrap(),
            last["SessionToken"].as_str().unwrap()
        )
    );
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    let or = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(or.kind, "CognitoUnauthCredential");
    assert_eq!(Some(or.uid.clone()), obj.uid());
    assert_eq!(or.controller, Some(true));
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "cognito-unauth-controller"
    );
    assert_eq!(labels["team"], "a");
    let ann = s.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["cognito.kubecred.io/expiration"], exp);
    assert_eq!(ann["note"], "n");

    let st = obj.status.clone().unwrap();
    assert!(
        st.identity_id
            .as_deref()
            .is_some_and(|i| i.starts_with(&testbed().region))
    );
    assert_eq!(st.secret_name.as_deref(), Some("app"));
    assert_eq!(st.observed_generation, obj.metadata.generation);
    assert_eq!(
        st.expiration.as_ref().map(|t| t.0.to_string()),
        Some(exp.clone())
    );
    let renewal = st.renewal_time.as_ref().unwrap().0;
    let expiration = st.expiration.as_ref().unwrap().0;
    let before = expiration.duration_since(renewal).as_secs();
    assert!(
        (20 * 60..=21 * 60).contains(&before),
        "renews {before}s before expiry"
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );

    // Nothing to do until the renewal time: no Cognito calls, no writes.
    assert_eq!(
        writes_during(&ns, "app", "app", Duration::from_secs(4)).await,
        0
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );

    let ev = events(&ns, "app").await;
    assert!(
        ev.iter().any(|(t, r, m)| t == "Normal"
            && r == "CredentialsRotated"
            && m.starts_with("Created Cognito identity ")),
        "the first rotation's event names the identity it created: {ev:?}"
    );
    assert!(
        !ev.iter().any(|(_, r, _)| r == "IdentityCreated"),
        "no separate event for the identity when the rotation succeeds: {ev:?}"
    );
    assert!(
        ev.iter().any(|(t, r, m)| t == "Normal"
            && r == "CredentialsRotated"
            && m.contains("next rotation at")),
        "{ev:?}"
    );
    // No credential material in status or events.
    let status_text = serde_json::to_string(&st).unwrap();
    for secret_part in ["AccessKeyId", "SecretKey", "SessionToken"] {
        let v = last[secret_part].as_str().unwrap();
        assert!(!status_text.contains(v));
        assert!(ev.iter().all(|(_, _, m)| !m.contains(v)));
    }
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn rotates_from_the_real_expiration_with_one_identity_and_survives_a_restart() {
    let proxy = Proxy::new();
    // 12 s credentials: renewBefore (20m) is longer, so rotation at two thirds (~8 s).
    let pool = proxy.realistic_pool(12).await;
    let ns = TestNs::new("rotate").await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    let first = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let t0 = rotation(&first).unwrap();
    let key0 = text(
        &ns.api::<Secret>().get("app").await.unwrap(),
        "AWS_ACCESS_KEY_ID",
    );

    let second = wait_cuc(&ns, "app", "a rotation", |o| {
        rotation(o).is_some_and(|t| t > t0)
    })
    .await;
    let t1 = rotation(&second).unwrap();
    let gap = t1.duration_since(t0).as_secs_f64();
    assert!(
        (6.0..=10.5).contains(&gap),
        "rotated after {gap}s, expected about 8"
    );
    let third = wait_cuc(&ns, "app", "another rotation", |o| {
        rotation(o).is_some_and(|t| t > t1)
    })
    .await;
    let key2 = text(
        &ns.api::<Secret>().get("app").await.unwrap(),
        "AWS_ACCESS_KEY_ID",
    );
    assert_ne!(key0, key2);
    assert_eq!(
        third.status.as_ref().unwrap().identity_id,
        first.status.as_ref().unwrap().identity_id
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        3
    );

    // A restart with valid credentials: no Cognito calls, no writes, and no read of the
    // Secret (the watch's list of our Secrets says it holds what the status says).
    // The restart must not meet a rotation that is due anyway: 12 s credentials rotate
    // every ~8 s, less than a stop, a start and the window take on a busy machine. So the
    // pool now issues 10-minute credentials, and one forced rotation fetches them.
    proxy
        .add_rule(json!({"pool": pool, "lifetime_seconds": 600}))
        .await;
    force_rotate(&ns, "app", "long-lived").await;
    wait_cuc(
        &ns,
        "app",
        "the forced rotation's 10-minute credentials",
        |o| {
            o.status
                .as_ref()
                .and_then(|s| s.expiration.as_ref())
                .is_some_and(|e| e.0.as_second() > jiff::Timestamp::now().as_second() + 300)
        },
    )
    .await;
    ctl.stop().await;
    let calls_before = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    let reads_before = testbed_support::reads("secrets", Some(&ns.name), "app");
    let ctl = Running::start(&ns).await;
    // The window must contain the new process's reconcile of the resource, or zero
    // writes would prove nothing.
    let counting = writes_during(&ns, "app", "app", Duration::from_secs(5));
    let resynced = testbed_support::eventually(
        Duration::from_secs(4),
        "the restarted controller to reconcile the resource",
        || async { (ctl.reconciles() >= 1.0).then_some(()) },
    );
    let (writes, ()) = tokio::join!(counting, resynced);
    assert_eq!(writes, 0);
    assert_eq!(
        testbed_support::reads("secrets", Some(&ns.name), "app"),
        reads_before,
        "the restarted controller read the Secret"
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls_before
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn suspend_stops_calls_and_keeps_the_secret() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(6).await;
    let ns = TestNs::new("suspend").await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    ns.api::<CognitoUnauthCredential>()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    wait_cuc(&ns, "app", "Suspended", |o| {
        ready(o).is_some_and(|(_, r)| r == "Suspended")
    })
    .await;
    let before = ns.api::<Secret>().get("app").await.unwrap().data;
    let calls = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    // Past the expiry of the 6 s credentials: Ready turns False, still no calls.
    wait_reason(&ns, "app", "False", "Suspended").await;
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls
    );
    assert_eq!(ns.api::<Secret>().get("app").await.unwrap().data, before);
    ns.api::<CognitoUnauthCredential>()
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls + 1
    );
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn repairs_a_deleted_or_edited_secret_and_rotates_on_force() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("drift").await;
    let ctl = Running::start(&ns).await;
    create_cuc(
        &ns,
        "app",
        json!({"identityPoolId": pool, "secretName": "app-creds"}),
    )
    .await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let secrets = ns.api::<Secret>();
    let key0 = text(
        &secrets.get("app-creds").await.unwrap(),
        "AWS_ACCESS_KEY_ID",
    );

    // Deleted: put back with fresh credentials.
    secrets
        .delete("app-creds", &DeleteParams::default())
        .await
        .unwrap();
    let back = tokio::time::timeout(
        WAIT,
        await_condition(secrets.clone(), "app-creds", conditions::is_created()),
    )
    .await
    .expect("recreated in time")
    .unwrap()
    .unwrap();
    let key1 = text(&back, "AWS_ACCESS_KEY_ID");
    assert_ne!(key0, key1);

    // Edited: put right.
    secrets
        .patch(
            "app-creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"AWS_ACCESS_KEY_ID": "EDITED"}})),
        )
        .await
        .unwrap();
    let repaired = tokio::time::timeout(
        WAIT,
        await_condition(secrets.clone(), "app-creds", |s: Option<&Secret>| {
            s.is_some_and(|s| {
                let k = text(s, "AWS_ACCESS_KEY_ID");
                k != "EDITED" && secret::inspect(s, "", "/var/run/secrets/cognito", None).intact
            })
        }),
    )
    .await
    .expect("repaired in time")
    .unwrap()
    .unwrap();
    let key2 = text(&repaired, "AWS_ACCESS_KEY_ID");
    assert_ne!(key2, key1);
    let calls = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    assert_eq!(calls, 3);

    // Force-rotate: once per new value.
    force_rotate(&ns, "app", "1").await;
    let forced = wait_secret(&ns, "app-creds", "forced rotation", |s| {
        annotation(s, "cognito.kubecred.io/force-rotate") == "1"
    })
    .await;
    assert_ne!(text(&forced, "AWS_ACCESS_KEY_ID"), key2);
    // The Secret is written before the status: wait for that rotation's status write too,
    // or the quiet window below would start between the two.
    wait_cuc(&ns, "app", "the forced rotation's status", move |o| {
        says_what_it_holds(o, &forced)
    })
    .await;
    assert_eq!(
        writes_during(&ns, "app", "app-creds", Duration::from_secs(3)).await,
        0
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls + 1
    );
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);

    // Changed again, in a loop, within the default minimum interval (a minute) of that
    // forced rotation: no call however often it changes; the status says until when.
    for token in ["2", "3", "4", "5"] {
        force_rotate(&ns, "app", token).await;
    }
    wait_cuc(&ns, "app", "the deferred force in Ready's message", |o| {
        o.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.reason == "CredentialsIssued"
                    && c.message
                        .contains("the new force-rotate value is honoured at")
            })
        })
    })
    .await;
    assert_eq!(
        writes_during(&ns, "app", "app-creds", Duration::from_secs(3)).await,
        0,
        "a deferred force settles"
    );
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls + 1,
        "no call for a force within the interval"
    );
    assert_eq!(
        annotation(
            &secrets.get("app-creds").await.unwrap(),
            "cognito.kubecred.io/force-rotate"
        ),
        "1"
    );

    // Renaming the Secret moves the credentials and removes the old one.
    merge_patch(&ns, "app", json!({"spec": {"secretName": "renamed"}})).await;
    tokio::time::timeout(
        WAIT,
        await_condition(secrets.clone(), "renamed", conditions::is_created()),
    )
    .await
    .expect("new Secret in time")
    .unwrap();
    let old_uid = back.uid().unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(
            secrets.clone(),
            "app-creds",
            conditions::is_deleted(&old_uid),
        ),
    )
    .await
    .expect("old Secret removed in time")
    .unwrap();
    faults::record(
        "user-edits-secret",
        "A user deletes the Secret, or edits its data",
        "put right within seconds with fresh credentials (the old ones are gone); one GetCredentialsForIdentity each; same identity",
        "recreated and repaired, 1 call each, 1 GetId in all",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// The race of issue 21: the controller read the Secret as ours, someone deleted it and
/// created theirs under the name, then the controller writes. The write carries the uid
/// it read as a precondition (`reconcile::apply_secret`, what every write into an
/// existing Secret goes through): the API server refuses it and theirs is untouched.
#[tokio::test]
async fn a_secret_recreated_between_read_and_write_is_not_written_into() {
    let ns = TestNs::new("race").await;
    let secrets = ns.api::<Secret>();
    let ours: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "stringData": {"AWS_ACCESS_KEY_ID": "ours"}
    }))
    .unwrap();
    let read = secrets.create(&PostParams::default(), &ours).await.unwrap();
    let desired = |uid: Option<String>| -> Secret {
        let mut s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "app", "namespace": ns.name},
            "data": {"AWS_ACCESS_KEY_ID": "bmV3"}
        }))
        .unwrap();
        s.metadata.uid = uid;
        s
    };
    // With the uid it was read with, the write goes through.
    let written = reconcile::apply_secret(&secrets, &desired(read.uid()))
        .await
        .expect("a write into the Secret read");
    assert_eq!(text(&written, "AWS_ACCESS_KEY_ID"), "new");
    // Replaced between the read and the write.
    secrets
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(
            secrets.clone(),
            "app",
            conditions::is_deleted(&read.uid().unwrap()),
        ),
    )
    .await
    .expect("deleted in time")
    .unwrap();
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app", "labels": {"owner": "someone"}},
        "stringData": {"config": "[default]\ncredential_process = /bin/evil"}
    }))
    .unwrap();
    let theirs = secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    // The API server refuses it (422, metadata.uid), which the controller takes as the
    // Secret no longer being its own: SecretConflict, as for any Secret it does not own.
    match reconcile::apply_secret(&secrets, &desired(read.uid())).await {
        Err(reconcile::Error::SecretTaken) => {}
        other => panic!("the write into a recreated Secret must be refused: {other:?}"),
    }
    let after = secrets.get("app").await.unwrap();
    assert_eq!(after.resource_version(), theirs.resource_version());
    assert_eq!(after.data, theirs.data);
    assert_eq!(after.managed_fields().len(), theirs.managed_fields().len());
    ns.cleanup().await;
}

#[tokio::test]
async fn never_takes_a_secret_it_does_not_own() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("conflict").await;
    let secrets = ns.api::<Secret>();
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app", "labels": {"owner": "someone"}},
        "stringData": {"AWS_ACCESS_KEY_ID": "theirs"}
    }))
    .unwrap();
    let theirs = secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    let obj = wait_reason(&ns, "app", "False", "SecretConflict").await;
    let after = secrets.get("app").await.unwrap();
    assert_eq!(after.data, theirs.data);
    assert_eq!(after.resource_version(), theirs.resource_version());
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 0);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        0
    );
    let ev = events(&ns, "app").await;
    assert!(
        ev.iter()
            .any(|(t, r, _)| t == "Warning" && r == "SecretConflict"),
        "{ev:?}"
    );
    assert!(
        obj.status.unwrap().conditions[0]
            .message
            .contains("not owned")
    );
    faults::record(
        "unowned-secret",
        "An unowned Secret already holds the name",
        "left untouched (same resourceVersion and data); Ready=False/SecretConflict; Warning event; no Cognito call",
        "untouched, 0 calls",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn deleting_the_resource_garbage_collects_the_secret() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("gc").await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let secrets = ns.api::<Secret>();
    let uid = secrets.get("app").await.unwrap().uid().unwrap();
    ns.api::<CognitoUnauthCredential>()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(secrets, "app", conditions::is_deleted(&uid)),
    )
    .await
    .expect("the garbage collector removed the Secret in time")
    .unwrap();
    faults::record(
        "user-deletes-resource",
        "A user deletes the resource",
        "its Secret is deleted by the garbage collector (owner reference, controller=true)",
        "Secret gone",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

/// Every error class the proxy can produce becomes its condition reason, with the last
/// good Secret kept, bounded calls, and recovery once the fault clears.
#[tokio::test]
async fn errors_become_reasons_and_the_last_good_secret_is_kept() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("errors").await;
    // Each case forces an attempt, seconds after the last case's forced rotation: no
    // minimum interval between them.
    let ctl = Running::start_tuned(&ns, ns.client.clone(), Timeouts::default(), |s| {
        s.force_rotate_interval = Duration::ZERO;
    })
    .await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let secrets = ns.api::<Secret>();
    let mut good = secrets.get("app").await.unwrap().data;

    let cases: Vec<(Value, &str)> = vec![
        (json!({"error": "TooManyRequestsException"}), "Throttled"),
        (json!({"error": "LimitExceededException"}), "Throttled"),
        (
            json!({"error": "InternalErrorException"}),
            "CognitoUnavailable",
        ),
        (json!({"http_status": 503}), "CognitoUnavailable"),
        (json!({"connection": "reset"}), "CognitoUnavailable"),
        (
            json!({"error": "NotAuthorizedException"}),
            "GuestAccessDisabled",
        ),
        (
            json!({"error": "InvalidIdentityPoolConfigurationException"}),
            "InvalidPoolConfiguration",
        ),
        (
            json!({"error": "InvalidParameterException"}),
            "InvalidParameter",
        ),
    ];
    for (i, (fault, want)) in cases.into_iter().enumerate() {
        let mut rule = fault.clone();
        rule["pool"] = json!(pool);
        let id = proxy.add_rule(rule).await;
        let before = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
        force_rotate(&ns, "app", &format!("f{i}")).await;
        let o = wait_reason(&ns, "app", "False", want).await;
        let st = o.status.unwrap();
        assert!(st.failed_attempts.unwrap_or(0) >= 1, "{fault}");
        assert!(
            st.conditions[0]
                .message
                .contains("keeps credentials valid until"),
            "{}",
            st.conditions[0].message
        );
        assert_eq!(
            secrets.get("app").await.unwrap().data,
            good,
            "{fault}: the Secret must be kept"
        );
        // One call per attempt: the first retry is at least 2.5 s away.
        assert_eq!(
            proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
            before + 1,
            "{fault}"
        );
        proxy.delete_rule(id).await;
        // The fault clears; a spec change retries at once, even after a terminal error.
        merge_patch(
            &ns,
            "app",
            json!({"spec": {"renewBefore": format!("{}m", 21 + i)}}),
        )
        .await;
        let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
        assert_eq!(o.status.unwrap().failed_attempts, None);
        let now = secrets.get("app").await.unwrap().data;
        assert_ne!(now, good, "{fault}: recovered with fresh credentials");
        assert_eq!(
            proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
            before + 2,
            "{fault}"
        );
        good = now;
    }
    let ev = events(&ns, "app").await;
    assert!(
        ev.iter()
            .any(|(t, r, _)| t == "Warning" && r == "RotationFailed"),
        "{ev:?}"
    );
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn terminal_errors_on_first_issue_and_expiry_of_kept_credentials() {
    let proxy = Proxy::new();
    let ns = TestNs::new("terminal").await;
    let ctl = Running::start(&ns).await;

    // A pool that does not exist.
    let missing = format!(
        "{}:00000000-0000-0000-0000-{:012}",
        testbed().region,
        rand_number()
    );
    proxy
        .add_rule(json!({"pool": missing, "semantics": true}))
        .await;
    create_cuc(&ns, "missing", json!({"identityPoolId": missing})).await;
    // A pool with guest access off (the proxy's semantics rule says what Cognito would).
    let off = proxy.create_pool(false).await;
    proxy
        .add_rule(json!({"pool": off, "semantics": true}))
        .await;
    create_cuc(&ns, "guest-off", json!({"identityPoolId": off})).await;
    // Credentials that expire while Cognito throttles: Expired only once really expired.
    let short = proxy.realistic_pool(4).await;
    create_cuc(&ns, "expiring", json!({"identityPoolId": short})).await;
    wait_reason(&ns, "expiring", "True", "CredentialsIssued").await;
    proxy
        .add_rule(json!({"pool": short, "error": "TooManyRequestsException"}))
        .await;
    let throttled = wait_reason(&ns, "expiring", "False", "Throttled").await;
    let exp = throttled
        .status
        .as_ref()
        .unwrap()
        .expiration
        .as_ref()
        .unwrap()
        .0;
    let expired = wait_reason(&ns, "expiring", "False", "Expired").await;
    assert!(jiff::Timestamp::now() >= exp);
    assert!(
        expired.status.unwrap().conditions[0]
            .message
            .contains("expired at")
    );
    // The Secret still holds the last (now expired) credentials: never emptied.
    let s = ns.api::<Secret>().get("expiring").await.unwrap();
    assert!(secret::inspect(&s, "", "/var/run/secrets/cognito", None).intact);

    let o = wait_reason(&ns, "guest-off", "False", "GuestAccessDisabled").await;
    assert!(
        o.status.unwrap().conditions[0]
            .message
            .contains("Unauthenticated access is not supported")
    );
    wait_reason(&ns, "missing", "False", "IdentityPoolNotFound").await;
    // Terminal errors retry slowly: one GetId each so far.
    assert_eq!(proxy.pool_calls(&missing, "GetId").await, 1);
    assert_eq!(proxy.pool_calls(&off, "GetId").await, 1);
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn a_forgotten_identity_is_recreated_and_a_new_pool_gets_a_new_identity() {
    let proxy = Proxy::new();
    let pool_a = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("identity").await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool_a})).await;
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let id0 = o.status.unwrap().identity_id.unwrap();
    proxy.delete_identity(&id0).await;
    force_rotate(&ns, "app", "x").await;
    let old = id0.clone();
    let secret = wait_secret(&ns, "app", "credentials of a new identity", move |s| {
        let id = annotation(s, "cognito.kubecred.io/identity-id");
        !id.is_empty() && id != old
    })
    .await;
    let id1 = annotation(&secret, "cognito.kubecred.io/identity-id");
    let want = id1.clone();
    let o = wait_cuc(&ns, "app", "status with the new identity", move |o| {
        o.status
            .as_ref()
            .and_then(|s| s.identity_id.clone())
            .as_deref()
            == Some(want.as_str())
            && ready(o).is_some_and(|(s, _)| s == "True")
    })
    .await;
    assert!(rotation(&o).is_some());
    assert_eq!(proxy.pool_calls(&pool_a, "GetId").await, 2);
    let ev = events(&ns, "app").await;
    assert!(
        ev.iter()
            .any(|(t, r, _)| t == "Warning" && r == "IdentityRecreated"),
        "{ev:?}"
    );

    let pool_b = proxy.realistic_pool(3600).await;
    merge_patch(&ns, "app", json!({"spec": {"identityPoolId": pool_b}})).await;
    let pb = pool_b.clone();
    let secret = wait_secret(&ns, "app", "credentials from the new pool", move |s| {
        annotation(s, "cognito.kubecred.io/identity-pool-id") == pb
    })
    .await;
    assert_ne!(annotation(&secret, "cognito.kubecred.io/identity-id"), id1);
    assert_eq!(proxy.pool_calls(&pool_b, "GetId").await, 1);
    assert_eq!(
        proxy.pool_calls(&pool_b, "GetCredentialsForIdentity").await,
        1
    );
    faults::record(
        "identity-deleted",
        "Cognito no longer knows the identity (GetCredentialsForIdentity: ResourceNotFound)",
        "a new identity is created once (Warning IdentityRecreated) and credentials issued; a changed pool gets its own identity",
        "2 GetId for the old pool, 1 for the new; Ready",
    );
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn status_is_written_only_when_it_changes() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let ns = TestNs::new("status").await;
    let ctl = Running::start(&ns).await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    let o = wait_reason(&ns, "app", "True", "CredentialsIssued").await;
    let ltt = o.status.as_ref().unwrap().conditions[0]
        .last_transition_time
        .clone();
    // A label change triggers a reconcile, but nothing about the credentials changed.
    let cucs = ns.api::<CognitoUnauthCredential>();
    merge_patch(&ns, "app", json!({"metadata": {"labels": {"x": "y"}}})).await;
    assert_eq!(
        writes_during(&ns, "app", "app", Duration::from_secs(3)).await,
        0
    );
    let o = cucs.get("app").await.unwrap();
    assert_eq!(
        o.status.as_ref().unwrap().conditions[0].last_transition_time,
        ltt
    );
    // A spec change bumps observedGeneration without new credentials.
    merge_patch(&ns, "app", json!({"spec": {"renewBefore": "30m"}})).await;
    let o = wait_cuc(&ns, "app", "observedGeneration 2", |o| {
        o.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    let st = o.status.unwrap();
    assert_eq!(st.conditions[0].observed_generation, Some(2));
    assert_eq!(st.conditions[0].last_transition_time, ltt);
    let before = st
        .expiration
        .unwrap()
        .0
        .duration_since(st.renewal_time.unwrap().0)
        .as_secs();
    assert!((30 * 60..=31 * 60).contains(&before), "{before}");
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn repeated_failures_fold_into_one_event_series() {
    use k8s_openapi::api::events::v1::Event as SeriesEvent;
    let proxy = Proxy::new();
    let ns = TestNs::new("series").await;
    let ctl = Running::start(&ns).await;
    let pool = proxy.create_pool(true).await;
    proxy
        .add_rule(json!({"pool": pool, "error": "TooManyRequestsException"}))
        .await;
    create_cuc(&ns, "app", json!({"identityPoolId": pool})).await;
    // Backoff 5 s then 10 s (each with equal jitter): three attempts within ~15 s.
    let o = wait_cuc(&ns, "app", "three failed attempts", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.failed_attempts)
            .is_some_and(|n| n >= 3)
    })
    .await;
    let attempts = o.status.unwrap().failed_attempts.unwrap();
    let failed: Vec<SeriesEvent> = ns
        .api::<SeriesEvent>()
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("RotationFailed")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("app")
        })
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one event for one repeated failure: {failed:?}"
    );
    let ev = &failed[0];
    let count = ev.series.as_ref().map_or(1, |s| s.count);
    // The watch saw the third failure's status; its event may still be on the way.
    assert!(
        count == attempts || count + 1 == attempts,
        "series count {count}, attempts {attempts}"
    );
    assert!(count >= 2, "{ev:?}");
    let note = ev.note.clone().unwrap_or_default();
    assert!(note.contains("Could not get credentials"), "{note}");
    assert!(!note.contains("next attempt"), "no times in a note: {note}");
    assert_eq!(
        ev.reporting_controller.as_deref(),
        Some("cognito-unauth-controller")
    );
    ctl.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn overdue_renewals_after_downtime_are_spread_not_burst() {
    let proxy = Proxy::new();
    let ns = TestNs::new("spread").await;
    // 60 s credentials: renewal at ~40 s (two thirds, less up to 3 s of jitter).
    let pool = proxy.realistic_pool(60).await;
    let ctl = Running::start(&ns).await;
    let names: Vec<String> = (0..12).map(|i| format!("app-{i:02}")).collect();
    for n in &names {
        create_cuc(&ns, n, json!({"identityPoolId": pool})).await;
    }
    let mut renewals = Vec::new();
    for n in &names {
        let o = wait_reason(&ns, n, "True", "CredentialsIssued").await;
        renewals.push(o.status.unwrap().renewal_time.expect("renewal").0);
    }
    // The controller is down while every renewal comes due.
    ctl.stop().await;
    let due = *renewals.iter().max().unwrap();
    let wait = due.duration_since(jiff::Timestamp::now()) + jiff::SignedDuration::from_secs(1);
    if wait.is_positive() {
        // A clock wait: nothing to watch while no controller runs.
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    let calls = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    let started = jiff::Timestamp::now();
    let ctl = Running::start(&ns).await;
    let mut issued = Vec::new();
    for n in &names {
        let s = wait_secret(&ns, n, "rotated after the restart", |s| {
            annotation(s, secret::ANN_ISSUED_AT)
                .parse::<jiff::Timestamp>()
                .is_ok_and(|t| t >= started)
        })
        .await;
        let t: jiff::Timestamp = annotation(&s, secret::ANN_ISSUED_AT).parse().unwrap();
        issued.push(t);
    }
    let first = *issued.iter().min().unwrap();
    let last = *issued.iter().max().unwrap();
    let spread = last.duration_since(first);
    // All were overdue at the start: without the spread they rotate within a second (the
    // pacer allows 190/s). Spread over half the ~18 s left, they take several seconds.
    assert!(
        spread >= jiff::SignedDuration::from_secs(3),
        "12 overdue rotations within {spread:?}"
    );
    // Still before any expired, and one call each.
    for n in &names {
        let o = wait_reason(&ns, n, "True", "CredentialsIssued").await;
        assert!(o.status.unwrap().failed_attempts.is_none());
    }
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        calls + names.len() as u64
    );
    testbed_support::record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "down-past-renewal",
        "Controller down while every renewal comes due (12 resources, 60 s credentials)",
        "overdue rotations spread over half the remaining lifetime (≤ 60 s), not one burst; one call each; none expires",
        &format!(
            "rotations spread over {:.1} s (≥ 3 s asserted); 12 calls",
            spread.as_secs_f64()
        ),
    );
    ctl.stop().await;
    ns.cleanup().await;
}
