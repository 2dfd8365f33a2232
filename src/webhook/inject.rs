//! Injection into pods by annotation: what a pod asks for, and the pod it becomes.
//!
//! Pure: the admission webhook ([`crate::webhook`]) reads the pod, its ServiceAccount's
//! annotation and the named `CognitoUnauthCredential`, and calls [`requested`], then
//! [`Target::issued`] (only a Secret the controller wrote is mounted), then [`inject`]. The pod is handled as JSON, not as a typed `Pod`: a field this build does not
//! know (a newer API server's) is never dropped, and the patch is the difference between
//! the pod as submitted and as returned, so a pod that already has everything gets no patch.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::crd::CognitoUnauthCredential;
use crate::crd::conditions::{ready_of, reason};
use crate::reconcile::secret::{KEY_CONFIG_FILE, KEY_CREDENTIAL_PROCESS};

/// On a pod: the name of the `CognitoUnauthCredential` (in the pod's namespace) to inject.
pub const ANN_INJECT: &str = "cognito.kubecred.io/inject";
/// On a ServiceAccount: the same, for every pod that runs as it.
pub const ANN_SA_CREDENTIAL: &str = "cognito.kubecred.io/credential";
/// On a pod: the containers (and init containers) to inject, comma-separated; default all.
pub const ANN_CONTAINERS: &str = "cognito.kubecred.io/containers";
/// On a pod: `credential-process` (default) or `container-credentials`.
pub const ANN_MODE: &str = "cognito.kubecred.io/inject-mode";
/// The Secret volume added to the pod.
pub const VOLUME: &str = "cognito-credentials";
/// The sidecar of the `container-credentials` mode (a native sidecar: an init container
/// with `restartPolicy: Always`).
pub const SIDECAR: &str = "cognito-credentials";
/// Where the sidecar serves the credentials, inside the pod's network namespace only.
pub const SIDECAR_ADDRESS: &str = "127.0.0.1:9911";
/// The path the sidecar serves them on.
pub const SIDECAR_PATH: &str = "/credentials";
/// The in-memory volume where the sidecar writes the pod's random token, mounted
/// (read-only) only in the containers the credentials are for.
pub const TOKEN_VOLUME: &str = "cognito-credentials-token";
/// Where that volume is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/cognito-credentials-token";
/// The token file: the SDKs send its content as the Authorization header
/// (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`); the sidecar answers nothing else.
pub const TOKEN_FILE: &str = "/var/run/secrets/cognito-credentials-token/token";

/// How the credentials reach the containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The Secret mounted at `spec.mountPath`; `AWS_CONFIG_FILE` names its `config`, whose
    /// `credential_process` runs `cat` (through `sh -c` in most SDKs): images with both.
    CredentialProcess,
    /// A sidecar from the controller's image serves the mounted credentials on
    /// `http://127.0.0.1:9911/credentials`, which every AWS SDK's container credentials
    /// provider reads (`AWS_CONTAINER_CREDENTIALS_FULL_URI`) and refreshes before they
    /// expire: for images without a shell (distroless, scratch).
    ContainerCredentials,
}

impl Mode {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "credential-process" => Some(Self::CredentialProcess),
            "container-credentials" => Some(Self::ContainerCredentials),
            _ => None,
        }
    }
}

/// Where the credential's name came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Pod,
    ServiceAccount,
}

/// What a pod asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The `CognitoUnauthCredential`'s name.
    pub name: String,
    pub source: Source,
    /// The containers named in `cognito.kubecred.io/containers`; `None`: all of them.
    pub containers: Option<Vec<String>>,
    pub mode: Mode,
}

/// The named resource as the webhook found it: what the pod mounts and sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub secret_name: String,
    pub mount_path: String,
    pub region: String,
}

