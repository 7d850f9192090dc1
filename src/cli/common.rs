//! Options shared by the subcommands that load a model, and the ranges every
//! numeric option is held to: 0 and absurd values are refused by clap (exit
//! status 2) with a message that names the option and its range.

use clap::Args;
use std::path::PathBuf;

use crate::chat::Truncate;
use crate::config::{CommBackend, Config, ParallelLayout};
use crate::engine::{ModelSource, ScoreOptions, Scorer};
use crate::files::lines::{record_line_limit, MAX_LINE_BYTES};
use crate::model::{parse_device, DType};
use crate::parallel::{self, GroupOptions};

/// Records (or pairs) read and scored together.
pub const MAX_CHUNK: u64 = 1 << 16;
/// Tokens in one forward batch: far beyond any device's memory for these models.
pub const MAX_BATCH_TOKENS: u64 = 1 << 24;
pub const MAX_THREADS: u64 = 1024;
/// Ranks per dimension of the parallel layout.
pub const MAX_RANKS: u64 = 1024;

/// An integer in `lo..=hi`, for clap's `value_parser`.
pub fn in_range(text: &str, lo: u64, hi: u64) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("must be an integer in {lo}..={hi}")),
    }
}

pub fn chunk(text: &str) -> Result<usize, String> {
    in_range(text, 1, MAX_CHUNK).map(|n| n as usize)
}

pub fn batch_tokens(text: &str) -> Result<usize, String> {
    in_range(text, 1, MAX_BATCH_TOKENS).map(|n| n as usize)
}

pub fn threads(text: &str) -> Result<i32, String> {
    in_range(text, 1, MAX_THREADS).map(|n| n as i32)
}

pub fn max_line_bytes(text: &str) -> Result<usize, String> {
    in_range(text, 64, MAX_LINE_BYTES as u64).map(|n| n as usize)
}

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
    /// Tensor-parallel ranks per pipeline stage, 1..=1024.
    #[arg(long, default_value_t = 1, value_parser = ranks)]
    pub tp: usize,
    /// Pipeline-parallel stages, 1..=1024.
    #[arg(long, default_value_t = 1, value_parser = ranks)]
    pub pp: usize,
    /// How the ranks talk: `threads` (one process, shared memory) or `nccl` (GPUs).
    /// Default: nccl with --device cuda, threads on cpu.
    #[arg(long, value_enum)]
    pub backend: Option<CommBackend>,
    /// Seconds a rank waits for its peers in any collective before the group fails.
    #[arg(long, default_value_t = 600.0)]
    pub comm_timeout: f64,
    /// CPU threads for the model, 1..=1024 (default: libtorch's choice).
    #[arg(long, value_parser = threads)]
    pub threads: Option<i32>,
    /// Most tokens in one forward batch, 1..=16777216.
    #[arg(long, default_value_t = 8192, value_parser = batch_tokens)]
    pub batch_tokens: usize,
    /// Over-long conversations: `none` fails the record, `left` drops the oldest turns.
    #[arg(long, value_enum, default_value = "none")]
    pub truncate: Truncate,
    /// Render each record's own system text instead of the SteerLM system prompt.
    #[arg(long)]
    pub use_record_system: bool,
    /// Bytes of keys and values kept across batches and requests (the whole
    /// model's; each rank holds its slice), e.g. `2GiB`; `0` turns the prefix
    /// cache off. Default: an eighth of the machine's memory, at most 4 GiB, on
    /// the CPU; 8 GiB on CUDA.
    #[arg(long, value_parser = byte_size)]
    pub prefix_cache_bytes: Option<usize>,
    /// Score records apart from the prefix cache unless a request asks for it
    /// (`"prefix_cache": true`).
    #[arg(long)]
    pub bypass_prefix_cache: bool,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        ModelSource::from_arg(self.model.as_deref())
    }

    pub fn load(&self) -> Result<Scorer, String> {
        if let Some(n) = self.threads {
            tch::set_num_threads(n);
        }
        let device = parse_device(&self.device).map_err(|e| e.to_string())?;
        let dtype = self.resolved_dtype(device);
        let source = self.source();
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
            let mut options = GroupOptions::new(layout, backend, dtype, device);
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
            Scorer::load(&source, dtype, device).map_err(|e| format!("cannot load the model: {e}"))?
        };
        tracing::info!(model = %scorer.name, dtype = dtype.name(), backend = %scorer.describe(),
                       seconds = started.elapsed().as_secs_f64(), "model loaded");
        let cache_bytes = self.prefix_cache_bytes.unwrap_or_else(|| default_prefix_cache_bytes(device));
        scorer.set_prefix_cache_bytes(cache_bytes);
        let stats = scorer.prefix_cache_stats();
        tracing::info!(
            bytes = cache_bytes,
            bytes_per_token = stats.bytes_per_token,
            tokens = cache_bytes / stats.bytes_per_token.max(1),
            default = self.prefix_cache_bytes.is_none(),
            "prefix cache {}",
            if cache_bytes >= stats.bytes_per_token { "on" } else { "off" }
        );
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
        ScoreOptions {
            truncate: self.truncate,
            use_record_system: self.use_record_system,
            bypass_prefix_cache: self.bypass_prefix_cache,
        }
    }

    /// The model's context (`max_position_embeddings`), from its `config.json`
    /// alone: known before the model is loaded (or when it never is).
    pub fn context(&self) -> Result<usize, String> {
        let config = match &self.model {
            Some(dir) if !dir.is_dir() => {
                return Err(format!("cannot load the model: model directory {} does not exist", dir.display()))
            }
            Some(dir) => Config::from_file(&dir.join("config.json")).map_err(|e| e.to_string()),
            None => ModelSource::EmbeddedDemo.load().map(|(c, _, _)| c).map_err(|e| e.to_string()),
        };
        let config = config.map_err(|e| format!("cannot load the model: {e}"))?;
        Ok(config.max_position_embeddings.max(1) as usize)
    }

    /// The model's files, which no output may overwrite.
    pub fn files(&self) -> Vec<PathBuf> {
        let Some(dir) = &self.model else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect()
    }
}

