//! The `CognitoUnauthCredential` API (cognito.kubecred.io/v1alpha1).
//!
//! The doc comments on these types become `kubectl explain` and the CRD's schema;
//! `crdgen` prints the CRD and CI fails when `crds/` is stale.
//!
//! The bottom of the tree: owns the API types, their limits ([`limits`]) and the
//! conditions' vocabulary ([`conditions`]); uses no other module of this crate.

pub mod conditions;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "cognito.kubecred.io";
/// Annotation on the resource: set it to a new value to rotate the credentials once.
pub const FORCE_ROTATE_ANNOTATION: &str = "cognito.kubecred.io/force-rotate";
/// Default for `spec.renewBefore`.
pub const DEFAULT_RENEW_BEFORE: &str = "20m";
/// Default for `spec.sessionDuration` (flow Basic).
pub const DEFAULT_SESSION_DURATION: &str = "1h";

/// Keeps short-lived AWS credentials for an Amazon Cognito identity pool's guest
/// (unauthenticated) role in a Secret, and rotates them before they expire.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "cognito.kubecred.io",
    version = "v1alpha1",
    kind = "CognitoUnauthCredential",
    namespaced,
    status = "CognitoUnauthCredentialStatus",
    shortname = "cuc",
    shortname = "cognitocred",
    category = "aws",
    doc = "Short-lived AWS credentials of a Cognito identity pool's guest role, kept fresh in a Secret."
)]
#[kube(printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.identityPoolId"}"#)]
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[kube(printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#)]
#[kube(printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiration"}"#)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.region) || self.identityPoolId.startsWith(self.region + ':')"
).message("region must equal the region prefix of identityPoolId (the part before ':')"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.renewBefore) || !self.renewBefore.matches('^([0-9]+(\\\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$') || (duration(self.renewBefore) >= duration('5m') && duration(self.renewBefore) <= duration('50m'))"
).message("renewBefore must be between 5m and 50m"))]
#[x_kube(validation = kube::core::Rule::new(
    "self.flow != 'Basic' || has(self.roleArn)"
).message("roleArn is required when flow is Basic: the role AssumeRoleWithWebIdentity assumes"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.roleArn) || self.flow == 'Basic'"
).message("roleArn is only used with flow Basic; with flow Enhanced, customRoleArn chooses the role"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.customRoleArn) || self.flow != 'Basic'"
).message("customRoleArn is only used with flow Enhanced; with flow Basic, set roleArn"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.sessionDuration) || self.flow == 'Basic'"
).message("sessionDuration is only used with flow Basic (flow Enhanced credentials always last one hour)"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.roleSessionName) || self.flow == 'Basic'"
).message("roleSessionName is only used with flow Basic"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.sessionDuration) || !self.sessionDuration.matches('^([0-9]+(\\\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$') || (duration(self.sessionDuration) >= duration('15m') && duration(self.sessionDuration) <= duration('12h'))"
).message("sessionDuration must be between 15m and 12h"))]
#[serde(rename_all = "camelCase")]
pub struct CognitoUnauthCredentialSpec {
    /// The identity pool whose guest (unauthenticated) role the credentials belong to,
    /// as REGION:UUID, for example `us-east-1:0a1b2c3d-1111-2222-3333-444455556666`.
    /// Guest access must be enabled on the pool.
    #[schemars(
        length(min = 1, max = 55),
        regex(
            pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
        )
    )]
    pub identity_pool_id: String,

    /// AWS region of the pool. Defaults to the prefix of identityPoolId and, when set,
    /// must equal it. Written to the Secret as AWS_REGION and AWS_DEFAULT_REGION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
    )]
    pub region: Option<String>,

    /// How the credentials are obtained. `Enhanced` (the default): GetId, then
    /// GetCredentialsForIdentity; Cognito scopes every guest session down to a fixed list
    /// of services, and the credentials last one hour. `Basic` (Cognito's classic flow):
    /// GetId, GetOpenIdToken, then STS AssumeRoleWithWebIdentity for roleArn; the
    /// credentials carry the role's full permissions (not scoped down) and last
    /// sessionDuration. Basic needs the pool's AllowClassicFlow and a role whose trust
    /// policy allows this pool's unauthenticated identities.
    #[serde(default)]
    pub flow: Flow,

    /// Flow Basic only, and required with it: the IAM role AssumeRoleWithWebIdentity
    /// assumes. Its trust policy must allow `sts:AssumeRoleWithWebIdentity` by the
    /// federated principal `cognito-identity.amazonaws.com` with
    /// `cognito-identity.amazonaws.com:aud` equal to identityPoolId and
    /// `cognito-identity.amazonaws.com:amr` equal to `unauthenticated`. At most 640
    /// characters (IAM's longest role ARN, with a 512-character path, has 613).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 20, max = limits::ROLE_ARN),
        regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$")
    )]
    pub role_arn: Option<String>,

    /// Flow Basic only: how long the credentials last (AssumeRoleWithWebIdentity's
    /// DurationSeconds), as a Go duration between 15m and 12h (default 1h). The role's
    /// MaxSessionDuration (1h unless raised) must allow it: STS refuses a longer one
    /// (reason InvalidSessionDuration). Rotation follows the credentials' real
    /// Expiration, renewBefore ahead of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")
    )]
    pub session_duration: Option<String>,

    /// Flow Basic only: the RoleSessionName, seen in CloudTrail and in the assumed-role
    /// ARN (status.assumedRoleArn): 2 to 64 letters, digits and `_+=,.@-`. Defaults to
    /// `<namespace>-<name>` of this resource (cut to 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64), regex(pattern = r"^[\w+=,.@-]+$"))]
    pub role_session_name: Option<String>,

    /// Flow Enhanced only: IAM role ARN to request instead of the pool's default guest
    /// role (CustomRoleArn of GetCredentialsForIdentity). Unverified against AWS: AWS
    /// documents CustomRoleArn for choosing among the roles an identity provider's token
    /// carries, and a guest identity has no token, so Cognito may refuse it
    /// (InvalidParameter) or ignore it. The test bed's emulator accepts any role here and
    /// signs as it; only that is tested. At most 640 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 20, max = limits::ROLE_ARN),
        regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$")
    )]
    pub custom_role_arn: Option<String>,

    /// Name of the Secret to write, in this resource's namespace (a Secret is never
    /// written anywhere else). Defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = limits::NAME),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,

    /// Extra labels and annotations for the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// How long before the credentials' Expiration to rotate them, as a Go duration
    /// between 5m and 50m (default 20m). When it is not shorter than the credentials'
    /// lifetime, they are rotated once two thirds of their lifetime have passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 2, max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")
    )]
    pub renew_before: Option<String>,

    /// Stop calling Cognito while true. The Secret is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// Where pods mount the Secret (default `/var/run/secrets/cognito`). The Secret's
    /// `config` key names `<mountPath>/credential-process.json` in its
    /// `credential_process` line, so an AWS SDK given `AWS_CONFIG_FILE=<mountPath>/config`
    /// re-reads the credentials as they near expiry, with no restart. At most 256
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = limits::MOUNT_PATH),
        regex(pattern = r"^/[A-Za-z0-9._/-]*$")
    )]
    pub mount_path: Option<String>,

    /// Deployments, StatefulSets and DaemonSets in this namespace to roll when the
    /// credentials in the Secret change (for workloads that read them as environment
    /// variables): the controller sets their pod template's
    /// `cognito.kubecred.io/restartedAt` annotation, once per rotation. Never on the first
    /// issue, on a controller restart or on a status-only change. The controller needs
    /// `patch` on these kinds (the chart's `rolloutRestart.enabled`). At most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::ROLLOUT_TARGETS))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"]))]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,

    /// After each fetch, call STS GetCallerIdentity signed with the new credentials
    /// before writing them: publishes status.assumedRoleArn and the `Verified`
    /// condition. Credentials that fail verification are not written; the Secret keeps
    /// the previous good ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

