//! The reconcile's I/O without a cluster: a scripted API server ([`super::mock`]) and the
//! fake Cognito ([`crate::aws::fake`]); each test names every request the reconcile
//! makes, in order, and the Cognito calls.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::mock::{self, Step};
use super::{Context, MANAGER, Sharing};
use crate::aws::cognito::Operation;
use crate::aws::fake::Fake;
use crate::common::events::Recorder;
use crate::common::metrics::Metrics;
use crate::crd::CognitoUnauthCredential;

const NS: &str = "team";
const POOL: &str = "us-east-1:00000000-0000-0000-0000-000000000001";

/// The resource as the watch delivers it, with `status`.
fn resource(status: Value) -> Arc<CognitoUnauthCredential> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "cognito.kubecred.io/v1alpha1",
            "kind": "CognitoUnauthCredential",
            "metadata": {"name": "app", "namespace": NS, "uid": "uid-1", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"identityPoolId": POOL, "secretName": "app-creds"},
            "status": status,
        }))
        .expect("a resource"),
    )
}

/// A controller that started long ago: an overdue renewal is not one found at start-up
/// (which would wait for its slot of the start-up spread).
fn running_for_long(ctx: &Context<Fake>) {
    ctx.started.store(0, std::sync::atomic::Ordering::Relaxed);
}

fn context(client: kube::Client, fake: Fake) -> Arc<Context<Fake>> {
    let recorder = Recorder::new(client.clone(), MANAGER, None);
    let sharing = Sharing {
        slots: 1,
        force_interval: Duration::from_secs(60),
    };
    Arc::new(Context::new(
        client,
        fake,
        recorder,
        Arc::new(Metrics::default()),
        sharing,
    ))
}

const SECRET: &str = "/api/v1/namespaces/team/secrets/app-creds";
const SECRETS: &str = "/api/v1/namespaces/team/secrets";
const STATUS: &str =
    "/apis/cognito.kubecred.io/v1alpha1/namespaces/team/cognitounauthcredentials/app/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team/events";

/// The resource as the API server answers a status write.
fn stored_resource() -> Value {
    serde_json::to_value(resource(json!({})).as_ref()).expect("json")
}

fn not_found() -> Value {
    mock::status(404, "NotFound", "secrets \"app-creds\" not found")
}

/// The requests made, as "METHOD path", and the bodies.
fn requests(seen: &std::sync::Mutex<mock::Seen>) -> (Vec<String>, Vec<Value>) {
    let seen = crate::lock(seen);
    assert!(seen.unexpected.is_empty(), "{:#?}", seen.unexpected);
    (seen.requests.clone(), seen.bodies.clone())
}

/// The `Ready` condition in a status write's body.
fn ready(body: &Value) -> (String, String) {
    let c = body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or_default().into(),
        c["reason"].as_str().unwrap_or_default().into(),
    )
}

#[tokio::test]
async fn the_first_issue_makes_one_identity_one_secret_and_one_status() {
    let (client, seen) = mock::client(vec![
        Step::new("GET", SECRET, 404, not_found()),
        // The new identity is saved before anything else can fail.
        Step::new("PATCH", STATUS, 200, stored_resource()),
        Step::echo("POST", SECRETS),
        Step::echo("POST", EVENTS),
        Step::new("PATCH", STATUS, 200, stored_resource()),
    ]);
    let ctx = context(client, Fake::default());
    let r = super::reconcile(resource(json!({})), ctx.clone()).await;
    let (reqs, bodies) = requests(&seen);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(reqs.len(), 5, "{reqs:#?}");
    assert_eq!(
        ctx.cognito.operations(),
        [Operation::GetId, Operation::GetCredentialsForIdentity]
    );
    assert_eq!(bodies[1]["status"]["identityId"], "us-east-1:fake-0");
    let secret = &bodies[2];
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    // "ASIAFAKE", the fake's access key id, base64.
    assert_eq!(secret["data"]["AWS_ACCESS_KEY_ID"], "QVNJQUZBS0U=");
    assert_eq!(bodies[3]["reason"], "CredentialsRotated");
    assert_eq!(
        ready(&bodies[4]),
        ("True".into(), "CredentialsIssued".into())
    );
}

