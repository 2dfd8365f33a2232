//! The test bed itself: the real API server and the Cognito emulator behind the proxy,
//! reached from Rust the way the controller reaches them.

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use serde_json::json;
use testbed_support::{Proxy, TestNs, cognito_client};

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
