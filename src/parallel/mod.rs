//! Tensor x pipeline parallelism: the communication trait and its backends, the
//! per-rank shard and stage plans, and the worker group that runs a model over
//! several ranks behind the engine's [`crate::engine::Forward`] interface.
//!
//! The model math never branches on rank: it asks the shard plan for its slice
//! of each weight and calls [`Comm::all_reduce`], which is a no-op for a single
//! rank. Which layers a rank holds comes from its [`StagePlan`].

pub mod comm;
pub mod plan;
pub mod threads;

pub use comm::{Comm, CommError, SingleRank};
pub use plan::{ShardPlan, StagePlan};
pub use threads::{ThreadComm, ThreadsHub};
