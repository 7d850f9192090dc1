//! How the CLI starts a worker group: every rank in this process (threads, or
//! NCCL over this machine's GPUs), or, under a launcher (torchrun or SLURM:
//! `RANK`/`WORLD_SIZE`... or `SLURM_PROCID`/...), this process as one rank of a
//! multi-process NCCL group. Rank 0's process gets the [`Scorer`]; every other
//! process serves batches that rank 0 broadcasts until rank 0 shuts the group
//! down, then exits.

use tch::Device;

use super::group::{load_scorer, GroupError, GroupOptions};
use super::rendezvous::LaunchEnv;
use crate::config::CommBackend;
use crate::engine::{ModelSource, Scorer};

/// What this process became.
pub enum Started {
    /// It feeds the group (rank 0, or every rank in this process).
    Scorer(Scorer),
    /// It was a follower rank of a multi-process group and the group has ended
    /// (`Err`: the group failed, and why).
    Follower(Result<(), String>),
}

/// Start the group `options` describe for the model in `source`.
pub fn start_scorer(source: &ModelSource, options: &GroupOptions) -> Result<Started, GroupError> {
    if options.backend == CommBackend::Nccl {
        check_nccl(options.device)?;
        if let Some(env) = LaunchEnv::from_env()? {
            return start_rank(source, options, env);
        }
    }
    load_scorer(source, options).map(Started::Scorer)
}

/// NCCL must be built in, loadable, and used with GPUs.
fn check_nccl(device: Device) -> Result<(), GroupError> {
    #[cfg(not(feature = "nccl"))]
    {
        let _ = device;
        Err(GroupError::Backend(super::NCCL_NOT_BUILT.into()))
    }
    #[cfg(feature = "nccl")]
    {
        let version = super::nccl::version().map_err(GroupError::Backend)?;
        if !matches!(device, Device::Cuda(_)) {
            return Err(GroupError::Backend(format!(
                "--backend nccl needs GPUs (found NCCL {version}): use --device cuda, or --backend threads on the CPU"
            )));
        }
        Ok(())
    }
}

/// This process is global rank `env.rank`, on `cuda:LOCAL_RANK`.
fn start_rank(source: &ModelSource, options: &GroupOptions, env: LaunchEnv) -> Result<Started, GroupError> {
    #[cfg(not(feature = "nccl"))]
    {
        let _ = (source, options, env);
        Err(GroupError::Backend(super::NCCL_NOT_BUILT.into()))
    }
    #[cfg(feature = "nccl")]
    {
        use super::group::{CommSetup, Delivery, Group};
        use super::rank::RankId;
        use super::rendezvous::exchange_group_ids;
        use crate::engine::check_vocab;
        use crate::model::ModelError;
        use std::sync::Arc;

        let device = Device::Cuda(env.local_rank);
        let gpus = tch::Cuda::device_count() as usize;
        if env.local_rank >= gpus {
            return Err(GroupError::Backend(format!(
                "{} says local rank {} but this node has {gpus} GPU(s)",
                env.launcher, env.local_rank
            )));
        }
        let layout = options.layout;
        // The rendezvous first: a launch that cannot connect fails before loading weights.
        let ids = exchange_group_ids(&env, layout, options.timeout, super::nccl::unique_id_bytes)?;
        let setup = CommSetup::Nccl(Arc::new(super::nccl::GroupIds::from_bytes(&ids).map_err(GroupError::Backend)?));
        let (config, tokenizer, weights) = source.load()?;
        check_vocab(&config, tokenizer.vocab_size())?;
        layout.validate(&config).map_err(ModelError::from)?;
        let options =
            GroupOptions { delivery: Delivery::Broadcast, device, source: Some(source.clone()), ..options.clone() };
        let id = RankId::new(env.rank, layout);
        tracing::info!(rank = env.rank, world = env.world, launcher = env.launcher, "joining the worker group");
        let group = Group::launch(&config, Arc::new(weights), &options, vec![(id, device)], setup)?;
        if env.rank == 0 {
            return Ok(Started::Scorer(Scorer::from_parts(source.name(), config, tokenizer, Box::new(group))));
        }
        Ok(Started::Follower(group.wait_finished()))
    }
}
