//! One rank of the worker group: its stage of the model, and how it runs a
//! job (a list of batch layouts = micro-batches) through the pipeline.
//!
//! Per micro-batch, in order: the first stage embeds the tokens, a later stage
//! receives the hidden states from the same tensor-parallel rank of the stage
//! before; the stage runs its layers; a middle stage sends the result on, the
//! last stage applies the head. Stage s works on micro-batch i while stage s+1
//! works on i-1. The last stage's first tensor-parallel rank sends all scores of
//! the job to global rank 0 at the end: sending them per micro-batch could
//! deadlock on NCCL, where rank 0's stream only posts that receive after its
//! own sends.

use tch::{Device, Kind, Tensor};

use super::comm::Comm;
use crate::config::ParallelLayout;
use crate::engine::BatchScores;
use crate::model::embedding::check_token_ids;
use crate::model::{BatchLayout, ModelError, NemotronRewardModel, PackedBatch};
use std::sync::Arc;

/// Where a rank sits in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankId {
    pub global: usize,
    pub stage: usize,
    pub tp_rank: usize,
}

impl RankId {
    pub fn new(global: usize, layout: ParallelLayout) -> RankId {
        RankId { global, stage: global / layout.tp, tp_rank: global % layout.tp }
    }
}

impl std::fmt::Display for RankId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} (stage {}, tp rank {})", self.global, self.stage, self.tp_rank)
    }
}

/// A batch's outcome as rank 0 reports it: scores, or why this batch alone failed.
pub type BatchOutcome = Result<BatchScores, String>;

pub struct RankWorker {
    pub id: RankId,
    pub layout: ParallelLayout,
    pub model: NemotronRewardModel,
    /// The whole group (global ranks): pipeline sends and the scores.
    pub world: Arc<dyn Comm>,
    /// This stage's tensor-parallel group (the model's all-reduces).
    pub tp: Arc<dyn Comm>,
}

impl RankWorker {
    /// Run one job. `Ok`: on global rank 0 one outcome per layout, elsewhere
    /// nothing. `Err`: this rank failed, and the group with it.
    pub fn run(&self, layouts: &[BatchLayout]) -> Result<Vec<BatchOutcome>, ModelError> {
        let _guard = tch::no_grad_guard();
        let batches = layouts.iter().map(|l| self.pack(l)).collect::<Result<Vec<_>, _>>()?;
        let (kind, hidden) = (self.model.kind, self.model.config.hidden_size);
        let mut scores = Vec::new();
        for batch in batches.iter().flatten() {
            let x = match self.model.stage.is_first() {
                true => self.model.embed(batch)?,
                false => {
                    self.world.recv(self.id.global - self.layout.tp, &[rows(batch), hidden], kind).map_err(comm)?
                }
            };
            let y = self.model.run_layers(&x, batch)?;
            match self.model.stage.is_last() {
                true => scores.push(self.model.score(&y)?),
                false => self.world.send(&y, self.id.global + self.layout.tp).map_err(comm)?,
            }
        }
        self.collect_scores(&batches, scores)
    }

    /// One small exchange over every path a job uses (both communicators, each
    /// pipeline link, the scores' way back), so that connections are set up at
    /// start-up under the timeout rather than in the first batch.
    pub fn warm_up(&self) -> Result<(), ModelError> {
        let _guard = tch::no_grad_guard();
        self.world.barrier().map_err(comm)?;
        self.tp.barrier().map_err(comm)?;
        let (tp, g) = (self.layout.tp, self.id.global);
        let one = Tensor::f_ones([1], (Kind::Float, self.model.device))?;
        if !self.model.stage.is_first() {
            let _ = self.world.recv(g - tp, &[1], Kind::Float).map_err(comm)?;
        }
        if !self.model.stage.is_last() {
            self.world.send(&one, g + tp).map_err(comm)?;
        }
        let scorer = (self.layout.pp - 1) * tp;
        if g == scorer && scorer != 0 {
            self.world.send(&one, 0).map_err(comm)?;
        }
        if g == 0 && scorer != 0 {
            let _ = self.world.recv(scorer, &[1], Kind::Float).map_err(comm)?;
        }
        Ok(())
    }

