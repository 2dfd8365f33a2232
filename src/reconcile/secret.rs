//! The Secret: rendering it from credentials, and reading back what is in one.
//!
//! Both directions are pure. The Secret carries, besides the credentials, annotations
//! that say where they came from (pool, identity, role, region, issue and expiry times,
//! the force-rotate token they answer) and a checksum of its data, so the controller
//! can tell from the Secret alone whether it still holds good credentials for the
//! current spec, also after a restart or a lost status write.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use crate::aws::cognito::{Credentials, RoleSession};
use crate::crd::{Flow, SecretTemplate};
pub use crate::reconcile::schedule::{rfc3339, rfc3339_precise};

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "cognito-unauth-controller";
/// Label selector for the Secrets this controller writes (and caches).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=cognito-unauth-controller";

pub const ANN_EXPIRATION: &str = "cognito.kubecred.io/expiration";
pub const ANN_ISSUED_AT: &str = "cognito.kubecred.io/issued-at";
pub const ANN_POOL: &str = "cognito.kubecred.io/identity-pool-id";
pub const ANN_IDENTITY: &str = "cognito.kubecred.io/identity-id";
pub const ANN_REGION: &str = "cognito.kubecred.io/region";
pub const ANN_ROLE: &str = "cognito.kubecred.io/custom-role-arn";
/// `Enhanced` or `Basic`; absent on Secrets written before flows existed (Enhanced).
pub const ANN_FLOW: &str = "cognito.kubecred.io/flow";
/// Flow Basic: the role, session name and duration AssumeRoleWithWebIdentity was asked
/// for, and the assumed-role ARN it answered.
pub const ANN_ROLE_ARN: &str = "cognito.kubecred.io/role-arn";
pub const ANN_SESSION_NAME: &str = "cognito.kubecred.io/role-session-name";
pub const ANN_SESSION_DURATION: &str = "cognito.kubecred.io/session-duration";
pub const ANN_ASSUMED_ROLE: &str = "cognito.kubecred.io/assumed-role-arn";
pub const ANN_FORCE: &str = "cognito.kubecred.io/force-rotate";
pub const ANN_CHECKSUM: &str = "cognito.kubecred.io/checksum";
/// The mount path the data's `config` names: the watch of our Secrets reads metadata
/// only, and a fingerprint covers the mount path.
pub const ANN_MOUNT_PATH: &str = "cognito.kubecred.io/mount-path";
/// The field manager of every write of ours (managedFields tell our writes from others').
pub const FIELD_MANAGER: &str = "cognito-unauth-controller";

pub const KEY_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const KEY_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const KEY_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
pub const KEY_REGION: &str = "AWS_REGION";
pub const KEY_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
pub const KEY_EXPIRATION: &str = "AWS_CREDENTIAL_EXPIRATION";
pub const KEY_CREDENTIALS_FILE: &str = "credentials";
pub const KEY_CREDENTIAL_PROCESS: &str = "credential-process.json";
pub const KEY_CONFIG_FILE: &str = "config";

/// The keys Secrets carried before `credential-process.json` and `config` were added:
/// a Secret with only these is still intact, and is completed without a new fetch.
const LEGACY_KEYS: [&str; 7] = [
    KEY_ACCESS_KEY_ID,
    KEY_SECRET_ACCESS_KEY,
    KEY_SESSION_TOKEN,
    KEY_REGION,
    KEY_DEFAULT_REGION,
    KEY_EXPIRATION,
    KEY_CREDENTIALS_FILE,
];

/// Where a set of credentials came from; recorded in the Secret's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub identity_pool_id: String,
    pub identity_id: String,
    pub region: String,
    /// Flow Enhanced: the CustomRoleArn asked for.
    pub custom_role_arn: Option<String>,
    /// Flow Basic: the AssumeRoleWithWebIdentity parameters (None: flow Enhanced).
    pub session: Option<RoleSession>,
    /// Flow Basic: the assumed-role ARN STS answered.
    pub assumed_role_arn: Option<String>,
    pub issued_at: Timestamp,
    /// The force-rotate annotation value these credentials answer, if any.
    pub force_token: Option<String>,
}

/// The owner the Secret points back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

fn ini(c: &Credentials) -> String {
    format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
        c.access_key_id, c.secret_access_key, c.session_token
    )
}

