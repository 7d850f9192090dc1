//! Options shared by the subcommands that load a model.

use clap::Args;
use std::path::PathBuf;

use crate::chat::Truncate;
use crate::engine::{ModelSource, ScoreOptions, Scorer};
use crate::model::{parse_device, DType};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (config.json, tokenizer.json, *.safetensors). Default: the embedded demo model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Element type of the decoder (norms, softmax and the reward head are always fp32).
    /// `auto`: bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, f32 elsewhere.
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DType,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Tensor-parallel ranks.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Pipeline-parallel stages.
    #[arg(long, default_value_t = 1)]
    pub pp: usize,
    /// CPU threads for the model (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Most tokens in one forward batch.
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    /// Over-long conversations: `none` fails the record, `left` drops the oldest turns.
    #[arg(long, value_enum, default_value = "none")]
    pub truncate: Truncate,
    /// Render each record's own system text instead of the SteerLM system prompt.
    #[arg(long)]
    pub use_record_system: bool,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Scorer, String> {
        if self.tp != 1 || self.pp != 1 {
            return Err(format!(
                "--tp {} --pp {}: this build scores on one rank; the tensor x pipeline parallel group is not available yet",
                self.tp, self.pp
            ));
        }
        if self.batch_tokens == 0 {
            return Err("--batch-tokens must be at least 1".into());
        }
        if let Some(n) = self.threads {
            if n < 1 {
                return Err("--threads must be at least 1".into());
            }
            tch::set_num_threads(n);
        }
        let device = parse_device(&self.device).map_err(|e| e.to_string())?;
        let dtype = self.resolved_dtype(device);
        let source = ModelSource::from_arg(self.model.as_deref());
        let started = std::time::Instant::now();
        let scorer = Scorer::load(&source, dtype, device).map_err(|e| format!("cannot load the model: {e}"))?;
        tracing::info!(model = %scorer.name, dtype = dtype.name(), device = %self.device,
                       seconds = started.elapsed().as_secs_f64(), "model loaded");
        Ok(scorer)
    }

    /// `--dtype` resolved for `device` (`auto` -> bf16 or f32); the choice is
    /// logged, and bf16 on a CPU without native bf16 is warned about.
    pub fn resolved_dtype(&self, device: tch::Device) -> DType {
        let (dtype, why) = self.dtype.resolve(device);
        tracing::info!(dtype = dtype.name(), "decoder dtype {} ({why})", dtype.name());
        if dtype == DType::Bf16 && device == tch::Device::Cpu && !crate::config::dtype::cpu_has_native_bf16() {
            tracing::warn!(
                "--dtype bf16 on a CPU without AVX512-BF16 or AMX: libtorch's bf16 matmul runs at well under \
                 1 GFLOP/s here against about 90 in f32; --dtype auto (or f32) is ~100x faster"
            );
        }
        dtype
    }

    pub fn options(&self) -> ScoreOptions {
        ScoreOptions { truncate: self.truncate, use_record_system: self.use_record_system }
    }
}
