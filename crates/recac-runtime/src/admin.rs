//! The admin HTTP server: `/metrics`, `/healthz` and `/readyz`.
//!
//! - `/healthz` is 200 while no supervised part has failed; 503 naming the failed parts.
//! - `/readyz` is 200 once every cache has been listed; 503 naming the caches still syncing.
//!   It says nothing about leadership: a warm standby is ready.

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::MetricsRegistry;
use crate::supervisor::Health;

type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Whether every cache is synced.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Arc<Mutex<Vec<(String, Probe)>>>,
}

impl Readiness {
    /// Adds a check named `name` (e.g. `cache agenttasks`).
    pub fn add(&self, name: impl Into<String>, ready: impl Fn() -> bool + Send + Sync + 'static) {
        if let Ok(mut probes) = self.probes.lock() {
            probes.push((name.into(), Arc::new(ready)));
        }
    }

    /// `Ok` when every check passes, else `Err` naming the ones that do not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let probes = self.probes.lock().map(|p| p.clone()).unwrap_or_default();
        let waiting: Vec<String> = probes
            .iter()
            .filter(|(_, ready)| !ready())
            .map(|(name, _)| name.clone())
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }
}

/// What the admin server reads.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: MetricsRegistry,
    pub health: Health,
    pub readiness: Readiness,
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.health.check() {
        Ok(summary) => (StatusCode::OK, format!("ok\n{summary}\n")),
        Err(failed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed\n{failed}\n"),
        ),
    }
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(waiting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not synced: {}\n", waiting.join(", ")),
        ),
    }
}

/// The admin routes, for servers that add routes of their own (webhooks).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves `router` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
