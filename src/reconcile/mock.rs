//! A scripted API server for the reconcile's I/O tests (the way kube-rs's controller-rs
//! tests its reconciler, without the tower-test crate): each request the client makes is
//! checked against the next expected one, answered with its canned response, and
//! recorded. A request the script did not expect is answered 500 and reported, so a
//! test fails on any call it did not name, in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

/// One expected request and its answer.
#[derive(Debug, Clone)]
pub struct Step {
    /// "GET", "POST", "PUT", "PATCH", "DELETE".
    pub method: &'static str,
    /// The path, without the query.
    pub path: String,
    pub status: u16,
    /// The answer; `None`: the request's own body, given a uid and a resourceVersion (what
    /// the API server answers a create or an apply with).
    pub body: Option<Value>,
}

impl Step {
    pub fn new(method: &'static str, path: impl Into<String>, status: u16, body: Value) -> Self {
        Self {
            method,
            path: path.into(),
            status,
            body: Some(body),
        }
    }

    /// Answered 200 (201 for POST) with the request's body, as stored.
    pub fn echo(method: &'static str, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            status: if method == "POST" { 201 } else { 200 },
            body: None,
        }
    }
}

/// What the server saw: every request as "METHOD path", and the requests the script
/// did not expect.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: Vec<String>,
    pub bodies: Vec<Value>,
    pub unexpected: Vec<String>,
}

/// A client whose requests are answered by `script`, and what it saw.
pub fn client(script: Vec<Step>) -> (kube::Client, Arc<Mutex<Seen>>) {
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let script = script.clone();
        let log = log.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let bytes = http_body_util_collect(req.into_body()).await;
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let line = format!("{method} {path}");
            let next = crate::lock(&script).pop_front();
            let mut seen = crate::lock(&log);
            seen.requests.push(line.clone());
            seen.bodies.push(body.clone());
            let (status, answer) = match next {
                Some(step) if step.method == method && step.path == path => {
                    (step.status, step.body.unwrap_or_else(|| stored(body)))
                }
                other => {
                    seen.unexpected.push(format!("{line} (expected {other:?})"));
                    (500, serde_json::json!({"kind": "Status", "code": 500}))
                }
            };
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(answer.to_string().into_bytes()))
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(response)
        }
    });
    (kube::Client::new(service, "default"), seen)
}

/// `body` as the API server stores it: with a uid and a resourceVersion.
fn stored(mut body: Value) -> Value {
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("uid").or_insert_with(|| "stored-uid".into());
        meta.insert("resourceVersion".into(), "2".into());
    }
    body
}

/// The request body's bytes.
async fn http_body_util_collect(body: Body) -> Vec<u8> {
    use http_body::Body as _;
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(frame) = frame
            && let Ok(data) = frame.into_data()
        {
            out.extend_from_slice(&data);
        }
    }
    out
}

/// A Kubernetes Status answer (404, 409, 403, 422, ...).
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}
