//! The arithmetic behind `reward-worker plan`: per-rank weight, activation and
//! workspace bytes, communication bytes per token, and whether a layout fits a GPU.
//!
//! Weights follow the shard plan exactly (q/k/v/up split by output, o/down by
//! input, kv heads replicated when tp exceeds them, the embedding split by
//! vocabulary on the first stage, final norm + head on the last; norms and the
//! head are fp32). Activations are counted for one micro-batch of
//! `batch_tokens / pp` tokens (the engine splits its budget that way): the
//! residual stream, the peak inside a layer (the MLP's three `[T, ffn/tp]`
//! temporaries, or attention's q/k/v and their rotated copies), the rotary
//! tables, and the pipeline's in/out buffers. Attention is assumed to run in a
//! fused kernel (no `T x T` scores). A fixed reserve covers the CUDA context,
//! cuBLAS and NCCL buffers and allocator slack.

use serde::Serialize;

use super::plan::{vocab_range, StagePlan};
use crate::config::{Config, ParallelLayout};

/// Element type of the weights for planning. fp8 weights run with bf16 activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PlanDType {
    F32,
    Bf16,
    Fp8,
}

impl PlanDType {
    pub fn name(self) -> &'static str {
        match self {
            PlanDType::F32 => "f32",
            PlanDType::Bf16 => "bf16",
            PlanDType::Fp8 => "fp8",
        }
    }

    pub fn weight_bytes(self) -> u64 {
        match self {
            PlanDType::F32 => 4,
            PlanDType::Bf16 => 2,
            PlanDType::Fp8 => 1,
        }
    }

    pub fn activation_bytes(self) -> u64 {
        match self {
            PlanDType::F32 => 4,
            PlanDType::Bf16 | PlanDType::Fp8 => 2,
        }
    }
}

/// What to plan for.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub layout: ParallelLayout,
    pub dtype: PlanDType,
    pub gpu_memory_bytes: u64,
    pub batch_tokens: u64,
    pub reserve_bytes: u64,
}

/// One pipeline stage; every tensor-parallel rank of it needs the same (the
/// first rank's embedding range is the largest when the vocabulary does not divide).
#[derive(Debug, Clone, Serialize)]
pub struct StageMemory {
    pub stage: usize,
    pub first_layer: i64,
    pub last_layer: i64,
    pub first_global_rank: usize,
    pub last_global_rank: usize,
    pub layer_weight_bytes: u64,
    pub embedding_weight_bytes: u64,
    pub head_weight_bytes: u64,
    pub weight_bytes: u64,
    pub activation_bytes: u64,
    pub workspace_bytes: u64,
    pub reserve_bytes: u64,
    pub total_bytes: u64,
    /// Bytes this rank all-reduces per token (2 per layer, +1 for the embedding).
    pub tp_all_reduce_bytes_per_token: u64,
    /// What a ring all-reduce sends from this rank per token: 2 (tp - 1) / tp of the above.
    pub tp_ring_sent_bytes_per_token: u64,
    /// Hidden states this rank sends to the next stage per token (0 on the last stage).
    pub pp_send_bytes_per_token: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    pub tp: usize,
    pub pp: usize,
    pub ranks: usize,
    pub dtype: PlanDType,
    pub weight_bytes_per_element: u64,
    pub activation_bytes_per_element: u64,
    pub gpu_memory_bytes: u64,
    pub batch_tokens: u64,
    pub micro_batch_tokens: u64,
    pub parameters: u64,
    pub model_weight_bytes: u64,
    pub stages: Vec<StageMemory>,
    pub largest_rank_bytes: u64,
    pub fits: bool,
    pub verdict: String,
}

const FP32: u64 = 4;

/// Parameters of one layer on one tensor-parallel rank, without the norms.
fn layer_params(cfg: &Config, tp: u64) -> u64 {
    let (h, d, tp_i) = (cfg.hidden_size as u64, cfg.head_dim as u64, tp as i64);
    let heads = cfg.num_heads as u64 / tp;
    let kv = if cfg.num_kv_heads >= tp_i { (cfg.num_kv_heads / tp_i) as u64 } else { 1 };
    let ffn = cfg.intermediate_size as u64 / tp;
    2 * heads * d * h + 2 * kv * d * h + 2 * ffn * h
}

