//! Training recipes: one TOML file that says how to start the service for a
//! training run (model, dtype, device, parallel layout and backend, listen
//! address, batching budget, queue bound, deadlines, API key source, reward
//! weights and normalisation). `reward-worker launch RECIPE` turns it into the
//! flags of `serve`, then the flags given on the command line override it.
//!
//! Every section denies unknown keys; an error names the file and the key.
//! The parallel layout is checked against the model's `config.json` (or, where
//! the checkpoint is not on this machine, the architecture file named by
//! `model.config`) before anything is loaded.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::config::{CommBackend, Config, DType, ParallelLayout};
use crate::engine::ModelSource;
use crate::reward::RewardConfig;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("recipe {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A recipe as written (all sections optional; the defaults are `serve`'s).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// What the recipe is for (free text).
    pub description: Option<String>,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub parallel: ParallelSection,
    #[serde(default)]
    pub serve: ServeSection,
    #[serde(default)]
    pub batching: BatchingSection,
    #[serde(default)]
    pub scoring: ScoringSection,
    /// The reward pipeline, exactly as a `--reward-config` JSON file.
    pub reward: Option<RewardConfig>,
    #[serde(default)]
    pub reward_files: RewardFiles,
    #[serde(default)]
    pub colocate: ColocateSection,
}

