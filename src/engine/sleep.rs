//! Sleep and wake, for a worker that shares its GPUs with a policy's rollout
//! engine (veRL's colocate mode, OpenRLHF's `colocate_all`, vLLM's sleep mode):
//! between scoring phases the model gives its memory back, and takes it again
//! before the next one. The names and levels are vLLM's:
//!
//! - **Level 1**: every weight goes to host memory (pinned, on CUDA, so the
//!   wake is one DMA per tensor) and the device's cached memory is freed. On the
//!   CPU the weights already are host memory: they stay where they are, and
//!   only memory the process freed is handed back to the OS (`malloc_trim`).
//! - **Level 2**: the weights are dropped, and the wake reads them again from
//!   the checkpoint (memory-mapped, each rank its own slices). Nothing of the
//!   model stays, on the device or the host.
//!
//! Either level drops per-model caches (a prefix K/V cache lives here: it is
//! device memory, and its keys are only valid for these weights). Scores
//! after a wake are the scores of before, bit for bit: the same bytes, the
//! same conversions, the same kernels.
//!
//! The scheduler (`crate::scheduler::sleep`) decides when: only between
//! batches, so a sleep asked for while a batch runs waits for it, and
//! requests that arrive while asleep wait in the queue until the wake.

use tch::Device;

use super::{BatchScores, Forward, LocalModel, ModelSource, Scorer};
use crate::model::{BatchLayout, ModelError};

/// How deeply the model sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SleepLevel {
    /// Weights in host memory; device memory freed.
    One,
    /// Weights dropped; reloaded from the checkpoint on wake.
    Two,
}

impl SleepLevel {
    /// `1` or `2`, as vLLM's `?level=`.
    pub fn parse(text: &str) -> Result<SleepLevel, String> {
        match text.trim() {
            "1" => Ok(SleepLevel::One),
            "2" => Ok(SleepLevel::Two),
            other => {
                Err(format!("sleep level must be 1 (weights to host memory) or 2 (weights dropped), got `{other}`"))
            }
        }
    }

    pub fn number(self) -> u8 {
        match self {
            SleepLevel::One => 1,
            SleepLevel::Two => 2,
        }
    }
}

impl std::fmt::Display for SleepLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// The error of a forward pass asked of a sleeping backend (the scheduler
/// never asks; this keeps a direct caller from computing with no weights).
pub fn asleep_error(level: SleepLevel) -> ModelError {
    ModelError::Device(format!("the model is asleep (level {level}): wake it up first"))
}

/// One rank holding the whole model, which can sleep: [`Scorer::load`] makes
/// this backend. It remembers where its weights came from for level 2.
pub struct ReloadableModel {
    local: LocalModel,
    source: ModelSource,
    asleep: Option<SleepLevel>,
}

impl ReloadableModel {
    pub fn new(local: LocalModel, source: ModelSource) -> ReloadableModel {
        ReloadableModel { local, source, asleep: None }
    }
}

impl Forward for ReloadableModel {
    fn forward(&self, batches: &[BatchLayout]) -> Vec<Result<BatchScores, ModelError>> {
        match self.asleep {
            Some(level) => batches.iter().map(|_| Err(asleep_error(level))).collect(),
            None => self.local.forward(batches),
        }
    }

    fn describe(&self) -> String {
        self.local.describe()
    }

    fn sleep(&mut self, level: SleepLevel) -> Result<(), ModelError> {
        let model = &mut self.local.model;
        match (self.asleep, level) {
            (Some(now), _) if now >= level => return Ok(()),
            (_, SleepLevel::One) => model.offload()?,
            (_, SleepLevel::Two) => model.release(),
        }
        self.asleep = Some(level);
        release_freed_memory(model.device);
        Ok(())
    }

    fn wake(&mut self) -> Result<(), ModelError> {
        let model = &mut self.local.model;
        match self.asleep {
            None => return Ok(()),
            Some(SleepLevel::One) => model.restore()?,
            Some(SleepLevel::Two) => {
                let weights = self.source.open_weights()?;
                model.reload(&weights)?;
            }
        }
        self.asleep = None;
        release_freed_memory(model.device);
        Ok(())
    }
}

impl Scorer {
    /// Put the backend to sleep at `level` (every rank of a group). Already
    /// asleep at that level or deeper: nothing to do; at level 1 asked for 2:
    /// the host copy is dropped too.
    pub fn sleep(&mut self, level: SleepLevel) -> Result<(), ModelError> {
        // The ranks drop their prefix cache's keys and values at either level;
        // forget the index of them (and tell the ranks again with the next
        // batch, should one have kept anything).
        self.cache.get_mut().invalidate();
        self.backend.sleep(level)
    }

    /// Bring the weights back (from host memory, or from the checkpoint).
    pub fn wake(&mut self) -> Result<(), ModelError> {
        self.backend.wake()
    }
}

/// Hand memory the process no longer uses back: the device's cached blocks on
/// CUDA, and the heap's free pages on the host (the binary keeps freed memory
/// on the heap between batches, `main.rs`; after a sleep that is the weights).
pub fn release_freed_memory(device: Device) {
    if let Device::Cuda(_) = device {
        if let Err(e) = super::device_memory::empty_device_cache() {
            tracing::warn!(error = %e, "the device's cached memory was not freed");
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_as_vllm_writes_them() {
        assert_eq!(SleepLevel::parse("1"), Ok(SleepLevel::One));
        assert_eq!(SleepLevel::parse("2"), Ok(SleepLevel::Two));
        assert!(SleepLevel::parse("3").unwrap_err().contains("got `3`"));
        assert!(SleepLevel::One < SleepLevel::Two);
    }
}
