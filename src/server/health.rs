//! Probes and metrics: `/health` (alive: the process answers; no key needed),
//! `/ready` (the model is loaded, the group healthy, not shutting down; it says
//! whether the model sleeps, and stays 200 then: requests are queued),
//! `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::errors::{ApiError, ErrorKind};
use super::AppState;

pub async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn ready(State(app): State<AppState>) -> Response {
    let queue = &app.queue;
    let body = json!({
        "ready": queue.ready(),
        "model": app.model_name(),
        "backend": queue.model().describe,
        "queue": {"waiting": queue.waiting(), "limit": queue.queue_limit()},
        "shutting_down": queue.is_shutting_down(),
        // Asleep is still ready: a request sent now is queued and answered
        // after the wake, so a client must not take the replica for down.
        "sleeping": queue.sleep_status().sleeping,
        "sleep": super::sleep::body(&queue.sleep_status()),
    });
    let status = if queue.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorKind::NotFound, "not_found", format!("no route {}", uri.path()))
}
