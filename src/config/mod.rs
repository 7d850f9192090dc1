//! Configuration types shared by every layer above: the model architecture
//! (`config.json`), the decoder's element type and the parallel layout. They
//! sit below `model/` and `parallel/` (and the service and recipes above
//! those), so imports only run downward.

pub mod dtype;
pub mod model;
pub mod parallel;

pub use dtype::DType;
pub use model::{Config, RawConfig};
pub use parallel::{CommBackend, ParallelLayout};

use std::path::{Path, PathBuf};

/// A configuration that cannot be read or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("{file}: {message}")]
    InFile { file: PathBuf, message: String },
}

impl ConfigError {
    pub fn io(path: &Path, source: std::io::Error) -> ConfigError {
        ConfigError::Io { path: path.to_path_buf(), source }
    }

    /// Attach the file a problem was found in.
    pub fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Invalid(message) => ConfigError::InFile { file: file.to_path_buf(), message },
            other => other,
        }
    }
}
