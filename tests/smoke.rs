//! The test bed itself: the real API server and the Cognito emulator behind the proxy,
//! reached from Rust the way the controller reaches them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testbed_support::{
    AwsCredentials, Proxy, SecretData, SecretMirror, TestNs, aws_cli, caller_arn, cognito_client,
    test_dir,
};

#[tokio::test]
async fn api_server_stores_a_secret_in_a_fresh_namespace() {
    let ns = TestNs::new("smoke").await;
    let secrets = ns.api::<Secret>();
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hello"},
        "stringData": {"greeting": "konnichiwa"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let got = secrets.get("hello").await.unwrap();
    let data = got.data.expect("data");
    assert_eq!(data["greeting"].0, b"konnichiwa");
    ns.cleanup().await;
}

#[tokio::test]
async fn unsigned_sdk_gets_an_identity_and_credentials_through_the_proxy() {
    let proxy = Proxy::new();
    let pool = proxy.create_pool(true).await;
    let cognito = cognito_client().await;

    let id = cognito
        .get_id()
        .identity_pool_id(&pool)
        .send()
        .await
        .unwrap()
        .identity_id
        .expect("identity id");
    assert!(id.starts_with(&format!("{}:", pool.split(':').next().unwrap())));

    let out = cognito
        .get_credentials_for_identity()
        .identity_id(&id)
        .send()
        .await
        .unwrap();
    let creds = out.credentials.expect("credentials");
    assert!(creds.access_key_id.is_some_and(|k| !k.is_empty()));
    assert!(creds.secret_key.is_some_and(|k| !k.is_empty()));
    assert!(creds.session_token.is_some_and(|k| !k.is_empty()));
    // moto's fixed lifetime stands when no rule changes it.
    let exp = creds.expiration.expect("expiration").secs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((80..=95).contains(&(exp - now)), "lifetime {}", exp - now);

    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 1);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        1
    );
}

#[tokio::test]
async fn proxy_rules_shape_what_cognito_says() {
    let proxy = Proxy::new();
    let pool = proxy.create_pool(true).await;
    let cognito = cognito_client().await;
    let id = cognito
        .get_id()
        .identity_pool_id(&pool)
        .send()
        .await
        .unwrap()
        .identity_id
        .unwrap();

    // Throttling: the SDK surfaces Cognito's TooManyRequestsException.
    let rule = proxy
        .add_rule(json!({"pool": pool, "error": "TooManyRequestsException", "times": 1}))
        .await;
    let err = cognito
        .get_credentials_for_identity()
        .identity_id(&id)
        .send()
        .await
        .expect_err("throttled");
    let service = err.into_service_error();
    assert!(service.is_too_many_requests_exception(), "{service:?}");
    proxy.delete_rule(rule).await;

    // Unique credentials with a chosen lifetime.
    proxy
        .add_rule(json!({"pool": pool, "unique_credentials": true, "lifetime_seconds": 3600}))
        .await;
    let a = cognito
        .get_credentials_for_identity()
        .identity_id(&id)
        .send()
        .await
        .unwrap();
    let b = cognito
        .get_credentials_for_identity()
        .identity_id(&id)
        .send()
        .await
        .unwrap();
    let (a, b) = (a.credentials.unwrap(), b.credentials.unwrap());
    assert_ne!(a.access_key_id, b.access_key_id);
    assert_ne!(a.session_token, b.session_token);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let life = a.expiration.unwrap().secs() - now;
    assert!((3590..=3600).contains(&life), "lifetime {life}");

    // Cognito's semantics that moto lacks: guest access off, unknown pool.
    proxy
        .add_rule(json!({"semantics": true, "pool": pool}))
        .await;
    proxy.set_guest(&pool, false).await;
    let err = cognito
        .get_id()
        .identity_pool_id(&pool)
        .send()
        .await
        .expect_err("guest off");
    let service = err.into_service_error();
    assert!(service.is_not_authorized_exception(), "{service:?}");
    assert_eq!(
        service.meta().message(),
        Some("Unauthenticated access is not supported for this identity pool.")
    );

    proxy.delete_pool(&pool).await;
    let err = cognito
        .get_id()
        .identity_pool_id(&pool)
        .send()
        .await
        .expect_err("deleted");
    assert!(err.into_service_error().is_resource_not_found_exception());

    // Every attempt was counted, faults included: 1 + 2 (GetId ok, guest off, not found).
    assert_eq!(proxy.pool_calls(&pool, "GetId").await, 3);
    assert_eq!(
        proxy.pool_calls(&pool, "GetCredentialsForIdentity").await,
        3
    );
}