/// Our Secret as the API server holds it, with credentials that expire at `expiration`,
/// and the status that says it was issued.
fn issued(expiration: jiff::Timestamp) -> (Value, Value) {
    use crate::reconcile::secret::tests::{owner, prov, written};
    use crate::reconcile::secret::{Placement, render};
    let creds = crate::aws::cognito::Credentials {
        expiration,
        ..crate::aws::fake::credentials()
    };
    let prov = crate::reconcile::secret::Provenance {
        force_token: None,
        issued_at: expiration - jiff::SignedDuration::from_hours(1),
        ..prov()
    };
    let owner = owner();
    let obj = resource(json!({}));
    let at = Placement {
        name: "app-creds",
        namespace: NS,
        owner: &owner,
        template: None,
        mount_path: obj.spec.mount_path(),
    };
    let mut secret = serde_json::to_value(written(render(&at, &creds, &prov))).expect("json");
    secret["metadata"]["uid"] = json!("secret-uid");
    secret["metadata"]["resourceVersion"] = json!("7");
    let when = crate::reconcile::schedule::rfc3339(expiration);
    let status = json!({
        "identityId": prov.identity_id,
        "identityPoolId": prov.identity_pool_id,
        "expiration": when,
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "CredentialsIssued",
                        "message": "", "lastTransitionTime": when, "observedGeneration": 1}],
    });
    (secret, status)
}

/// Credentials that are due for renewal (expiring in a minute).
fn due() -> (Value, Value) {
    issued(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60))
}

fn secret_writes(reqs: &[String]) -> usize {
    reqs.iter()
        .filter(|r| r.contains("/secrets") && !r.starts_with("GET"))
        .count()
}

#[tokio::test]
async fn a_due_renewal_rotates_with_the_same_identity() {
    let (secret, status) = due();
    let (client, seen) = mock::client(vec![
        Step::new("GET", SECRET, 200, secret),
        Step::echo("PATCH", SECRET),
        Step::echo("POST", EVENTS),
        Step::new("PATCH", STATUS, 200, stored_resource()),
    ]);
    let ctx = context(client, Fake::default());
    running_for_long(&ctx);
    let r = super::reconcile(resource(status), ctx.clone()).await;
    let (reqs, bodies) = requests(&seen);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    assert_eq!(
        ctx.cognito.operations(),
        [Operation::GetCredentialsForIdentity]
    );
    assert_eq!(bodies[1]["data"]["AWS_ACCESS_KEY_ID"], "QVNJQUZBS0U=");
    // An apply names what it applies.
    assert_eq!(
        (&bodies[1]["apiVersion"], &bodies[1]["kind"]),
        (&json!("v1"), &json!("Secret"))
    );
    assert_eq!(bodies[2]["reason"], "CredentialsRotated");
    assert_eq!(
        ready(&bodies[3]),
        ("True".into(), "CredentialsIssued".into())
    );
}

#[tokio::test]
async fn a_secret_someone_else_owns_is_never_written() {
    let (mut secret, status) = due();
    secret["metadata"]["ownerReferences"] = json!([]);
    let (client, seen) = mock::client(vec![
        Step::new("GET", SECRET, 200, secret),
        Step::echo("POST", EVENTS),
        Step::new("PATCH", STATUS, 200, stored_resource()),
    ]);
    let ctx = context(client, Fake::default());
    running_for_long(&ctx);
    let r = super::reconcile(resource(status), ctx.clone()).await;
    let (reqs, bodies) = requests(&seen);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    assert_eq!(secret_writes(&reqs), 0);
    assert_eq!(ctx.cognito.operations(), []);
    assert_eq!(ready(&bodies[2]), ("False".into(), "SecretConflict".into()));
}

#[tokio::test]
async fn a_refused_secret_write_is_a_condition_not_an_error() {
    let forbidden = mock::status(403, "Forbidden", "denied by policy");
    let (client, seen) = mock::client(vec![
        Step::new("GET", SECRET, 404, not_found()),
        Step::new("PATCH", STATUS, 200, stored_resource()),
        Step::new("POST", SECRETS, 403, forbidden),
        Step::echo("POST", EVENTS),
        Step::echo("POST", EVENTS),
        Step::new("PATCH", STATUS, 200, stored_resource()),
    ]);
    let ctx = context(client, Fake::default());
    let r = super::reconcile(resource(json!({})), ctx.clone()).await;
    let (reqs, bodies) = requests(&seen);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(reqs.len(), 6, "{reqs:#?}");
    assert_eq!(secret_writes(&reqs), 1);
    assert_eq!(
        ctx.cognito.operations(),
        [Operation::GetId, Operation::GetCredentialsForIdentity]
    );
    assert_eq!(
        ready(&bodies[5]),
        ("False".into(), "SecretWriteFailed".into())
    );
}