/// How credentials are obtained from the pool: `Enhanced` (GetCredentialsForIdentity)
/// or `Basic` (GetOpenIdToken and STS AssumeRoleWithWebIdentity).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum Flow {
    #[default]
    Enhanced,
    Basic,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Enhanced => "Enhanced",
            Flow::Basic => "Basic",
        }
    }
}

/// A workload to roll when the credentials change.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// Deployment, StatefulSet or DaemonSet (apps/v1).
    pub kind: WorkloadKind,
    /// The workload's name, in this resource's namespace.
    #[schemars(
        length(min = 1, max = limits::NAME),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// The kinds of workload that can be rolled.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// Default for `spec.mountPath`.
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/cognito";

/// Metadata added to the Secret: at most 2048 characters in all, keys and values of
/// labels and annotations together.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.labels) ? self.labels.map(k, size(k) + size(self.labels[k])).sum() : 0) + (has(self.annotations) ? self.annotations.map(k, size(k) + size(self.annotations[k])).sum() : 0) <= 2048",
    "message": "secretTemplate: labels and annotations at most 2048 characters in all (keys and values together)"
}]))]
pub struct SecretTemplate {
    /// Labels added to the Secret: at most 16, each key at most 128 characters and each
    /// value at most 63. The controller's own labels win on a clash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 16,
        "x-kubernetes-validations" = [{
            "rule": "self.all(k, size(k) <= 128 && size(self[k]) <= 63)",
            "message": "secretTemplate.labels: each key at most 128 characters, each value at most 63"
        }]
    ))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret: at most 16, each key at most 128 characters and
    /// each value at most 256. The controller's own annotations win on a clash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 16,
        "x-kubernetes-validations" = [{
            "rule": "self.all(k, size(k) <= 128 && size(self[k]) <= 256)",
            "message": "secretTemplate.annotations: each key at most 128 characters, each value at most 256"
        }]
    ))]
    pub annotations: BTreeMap<String, String>,
}

