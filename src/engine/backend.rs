//! What runs the forward pass behind the engine: one local rank, or a worker
//! group of tensor x pipeline parallel ranks. Callers of the engine (`score`,
//! `annotate`, `eval`, `bench`, the service) never know which.

use tch::Device;

use crate::model::{BatchLayout, ModelError, NemotronRewardModel, PackedBatch};

/// Nine raw attribute scores per probe of a batch, in the layout's probe order.
pub type BatchScores = Vec<[f32; 9]>;

/// A forward backend. It is owned by one thread (tensors are `Send`, not `Sync`).
pub trait Forward: Send {
    /// Score `batches` in order; a pipeline overlaps them as micro-batches. One
    /// result per batch: a failed batch fails alone (when the backend can say so).
    fn forward(&self, batches: &[BatchLayout]) -> Vec<Result<BatchScores, ModelError>>;

    /// Batches per [`Forward::forward`] call that keep every stage busy (the
    /// number of pipeline stages; 1 for one rank). The engine splits its token
    /// budget into this many batches.
    fn micro_batches(&self) -> usize {
        1
    }

    /// False once a rank has failed: the backend answers every later batch with
    /// an error, and `/ready` says so.
    fn healthy(&self) -> bool {
        true
    }

    /// What it runs on, for logs and `/v1/models`: e.g. `cpu, tp=1, pp=1`.
    fn describe(&self) -> String;

    /// Release the model's memory at `level` ([`super::sleep`]), dropping any
    /// cached per-model state; every rank of a group. A backend that cannot
    /// sleep says so.
    fn sleep(&mut self, level: super::SleepLevel) -> Result<(), ModelError> {
        let _ = level;
        Err(ModelError::Device(format!("this backend ({}) cannot sleep", self.describe())))
    }

    /// Take the memory back after [`Forward::sleep`]; awake already: nothing to do.
    fn wake(&mut self) -> Result<(), ModelError> {
        Err(ModelError::Device(format!("this backend ({}) cannot sleep", self.describe())))
    }

    /// The element type of the keys and values its prefix cache keeps (what
    /// the cache's byte bound counts).
    fn kv_kind(&self) -> tch::Kind {
        tch::Kind::Float
    }
}

/// One rank holding the whole model.
pub struct LocalModel {
    pub model: NemotronRewardModel,
}

impl LocalModel {
    pub fn forward_one(&self, layout: &BatchLayout) -> Result<BatchScores, ModelError> {
        let packed = PackedBatch::new(layout, self.model.device)?;
        let scores = self.model.forward(&packed)?;
        let flat = Vec::<f32>::try_from(scores.f_flatten(0, -1)?)?;
        Ok(flat.chunks_exact(9).map(|c| c.try_into().expect("chunks of 9")).collect())
    }
}

impl Forward for LocalModel {
    fn forward(&self, batches: &[BatchLayout]) -> Vec<Result<BatchScores, ModelError>> {
        batches.iter().map(|b| self.forward_one(b)).collect()
    }

    fn describe(&self) -> String {
        let device = match self.model.device {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(i) => format!("cuda:{i}"),
            other => format!("{other:?}"),
        };
        format!("{device}, {:?}, tp=1, pp=1", self.model.kind)
    }

    fn kv_kind(&self) -> tch::Kind {
        crate::model::attention::attention_kind_of(self.model.kind, self.model.device)
    }
}
