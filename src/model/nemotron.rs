//! The Nemotron-4 decoder and its nine-way reward head, as plain math over a
//! packed batch. Tensor parallelism enters only through the shard plan (which
//! slice of each weight to load) and `Comm::all_reduce` after o_proj and down_proj
//! (and after the vocabulary-split embedding); pipeline parallelism only through
//! the stage plan (which layers to load, and whether the embedding or the head
//! is here).
//!
//! A packed batch is a prefix tree of every scored prefix of its records, each
//! shared prefix computed once ([`super::packed`]); a probe `<extra_id_2>` is a
//! one-row leaf at the position that ends its prefix, so one pass gives every
//! turn exactly its per-prefix score. Attention over the tree is in
//! [`super::attention`].

use std::cell::RefCell;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

use super::attention::{Attention, Rows};
use super::embedding::VocabEmbedding;
use super::kv_cache::KvCache;
use super::packed::PackedBatch;
use super::rope::{Rotary, RotaryTable};
use super::{Config, ModelError, Weights};
use crate::parallel::{Comm, ShardPlan, StagePlan};

/// LayerNorm1P (`weight + 1`), computed in fp32 and returned in the model dtype.
struct LayerNorm1P {
    gamma: Tensor,
    beta: Tensor,
    eps: f64,
}

impl LayerNorm1P {
    fn load(w: &Weights, prefix: &str, cfg: &Config, device: Device) -> Result<LayerNorm1P, ModelError> {
        let h = [cfg.hidden_size];
        let gamma = w.get(&format!("{prefix}.weight"), &h, Kind::Float, device)? + 1.0;
        let beta = w.get(&format!("{prefix}.bias"), &h, Kind::Float, device)?;
        Ok(LayerNorm1P { gamma, beta, eps: cfg.norm_eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.gamma.size();
        let norm = |x: &Tensor| x.f_layer_norm(&h, Some(&self.gamma), Some(&self.beta), self.eps, true);
        if x.kind() == Kind::Float {
            return Ok(norm(x)?);
        }
        // libtorch's mixed-dtype kernel takes bf16 activations with fp32 gamma/beta
        // and computes in fp32, without materialising an fp32 copy of x (3x faster
        // on CPU). Where a backend lacks it, cast around the fp32 kernel instead.
        match norm(x) {
            Ok(y) => Ok(y),
            Err(_) => Ok(norm(&x.f_to_kind(Kind::Float)?)?.f_to_kind(x.kind())?),
        }
    }
}

struct Mlp {
    up: Tensor,
    down: Tensor,
}

impl Mlp {
    fn load(w: &Weights, p: &str, cfg: &Config, plan: &ShardPlan, kind: Kind, dev: Device) -> Result<Mlp, ModelError> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            up: w.get_sharded(&format!("{p}.up_proj.weight"), &[f, h], 0, plan.rank, plan.world, kind, dev)?,
            down: w.get_sharded(&format!("{p}.down_proj.weight"), &[h, f], 1, plan.rank, plan.world, kind, dev)?,
        })
    }

    /// `down(relu(up(x))^2)` before down_proj's all-reduce.
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        // In place: the [tokens, intermediate] activation is the largest tensor
        // of the forward, and each fresh one costs its page faults.
        let mut up = x.f_linear::<&Tensor>(&self.up, None)?;
        let _ = up.f_relu_()?;
        let _ = up.f_square_()?;
        Ok(up.f_linear::<&Tensor>(&self.down, None)?)
    }
}

struct Layer {
    input_norm: LayerNorm1P,
    attn: Attention,
    post_norm: LayerNorm1P,
    mlp: Mlp,
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        batch: &PackedBatch,
        comm: &dyn Comm,
        rows: Rows,
        cached: &[(Tensor, Tensor)],
    ) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let (attn, k, v) = self.attn.forward(&self.input_norm.forward(x)?, rotary, batch, rows, cached)?;
        let x = match rows {
            Rows::All => x.shallow_clone(),
            Rows::Probes => x.f_index_select(0, &batch.probe_rows)?,
        };
        let x = x.f_add(&comm.all_reduce(&attn).map_err(|e| ModelError::Device(e.to_string()))?)?;
        let mlp = self.mlp.forward(&self.post_norm.forward(&x)?)?;
        Ok((x.f_add(&comm.all_reduce(&mlp).map_err(|e| ModelError::Device(e.to_string()))?)?, k, v))
    }
}

