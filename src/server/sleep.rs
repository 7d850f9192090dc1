//! vLLM's sleep-mode routes, so the hooks trainers already have fit:
//!
//! - `POST /sleep?level=1|2` (absent: `--sleep-level`, 1 by default as in
//!   vLLM): answered once every rank sleeps, after the batch that was running;
//! - `POST /wake_up[?tags=weights][&tags=kv_cache]` (or `tags=weights,kv_cache`;
//!   none: all): answered once the weights are back;
//! - `GET /is_sleeping`: `{"is_sleeping": bool}`, plus the level and the tags.
//!
//! Requests sent while asleep wait in the queue and are answered after the wake.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::{ApiError, ErrorKind};
use super::AppState;
use crate::engine::SleepLevel;
use crate::scheduler::{SleepError, SleepStatus, SleepTag};

pub async fn sleep(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let mut level = app.config.sleep_level;
    for (key, value) in pairs(query.as_deref()) {
        match key {
            "level" => level = SleepLevel::parse(value).map_err(|m| bad("invalid_sleep_level", m))?,
            other => return Err(bad("invalid_request", format!("/sleep takes `level`, not `{other}`"))),
        }
    }
    let status = app.queue.sleep(level).await.map_err(failed)?;
    Ok(Json(body(&status)).into_response())
}

pub async fn wake_up(State(app): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let mut tags = Vec::new();
    for (key, value) in pairs(query.as_deref()) {
        match key {
            "tags" => {
                for tag in value.split(',').filter(|t| !t.is_empty()) {
                    tags.push(SleepTag::parse(tag).map_err(|m| bad("invalid_tag", m))?);
                }
            }
            other => return Err(bad("invalid_request", format!("/wake_up takes `tags`, not `{other}`"))),
        }
    }
    let status = app.queue.wake_up(&tags).await.map_err(failed)?;
    Ok(Json(body(&status)).into_response())
}

pub async fn is_sleeping(State(app): State<AppState>) -> Response {
    Json(body(&app.queue.sleep_status())).into_response()
}

/// The JSON of every route here (and the `sleep` object of `/ready`).
pub fn body(status: &SleepStatus) -> Value {
    json!({
        "is_sleeping": status.sleeping,
        "level": status.level.map(SleepLevel::number),
        "sleeping_tags": status.tags,
        "seconds": status.seconds,
    })
}

fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, code, message)
}

fn failed(e: SleepError) -> ApiError {
    match e {
        SleepError::ShuttingDown => ApiError::new(ErrorKind::Unavailable, "shutting_down", e.to_string()),
        SleepError::EngineStopped => ApiError::new(ErrorKind::Unavailable, "engine_stopped", e.to_string()),
        SleepError::Failed(message) => ApiError::new(ErrorKind::Internal, "sleep_failed", message),
    }
}
