//! The Nemotron-4 decoder and its nine-way reward head, as plain math over a
//! packed batch. Tensor parallelism enters only through the shard plan (which
//! slice of each weight to load) and `Comm::all_reduce` after o_proj and down_proj.
//!
//! A packed batch holds several sequences back to back with no padding. Each
//! sequence is its real tokens followed by its *probe* tokens: the
//! `<extra_id_2>` tokens that score one assistant turn each. Real tokens attend
//! causally to real tokens only; a probe attends to the real tokens of its
//! prefix and to itself, and carries the position it would have at the end of
//! that prefix. So one pass gives every turn exactly its per-prefix score.

use std::sync::Arc;
use tch::{Device, Kind, Tensor};

use super::rope::{Rotary, RotaryTable};
use super::{Config, ModelError, Weights};
use crate::parallel::{Comm, ShardPlan};

/// One sequence inside a [`PackedBatch`].
pub struct SeqSpan {
    /// First row of the sequence in the batch.
    pub start: i64,
    /// Number of real (causal) tokens.
    pub real_len: i64,
    /// Number of probe tokens after them.
    pub probes: i64,
    /// `[probes, real_len + probes]` boolean: which keys each probe sees.
    pub probe_mask: Option<Tensor>,
}

/// Sequences packed into one token dimension, ready for [`NemotronRewardModel::forward`].
pub struct PackedBatch {
    pub input_ids: Tensor,
    pub positions: Tensor,
    pub spans: Vec<SeqSpan>,
    /// Rows of all probe tokens, in output order.
    pub probe_rows: Tensor,
    pub tokens: i64,
}

/// One sequence to pack: its real tokens, and per probe `(token id, prefix length)`.
pub struct SeqInput<'a> {
    pub tokens: &'a [i64],
    pub probes: &'a [(i64, i64)],
}

impl PackedBatch {
    pub fn pack(seqs: &[SeqInput<'_>], device: Device) -> Result<PackedBatch, ModelError> {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut probe_rows = Vec::new();
        let mut spans = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let start = ids.len() as i64;
            let real_len = seq.tokens.len() as i64;
            ids.extend_from_slice(seq.tokens);
            positions.extend(0..real_len);
            let probes = seq.probes.len() as i64;
            let mut mask = vec![false; (probes * (real_len + probes)) as usize];
            for (i, &(token, prefix)) in seq.probes.iter().enumerate() {
                if prefix > real_len {
                    return Err(ModelError::Config(format!(
                        "probe prefix {prefix} is past the sequence end {real_len}"
                    )));
                }
                probe_rows.push(start + real_len + i as i64);
                ids.push(token);
                positions.push(prefix);
                let row = i * (real_len + probes) as usize;
                mask[row..row + prefix as usize].fill(true);
                mask[row + real_len as usize + i] = true;
            }
            let probe_mask = if probes == 0 {
                None
            } else {
                let m = Tensor::from_slice(&mask).f_view([probes, real_len + probes])?;
                Some(m.f_to_device(device)?)
            };
            spans.push(SeqSpan { start, real_len, probes, probe_mask });
        }
        let tokens = ids.len() as i64;
        Ok(PackedBatch {
            input_ids: Tensor::from_slice(&ids).f_to_device(device)?,
            positions: Tensor::from_slice(&positions).f_to_device(device)?,
            spans,
            probe_rows: Tensor::from_slice(&probe_rows).f_to_device(device)?,
            tokens,
        })
    }
}

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
        let y = x.f_to_kind(Kind::Float)?.f_layer_norm(&h, Some(&self.gamma), Some(&self.beta), self.eps, true)?;
        Ok(y.f_to_kind(x.kind())?)
    }
}

struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn load(
        w: &Weights,
        p: &str,
        cfg: &Config,
        plan: &ShardPlan,
        kind: Kind,
        dev: Device,
    ) -> Result<Attention, ModelError> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (r, n) = (plan.rank, plan.world);
        let rows = |name: &str, out: i64, rank, world| {
            w.get_sharded(&format!("{p}.{name}.weight"), &[out, h], 0, rank, world, kind, dev)
        };
        Ok(Attention {
            q: rows("q_proj", cfg.num_heads * d, r, n)?,
            k: rows("k_proj", cfg.num_kv_heads * d, plan.kv_rank, plan.kv_world)?,
            v: rows("v_proj", cfg.num_kv_heads * d, plan.kv_rank, plan.kv_world)?,
            o: w.get_sharded(&format!("{p}.o_proj.weight"), &[h, cfg.num_heads * d], 1, r, n, kind, dev)?,
            heads: plan.heads,
            kv_heads: plan.kv_heads,
            head_dim: d,
        })
    }

    /// Attention output before o_proj's all-reduce: `[T, hidden]` partial sums, or
    /// `[probes, hidden]` when only the probe rows are needed (the last layer).
    fn forward(&self, x: &Tensor, rotary: &Rotary, batch: &PackedBatch, rows: Rows) -> Result<Tensor, ModelError> {
        let t = x.size()[0];
        let d = self.head_dim;
        let q = rotary.apply(&x.f_linear::<&Tensor>(&self.q, None)?.f_view([t, self.heads, d])?);
        let k = rotary.apply(&x.f_linear::<&Tensor>(&self.k, None)?.f_view([t, self.kv_heads, d])?);
        let v = x.f_linear::<&Tensor>(&self.v, None)?.f_view([t, self.kv_heads, d])?;
        let mut outs = Vec::with_capacity(batch.spans.len() * 2);
        for span in &batch.spans {
            let heads_first = |x: &Tensor, from, len| -> Result<Tensor, ModelError> {
                Ok(x.f_narrow(0, from, len)?.f_transpose(0, 1)?.f_unsqueeze(0)?)
            };
            let (s, l) = (span.start, span.real_len);
            let keys = self.repeat_kv(heads_first(&k, s, l + span.probes)?)?;
            let values = self.repeat_kv(heads_first(&v, s, l + span.probes)?)?;
            if rows == Rows::All {
                let real = Tensor::f_scaled_dot_product_attention::<Tensor>(
                    &heads_first(&q, s, l)?,
                    &keys.f_narrow(2, 0, l)?,
                    &values.f_narrow(2, 0, l)?,
                    None,
                    0.0,
                    true,
                    None,
                    false,
                )?;
                outs.push(real);
            }
            if let Some(mask) = &span.probe_mask {
                let probe = Tensor::f_scaled_dot_product_attention(
                    &heads_first(&q, s + l, span.probes)?,
                    &keys,
                    &values,
                    Some(mask),
                    0.0,
                    false,
                    None,
                    false,
                )?;
                outs.push(probe);
            }
        }
        // [1, heads, len, d] pieces -> [rows, heads * d]
        let out = Tensor::f_cat(&outs, 2)?.f_squeeze_dim(0)?.f_transpose(0, 1)?.f_reshape([-1, self.heads * d])?;
        Ok(out.f_linear::<&Tensor>(&self.o, None)?)
    }

    /// `[1, kv_heads, L, d]` -> `[1, heads, L, d]`: query head i reads kv head i / group.
    fn repeat_kv(&self, x: Tensor) -> Result<Tensor, ModelError> {
        let group = self.heads / self.kv_heads;
        if group == 1 {
            return Ok(x);
        }
        let s = x.size();
        Ok(x.f_unsqueeze(2)?
            .f_expand([s[0], s[1], group, s[2], s[3]], false)?
            .f_reshape([s[0], self.heads, s[2], s[3]])?)
    }
}

/// Which rows a layer must produce: all of them, or (in the last layer, whose
/// other rows nobody reads) only the probe tokens'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    All,
    Probes,
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
