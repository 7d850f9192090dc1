//! The SteerLM chat template of NeMo-Aligner's reward models, exactly.

use super::{Conversation, Turn};

/// The system prompt NeMo's SteerLM tooling always uses (it ignores the record's own).
pub const SYSTEM_PROMPT: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// The token appended after a turn to ask for its score.
pub const SCORE_TOKEN: &str = "<extra_id_2>";

/// `<extra_id_0>System\n{system}\n`
pub fn header(system: &str) -> String {
    format!("<extra_id_0>System\n{system}\n")
}

/// `<extra_id_1>{User|Assistant}\n{text}\n`
pub fn turn(t: &Turn) -> String {
    format!("<extra_id_1>{}\n{}\n", t.role.template_name(), t.text)
}

/// The system text to render: the constant, or the record's own when asked for.
pub fn system_text(conv: &Conversation, use_record_system: bool) -> &str {
    match (&conv.system, use_record_system) {
        (Some(s), true) => s,
        _ => SYSTEM_PROMPT,
    }
}

/// The full text that scores assistant turn `k` on its own (the reference semantics).
pub fn scored_prefix(conv: &Conversation, k: usize, use_record_system: bool) -> String {
    let mut text = header(system_text(conv, use_record_system));
    for t in &conv.turns[..=k] {
        text.push_str(&turn(t));
    }
    text.push_str(SCORE_TOKEN);
    text
}
