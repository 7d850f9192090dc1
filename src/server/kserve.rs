//! KServe v2 / Triton HTTP, with the inputs and outputs of NeMo-Aligner's
//! reward server, so its PPO actor (a Triton client) uses the worker unchanged.
//!
//! `POST /v2/models/reward_model/infer` takes either
//! - `sentences`: BYTES [B, 1] (or [B]), texts the client rendered; each is
//!   tokenised as it is and scored at its last token (it should end with
//!   `<extra_id_2>`, as NeMo's client renders it), or
//! - `tokens`: INT64 [B, L], right-padded, with `sequence_lengths`: INT64
//!   [B, 1] (as NeMo-Aligner sends it) or [B]; row b is scored at its last real
//!   token `tokens[b, len_b - 1]`, as NeMo does,
//!
//! and answers `rewards`: FP32 [B, 9] raw attributes, or [B, 1] through the
//! configured reward pipeline when the service merges attributes (NeMo's
//! `merge_attributes`). Tensors travel as JSON or with the binary tensor
//! extension, both ways. Also: `/v2`, `/v2/health/ready`, and the model's
//! `ready`, metadata and `config`. Errors are `{"error": "code: message"}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::errors::{ApiError, V2Error};
use super::kserve_binary::{fp32_bytes, parse_request, TensorData, TensorIn, HEADER_LENGTH};
use super::limits::body_bytes;
use super::{responded, AppState};
use crate::reward::{RewardInput, RewardOverride};
use crate::scheduler::Input;

/// The model name NeMo-Aligner's reward server registers with Triton.
pub const MODEL: &str = "reward_model";

pub fn routes() -> Router<AppState> {
    let model = format!("/v2/models/{MODEL}");
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/ready", get(server_ready))
        .route(&model, get(model_metadata))
        .route(&format!("{model}/versions/1"), get(model_metadata))
        .route(&format!("{model}/ready"), get(server_ready))
        .route(&format!("{model}/versions/1/ready"), get(server_ready))
        .route(&format!("{model}/config"), get(model_config))
        .route(&format!("{model}/versions/1/config"), get(model_config))
        .route(&format!("{model}/infer"), post(infer))
        .route(&format!("{model}/versions/1/infer"), post(infer))
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "reward-worker", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]}))
}

async fn server_ready(State(app): State<AppState>) -> StatusCode {
    if app.queue.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn reward_width(app: &AppState) -> usize {
    if app.config.merge_attributes {
        1
    } else {
        9
    }
}

async fn model_metadata(State(app): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": MODEL,
        "versions": ["1"],
        "platform": "reward-worker",
        "inputs": [
            {"name": "sentences", "datatype": "BYTES", "shape": [-1, 1]},
            {"name": "tokens", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "sequence_lengths", "datatype": "INT64", "shape": [-1, 1]},
        ],
        "outputs": [{"name": "rewards", "datatype": "FP32", "shape": [-1, reward_width(&app)]}],
    }))
}

async fn model_config(State(app): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": MODEL,
        "platform": "reward-worker",
        "backend": app.queue.model().describe,
        "max_batch_size": app.config.max_conversations,
        "input": [
            {"name": "sentences", "data_type": "TYPE_STRING", "dims": [1], "optional": true},
            {"name": "tokens", "data_type": "TYPE_INT64", "dims": [-1], "optional": true},
            {"name": "sequence_lengths", "data_type": "TYPE_INT64", "dims": [1], "optional": true},
        ],
        "output": [{"name": "rewards", "data_type": "TYPE_FP32", "dims": [reward_width(&app)]}],
        "parameters": {"merge_attributes": {"string_value": app.config.merge_attributes.to_string()},
                       "max_sequence_length": {"string_value": app.queue.model().context.to_string()}},
    }))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_tensor", message)
}

pub async fn infer(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, V2Error> {
    let bytes = body_bytes(body, app.config.max_body_bytes)?;
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| bad(format!("{HEADER_LENGTH} must be a byte count")))?,
        ),
    };
    let request = parse_request(&bytes, header_length)?;
    let binary = wants_binary(&request.header)?;
    let (inputs, item) = inputs_of(request.inputs, app.config.max_conversations)?;
    let batch = inputs.len();
    let reply = app.score(&headers, inputs, app.config.options, item).await?;
    let last: Vec<[f32; 9]> = reply
        .results
        .iter()
        .map(|r| r.as_ref().expect("errors were turned into ApiError above").turns.last().expect("one scored turn").raw)
        .collect();
    let values: Vec<f32> = if app.config.merge_attributes {
        let items: Vec<RewardInput> = last.iter().map(|raw| RewardInput { raw: *raw, group: None, turn: 0 }).collect();
        let out = app
            .pipeline
            .lock()
            .expect("the reward pipeline lock is never poisoned")
            .rewards(&items, &RewardOverride::default())
            .map_err(ApiError::from)?;
        out.results.into_iter().map(|r| r.map(|o| o.reward as f32)).collect::<Result<_, _>>().map_err(ApiError::from)?
    } else {
        last.iter().flatten().copied().collect()
    };
    let shape = [batch, values.len() / batch.max(1)];
    let mut output = json!({"name": "rewards", "datatype": "FP32", "shape": shape});
    let mut response = json!({"model_name": MODEL, "model_version": "1"});
    if let Some(id) = request.header.get("id") {
        response["id"] = id.clone();
    }
    responded(&reply);
    if !binary {
        output["data"] = json!(values);
        response["outputs"] = json!([output]);
        return Ok(Json(response).into_response());
    }
    let data = fp32_bytes(&values);
    output["parameters"] = json!({"binary_data_size": data.len()});
    response["outputs"] = json!([output]);
    let head = response.to_string();
    let length = HeaderValue::from(head.len());
    let body = [head.into_bytes(), data].concat();
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (HEADER_LENGTH.parse().expect("a valid header name"), length),
        ],
        body,
    )
        .into_response())
}