/// The `credential_process` output (version 1) for `creds`.
fn credential_process(c: &Credentials) -> String {
    let v = serde_json::json!({
        "Version": 1,
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key,
        "SessionToken": c.session_token,
        "Expiration": rfc3339(c.expiration),
    });
    format!("{v}\n")
}

/// An AWS config file whose default profile reads the mounted `credential-process.json`.
fn config_file(region: &str, mount_path: &str) -> String {
    let dir = mount_path.trim_end_matches('/');
    format!(
        "[default]\nregion = {region}\ncredential_process = cat {dir}/{KEY_CREDENTIAL_PROCESS}\n"
    )
}

/// The Secret's data for `creds`, for pods that mount it at `mount_path`.
pub fn render_data(
    creds: &Credentials,
    region: &str,
    mount_path: &str,
) -> BTreeMap<String, ByteString> {
    let s = |v: &str| ByteString(v.as_bytes().to_vec());
    BTreeMap::from([
        (
            KEY_CREDENTIAL_PROCESS.to_string(),
            s(&credential_process(creds)),
        ),
        (
            KEY_CONFIG_FILE.to_string(),
            s(&config_file(region, mount_path)),
        ),
        (KEY_ACCESS_KEY_ID.to_string(), s(&creds.access_key_id)),
        (
            KEY_SECRET_ACCESS_KEY.to_string(),
            s(&creds.secret_access_key),
        ),
        (KEY_SESSION_TOKEN.to_string(), s(&creds.session_token)),
        (KEY_REGION.to_string(), s(region)),
        (KEY_DEFAULT_REGION.to_string(), s(region)),
        (KEY_EXPIRATION.to_string(), s(&rfc3339(creds.expiration))),
        (KEY_CREDENTIALS_FILE.to_string(), s(&ini(creds))),
    ])
}

/// SHA-256 over the data's keys and values, in key order, length-prefixed.
pub fn checksum(data: &BTreeMap<String, ByteString>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.0.len() as u64).to_le_bytes());
        h.update(&v.0);
    }
    let digest = h.finalize();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Where the Secret goes, who owns it, and what the resource asks of its shape.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub owner: &'a Owner,
    /// spec.secretTemplate: labels and annotations to carry.
    pub template: Option<&'a SecretTemplate>,
    /// spec.mountPath: where pods mount it (the config file names it).
    pub mount_path: &'a str,
}