/// The limits the schema puts on what a namespace user writes into a resource (its
/// `spec`), so that one resource costs the shared controller a bounded amount of memory.
pub mod limits {
    /// Entries in `secretTemplate.labels`, and in `secretTemplate.annotations`.
    pub const TEMPLATE_ENTRIES: usize = 16;
    /// Characters in a template label or annotation key.
    pub const TEMPLATE_KEY: usize = 128;
    /// Characters in a template label value (Kubernetes' own limit).
    pub const LABEL_VALUE: usize = 63;
    /// Characters in a template annotation value.
    pub const ANNOTATION_VALUE: usize = 256;
    /// Characters in all of `secretTemplate`'s keys and values together.
    pub const TEMPLATE_CHARS: usize = 2048;
    /// Entries in `rolloutRestartTargets`.
    pub const ROLLOUT_TARGETS: usize = 8;
    /// Characters in `roleArn` and `customRoleArn`: IAM's longest role ARN is 613
    /// (partition `aws-us-gov`, a 512-character path, a 64-character name).
    pub const ROLE_ARN: usize = 640;
    /// Characters in `mountPath`.
    pub const MOUNT_PATH: usize = 256;
    /// Characters in an object's name (`secretName`, a rollout target's name): a DNS
    /// subdomain, Kubernetes' own limit.
    pub const NAME: usize = 253;
    /// The largest `spec` the limits allow, serialized as JSON, in bytes: the size of
    /// [`largest`], which a unit test checks against the schema and the admission tests
    /// show is admitted.
    pub const SPEC_BYTES: usize = 7 * 1024;

    use super::{
        CognitoUnauthCredentialSpec, Flow, RolloutRestartTarget, SecretTemplate, WorkloadKind,
    };

