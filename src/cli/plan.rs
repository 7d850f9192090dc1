//! `reward-worker plan`: memory and traffic of a parallel layout, without loading weights.

use clap::Args;
use std::path::PathBuf;

use crate::config::{Config, ParallelLayout};
use crate::parallel::memory::{gb, plan, MemoryPlan, PlanDType, PlanRequest};

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The model's config.json, or a directory holding it.
    #[arg(long)]
    pub config: PathBuf,
    /// Tensor-parallel ranks per stage.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Pipeline stages.
    #[arg(long, default_value_t = 1)]
    pub pp: usize,
    /// Weight element type (fp8 weights are planned with bf16 activations).
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: PlanDType,
    /// Memory of one GPU, in GB (10^9 bytes).
    #[arg(long)]
    pub gpu_memory: f64,
    /// Most tokens in one forward batch (split into pp micro-batches).
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: u64,
    /// GB per GPU kept for the CUDA context, cuBLAS/NCCL buffers and allocator slack.
    #[arg(long, default_value_t = 2.0)]
    pub reserve: f64,
    /// Print JSON (byte counts) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Exit status 0 when the layout fits, 1 when it does not, 2 for a layout the shapes refuse.
pub fn run(args: PlanArgs) -> Result<i32, String> {
    let path = if args.config.is_dir() { args.config.join("config.json") } else { args.config.clone() };
    let cfg = Config::from_file(&path).map_err(|e| e.to_string())?;
    let layout = ParallelLayout { tp: args.tp, pp: args.pp };
    layout.validate(&cfg).map_err(|e| e.to_string())?;
    for (name, value) in [("--gpu-memory", args.gpu_memory), ("--reserve", args.reserve)] {
        if !(value >= 0.0 && value.is_finite()) {
            return Err(format!("{name} must be a non-negative number of GB, got {value}"));
        }
    }
    if args.batch_tokens == 0 {
        return Err("--batch-tokens must be at least 1".into());
    }
    let request = PlanRequest {
        layout,
        dtype: args.dtype,
        gpu_memory_bytes: (args.gpu_memory * 1e9) as u64,
        batch_tokens: args.batch_tokens,
        reserve_bytes: (args.reserve * 1e9) as u64,
    };
    let planned = plan(&cfg, &request);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&planned).expect("a plan serialises"));
    } else {
        print!("{}", table(&cfg, &planned));
    }
    Ok(if planned.fits { 0 } else { 1 })
}

fn table(cfg: &Config, p: &MemoryPlan) -> String {
    let mut out = format!(
        "model: {} layers, hidden {}, ffn {}, {} heads / {} kv heads x {}, vocab {}: {:.1}B parameters, {} in {}\n",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
        p.parameters as f64 / 1e9,
        gb(p.model_weight_bytes),
        p.dtype.name()
    );
    out += &format!(
        "layout: tp={} x pp={} = {} GPUs of {}; {} tokens per batch, {} per micro-batch\n\n",
        p.tp,
        p.pp,
        p.ranks,
        gb(p.gpu_memory_bytes),
        p.batch_tokens,
        p.micro_batch_tokens
    );
    out += "per rank   stage  layers   ranks    layers    embedding  head     weights   activations  workspace  reserve  total\n";
    for s in &p.stages {
        out += &format!(
            "           {:<6} {:<8} {:<8} {:<9} {:<10} {:<8} {:<9} {:<12} {:<10} {:<8} {}\n",
            s.stage,
            format!("{}-{}", s.first_layer, s.last_layer),
            format!("{}-{}", s.first_global_rank, s.last_global_rank),
            gb(s.layer_weight_bytes),
            gb(s.embedding_weight_bytes),
            gb(s.head_weight_bytes),
            gb(s.weight_bytes),
            gb(s.activation_bytes),
            gb(s.workspace_bytes),
            gb(s.reserve_bytes),
            gb(s.total_bytes)
        );
    }
    out += "\ncommunication per token, per rank:\n";
    for s in &p.stages {
        out += &format!(
            "  stage {}: tensor-parallel all-reduce {} bytes (ring sends {}), pipeline send {} bytes\n",
            s.stage, s.tp_all_reduce_bytes_per_token, s.tp_ring_sent_bytes_per_token, s.pp_send_bytes_per_token
        );
    }
    out += "  scores back to rank 0: 36 bytes per scored turn\n\n";
    out += &p.verdict;
    out.push('\n');
    out
}
