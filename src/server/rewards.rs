//! `POST /v1/rewards`: this project's own API.
//!
//! `{"conversations": [record, ...], "weights"?: [9 floats] | "preset"?: name,
//!   "truncate"?: "none"|"left", "use_record_system"?: bool, "prefix_cache"?: bool,
//!   "model"?: name}` (`"prefix_cache": false`: neither read nor fill the prefix cache)
//! -> `{"model", "weights", "results": [one object per record, exactly as `score` prints it]}`.
//!
//! The request is scored as a whole: an invalid record refuses it with 400
//! naming `conversations[i]` and the field, so a training loop never gets
//! rewards silently misaligned with its rollouts. Batch and group
//! normalisation see the records of one request together (a GRPO group sent
//! as one request with its `group` ids is normalised within itself).
//!
//! `POST /v1/rewards/step` ends a training step for `running` normalisation:
//! the rewards made since the last step are committed into the running
//! statistics, which every later request then uses (frozen within a step, so
//! all rewards of one PPO step see one transform). Other modes ignore it.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::{ApiError, ErrorKind};
use super::limits::{body_bytes, bounded_array, json_body, optional_str};
use super::{responded, AppState};
use crate::chat::Truncate;
use crate::engine::ScoreOptions;
use crate::output::{needs_group, record_group, render_rows, Scored};
use crate::reward::RewardOverride;
use crate::scheduler::Input;

const FIELDS: [&str; 7] =
    ["conversations", "weights", "preset", "truncate", "use_record_system", "prefix_cache", "model"];

pub async fn handle(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&body_bytes(body, app.config.max_body_bytes)?)?;
    if let Some(key) = body.as_object().into_iter().flat_map(|o| o.keys()).find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request("unknown_field", format!("unknown field `{key}` (known: {FIELDS:?})")));
    }
    app.check_model(optional_str(&body, "model")?)?;
    let records = bounded_array(&body, "conversations", app.config.max_conversations)?;
    let request = reward_override(&body)?;
    let options = score_options(&body, app.config.options)?;
    let groups = {
        let pipeline = app.pipeline.lock().expect("the reward pipeline lock is never poisoned");
        pipeline.resolve(&request)?; // an unknown preset costs no forward pass
        records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                record_group(r, needs_group(&pipeline))
                    .map_err(|e| ApiError::record(&format!("conversations[{i}]"), &e))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let inputs = records.iter().cloned().map(Input::Record).collect();
    let reply = app.score(&headers, inputs, options, "conversations").await?;
    let rows = reply
        .results
        .iter()
        .zip(groups)
        .enumerate()
        .map(|(i, (r, group))| (i, r.clone().map(|scores| Scored { scores, group })))
        .collect();
    let (rendered, weights) = {
        let mut pipeline = app.pipeline.lock().expect("the reward pipeline lock is never poisoned");
        let weights = pipeline.resolve(&request)?.0;
        (render_rows(rows, &mut pipeline, &request)?, weights)
    };
    let results = rendered
        .into_iter()
        .map(|(i, r)| r.map(|(v, _)| v).map_err(|e| ApiError::record(&format!("conversations[{i}]"), &e)))
        .collect::<Result<Vec<Value>, _>>()?;
    responded(&reply);
    Ok(Json(json!({"model": app.model_name(), "weights": weights.0, "results": results})).into_response())
}

/// `weights` / `preset` of a request body.
pub fn reward_override(body: &Value) -> Result<RewardOverride, ApiError> {
    let parts = json!({"weights": body.get("weights").cloned().unwrap_or(Value::Null),
                       "preset": body.get("preset").cloned().unwrap_or(Value::Null)});
    serde_json::from_value(parts).map_err(|e| {
        ApiError::bad_request("invalid_weights", format!("`weights` must be 9 numbers and `preset` a name: {e}"))
    })
}

/// `truncate` and `use_record_system` of a request body over the server's defaults.
pub fn score_options(body: &Value, defaults: ScoreOptions) -> Result<ScoreOptions, ApiError> {
    let mut options = defaults;
    if let Some(t) = optional_str(body, "truncate")? {
        options.truncate = match t {
            "none" => Truncate::None,
            "left" => Truncate::Left,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("`truncate` must be \"none\" or \"left\", got \"{other}\""),
                ))
            }
        };
    }
    match body.get("use_record_system") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => options.use_record_system = *b,
        Some(_) => return Err(ApiError::bad_request("invalid_request", "`use_record_system` must be a boolean")),
    }
    // `"prefix_cache": false` scores the request apart from the prefix cache.
    match body.get("prefix_cache") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => options.bypass_prefix_cache = !*b,
        Some(_) => return Err(ApiError::bad_request("invalid_request", "`prefix_cache` must be a boolean")),
    }
    Ok(options)
}

/// `POST /v1/rewards/step` -> `{"committed": n, "normalize": mode, "running": {count, mean, m2, steps}}`.
///
/// With `--running-state` the step is on disk (synced and renamed into place)
/// before the answer; when it cannot be written the step is not committed (the
/// statistics stay as they were, the rewards stay pending) and the answer is
/// 500 `state_write_failed` naming the file and the error, so a retry commits it.
pub async fn step(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut pipeline = app.pipeline.lock().expect("the reward pipeline lock is never poisoned");
    let committed = pipeline.pending();
    let next = pipeline.next_step();
    if let Some(file) = &app.config.running_state {
        // Under the lock, so concurrent steps reach the disk in the order they commit.
        file.save(&next).map_err(|e| {
            tracing::error!(error = %e, "a step was not saved; not committed");
            ApiError::new(ErrorKind::Internal, "state_write_failed", format!("{e}; the step was not committed"))
        })?;
    }
    let stats = pipeline.commit_step(next).clone();
    let mode = serde_json::to_value(&pipeline.config().normalize).unwrap_or(Value::Null);
    Ok(Json(json!({"committed": committed, "normalize": mode, "running": stats})))
}
