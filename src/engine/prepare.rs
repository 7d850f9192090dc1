//! Records -> token sequences, on any thread: parsing, the SteerLM template,
//! tokenisation and the one-pass layout. Nothing here touches a tensor, so a
//! [`Preparer`] is shared (`Arc`) by the threads that read input or take
//! requests while the model thread runs the previous batch.

use serde_json::Value;

use crate::chat::{self, layout_conversation, template, ChatTokenizer, RecordError, Sequence, Truncate};

/// How records are turned into token sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScoreOptions {
    pub truncate: Truncate,
    /// Render the record's own system text instead of the SteerLM constant.
    pub use_record_system: bool,
    /// Neither read nor fill the prefix cache for these records.
    pub bypass_prefix_cache: bool,
}

/// A record ready for the model.
#[derive(Debug, Clone)]
pub struct PreparedRecord {
    pub sequences: Vec<Sequence>,
    /// Scored apart from the prefix cache (a request's `"prefix_cache": false`).
    pub bypass_cache: bool,
}

impl PreparedRecord {
    /// Tokens the forward pass would process for this record scored on its own
    /// (real tokens + one probe per scored turn).
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(Sequence::len).sum()
    }

    /// Tokens of every scored prefix counted as if scored alone (prefix + score token).
    pub fn useful_tokens(&self) -> usize {
        self.sequences.iter().flat_map(|s| s.probes.iter()).map(|&(_, prefix)| prefix as usize + 1).sum()
    }

    /// Scored turns.
    pub fn turns(&self) -> usize {
        self.sequences.iter().map(|s| s.probes.len()).sum()
    }
}

/// The tokenizer and the limits of the model it belongs to.
pub struct Preparer {
    pub tokenizer: ChatTokenizer,
    /// The model's context length (`max_position_embeddings`).
    pub context: usize,
    /// The model's vocabulary size: token ids sent by clients must be below it.
    pub vocab_size: usize,
}

impl Preparer {
    /// Parse, render and tokenise one record.
    pub fn prepare(&self, record: &Value, opts: ScoreOptions) -> Result<PreparedRecord, RecordError> {
        let conv = chat::parse_record(record)?;
        let header = self.encode(&template::header(template::system_text(&conv, opts.use_record_system)))?;
        let turns = conv.turns.iter().map(|t| self.encode(&template::turn(t))).collect::<Result<Vec<_>, _>>()?;
        let sequences = layout_conversation(
            &header,
            &turns,
            &conv.assistant_turns(),
            self.tokenizer.score_id(),
            self.context,
            opts.truncate,
        )?;
        Ok(PreparedRecord { sequences, bypass_cache: opts.bypass_prefix_cache })
    }

    /// A text already rendered by the client (KServe `sentences`, OpenRLHF
    /// queries): tokenised as it is and scored at its last token, as NeMo-Aligner's
    /// server does (the text should end with `<extra_id_2>`).
    pub fn prepare_text(&self, text: &str) -> Result<PreparedRecord, RecordError> {
        let ids = self.encode(text)?;
        self.prepare_tokens(&ids)
    }

    /// Token ids sent by a client (KServe `tokens`), scored at the last one.
    pub fn prepare_tokens(&self, ids: &[i64]) -> Result<PreparedRecord, RecordError> {
        let Some((&last, prefix)) = ids.split_last() else {
            return Err(RecordError::new("invalid_record", "the token sequence is empty"));
        };
        if let Some((i, bad)) = ids.iter().enumerate().find(|(_, &t)| t < 0 || t as usize >= self.vocab_size) {
            return Err(RecordError::new(
                "invalid_record",
                format!("token {i} is {bad}, outside the vocabulary [0, {})", self.vocab_size),
            ));
        }
        if ids.len() > self.context {
            return Err(RecordError::new(
                "context_length_exceeded",
                format!("the sequence has {} tokens, the model's context is {}", ids.len(), self.context),
            ));
        }
        let probe = (last, prefix.len() as i64);
        let seq = Sequence { tokens: prefix.to_vec(), probes: vec![probe], turns: vec![0], truncated: false };
        Ok(PreparedRecord { sequences: vec![seq], bypass_cache: false })
    }

    fn encode(&self, text: &str) -> Result<Vec<i64>, RecordError> {
        self.tokenizer.encode(text).map_err(|e| RecordError::new("tokenizer_error", format!("cannot tokenise: {e}")))
    }
}
