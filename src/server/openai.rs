//! `POST /v1/chat/completions` in the shape NVIDIA's hosted
//! nemotron-4-340b-reward answers with, so the `openai` client (and NeMo
//! Curator's reward-model helper) read it unchanged: the scores of the last
//! assistant turn as `choices[0].logprobs.content` (one entry per HelpSteer
//! attribute, the score in `logprob`) and as
//! `choices[0].message.content = "helpfulness:1.62,correctness:..."`,
//! `finish_reason: "length"`. `GET /v1/models` lists the served names.
//!
//! Generation parameters (temperature, max_tokens, ...) are accepted and
//! ignored, as the hosted endpoint does; `stream: true` and `n > 1` are refused.
//! The scalar reward (configured weights and transform) and all nine raw
//! outputs ride along in an extra `reward` object, which clients that do not
//! know it ignore.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::errors::ApiError;
use super::limits::{body_bytes, json_body};
use super::{responded, AppState};
use crate::chat::{speaker, Role, Speaker};
use crate::reward::{RewardInput, RewardOverride, ATTRIBUTES, HELPSTEER_ATTRIBUTES};
use crate::scheduler::Input;

/// Completion ids: unique within the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub async fn chat_completions(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&body_bytes(body, app.config.max_body_bytes)?)?;
    let model = match body.get("model") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err(ApiError::bad_request("invalid_request", "`model` must be a string")),
        None => return Err(ApiError::bad_request("invalid_request", "the body needs `model`")),
    };
    app.check_model(Some(model))?;
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::bad_request("unsupported", "`stream` is not supported: a reward is one answer"));
    }
    // `n` is a count: 1 (also written 1.0) or absent; 2.0 is two answers, not one.
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_f64() == Some(1.0) => {}
        Some(n) => {
            return Err(ApiError::bad_request(
                "unsupported",
                format!("`n` must be 1: a reward model has one answer, got {n}"),
            ))
        }
    }
    let messages =
        body.get("messages").ok_or_else(|| ApiError::bad_request("invalid_request", "the body needs `messages`"))?;
    // The hosted endpoint rates the final assistant message; a conversation that
    // ends with the user has no response to rate (an earlier one would be a surprise).
    // The role rule is the one every route uses (`chat::speaker`); a bad role is
    // left to it, with the message's index.
    let last_role = messages.as_array().and_then(|m| m.last()).and_then(|m| m.get("role")).and_then(Value::as_str);
    let is_assistant = |r: &str| matches!(speaker(r, ""), Ok(Speaker::Turn(Role::Assistant)) | Err(_));
    if let Some(role) = last_role.filter(|r| !is_assistant(r)) {
        return Err(ApiError::bad_request(
            "last_message_not_assistant",
            format!("messages: the last message must be the assistant's response to rate, got role `{role}`"),
        ));
    }
    let record = json!({"messages": messages});
    let reply = app.score(&headers, vec![Input::Record(record)], app.config.options, "messages").await?;
    let scores = reply.results[0].as_ref().expect("errors were turned into ApiError above");
    let last = scores.turns.last().expect("a scored record has an assistant turn");
    let reward = {
        let mut pipeline = app.pipeline.lock().expect("the reward pipeline lock is never poisoned");
        let input = RewardInput { raw: last.raw, group: None, turn: last.turn };
        let batch = pipeline.rewards(&[input], &RewardOverride::default())?;
        let out = batch.results[0].clone()?;
        json!({"reward": out.reward, "raw": last.raw, "weights": batch.weights.0, "transform": batch.transform})
    };
    let names = HELPSTEER_ATTRIBUTES.map(|i| (ATTRIBUTES[i], last.raw[i]));
    let content: Vec<Value> = names
        .clone()
        .map(|(name, x)| json!({"token": name, "logprob": x, "bytes": null, "top_logprobs": []}))
        .collect();
    let text = names.map(|(name, x)| format!("{name}:{x}")).collect::<Vec<_>>().join(",");
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let response = json!({
        "id": format!("chatcmpl-{created:x}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": content},
            "finish_reason": "length",
        }],
        "usage": {"prompt_tokens": scores.tokens, "completion_tokens": 1, "total_tokens": scores.tokens + 1},
        "reward": reward,
    });
    responded(&reply);
    Ok(Json(response).into_response())
}

pub async fn models(State(app): State<AppState>) -> Json<Value> {
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let data: Vec<Value> = app
        .model_names()
        .into_iter()
        .map(|id| {
            json!({"id": id, "object": "model", "created": created, "owned_by": "reward-worker",
                   "max_model_len": app.queue.model().context, "backend": app.queue.model().describe})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
