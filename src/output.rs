//! What a scored record becomes: its turns' rewards through the shared
//! [`RewardPipeline`] and the JSON object `score` prints per line. The service
//! (`/v1/rewards`) answers with the same objects, so both agree to the last bit.

use serde_json::{json, Value};

use crate::chat::RecordError;
use crate::engine::RecordScores;
use crate::reward::{
    Normalize, RewardBatch, RewardError, RewardInput, RewardOutput, RewardOverride, RewardPipeline, ATTRIBUTES,
    HELPSTEER_ATTRIBUTES,
};

/// A scored record and the group its rewards are normalised in.
#[derive(Debug, Clone)]
pub struct Scored {
    pub scores: RecordScores,
    pub group: Option<String>,
}

/// A record's output line (with its token count) or its error.
pub type Rendered = Result<(Value, usize), RecordError>;

/// Whether the pipeline normalises within groups (then every record needs one).
pub fn needs_group(pipeline: &RewardPipeline) -> bool {
    matches!(pipeline.config().normalize, Normalize::Group { .. })
}

/// A record's `group` (string or number), read only when group normalisation needs it.
pub fn record_group(record: &Value, needs_group: bool) -> Result<Option<String>, RecordError> {
    if !needs_group {
        return Ok(None);
    }
    match record.get("group") {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        None | Some(Value::Null) => Err(RecordError::new(
            "missing_group",
            "group normalisation needs a `group` (string or number) on every record",
        )),
        Some(_) => Err(RecordError::new("invalid_record", "`group` must be a string or a number")),
    }
}

/// Rewards for scored rows `(index, row)` in one pipeline call (so batch and
/// group normalisation see all of them); each row becomes its JSON object or
/// its error. A bad request override (unknown preset, wrong weights) fails the call.
pub fn render_rows(
    rows: Vec<(usize, Result<Scored, RecordError>)>,
    pipeline: &mut RewardPipeline,
    request: &RewardOverride,
) -> Result<Vec<(usize, Rendered)>, RewardError> {
    let inputs: Vec<RewardInput> = rows
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flat_map(|s| s.scores.turns.iter().map(|t| RewardInput { raw: t.raw, group: s.group.clone(), turn: t.turn }))
        .collect();
    let batch = pipeline.rewards(&inputs, request)?;
    let mut results = batch.results.iter();
    Ok(rows
        .into_iter()
        .map(|(index, row)| {
            let line = row.and_then(|s| {
                // Take this record's results first, so a failed turn keeps the rest aligned.
                let mine: Vec<_> = s
                    .scores
                    .turns
                    .iter()
                    .map(|_| results.next().expect("one reward per turn: this is a bug"))
                    .collect();
                let outputs: Vec<&RewardOutput> = mine
                    .into_iter()
                    .map(Result::as_ref)
                    .collect::<Result<_, _>>()
                    .map_err(|e| RecordError::new(e.code(), e.to_string()))?;
                Ok((record_json(index, &s.scores, &outputs, &batch), s.scores.tokens))
            });
            (index, line)
        })
        .collect())
}

/// `{"index", "turns": [{"turn", "raw", "attributes", "reward"[, "calibrated"]}],
///   "tokens", "weights", "transform"[, "truncated"]}`
pub fn record_json(index: usize, scores: &RecordScores, outputs: &[&RewardOutput], batch: &RewardBatch) -> Value {
    let turns: Vec<Value> = scores
        .turns
        .iter()
        .zip(outputs)
        .map(|(t, out)| {
            let mut turn =
                json!({"turn": t.turn, "raw": t.raw, "attributes": attributes_json(&t.raw), "reward": out.reward});
            if let Some(c) = out.calibrated {
                turn["calibrated"] = json!(c);
            }
            turn
        })
        .collect();
    let mut out = json!({"index": index, "turns": turns, "tokens": scores.tokens,
                         "weights": batch.weights.0, "transform": batch.transform});
    if scores.truncated() {
        out["truncated"] = json!(true);
    }
    out
}

/// The five HelpSteer attributes by name.
pub fn attributes_json(raw: &[f32; 9]) -> serde_json::Map<String, Value> {
    HELPSTEER_ATTRIBUTES.map(|i| (ATTRIBUTES[i].to_string(), json!(raw[i]))).collect()
}
