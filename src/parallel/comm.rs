//! The communication trait every backend implements, and the group of one.
//!
//! A [`Comm`] connects the ranks of one group: the tensor-parallel ranks of a
//! pipeline stage (the model all-reduces through it), or the whole worker group
//! (batches, pipeline sends, scores). Every operation waits at most the
//! backend's timeout, and a timeout is an error that names the operation, the
//! group and the ranks it was still waiting for.

use tch::{Kind, Tensor};

/// A rank's (tensor-parallel group, whole group) communicators.
pub(crate) type RankComms = (std::sync::Arc<dyn Comm>, std::sync::Arc<dyn Comm>);

/// Collective and point-to-point operations within one group of ranks.
/// `rank`/`world` and the peers of `send`/`recv` are indices within the group.
pub trait Comm: Send + Sync {
    /// This rank's index within the group.
    fn rank(&self) -> usize;
    /// Number of ranks in the group.
    fn world(&self) -> usize;
    /// Sum `t` across the group; every rank gets the sum.
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor, CommError>;
    /// Every rank's `t` concatenated along dim 0, in rank order.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor, CommError>;
    /// `root`'s `t` on every rank. The others pass a tensor of the same shape and
    /// kind (its values are ignored), as NCCL and torch.distributed do.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor, CommError>;
    /// Hand `t` to rank `to`, which takes it with [`Comm::recv`].
    fn send(&self, t: &Tensor, to: usize) -> Result<(), CommError>;
    /// The next tensor rank `from` sent here; it must have `shape` and `kind`.
    fn recv(&self, from: usize, shape: &[i64], kind: Kind) -> Result<Tensor, CommError>;
    /// Wait until every rank of the group has called `barrier`.
    fn barrier(&self) -> Result<(), CommError>;
    /// Give up on the group: every pending and later operation of every rank
    /// fails with [`CommError::Aborted`] (NCCL: `ncclCommAbort`). Used when a
    /// rank fails, so that its peers stop waiting for it.
    fn abort(&self, _reason: &str) {}
}

/// A failed communication. The message names the operation and the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommError {
    #[error("{op} in the {group}: timed out after {seconds:.1} s waiting for {waiting_for}")]
    Timeout { op: String, group: String, waiting_for: String, seconds: f64 },
    #[error("{op} in the {group}: the group was aborted: {reason}")]
    Aborted { op: String, group: String, reason: String },
    #[error("{op} in the {group}: {message}")]
    Failed { op: String, group: String, message: String },
    #[error("{0}")]
    Unavailable(String),
}

/// The group of one: reductions return their input, there is no peer to send to.
pub struct SingleRank;

impl SingleRank {
    fn no_peer(op: &str) -> CommError {
        CommError::Failed { op: op.into(), group: "group of one".into(), message: "there is no other rank".into() }
    }
}

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
    fn all_gather(&self, t: &Tensor) -> Result<Tensor, CommError> {
        Ok(t.shallow_clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor, CommError> {
        Ok(t.shallow_clone())
    }
    fn send(&self, _t: &Tensor, _to: usize) -> Result<(), CommError> {
        Err(Self::no_peer("send"))
    }
    fn recv(&self, _from: usize, _shape: &[i64], _kind: Kind) -> Result<Tensor, CommError> {
        Err(Self::no_peer("recv"))
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
}