impl Target {
    /// The resource `namespace/name` when the controller has issued its Secret, or a
    /// refusal that says what to fix. Issued: the status names the Secret that
    /// `spec.secretName` names now, credentials were written to it (`lastRotationTime`),
    /// and `Ready` does not say `SecretConflict` (a Secret under that name that the
    /// controller does not own: it could hold anything, such as a `credential_process`
    /// command that every injected container would run).
    pub fn issued(
        namespace: &str,
        name: &str,
        cuc: Option<&CognitoUnauthCredential>,
    ) -> Result<Self, Refusal> {
        let Some(cuc) = cuc else {
            return Err(Refusal(format!(
                "no CognitoUnauthCredential {namespace}/{name}: create it (or fix the name); the pod is admitted once its Secret is written"
            )));
        };
        let spec = &cuc.spec;
        let secret_name = spec.secret_name.clone().unwrap_or_else(|| name.to_string());
        let status = cuc.status.as_ref();
        let ready = status.and_then(ready_of);
        let said = || {
            ready.map_or_else(
                || "no status yet".to_string(),
                |c| format!("Ready {}: {}: {}", c.status, c.reason, c.message),
            )
        };
        if ready.is_some_and(|c| c.reason == reason::SECRET_CONFLICT) {
            return Err(Refusal(format!(
                "CognitoUnauthCredential {namespace}/{name}: the Secret {namespace}/{secret_name} is not the controller's (SecretConflict), and the webhook mounts only a Secret the controller wrote: delete that Secret or set spec.secretName to a free name"
            )));
        }
        let written = status.is_some_and(|s| {
            s.secret_name.as_deref() == Some(secret_name.as_str()) && s.last_rotation_time.is_some()
        });
        if !written {
            return Err(Refusal(format!(
                "CognitoUnauthCredential {namespace}/{name} has not written its Secret {secret_name} yet ({}); the pod is admitted once it has (a Deployment's ReplicaSet retries on its own; see kubectl describe cognitounauthcredential {name})",
                said()
            )));
        }
        Ok(Self {
            secret_name,
            mount_path: spec.mount_path().to_string(),
            region: spec.region().to_string(),
        })
    }
}

/// The sidecar's image, from the webhook's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarImage {
    pub image: String,
    pub pull_policy: String,
}

/// A pod refused, with what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The pod to admit and the warnings to return with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Injected {
    pub pod: Value,
    pub warnings: Vec<String>,
}

/// What the pod asks for: its own annotation wins over its ServiceAccount's. `Ok(None)`:
/// nothing (the webhook admits it unchanged). A malformed annotation is a refusal.
pub fn requested(
    pod_annotations: &BTreeMap<String, String>,
    sa_credential: Option<&str>,
    container_names: &[String],
) -> Result<Option<Ask>, Refusal> {
    let (name, source) = match (pod_annotations.get(ANN_INJECT), sa_credential) {
        (Some(n), _) => (n.as_str(), Source::Pod),
        (None, Some(n)) => (n, Source::ServiceAccount),
        (None, None) => return Ok(None),
    };
    let origin = match source {
        Source::Pod => format!("annotation {ANN_INJECT}"),
        Source::ServiceAccount => format!("the ServiceAccount's annotation {ANN_SA_CREDENTIAL}"),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(Refusal(format!(
            "{origin} is empty: set it to the name of a CognitoUnauthCredential in this namespace"
        )));
    }
    if let Some(why) = not_a_dns_subdomain(name) {
        return Err(Refusal(format!(
            "{origin}: {name:?} is not a CognitoUnauthCredential name ({why})"
        )));
    }
    let containers = match pod_annotations.get(ANN_CONTAINERS) {
        None => None,
        Some(list) => Some(container_list(list, container_names)?),
    };
    let mode = match pod_annotations.get(ANN_MODE) {
        None => Mode::CredentialProcess,
        Some(m) => Mode::parse(m.trim()).ok_or_else(|| {
            Refusal(format!(
                "annotation {ANN_MODE}: {m:?} is not a mode; use credential-process (the default) or container-credentials"
            ))
        })?,
    };
    Ok(Some(Ask {
        name: name.to_string(),
        source,
        containers,
        mode,
    }))
}

fn container_list(list: &str, names: &[String]) -> Result<Vec<String>, Refusal> {
    let wanted: Vec<String> = list.split(',').map(|c| c.trim().to_string()).collect();
    if wanted.iter().any(String::is_empty) {
        return Err(Refusal(format!(
            "annotation {ANN_CONTAINERS}: {list:?} has an empty entry; list container names separated by commas, e.g. \"app,worker\""
        )));
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .filter(|w| !names.contains(w))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Refusal(format!(
            "annotation {ANN_CONTAINERS}: no container named {} in this pod (its containers and init containers: {})",
            unknown.join(", "),
            names.join(", ")
        )));
    }
    Ok(wanted)
}

