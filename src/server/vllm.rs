//! vLLM's pooling routes for a reward model, so that anything written for
//! `vllm serve` on a reward model points at this worker unchanged. Shapes
//! follow vLLM's `vllm/entrypoints/pooling/classify/protocol.py`
//! (`ClassificationRequest`, `ClassificationResponse`, `ClassificationData`)
//! and `vllm/entrypoints/pooling/pooling/protocol.py` (`PoolingRequest`,
//! `PoolingResponse`, `PoolingResponseData`); the payload tested is the one
//! veRL's reward loop builds in `verl/experimental/reward_loop/reward_loop.py`
//! (`RewardLoopWorker.compute_score_disrm`: `{"model", "input": <rendered
//! string>, "use_activation": false}` posted to `/classify`, reward read at
//! `data[-1].probs[-1]`; older veRL sends `"activation": false`).
//!
//! - `POST /classify`: `{"model"?, "input": str | [str] | [int] | [[int]]}` or
//!   `{"model"?, "messages": [...]}` -> `{"id": "classify-..", "object": "list",
//!   "created", "model", "data": [{"index", "label", "probs", "num_classes"}],
//!   "usage"}`.
//! - `POST /pooling`: the same inputs -> `{"id": "pool-..", ..., "data":
//!   [{"index", "object": "pooling", "data": [floats] | base64}]}`.
//!
//! A string is tokenised as it is and scored at its last token (as vLLM pools
//! the last token of a sequence-classification model); token ids likewise;
//! `messages` is a conversation rendered with the model's template, scored at
//! its last assistant turn. The vector per input is the model's nine raw
//! outputs (labels `quality` .. `verbosity`), or, with `--merge-attributes`,
//! one output `reward`: the scalar of the configured reward pipeline, so
//! veRL's `probs[-1]` is the reward. `use_activation` (or the older
//! `activation`) as in vLLM: absent or true applies the model's activation
//! (softmax over several outputs, sigmoid over one), false returns the raw
//! values. `add_special_tokens` is accepted: the SteerLM template has no BOS
//! or EOS, so nothing is added either way. Other fields vLLM knows are ignored,
//! as vLLM ignores fields it does not know.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

use super::errors::ApiError;
use super::limits::{body_bytes, json_body, optional_str};
use super::{responded, AppState};
use crate::reward::{RewardInput, RewardOverride, ATTRIBUTES};
use crate::scheduler::Input;

/// Which of the two routes answers.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    Classify,
    Pooling,
}

pub async fn classify(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(app, headers, body, Route::Classify).await
}

pub async fn pooling(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    answer(app, headers, body, Route::Pooling).await
}

async fn answer(
    app: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    route: Route,
) -> Result<Response, ApiError> {
    let body = json_body(&body_bytes(body, app.config.max_body_bytes)?)?;
    app.check_model(optional_str(&body, "model")?)?;
    let activation = use_activation(&body)?;
    let base64 = match (route, optional_str(&body, "encoding_format")?) {
        (Route::Pooling, None | Some("float")) => false,
        (Route::Pooling, Some("base64")) => true,
        (Route::Pooling, Some(other)) => {
            return Err(bad(format!("`encoding_format` must be \"float\" or \"base64\", got \"{other}\"")))
        }
        (Route::Classify, _) => false,
    };
    if route == Route::Pooling {
        match optional_str(&body, "task")? {
            None | Some("classify" | "score" | "reward") => {}
            Some(other) => {
                return Err(bad(format!(
                    "task \"{other}\" is not served: this is a reward model (classify, score, reward)"
                )))
            }
        }
    }
    if !matches!(body.get("truncate_prompt_tokens"), None | Some(Value::Null)) {
        return Err(bad(
            "`truncate_prompt_tokens` is not supported: cutting the text would lose the token the reward is read at",
        ));
    }
    if !matches!(body.get("add_special_tokens"), None | Some(Value::Null) | Some(Value::Bool(_))) {
        return Err(bad("`add_special_tokens` must be a boolean"));
    }
    let (inputs, item) = inputs_of(&body, app.config.max_conversations)?;
    let reply = app.score(&headers, inputs, app.config.options, item).await?;
    let scored: Vec<(&[f32; 9], usize)> = reply
        .results
        .iter()
        .map(|r| {
            let scores = r.as_ref().expect("errors were turned into ApiError above");
            (&scores.turns.last().expect("one scored turn").raw, scores.tokens)
        })
        .collect();
    let (vectors, labels): (Vec<Vec<f64>>, Vec<&str>) = if app.config.merge_attributes {
        let items: Vec<RewardInput> =
            scored.iter().map(|(raw, _)| RewardInput { raw: **raw, group: None, turn: 0 }).collect();
        let out = app
            .pipeline
            .lock()
            .expect("the reward pipeline lock is never poisoned")
            .rewards(&items, &RewardOverride::default())?;
        let rewards = out.results.into_iter().map(|r| r.map(|o| vec![o.reward])).collect::<Result<_, _>>()?;
        (rewards, vec!["reward"])
    } else {
        (scored.iter().map(|(raw, _)| raw.iter().map(|&v| v as f64).collect()).collect(), ATTRIBUTES.to_vec())
    };
    let vectors: Vec<Vec<f64>> = if activation { vectors.into_iter().map(|v| activate(&v)).collect() } else { vectors };
    let tokens: usize = scored.iter().map(|(_, t)| t).sum();
    let usage =
        json!({"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": null});
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| match route {
            Route::Classify => {
                json!({"index": index, "label": labels[argmax(v)], "probs": v, "num_classes": v.len()})
            }
            Route::Pooling if base64 => json!({"index": index, "object": "pooling", "data": encode_base64(v)}),
            Route::Pooling => json!({"index": index, "object": "pooling", "data": v}),
        })
        .collect();
    let prefix = if route == Route::Classify { "classify" } else { "pool" };
    responded(&reply);
    Ok(Json(json!({
        "id": format!("{prefix}-{}", request_id()),
        "object": "list",
        "created": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "model": app.model_name(),
        "data": data,
        "usage": usage,
    }))
    .into_response())
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

