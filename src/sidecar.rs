//! `serve-credentials`: the sidecar of the webhook's `container-credentials` mode. It serves
//! the mounted `credential-process.json` (which the kubelet keeps current) in the format of
//! the AWS SDKs' container credentials provider, on the pod's loopback only, so that an
//! image without a shell (no `sh`, no `cat` for `credential_process`) still gets rotated
//! credentials: every SDK reads `AWS_CONTAINER_CREDENTIALS_FULL_URI` and fetches again
//! before the credentials it holds expire.
//!
//! The file is read at every request: nothing is cached, nothing is logged but errors
//! (never the file's content).
//!
//! With `--token-file` (what the webhook sets), the sidecar first writes a random token
//! there (an in-memory volume mounted, read-only, only in the containers the credentials
//! are for) and answers only requests whose `Authorization` header is that token, as the
//! SDKs send it from `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: 401 without the header,
//! 403 with another value. Other containers of the pod, and anything the app can be made
//! to fetch from the loopback (an SSRF), get no credentials.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::webhook::inject::SIDECAR_PATH;

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

/// What the handler needs: the file, and the token a request must carry (if any).
#[derive(Clone)]
struct Served {
    file: PathBuf,
    token: Option<Arc<str>>,
}

/// Whether `given` is `token`, in time that does not depend on where they differ.
fn same_token(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len() && given.iter().zip(token).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// A fresh token: 32 random bytes, hex.
fn new_token() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("no random bytes for the token"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a fresh token to `path` (readable by the containers that mount it, whatever
/// their user: the mount is the boundary) and returns it.
async fn write_token(path: &Path) -> Result<String, std::io::Error> {
    use std::os::unix::fs::PermissionsExt;
    let token = new_token()?;
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, &token).await?;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444)).await?;
    tokio::fs::rename(&tmp, path).await?;
    Ok(token)
}

async fn credentials(State(served): State<Served>, headers: HeaderMap) -> Response {
    if let Some(token) = &served.token {
        match headers.get(header::AUTHORIZATION) {
            None => {
                return (
                    StatusCode::UNAUTHORIZED,
                    "the Authorization token is missing",
                )
                    .into_response();
            }
            Some(given) if !same_token(given.as_bytes(), token.as_bytes()) => {
                return (StatusCode::FORBIDDEN, "wrong Authorization token").into_response();
            }
            Some(_) => {}
        }
    }
    let file = served.file;
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

/// Serves `GET /credentials` (and `/healthz`) on `address` until the process ends; with
/// `token_file`, writes a fresh token there first and answers only requests that carry it.
pub async fn serve(
    file: PathBuf,
    address: SocketAddr,
    token_file: Option<PathBuf>,
) -> std::io::Result<()> {
    let token = match &token_file {
        Some(path) => Some(Arc::from(write_token(path).await?)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(
        address = %address,
        file = %file.display(),
        token = token.is_some(),
        "serving container credentials"
    );
    let app = Router::new()
        .route(SIDECAR_PATH, get(credentials))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Served { file, token });
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

    /// The sidecar on a free loopback port, once its probe sees it.
    async fn started(file: PathBuf, token_file: Option<PathBuf>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        tokio::spawn(serve(file, addr, token_file));
        for _ in 0..100 {
            if probe(addr).await {
                return addr;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the probe never saw the server");
    }

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
        let addr = started(file.clone(), None).await;
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

    #[tokio::test]
    async fn with_a_token_file_only_requests_that_carry_the_token_are_answered() {
        let dir = std::env::temp_dir().join(format!("cuc-sidecar-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credential-process.json");
        std::fs::write(
            &file,
            r#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"s","SessionToken":"t","Expiration":"2026-11-27T20:00:00Z"}"#,
        )
        .unwrap();
        let token_file = dir.join("token");
        let addr = started(file, Some(token_file.clone())).await;
        let token = std::fs::read_to_string(&token_file).unwrap();
        assert_eq!(token.len(), 64, "32 random bytes, hex");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o444
        );
        let url = format!("http://{addr}{SIDECAR_PATH}");
        let http = reqwest::Client::new();
        let none = http.get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401);
        assert!(!none.text().await.unwrap().contains("AK"));
        let wrong = http
            .get(&url)
            .header("Authorization", "0".repeat(64))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 403);
        let right = http
            .get(&url)
            .header("Authorization", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200);
        let v: serde_json::Value = right.json().await.unwrap();
        assert_eq!(v["AccessKeyId"], "AK");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_compare_whole_and_are_fresh_each_time() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abc", b"abd"));
        assert!(!same_token(b"ab", b"abc"));
        assert_ne!(new_token().unwrap(), new_token().unwrap());
    }
}
