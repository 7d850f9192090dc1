//! Reward-pipeline flags shared by the subcommands that make scalar rewards
//! (`score` now, `serve` later): a JSON `--reward-config`, with flags that
//! override its fields one by one.

use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

use crate::reward::{
    AttributeWeights, Calibration, Clip, Normalize, PresetBook, RewardConfig, RewardPipeline, RunningStats,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NormalizeMode {
    /// The weighted sum as is.
    None,
    /// (x - mean) / std with --norm-mean and --norm-std.
    Fixed,
    /// Welford statistics of earlier runs (--running-state), frozen during this one.
    Running,
    /// Whitening over all rewards of the input.
    Batch,
    /// Whitening within each record `group` (and turn index), as GRPO does.
    Group,
}

/// Which weights: a presets file, and an explicit vector or a preset name.
#[derive(Args, Debug, Clone)]
pub struct WeightArgs {
    /// JSON presets file adding named weight vectors (e.g. written by tune-weights).
    #[arg(long)]
    pub presets: Option<PathBuf>,
    /// Attribute weights w1,..,w9 for the scalar reward.
    #[arg(long, conflicts_with = "preset", allow_hyphen_values = true)]
    pub weights: Option<String>,
    /// A named weight preset (default: `default`, the model card's mixing).
    #[arg(long)]
    pub preset: Option<String>,
}

impl WeightArgs {
    pub fn presets(&self) -> Result<PresetBook, String> {
        PresetBook::load(self.presets.as_deref()).map_err(|e| e.to_string())
    }

    /// The weights asked for (default: the `default` preset) and their name.
    pub fn resolve(&self) -> Result<(AttributeWeights, String), String> {
        match (&self.weights, &self.preset) {
            (Some(csv), _) => {
                AttributeWeights::parse(csv).map(|w| (w, "custom".to_string())).map_err(|e| format!("--weights: {e}"))
            }
            (None, name) => {
                let name = name.as_deref().unwrap_or("default");
                let w = self.presets()?.get(name).map_err(|e| e.to_string())?;
                Ok((w, name.to_string()))
            }
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RewardArgs {
    /// JSON reward config: {"preset"|"weights", "calibration", "normalize", "clip"}; the flags below override its fields.
    #[arg(long)]
    pub reward_config: Option<PathBuf>,
    #[command(flatten)]
    pub weights: WeightArgs,
    /// JSON {"scale": [9 floats], "shift": [9 floats]}: affine calibration of each raw attribute before weighting.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Normalisation of the weighted reward.
    #[arg(long, value_enum)]
    pub normalize: Option<NormalizeMode>,
    /// `fixed`: the mean subtracted.
    #[arg(long, allow_hyphen_values = true)]
    pub norm_mean: Option<f64>,
    /// `fixed`: the std divided by.
    #[arg(long)]
    pub norm_std: Option<f64>,
    /// `running`, `batch`, `group`: added to the std (default 1e-6).
    #[arg(long)]
    pub norm_eps: Option<f64>,
    /// `running`: only the last N committed rewards count.
    #[arg(long)]
    pub norm_window: Option<usize>,
    /// `batch`, `group`: subtract the mean only.
    #[arg(long)]
    pub norm_centre_only: bool,
    /// `running`: JSON file with the running statistics, read at start (if it exists)
    /// and written at the end with this run's rewards committed as one step.
    #[arg(long)]
    pub running_state: Option<PathBuf>,
    /// Clip the final reward to LO,HI (either side may be empty: `-5,` or `,5`).
    #[arg(long, allow_hyphen_values = true)]
    pub clip: Option<String>,
    /// The config a recipe gives (`launch`); `--reward-config` replaces it, the flags override its fields.
    #[arg(skip)]
    pub base: Option<RewardConfig>,
}

impl RewardArgs {
    /// The reward config: the `--reward-config` file, then each flag given.
    pub fn config(&self) -> Result<RewardConfig, String> {
        let mut config: RewardConfig = match &self.reward_config {
            Some(path) => read_json(path, "reward config")?,
            None => self.base.clone().unwrap_or_default(),
        };
        if let Some(csv) = &self.weights.weights {
            let w = AttributeWeights::parse(csv).map_err(|e| format!("--weights: {e}"))?;
            config.weights = Some(w.0.to_vec());
            config.preset = None;
        }
        if let Some(name) = &self.weights.preset {
            config.preset = Some(name.clone());
            config.weights = None;
        }
        if let Some(path) = &self.calibration {
            config.calibration = Some(read_json::<Calibration>(path, "calibration")?);
        }
        if let Some(mode) = self.normalize {
            config.normalize = self.normalizer(mode)?;
        } else if self.norm_mean.is_some()
            || self.norm_std.is_some()
            || self.norm_eps.is_some()
            || self.norm_window.is_some()
            || self.norm_centre_only
        {
            return Err("--norm-* flags need --normalize MODE".into());
        }
        if let Some(text) = &self.clip {
            config.clip = Some(Clip::parse(text).map_err(|e| format!("--clip: {e}"))?);
        }
        Ok(config)
    }

    fn normalizer(&self, mode: NormalizeMode) -> Result<Normalize, String> {
        let eps = self.norm_eps.unwrap_or(1e-6);
        let scale = !self.norm_centre_only;
        let only = |allowed: bool, flag: &str| {
            if allowed {
                Ok(())
            } else {
                Err(format!("{flag} does not apply to --normalize {mode:?}").to_lowercase())
            }
        };
        let fixed = mode == NormalizeMode::Fixed;
        only(fixed || self.norm_mean.is_none(), "--norm-mean")?;
        only(fixed || self.norm_std.is_none(), "--norm-std")?;
        only(!fixed || self.norm_eps.is_none(), "--norm-eps")?;
        only(mode == NormalizeMode::Running || self.norm_window.is_none(), "--norm-window")?;
        only(matches!(mode, NormalizeMode::Batch | NormalizeMode::Group) || scale, "--norm-centre-only")?;
        Ok(match mode {
            NormalizeMode::None => Normalize::None,
            NormalizeMode::Fixed => Normalize::Fixed {
                mean: self.norm_mean.ok_or("--normalize fixed needs --norm-mean and --norm-std")?,
                std: self.norm_std.ok_or("--normalize fixed needs --norm-mean and --norm-std")?,
            },
            NormalizeMode::Running => Normalize::Running { window: self.norm_window, eps },
            NormalizeMode::Batch => Normalize::Batch { eps, scale },
            NormalizeMode::Group => Normalize::Group { eps, scale },
        })
    }

    /// The pipeline, with running statistics restored from `--running-state`.
    pub fn build(&self) -> Result<RewardPipeline, String> {
        let config = self.config()?;
        if self.running_state.is_some() && !matches!(config.normalize, Normalize::Running { .. }) {
            return Err("--running-state needs running normalisation".into());
        }
        let presets = self.weights.presets()?;
        let mut pipeline = RewardPipeline::new(config, presets).map_err(|e| e.to_string())?;
        if let Some(path) = self.running_state.as_deref().filter(|p| p.exists()) {
            let stats: RunningStats = read_json(path, "running state")?;
            pipeline.set_running_stats(stats).map_err(|e| format!("running state {}: {e}", path.display()))?;
        }
        Ok(pipeline)
    }

    /// Commit this run's rewards as one step and save the statistics, if asked.
    pub fn save_running_state(&self, pipeline: &mut RewardPipeline) -> Result<(), String> {
        let Some(path) = &self.running_state else {
            return Ok(());
        };
        let stats = pipeline.advance();
        let text = serde_json::to_string_pretty(stats).expect("stats serialise: this is a bug") + "\n";
        crate::files::output::write_file("running state", path, text.as_bytes()).map_err(|e| e.to_string())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{what} {}: {e}", path.display()))
}