/// `use_activation` (vLLM >= 0.11.2) or `activation` (before): absent means true.
fn use_activation(body: &Value) -> Result<bool, ApiError> {
    let mut chosen = true;
    for field in ["activation", "use_activation"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => chosen = *b,
            Some(_) => return Err(bad(format!("`{field}` must be a boolean"))),
        }
    }
    Ok(chosen)
}

/// The items of `input` (or the one conversation of `messages`) and what to call one in errors.
fn inputs_of(body: &Value, max: usize) -> Result<(Vec<Input>, &'static str), ApiError> {
    match (body.get("input"), body.get("messages")) {
        (Some(_), Some(_)) => Err(bad("send either `input` or `messages`, not both")),
        (None, None) => Err(bad("the body needs `input` (a string, strings or token ids) or `messages`")),
        (None, Some(Value::Array(messages))) => Ok((vec![Input::Record(json!({"messages": messages}))], "messages")),
        (None, Some(_)) => Err(bad("`messages` must be an array of chat messages")),
        (Some(input), None) => Ok((input_items(input, max)?, "input")),
    }
}

fn input_items(input: &Value, max: usize) -> Result<Vec<Input>, ApiError> {
    let items = match input {
        Value::String(text) => return Ok(vec![Input::Text(text.clone())]),
        Value::Array(items) if items.is_empty() => return Err(bad("`input` is empty: nothing to score")),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            return Ok(vec![Input::Tokens(token_ids(items, "input")?)])
        }
        Value::Array(items) => items,
        _ => return Err(bad("`input` must be a string, an array of strings, token ids, or arrays of token ids")),
    };
    if items.len() > max {
        return Err(ApiError::bad_request(
            "too_many_items",
            format!("`input` has {} items; the limit is {max} per request", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(text) => Ok(Input::Text(text.clone())),
            Value::Array(ids) if !ids.is_empty() => Ok(Input::Tokens(token_ids(ids, &format!("input[{i}]"))?)),
            Value::Array(_) => Err(bad(format!("input[{i}] is an empty list of token ids"))),
            _ => Err(bad(format!("input[{i}] must be a string or an array of token ids"))),
        })
        .collect()
}

fn token_ids(items: &[Value], what: &str) -> Result<Vec<i64>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(j, v)| v.as_i64().ok_or_else(|| bad(format!("{what}[{j}] must be an integer token id, got {v}"))))
        .collect()
}

/// The model's activation: sigmoid over one output, softmax over several (vLLM's classify default).
fn activate(values: &[f64]) -> Vec<f64> {
    if values.len() == 1 {
        return vec![1.0 / (1.0 + (-values[0]).exp())];
    }
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, v)| if *v > values[best] { i } else { best })
}

/// vLLM's base64 encoding: the float32 values, little-endian, base64.
fn encode_base64(values: &[f64]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A request id unique enough for logs (vLLM uses a random UUID).
fn request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    format!("{:016x}{:016x}", h.finish(), std::collections::hash_map::RandomState::new().build_hasher().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_shape_vllm_takes() {
        let items = |v: Value| input_items(&v, 8);
        assert_eq!(items(json!("a b")).unwrap(), vec![Input::Text("a b".into())]);
        assert_eq!(items(json!(["a", "b"])).unwrap().len(), 2);
        assert_eq!(items(json!([1, 2, 3])).unwrap(), vec![Input::Tokens(vec![1, 2, 3])]);
        assert_eq!(items(json!([[1], [2, 3]])).unwrap(), vec![Input::Tokens(vec![1]), Input::Tokens(vec![2, 3])]);
        assert!(items(json!(["a", 3])).unwrap_err().message.contains("input[1]"));
        assert!(items(json!([[1, "x"]])).unwrap_err().message.contains("input[0][1]"));
        assert!(items(json!([])).is_err());
        assert_eq!(input_items(&json!(["a", "b", "c"]), 2).unwrap_err().code, "too_many_items");
    }

    #[test]
    fn activation_is_vllms() {
        assert!(use_activation(&json!({})).unwrap());
        assert!(!use_activation(&json!({"use_activation": false})).unwrap());
        assert!(!use_activation(&json!({"activation": false})).unwrap());
        assert!(use_activation(&json!({"use_activation": "no"})).is_err());
        let p = activate(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p[2] > p[1]);
        assert!((activate(&[0.0])[0] - 0.5).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
    }
}
