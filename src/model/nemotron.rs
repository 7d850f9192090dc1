//! The Nemotron-4 decoder and its nine-way reward head, as plain math over a
//! packed batch. Tensor parallelism enters only through the shard plan (which
//! slice of each weight to load) and `Comm::all_reduce` after o_proj and down_proj.
//!
//! A packed batch is a prefix tree of every scored prefix of its records, each
//! shared prefix computed once ([`super::packed`]); a probe `<extra_id_2>` is a
//! one-row leaf at the position that ends its prefix, so one pass gives every
//! turn exactly its per-prefix score. Attention over the tree is in
//! [`super::attention`].

use std::sync::Arc;
use tch::{Device, Kind, Tensor};

use super::attention::{Attention, Rows};
use super::packed::PackedBatch;
use super::rope::{Rotary, RotaryTable};
use super::{Config, ModelError, Weights};
use crate::parallel::{Comm, ShardPlan};

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
        let up = x.f_linear::<&Tensor>(&self.up, None)?.f_relu()?.f_square()?;
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
    ) -> Result<Tensor, ModelError> {
        let attn = self.attn.forward(&self.input_norm.forward(x)?, rotary, batch, rows)?;
        let x = match rows {
            Rows::All => x.shallow_clone(),
            Rows::Probes => x.f_index_select(0, &batch.probe_rows)?,
        };
        let x = x.f_add(&comm.all_reduce(&attn).map_err(|e| ModelError::Device(e.to_string()))?)?;
        let mlp = self.mlp.forward(&self.post_norm.forward(&x)?)?;
        Ok(x.f_add(&comm.all_reduce(&mlp).map_err(|e| ModelError::Device(e.to_string()))?)?)
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

/// A frozen Nemotron-4 reward model (one tensor-parallel rank of it).
pub struct NemotronRewardModel {
    pub config: Config,
    pub kind: Kind,
    pub device: Device,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: LayerNorm1P,
    head: RewardHead,
    rotary: RotaryTable,
    comm: Arc<dyn Comm>,
}

impl NemotronRewardModel {
    /// Load this rank's slice of the model. `lm_head.weight`, if present, is never read.
    pub fn load(
        cfg: &Config,
        weights: &Weights,
        kind: Kind,
        device: Device,
        comm: Arc<dyn Comm>,
    ) -> Result<NemotronRewardModel, ModelError> {
        let _guard = tch::no_grad_guard();
        let plan = ShardPlan::new(cfg, comm.rank(), comm.world())?;
        let embed = weights.get("model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size], kind, device)?;
        let mut layers = Vec::with_capacity(cfg.num_layers as usize);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: LayerNorm1P::load(weights, &format!("{p}.input_layernorm"), cfg, device)?,
                attn: Attention::load(weights, &format!("{p}.self_attn"), cfg, &plan, kind, device)?,
                post_norm: LayerNorm1P::load(weights, &format!("{p}.post_attention_layernorm"), cfg, device)?,
                mlp: Mlp::load(weights, &format!("{p}.mlp"), cfg, &plan, kind, device)?,
            });
        }
        Ok(NemotronRewardModel {
            config: cfg.clone(),
            kind,
            device,
            embed,
            layers,
            norm: LayerNorm1P::load(weights, "model.norm", cfg, device)?,
            head: RewardHead::load(weights, cfg, device)?,
            rotary: RotaryTable::new(cfg, device),
            comm,
        })
    }

    /// The nine raw attribute scores of every probe token, `[probes, 9]` fp32 on the CPU.
    pub fn forward(&self, batch: &PackedBatch) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let mut x = self.embed.f_index_select(0, &batch.input_ids)?;
        let rotary = self.rotary.at(&batch.positions, self.kind);
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let rows = if i == last { Rows::Probes } else { Rows::All };
            x = layer.forward(&x, &rotary, batch, self.comm.as_ref(), rows)?;
        }
        // x now holds the probe rows only.
        let scores = self.head.forward(&self.norm.forward(&x)?)?;
        Ok(scores.f_to_device(Device::Cpu)?)
    }
}
