//! `POST /get_reward`: OpenRLHF's remote reward model protocol
//! (`remote_rm_fn` posts `{"query": [str], "prompts": [str], "labels": [..]}`
//! and reads `rewards`; newer versions also read `scores` and log `extra_logs`).
//!
//! # How a query string becomes a scored sequence
//!
//! OpenRLHF sends each query as one rendered string, prompt + response, in
//! whatever template the policy's prompts were rendered with. Its own
//! `serve_rm` tokenises that string as it is and appends the model's EOS, the
//! token its reward head reads. This route does the same where that is
//! meaningful for a SteerLM reward model, and refuses where it is not:
//!
//! 1. A query that contains `<extra_id_1>` is already in the SteerLM template
//!    (the policy's prompts were rendered with the reward model's template, the
//!    usual set-up for Nemotron rewards). It is tokenised as it is, and unless
//!    it already ends with `<extra_id_2>`, `\n<extra_id_2>` is appended: the
//!    template closes every turn with `\n` after its text, so a rendered prompt
//!    followed by the raw response (even an empty one, or one ending in a
//!    newline) scores exactly as the same conversation sent to `/v1/rewards`,
//!    as `serve_rm` appends the EOS its model reads. Only the last assistant
//!    turn is scored.
//! 2. Otherwise, if `prompts[i]` is given and the query starts with it, the
//!    query is split back into turns: the prompt is the user turn, the rest of
//!    the query the assistant turn, and the pair is rendered with the SteerLM
//!    template (plain-text prompts, OpenRLHF without `--apply_chat_template`).
//! 3. Otherwise the query is refused (400 naming `query[i]`): scoring text in a
//!    template the model was never trained on would give numbers that look
//!    fine and mean nothing.
//!
//! `rewards` and `scores` are the scalar rewards with the configured weights
//! and transform (with `group` normalisation, queries sharing a prompt form a
//! group, as GRPO wants); `extra_logs` holds the five HelpSteer attributes
//! per query, for the trainer's logs. `labels` are accepted and not used.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::limits::{body_bytes, bounded_array, json_body};
use super::{responded, AppState};
use crate::chat::template::SCORE_TOKEN;
use crate::reward::{Normalize, RewardInput, RewardOverride, ATTRIBUTES, HELPSTEER_ATTRIBUTES};
use crate::scheduler::Input;

pub async fn get_reward(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&body_bytes(body, app.config.max_body_bytes)?)?;
    let queries = bounded_array(&body, "query", app.config.max_conversations)?;
    let prompts = match body.get("prompts") {
        None | Some(Value::Null) => None,
        Some(Value::Array(p)) if p.len() == queries.len() => Some(p),
        Some(Value::Array(p)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("`prompts` has {} items but `query` has {}", p.len(), queries.len()),
            ))
        }
        Some(_) => return Err(ApiError::bad_request("invalid_request", "`prompts` must be an array of strings")),
    };
    let mut inputs = Vec::with_capacity(queries.len());
    let mut groups = Vec::with_capacity(queries.len());
    for (i, query) in queries.iter().enumerate() {
        let query = query
            .as_str()
            .ok_or_else(|| ApiError::bad_request("invalid_request", format!("query[{i}] must be a string")))?;
        let prompt = match prompts.map(|p| &p[i]) {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.as_str()),
            Some(_) => return Err(ApiError::bad_request("invalid_request", format!("prompts[{i}] must be a string"))),
        };
        inputs.push(
            query_input(query, prompt)
                .map_err(|m| ApiError::bad_request("unsupported_query", format!("query[{i}]: {m}")))?,
        );
        groups.push(prompt.map(str::to_owned));
    }
    let grouped = matches!(
        app.pipeline.lock().expect("the reward pipeline lock is never poisoned").config().normalize,
        Normalize::Group { .. }
    );
    if grouped {
        if let Some(i) = groups.iter().position(Option::is_none) {
            return Err(ApiError::bad_request(
                "missing_group",
                format!("group normalisation groups queries by their prompt, and prompts[{i}] is missing"),
            ));
        }
    }
    let reply = app.score(&headers, inputs, app.config.options, "query").await?;
    let items: Vec<RewardInput> = reply
        .results
        .iter()
        .zip(&groups)
        .map(|(r, group)| {
            let last =
                r.as_ref().expect("errors were turned into ApiError above").turns.last().expect("one scored turn");
            RewardInput { raw: last.raw, group: group.clone(), turn: 0 }
        })
        .collect();
    let batch = app
        .pipeline
        .lock()
        .expect("the reward pipeline lock is never poisoned")
        .rewards(&items, &RewardOverride::default())?;
    let rewards = batch
        .results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.map(|o| o.reward).map_err(|e| ApiError::from(e).at(&format!("query[{i}]"))))
        .collect::<Result<Vec<f64>, _>>()?;
    let extra_logs: serde_json::Map<String, Value> = HELPSTEER_ATTRIBUTES
        .map(|a| (ATTRIBUTES[a].to_string(), json!(items.iter().map(|it| it.raw[a]).collect::<Vec<_>>())))
        .collect();
    responded(&reply);
    Ok(Json(json!({"rewards": rewards, "scores": rewards, "extra_logs": extra_logs})).into_response())
}

/// What one query string is scored as (see the module docs).
pub fn query_input(query: &str, prompt: Option<&str>) -> Result<Input, String> {
    if query.contains("<extra_id_1>") {
        if query.ends_with(SCORE_TOKEN) {
            return Ok(Input::Text(query.to_owned()));
        }
        return Ok(Input::Text(format!("{query}\n{SCORE_TOKEN}")));
    }
    match prompt {
        Some(p) if query.starts_with(p) => Ok(Input::Record(json!({"conversations": [
            {"from": "User", "value": p},
            {"from": "Assistant", "value": &query[p.len()..]},
        ]}))),
        Some(_) => Err("is not in the SteerLM template (no <extra_id_1>) and does not start with its prompt".into()),
        None => Err("is not in the SteerLM template (no <extra_id_1>) and has no prompt to split it into turns".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steerlm_queries_get_the_turn_newline_and_the_score_token() {
        let q = "<extra_id_0>System\ns\n<extra_id_1>User\nhi\n<extra_id_1>Assistant\nhello";
        assert_eq!(query_input(q, None).unwrap(), Input::Text(format!("{q}\n<extra_id_2>")));
        // The template's own newline after the text, also after an empty or newline-ended response.
        let empty = "<extra_id_1>User\nhi\n<extra_id_1>Assistant\n";
        assert_eq!(query_input(empty, None).unwrap(), Input::Text(format!("{empty}\n<extra_id_2>")));
        let done = format!("{q}\n<extra_id_2>");
        assert_eq!(query_input(&done, None).unwrap(), Input::Text(done.clone()));
    }

    #[test]
    fn plain_queries_split_at_their_prompt() {
        let input = query_input("What is 2+2? It is 4.", Some("What is 2+2?")).unwrap();
        let Input::Record(record) = input else { panic!("a record") };
        assert_eq!(record["conversations"][0]["value"], "What is 2+2?");
        assert_eq!(record["conversations"][1]["value"], " It is 4.");
        assert!(query_input("plain text", None).unwrap_err().contains("no prompt"));
        assert!(query_input("plain text", Some("other")).unwrap_err().contains("does not start with its prompt"));
    }
}