/// The reward head: `score.weight` [9, hidden] and optional `score.bias`, in fp32.
struct RewardHead {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl RewardHead {
    fn load(w: &Weights, cfg: &Config, device: Device) -> Result<RewardHead, ModelError> {
        let n = cfg.num_labels;
        let weight = w.get("score.weight", &[n, cfg.hidden_size], Kind::Float, device)?;
        let bias = if w.contains("score.bias") { Some(w.get("score.bias", &[n], Kind::Float, device)?) } else { None };
        Ok(RewardHead { weight, bias })
    }

    fn forward(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        Ok(hidden.f_to_kind(Kind::Float)?.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// A frozen Nemotron-4 reward model, or one rank's part of it: the
/// tensor-parallel slices of one pipeline stage's layers. The first stage holds
/// the embedding, the last the final norm and the head.
pub struct NemotronRewardModel {
    pub config: Config,
    pub kind: Kind,
    pub device: Device,
    pub stage: StagePlan,
    embed: Option<VocabEmbedding>,
    layers: Vec<Layer>,
    /// The final norm and the reward head (last stage only).
    head: Option<(LayerNorm1P, RewardHead)>,
    rotary: RotaryTable,
    comm: Arc<dyn Comm>,
    /// This rank's slice of the prefix cache (only this rank's thread uses it).
    pub(super) kv: RefCell<KvCache>,
}

impl NemotronRewardModel {
    /// Load this tensor-parallel rank's slice of the whole model. `lm_head.weight`,
    /// if present, is never read.
    pub fn load(
        cfg: &Config,
        weights: &Weights,
        kind: Kind,
        device: Device,
        comm: Arc<dyn Comm>,
    ) -> Result<NemotronRewardModel, ModelError> {
        Self::load_stage(cfg, weights, kind, device, comm, StagePlan::whole(cfg.num_layers))
    }

    /// Load this tensor-parallel rank's slice of one pipeline stage: only its
    /// layers' slices are read from the checkpoint.
    pub fn load_stage(
        cfg: &Config,
        weights: &Weights,
        kind: Kind,
        device: Device,
        comm: Arc<dyn Comm>,
        stage: StagePlan,
    ) -> Result<NemotronRewardModel, ModelError> {
        let _guard = tch::no_grad_guard();
        let plan = ShardPlan::new(cfg, comm.rank(), comm.world())?;
        let embed = match stage.is_first() {
            true => Some(VocabEmbedding::load(weights, cfg, &plan, kind, device)?),
            false => None,
        };
        let mut layers = Vec::with_capacity(stage.layers.clone().count());
        for i in stage.layers.clone() {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: LayerNorm1P::load(weights, &format!("{p}.input_layernorm"), cfg, device)?,
                attn: Attention::load(weights, &format!("{p}.self_attn"), cfg, &plan, kind, device)?,
                post_norm: LayerNorm1P::load(weights, &format!("{p}.post_attention_layernorm"), cfg, device)?,
                mlp: Mlp::load(weights, &format!("{p}.mlp"), cfg, &plan, kind, device)?,
            });
        }
        let head = match stage.is_last() {
            true => {
                Some((LayerNorm1P::load(weights, "model.norm", cfg, device)?, RewardHead::load(weights, cfg, device)?))
            }
            false => None,
        };
        Ok(NemotronRewardModel {
            config: cfg.clone(),
            kind,
            device,
            stage,
            embed,
            layers,
            head,
            rotary: RotaryTable::new(cfg, device),
            comm,
            kv: RefCell::new(KvCache::default()),
        })
    }

    /// The nine raw attribute scores of every probe token, `[probes, 9]` fp32 on
    /// the CPU. Needs the whole model on this rank's stage.
    pub fn forward(&self, batch: &PackedBatch) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let hidden = self.run_layers(&self.embed(batch)?, batch)?;
        Ok(self.score(&hidden)?.f_to_device(Device::Cpu)?)
    }