/// The prefix cache's default bound: an eighth of the machine's memory, at
/// most 4 GiB, on the CPU (it lives beside the weights in RAM); 8 GiB on CUDA
/// (about a tenth of an 80 GB device, a seventeenth of a 141 GB one).
pub fn default_prefix_cache_bytes(device: tch::Device) -> usize {
    const GIB: usize = 1 << 30;
    match device {
        tch::Device::Cpu => (physical_memory() / 8).min(4 * GIB),
        _ => 8 * GIB,
    }
}

fn physical_memory() -> usize {
    // SAFETY: sysinfo writes into the struct it is given and nothing else.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return 8 << 30;
    }
    info.totalram as usize * info.mem_unit.max(1) as usize
}

/// A byte count: digits with an optional `K`/`M`/`G` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024) suffix.
pub fn byte_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("`{other}` is not a byte unit (K, M, G, KiB, MiB, GiB)")),
    };
    let n: usize = digits.parse().map_err(|_| format!("`{text}` is not a number of bytes"))?;
    n.checked_mul(scale).ok_or_else(|| format!("`{text}` bytes is too large"))
}

/// The byte limit of an input line.
#[derive(Args, Debug, Clone)]
pub struct LineArgs {
    /// Longest input line in bytes, 64..=1073741824; a longer line is a per-record
    /// error and is never tokenised. Default: from the model's context (64 bytes
    /// per token + 64 KiB; 16 contexts with --truncate left).
    #[arg(long, value_parser = max_line_bytes)]
    pub max_line_bytes: Option<usize>,
}

impl LineArgs {
    /// The limit for a line holding `records` conversations (a preference pair holds three).
    pub fn limit(&self, model: &ModelArgs, records: usize) -> Result<usize, String> {
        match self.max_line_bytes {
            Some(n) => Ok(n),
            None => Ok(record_line_limit(model.context()?, model.truncate, records)),
        }
    }
}

/// Tensor-parallel ranks or pipeline stages.
pub fn ranks(text: &str) -> Result<usize, String> {
    in_range(text, 1, MAX_RANKS).map(|n| n as usize)
}
