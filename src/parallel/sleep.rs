//! Sleep and wake on the ranks of a worker group (`crate::engine::sleep` has
//! the levels). The feeder ([`super::Group`]) sends the order to the ranks it
//! feeds; rank 0 of a multi-process group broadcasts it to the others, as it
//! does a batch. Each rank does it to its own stage and slices, then the whole
//! group meets at a barrier, so the answer (from rank 0, after the barrier)
//! means every rank did it. A rank that cannot (its checkpoint is gone at a
//! level-2 wake) fails the group like a failed batch would: restart the worker.

use std::sync::Arc;

use super::rank::RankWorker;
use crate::engine::sleep::release_freed_memory;
use crate::engine::{ModelSource, SleepLevel};
use crate::model::Weights;

/// One rank's part of a sleep at `level` (from awake, or level 1 to 2).
/// Level 2 also drops this rank's map of the checkpoint.
pub(crate) fn sleep_rank(
    worker: &mut RankWorker,
    weights: &mut Option<Arc<Weights>>,
    level: SleepLevel,
) -> Result<(), String> {
    match level {
        SleepLevel::One => worker.model.offload().map_err(|e| e.to_string())?,
        SleepLevel::Two => {
            worker.model.release();
            *weights = None;
        }
    }
    release_freed_memory(worker.model.device);
    Ok(())
}

/// One rank's part of a wake from `level`: its tensors back from host memory,
/// or its slices read again from a fresh map of the checkpoint.
pub(crate) fn wake_rank(
    worker: &mut RankWorker,
    weights: &mut Option<Arc<Weights>>,
    source: Option<&ModelSource>,
    level: SleepLevel,
) -> Result<(), String> {
    match level {
        SleepLevel::One => worker.model.restore().map_err(|e| e.to_string())?,
        SleepLevel::Two => {
            let source = source.ok_or("waking from sleep level 2: the rank does not know its checkpoint")?;
            let mapped = Arc::new(source.open_weights().map_err(|e| format!("waking from sleep level 2: {e}"))?);
            worker.model.reload(&mapped).map_err(|e| format!("waking from sleep level 2: {e}"))?;
            *weights = Some(mapped);
        }
    }
    release_freed_memory(worker.model.device);
    Ok(())
}
