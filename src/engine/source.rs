//! Where a model comes from: a Hugging Face style directory, or the demo model
//! compiled into the binary (the default when no `--model` is given).

use std::path::{Path, PathBuf};

use crate::chat::ChatTokenizer;
use crate::model::{Config, ModelError, Weights};

const DEMO_CONFIG: &str = include_str!("../../models/demo/config.json");
const DEMO_TOKENIZER: &[u8] = include_bytes!("../../models/demo/tokenizer.json");
static DEMO_WEIGHTS: &[u8] = include_bytes!("../../models/demo/model.safetensors");

#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A directory with `config.json`, `tokenizer.json` and safetensors weights.
    Dir(PathBuf),
    /// The small random-weight demo model shipped in `models/demo`.
    EmbeddedDemo,
}

impl ModelSource {
    pub fn from_arg(dir: Option<&Path>) -> ModelSource {
        match dir {
            Some(d) => ModelSource::Dir(d.to_path_buf()),
            None => ModelSource::EmbeddedDemo,
        }
    }

    /// A name for responses and logs.
    pub fn name(&self) -> String {
        match self {
            ModelSource::Dir(d) => {
                let d = d.canonicalize().unwrap_or_else(|_| d.clone());
                d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| d.display().to_string())
            }
            ModelSource::EmbeddedDemo => "reward-worker-demo".into(),
        }
    }

    /// The checkpoint alone, memory-mapped again (a wake from sleep level 2).
    pub fn open_weights(&self) -> Result<Weights, ModelError> {
        match self {
            ModelSource::Dir(dir) => Weights::open(dir),
            ModelSource::EmbeddedDemo => Weights::from_static("models/demo/model.safetensors", DEMO_WEIGHTS),
        }
    }

    pub fn load(&self) -> Result<(Config, ChatTokenizer, Weights), ModelError> {
        match self {
            ModelSource::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(ModelError::Config(format!("model directory {} does not exist", dir.display())));
                }
                let config = Config::from_file(&dir.join("config.json"))?;
                let tokenizer = ChatTokenizer::from_file(&dir.join("tokenizer.json"))?;
                let weights = Weights::open(dir)?;
                Ok((config, tokenizer, weights))
            }
            ModelSource::EmbeddedDemo => Ok((
                Config::from_json(DEMO_CONFIG)?,
                ChatTokenizer::from_bytes(DEMO_TOKENIZER)?,
                Weights::from_static("models/demo/model.safetensors", DEMO_WEIGHTS)?,
            )),
        }
    }
}
