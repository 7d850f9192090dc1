//! From nine raw attribute scores to the scalar reward a policy update consumes.
//!
//! Everything that turns attributes into a number lives here, so `score`, `eval`,
//! `tune-weights` and the HTTP server (a later issue) agree to the last bit:
//!
//! raw 9 -> [`Calibration`] (optional per-attribute affine) -> [`AttributeWeights`]
//! (dot product) -> [`Normalize`] (none | fixed | running | batch | group) ->
//! clip (optional) -> scalar.
//!
//! [`RewardPipeline`] holds a validated [`RewardConfig`] (serde, so recipes and
//! request bodies can carry it) and the running-normaliser state. Weights come
//! from a [`PresetBook`]: the model card's `default`, the presets shipped in
//! `configs/presets.json`, and any a presets file adds (what `tune-weights`
//! writes). [`steerlm`] renders the rounded labels of SteerLM annotation.

pub mod calibration;
pub mod clip;
pub mod error;
pub mod normalize;
pub mod pipeline;
pub mod presets;
pub mod steerlm;
pub mod weights;

pub use calibration::Calibration;
pub use clip::Clip;
pub use error::RewardError;
pub use normalize::{Moments, Normalize, RunningStats};
pub use pipeline::{RewardBatch, RewardConfig, RewardInput, RewardOutput, RewardOverride, RewardPipeline};
pub use presets::{Preset, PresetBook};
pub use weights::{AttributeWeights, DEFAULT_WEIGHTS};

/// The nine outputs of a Nemotron-4 reward head, in order.
pub const ATTRIBUTES: [&str; 9] = [
    "quality",
    "toxicity",
    "humor",
    "creativity",
    "helpfulness",
    "correctness",
    "coherence",
    "complexity",
    "verbosity",
];

/// The five attributes trained on HelpSteer2 (indices 4..9).
pub const HELPSTEER_ATTRIBUTES: std::ops::Range<usize> = 4..9;

/// A short, stable rendering of a number for transform descriptions:
/// at most six decimals, trailing zeros dropped (`0.3`, `-1.25`); tiny or huge
/// values in exponent form (`1e-6`).
pub(crate) fn short_num(x: f64) -> String {
    if x != 0.0 && (x.abs() < 1e-4 || x.abs() >= 1e7) {
        return format!("{x:e}");
    }
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}
