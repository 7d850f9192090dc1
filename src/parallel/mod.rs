//! Tensor x pipeline parallelism: the communication trait and its backends, the
//! per-rank shard and stage plans, and the worker group that runs a model over
//! several ranks behind the engine's [`crate::engine::Forward`] interface.
//!
//! The model math never branches on rank: it asks the shard plan for its slice
//! of each weight and calls [`Comm::all_reduce`], which is a no-op for a single
//! rank. Which layers a rank holds comes from its [`StagePlan`].

pub mod comm;
pub mod fault;
pub mod group;
mod group_options;
pub mod launch;
pub mod memory;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod plan;
pub mod rank;
mod rank_thread;
pub mod rendezvous;
mod sleep;
pub mod threads;

pub use comm::{Comm, CommError, SingleRank};
pub use fault::{Fault, FaultKind};
pub use group::{load_scorer, Delivery, Group, GroupError, GroupOptions};
pub use launch::{start_scorer, Started};
pub use plan::{ShardPlan, StagePlan};
pub use threads::{ThreadComm, ThreadsHub};

/// The error for `--backend nccl` in a build without the `nccl` feature.
pub const NCCL_NOT_BUILT: &str =
    "--backend nccl: this build has no NCCL support (rebuild with `cargo build --release --features nccl`)";