/// Sharing the GPUs with a rollout engine (`POST /sleep`, `/wake_up`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColocateSection {
    /// The level of a `POST /sleep` without `?level=` (`--sleep-level`): 1
    /// keeps the weights in (pinned) host memory for a fast wake, 2 drops them
    /// and reloads the checkpoint, for hosts without the memory to spare.
    pub sleep_level: Option<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The checkpoint directory (relative to the recipe); absent: the embedded demo model.
    pub path: Option<PathBuf>,
    /// An architecture `config.json` to validate the layout with when `path`
    /// is not on this machine (e.g. checking a recipe on a login node).
    pub config: Option<PathBuf>,
    pub dtype: Option<DType>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: Option<String>,
    /// CPU threads for libtorch.
    pub threads: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelSection {
    pub tp: Option<usize>,
    pub pp: Option<usize>,
    pub backend: Option<CommBackend>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// A Unix socket path, in addition to TCP.
    pub uds: Option<PathBuf>,
    /// Names clients may use for the model (the first is reported).
    #[serde(default)]
    pub served_model_name: Vec<String>,
    /// The environment variable that holds the API key (never the key itself).
    pub api_key_env: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_conversations: Option<usize>,
    /// KServe `rewards` as [B, 1] through the reward pipeline.
    pub merge_attributes: Option<bool>,
    /// Most tokens one request may cost after truncation (`--max-request-tokens`).
    pub max_request_tokens: Option<usize>,
    /// Seconds: `--header-timeout`, `--body-timeout`, `--shutdown-grace` (range-checked by `serve`).
    pub header_timeout: Option<f64>,
    pub body_timeout: Option<f64>,
    pub shutdown_grace: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingSection {
    pub batch_tokens: Option<usize>,
    pub queue_limit: Option<usize>,
    pub prepare_threads: Option<usize>,
    /// Default deadline of a request, in seconds.
    pub request_timeout: Option<f64>,
    /// Bytes of keys and values kept across batches (`--prefix-cache-bytes`; 0: off).
    pub prefix_cache_bytes: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringSection {
    pub truncate: Option<crate::chat::Truncate>,
    pub use_record_system: Option<bool>,
    /// `false`: requests bypass the prefix cache unless they ask for it (`--bypass-prefix-cache`).
    pub prefix_cache: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardFiles {
    /// A presets JSON file (e.g. written by `tune-weights`).
    pub presets: Option<PathBuf>,
    /// Running-normalisation statistics, read at start and written at exit.
    pub running_state: Option<PathBuf>,
}

/// A recipe read from a file, its relative paths resolved against the file's folder.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub path: PathBuf,
    pub recipe: Recipe,
}

impl LoadedRecipe {
    pub fn read(path: &Path) -> Result<LoadedRecipe, RecipeError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| RecipeError::Io { path: path.to_path_buf(), source })?;
        let recipe = parse(&text).map_err(|message| RecipeError::Invalid { path: path.to_path_buf(), message })?;
        let loaded = LoadedRecipe {
            path: path.to_path_buf(),
            recipe: recipe.resolve_paths(path.parent().unwrap_or(Path::new("."))),
        };
        loaded.validate()?;
        Ok(loaded)
    }

    fn invalid(&self, message: String) -> RecipeError {
        RecipeError::Invalid { path: self.path.clone(), message }
    }

    /// Values that parse but cannot work: a layout the model does not split
    /// into, zero budgets, a reward config the pipeline refuses.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let r = &self.recipe;
        let config = self.architecture()?;
        let layout = ParallelLayout { tp: r.parallel.tp.unwrap_or(1), pp: r.parallel.pp.unwrap_or(1) };
        layout.validate(&config).map_err(|e| self.invalid(format!("[parallel]: {e}")))?;
        for (key, value) in [
            ("batching.batch_tokens", r.batching.batch_tokens),
            ("batching.queue_limit", r.batching.queue_limit),
            ("batching.prepare_threads", r.batching.prepare_threads),
            ("serve.max_body_bytes", r.serve.max_body_bytes),
            ("serve.max_conversations", r.serve.max_conversations),
        ] {
            if value == Some(0) {
                return Err(self.invalid(format!("`{key}` must be at least 1")));
            }
        }
        if let Some(t) = r.batching.request_timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(
                    self.invalid(format!("`batching.request_timeout` must be a positive number of seconds, got {t}"))
                );
            }
        }
        if let Some(name) = &r.serve.api_key_env {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(
                    self.invalid(format!("`serve.api_key_env` must name an environment variable, got `{name}`"))
                );
            }
        }
        if let Some(reward) = &r.reward {
            let presets = crate::reward::PresetBook::load(r.reward_files.presets.as_deref())
                .map_err(|e| self.invalid(format!("[reward_files].presets: {e}")))?;
            crate::reward::RewardPipeline::new(reward.clone(), presets)
                .map_err(|e| self.invalid(format!("[reward]: {e}")))?;
        }
        Ok(())
    }

    /// The model architecture the layout is checked against.
    pub fn architecture(&self) -> Result<Config, RecipeError> {
        let m = &self.recipe.model;
        let from_file = |p: &Path| Config::from_file(p).map_err(|e| self.invalid(format!("model config: {e}")));
        match (&m.path, &m.config) {
            (Some(dir), _) if dir.join("config.json").is_file() => from_file(&dir.join("config.json")),
            (_, Some(config)) => from_file(config),
            (Some(dir), None) => Err(self.invalid(format!(
                "`model.path` {} has no config.json here; set `model.config` to its architecture file to validate the layout",
                dir.display()
            ))),
            (None, None) => ModelSource::EmbeddedDemo.load().map(|(c, _, _)| c).map_err(|e| self.invalid(e.to_string())),
        }
    }

    /// The recipe as `serve` flags (later flags on the command line override them).
    pub fn to_args(&self) -> Vec<String> {
        let r = &self.recipe;
        let mut args = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(format!("--{name}"));
                args.push(v);
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        flag("model", path(&r.model.path));
        flag("dtype", r.model.dtype.map(|d| format!("{d:?}").to_lowercase()));
        flag("device", r.model.device.clone());
        flag("threads", r.model.threads.map(|t| t.to_string()));
        flag("tp", r.parallel.tp.map(|v| v.to_string()));
        flag("pp", r.parallel.pp.map(|v| v.to_string()));
        // Only a non-default backend becomes a flag, so a build without the
        // worker group still launches one-rank recipes.
        flag("backend", r.parallel.backend.filter(|b| *b != CommBackend::Threads).map(|_| "nccl".to_string()));
        flag("host", r.serve.host.clone());
        flag("port", r.serve.port.map(|v| v.to_string()));
        flag("uds", path(&r.serve.uds));
        for name in &r.serve.served_model_name {
            flag("served-model-name", Some(name.clone()));
        }
        flag("api-key-env", r.serve.api_key_env.clone());
        flag("max-body-bytes", r.serve.max_body_bytes.map(|v| v.to_string()));
        flag("max-conversations", r.serve.max_conversations.map(|v| v.to_string()));
        flag("max-request-tokens", r.serve.max_request_tokens.map(|v| v.to_string()));
        flag("header-timeout", r.serve.header_timeout.map(|v| v.to_string()));
        flag("body-timeout", r.serve.body_timeout.map(|v| v.to_string()));
        flag("shutdown-grace", r.serve.shutdown_grace.map(|v| v.to_string()));
        flag("batch-tokens", r.batching.batch_tokens.map(|v| v.to_string()));
        flag("queue-limit", r.batching.queue_limit.map(|v| v.to_string()));
        flag("prepare-threads", r.batching.prepare_threads.map(|v| v.to_string()));
        flag("request-timeout", r.batching.request_timeout.map(|v| v.to_string()));
        flag("prefix-cache-bytes", r.batching.prefix_cache_bytes.map(|v| v.to_string()));
        flag("truncate", r.scoring.truncate.map(|t| format!("{t:?}").to_lowercase()));
        flag("presets", path(&r.reward_files.presets));
        flag("running-state", path(&r.reward_files.running_state));
        flag("sleep-level", r.colocate.sleep_level.map(|v| v.to_string()));
        if r.serve.merge_attributes == Some(true) {
            args.push("--merge-attributes".into());
        }
        if r.scoring.use_record_system == Some(true) {
            args.push("--use-record-system".into());
        }
        if r.scoring.prefix_cache == Some(false) {
            args.push("--bypass-prefix-cache".into());
        }
        args
    }
}

