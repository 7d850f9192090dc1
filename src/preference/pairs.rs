//! Preference pair lines: `{"prompt", "chosen", "rejected", "subset"[, "id"]}`.
//!
//! `prompt` is a string (one user turn) or a message list; `chosen` and
//! `rejected` are a string (one assistant turn) or a message list. A response
//! list that does not start with an assistant message is taken as the whole
//! conversation (the UltraFeedback-binarized layout, where `chosen` repeats the
//! prompt) and `prompt` is then not used. Messages are `{role, content}` or
//! `{from, value}`. The score of a side is the score of its last assistant turn.

use serde_json::{json, Map, Value};

use super::PreferenceError;
use crate::chat::{parse_record, Truncate};
use crate::config::DType;
use crate::engine::ScoreOptions;
use crate::files::fingerprint::Fnv64;

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// 1-based line number in the pairs file.
    pub line: usize,
    pub id: Option<Value>,
    pub subset: String,
    /// Records in the OpenAI `messages` format, ready for `Scorer::prepare`.
    pub chosen: Value,
    pub rejected: Value,
    /// Hash of what the pair is scored with ([`scoring_identity`]) and its
    /// texts: a cache entry's identity.
    pub key: String,
}

/// The subset name used when a pair has none.
pub const NO_SUBSET: &str = "unspecified";

/// Everything besides the texts that changes a pair's raw scores: the model's
/// files ([`crate::files::fingerprint`]), the dtype, and the template options.
pub fn scoring_identity(model_fingerprint: &str, dtype: DType, opts: ScoreOptions) -> String {
    let truncate = match opts.truncate {
        Truncate::None => "none",
        Truncate::Left => "left",
    };
    let system = if opts.use_record_system { "record" } else { "steerlm" };
    let dtype = format!("{dtype:?}").to_lowercase();
    format!("model={model_fingerprint};dtype={dtype};truncate={truncate};system={system}")
}

/// A pair line as read (bytes): `invalid_utf8` names the byte.
pub fn parse_pair_bytes(line: usize, bytes: &[u8], scoring: &str) -> Result<Pair, PreferenceError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        PreferenceError::line(line, format!("invalid_utf8: not valid UTF-8 (byte {})", e.valid_up_to() + 1))
    })?;
    parse_pair(line, text, scoring)
}

