//! The Secret's existing contents are untrusted (anyone with write access may edit them):
//! `inspect` must never panic, and whatever it calls intact must be exactly what `render`
//! produces for the credentials and provenance it read back.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use cognito_unauth_controller::reconcile::secret::{self, Owner, Placement};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    data: Vec<(String, Vec<u8>)>,
    annotations: Vec<(String, String)>,
    /// Start from a well-formed Secret and apply the edits above, or from nothing.
    start_valid: bool,
    owned: bool,
}

fn owner() -> Owner {
    Owner {
        api_version: "cognito.kubecred.io/v1alpha1".into(),
        kind: "CognitoUnauthCredential".into(),
        name: "n".into(),
        uid: "uid".into(),
    }
}

fn valid() -> Secret {
    let creds = cognito_unauth_controller::aws::cognito::Credentials {
        access_key_id: "ASIAFUZZ".into(),
        secret_access_key: "secret".into(),
        session_token: "token".into(),
        expiration: "2030-01-01T00:00:00Z".parse().expect("time"),
    };
    let prov = secret::Provenance {
        identity_pool_id: "us-east-1:00000000-0000-0000-0000-000000000000".into(),
        identity_id: "us-east-1:11111111-0000-0000-0000-000000000000".into(),
        region: "us-east-1".into(),
        custom_role_arn: None,
        session: None,
        assumed_role_arn: None,
        issued_at: "2029-12-31T23:00:00Z".parse().expect("time"),
        force_token: None,
    };
    secret::render(&Placement { name: "n", namespace: "ns", owner: &owner(), template: None, mount_path: "/m" }, &creds, &prov)
}

fuzz_target!(|input: Input| {
    let mut s = if input.start_valid {
        valid()
    } else {
        Secret {
            metadata: ObjectMeta::default(),
            ..Secret::default()
        }
    };
    let data = s.data.get_or_insert_with(BTreeMap::new);
    for (k, v) in input.data {
        data.insert(k, ByteString(v));
    }
    let ann = s.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in input.annotations {
        ann.insert(k, v);
    }
    if !input.owned {
        s.metadata.owner_references = Some(vec![OwnerReference::default()]);
    }
    let o = secret::inspect(&s, "uid", "/m", None);
    if o.intact {
        let (c, p) = (o.credentials.expect("intact has credentials"), o.provenance.expect("and provenance"));
        let again = secret::render(&Placement { name: "n", namespace: "ns", owner: &owner(), template: None, mount_path: "/m" }, &c, &p);
        assert_eq!(again.data, s.data, "intact data must be exactly what render produces");
    }
});
