//! The Nemotron-4 reward model: configuration, checkpoint loading and the forward pass.

pub mod attention;
pub mod cascade;
pub mod cpu_flash;
pub mod embedding;
pub mod flops;
pub mod kv_cache;
pub mod nemotron;
pub mod packed;
pub mod rope;
pub mod sleep;
pub mod weights;

pub use crate::config::{Config, DType};
pub use kv_cache::{CacheOps, KvRead, KvStore};
pub use nemotron::NemotronRewardModel;
pub use packed::{BatchLayout, PackedBatch, Segment};
pub use weights::Weights;

use std::path::{Path, PathBuf};

/// Everything that can go wrong while loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("{file}: {message}")]
    InFile { file: PathBuf, message: String },
    #[error("checkpoint has no tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, the config implies {expected:?}")]
    Shape { name: String, expected: Vec<i64>, got: Vec<i64> },
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("device: {0}")]
    Device(String),
    #[error("worker group: {0}")]
    Group(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<crate::config::ConfigError> for ModelError {
    fn from(e: crate::config::ConfigError) -> ModelError {
        use crate::config::ConfigError;
        match e {
            ConfigError::Io { path, source } => ModelError::Io { path, source },
            ConfigError::Invalid(message) => ModelError::Config(message),
            ConfigError::InFile { file, message } => ModelError::InFile { file, message },
        }
    }
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> ModelError {
        ModelError::Io { path: path.to_path_buf(), source }
    }
}

/// Parse `cpu`, `cuda` or `cuda:N`, and make sure a requested GPU really exists.
pub fn parse_device(spec: &str) -> Result<tch::Device, ModelError> {
    match spec {
        "cpu" => Ok(tch::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| ModelError::Device(format!("`{s}` is not a device (cpu, cuda, cuda:N)")))?,
                None => 0,
            };
            load_torch_cuda();
            let count = tch::Cuda::device_count() as usize;
            if count == 0 {
                return Err(ModelError::Device(format!(
                    "`{s}` requested but libtorch sees no CUDA device (is this a GPU machine with a CUDA build of torch 2.11?)"
                )));
            }
            if index >= count {
                return Err(ModelError::Device(format!("`{s}` requested but only {count} CUDA device(s) exist")));
            }
            Ok(tch::Device::Cuda(index))
        }
        other => Err(ModelError::Device(format!("`{other}` is not a device (cpu, cuda, cuda:N)"))),
    }
}

/// The linker drops `libtorch_cuda.so` (nothing references it by symbol), which
/// would leave CUDA silently unavailable. Load it by hand before asking for a GPU;
/// the binary's rpath points at the wheel's `torch/lib`, where it lives.
pub(crate) fn load_torch_cuda() {
    for name in [c"libtorch_cuda.so", c"libtorch_cuda_cpp.so", c"libtorch_cuda_cu.so"] {
        // SAFETY: dlopen with a valid C string; the handle is intentionally leaked so
        // the library stays loaded for the life of the process.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            tracing::debug!(library = ?name, "loaded libtorch CUDA support");
        }
    }
}
