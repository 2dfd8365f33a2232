//! Every container the chart renders starts, as far as its configuration goes: for each
//! chart test case (`charts/*/tests/golden/*.yaml`, which `make chart-check` proves equal
//! to `helm template` of `tests/cases/*.yaml`), each container's arguments and environment
//! are given to the binary's own parser (`--check-config`). Issue 24: the golden file of
//! the defaults held `WEBHOOK_CA_LIFETIME_SECONDS: "3.1536e+07"`, which the binary refused,
//! and nothing ran it. No cluster needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cognito-unauth-controller");

fn golden_files() -> Vec<PathBuf> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/cognito-unauth-controller/tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the golden files")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "golden files in {}", dir.display());
    files
}

/// A container of a rendered workload: where it is, its arguments, its environment
/// (a `valueFrom` entry as a placeholder: the kubelet fills it in).
struct Container {
    at: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn containers(file: &Path) -> Vec<Container> {
    let text = std::fs::read_to_string(file).expect("read golden");
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let obj = Value::deserialize(doc).expect("yaml");
        let kind = obj["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Deployment" | "DaemonSet" | "StatefulSet" | "Job") {
            continue;
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let spec = &obj["spec"]["template"]["spec"];
        for c in spec["containers"].as_sequence().into_iter().flatten() {
            assert!(
                c["command"].is_null(),
                "{kind}/{name}: a command replaces the image's entrypoint; extend this test"
            );
            let strings = |v: &Value| -> Vec<String> {
                v.as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|a| a.as_str().expect("a string argument").to_string())
                    .collect()
            };
            let env = c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|e| {
                    let value = match &e["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => "placeholder-from-valueFrom".to_string(),
                        other => panic!("{kind}/{name}: env value not a string: {other:?}"),
                    };
                    (e["name"].as_str().expect("env name").to_string(), value)
                })
                .collect();
            out.push(Container {
                at: format!(
                    "{}: {kind}/{name} container {}",
                    file.file_name().unwrap_or_default().to_string_lossy(),
                    c["name"].as_str().unwrap_or_default()
                ),
                args: strings(&c["args"]),
                env,
            });
        }
    }
    out
}

fn check(args: &[String], env: &[(String, String)]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--check-config")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run the binary")
}

#[test]
fn every_rendered_container_passes_the_binarys_own_parser() {
    let mut checked = 0;
    for file in golden_files() {
        for c in containers(&file) {
            let out = check(&c.args, &c.env);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.starts_with("configuration ok"),
                "{}: the binary refuses what the chart renders:\n{}{}",
                c.at,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
            // Numbers are rendered in digits, as every consumer reads them (not only ours).
            for (k, v) in &c.env {
                assert!(
                    !(v.parse::<f64>().is_ok() && v.contains(['e', 'E'])),
                    "{}: {k}={v:?} is a number in exponent form",
                    c.at
                );
            }
            checked += 1;
        }
    }
    // Each case renders the controller and (webhook on by default) the webhook.
    assert!(checked >= 10, "only {checked} containers checked");
}

#[test]
fn the_defaults_render_the_lifetimes_in_digits() {
    let defaults = golden_files()
        .into_iter()
        .find(|p| p.ends_with("defaults.yaml"))
        .expect("defaults.yaml");
    let env: Vec<(String, String)> = containers(&defaults)
        .into_iter()
        .flat_map(|c| c.env)
        .collect();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("WEBHOOK_CA_LIFETIME_SECONDS"), Some("31536000"));
    assert_eq!(get("WEBHOOK_CERT_LIFETIME_SECONDS"), Some("2592000"));
    assert_eq!(get("LEADER_ELECTION_LEASE_DURATION_SECONDS"), Some("15"));
    assert_eq!(get("COGNITO_GET_ID_RATE"), Some("25"));
}

#[test]
fn a_refused_value_names_its_variable_and_chart_key() {
    let base = |lifetime: &str| {
        vec![
            ("POD_NAMESPACE".to_string(), "ns".to_string()),
            ("WEBHOOK_SERVICE".to_string(), "svc".to_string()),
            ("WEBHOOK_TLS_SECRET".to_string(), "tls".to_string()),
            ("WEBHOOK_CONFIGURATION".to_string(), "cfg".to_string()),
            ("WEBHOOK_SIDECAR_IMAGE".to_string(), "img".to_string()),
            (
                "WEBHOOK_CA_LIFETIME_SECONDS".to_string(),
                lifetime.to_string(),
            ),
        ]
    };
    let webhook = ["webhook".to_string()];
    // What an older chart rendered: read as the whole number it is.
    let out = check(&webhook, &base("3.1536e+07"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("CA lifetime 31536000 s"));
    // A fraction is refused, and the message says where it came from.
    let out = check(&webhook, &base("1.5"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'1.5' is not a whole number"), "{stderr}");
    assert!(
        stderr.contains("WEBHOOK_CA_LIFETIME_SECONDS")
            && stderr.contains("`webhook.certificate.caLifetimeSeconds`"),
        "{stderr}"
    );
    // On the command line the flag is its own origin: no variable named.
    let mut args = webhook.to_vec();
    args.push("--ca-lifetime-seconds=ten".into());
    let out = check(&args, &base("60"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("environment variable"), "{stderr}");
}
