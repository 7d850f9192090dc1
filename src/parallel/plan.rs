//! Per-rank shapes for tensor parallelism, computed in one place.
//!
//! q/k/v and up_proj are split by output rows (column parallel), o_proj and
//! down_proj by input columns (row parallel). Key/value heads are split across
//! ranks, or replicated when there are more ranks than kv heads.

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
        Ok(ShardPlan {
            rank,
            world,
            heads: cfg.num_heads / w,
            kv_heads,
            kv_rank,
            kv_world,
            ffn: cfg.intermediate_size / w,
        })
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
    fn rejects_uneven_splits() {
        let err = ShardPlan::new(&nemotron_340b(), 0, 5).unwrap_err().to_string();
        assert!(err.contains("96 attention heads do not divide into 5"), "{err}");
    }
}