    /// The largest spec the schema admits for `identity_pool_id`: every string at its
    /// limit, every list full, the template's characters all used (flow Basic, which
    /// has the most fields). For the tests that measure what one resource costs.
    pub fn largest(identity_pool_id: &str) -> CognitoUnauthCredentialSpec {
        let region = identity_pool_id.split(':').next().unwrap_or_default();
        // Each template entry: a 32-character key and a 32-character value.
        let entries = |prefix: &str| {
            let n = TEMPLATE_CHARS / 64 / 2;
            (0..n)
                .map(|i| (format!("{prefix}.example.com/{i:0>14}"), "v".repeat(32)))
                .collect()
        };
        CognitoUnauthCredentialSpec {
            identity_pool_id: identity_pool_id.to_string(),
            region: Some(region.to_string()),
            flow: Flow::Basic,
            role_arn: Some(format!("{:r<ROLE_ARN$}", "arn:aws:iam::123456789012:role/")),
            // Go durations with leading zeros, at the field's 32 characters.
            session_duration: Some(format!("{:0>32}", "1h")),
            role_session_name: Some("s".repeat(64)),
            custom_role_arn: None,
            secret_name: Some("n".repeat(NAME)),
            secret_template: Some(SecretTemplate {
                labels: entries("label"),
                annotations: entries("notes"),
            }),
            renew_before: Some(format!("{:0>32}", "20m")),
            suspend: Some(false),
            mount_path: Some(format!("{:m<MOUNT_PATH$}", "/")),
            rollout_restart_targets: (0..ROLLOUT_TARGETS)
                .map(|i| RolloutRestartTarget {
                    kind: WorkloadKind::StatefulSet,
                    name: format!("{i:w>NAME$}"),
                })
                .collect(),
            verify: Some(true),
        }
    }
}

/// The annotations of a resource the controller and the webhook read: their own
/// (`cognito.kubecred.io/...`).
fn ours(key: &str) -> bool {
    key.strip_prefix(GROUP)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// What the caches keep of a resource: its spec, status and the metadata the controller
/// reads. Labels, other annotations (`kubectl.kubernetes.io/last-applied-configuration`,
/// anyone's up to the API server's 256 KiB) and managedFields are not kept: a resource's
/// size in memory is bounded by the schema's limits, whatever its owner adds.
pub fn slim(o: &mut CognitoUnauthCredential) {
    o.metadata.managed_fields = None;
    o.metadata.labels = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.retain(|k, _| ours(k));
        if a.is_empty() {
            o.metadata.annotations = None;
        }
    }
}

/// What the controller last did and saw.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CognitoUnauthCredentialStatus {
    /// The Cognito identity created for this resource (GetId), reused for every rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_id: Option<String>,
    /// The identity pool that identityId belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_pool_id: Option<String>,
    /// When the credentials now in the Secret expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Time>,
    /// When the controller will next rotate the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// When the credentials in the Secret were fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// The Secret the credentials are written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Secrets this resource wrote under an earlier spec.secretName. Each is deleted once
    /// the Secret under the current name holds credentials; until then it is kept, so
    /// pods that still read it keep working.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secret_names: Vec<String>,
    /// The metadata.generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Failed attempts since the last successful rotation; drives the retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_attempts: Option<i32>,
    /// When the last failed attempt happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// The reason of the last failed attempt (kept while Ready says Expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
    /// The role session the credentials act as: from AssumeRoleWithWebIdentity's answer
    /// (flow Basic), or from STS GetCallerIdentity (spec.verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_role_arn: Option<String>,
    /// The credentials the rollout-restart targets were last rolled for (or started
    /// with): set once per rotation, so a restart of the controller rolls nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_restart: Option<RolloutRestartStatus>,
    /// `Ready` is True when the Secret holds unexpired credentials from the current spec.
    /// `Verified` (with spec.verify) says whether STS accepted the last credentials
    /// fetched. `RolloutRestart` (with spec.rolloutRestartTargets) says whether the
    /// targets were rolled for the credentials in the Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Rollout-restart bookkeeping.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartStatus {
    /// Issue time (RFC 3339, full precision) of the credentials the targets run with:
    /// rolled for, or started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_issued_at: Option<String>,
    /// The `cognito.kubecred.io/restartedAt` value last set on the targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<String>,
}

