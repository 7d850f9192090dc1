//! What a worker group is built from and fails with: the options, the
//! delivery of jobs, the start-up errors and the group's health. Below both
//! the feeding side (`group.rs`) and the ranks (`rank_thread.rs`), so that
//! imports run one way: group -> rank_thread -> nccl -> comm.

use std::sync::Mutex;
use std::time::Duration;
use tch::Device;

use super::fault::Fault;
use super::rank::RankId;
use crate::config::{CommBackend, DType, ParallelLayout};
use crate::engine::ModelSource;
use crate::model::ModelError;

/// How jobs reach the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every rank lives in this process and gets the job through a channel.
    Channel,
    /// Rank 0 broadcasts each job over the world communicator (ranks in other processes).
    Broadcast,
}

/// How to build a group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub layout: ParallelLayout,
    pub backend: CommBackend,
    pub dtype: DType,
    /// `Cpu` for every rank, or `Cuda(i)`: this process's ranks on `cuda:i`, `cuda:i+1`, ...
    pub device: Device,
    /// Longest wait of any collective or transfer before it is an error.
    pub timeout: Duration,
    /// Longest wait for every rank to load its slices.
    pub start_timeout: Duration,
    /// Longest wait for rank 0's answer to a job.
    pub job_timeout: Duration,
    pub delivery: Delivery,
    /// Test hook: make one rank fail in the middle of a batch.
    pub fault: Option<Fault>,
    /// Where the weights come from, for a wake from sleep level 2 (each rank
    /// maps the checkpoint again and reads its slices); `None`: level 2 is refused.
    pub source: Option<ModelSource>,
}

impl GroupOptions {
    pub fn new(layout: ParallelLayout, backend: CommBackend, dtype: DType, device: Device) -> GroupOptions {
        GroupOptions {
            layout,
            backend,
            dtype,
            device,
            timeout: Duration::from_secs(600),
            start_timeout: Duration::from_secs(3600),
            job_timeout: Duration::from_secs(3600),
            delivery: Delivery::Channel,
            fault: None,
            source: None,
        }
    }
}

/// Why a group could not start.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{rank} could not start: {message}")]
    RankStart { rank: RankId, message: String },
    #[error("the group did not start within {seconds:.0} s: ranks {missing:?} have not finished loading")]
    StartTimeout { seconds: f64, missing: Vec<usize> },
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    Rendezvous(#[from] super::rendezvous::RendezvousError),
}

/// The first failure of any rank; once set, the group is unhealthy for good.
#[derive(Default)]
pub struct Health {
    failure: Mutex<Option<String>>,
}

impl Health {
    pub fn fail(&self, reason: &str) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            tracing::error!(reason, "worker group failed");
            *failure = Some(reason.to_string());
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
