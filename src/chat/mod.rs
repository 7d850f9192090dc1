//! The chat layer: input record formats, the SteerLM template, tokenisation and
//! the one-pass layout that scores every assistant turn of a conversation.

pub mod format;
pub mod layout;
pub mod template;
pub mod tokenizer;

pub use format::{parse_record, speaker, Conversation, Role, Speaker, Turn};
pub use layout::{layout_conversation, Sequence, Truncate};
pub use template::SYSTEM_PROMPT;
pub use tokenizer::ChatTokenizer;

/// A problem with one input record; never fatal to the records around it.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize)]
#[error("{code}: {message}")]
pub struct RecordError {
    pub code: &'static str,
    pub message: String,
}

impl RecordError {
    pub fn new(code: &'static str, message: impl Into<String>) -> RecordError {
        RecordError { code, message: message.into() }
    }
}
