//! Per-attribute affine calibration, applied to the raw scores before weighting.
//!
//! A reward model's attribute heads drift in offset and scale between checkpoints
//! (and between bf16 and fp32 runs); a linear map fitted against human labels
//! puts them back on the 0..4 HelpSteer scale so one weight vector means the same
//! thing for every checkpoint: `calibrated[i] = scale[i] * raw[i] + shift[i]`.

use serde::{Deserialize, Serialize};

use super::{RewardError, ATTRIBUTES};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// One factor per attribute (default all 1).
    #[serde(default = "ones")]
    pub scale: Vec<f64>,
    /// One offset per attribute (default all 0).
    #[serde(default = "zeros")]
    pub shift: Vec<f64>,
}

fn ones() -> Vec<f64> {
    vec![1.0; 9]
}

fn zeros() -> Vec<f64> {
    vec![0.0; 9]
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration { scale: ones(), shift: zeros() }
    }
}

impl Calibration {
    /// Nine finite values in each of `scale` and `shift`.
    pub fn validate(&self) -> Result<(), RewardError> {
        for (field, values) in [("scale", &self.scale), ("shift", &self.shift)] {
            if values.len() != 9 {
                return Err(RewardError::BadConfig(format!(
                    "calibration.{field}: expected 9 values (one per attribute: {}), got {}",
                    ATTRIBUTES.join(", "),
                    values.len()
                )));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(RewardError::BadConfig(format!(
                    "calibration.{field}[{i}] ({}) is not finite",
                    ATTRIBUTES[i]
                )));
            }
        }
        Ok(())
    }

    /// `scale * raw + shift`, per attribute, in f64. Call `validate` first.
    pub fn apply(&self, raw: &[f32; 9]) -> [f64; 9] {
        std::array::from_fn(|i| self.scale[i] * raw[i] as f64 + self.shift[i])
    }

    pub fn is_identity(&self) -> bool {
        self.scale.iter().all(|&s| s == 1.0) && self.shift.iter().all(|&s| s == 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_per_attribute() {
        let mut cal = Calibration::default();
        cal.scale[4] = 2.0;
        cal.shift[8] = -1.0;
        cal.validate().unwrap();
        let out = cal.apply(&[0.0, 0.0, 0.0, 0.0, 1.5, 0.0, 0.0, 0.0, 3.0]);
        assert_eq!(out[4], 3.0);
        assert_eq!(out[8], 2.0);
        let bad = Calibration { scale: vec![1.0; 8], shift: zeros() };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("calibration.scale") && err.contains("got 8"), "{err}");
    }
}