impl Recipe {
    fn resolve_paths(mut self, base: &Path) -> Recipe {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut() {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        fix(&mut self.model.path);
        fix(&mut self.model.config);
        fix(&mut self.serve.uds);
        fix(&mut self.reward_files.presets);
        fix(&mut self.reward_files.running_state);
        self
    }
}

/// Parse recipe text. The message names the key at fault and its line.
pub fn parse(text: &str) -> Result<Recipe, String> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let message = e.message().trim().to_string();
        let key = e.span().and_then(|s| key_at(text, s.start));
        match (key, line) {
            (Some(key), Some(line)) => format!("key `{key}` (line {line}): {message}"),
            (None, Some(line)) => format!("line {line}: {message}"),
            _ => message,
        }
    })
}

/// The dotted key (`section.key`) whose line holds byte `offset`, if it is a key line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let section = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    if line.starts_with('[') {
        return Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    }
    let key = line.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        let err = parse("[batching]\nbatch_tokens = \"many\"\n").unwrap_err();
        assert!(err.contains("batching.batch_tokens") && err.contains("line 2"), "{err}");
        let err = parse("[serve]\nport = 80\nhots = \"x\"\n").unwrap_err();
        assert!(err.contains("serve.hots") && err.contains("unknown field"), "{err}");
        let err = parse("[modle]\npath = \"x\"\n").unwrap_err();
        assert!(err.contains("modle"), "{err}");
        let err = parse("[reward]\nnormalize = { mode = \"sometimes\" }\n").unwrap_err();
        assert!(err.contains("reward.normalize") && err.contains("sometimes"), "{err}");
    }

    #[test]
    fn a_full_recipe_becomes_serve_flags() {
        let recipe = parse(
            "[model]\ndtype = \"bf16\"\n[parallel]\ntp = 2\nbackend = \"nccl\"\n[serve]\nport = 9000\nserved_model_name = [\"a\", \"b\"]\nmerge_attributes = true\n[batching]\nrequest_timeout = 2.5\n",
        )
        .unwrap();
        let loaded = LoadedRecipe { path: "r.toml".into(), recipe };
        let args = loaded.to_args().join(" ");
        assert_eq!(
            args,
            "--dtype bf16 --tp 2 --backend nccl --port 9000 --served-model-name a --served-model-name b --request-timeout 2.5 --merge-attributes"
        );
    }

    #[test]
    fn the_prefix_cache_keys_become_flags() {
        let recipe = parse("[batching]\nprefix_cache_bytes = 1048576\n[scoring]\nprefix_cache = false\n").unwrap();
        let args = LoadedRecipe { path: "r.toml".into(), recipe }.to_args().join(" ");
        assert_eq!(args, "--prefix-cache-bytes 1048576 --bypass-prefix-cache");
    }
}