    /// First stage: `[T, hidden]` embeddings of the batch's tokens.
    pub fn embed(&self, batch: &PackedBatch) -> Result<Tensor, ModelError> {
        let embed = self.embed.as_ref().ok_or_else(|| self.not_on_stage("the embedding"))?;
        embed.forward(&batch.input_ids, self.comm.as_ref())
    }

    /// This stage's layers over `x` (`[T, hidden]`). The model's last layer
    /// computes only the probe rows, so on the last stage the result is `[probes, hidden]`.
    /// The batch's prefix-cache operations are applied to this rank's slice:
    /// cached ancestors are attended to, the rows to keep are kept.
    pub fn run_layers(&self, x: &Tensor, batch: &PackedBatch) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let rotary = self.rotary.at(&batch.positions, self.kind);
        let last = self.config.num_layers - 1;
        let mut kv = self.kv.borrow_mut();
        kv.begin(&batch.cache)?;
        let mut x = x.shallow_clone();
        for (local, (i, layer)) in self.stage.layers.clone().zip(&self.layers).enumerate() {
            let rows = if i == last { Rows::Probes } else { Rows::All };
            let cached = kv.reads(&batch.cache, local)?;
            let (y, k, v) = layer.forward(&x, &rotary, batch, self.comm.as_ref(), rows, &cached)?;
            kv.store(&batch.cache, local, &k, &v)?;
            x = y;
        }
        Ok(x)
    }

    /// Bytes of keys and values this rank's prefix cache holds.
    pub fn cached_bytes(&self) -> usize {
        self.kv.borrow().bytes()
    }

    /// Last stage: final norm and reward head over the probe rows, `[probes, 9]` fp32.
    pub fn score(&self, probes: &Tensor) -> Result<Tensor, ModelError> {
        let (norm, head) = self.head.as_ref().ok_or_else(|| self.not_on_stage("the reward head"))?;
        head.forward(&norm.forward(probes)?)
    }

    /// Load this rank's part again from `weights` (waking from sleep level 2):
    /// the same slices, dtype, device and communicator as before.
    pub fn reload(&mut self, weights: &Weights) -> Result<(), ModelError> {
        let comm = Arc::clone(&self.comm);
        *self = Self::load_stage(&self.config, weights, self.kind, self.device, comm, self.stage.clone())?;
        Ok(())
    }

    /// Every tensor this rank holds (weights and rotary tables), for sleep and
    /// wake ([`super::sleep`]).
    pub(crate) fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut all = Vec::new();
        if let Some(embed) = self.embed.as_mut() {
            all.extend(embed.tensors_mut());
        }
        for layer in &mut self.layers {
            all.extend([&mut layer.input_norm.gamma, &mut layer.input_norm.beta]);
            all.extend(layer.attn.tensors_mut());
            all.extend([&mut layer.post_norm.gamma, &mut layer.post_norm.beta, &mut layer.mlp.up, &mut layer.mlp.down]);
        }
        if let Some((norm, head)) = self.head.as_mut() {
            all.extend([&mut norm.gamma, &mut norm.beta, &mut head.weight]);
            all.extend(head.bias.as_mut());
        }
        all.extend(self.rotary.tensors_mut());
        all
    }

    fn not_on_stage(&self, what: &str) -> ModelError {
        ModelError::Config(format!(
            "{what} is not on pipeline stage {} of {} (layers {}..{}): this is a bug",
            self.stage.stage, self.stage.stages, self.stage.layers.start, self.stage.layers.end
        ))
    }
}