/// Whether `rewards` goes back as binary: per output (`parameters.binary_data`)
/// or for the whole request (`parameters.binary_data_output`).
fn wants_binary(header: &Value) -> Result<bool, ApiError> {
    let mut binary = header.pointer("/parameters/binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    if let Some(outputs) = header.get("outputs") {
        let outputs = outputs.as_array().ok_or_else(|| bad("`outputs` must be an array"))?;
        for output in outputs {
            match output.get("name").and_then(Value::as_str) {
                Some("rewards") => {}
                Some(other) => return Err(bad(format!("unknown output `{other}`; this model has `rewards`"))),
                None => return Err(bad("every requested output needs a `name`")),
            }
            if let Some(b) = output.pointer("/parameters/binary_data").and_then(Value::as_bool) {
                binary = b;
            }
        }
    }
    Ok(binary)
}

/// The items to score from the decoded tensors, and what to call one in errors.
fn inputs_of(tensors: Vec<TensorIn>, max: usize) -> Result<(Vec<Input>, &'static str), ApiError> {
    let (mut sentences, mut tokens, mut lengths) = (None, None, None);
    for t in tensors {
        let slot = match t.name.as_str() {
            "sentences" => &mut sentences,
            "tokens" => &mut tokens,
            "sequence_lengths" => &mut lengths,
            other => {
                return Err(bad(format!(
                    "unknown input `{other}`; this model takes `sentences` or `tokens` + `sequence_lengths`"
                )))
            }
        };
        if slot.replace(t).is_some() {
            return Err(bad("an input is given twice"));
        }
    }
    match (sentences, tokens, lengths) {
        (Some(s), None, None) => Ok((sentence_inputs(s, max)?, "sentences")),
        (None, Some(t), Some(l)) => Ok((token_inputs(t, l, max)?, "tokens")),
        (None, Some(_), None) => Err(bad("`tokens` needs `sequence_lengths` (INT64 [B, 1] or [B])")),
        (Some(_), Some(_), _) => Err(bad("send either `sentences` or `tokens`, not both")),
        (None, None, Some(_)) => Err(bad("`sequence_lengths` needs `tokens`")),
        (None, None, None) => {
            Err(bad("the request needs `sentences` (BYTES) or `tokens` + `sequence_lengths` (INT64)"))
        }
        (Some(_), None, Some(_)) => Err(bad("`sequence_lengths` goes with `tokens`, not `sentences`")),
    }
}

/// [B, 1] or [B]: B.
fn column(t: &TensorIn) -> Result<usize, ApiError> {
    match t.shape.as_slice() {
        [b] | [b, 1] => Ok(*b),
        other => Err(bad(format!("`{}` must have shape [B, 1] or [B], got {other:?}", t.name))),
    }
}

fn check_batch(b: usize, max: usize) -> Result<(), ApiError> {
    if b == 0 {
        return Err(bad("the batch is empty: nothing to score"));
    }
    if b > max {
        return Err(ApiError::bad_request(
            "too_many_items",
            format!("the batch has {b} rows; the limit is {max} per request"),
        ));
    }
    Ok(())
}

fn sentence_inputs(t: TensorIn, max: usize) -> Result<Vec<Input>, ApiError> {
    let b = column(&t)?;
    check_batch(b, max)?;
    let TensorData::Bytes(items) = t.data else {
        return Err(bad("`sentences` must be BYTES"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            String::from_utf8(bytes).map(Input::Text).map_err(|e| {
                ApiError::bad_request(
                    "invalid_utf8",
                    format!("sentences[{i}] is not UTF-8 (bad byte at offset {})", e.utf8_error().valid_up_to()),
                )
            })
        })
        .collect()
}

fn token_inputs(tokens: TensorIn, lengths: TensorIn, max: usize) -> Result<Vec<Input>, ApiError> {
    let [b, l] = tokens.shape[..] else {
        return Err(bad(format!("`tokens` must have shape [B, L], got {:?}", tokens.shape)));
    };
    check_batch(b, max)?;
    if l == 0 {
        return Err(bad("`tokens` has rows of length 0: nothing to score"));
    }
    if column(&lengths)? != b {
        return Err(bad(format!("`sequence_lengths` has {} rows but `tokens` has {b}", column(&lengths)?)));
    }
    let (TensorData::Int64(ids), TensorData::Int64(lens)) = (tokens.data, lengths.data) else {
        return Err(bad("`tokens` and `sequence_lengths` must be INT64"));
    };
    ids.chunks_exact(l)
        .zip(lens)
        .enumerate()
        .map(|(i, (row, len))| {
            if len < 1 || len as usize > l {
                return Err(bad(format!("sequence_lengths[{i}] is {len}; it must be between 1 and L = {l}")));
            }
            Ok(Input::Tokens(row[..len as usize].to_vec()))
        })
        .collect()
}