#[tokio::test]
async fn a_refused_status_write_is_an_error_and_the_secret_stays_written() {
    let (secret, status) = due();
    let forbidden = mock::status(403, "Forbidden", "no status for you");
    let (client, seen) = mock::client(vec![
        Step::new("GET", SECRET, 200, secret),
        Step::echo("PATCH", SECRET),
        Step::echo("POST", EVENTS),
        Step::new("PATCH", STATUS, 403, forbidden),
    ]);
    let ctx = context(client, Fake::default());
    running_for_long(&ctx);
    let r = super::reconcile(resource(status), ctx.clone()).await;
    let (reqs, _) = requests(&seen);
    assert!(
        matches!(&r, Err(super::Error::Kube(kube::Error::Api(e))) if e.code == 403),
        "{r:?}"
    );
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    assert_eq!(secret_writes(&reqs), 1);
    assert_eq!(
        ctx.cognito.operations(),
        [Operation::GetCredentialsForIdentity]
    );
}

#[tokio::test]
async fn a_lost_identity_is_replaced_once() {
    use crate::aws::cognito::CognitoError;
    let (secret, status) = due();
    let (client, seen) = mock::client(vec![
        Step::new("GET", SECRET, 200, secret),
        // The new identity is saved at once, and said.
        Step::new("PATCH", STATUS, 200, stored_resource()),
        Step::echo("POST", EVENTS),
        Step::echo("PATCH", SECRET),
        Step::echo("POST", EVENTS),
        Step::new("PATCH", STATUS, 200, stored_resource()),
    ]);
    let fake = Fake::default();
    fake.fail_once(
        Operation::GetCredentialsForIdentity,
        CognitoError::IdentityNotFound("gone".into()),
    );
    let ctx = context(client, fake);
    running_for_long(&ctx);
    let r = super::reconcile(resource(status), ctx.clone()).await;
    let (reqs, bodies) = requests(&seen);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        ctx.cognito.operations(),
        [
            Operation::GetCredentialsForIdentity,
            Operation::GetId,
            Operation::GetCredentialsForIdentity,
        ]
    );
    assert_eq!(reqs.len(), 6, "{reqs:#?}");
    // The new identity is saved at once; the Secret carries it.
    assert_eq!(bodies[1]["status"]["identityId"], "us-east-1:fake-1");
    assert_eq!(
        bodies[3]["metadata"]["annotations"]["cognito.kubecred.io/identity-id"],
        "us-east-1:fake-1"
    );
    assert_eq!(
        ready(&bodies[5]),
        ("True".into(), "CredentialsIssued".into())
    );
}

#[tokio::test]
async fn a_settled_resource_writes_nothing_and_calls_nothing() {
    // Fresh credentials (an hour left). The first pass completes the status this test
    // wrote by hand; the second, from that status, only reads the Secret (the watch has
    // not seen it here) and settles.
    let (secret, status) = issued(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1));
    let (client, seen) = mock::client(vec![
        Step::new("GET", SECRET, 200, secret.clone()),
        Step::new("PATCH", STATUS, 200, stored_resource()),
    ]);
    let ctx = context(client, Fake::default());
    running_for_long(&ctx);
    let r = super::reconcile(resource(status), ctx.clone()).await;
    let (_, bodies) = requests(&seen);
    assert!(r.is_ok(), "{r:?}");
    let written = bodies[1]["status"].clone();

    let (client, seen) = mock::client(vec![Step::new("GET", SECRET, 200, secret)]);
    let ctx = context(client, Fake::default());
    running_for_long(&ctx);
    let r = super::reconcile(resource(written), ctx.clone()).await;
    let (reqs, _) = requests(&seen);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(reqs, ["GET /api/v1/namespaces/team/secrets/app-creds"]);
    assert_eq!(ctx.cognito.operations(), []);
}
