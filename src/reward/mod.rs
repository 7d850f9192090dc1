//! From nine raw attribute scores to the scalar reward a policy update consumes.

pub mod weights;

pub use weights::{AttributeWeights, RewardError};

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
