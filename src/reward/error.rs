//! The one error type of the reward pipeline. Every message names the field,
//! preset or file at fault, because these errors end up in a rollout log or an
//! HTTP response far from the config that caused them.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardError {
    #[error("unknown preset `{0}` (known: {1})")]
    UnknownPreset(String, String),
    #[error("weights: {0}")]
    BadWeights(String),
    #[error("reward config: {0}")]
    BadConfig(String),
    #[error("presets file {path}: {message}")]
    PresetsFile { path: String, message: String },
    #[error("raw attribute {attribute} is not a finite number ({value})")]
    NonFinite { attribute: &'static str, value: f32 },
    /// A calibrated value or a reward overflowed (huge weights, scale or shift).
    #[error("{what} is not a finite number ({value})")]
    NonFiniteReward { what: String, value: f64 },
    #[error("group normalisation needs a `group` id on every record")]
    MissingGroup,
}

impl RewardError {
    /// A stable machine-readable code for JSON error objects.
    pub fn code(&self) -> &'static str {
        match self {
            RewardError::UnknownPreset(..) => "unknown_preset",
            RewardError::BadWeights(_) => "invalid_weights",
            RewardError::BadConfig(_) => "invalid_reward_config",
            RewardError::PresetsFile { .. } => "invalid_presets_file",
            RewardError::NonFinite { .. } | RewardError::NonFiniteReward { .. } => "non_finite_score",
            RewardError::MissingGroup => "missing_group",
        }
    }
}
