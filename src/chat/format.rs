//! Input records: the SteerLM seed format (`conversations` with `from`/`value`)
//! and the OpenAI format (`messages` with `role`/`content`).

use serde_json::Value;

use super::RecordError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    /// The name the SteerLM template writes after `<extra_id_1>`.
    pub fn template_name(self) -> &'static str {
        match self {
            Role::User => "User",
            Role::Assistant => "Assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

/// A conversation to score: its turns, and the record's own system text if it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub system: Option<String>,
    pub turns: Vec<Turn>,
}

impl Conversation {
    /// Indices (into `turns`) of the assistant turns: the ones that get a score.
    pub fn assistant_turns(&self) -> Vec<usize> {
        self.turns.iter().enumerate().filter(|(_, t)| t.role == Role::Assistant).map(|(i, _)| i).collect()
    }
}

fn invalid(message: String) -> RecordError {
    RecordError::new("invalid_record", message)
}

/// Read one record in either format. Every error names the field at fault.
pub fn parse_record(record: &Value) -> Result<Conversation, RecordError> {
    let obj = record
        .as_object()
        .ok_or_else(|| invalid(format!("a record must be a JSON object, got {}", kind_of(record))))?;
    let conv = match (obj.get("conversations"), obj.get("messages")) {
        (Some(turns), None) => parse_seed(turns, obj.get("system"))?,
        (None, Some(messages)) => parse_openai(messages)?,
        (Some(_), Some(_)) => {
            return Err(invalid("a record has either `conversations` or `messages`, not both".into()))
        }
        (None, None) => {
            return Err(invalid("a record needs `conversations` (seed format) or `messages` (OpenAI format)".into()))
        }
    };
    if conv.assistant_turns().is_empty() {
        return Err(RecordError::new("no_assistant_turn", "the conversation has no assistant turn to score"));
    }
    Ok(conv)
}

fn parse_seed(turns: &Value, system: Option<&Value>) -> Result<Conversation, RecordError> {
    let items =
        turns.as_array().ok_or_else(|| invalid(format!("`conversations` must be an array, got {}", kind_of(turns))))?;
    let mut system = match system {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(invalid(format!("`system` must be a string, got {}", kind_of(other)))),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("conversations[{i}]");
        let role = string_field(item, "from", &at)?;
        let text = string_field(item, "value", &at)?;
        match speaker(role, &format!("{at}.from"))? {
            Speaker::System => set_system(&mut system, text.to_owned(), !out.is_empty(), &at)?,
            Speaker::Turn(role) => out.push(Turn { role, text: text.to_owned() }),
        }
    }
    Ok(Conversation { system, turns: out })
}

fn parse_openai(messages: &Value) -> Result<Conversation, RecordError> {
    let items = messages
        .as_array()
        .ok_or_else(|| invalid(format!("`messages` must be an array, got {}", kind_of(messages))))?;
    let mut system = None;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = string_field(item, "role", &at)?;
        let text = content_text(item, &at)?;
        match speaker(role, &format!("{at}.role"))? {
            Speaker::System => set_system(&mut system, text, !out.is_empty(), &at)?,
            Speaker::Turn(role) => out.push(Turn { role, text }),
        }
    }
    Ok(Conversation { system, turns: out })
}

/// Who speaks in a message or turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    System,
    Turn(Role),
}

/// The one role rule of every format and route: names are case-insensitive;
/// `system` / `developer` is the system text, `user` / `human` the user,
/// `assistant` / `gpt` the assistant (ShareGPT's names). Anything else is `unknown_role`.
pub fn speaker(role: &str, at: &str) -> Result<Speaker, RecordError> {
    match role.to_ascii_lowercase().as_str() {
        "system" | "developer" => Ok(Speaker::System),
        "user" | "human" => Ok(Speaker::Turn(Role::User)),
        "assistant" | "gpt" => Ok(Speaker::Turn(Role::Assistant)),
        _ => Err(RecordError::new(
            "unknown_role",
            format!("{at}: unknown role `{role}` (expected system, user or assistant, in any case)"),
        )),
    }
}

/// A system message: one, before the first turn. A second is refused rather
/// than one of the two being dropped silently (and the seed format's `system`
/// field counts as one).
fn set_system(system: &mut Option<String>, text: String, after_turns: bool, at: &str) -> Result<(), RecordError> {
    if after_turns {
        return Err(invalid(format!("{at}: a system message may only come before the first turn")));
    }
    if system.is_some() {
        return Err(invalid(format!("{at}: a second system message; send one (the record already has a system text)")));
    }
    *system = Some(text);
    Ok(())
}

fn string_field<'a>(item: &'a Value, field: &str, at: &str) -> Result<&'a str, RecordError> {
    match item.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid(format!("{at}.{field} must be a string, got {}", kind_of(other)))),
        None if item.is_object() => Err(invalid(format!("{at} has no `{field}`"))),
        None => Err(invalid(format!("{at} must be an object, got {}", kind_of(item)))),
    }
}

/// OpenAI `content`: a string, or an array of `{"type": "text", "text": ...}` parts.
fn content_text(item: &Value, at: &str) -> Result<String, RecordError> {
    match item.get("content") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let part_at = format!("{at}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(string_field(part, "text", &part_at)?),
                    _ => return Err(invalid(format!("{part_at}: only text parts can be scored"))),
                }
            }
            Ok(text)
        }
        Some(other) => {
            Err(invalid(format!("{at}.content must be a string or an array of text parts, got {}", kind_of(other))))
        }
        None => Err(invalid(format!("{at} has no `content`"))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_formats_give_the_same_conversation() {
        let seed = json!({"conversations": [{"from": "User", "value": "hi", "label": null},
                                            {"from": "Assistant", "value": "hello", "label": "x"}],
                          "system": "s", "mask": "User"});
        let openai = json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]});
        assert_eq!(parse_record(&seed).unwrap(), parse_record(&openai).unwrap());
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_record(&json!({"messages": [{"role": "user", "content": 3}]})).unwrap_err();
        assert_eq!(err.code, "invalid_record");
        assert!(err.message.contains("messages[0].content"), "{}", err.message);
        let err = parse_record(&json!({"conversations": [{"from": "Robot", "value": "x"}]})).unwrap_err();
        assert_eq!(err.code, "unknown_role");
        assert!(err.message.contains("conversations[0].from") && err.message.contains("Robot"));
        let err = parse_record(&json!({"conversations": [{"from": "User", "value": "x"}]})).unwrap_err();
        assert_eq!(err.code, "no_assistant_turn");
        let err = parse_record(&json!([1, 2])).unwrap_err();
        assert!(err.message.contains("JSON object"));
        let err = parse_record(&json!({"conversations": "nope"})).unwrap_err();
        assert!(err.message.contains("`conversations` must be an array"));
    }
}