/// Why `name` is not a DNS-1123 subdomain (a Kubernetes object name), if it is not.
fn not_a_dns_subdomain(name: &str) -> Option<&'static str> {
    if name.len() > 253 {
        return Some("longer than 253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Some("only lowercase letters, digits, '-' and '.' are allowed");
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
        return Some("it must start and end with a lowercase letter or a digit");
    }
    None
}

/// The names of the pod's containers and init containers, in order.
pub fn container_names(pod: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The pod with the credentials injected. Adds only what is missing: a pod that has it all
/// comes back equal. A container's own value of an injected variable wins (with a warning).
pub fn inject(
    pod: &Value,
    ask: &Ask,
    target: &Target,
    sidecar: &SidecarImage,
) -> Result<Injected, Refusal> {
    let mut pod = pod.clone();
    let mut warnings = Vec::new();
    add_volume(&mut pod, target)?;
    let env = match ask.mode {
        Mode::CredentialProcess => {
            let mut env = vec![
                (
                    "AWS_CONFIG_FILE",
                    format!("{}/{KEY_CONFIG_FILE}", target.mount_path),
                ),
                ("AWS_SDK_LOAD_CONFIG", "1".to_string()),
            ];
            region_env(&mut env, target);
            env
        }
        Mode::ContainerCredentials => {
            // On the node's network namespace, the sidecar's loopback port would be every
            // host-network process's to read.
            if pod["spec"]["hostNetwork"] == true {
                return Err(Refusal(format!(
                    "annotation {ANN_MODE}: container-credentials serves the credentials on the pod's loopback, which for a hostNetwork pod is the node's: use credential-process (the default) for this pod"
                )));
            }
            add_token_volume(&mut pod)?;
            add_sidecar(&mut pod, target, sidecar)?;
            let mut env = vec![
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    format!("http://{SIDECAR_ADDRESS}{SIDECAR_PATH}"),
                ),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                    TOKEN_FILE.to_string(),
                ),
            ];
            region_env(&mut env, target);
            env
        }
    };
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for c in containers.iter_mut() {
            inject_container(c, ask, target, &env, &mut warnings)?;
        }
    }
    Ok(Injected { pod, warnings })
}

/// One container of the pod: skipped when it is our sidecar or not one the pod asked
/// for; else its mount, its variables, and warnings for what would win over them.
fn inject_container(
    c: &mut Value,
    ask: &Ask,
    target: &Target,
    env: &[(&str, String)],
    warnings: &mut Vec<String>,
) -> Result<(), Refusal> {
    let name = c["name"].as_str().unwrap_or_default().to_string();
    if name == SIDECAR && is_our_sidecar(c) {
        return Ok(());
    }
    if let Some(only) = &ask.containers
        && !only.contains(&name)
    {
        return Ok(());
    }
    match ask.mode {
        Mode::CredentialProcess => add_mount(c, &name, target)?,
        Mode::ContainerCredentials => add_token_mount(c, &name, false)?,
    }
    for (var, value) in env {
        set_env(c, &name, var, value, warnings);
    }
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        if env_value(c, var).is_some() {
            warnings.push(format!(
                "container {name} sets {var}: AWS SDKs prefer it to the injected credentials, which it will not use"
            ));
        }
    }
    warn_other_identity(c, &name, ask.mode, warnings);
    Ok(())
}

