//! Per-rank shapes, computed in one place: which slice of each weight a
//! tensor-parallel rank holds ([`ShardPlan`]) and which layers a pipeline stage
//! holds ([`StagePlan`]).
//!
//! q/k/v and up_proj are split by output rows (column parallel), o_proj and
//! down_proj by input columns (row parallel). Key/value heads are split across
//! ranks, or replicated when there are more ranks than kv heads. The embedding
//! is split by vocabulary: each rank holds a contiguous range of rows (the last
//! ranks may hold fewer when the vocabulary does not divide), looks up the ids
//! that fall in it, and one all-reduce sums the lookups (one rank contributes
//! each row, the others zeros). For Nemotron-4-340B at TP8 that is 1.18 GB of
//! bf16 per rank instead of 9.44 GB replicated (256000 x 18432 x 2 bytes).

use std::ops::Range;

use crate::config::ParallelLayout;
use crate::model::{Config, ModelError};

/// Which slice of the model one tensor-parallel rank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub rank: usize,
    pub world: usize,
    /// Query heads on this rank.
    pub heads: i64,
    /// Key/value heads on this rank.
    pub kv_heads: i64,
    /// `(rank, world)` to slice k_proj / v_proj rows by: kv heads are cut into
    /// `kv_world` groups and this rank reads group `kv_rank`.
    pub kv_rank: usize,
    pub kv_world: usize,
    /// FFN width on this rank.
    pub ffn: i64,
    /// First embedding row (token id) on this rank, and how many rows.
    pub vocab_start: i64,
    pub vocab_rows: i64,
}

impl ShardPlan {
    pub fn new(cfg: &Config, rank: usize, world: usize) -> Result<ShardPlan, ModelError> {
        let w = world as i64;
        if world == 0 || rank >= world {
            return Err(ModelError::Config(format!("tensor parallel size {world}: rank {rank} is out of range")));
        }
        ParallelLayout { tp: world, pp: 1 }.validate(cfg)?;
        let (kv_heads, kv_rank, kv_world) = if cfg.num_kv_heads >= w {
            (cfg.num_kv_heads / w, rank, world)
        } else {
            let replicas = world / cfg.num_kv_heads as usize;
            (1, rank / replicas, cfg.num_kv_heads as usize)
        };
        let (vocab_start, vocab_rows) = vocab_range(cfg.vocab_size, rank, world);
        Ok(ShardPlan {
            rank,
            world,
            heads: cfg.num_heads / w,
            kv_heads,
            kv_rank,
            kv_world,
            ffn: cfg.intermediate_size / w,
            vocab_start,
            vocab_rows,
        })
    }
}

/// Rows `(start, count)` of a `vocab`-row embedding on rank `rank` of `world`:
/// contiguous chunks of `ceil(vocab / world)`, the last ones shorter.
pub fn vocab_range(vocab: i64, rank: usize, world: usize) -> (i64, i64) {
    let chunk = (vocab + world as i64 - 1) / world as i64;
    let start = (rank as i64 * chunk).min(vocab);
    (start, chunk.min(vocab - start))
}

/// The layers of one pipeline stage: a contiguous range. When the layer count
/// does not divide, the later stages take one layer more (the first stage also
/// holds the embedding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    pub stage: usize,
    pub stages: usize,
    /// Model layer indices on this stage.
    pub layers: Range<i64>,
    /// Layers in the whole model.
    pub num_layers: i64,
}

impl StagePlan {
    /// The whole model as one stage.
    pub fn whole(num_layers: i64) -> StagePlan {
        StagePlan { stage: 0, stages: 1, layers: 0..num_layers, num_layers }
    }

    pub fn new(num_layers: i64, stage: usize, stages: usize) -> Result<StagePlan, ModelError> {
        if stages == 0 || stage >= stages {
            return Err(ModelError::Config(format!("pipeline stage {stage} of {stages} is out of range")));
        }
        if stages as i64 > num_layers {
            return Err(ModelError::Config(format!(
                "{stages} pipeline stages but the model has only {num_layers} layers"
            )));
        }
        let (base, extra) = (num_layers / stages as i64, num_layers % stages as i64);
        let count = |s: usize| base + i64::from(s as i64 >= stages as i64 - extra);
        let start: i64 = (0..stage).map(count).sum();
        Ok(StagePlan { stage, stages, layers: start..start + count(stage), num_layers })
    }

    /// Holds the embedding.
    pub fn is_first(&self) -> bool {
        self.stage == 0
    }

    /// Holds the final norm and the reward head.
    pub fn is_last(&self) -> bool {
        self.stage + 1 == self.stages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nemotron_340b() -> Config {
        Config {
            vocab_size: 256000,
            hidden_size: 18432,
            intermediate_size: 73728,
            num_layers: 96,
            num_heads: 96,
            num_kv_heads: 8,
            head_dim: 192,
            rotary_dim: 96,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            max_position_embeddings: 4096,
            num_labels: 9,
        }
    }

    #[test]
    fn splits_340b_over_eight_ranks() {
        let plan = ShardPlan::new(&nemotron_340b(), 3, 8).unwrap();
        assert_eq!((plan.heads, plan.kv_heads, plan.kv_rank, plan.kv_world, plan.ffn), (12, 1, 3, 8, 9216));
    }

    #[test]
    fn replicates_kv_heads_when_ranks_outnumber_them() {
        let mut cfg = nemotron_340b();
        cfg.num_kv_heads = 2;
        let plan = ShardPlan::new(&cfg, 5, 8).unwrap();
        assert_eq!((plan.heads, plan.kv_heads, plan.kv_rank, plan.kv_world), (12, 1, 1, 2));
    }

    #[test]
    fn splits_the_vocabulary_into_contiguous_ranges() {
        let plan = ShardPlan::new(&nemotron_340b(), 3, 8).unwrap();
        assert_eq!((plan.vocab_start, plan.vocab_rows), (96000, 32000));
        let ranges: Vec<(i64, i64)> = (0..4).map(|r| vocab_range(10, r, 4)).collect();
        assert_eq!(ranges, vec![(0, 3), (3, 3), (6, 3), (9, 1)]);
        assert_eq!(vocab_range(2, 3, 4), (2, 0));
    }

    #[test]
    fn stages_are_contiguous_and_later_ones_take_the_remainder() {
        let stages: Vec<_> = (0..3).map(|s| StagePlan::new(8, s, 3).unwrap().layers).collect();
        assert_eq!(stages, vec![0..2, 2..5, 5..8]);
        let two = StagePlan::new(96, 1, 2).unwrap();
        assert_eq!((two.layers.clone(), two.is_first(), two.is_last()), (48..96, false, true));
        let err = StagePlan::new(2, 0, 3).unwrap_err().to_string();
        assert_eq!(err, "3 pipeline stages but the model has only 2 layers");
    }

    #[test]
    fn rejects_uneven_splits() {
        let err = ShardPlan::new(&nemotron_340b(), 0, 5).unwrap_err().to_string();
        assert!(err.contains("96 attention heads do not divide into 5"), "{err}");
    }
}
