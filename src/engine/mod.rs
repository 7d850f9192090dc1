//! The scoring engine: records in, nine raw attribute scores per assistant turn out.
//!
//! `prepare` turns a record into token sequences (cheap, per record, errors stay
//! with their record); `score` packs the sequences of many records into batches
//! by a token budget and runs the model once per batch.

pub mod source;

pub use source::ModelSource;

use serde_json::Value;
use std::sync::Arc;
use tch::Device;

use crate::batching::plan_batches;
use crate::chat::{self, layout_conversation, template, ChatTokenizer, RecordError, Sequence, Truncate};
use crate::model::{DType, ModelError, NemotronRewardModel, PackedBatch, SeqInput};
use crate::parallel::SingleRank;

/// How records are turned into token sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScoreOptions {
    pub truncate: Truncate,
    /// Render the record's own system text instead of the SteerLM constant.
    pub use_record_system: bool,
}

/// A record ready for the model.
#[derive(Debug, Clone)]
pub struct PreparedRecord {
    pub sequences: Vec<Sequence>,
}

impl PreparedRecord {
    /// Tokens the forward pass processes for this record.
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(Sequence::len).sum()
    }

    /// Tokens of every scored prefix counted as if scored alone (prefix + score token).
    pub fn useful_tokens(&self) -> usize {
        self.sequences.iter().flat_map(|s| s.probes.iter()).map(|&(_, prefix)| prefix as usize + 1).sum()
    }
}

/// The nine raw outputs for one assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnScore {
    /// Index of the turn in the record's turn list.
    pub turn: usize,
    pub raw: [f32; 9],
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordScores {
    pub turns: Vec<TurnScore>,
    pub tokens: usize,
}

impl RecordScores {
    pub fn truncated(&self) -> bool {
        self.turns.iter().any(|t| t.truncated)
    }
}

/// A loaded model with its tokenizer, on one device.
pub struct Scorer {
    pub model: NemotronRewardModel,
    pub tokenizer: ChatTokenizer,
    pub name: String,
}

impl Scorer {
    pub fn load(source: &ModelSource, dtype: DType, device: Device) -> Result<Scorer, ModelError> {
        let (config, tokenizer, weights) = source.load()?;
        if tokenizer.vocab_size() > config.vocab_size as usize {
            return Err(ModelError::Config(format!(
                "the tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let model = NemotronRewardModel::load(&config, &weights, dtype.kind(), device, Arc::new(SingleRank))?;
        Ok(Scorer { model, tokenizer, name: source.name() })
    }

    /// The model's context length (`max_position_embeddings`).
    pub fn context(&self) -> usize {
        self.model.config.max_position_embeddings as usize
    }

    /// Parse, render and tokenise one record.
    pub fn prepare(&self, record: &Value, opts: ScoreOptions) -> Result<PreparedRecord, RecordError> {
        let conv = chat::parse_record(record)?;
        let encode = |text: &str| {
            self.tokenizer
                .encode(text)
                .map_err(|e| RecordError::new("tokenizer_error", format!("cannot tokenise: {e}")))
        };
        let header = encode(&template::header(template::system_text(&conv, opts.use_record_system)))?;
        let turns = conv.turns.iter().map(|t| encode(&template::turn(t))).collect::<Result<Vec<_>, _>>()?;
        let sequences = layout_conversation(
            &header,
            &turns,
            &conv.assistant_turns(),
            self.tokenizer.score_id(),
            self.context(),
            opts.truncate,
        )?;
        Ok(PreparedRecord { sequences })
    }

    /// Score prepared records, batching their sequences by `batch_tokens`.
    /// A failed batch fails only the records that had a sequence in it.
    pub fn score(&self, records: &[&PreparedRecord], batch_tokens: usize) -> Vec<Result<RecordScores, RecordError>> {
        let seqs: Vec<(usize, &Sequence)> =
            records.iter().enumerate().flat_map(|(r, rec)| rec.sequences.iter().map(move |s| (r, s))).collect();
        let mut turns: Vec<Vec<TurnScore>> = vec![Vec::new(); records.len()];
        let mut failed: Vec<Option<RecordError>> = vec![None; records.len()];
        let lens: Vec<usize> = seqs.iter().map(|(_, s)| s.len()).collect();
        for range in plan_batches(&lens, batch_tokens) {
            let batch = &seqs[range];
            match self.run_batch(batch) {
                Ok(scores) => {
                    let mut rows = scores.into_iter();
                    for (r, seq) in batch {
                        for &turn in &seq.turns {
                            let raw = rows.next().expect("one score row per probe: this is a bug");
                            turns[*r].push(TurnScore { turn, raw, truncated: seq.truncated });
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "batch failed");
                    for (r, _) in batch {
                        failed[*r] = Some(RecordError::new("model_error", e.to_string()));
                    }
                }
            }
        }
        turns
            .into_iter()
            .zip(failed)
            .zip(records)
            .map(|((mut turns, failed), rec)| match failed {
                Some(e) => Err(e),
                None => {
                    turns.sort_by_key(|t| t.turn);
                    Ok(RecordScores { turns, tokens: rec.tokens() })
                }
            })
            .collect()
    }

    fn run_batch(&self, batch: &[(usize, &Sequence)]) -> Result<Vec<[f32; 9]>, ModelError> {
        let inputs: Vec<SeqInput> =
            batch.iter().map(|(_, s)| SeqInput { tokens: &s.tokens, probes: &s.probes }).collect();
        let packed = PackedBatch::pack(&inputs, self.model.device)?;
        let scores = self.model.forward(&packed)?;
        let flat = Vec::<f32>::try_from(scores.f_flatten(0, -1)?)?;
        Ok(flat.chunks_exact(9).map(|c| c.try_into().expect("chunks of 9")).collect())
    }
}