/// `scoring` is [`scoring_identity`] (any string in tests): it goes into the key.
pub fn parse_pair(line: usize, text: &str, scoring: &str) -> Result<Pair, PreferenceError> {
    let err = |m: String| PreferenceError::line(line, m);
    if text.trim().is_empty() {
        return Err(err("empty line".into()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| err(format!("invalid_json: {e}")))?;
    let obj = value.as_object().ok_or_else(|| err("a pair must be a JSON object".into()))?;
    let field = |name: &str| -> Result<&Value, PreferenceError> {
        obj.get(name).filter(|v| !v.is_null()).ok_or_else(|| err(format!("missing `{name}`")))
    };
    let chosen = field("chosen")?;
    let rejected = field("rejected")?;
    let prompt = obj.get("prompt").filter(|v| !v.is_null());
    let subset = match obj.get("subset") {
        None | Some(Value::Null) => NO_SUBSET.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(err("`subset` must be a string".into())),
    };
    Ok(Pair {
        line,
        id: obj.get("id").cloned(),
        subset,
        chosen: conversation(prompt, chosen, "chosen").map_err(err)?,
        rejected: conversation(prompt, rejected, "rejected").map_err(err)?,
        key: pair_key(scoring, prompt, chosen, rejected),
    })
}

/// FNV-1a 64 of the scoring identity and the JSON of the texts: stable across
/// runs, platforms and Rust versions, unlike `DefaultHasher`. The subset and
/// id are not in it: they are not scored, and always come from the pairs file.
pub fn pair_key(scoring: &str, prompt: Option<&Value>, chosen: &Value, rejected: &Value) -> String {
    let mut hash = Fnv64::default();
    hash.write(json!([scoring, prompt, chosen, rejected]).to_string().as_bytes());
    format!("{:016x}", hash.finish())
}

fn conversation(prompt: Option<&Value>, response: &Value, field: &str) -> Result<Value, String> {
    let mut messages = Vec::new();
    let whole = match response {
        Value::Array(items) => items.first().map(|m| role_of(m).is_some_and(|r| !is_assistant(r))).unwrap_or(false),
        _ => false,
    };
    if !whole {
        match prompt {
            None => {}
            Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
            Some(Value::Array(items)) => messages.extend(normalise(items, "prompt")?),
            Some(_) => return Err("`prompt` must be a string or a list of messages".into()),
        }
    }
    match response {
        Value::String(s) => messages.push(json!({"role": "assistant", "content": s})),
        Value::Array(items) => messages.extend(normalise(items, field)?),
        _ => return Err(format!("`{field}` must be a string or a list of messages")),
    }
    match messages.last().and_then(role_of) {
        Some(r) if is_assistant(r) => {}
        _ => return Err(format!("`{field}` must end with an assistant message")),
    }
    let record = json!({ "messages": messages });
    parse_record(&record).map_err(|e| format!("`{field}`: {}", e.message))?;
    Ok(record)
}

fn role_of(message: &Value) -> Option<&str> {
    message.get("role").or_else(|| message.get("from")).and_then(Value::as_str)
}

fn is_assistant(role: &str) -> bool {
    matches!(role.to_ascii_lowercase().as_str(), "assistant" | "gpt")
}

/// `{from, value}` -> `{role, content}`; `{role, content}` kept as is.
fn normalise(items: &[Value], field: &str) -> Result<Vec<Value>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, m)| match (m.get("from"), m.get("value")) {
            (Some(from), Some(value)) => {
                let mut out = Map::new();
                out.insert("role".into(), from.clone());
                out.insert("content".into(), value.clone());
                Ok(Value::Object(out))
            }
            _ if m.is_object() => Ok(m.clone()),
            _ => Err(format!("`{field}`[{i}] must be a message object")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_message_layouts_give_the_same_records() {
        let text = r#"{"prompt": "hi", "chosen": "hello", "rejected": "go away", "subset": "s"}"#;
        let lists = r#"{"prompt": [{"role": "user", "content": "hi"}],
                        "chosen": [{"from": "Assistant", "value": "hello"}],
                        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}"#;
        let a = parse_pair(1, text, "m").unwrap();
        let b = parse_pair(2, lists, "m").unwrap();
        assert_eq!(parse_record(&a.chosen).unwrap(), parse_record(&b.chosen).unwrap());
        assert_eq!(parse_record(&a.rejected).unwrap(), parse_record(&b.rejected).unwrap());
        assert_eq!(b.subset, NO_SUBSET);
        assert_ne!(a.key, parse_pair(1, text, "other-model").unwrap().key);
        let other_subset = text.replace("\"s\"", "\"t\"");
        assert_eq!(a.key, parse_pair(1, &other_subset, "m").unwrap().key, "the subset is not scored");
        let f32 = scoring_identity("abc", DType::F32, ScoreOptions::default());
        assert_eq!(f32, "model=abc;dtype=f32;truncate=none;system=steerlm");
        assert_ne!(f32, scoring_identity("abc", DType::Bf16, ScoreOptions::default()));
        assert_eq!(a.key, parse_pair(9, text, "m").unwrap().key);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let err = parse_pair(3, r#"{"prompt": "p", "chosen": "c"}"#, "m").unwrap_err();
        assert_eq!(err.to_string(), "line 3: missing `rejected`");
        let err = parse_pair(4, r#"{"prompt": "p", "chosen": 5, "rejected": "r"}"#, "m").unwrap_err();
        assert!(err.to_string().contains("line 4: `chosen` must be a string"), "{err}");
        let err = parse_pair(5, r#"{"chosen": [{"role": "user", "content": "q"}], "rejected": "r"}"#, "m").unwrap_err();
        assert!(err.to_string().contains("`chosen` must end with an assistant message"), "{err}");
        let err = parse_pair(6, "{oops", "m").unwrap_err();
        assert!(err.to_string().starts_with("line 6: invalid_json"), "{err}");
        let err = parse_pair_bytes(7, b"{\"prompt\": \"\xff\"}", "m").unwrap_err();
        assert_eq!(err.to_string(), "line 7: invalid_utf8: not valid UTF-8 (byte 13)");
    }
}
