//! Options shared by the subcommands that load a model.

use clap::Args;
use std::path::PathBuf;

use crate::chat::Truncate;
use crate::config::{CommBackend, ParallelLayout};
use crate::engine::{ModelSource, ScoreOptions, Scorer};
use crate::model::{parse_device, DType};
use crate::parallel::{self, GroupOptions};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (config.json, tokenizer.json, *.safetensors). Default: the embedded demo model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Element type of the decoder (norms, softmax and the reward head are always fp32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DType,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Tensor-parallel ranks per pipeline stage.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub tp: usize,
    /// Pipeline-parallel stages.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub pp: usize,
    /// How the ranks talk: `threads` (one process, shared memory) or `nccl` (GPUs).
    /// Default: nccl with --device cuda, threads on cpu.
    #[arg(long, value_enum)]
    pub backend: Option<CommBackend>,
    /// Seconds a rank waits for its peers in any collective before the group fails.
    #[arg(long, default_value_t = 600.0)]
    pub comm_timeout: f64,
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
        let source = ModelSource::from_arg(self.model.as_deref());
        let started = std::time::Instant::now();
        let layout = ParallelLayout { tp: self.tp, pp: self.pp };
        let scorer = if layout.world() > 1 || self.backend == Some(CommBackend::Nccl) {
            if !(self.comm_timeout > 0.0 && self.comm_timeout.is_finite()) {
                return Err(format!("--comm-timeout must be a positive number of seconds, got {}", self.comm_timeout));
            }
            let backend = self.backend.unwrap_or(match device {
                tch::Device::Cuda(_) => CommBackend::Nccl,
                _ => CommBackend::Threads,
            });
            let mut options = GroupOptions::new(layout, backend, self.dtype, device);
            options.timeout = std::time::Duration::from_secs_f64(self.comm_timeout);
            match parallel::start_scorer(&source, &options)
                .map_err(|e| format!("cannot start the worker group: {e}"))?
            {
                parallel::Started::Scorer(scorer) => scorer,
                // A follower rank of a multi-process group has served until rank 0 finished.
                parallel::Started::Follower(Ok(())) => std::process::exit(0),
                parallel::Started::Follower(Err(e)) => {
                    eprintln!("reward-worker: error: the worker group failed: {e}");
                    std::process::exit(2)
                }
            }
        } else {
            Scorer::load(&source, self.dtype, device).map_err(|e| format!("cannot load the model: {e}"))?
        };
        tracing::info!(model = %scorer.name, backend = %scorer.describe(),
                       seconds = started.elapsed().as_secs_f64(), "model loaded");
        Ok(scorer)
    }

    pub fn options(&self) -> ScoreOptions {
        ScoreOptions { truncate: self.truncate, use_record_system: self.use_record_system }
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number of at least 1")),
    }
}
