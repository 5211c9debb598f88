//! The HTTP surface: `/health`, `/metrics` (Prometheus text), and the device API
//! `/api/devices/{meter_id}` and `/api/devices?stale_after=SECONDS`.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::devices::DeviceRegistry;
use crate::link::now_ms;

#[derive(Clone)]
pub struct HttpState {
    pub devices: DeviceRegistry,
    pub metrics: PrometheusHandle,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/devices", get(devices))
        .route("/api/devices/{meter_id}", get(device))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    metrics::gauge!("meterflow_devices").set(state.devices.len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn device(State(state): State<HttpState>, Path(meter_id): Path<String>) -> Response {
    match state.devices.get(&meter_id) {
        Some(d) => Json(d).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no meter {meter_id:?} has been heard")})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesQuery {
    /// Only meters not heard for at least this many seconds.
    stale_after: Option<u64>,
}

async fn devices(State(state): State<HttpState>, Query(q): Query<DevicesQuery>) -> Response {
    let now = now_ms();
    let devices: Vec<_> = state
        .devices
        .all()
        .into_iter()
        .filter(|d| match q.stale_after {
            Some(s) => now.saturating_sub(d.last_seen_ms) >= (s as i64).saturating_mul(1000),
            None => true,
        })
        .collect();
    Json(devices).into_response()
}