/// Another way of giving the pod an AWS identity, already in the container (IRSA's web
/// identity, EKS Pod Identity's container endpoint; another webhook may have added them,
/// and this one runs again after it): the SDKs pick one, so say which.
fn warn_other_identity(c: &Value, name: &str, mode: Mode, warnings: &mut Vec<String>) {
    for var in ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"] {
        if env_value(c, var).is_some() {
            warnings.push(format!(
                "container {name} has {var} (IAM roles for service accounts): most AWS SDKs take the web identity credentials before the injected ones; remove the role annotation from the ServiceAccount, or do not inject this pod"
            ));
        }
    }
    // In container-credentials mode the variable is ours: set_env warns when the
    // container's own value wins.
    if mode == Mode::CredentialProcess
        && let Some(e) = env_value(c, "AWS_CONTAINER_CREDENTIALS_FULL_URI")
    {
        warnings.push(format!(
            "container {name} has AWS_CONTAINER_CREDENTIALS_FULL_URI ({}; EKS Pod Identity sets it): the AWS SDKs use the injected credential_process first, that endpoint's credentials not at all",
            e["value"].as_str().unwrap_or("from a reference")
        ));
    }
}

fn region_env(env: &mut Vec<(&'static str, String)>, target: &Target) {
    env.push(("AWS_REGION", target.region.clone()));
    env.push(("AWS_DEFAULT_REGION", target.region.clone()));
}

fn add_volume(pod: &mut Value, target: &Target) -> Result<(), Refusal> {
    let volumes = array_at(&mut pod["spec"], "volumes");
    if let Some(v) = volumes.iter().find(|v| v["name"] == VOLUME) {
        return if v["secret"]["secretName"] == target.secret_name.as_str() {
            Ok(())
        } else {
            Err(Refusal(format!(
                "the pod already has a volume named {VOLUME} that is not the Secret {}: rename that volume",
                target.secret_name
            )))
        };
    }
    volumes.push(json!({
        "name": VOLUME,
        "secret": {"secretName": target.secret_name, "defaultMode": 0o444},
    }));
    Ok(())
}

fn add_mount(c: &mut Value, name: &str, target: &Target) -> Result<(), Refusal> {
    let mounts = array_at(c, "volumeMounts");
    match mounts
        .iter()
        .find(|m| m["mountPath"] == target.mount_path.as_str())
    {
        Some(m) if m["name"] == VOLUME => Ok(()),
        Some(m) => Err(Refusal(format!(
            "container {name} already mounts volume {} at {}, the CognitoUnauthCredential's mountPath: remove that mount or change spec.mountPath",
            m["name"].as_str().unwrap_or("?"),
            target.mount_path
        ))),
        None => {
            mounts.push(json!({"name": VOLUME, "mountPath": target.mount_path, "readOnly": true}));
            Ok(())
        }
    }
}

/// The token's volume: in memory, a few bytes.
fn add_token_volume(pod: &mut Value) -> Result<(), Refusal> {
    let volumes = array_at(&mut pod["spec"], "volumes");
    if let Some(v) = volumes.iter().find(|v| v["name"] == TOKEN_VOLUME) {
        return if v["emptyDir"]["medium"] == "Memory" {
            Ok(())
        } else {
            Err(Refusal(format!(
                "the pod already has a volume named {TOKEN_VOLUME}: rename that volume"
            )))
        };
    }
    volumes.push(json!({
        "name": TOKEN_VOLUME,
        "emptyDir": {"medium": "Memory", "sizeLimit": "64Ki"},
    }));
    Ok(())
}

/// The token's mount: read-only in the containers the credentials are for, writable in
/// the sidecar (which writes it).
fn add_token_mount(c: &mut Value, name: &str, writable: bool) -> Result<(), Refusal> {
    let mounts = array_at(c, "volumeMounts");
    match mounts.iter().find(|m| m["mountPath"] == TOKEN_DIR) {
        Some(m) if m["name"] == TOKEN_VOLUME => Ok(()),
        Some(m) => Err(Refusal(format!(
            "container {name} already mounts volume {} at {TOKEN_DIR}, where inject-mode container-credentials mounts its token: remove that mount",
            m["name"].as_str().unwrap_or("?")
        ))),
        None => {
            mounts
                .push(json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": !writable}));
            Ok(())
        }
    }
}

fn is_our_sidecar(c: &Value) -> bool {
    c["args"][0] == "serve-credentials"
}

fn add_sidecar(pod: &mut Value, target: &Target, image: &SidecarImage) -> Result<(), Refusal> {
    let init = array_at(&mut pod["spec"], "initContainers");
    if let Some(c) = init.iter().find(|c| c["name"] == SIDECAR) {
        return if is_our_sidecar(c) {
            Ok(())
        } else {
            Err(Refusal(format!(
                "the pod already has a container named {SIDECAR}: rename it (inject-mode container-credentials adds one)"
            )))
        };
    }
    let file = format!("{}/{KEY_CREDENTIAL_PROCESS}", target.mount_path);
    init.insert(
        0,
        json!({
            "name": SIDECAR,
            "image": image.image,
            "imagePullPolicy": image.pull_policy,
            "restartPolicy": "Always",
            "args": ["serve-credentials", "--file", file, "--address", SIDECAR_ADDRESS, "--token-file", TOKEN_FILE],
            // Started means serving: the app containers start after it (exec: no shell needed).
            "startupProbe": {
                "exec": {"command": ["/cognito-unauth-controller", "serve-credentials", "--probe", "--address", SIDECAR_ADDRESS]},
                "periodSeconds": 1,
                "failureThreshold": 60,
            },
            "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}},
            "securityContext": {
                "runAsNonRoot": true,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [
                {"name": VOLUME, "mountPath": target.mount_path, "readOnly": true},
                {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR},
            ],
        }),
    );
    Ok(())
}

fn env_value<'a>(c: &'a Value, var: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == var)
}

fn set_env(c: &mut Value, name: &str, var: &str, value: &str, warnings: &mut Vec<String>) {
    match env_value(c, var) {
        Some(e) if e["value"] == value => {}
        Some(_) => warnings.push(format!(
            "container {name} sets {var} itself: its value is kept, not the injected {value:?}"
        )),
        None => array_at(c, "env").push(json!({"name": var, "value": value})),
    }
}

/// The array at `obj[key]`, created empty when absent or null.
fn array_at<'a>(obj: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !obj[key].is_array() {
        obj[key] = json!([]);
    }
    match &mut obj[key] {
        Value::Array(a) => a,
        // Just made an array.
        _ => unreachable!("an array was just put here"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions;
    use crate::crd::{CognitoUnauthCredentialSpec, CognitoUnauthCredentialStatus};
    use crate::reconcile::status;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "annotations": {ANN_INJECT: "app"}},
            "spec": {
                "initContainers": [{"name": "init", "image": "i"}],
                "containers": [
                    {"name": "app", "image": "a", "env": [{"name": "AWS_REGION", "value": "eu-west-1"}]},
                    {"name": "side", "image": "s", "futureField": {"kept": true}},
                ],
                "futureSpecField": 1,
            }
        })
    }

    /// The resource `app`, its Secret `app-aws` written by the controller (Ready True).
    fn issued() -> CognitoUnauthCredential {
        let mut cuc = CognitoUnauthCredential::new(
            "app",
            CognitoUnauthCredentialSpec {
                identity_pool_id: "us-east-1:0a1b2c3d-1111-2222-3333-444455556666".into(),
                secret_name: Some("app-aws".into()),
                mount_path: Some("/var/run/secrets/aws".into()),
                ..Default::default()
            },
        );
        cuc.status = Some(CognitoUnauthCredentialStatus {
            secret_name: Some("app-aws".into()),
            last_rotation_time: Some(status::time(jiff::Timestamp::UNIX_EPOCH)),
            conditions: vec![condition("True", reason::CREDENTIALS_ISSUED)],
            ..Default::default()
        });
        cuc
    }

    fn condition(status: &str, reason: &str) -> Condition {
        Condition {
            type_: conditions::READY.into(),
            status: status.into(),
            reason: reason.into(),
            message: "m".into(),
            last_transition_time: status::time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    fn target() -> Target {
        Target::issued("ns", "app", Some(&issued())).unwrap()
    }

    fn image() -> SidecarImage {
        SidecarImage {
            image: "example/cuc:1".into(),
            pull_policy: "IfNotPresent".into(),
        }
    }

    fn ask(containers: Option<&[&str]>, mode: Mode) -> Ask {
        Ask {
            name: "app".into(),
            source: Source::Pod,
            containers: containers.map(names),
            mode,
        }
    }

    #[test]
    fn the_pod_annotation_wins_over_the_service_account() {
        let all = names(&["app"]);
        assert_eq!(requested(&ann(&[]), None, &all), Ok(None));
        let a = requested(&ann(&[]), Some("from-sa"), &all)
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.name.as_str(), a.source),
            ("from-sa", Source::ServiceAccount)
        );
        let a = requested(&ann(&[(ANN_INJECT, " app ")]), Some("from-sa"), &all)
            .unwrap()
            .unwrap();
        assert_eq!((a.name.as_str(), a.source), ("app", Source::Pod));
        assert_eq!((a.containers, a.mode), (None, Mode::CredentialProcess));
    }

    #[test]
    fn malformed_annotations_are_refused_with_what_to_fix() {
        let all = names(&["app", "init"]);
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (&[(ANN_INJECT, "")], None, "is empty"),
            (&[(ANN_INJECT, "   ")], None, "is empty"),
            (&[(ANN_INJECT, "App")], None, "lowercase"),
            (&[(ANN_INJECT, "-app")], None, "start and end"),
            (&[(ANN_INJECT, "app_1")], None, "lowercase"),
            (&[], Some("bad name"), "ServiceAccount's annotation"),
            (
                &[(ANN_INJECT, "app"), (ANN_CONTAINERS, "")],
                None,
                "empty entry",
            ),
            (
                &[(ANN_INJECT, "app"), (ANN_CONTAINERS, "app,,init")],
                None,
                "empty entry",
            ),
            (
                &[(ANN_INJECT, "app"), (ANN_CONTAINERS, "web")],
                None,
                "no container named web",
            ),
            (
                &[(ANN_INJECT, "app"), (ANN_MODE, "env")],
                None,
                "not a mode",
            ),
        ];
        for (pod_ann, sa, expect) in cases {
            let err = requested(&ann(pod_ann), *sa, &all).expect_err(expect);
            assert!(err.0.contains(expect), "{pod_ann:?}: {err}");
        }
        let long = "a".repeat(254);
        let err = requested(&ann(&[(ANN_INJECT, &long)]), None, &all).unwrap_err();
        assert!(err.0.contains("253"), "{err}");
    }

    #[test]
    fn credential_process_mode_adds_volume_mounts_and_env_and_keeps_the_users_values() {
        let out = inject(
            &pod(),
            &ask(None, Mode::CredentialProcess),
            &target(),
            &image(),
        )
        .unwrap();
        let spec = &out.pod["spec"];
        assert_eq!(
            spec["volumes"],
            json!([{"name": VOLUME, "secret": {"secretName": "app-aws", "defaultMode": 292}}])
        );
        for (list, i) in [("initContainers", 0), ("containers", 0), ("containers", 1)] {
            let c = &spec[list][i];
            assert_eq!(
                c["volumeMounts"],
                json!([{"name": VOLUME, "mountPath": "/var/run/secrets/aws", "readOnly": true}])
            );
            assert_eq!(
                env_value(c, "AWS_CONFIG_FILE").unwrap()["value"],
                "/var/run/secrets/aws/config"
            );
            assert_eq!(env_value(c, "AWS_SDK_LOAD_CONFIG").unwrap()["value"], "1");
            assert_eq!(
                env_value(c, "AWS_DEFAULT_REGION").unwrap()["value"],
                "us-east-1"
            );
        }
        // The user's region stays, and they are told.
        assert_eq!(
            env_value(&spec["containers"][0], "AWS_REGION").unwrap()["value"],
            "eu-west-1"
        );
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert!(out.warnings[0].contains("container app sets AWS_REGION itself"));
        // Fields this build does not know are kept.
        assert_eq!(spec["futureSpecField"], 1);
        assert_eq!(spec["containers"][1]["futureField"], json!({"kept": true}));
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let a = ask(None, Mode::CredentialProcess);
        let once = inject(&pod(), &a, &target(), &image()).unwrap();
        let twice = inject(&once.pod, &a, &target(), &image()).unwrap();
        assert_eq!(once.pod, twice.pod);
        let c = ask(None, Mode::ContainerCredentials);
        let once = inject(&pod(), &c, &target(), &image()).unwrap();
        let twice = inject(&once.pod, &c, &target(), &image()).unwrap();
        assert_eq!(once.pod, twice.pod);
    }

    #[test]
    fn only_the_listed_containers_are_injected() {
        let out = inject(
            &pod(),
            &ask(Some(&["side"]), Mode::CredentialProcess),
            &target(),
            &image(),
        )
        .unwrap();
        let spec = &out.pod["spec"];
        assert!(spec["containers"][1]["volumeMounts"].is_array());
        assert!(spec["containers"][0]["volumeMounts"].is_null());
        assert!(spec["initContainers"][0]["env"].is_null());
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn container_credentials_mode_adds_a_native_sidecar_first_and_no_config_file() {
        let out = inject(
            &pod(),
            &ask(None, Mode::ContainerCredentials),
            &target(),
            &image(),
        )
        .unwrap();
        let spec = &out.pod["spec"];
        let side = &spec["initContainers"][0];
        assert_eq!(side["name"], SIDECAR);
        assert_eq!(side["restartPolicy"], "Always");
        assert_eq!(side["image"], "example/cuc:1");
        assert_eq!(
            side["args"],
            json!([
                "serve-credentials",
                "--file",
                "/var/run/secrets/aws/credential-process.json",
                "--address",
                SIDECAR_ADDRESS,
                "--token-file",
                TOKEN_FILE
            ])
        );
        assert_eq!(
            side["volumeMounts"][1],
            json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR})
        );
        assert_eq!(spec["initContainers"][1]["name"], "init");
        let app = &spec["containers"][1];
        assert_eq!(
            env_value(app, "AWS_CONTAINER_CREDENTIALS_FULL_URI").unwrap()["value"],
            "http://127.0.0.1:9911/credentials"
        );
        assert_eq!(
            env_value(app, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").unwrap()["value"],
            TOKEN_FILE
        );
        assert!(env_value(app, "AWS_CONFIG_FILE").is_none());
        assert_eq!(
            app["volumeMounts"],
            json!([{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}]),
            "only the sidecar mounts the Secret; the app gets the token, read-only"
        );
        assert!(spec["volumes"].as_array().unwrap().contains(
            &json!({"name": TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "64Ki"}})
        ));
    }

    #[test]
    fn only_the_listed_containers_get_the_sidecars_token() {
        let out = inject(
            &pod(),
            &ask(Some(&["side"]), Mode::ContainerCredentials),
            &target(),
            &image(),
        )
        .unwrap();
        let spec = &out.pod["spec"];
        let (app, side) = (&spec["containers"][0], &spec["containers"][1]);
        assert!(app["volumeMounts"].is_null(), "{app}");
        assert!(env_value(app, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_none());
        assert_eq!(side["volumeMounts"][0]["name"], TOKEN_VOLUME);
    }

    #[test]
    fn another_aws_identity_in_a_container_is_warned_about() {
        let mut p = pod();
        p["spec"]["containers"][0]["env"] = json!([
            {"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::123456789012:role/irsa"},
            {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
            {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
        ]);
        let out = inject(&p, &ask(None, Mode::CredentialProcess), &target(), &image()).unwrap();
        let w = out.warnings.join("\n");
        assert!(
            w.contains("container app has AWS_ROLE_ARN (IAM roles for service accounts)"),
            "{w}"
        );
        assert!(
            w.contains("container app has AWS_WEB_IDENTITY_TOKEN_FILE"),
            "{w}"
        );
        assert!(
            w.contains("container app has AWS_CONTAINER_CREDENTIALS_FULL_URI (http://169.254.170.23/v1/credentials; EKS Pod Identity"),
            "{w}"
        );
        assert!(!w.contains("container side"), "{w}");
        // container-credentials: Pod Identity's endpoint is the one the container keeps
        // (set_env says so), warned about once.
        let out = inject(
            &p,
            &ask(None, Mode::ContainerCredentials),
            &target(),
            &image(),
        )
        .unwrap();
        let full_uri = out
            .warnings
            .iter()
            .filter(|w| w.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
            .count();
        assert_eq!(full_uri, 1, "{:?}", out.warnings);
    }

    #[test]
    fn container_credentials_on_a_host_network_pod_is_refused() {
        let mut p = pod();
        p["spec"]["hostNetwork"] = json!(true);
        let e = inject(
            &p,
            &ask(None, Mode::ContainerCredentials),
            &target(),
            &image(),
        )
        .unwrap_err();
        assert!(e.0.contains("hostNetwork pod"), "{e}");
        // The default mode is fine there: nothing listens.
        assert!(inject(&p, &ask(None, Mode::CredentialProcess), &target(), &image()).is_ok());
    }

    #[test]
    fn only_a_secret_the_controller_wrote_is_injected_else_a_refusal_says_what_to_fix() {
        let ok = Target::issued("ns", "app", Some(&issued())).unwrap();
        assert_eq!(
            ok,
            Target {
                secret_name: "app-aws".into(),
                mount_path: "/var/run/secrets/aws".into(),
                region: "us-east-1".into(),
            }
        );
        // Ready False for a reason that keeps the Secret (throttled): still the
        // controller's Secret, still injected.
        let mut throttled = issued();
        throttled.status.as_mut().unwrap().conditions = vec![condition("False", reason::THROTTLED)];
        assert!(Target::issued("ns", "app", Some(&throttled)).is_ok());

        let refused =
            |cuc: Option<&CognitoUnauthCredential>| Target::issued("ns", "app", cuc).unwrap_err().0;
        assert!(refused(None).contains("no CognitoUnauthCredential ns/app: create it"));
        let mut fresh = issued();
        fresh.status = None;
        assert!(
            refused(Some(&fresh))
                .contains("has not written its Secret app-aws yet (no status yet)"),
            "{}",
            refused(Some(&fresh))
        );
        // secretName changed, the new Secret not written yet.
        let mut renamed = issued();
        renamed.spec.secret_name = Some("other".into());
        assert!(refused(Some(&renamed)).contains("has not written its Secret other yet"));
        // Status says the name, nothing written yet.
        let mut pending = issued();
        let st = pending.status.as_mut().unwrap();
        st.last_rotation_time = None;
        st.conditions = vec![condition("False", reason::PENDING)];
        assert!(refused(Some(&pending)).contains("(Ready False: Pending: m)"));
        // A Secret under that name that is not the controller's.
        let mut conflict = issued();
        conflict.status.as_mut().unwrap().conditions =
            vec![condition("False", reason::SECRET_CONFLICT)];
        let why = refused(Some(&conflict));
        assert!(
            why.contains("ns/app-aws is not the controller's (SecretConflict)"),
            "{why}"
        );
        assert!(
            why.contains("delete that Secret or set spec.secretName"),
            "{why}"
        );
    }

    #[test]
    fn conflicts_with_what_the_pod_has_are_refused() {
        let a = ask(None, Mode::CredentialProcess);
        let mut p = pod();
        p["spec"]["volumes"] = json!([{"name": VOLUME, "emptyDir": {}}]);
        let e = inject(&p, &a, &target(), &image()).unwrap_err();
        assert!(e.0.contains("already has a volume named"), "{e}");
        let mut p = pod();
        p["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "data", "mountPath": "/var/run/secrets/aws"}]);
        let e = inject(&p, &a, &target(), &image()).unwrap_err();
        assert!(
            e.0.contains("container app already mounts volume data"),
            "{e}"
        );
        let mut p = pod();
        p["spec"]["initContainers"] = json!([{"name": SIDECAR, "image": "x"}]);
        let c = ask(None, Mode::ContainerCredentials);
        let e = inject(&p, &c, &target(), &image()).unwrap_err();
        assert!(e.0.contains("already has a container named"), "{e}");
    }

    #[test]
    fn static_credentials_in_the_environment_are_warned_about() {
        let mut p = pod();
        p["spec"]["containers"][1]["env"] = json!([{"name": "AWS_ACCESS_KEY_ID", "value": "x"}]);
        let out = inject(
            &p,
            &ask(Some(&["side"]), Mode::CredentialProcess),
            &target(),
            &image(),
        )
        .unwrap();
        assert_eq!(out.warnings.len(), 1);
        assert!(out.warnings[0].contains("container side sets AWS_ACCESS_KEY_ID"));
    }
}