/// A fresh identity of `pool` and one credential set for it.
async fn identity_with_credentials(pool: &str) -> (String, AwsCredentials) {
    let cognito = cognito_client().await;
    let id = cognito
        .get_id()
        .identity_pool_id(pool)
        .send()
        .await
        .unwrap()
        .identity_id
        .expect("identity id");
    let creds = credentials_for(&id).await;
    (id, creds)
}

async fn credentials_for(identity: &str) -> AwsCredentials {
    let out = cognito_client()
        .await
        .get_credentials_for_identity()
        .identity_id(identity)
        .send()
        .await
        .unwrap();
    AwsCredentials::from_cognito(out.credentials.expect("credentials"))
}

fn classes(calls: &[Value]) -> Vec<&str> {
    calls.iter().filter_map(|c| c["class"].as_str()).collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn aws_cli_works_with_cognito_credentials_until_they_expire() {
    let proxy = Proxy::new();
    // Long enough for a slow CLI start on a busy machine, short enough to wait out.
    let pool = proxy.realistic_pool(20).await;
    let role = proxy.unauth_role(&pool).await;
    let (id, creds) = identity_with_credentials(&pool).await;

    let out = aws_cli(&["sts", "get-caller-identity", "--output", "json"], &creds);
    assert!(
        out.status.success(),
        "aws sts get-caller-identity: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who: Value = serde_json::from_slice(&out.stdout).expect("the CLI prints JSON");
    assert_eq!(
        who["Arn"],
        testbed_support::assumed_role(&role, testbed_support::COGNITO_SESSION)
    );
    assert_eq!(who["Account"], "123456789012");
    assert!(
        who["UserId"]
            .as_str()
            .is_some_and(|u| u.starts_with("AROA") && u.ends_with(":CognitoIdentityCredentials")),
        "{who}"
    );

    // Past the Expiration Cognito gave, STS refuses the same credentials.
    let wait = creds.expiration - now_secs() + 1;
    assert!((0..=21).contains(&wait), "{wait}");
    tokio::time::sleep(Duration::from_secs(wait as u64)).await;
    let out = aws_cli(&["sts", "get-caller-identity", "--output", "json"], &creds);
    assert!(!out.status.success(), "expired credentials were accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(ExpiredToken)"), "{stderr}");
    // No credential material in what the CLI printed.
    assert!(!stderr.contains(&creds.secret_access_key) && !stderr.contains(&creds.session_token));

    let calls = proxy.sts_calls(&pool).await;
    assert_eq!(classes(&calls), ["current", "expired"], "{calls:?}");
    for c in &calls {
        assert_eq!(c["access_key_id"], creds.access_key_id.as_str());
        assert_eq!(c["identity_id"], id.as_str());
        assert_eq!(c["expires_at"].as_f64(), Some(creds.expiration as f64));
        assert!(
            c["user_agent"]
                .as_str()
                .is_some_and(|ua| ua.starts_with("aws-cli/")),
            "{c}"
        );
    }
    assert_eq!(calls[0]["outcome"], "ok");
    assert_eq!(calls[1]["outcome"], "ExpiredToken");
    assert_eq!(proxy.pool_calls(&pool, "GetCallerIdentity").await, 2);
}

#[tokio::test]
async fn sts_tells_current_previous_and_forged_credentials_apart() {
    let proxy = Proxy::new();
    let pool = proxy.realistic_pool(3600).await;
    let arn = testbed_support::assumed_role(
        &proxy.unauth_role(&pool).await,
        testbed_support::COGNITO_SESSION,
    );
    let (id, first) = identity_with_credentials(&pool).await;

    // aws-sdk-rust signs; the proxy checks the signature with the secret it issued.
    assert_eq!(caller_arn(&first).await, Ok(arn.clone()));
    let forged = AwsCredentials {
        secret_access_key: "x".repeat(40),
        ..first.clone()
    };
    assert_eq!(
        caller_arn(&forged).await,
        Err("SignatureDoesNotMatch".into())
    );
    let other_token = AwsCredentials {
        session_token: "not-the-issued-token".into(),
        ..first.clone()
    };
    assert_eq!(
        caller_arn(&other_token).await,
        Err("InvalidClientTokenId".into())
    );

    // A rotation: the new set is current, the old one still works until it expires.
    let second = credentials_for(&id).await;
    assert_ne!(second.access_key_id, first.access_key_id);
    assert_eq!(caller_arn(&second).await, Ok(arn.clone()));
    assert_eq!(caller_arn(&first).await, Ok(arn.clone()));

    // A rule can make STS fail for this pool's credentials only.
    let rule = proxy
        .add_rule(json!({"pool": pool, "operation": "GetCallerIdentity", "error": "InternalFailure", "times": 1}))
        .await;
    assert_eq!(caller_arn(&second).await, Err("InternalFailure".into()));
    proxy.delete_rule(rule).await;

    let calls = proxy.sts_calls(&pool).await;
    let expected = [
        ("current", "ok", &first),
        ("bad_signature", "SignatureDoesNotMatch", &first),
        ("bad_token", "InvalidClientTokenId", &first),
        ("current", "ok", &second),
        ("previous", "ok", &first),
        ("current", "InternalFailure", &second),
    ];
    assert_eq!(calls.len(), expected.len(), "{calls:?}");
    for (call, (class, outcome, creds)) in calls.iter().zip(expected) {
        assert_eq!(call["class"], class, "{call}");
        assert_eq!(call["outcome"], outcome, "{call}");
        assert_eq!(
            call["access_key_id"],
            creds.access_key_id.as_str(),
            "{call}"
        );
        assert_eq!(call["identity_id"], id.as_str(), "{call}");
        assert!(
            call["user_agent"]
                .as_str()
                .is_some_and(|ua| ua.contains("aws-sdk-rust")),
            "{call}"
        );
    }
    // Nothing in the record is a secret or a token.
    let text = serde_json::to_string(&calls).unwrap();
    for creds in [&first, &second] {
        assert!(!text.contains(&creds.secret_access_key) && !text.contains(&creds.session_token));
    }
    assert_eq!(proxy.pool_calls(&pool, "GetCallerIdentity").await, 6);

    proxy.clear_sts_calls(&pool).await;
    assert!(proxy.sts_calls(&pool).await.is_empty());
    // The proxy still knows the credentials after the record is cleared.
    assert_eq!(caller_arn(&second).await, Ok(arn));
    assert_eq!(classes(&proxy.sts_calls(&pool).await), ["current"]);
}

#[tokio::test]
async fn secret_mirror_projects_each_version_like_a_kubelet() {
    let ns = TestNs::new("mirror").await;
    let secrets = ns.api::<Secret>();
    let dir = test_dir(&ns.name).join("volume");
    let _ = std::fs::remove_dir_all(&dir);
    // Started before the Secret exists, as a pod's volume may be.
    let mirror = SecretMirror::start(ns.client.clone(), &ns.name, "app", &dir).unwrap();

    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "stringData": {"credentials": "v1", "AWS_REGION": "us-east-1"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let want_v1: SecretData = [("AWS_REGION", "us-east-1"), ("credentials", "v1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    let got = mirror
        .wait_for(
            |d| d.get("credentials").map(Vec::as_slice) == Some(b"v1"),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(got, want_v1);
    assert_eq!(std::fs::read(dir.join("credentials")).unwrap(), b"v1");

    // A label change alone is not a new version.
    secrets
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    // A data change is; a key that went away goes from the directory too.
    secrets
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"data": {"AWS_REGION": null}, "stringData": {"credentials": "v2"}}),
            ),
        )
        .await
        .unwrap();
    let got = mirror
        .wait_for(
            |d| d.get("credentials").map(Vec::as_slice) == Some(b"v2"),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), ["credentials"]);
    assert_eq!(std::fs::read(dir.join("credentials")).unwrap(), b"v2");
    assert!(!dir.join("AWS_REGION").exists());
    assert_eq!(mirror.versions(), 2);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "..data, one timestamped dir, one key: {names:?}"
    );

    // Waiting for something that never comes times out with a reason, not a hang.
    let err = mirror
        .wait_for(|d| d.contains_key("never"), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("2 projected"), "{err}");

    drop(mirror);
    ns.cleanup().await;
}