/// The complete Secret the controller wants: data, labels, annotations, owner.
pub fn render(at: &Placement<'_>, creds: &Credentials, prov: &Provenance) -> Secret {
    let Placement {
        name,
        namespace,
        owner,
        template,
        mount_path,
    } = *at;
    let data = render_data(creds, &prov.region, mount_path);
    let mut labels = template.map(|t| t.labels.clone()).unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    let mut annotations = template.map(|t| t.annotations.clone()).unwrap_or_default();
    // Our annotations win; drop template keys in our prefix that we do not set.
    annotations.retain(|k, _| !k.starts_with("cognito.kubecred.io/"));
    annotations.insert(ANN_EXPIRATION.into(), rfc3339(creds.expiration));
    annotations.insert(ANN_ISSUED_AT.into(), rfc3339_precise(prov.issued_at));
    annotations.insert(ANN_POOL.into(), prov.identity_pool_id.clone());
    annotations.insert(ANN_IDENTITY.into(), prov.identity_id.clone());
    annotations.insert(ANN_REGION.into(), prov.region.clone());
    if let Some(role) = &prov.custom_role_arn {
        annotations.insert(ANN_ROLE.into(), role.clone());
    }
    let flow = if prov.session.is_some() {
        Flow::Basic
    } else {
        Flow::Enhanced
    };
    annotations.insert(ANN_FLOW.into(), flow.as_str().to_string());
    if let Some(s) = &prov.session {
        annotations.insert(ANN_ROLE_ARN.into(), s.role_arn.clone());
        annotations.insert(ANN_SESSION_NAME.into(), s.session_name.clone());
        annotations.insert(
            ANN_SESSION_DURATION.into(),
            format!("{}s", s.duration_seconds),
        );
    }
    if let Some(arn) = &prov.assumed_role_arn {
        annotations.insert(ANN_ASSUMED_ROLE.into(), arn.clone());
    }
    if let Some(token) = &prov.force_token {
        annotations.insert(ANN_FORCE.into(), token.clone());
    }
    annotations.insert(ANN_CHECKSUM.into(), checksum(&data));
    annotations.insert(ANN_MOUNT_PATH.into(), mount_path.to_string());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: owner.api_version.clone(),
                kind: owner.kind.clone(),
                name: owner.name.clone(),
                uid: owner.uid.clone(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// What an existing Secret holds, as far as the controller is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Has an owner reference with controller=true to this resource's uid.
    pub owned: bool,
    /// Our keys are complete and match the checksum the controller wrote. Keys that
    /// others added are theirs: they neither break this nor count as drift.
    pub intact: bool,
    /// Intact and laid out as it would be rendered now (all keys, this mount path).
    /// An intact Secret in an older layout is re-rendered with the same credentials.
    pub current_layout: bool,
    /// Carries the spec's secretTemplate labels and annotations.
    pub template_applied: bool,
    /// `immutable: true`: it can never be written again, only deleted.
    pub immutable: bool,
    /// When the credentials expire, when intact.
    pub expiration: Option<Timestamp>,
    /// The credentials, when intact and read (None when only the watch's fingerprint of
    /// the Secret was seen: see [`Seen`]).
    pub credentials: Option<Credentials>,
    pub provenance: Option<Provenance>,
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    let v = data.get(key)?;
    let s = std::str::from_utf8(&v.0).ok()?;
    (!s.is_empty()).then(|| s.to_string())
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// `3600s`, as written for the session duration.
fn parse_seconds(s: &str) -> Option<u32> {
    s.strip_suffix('s')?.parse().ok()
}

/// Whether the Secret has a controller owner reference to `owner_uid`.
pub fn owned_by(secret: &Secret, owner_uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid)
}

/// Whether the Secret carries the template's labels and annotations (our own keys in
/// the template are ignored: ours win).
pub fn template_applied(secret: &Secret, template: Option<&SecretTemplate>) -> bool {
    let Some(t) = template else {
        return true;
    };
    let has = |have: &Option<BTreeMap<String, String>>, want: &BTreeMap<String, String>| {
        want.iter()
            .filter(|(k, _)| {
                !k.starts_with("cognito.kubecred.io/") && k.as_str() != MANAGED_BY_LABEL
            })
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    has(&secret.metadata.labels, &t.labels) && has(&secret.metadata.annotations, &t.annotations)
}

/// The keys this controller writes. Everything else in a Secret's data is someone else's.
pub fn is_our_key(key: &str) -> bool {
    LEGACY_KEYS.contains(&key) || key == KEY_CREDENTIAL_PROCESS || key == KEY_CONFIG_FILE
}

/// Where the credentials came from, as the annotations say; None when incomplete.
fn provenance_of(ann: &BTreeMap<String, String>) -> Option<Provenance> {
    // No flow annotation: written before flows existed, so Enhanced. A Basic one
    // without its parameters is incomplete (not intact).
    let session = match ann.get(ANN_FLOW).map(String::as_str) {
        None | Some("Enhanced") => None,
        Some("Basic") => Some(RoleSession {
            role_arn: ann.get(ANN_ROLE_ARN)?.clone(),
            session_name: ann.get(ANN_SESSION_NAME)?.clone(),
            duration_seconds: parse_seconds(ann.get(ANN_SESSION_DURATION)?)?,
        }),
        Some(_) => return None,
    };
    Some(Provenance {
        identity_pool_id: ann.get(ANN_POOL)?.clone(),
        identity_id: ann.get(ANN_IDENTITY)?.clone(),
        region: ann.get(ANN_REGION)?.clone(),
        custom_role_arn: ann.get(ANN_ROLE).cloned(),
        assumed_role_arn: session
            .as_ref()
            .and_then(|_| ann.get(ANN_ASSUMED_ROLE).cloned()),
        session,
        issued_at: parse_time(ann.get(ANN_ISSUED_AT)?)?,
        force_token: ann.get(ANN_FORCE).cloned(),
    })
}

/// Reads a Secret without trusting it: anything of ours missing or inconsistent makes
/// it not intact. `mount_path` and `template` are the spec's, to tell whether the
/// layout and metadata are current.
pub fn inspect(
    secret: &Secret,
    owner_uid: &str,
    mount_path: &str,
    template: Option<&SecretTemplate>,
) -> Observed {
    let empty = BTreeMap::new();
    let ann = secret.metadata.annotations.as_ref().unwrap_or(&empty);
    let no_data = BTreeMap::new();
    // Only our keys: another writer's keys are left alone, and do not make it drift.
    let data: BTreeMap<String, ByteString> = secret
        .data
        .as_ref()
        .unwrap_or(&no_data)
        .iter()
        .filter(|(k, _)| is_our_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let provenance = provenance_of(ann);

    let credentials = (|| {
        let expiration = parse_time(ann.get(ANN_EXPIRATION)?)?;
        let c = Credentials {
            access_key_id: text(&data, KEY_ACCESS_KEY_ID)?,
            secret_access_key: text(&data, KEY_SECRET_ACCESS_KEY)?,
            session_token: text(&data, KEY_SESSION_TOKEN)?,
            expiration,
        };
        let region = &provenance.as_ref()?.region;
        // Our data must be what we rendered for these credentials, in this layout or an
        // older one (fewer keys, another mount path), unedited since (the checksum).
        let expected = render_data(&c, region, mount_path);
        let consistent = LEGACY_KEYS.iter().all(|k| data.contains_key(*k))
            && data.iter().all(|(k, v)| match expected.get(k) {
                Some(_) if k == KEY_CONFIG_FILE => true,
                Some(want) => want == v,
                None => false,
            });
        let unedited = ann.get(ANN_CHECKSUM) == Some(&checksum(&data));
        (consistent && unedited).then_some((c, data == expected))
    })();
    let current_layout = credentials.as_ref().is_some_and(|(_, current)| *current);
    let credentials = credentials.map(|(c, _)| c);

    Observed {
        owned: owned_by(secret, owner_uid),
        intact: credentials.is_some() && provenance.is_some(),
        current_layout: current_layout && provenance.is_some(),
        template_applied: template_applied(secret, template),
        immutable: secret.immutable == Some(true),
        expiration: credentials.as_ref().map(|c| c.expiration),
        credentials,
        provenance,
    }
}

/// One of our Secrets as the watch saw it, in a few bytes: a fingerprint of all the
/// decision reads from it, but the issue time, kept as is. A Secret that is not intact,
/// not in the current layout for the mount path it names, or immutable has none: the
/// reconcile reads such a Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub fingerprint: u64,
    pub issued_at: Timestamp,
}

/// What a fingerprint covers: everything the decision reads from an intact Secret but
/// its issue time and the key material.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The controller owner reference's uid.
    pub owner_uid: &'a str,
    /// Where the credentials came from (`issued_at` is left out).
    pub provenance: &'a Provenance,
    pub expiration: Timestamp,
    /// The mount path the data was rendered for.
    pub mount_path: &'a str,
    /// Labels and annotations that are not the controller's own (the template's, or
    /// someone else's).
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
}

/// SHA-256 over the facts, length-prefixed, truncated to 64 bits: an accidental match
/// is out of reach, and so is a chosen one for someone who does not hold the hash.
pub fn fingerprint(f: &Facts<'_>) -> u64 {
    let mut h = Sha256::new();
    let mut put = |v: Option<&str>| match v {
        None => h.update([0u8]),
        Some(v) => {
            h.update([1u8]);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    };
    let p = f.provenance;
    let duration = p.session.as_ref().map(|s| s.duration_seconds.to_string());
    let expiration = f.expiration.as_second().to_string();
    for v in [
        Some(f.owner_uid),
        Some(p.identity_pool_id.as_str()),
        Some(p.identity_id.as_str()),
        Some(p.region.as_str()),
        p.custom_role_arn.as_deref(),
        p.session.as_ref().map(|s| s.role_arn.as_str()),
        p.session.as_ref().map(|s| s.session_name.as_str()),
        duration.as_deref(),
        p.assumed_role_arn.as_deref(),
        p.force_token.as_deref(),
        Some(expiration.as_str()),
        // As `config_file` writes it: `/path/` and `/path` are one mount path.
        Some(f.mount_path.trim_end_matches('/')),
    ] {
        put(v);
    }
    for map in [f.labels, f.annotations] {
        put(Some(&map.len().to_string()));
        for (k, v) in map {
            put(Some(k));
            put(Some(v));
        }
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The labels and annotations of `labels`/`annotations` that are not the controller's.
pub fn foreign_metadata(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let keep = |m: Option<&BTreeMap<String, String>>, ours: &dyn Fn(&str) -> bool| {
        m.map(|m| {
            m.iter()
                .filter(|(k, _)| !ours(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
    };
    (
        keep(labels, &|k| k == MANAGED_BY_LABEL),
        keep(annotations, &|k| k.starts_with("cognito.kubecred.io/")),
    )
}

/// Whether nobody but us wrote what a fingerprint vouches for: our data keys, our
/// annotations and label, and every field outside metadata and data (`immutable`,
/// `type`). The API server records the fields of every write in managedFields (kubectl
/// edit, apply, patch and any controller's update alike), so an edit of our data shows
/// there although the watch never sees the data. Others' labels, annotations and data
/// keys are theirs. No managedFields at all (someone cleared them): not vouched for.
fn only_we_wrote_ours(meta: &ObjectMeta) -> bool {
    fn keys(v: &serde_json::Value) -> impl Iterator<Item = &str> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix("f:"))
    }
    let Some(entries) = meta.managed_fields.as_deref().filter(|e| !e.is_empty()) else {
        return false;
    };
    entries
        .iter()
        .filter(|e| e.manager.as_deref() != Some(FIELD_MANAGER))
        .all(|e| {
            let Some(fields) = &e.fields_v1 else {
                return true;
            };
            let Some(top) = fields.0.as_object() else {
                return false;
            };
            top.iter().all(|(k, v)| match k.as_str() {
                "f:data" => keys(v).all(|d| !is_our_key(d)),
                "f:metadata" => {
                    v.get("f:annotations")
                        .is_none_or(|a| keys(a).all(|x| !x.starts_with("cognito.kubecred.io/")))
                        && v.get("f:labels")
                            .is_none_or(|l| keys(l).all(|x| x != MANAGED_BY_LABEL))
                }
                _ => false,
            })
        })
}

/// What the watch keeps of one of our Secrets, from its metadata alone (the watch never
/// reads a Secret's data): a fingerprint when our annotations are complete, it was
/// rendered in the current layout (it names its mount path) and nobody but us wrote our
/// data or annotations since; None otherwise, and the reconcile reads the Secret.
pub fn seen(meta: &ObjectMeta) -> Option<Seen> {
    let owner_uid = meta
        .owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))?
        .uid
        .as_str();
    let ann = meta.annotations.as_ref()?;
    let mount_path = ann.get(ANN_MOUNT_PATH)?;
    ann.get(ANN_CHECKSUM)?;
    if !only_we_wrote_ours(meta) {
        return None;
    }
    let provenance = provenance_of(ann)?;
    let expiration = parse_time(ann.get(ANN_EXPIRATION)?)?;
    let (labels, annotations) = foreign_metadata(meta.labels.as_ref(), Some(ann));
    Some(Seen {
        fingerprint: fingerprint(&Facts {
            owner_uid,
            provenance: &provenance,
            expiration,
            mount_path,
            labels: &labels,
            annotations: &annotations,
        }),
        issued_at: provenance.issued_at,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `render` of the Secret "n" in "ns", owned by `owner()`, no template, at MOUNT.
    pub(crate) fn rendered(creds: &Credentials, prov: &Provenance) -> Secret {
        let owner = owner();
        let at = Placement {
            name: "n",
            namespace: "ns",
            owner: &owner,
            template: None,
            mount_path: MOUNT,
        };
        render(&at, creds, prov)
    }

    pub(crate) fn creds() -> Credentials {
        Credentials {
            access_key_id: "ASIAEXAMPLEKEY123456".into(),
            secret_access_key: "secret/with+chars".into(),
            session_token: "tok==".into(),
            expiration: "2026-11-27T08:00:00.6Z".parse().unwrap(),
        }
    }

    pub(crate) fn prov() -> Provenance {
        Provenance {
            identity_pool_id: "us-east-1:00000000-0000-0000-0000-000000000001".into(),
            identity_id: "us-east-1:11111111-0000-0000-0000-000000000001".into(),
            region: "us-east-1".into(),
            custom_role_arn: None,
            session: None,
            assumed_role_arn: None,
            issued_at: "2026-11-27T07:00:00Z".parse().unwrap(),
            force_token: Some("1".into()),
        }
    }

    fn basic() -> Provenance {
        Provenance {
            session: Some(RoleSession {
                role_arn: "arn:aws:iam::123456789012:role/guest-full".into(),
                session_name: "ns-app".into(),
                duration_seconds: 7200,
            }),
            assumed_role_arn: Some(
                "arn:aws:sts::123456789012:assumed-role/guest-full/ns-app".into(),
            ),
            ..prov()
        }
    }

    #[test]
    fn the_flow_and_its_parameters_round_trip() {
        let s = rendered(&creds(), &basic());
        let ann = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[ANN_FLOW], "Basic");
        assert_eq!(ann[ANN_SESSION_DURATION], "7200s");
        let o = inspect(&s, "uid-1", MOUNT, None);
        assert!(o.intact);
        assert_eq!(o.provenance, Some(basic()));
        let s = rendered(&creds(), &prov());
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[ANN_FLOW],
            "Enhanced"
        );
        assert_eq!(inspect(&s, "uid-1", MOUNT, None).provenance, Some(prov()));
        // Written before flows existed: Enhanced.
        let mut old = s.clone();
        old.metadata.annotations.as_mut().unwrap().remove(ANN_FLOW);
        assert_eq!(inspect(&old, "uid-1", MOUNT, None).provenance, Some(prov()));
        // Basic without its parameters, or an unknown flow: not intact.
        for flow in ["Basic", "Other"] {
            let mut bad = s.clone();
            let a = bad.metadata.annotations.as_mut().unwrap();
            a.insert(ANN_FLOW.into(), flow.into());
            let o = inspect(&bad, "uid-1", MOUNT, None);
            assert!(!o.intact && o.provenance.is_none(), "{flow}");
        }
        let mut bad = rendered(&creds(), &basic());
        bad.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_SESSION_DURATION.into(), "1h".into());
        assert!(!inspect(&bad, "uid-1", MOUNT, None).intact);
    }

    pub(crate) const MOUNT: &str = "/var/run/secrets/cognito";

    /// `s` as the API server answers our write of it: with our managedFields entry.
    pub(crate) fn written(mut s: Secret) -> Secret {
        s.metadata.managed_fields = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some(FIELD_MANAGER.into()),
                operation: Some("Apply".into()),
                fields_type: Some("FieldsV1".into()),
                fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                    serde_json::json!({"f:data": {"f:AWS_ACCESS_KEY_ID": {}}}),
                )),
                ..Default::default()
            },
        ]);
        s
    }

    /// `s` after `manager` wrote `fields` (a managedFields fieldsV1 value).
    pub(crate) fn touched(mut s: Secret, manager: &str, fields: serde_json::Value) -> Secret {
        s.metadata.managed_fields.get_or_insert_with(Vec::new).push(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some("Update".into()),
                fields_type: Some("FieldsV1".into()),
                fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                    fields,
                )),
                ..Default::default()
            },
        );
        s
    }

    /// The watch vouches for a Secret from its metadata only while nobody else wrote
    /// our data, annotations, label or anything outside metadata and data.
    #[test]
    fn the_watch_vouches_only_for_what_nobody_else_wrote() {
        use serde_json::json;
        let s = written(rendered(&creds(), &prov()));
        let fp = seen(&s.metadata).expect("our own write is vouched for");
        assert_eq!(fp.issued_at, prov().issued_at);
        // Others' own labels, annotations and data keys leave it vouched for (the
        // fingerprint covers their labels and annotations, not their data keys).
        let theirs = touched(
            s.clone(),
            "kubectl-edit",
            json!({"f:metadata": {"f:labels": {"f:team": {}}, "f:annotations": {"f:note": {}}}, "f:data": {".": {}, "f:extra": {}}}),
        );
        assert_eq!(seen(&theirs.metadata), Some(fp));
        for (what, fields) in [
            (
                "our data key",
                json!({"f:data": {"f:AWS_SESSION_TOKEN": {}}}),
            ),
            (
                "our annotation",
                json!({"f:metadata": {"f:annotations": {"f:cognito.kubecred.io/expiration": {}}}}),
            ),
            (
                "our label",
                json!({"f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}}}}),
            ),
            ("immutable", json!({"f:immutable": {}})),
            ("type", json!({"f:type": {}})),
        ] {
            let t = touched(s.clone(), "kubectl-edit", fields);
            assert_eq!(seen(&t.metadata), None, "{what}");
        }
        // No managedFields (cleared), no mount path (written before it was recorded),
        // no checksum, no controller owner: read.
        let mut cleared = s.clone();
        cleared.metadata.managed_fields = None;
        assert_eq!(seen(&cleared.metadata), None);
        for ann in [ANN_MOUNT_PATH, ANN_CHECKSUM, ANN_ISSUED_AT] {
            let mut old = s.clone();
            old.metadata.annotations.as_mut().unwrap().remove(ann);
            assert_eq!(seen(&old.metadata), None, "{ann}");
        }
        let mut orphan = s.clone();
        orphan.metadata.owner_references = None;
        assert_eq!(seen(&orphan.metadata), None);
    }

    pub(crate) fn owner() -> Owner {
        Owner {
            api_version: "cognito.kubecred.io/v1alpha1".into(),
            kind: "CognitoUnauthCredential".into(),
            name: "app".into(),
            uid: "uid-1".into(),
        }
    }

    #[test]
    fn renders_env_vars_and_a_shared_credentials_file() {
        let s = render(
            &Placement {
                name: "app-creds",
                namespace: "ns",
                owner: &owner(),
                template: None,
                mount_path: MOUNT,
            },
            &creds(),
            &prov(),
        );
        let data = s.data.as_ref().unwrap();
        let get = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(get("AWS_ACCESS_KEY_ID"), "ASIAEXAMPLEKEY123456");
        assert_eq!(get("AWS_SECRET_ACCESS_KEY"), "secret/with+chars");
        assert_eq!(get("AWS_SESSION_TOKEN"), "tok==");
        assert_eq!(get("AWS_REGION"), "us-east-1");
        assert_eq!(get("AWS_DEFAULT_REGION"), "us-east-1");
        assert_eq!(get("AWS_CREDENTIAL_EXPIRATION"), "2026-11-27T08:00:00Z");
        assert_eq!(
            get("credentials"),
            "[default]\naws_access_key_id = ASIAEXAMPLEKEY123456\naws_secret_access_key = secret/with+chars\naws_session_token = tok==\n"
        );
        assert_eq!(
            get("credential-process.json"),
            "{\"AccessKeyId\":\"ASIAEXAMPLEKEY123456\",\"Expiration\":\"2026-11-27T08:00:00Z\",\"SecretAccessKey\":\"secret/with+chars\",\"SessionToken\":\"tok==\",\"Version\":1}\n"
        );
        assert_eq!(
            get("config"),
            "[default]\nregion = us-east-1\ncredential_process = cat /var/run/secrets/cognito/credential-process.json\n"
        );
        assert_eq!(data.len(), 9);
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let or = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((or.uid.as_str(), or.controller), ("uid-1", Some(true)));
        let ann = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[ANN_EXPIRATION], "2026-11-27T08:00:00Z");
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL],
            MANAGED_BY
        );
    }

    #[test]
    fn template_metadata_is_added_but_ours_wins() {
        let t = SecretTemplate {
            labels: BTreeMap::from([
                ("team".into(), "a".into()),
                (MANAGED_BY_LABEL.into(), "me".into()),
            ]),
            annotations: BTreeMap::from([
                ("note".into(), "x".into()),
                (ANN_EXPIRATION.into(), "never".into()),
            ]),
        };
        let s = render(
            &Placement {
                name: "n",
                namespace: "ns",
                owner: &owner(),
                template: Some(&t),
                mount_path: MOUNT,
            },
            &creds(),
            &prov(),
        );
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        let ann = s.metadata.annotations.unwrap();
        assert_eq!(ann["note"], "x");
        assert_eq!(ann[ANN_EXPIRATION], "2026-11-27T08:00:00Z");
    }

    #[test]
    fn inspect_reads_back_what_render_wrote() {
        let s = rendered(&creds(), &prov());
        let o = inspect(&s, "uid-1", MOUNT, None);
        assert!(o.owned && o.intact);
        let c = o.credentials.unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLEKEY123456");
        // Expiration is whole seconds in the Secret.
        assert_eq!(
            c.expiration,
            "2026-11-27T08:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(o.provenance.unwrap().identity_id, prov().identity_id);
        assert!(!inspect(&s, "other-uid", MOUNT, None).owned);
        // The issue time round-trips at full precision (it tells rotations apart).
        let precise: Timestamp = "2026-11-27T07:00:00.123456789Z".parse().unwrap();
        let p = Provenance {
            issued_at: precise,
            ..prov()
        };
        let s = rendered(&creds(), &p);
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[ANN_ISSUED_AT],
            "2026-11-27T07:00:00.123456789Z"
        );
        let back = inspect(&s, "uid-1", MOUNT, None).provenance.unwrap();
        assert_eq!(back.issued_at, precise);
    }

    #[test]
    fn any_edit_of_our_data_is_drift_and_their_keys_are_not() {
        let base = rendered(&creds(), &prov());
        type Edit = Box<dyn Fn(&mut Secret)>;
        let edits: Vec<Edit> = vec![
            Box::new(|s| {
                s.data
                    .as_mut()
                    .unwrap()
                    .insert(KEY_ACCESS_KEY_ID.into(), ByteString(b"EDITED".to_vec()));
            }),
            Box::new(|s| {
                s.data.as_mut().unwrap().remove(KEY_SESSION_TOKEN);
            }),
            Box::new(|s| s.data = None),
            Box::new(|s| {
                s.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .remove(ANN_CHECKSUM);
            }),
            Box::new(|s| {
                s.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert(ANN_EXPIRATION.into(), "2030-01-01T00:00:00Z".into());
            }),
            Box::new(|s| {
                s.data
                    .as_mut()
                    .unwrap()
                    .insert(KEY_SECRET_ACCESS_KEY.into(), ByteString(vec![0xff, 0xfe]));
            }),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut s = base.clone();
            edit(&mut s);
            let o = inspect(&s, "uid-1", MOUNT, None);
            assert!(!o.intact, "edit {i} went unnoticed");
            assert!(o.credentials.is_none());
        }
        // A key someone else added: theirs, not drift, and the layout is still current.
        let mut s = base.clone();
        s.data
            .as_mut()
            .unwrap()
            .insert("EXTRA_KEY".into(), ByteString(b"x".to_vec()));
        let o = inspect(&s, "uid-1", MOUNT, None);
        assert!(o.intact && o.current_layout);
        assert_eq!(
            o.credentials,
            inspect(&base, "uid-1", MOUNT, None).credentials
        );
    }

    #[test]
    fn debug_never_shows_secret_parts() {
        let shown = format!("{:?}", creds());
        assert!(!shown.contains("ASIAEXAMPLEKEY123456"));
        assert!(!shown.contains("secret/with+chars"));
        assert!(!shown.contains("tok=="));
    }

    #[test]
    fn checksum_is_stable_and_sensitive() {
        let d = render_data(&creds(), "us-east-1", MOUNT);
        assert_eq!(checksum(&d), checksum(&d.clone()));
        assert!(checksum(&d).starts_with("sha256:"));
        assert_ne!(
            checksum(&d),
            checksum(&render_data(&creds(), "us-west-2", MOUNT))
        );
    }

    #[test]
    fn an_older_layout_is_intact_but_not_current() {
        let base = rendered(&creds(), &prov());
        // As written before credential-process.json and config existed.
        let mut legacy = base.clone();
        let data = legacy.data.as_mut().unwrap();
        data.remove(KEY_CREDENTIAL_PROCESS);
        data.remove(KEY_CONFIG_FILE);
        let sum = checksum(data);
        legacy
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_CHECKSUM.into(), sum);
        let o = inspect(&legacy, "uid-1", MOUNT, None);
        assert!(o.intact && !o.current_layout);
        assert_eq!(
            o.credentials.unwrap(),
            inspect(&base, "uid-1", MOUNT, None).credentials.unwrap()
        );
        // Another mount path: same credentials, layout to redo.
        let o = inspect(&base, "uid-1", "/creds", None);
        assert!(o.intact && !o.current_layout);
        let moved = render(
            &Placement {
                name: "n",
                namespace: "ns",
                owner: &owner(),
                template: None,
                mount_path: "/creds/",
            },
            &creds(),
            &prov(),
        );
        let cfg =
            String::from_utf8(moved.data.as_ref().unwrap()[KEY_CONFIG_FILE].0.clone()).unwrap();
        assert!(
            cfg.contains("credential_process = cat /creds/credential-process.json\n"),
            "{cfg}"
        );
        assert!(inspect(&moved, "uid-1", "/creds/", None).current_layout);
        assert!(inspect(&base, "uid-1", MOUNT, None).current_layout);
    }

    #[test]
    fn a_credential_process_file_that_disagrees_is_drift() {
        let mut s = rendered(&creds(), &prov());
        let data = s.data.as_mut().unwrap();
        data.insert(
            KEY_CREDENTIAL_PROCESS.into(),
            ByteString(b"{\"Version\":1}".to_vec()),
        );
        let sum = checksum(data);
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_CHECKSUM.into(), sum);
        assert!(!inspect(&s, "uid-1", MOUNT, None).intact);
    }
}