/// Plan `request` for `cfg`. The layout must be valid for the config.
pub fn plan(cfg: &Config, request: &PlanRequest) -> MemoryPlan {
    let (tp, pp) = (request.layout.tp, request.layout.pp);
    let (w, a) = (request.dtype.weight_bytes(), request.dtype.activation_bytes());
    let h = cfg.hidden_size as u64;
    let t = request.batch_tokens.div_ceil(pp as u64);
    let norms_per_layer = 4 * h * FP32; // two LayerNorm1P, gamma and beta
    let per_layer = layer_params(cfg, tp as u64) * w + norms_per_layer;
    let stages: Vec<StageMemory> = (0..pp)
        .map(|s| {
            let stage = StagePlan::new(cfg.num_layers, s, pp).expect("a validated layout");
            let layers = (stage.layers.end - stage.layers.start) as u64;
            let embedding = match stage.is_first() {
                true => vocab_range(cfg.vocab_size, 0, tp).1 as u64 * h * w,
                false => 0,
            };
            let head = match stage.is_last() {
                true => (2 * h + cfg.num_labels as u64 * (h + 1)) * FP32,
                false => 0,
            };
            let weight = layers * per_layer + embedding + head;
            let pipeline_buffers = u64::from(!stage.is_first()) + u64::from(!stage.is_last());
            let activation = (1 + pipeline_buffers) * t * h * a;
            let workspace = layer_workspace(cfg, tp as u64, t, a) + rotary_bytes(cfg, t, a);
            let all_reduces = if tp > 1 { 2 * layers + u64::from(stage.is_first()) } else { 0 };
            let tp_bytes = all_reduces * h * a;
            StageMemory {
                stage: s,
                first_layer: stage.layers.start,
                last_layer: stage.layers.end - 1,
                first_global_rank: s * tp,
                last_global_rank: (s + 1) * tp - 1,
                layer_weight_bytes: layers * per_layer,
                embedding_weight_bytes: embedding,
                head_weight_bytes: head,
                weight_bytes: weight,
                activation_bytes: activation,
                workspace_bytes: workspace,
                reserve_bytes: request.reserve_bytes,
                total_bytes: weight + activation + workspace + request.reserve_bytes,
                tp_all_reduce_bytes_per_token: tp_bytes,
                tp_ring_sent_bytes_per_token: tp_bytes * 2 * (tp as u64 - 1) / tp as u64,
                pp_send_bytes_per_token: if stage.is_last() { 0 } else { h * a },
            }
        })
        .collect();
    let largest = stages.iter().map(|s| s.total_bytes).max().unwrap_or(0);
    let fits = largest <= request.gpu_memory_bytes;
    let mut out = MemoryPlan {
        tp,
        pp,
        ranks: tp * pp,
        dtype: request.dtype,
        weight_bytes_per_element: w,
        activation_bytes_per_element: a,
        gpu_memory_bytes: request.gpu_memory_bytes,
        batch_tokens: request.batch_tokens,
        micro_batch_tokens: t,
        parameters: parameters(cfg),
        model_weight_bytes: parameters(cfg) * w,
        stages,
        largest_rank_bytes: largest,
        fits,
        verdict: String::new(),
    };
    out.verdict = verdict(cfg, request, &out);
    out
}

/// Every parameter of the model (embedding, layers, norms, head).
pub fn parameters(cfg: &Config) -> u64 {
    let h = cfg.hidden_size as u64;
    let layers = cfg.num_layers as u64 * (layer_params(cfg, 1) + 4 * h);
    cfg.vocab_size as u64 * h + layers + 2 * h + cfg.num_labels as u64 * (h + 1)
}

/// Peak temporaries inside one layer for `t` tokens (the residual stream not included).
fn layer_workspace(cfg: &Config, tp: u64, t: u64, a: u64) -> u64 {
    let (h, d) = (cfg.hidden_size as u64, cfg.head_dim as u64);
    let heads = cfg.num_heads as u64 / tp;
    let kv = if cfg.num_kv_heads >= tp as i64 { cfg.num_kv_heads as u64 / tp } else { 1 };
    let ffn = cfg.intermediate_size as u64 / tp;
    // normed input, q, k, v, rotated q and k, attention output, o_proj partial + its sum
    let attention = t * a * (h + 2 * heads * d + 3 * kv * d + heads * d + 2 * h);
    // normed input, up, relu, square, down_proj partial + its sum
    let mlp = t * a * (h + 3 * ffn + 2 * h);
    attention.max(mlp)
}

/// The fp32 cos/sin tables for the whole context, and their rows for one batch.
fn rotary_bytes(cfg: &Config, t: u64, a: u64) -> u64 {
    let rot = cfg.rotary_dim as u64;
    2 * cfg.max_position_embeddings as u64 * rot * FP32 + 2 * t * rot * a
}

/// Bytes for people: GB (10^9) with one decimal, MB below 0.1 GB.
pub fn gb(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b < 100_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{:.1} GB", b as f64 / 1e9),
    }
}

fn verdict(cfg: &Config, request: &PlanRequest, plan: &MemoryPlan) -> String {
    let fullest = plan.stages.iter().max_by_key(|s| s.total_bytes).expect("at least one stage");
    let parts = format!(
        "weights {} ({} of layers, {} of embedding, {} of head), activations and workspace {}, reserve {}",
        gb(fullest.weight_bytes),
        gb(fullest.layer_weight_bytes),
        gb(fullest.embedding_weight_bytes),
        gb(fullest.head_weight_bytes),
        gb(fullest.activation_bytes + fullest.workspace_bytes),
        gb(fullest.reserve_bytes)
    );
    let memory = gb(request.gpu_memory_bytes);
    if plan.fits {
        return format!(
            "fits: the fullest rank (stage {}) needs {} of {memory}: {parts}",
            fullest.stage,
            gb(fullest.total_bytes)
        );
    }
    let mut text = format!(
        "does not fit: a rank of stage {} needs {} but a GPU has {memory}: {parts}",
        fullest.stage,
        gb(fullest.total_bytes)
    );
    if fullest.weight_bytes > request.gpu_memory_bytes {
        text +=
            &format!("; the weights alone exceed the GPU by {}", gb(fullest.weight_bytes - request.gpu_memory_bytes));
    }
    let smallest_pp = (plan.pp + 1..=cfg.num_layers as usize).find(|&pp| {
        let layout = ParallelLayout { tp: plan.tp, pp };
        layout.validate(cfg).is_ok() && self::plan(cfg, &PlanRequest { layout, ..request.clone() }).fits
    });
    match smallest_pp {
        Some(pp) => {
            text += &format!(". With tp={} the smallest pipeline that fits is pp={pp} ({} GPUs)", plan.tp, plan.tp * pp)
        }
        None => text += &format!(". No pipeline depth fits with tp={}", plan.tp),
    }
    text
}
