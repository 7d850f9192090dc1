//! The token embedding, split by vocabulary over the tensor-parallel ranks.
//!
//! Each rank holds the rows of a contiguous range of token ids (see
//! [`crate::parallel::ShardPlan`]), looks up the ids that fall in its range and
//! writes zeros for the others; one all-reduce sums the parts into the full
//! lookup. Exactly one rank contributes each row, so the sum is exact. With one
//! rank the range is the whole vocabulary and the all-reduce is a no-op.
//!
//! Why split rather than replicate: Nemotron-4-340B's table is 256000 x 18432,
//! 9.44 GB in bf16. Replicated, every first-stage rank of TP8 x PP2 would hold
//! 41.5 + 9.4 = 50.9 GB of weights; split, 41.5 + 1.2 = 42.6 GB, for one
//! all-reduce of the hidden states per batch.

use tch::{Device, Kind, Tensor};

use super::{Config, ModelError, Weights};
use crate::parallel::{Comm, ShardPlan};

pub struct VocabEmbedding {
    /// Rows `start..start + rows` of `model.embed_tokens.weight`.
    table: Tensor,
    start: i64,
    rows: i64,
    vocab: i64,
}

impl VocabEmbedding {
    /// Its table, for sleep and wake (`super::sleep`).
    pub(crate) fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        vec![&mut self.table]
    }

    pub fn load(
        w: &Weights,
        cfg: &Config,
        plan: &ShardPlan,
        kind: Kind,
        device: Device,
    ) -> Result<VocabEmbedding, ModelError> {
        let shape = [cfg.vocab_size, cfg.hidden_size];
        let table =
            w.get_range("model.embed_tokens.weight", &shape, 0, plan.vocab_start, plan.vocab_rows, kind, device)?;
        Ok(VocabEmbedding { table, start: plan.vocab_start, rows: plan.vocab_rows, vocab: cfg.vocab_size })
    }

    /// `[T, hidden]` embeddings of `ids` (`[T]`, int64), summed over the ranks by `comm`.
    pub fn forward(&self, ids: &Tensor, comm: &dyn Comm) -> Result<Tensor, ModelError> {
        check_token_ids(ids, self.vocab)?;
        let local = ids.f_sub_scalar(self.start)?;
        let outside = local.f_lt(0)?.f_logical_or(&local.f_ge(self.rows)?)?;
        let part = if self.rows == 0 {
            Tensor::f_zeros([ids.size()[0], self.table.size()[1]], (self.table.kind(), self.table.device()))?
        } else {
            let rows = self.table.f_index_select(0, &local.f_clamp(0, self.rows - 1)?)?;
            rows.f_masked_fill(&outside.f_unsqueeze(1)?, 0.0)?
        };
        comm.all_reduce(&part).map_err(|e| ModelError::Device(e.to_string()))
    }
}

/// Every id of `ids` must be a row of the embedding (`0..vocab`).
pub fn check_token_ids(ids: &Tensor, vocab: i64) -> Result<(), ModelError> {
    if ids.numel() == 0 {
        return Ok(());
    }
    let (low, high) = (i64::try_from(ids.f_min()?)?, i64::try_from(ids.f_max()?)?);
    let bad = if low < 0 { low } else { high };
    if low < 0 || high >= vocab {
        return Err(ModelError::Config(format!("token id {bad} is outside the vocabulary [0, {vocab})")));
    }
    Ok(())
}