impl CognitoUnauthCredentialSpec {
    /// The region of the pool: spec.region, else the pool id's prefix.
    pub fn region(&self) -> &str {
        match &self.region {
            Some(r) => r,
            None => self
                .identity_pool_id
                .split_once(':')
                .map_or(self.identity_pool_id.as_str(), |(r, _)| r),
        }
    }

    /// spec.mountPath or its default.
    pub fn mount_path(&self) -> &str {
        self.mount_path.as_deref().unwrap_or(DEFAULT_MOUNT_PATH)
    }

    /// spec.renewBefore or its default.
    pub fn renew_before(&self) -> &str {
        self.renew_before.as_deref().unwrap_or(DEFAULT_RENEW_BEFORE)
    }

    /// spec.sessionDuration or its default.
    pub fn session_duration(&self) -> &str {
        self.session_duration
            .as_deref()
            .unwrap_or(DEFAULT_SESSION_DURATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn region_defaults_to_the_pool_prefix() {
        let spec = CognitoUnauthCredentialSpec {
            identity_pool_id: "ap-northeast-1:fc81b5de-4fa4-4087-adb5-4598fd25982a".into(),
            ..Default::default()
        };
        assert_eq!(spec.region(), "ap-northeast-1");
        let spec = CognitoUnauthCredentialSpec {
            region: Some("eu-west-1".into()),
            ..spec
        };
        assert_eq!(spec.region(), "eu-west-1");
    }

    #[test]
    fn crd_has_names_columns_status_and_rules() {
        let crd = serde_json::to_value(CognitoUnauthCredential::crd()).unwrap();
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!(["cuc", "cognitocred"])
        );
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["subresources"]["status"], serde_json::json!({}));
        let cols: Vec<_> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            cols,
            ["Pool", "Ready", "Reason", "Secret", "Expires", "Age"]
        );
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["identityPoolId"]));
        assert_eq!(spec["properties"]["identityPoolId"]["maxLength"], 55);
        assert_eq!(
            spec["x-kubernetes-validations"].as_array().unwrap().len(),
            8
        );
        assert_eq!(spec["properties"]["flow"]["default"], "Enhanced");
        assert_eq!(
            spec["properties"]["flow"]["enum"],
            serde_json::json!(["Enhanced", "Basic"])
        );
        let conds =
            &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conds["x-kubernetes-list-type"], "map");
    }

    /// Every user string, list and map of the spec has a limit, the limits are the ones
    /// `limits` names, and the largest spec they admit (`limits::largest`, which the
    /// admission tests show is admitted) stays within `limits::SPEC_BYTES`.
    #[test]
    fn the_largest_spec_the_schema_allows_is_bounded() {
        use super::limits::*;
        let crd = serde_json::to_value(CognitoUnauthCredential::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let props = spec["properties"].as_object().unwrap();
        // Each property: a string with maxLength, a bounded list, a bounded map, or a
        // closed set (bool, enum).
        for (name, p) in props {
            let bounded = p["maxLength"].is_u64()
                || p["maxItems"].is_u64()
                || p["enum"].is_array()
                || p["type"] == "boolean"
                || name == "secretTemplate";
            assert!(bounded, "spec.{name} has no limit: {p}");
        }
        for (name, limit) in [
            ("roleArn", ROLE_ARN),
            ("customRoleArn", ROLE_ARN),
            ("mountPath", MOUNT_PATH),
            ("secretName", NAME),
        ] {
            assert_eq!(props[name]["maxLength"], limit, "{name}");
        }
        let template = &props["secretTemplate"];
        for (field, value) in [("labels", LABEL_VALUE), ("annotations", ANNOTATION_VALUE)] {
            let t = &template["properties"][field];
            assert_eq!(t["maxProperties"], TEMPLATE_ENTRIES, "{field}");
            let rule = t["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
            assert_eq!(
                rule,
                format!("self.all(k, size(k) <= {TEMPLATE_KEY} && size(self[k]) <= {value})")
            );
        }
        let total = template["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap();
        assert!(total.ends_with(&format!(" <= {TEMPLATE_CHARS}")), "{total}");
        let targets = &props["rolloutRestartTargets"];
        assert_eq!(targets["maxItems"], ROLLOUT_TARGETS);
        assert_eq!(targets["items"]["properties"]["name"]["maxLength"], NAME);

        // The largest: a pool id at its maxLength, and every other string at its own.
        let pool_max = props["identityPoolId"]["maxLength"].as_u64().unwrap() as usize;
        let pool = format!("us-{:a>13}-1:0a1b2c3d-1111-2222-3333-444455556666", "");
        assert_eq!(pool.len(), pool_max);
        let largest = largest(&pool);
        let full = |v: &Option<String>, name: &str| {
            let max = props[name]["maxLength"].as_u64().unwrap() as usize;
            assert_eq!(v.as_deref().map(str::len), Some(max), "{name}");
        };
        full(&largest.role_arn, "roleArn");
        full(&largest.session_duration, "sessionDuration");
        full(&largest.role_session_name, "roleSessionName");
        full(&largest.secret_name, "secretName");
        full(&largest.renew_before, "renewBefore");
        full(&largest.mount_path, "mountPath");
        assert_eq!(largest.rollout_restart_targets.len(), ROLLOUT_TARGETS);
        let t = largest.secret_template.as_ref().unwrap();
        let chars: usize = [&t.labels, &t.annotations]
            .iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum();
        assert_eq!(chars, TEMPLATE_CHARS);
        assert_eq!(t.labels.len(), TEMPLATE_ENTRIES);
        assert_eq!(t.annotations.len(), TEMPLATE_ENTRIES);
        let bytes = serde_json::to_vec(&largest).unwrap().len();
        assert!(bytes <= SPEC_BYTES, "{bytes} bytes");
        assert!(
            bytes > SPEC_BYTES * 3 / 4,
            "{bytes} bytes: lower SPEC_BYTES to it"
        );
    }

    #[test]
    fn the_caches_keep_only_what_is_read() {
        let mut o = CognitoUnauthCredential::new("app", CognitoUnauthCredentialSpec::default());
        let big = "x".repeat(200_000);
        o.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        o.metadata.annotations = Some(
            [
                (FORCE_ROTATE_ANNOTATION.to_string(), "1".to_string()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    big.clone(),
                ),
                ("cognito.kubecred.io.evil.example/x".to_string(), big),
            ]
            .into(),
        );
        o.metadata.managed_fields = Some(vec![Default::default()]);
        slim(&mut o);
        assert_eq!(o.metadata.labels, None);
        assert_eq!(o.metadata.managed_fields, None);
        assert_eq!(
            o.metadata.annotations,
            Some([(FORCE_ROTATE_ANNOTATION.to_string(), "1".to_string())].into())
        );
        o.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        slim(&mut o);
        assert_eq!(o.metadata.annotations, None);
    }

    /// crds/ is what these types generate (`make crds` writes it; the chart's copy is
    /// compared with it by `make chart-check`). In-process, so the check costs no second
    /// build of the crate with the `crdgen` feature.
    #[test]
    fn crds_dir_is_generated_from_these_types() {
        let generated = serde_yaml::to_string(&CognitoUnauthCredential::crd()).expect("yaml");
        let committed = include_str!("../../crds/cognitounauthcredentials.yaml");
        assert!(
            generated == committed,
            "crds/cognitounauthcredentials.yaml is stale: run 'make crds' and commit the result"
        );
    }
}