    /// The batch on this rank's device. A layout that cannot be packed fails the
    /// same way on every rank, before any communication, so that batch fails
    /// alone and the group goes on; anything else is a failure of this rank.
    fn pack(&self, layout: &BatchLayout) -> Result<Result<PackedBatch, String>, ModelError> {
        let packed = PackedBatch::new(layout, self.model.device)
            .and_then(|b| check_token_ids(&b.input_ids, self.model.config.vocab_size).map(|()| b));
        match packed {
            Ok(batch) => Ok(Ok(batch)),
            Err(ModelError::Config(message)) => Ok(Err(message)),
            Err(other) => Err(other),
        }
    }

    /// Bring the last stage's scores to global rank 0 and split them per batch.
    fn collect_scores(
        &self,
        batches: &[Result<PackedBatch, String>],
        scores: Vec<Tensor>,
    ) -> Result<Vec<BatchOutcome>, ModelError> {
        let probes: Vec<i64> = batches.iter().flatten().map(|b| b.probe_rows.size()[0]).collect();
        let total: i64 = probes.iter().sum();
        let scorer = (self.layout.pp - 1) * self.layout.tp;
        if self.id.global == scorer && scorer != 0 && total > 0 {
            self.world.send(&Tensor::f_cat(&scores, 0)?, 0).map_err(comm)?;
        }
        if self.id.global != 0 {
            return Ok(Vec::new());
        }
        let all = match (total, scorer) {
            (0, _) => Tensor::zeros([0, 9], (Kind::Float, Device::Cpu)),
            (_, 0) => Tensor::f_cat(&scores, 0)?,
            _ => self.world.recv(scorer, &[total, 9], Kind::Float).map_err(comm)?,
        };
        let flat = Vec::<f32>::try_from(all.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        let mut rows = flat.chunks_exact(9).map(|c| <[f32; 9]>::try_from(c).expect("chunks of 9"));
        let mut counts = probes.into_iter();
        Ok(batches
            .iter()
            .map(|b| match b {
                Ok(_) => Ok(rows.by_ref().take(counts.next().expect("one count per packed batch") as usize).collect()),
                Err(message) => Err(message.clone()),
            })
            .collect())
    }
}

fn rows(batch: &PackedBatch) -> i64 {
    batch.input_ids.size()[0]
}

fn comm(e: super::comm::CommError) -> ModelError {
    ModelError::Group(e.to_string())
}

/// A job as one flat `i64` buffer, for a broadcast to ranks in other processes:
/// `[n, (len_i, BatchLayout::encode()_i ...) * n]`.
pub fn encode_job(layouts: &[BatchLayout]) -> Vec<i64> {
    let mut out = vec![layouts.len() as i64];
    for layout in layouts {
        let encoded = layout.encode();
        out.push(encoded.len() as i64);
        out.extend(encoded);
    }
    out
}

pub fn decode_job(data: &[i64]) -> Result<Vec<BatchLayout>, ModelError> {
    let bad = || ModelError::Group("a broadcast job buffer is truncated or corrupt".into());
    let (&n, mut rest) = data.split_first().ok_or_else(bad)?;
    let mut layouts = Vec::new();
    for _ in 0..n {
        let (&len, tail) = rest.split_first().ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        if tail.len() < len {
            return Err(bad());
        }
        layouts.push(BatchLayout::decode(&tail[..len])?);
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(layouts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batching::layout_of;

    #[test]
    fn a_job_survives_encoding() {
        let a = layout_of(&[(vec![1, 2, 3], vec![(9, 3)])]);
        let b = layout_of(&[(vec![4], vec![(9, 1)]), (vec![5, 6], vec![(9, 1), (9, 2)])]);
        let data = encode_job(&[a.clone(), b.clone()]);
        assert_eq!(decode_job(&data).unwrap(), vec![a, b]);
        assert!(decode_job(&data[..data.len() - 1]).is_err());
        assert!(decode_job(&[data.clone(), vec![7]].concat()).is_err());
        assert_eq!(decode_job(&[0]).unwrap(), vec![]);
        assert_eq!(RankId::new(5, ParallelLayout { tp: 2, pp: 4 }).to_string(), "rank 5 (stage 2, tp rank 1)");
    }
}
