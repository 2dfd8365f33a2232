//! `serve-credentials`: the sidecar of the webhook's `container-credentials` mode. It serves
//! the mounted `credential-process.json` (which the kubelet keeps current) in the format of
//! the AWS SDKs' container credentials provider, on the pod's loopback only, so that an
//! image without a shell (no `sh`, no `cat` for `credential_process`) still gets rotated
//! credentials: every SDK reads `AWS_CONTAINER_CREDENTIALS_FULL_URI` and fetches again
//! before the credentials it holds expire.
//!
//! The file is read at every request: nothing is cached, nothing is logged but errors
//! (never the file's content).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::inject::SIDECAR_PATH;

/// The credential_process (version 1) document the Secret holds.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// The container credentials provider's document, from the credential_process one.
fn convert(process_json: &[u8]) -> Result<String, serde_json::Error> {
    let p: ProcessCredentials = serde_json::from_slice(process_json)?;
    serde_json::to_string(&serde_json::json!({
        "AccessKeyId": p.access_key_id,
        "SecretAccessKey": p.secret_access_key,
        "Token": p.session_token,
        "Expiration": p.expiration,
    }))
}

async fn credentials(State(file): State<PathBuf>) -> Response {
    let bytes = match tokio::fs::read(&file).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the credentials file");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "credentials not available yet",
            )
                .into_response();
        }
    };
    match convert(&bytes) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => {
            tracing::warn!(file = %file.display(), "the credentials file is not a credential_process document");
            (StatusCode::SERVICE_UNAVAILABLE, "credentials not readable").into_response()
        }
    }
}

/// Serves `GET /credentials` (and `/healthz`) on `address` until the process ends.
pub async fn serve(file: PathBuf, address: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(address = %address, file = %file.display(), "serving container credentials");
    let app = Router::new()
        .route(SIDECAR_PATH, get(credentials))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(file);
    axum::serve(listener, app).await
}

/// The startup probe: true when `address` answers `/healthz`.
pub async fn probe(address: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(address).await?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<bool, std::io::Error>(
            out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200"),
        )
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_document_becomes_the_container_one() {
        let process = br#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","SessionToken":"ST","Expiration":"2026-11-27T20:00:00Z"}"#;
        let out: serde_json::Value = serde_json::from_str(&convert(process).unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"AccessKeyId":"AK","SecretAccessKey":"SK","Token":"ST","Expiration":"2026-11-27T20:00:00Z"})
        );
        assert!(convert(b"{}").is_err());
        assert!(convert(b"not json").is_err());
    }

    #[tokio::test]
    async fn it_serves_the_file_as_it_is_now_and_the_probe_sees_it() {
        let dir = std::env::temp_dir().join(format!("cuc-sidecar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credential-process.json");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        tokio::spawn(serve(file.clone(), addr));
        let mut up = false;
        for _ in 0..100 {
            if probe(addr).await {
                up = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(up, "the probe never saw the server");
        let url = format!("http://{addr}{SIDECAR_PATH}");
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 503, "no file yet");
        for key in ["ONE", "TWO"] {
            std::fs::write(
                &file,
                format!(r#"{{"Version":1,"AccessKeyId":"{key}","SecretAccessKey":"s","SessionToken":"t","Expiration":"2026-11-27T20:00:00Z"}}"#),
            )
            .unwrap();
            let v: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
            assert_eq!(v["AccessKeyId"], key);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
