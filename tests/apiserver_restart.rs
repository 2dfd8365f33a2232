//! The API server restarted mid-run. A test binary of its own: cargo runs test binaries
//! one after another, so no other test is running while the API server is down.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use testbed_support::{
    ControllerProcess, Proxy, TestNs, cuc_manifest, eventually, install_crd, kubectl_apply,
    record_fault, root, test_dir, wait_ready,
};

#[tokio::test]
async fn rotation_goes_on_across_an_api_server_restart() {
    let proxy = Proxy::new();
    // 12 s credentials: rotations every ~8 s, one of them while the API server is down.
    let pool = proxy.realistic_pool(12).await;
    let ns = TestNs::new("apiserver-restart").await;
    install_crd();
    let dir = test_dir(&ns.name);
    let ctl = ControllerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_cognito-unauth-controller")),
        &dir.join("controller.log"),
        &[("WATCH_NAMESPACES", ns.name.as_str())],
    );
    let run = std::time::Instant::now();
    kubectl_apply(&cuc_manifest(&ns.name, "app", &pool));
    wait_ready(&ns.name, "app", 30);

    let restart = std::process::Command::new(root().join("testbed/restart-apiserver.sh"))
        .env("DOWN_SECONDS", "6")
        .status()
        .expect("restart the API server");
    assert!(restart.success());
    let back = std::time::Instant::now();

    // After the restart the controller keeps rotating with the same identity, and the
    // Secret it serves is intact and unexpired.
    let secrets = ns.api::<Secret>();
    let calls_at_restart = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    eventually(
        Duration::from_secs(40),
        "a rotation after the restart",
        || async {
            let s = secrets.get("app").await.ok()?;
            let exp: jiff::Timestamp = s
                .annotations()
                .get("cognito.kubecred.io/expiration")?
                .parse()
                .ok()?;
            let fresh =
                proxy.pool_calls(&pool, "GetCredentialsForIdentity").await > calls_at_restart;
            (fresh
                && exp > jiff::Timestamp::now()
                && cognito_unauth_controller::reconcile::secret::inspect(
                    &s,
                    "",
                    "/var/run/secrets/cognito",
                    None,
                )
                .intact)
                .then_some(())
        },
    )
    .await;
    let took = back.elapsed();
    wait_ready(&ns.name, "app", 30);
    assert_eq!(
        proxy.pool_calls(&pool, "GetId").await,
        1,
        "a second identity"
    );
    // Bounded: no burst after the restart. Rotations come at two thirds of 12 s, less at
    // most 0.6 s of jitter: at least 7.4 s apart, so over the run at most one per 7 s,
    // plus the first issue and one in flight.
    let elapsed_rotations = proxy.pool_calls(&pool, "GetCredentialsForIdentity").await;
    let bound = run.elapsed().as_secs() / 7 + 2;
    assert!(
        elapsed_rotations <= bound,
        "{elapsed_rotations} calls in {:?}: a burst (at most {bound})",
        run.elapsed()
    );
    assert!(ctl.terminate().success());
    record_fault(
        env!("CARGO_TARGET_TMPDIR"),
        "apiserver-restart",
        "The API server stopped for 6 s and restarted mid-run (12 s credentials)",
        "the controller reconnects by itself and rotates again with the same identity; the Secret is intact and unexpired after; no burst of calls",
        &format!(
            "fresh credentials {:.1}s after the API server was back; 1 GetId; {elapsed_rotations} GetCredentialsForIdentity in {}s (at most {bound} allowed)",
            took.as_secs_f64(),
            run.elapsed().as_secs()
        ),
    );
    ns.cleanup().await;
}
