//! Attribute weights: the vector a reward is the dot product with.

use super::{PresetBook, RewardError, ATTRIBUTES};

/// One weight per attribute; the reward is their dot product with the raw scores.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttributeWeights(pub [f64; 9]);

/// The largest weight magnitude a request may send.
pub const MAX_WEIGHT: f64 = 1e6;

/// The model card's mixing: `0.3*helpfulness + 0.74*correctness + 0.46*coherence + 0.47*complexity - 0.33*verbosity`.
pub const DEFAULT_WEIGHTS: AttributeWeights = AttributeWeights([0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33]);

impl AttributeWeights {
    /// A built-in preset by name (`default` or one of `configs/presets.json`).
    pub fn preset(name: &str) -> Result<AttributeWeights, RewardError> {
        PresetBook::builtin().get(name)
    }

    /// `w1,..,w9` in attribute order.
    pub fn parse(csv: &str) -> Result<AttributeWeights, RewardError> {
        let values: Vec<f64> = csv
            .split(',')
            .enumerate()
            .map(|(i, s)| {
                s.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    RewardError::BadWeights(format!("weight {} (`{}`) is not a finite number", i + 1, s.trim()))
                })
            })
            .collect::<Result<_, _>>()?;
        Self::from_slice(&values)
    }

    pub fn from_slice(values: &[f64]) -> Result<AttributeWeights, RewardError> {
        let arr: [f64; 9] = values.try_into().map_err(|_| {
            RewardError::BadWeights(format!("expected 9 weights ({}), got {}", ATTRIBUTES.join(", "), values.len()))
        })?;
        if let Some(i) = arr.iter().position(|v| !v.is_finite()) {
            return Err(RewardError::BadWeights(format!("weight {} ({}) is not finite", i + 1, ATTRIBUTES[i])));
        }
        Ok(AttributeWeights(arr))
    }

    /// Weights a request may send: within ±[`MAX_WEIGHT`]. Past that a weighted
    /// sum of raw scores overflows or drowns every other attribute in rounding,
    /// so such a request could only fail after its forward pass.
    pub fn check_request(&self) -> Result<(), RewardError> {
        match self.0.iter().position(|v| v.abs() > MAX_WEIGHT) {
            Some(i) => Err(RewardError::BadWeights(format!(
                "weight {} ({}) is {:e}; a request's weights must be within ±{MAX_WEIGHT:e}",
                i + 1,
                ATTRIBUTES[i],
                self.0[i]
            ))),
            None => Ok(()),
        }
    }

    /// The weighted sum of raw attribute scores.
    pub fn reward(&self, raw: &[f32; 9]) -> f64 {
        self.0.iter().zip(raw).map(|(w, &x)| w * x as f64).sum()
    }

    /// The weighted sum of already calibrated (f64) attribute scores.
    pub fn dot(&self, values: &[f64; 9]) -> f64 {
        self.0.iter().zip(values).map(|(w, x)| w * x).sum()
    }
}

impl Default for AttributeWeights {
    fn default() -> Self {
        DEFAULT_WEIGHTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_vectors() {
        assert_eq!(AttributeWeights::preset("default").unwrap(), DEFAULT_WEIGHTS);
        assert!(matches!(AttributeWeights::preset("nope"), Err(RewardError::UnknownPreset(..))));
        let w = AttributeWeights::parse("1,0,0,0,0,0,0,0,2").unwrap();
        assert_eq!(w.reward(&[1.5, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 0.25]), 2.0);
        let err = AttributeWeights::parse("1,2").unwrap_err().to_string();
        assert!(err.contains("expected 9 weights") && err.contains("got 2"), "{err}");
        let err = AttributeWeights::parse("1,2,x,4,5,6,7,8,9").unwrap_err().to_string();
        assert!(err.contains("weight 3 (`x`)"), "{err}");
    }

    #[test]
    fn default_reward_matches_the_model_card() {
        let raw = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let expected = 0.3 + 0.74 * 2.0 + 0.46 * 3.0 + 0.47 * 4.0 - 0.33 * 5.0;
        assert!((DEFAULT_WEIGHTS.reward(&raw) - expected).abs() < 1e-12);
    }
}
