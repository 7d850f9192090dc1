//! A model's tensors leaving their device and coming back, for co-location
//! (the levels are described in `crate::engine::sleep`). Only where the
//! tensors live changes, never their values: scores after a wake are those
//! of before, bit for bit.

use tch::{Device, Tensor};

use super::kv_cache::KvCache;
use super::{ModelError, NemotronRewardModel};

impl NemotronRewardModel {
    /// Bytes of every tensor this rank holds now (0 after [`Self::release`]).
    pub fn tensor_bytes(&mut self) -> u64 {
        self.tensors_mut().iter().map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum()
    }

    /// The prefix cache's keys and values ([`super::kv_cache`]) go at either
    /// level: they are device memory, and only valid for these weights. The
    /// engine forgets its index of them at the same time (`Scorer::sleep`).
    fn drop_prefix_cache(&mut self) {
        *self.kv.get_mut() = KvCache::default();
    }

    /// Level 1: every tensor to host memory, pinned when the model runs on a
    /// GPU (so that [`Self::restore`] is one DMA per tensor). On the CPU the
    /// tensors already are host memory and stay where they are. A failure
    /// (host memory exhausted) moves what was moved back, and says so.
    pub fn offload(&mut self) -> Result<(), ModelError> {
        self.drop_prefix_cache();
        if self.device == Device::Cpu {
            return Ok(());
        }
        let device = self.device;
        let moved = (|| {
            for t in self.tensors_mut() {
                let host = t.f_to_device(Device::Cpu)?.f_pin_memory(device)?;
                *t = host;
            }
            Ok::<(), ModelError>(())
        })();
        if let Err(e) = moved {
            self.restore()?;
            return Err(ModelError::Device(format!("moving the weights to pinned host memory: {e}")));
        }
        Ok(())
    }

    /// Back to the model's device after [`Self::offload`] (a no-op on the CPU).
    pub fn restore(&mut self) -> Result<(), ModelError> {
        let device = self.device;
        for t in self.tensors_mut() {
            if t.device() != device {
                let back = t.f_to_device(device)?;
                *t = back;
            }
        }
        Ok(())
    }

    /// Level 2: drop every tensor (the model keeps its shapes' bookkeeping,
    /// not its numbers); [`Self::reload`] reads them from the checkpoint again.
    pub fn release(&mut self) {
        self.drop_prefix_cache();
        for t in self.tensors_mut() {
            // A defined, empty tensor of the same kind: the storage goes, nothing can panic on it.
            *t = Tensor::zeros([0], (t.kind(), Device::Cpu));
        }
    }
}
