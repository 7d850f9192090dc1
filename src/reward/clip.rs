//! Clipping, the last step of the pipeline: bounds a reward so one outlier
//! response cannot dominate a policy-gradient batch.

use serde::{Deserialize, Serialize};

use super::{short_num, RewardError};

/// Bounds applied last; either side may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clip {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Clip {
    /// `LO,HI`; either may be empty for an open side (`-5,` or `,5`).
    pub fn parse(text: &str) -> Result<Clip, RewardError> {
        let (lo, hi) = text
            .split_once(',')
            .ok_or_else(|| RewardError::BadConfig(format!("clip `{text}`: expected LO,HI (either may be empty)")))?;
        let side = |s: &str, name: &str| -> Result<Option<f64>, RewardError> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<f64>().map(Some).map_err(|_| RewardError::BadConfig(format!("clip {name} `{s}` is not a number")))
        };
        let clip = Clip { min: side(lo, "min")?, max: side(hi, "max")? };
        clip.validate()?;
        Ok(clip)
    }

    pub fn validate(&self) -> Result<(), RewardError> {
        for (name, v) in [("min", self.min), ("max", self.max)] {
            if matches!(v, Some(x) if !x.is_finite()) {
                return Err(RewardError::BadConfig(format!("clip.{name} is not finite")));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi {
                return Err(RewardError::BadConfig(format!("clip.min ({lo}) is above clip.max ({hi})")));
            }
        }
        Ok(())
    }

    pub fn apply(&self, x: f64) -> f64 {
        let x = self.min.map_or(x, |lo| x.max(lo));
        self.max.map_or(x, |hi| x.min(hi))
    }

    pub(crate) fn describe(&self) -> String {
        let side = |v: Option<f64>, open: &str| v.map_or(open.to_string(), short_num);
        format!("clip({}, {})", side(self.min, "-inf"), side(self.max, "inf"))
    }
}
