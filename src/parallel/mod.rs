//! Tensor / pipeline parallelism: the communication handle the model calls, and
//! the per-rank shard plan. The model math never branches on rank: it asks the
//! plan for its slice of each weight and calls [`Comm::all_reduce`], which is a
//! no-op for a single rank.

pub mod plan;

pub use plan::ShardPlan;

use tch::Tensor;

/// Collective operations between the tensor-parallel ranks of one pipeline stage.
pub trait Comm: Send + Sync {
    /// This rank's index within its tensor-parallel group.
    fn rank(&self) -> usize;
    /// Number of ranks in the tensor-parallel group.
    fn world(&self) -> usize;
    /// Sum `t` across the group; every rank gets the sum.
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor, CommError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("collective failed: {0}")]
    Failed(String),
}

/// The group of one: all-reduce returns its input.
pub struct SingleRank;

impl Comm for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor, CommError> {
        Ok(t.shallow_clone())
    }
}
