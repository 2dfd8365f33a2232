//! The admin HTTP server: `/livez`, `/readyz` and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::common::metrics::Metrics;

/// Readiness, flipped by the runtime once it can do its job; liveness, from a heartbeat
/// that the controller's own task (or, on a standby, the leader-election loop) gives every
/// few seconds: a task that stops being polled (a blocked thread, a starved runtime)
/// stops beating, and /livez fails so that the kubelet restarts the pod.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    /// Last heartbeat, Unix milliseconds.
    beat: AtomicI64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            beat: AtomicI64::new(now_ms()),
        }
    }
}

/// How often the runtime beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);
/// /livez fails after this long without a beat (the chart's probe then fails three times
/// in a minute before the kubelet restarts the container).
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Health {
    /// The runtime is alive and polled.
    pub fn beat(&self) {
        self.beat.store(now_ms(), Ordering::Release);
    }

    /// Whether the last beat is at most `LIVENESS_WINDOW` before `now_ms`.
    pub fn is_live_at(&self, now_ms: i64) -> bool {
        let silence = now_ms.saturating_sub(self.beat.load(Ordering::Acquire));
        u128::try_from(silence).unwrap_or(0) <= LIVENESS_WINDOW.as_millis()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn livez(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.is_live_at(now_ms()) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no heartbeat from the controller",
        )
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    match s.metrics.render() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "could not encode metrics".to_string(),
        ),
    }
}

/// Binds `addr` (fails fast when it cannot) and returns the bound address and the server.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { metrics, health });
    Ok((bound, async move { axum::serve(listener, app).await }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_heartbeat() {
        let h = Health::default();
        h.beat();
        let t = h.beat.load(Ordering::Acquire);
        assert!(h.is_live_at(t));
        assert!(h.is_live_at(t + 60_000));
        assert!(!h.is_live_at(t + 60_001));
        h.beat();
        assert!(h.is_live_at(now_ms()));
    }
}
