//! Preference pairs: how well a mixing of the nine attributes ranks a chosen
//! response above a rejected one, and which mixing ranks best.
//!
//! The model is the expensive part, the mixing is not: [`cache`] keeps the raw
//! attributes of both sides of every pair, so `eval` with other weights and
//! `tune-weights` never run the model again.
//!
//! - [`pairs`]: a pair line (`prompt`, `chosen`, `rejected`, `subset`) -> two
//!   records for the engine, and the key a cache entry is found by.
//! - [`cache`]: the JSONL attribute cache.
//! - [`sections`]: accuracy per subset and per RewardBench section.
//! - [`fit`]: Bradley-Terry logistic regression of the preference on attribute
//!   differences, with L2 and k-fold cross-validation.
//! - [`plot`]: the SVG of held-out accuracy against regularisation strength.

pub mod cache;
pub mod fit;
pub mod pairs;
pub mod plot;
pub mod sections;

pub use cache::CacheEntry;
pub use pairs::Pair;

/// A problem with one line of a pairs or cache file, or with a whole run.
/// Line-level errors never stop the other lines.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreferenceError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("{0}")]
    Data(String),
}

impl PreferenceError {
    pub fn line(line: usize, message: impl Into<String>) -> PreferenceError {
        PreferenceError::Line { line, message: message.into() }
    }
}

/// Whether the chosen side wins under `weights`: strictly higher reward; a tie
/// counts as wrong (as in RewardBench).
pub fn chosen_wins(weights: &crate::reward::AttributeWeights, chosen: &[f32; 9], rejected: &[f32; 9]) -> bool {
    weights.reward(chosen) > weights.reward(rejected)
}
