//! Normalisation of weighted rewards: the step PPO / REINFORCE / GRPO recipes
//! differ on most, so every mode is a config value rather than code in a recipe.
//!
//! - `none`: the weighted sum as is.
//! - `fixed`: `(x - mean) / std` with constants from the config.
//! - `running`: `(x - mean) / (std + eps)` with Welford statistics of earlier
//!   rewards (optionally only the last `window`). The statistics are frozen: a
//!   call never changes the transform it applies; its rewards wait in `pending`
//!   until the trainer calls `advance` (end of a step) or `reset`. So every
//!   reward of one PPO step sees one transform, whatever the batching. With
//!   fewer than two committed rewards the transform is the identity.
//! - `batch`: whitening over the rewards of one call.
//! - `group`: whitening within each group (GRPO: responses to the same prompt).
//!
//! Standard deviations are sample ones (divide by n - 1), as `torch.std` in
//! TRL's and OpenRLHF's GRPO; a set of one has std 0, so a group of one gets 0.
//! `scale: false` only centres (Dr. GRPO style).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use super::{short_num, RewardError};

fn default_eps() -> f64 {
    1e-6
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Normalize {
    #[default]
    None,
    Fixed {
        mean: f64,
        std: f64,
    },
    Running {
        /// Only the most recent `window` committed rewards count (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<usize>,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    Batch {
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "yes")]
        scale: bool,
    },
    Group {
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "yes")]
        scale: bool,
    },
}

impl Normalize {
    pub fn validate(&self) -> Result<(), RewardError> {
        let bad = |m: String| Err(RewardError::BadConfig(m));
        let (eps, window) = match *self {
            Normalize::None => return Ok(()),
            Normalize::Fixed { mean, std } => {
                if !mean.is_finite() {
                    return bad(format!("normalize.mean ({mean}) is not finite"));
                }
                if !(std.is_finite() && std > 0.0) {
                    return bad(format!("normalize.std ({std}) must be a positive number"));
                }
                return Ok(());
            }
            Normalize::Running { window, eps } => (eps, window),
            Normalize::Batch { eps, .. } | Normalize::Group { eps, .. } => (eps, None),
        };
        if !(eps.is_finite() && eps >= 0.0) {
            return bad(format!("normalize.eps ({eps}) must be a finite number >= 0"));
        }
        if matches!(window, Some(w) if w < 2) {
            return bad("normalize.window must be at least 2".into());
        }
        Ok(())
    }

    /// Whether the transform depends on the other rewards of the same call, so a
    /// caller must pass everything that belongs together in one call.
    pub fn needs_whole_batch(&self) -> bool {
        matches!(self, Normalize::Batch { .. } | Normalize::Group { .. })
    }
}

/// Count, mean and sample standard deviation of a set of rewards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
}

impl Moments {
    pub fn of(values: &[f64]) -> Moments {
        let n = values.len();
        if n == 0 {
            return Moments { n, mean: 0.0, std: 0.0 };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std =
            if n < 2 { 0.0 } else { (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
        Moments { n, mean, std }
    }

    /// `(x - mean) / (std + eps)`, or `x - mean` without scaling (or with no spread).
    pub fn standardize(&self, x: f64, eps: f64, scale: bool) -> f64 {
        let centred = x - self.mean;
        let spread = self.std + eps;
        // A constant set (or a set of one) with eps 0: every value is the mean.
        if scale && spread > 0.0 {
            centred / spread
        } else {
            centred
        }
    }
}

/// Committed running statistics: what `running` normalisation applies. Saved
/// and loaded as JSON so a transform survives a worker restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    pub count: u64,
    pub mean: f64,
    /// Sum of squared deviations (Welford's M2).
    pub m2: f64,
    /// How many times `advance` committed rewards.
    pub steps: u64,
    /// The committed rewards still in the window (only with a window).
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub recent: VecDeque<f64>,
}

impl RunningStats {
    /// `None` until the committed rewards have a spread to divide by: at least
    /// two, not all equal (a standard deviation of 0, or one below 1e-12 of the
    /// mean, which is rounding, would blow a reward up by 1/eps). Until then the
    /// transform is the identity.
    pub fn moments(&self) -> Option<Moments> {
        if self.count < 2 {
            return None;
        }
        let std = (self.m2 / (self.count - 1) as f64).sqrt();
        (std > 0.0 && std > 1e-12 * self.mean.abs()).then_some(Moments { n: self.count as usize, mean: self.mean, std })
    }

    /// Commit `values` (one step's rewards), keeping only the last `window` if set.
    pub fn commit(&mut self, values: &[f64], window: Option<usize>) {
        match window {
            None => {
                for &x in values {
                    self.count += 1;
                    let d = x - self.mean;
                    self.mean += d / self.count as f64;
                    self.m2 += d * (x - self.mean);
                }
            }
            Some(w) => {
                self.recent.extend(values.iter().copied());
                while self.recent.len() > w {
                    self.recent.pop_front();
                }
                let kept: Vec<f64> = self.recent.iter().copied().collect();
                let m = Moments::of(&kept);
                self.count = m.n as u64;
                self.mean = m.mean;
                self.m2 = m.std.powi(2) * (m.n.max(1) - 1) as f64;
            }
        }
        self.steps += 1;
    }

    pub fn describe(&self) -> String {
        match self.moments() {
            Some(m) => {
                format!("running(mean={}, std={}, n={}, step={})", short_num(m.mean), short_num(m.std), m.n, self.steps)
            }
            None => format!("running(identity until 2 different rewards are committed, n={})", self.count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_committed_rewards_leave_the_transform_the_identity() {
        let mut stats = RunningStats::default();
        stats.commit(&[2.5, 2.5, 2.5], None);
        assert_eq!(stats.moments(), None, "a zero variance must not divide rewards by eps");
        stats.commit(&[3.5], None);
        assert!(stats.moments().is_some_and(|m| m.std > 0.0));
    }

    #[test]
    fn moments_use_the_sample_std() {
        let m = Moments::of(&[1.0, 2.0, 3.0]);
        assert_eq!((m.n, m.mean, m.std), (3, 2.0, 1.0));
        assert_eq!(Moments::of(&[5.0]).std, 0.0);
        assert_eq!(m.standardize(3.0, 0.0, true), 1.0);
        assert_eq!(m.standardize(3.0, 0.0, false), 1.0);
        assert_eq!(m.standardize(0.0, 1.0, true), -1.0);
    }

    #[test]
    fn welford_and_window_agree_with_direct_moments() {
        let mut all = RunningStats::default();
        all.commit(&[1.0, 2.0], None);
        all.commit(&[3.0, 4.0, 5.0], None);
        let m = all.moments().unwrap();
        assert_eq!((m.n, m.mean, all.steps), (5, 3.0, 2));
        assert!((m.std - 2.5f64.sqrt()).abs() < 1e-12);
        let mut windowed = RunningStats::default();
        windowed.commit(&[100.0, 1.0], Some(3));
        windowed.commit(&[2.0, 3.0], Some(3));
        let m = windowed.moments().unwrap();
        assert_eq!((m.n, m.mean, m.std), (3, 2.0, 1.0));
    }

    #[test]
    fn config_is_checked_and_parsed_from_json() {
        let n: Normalize = serde_json::from_str(r#"{"mode": "group"}"#).unwrap();
        assert_eq!(n, Normalize::Group { eps: 1e-6, scale: true });
        assert!(serde_json::from_str::<Normalize>(r#"{"mode": "fixed", "mean": 1}"#).is_err());
        assert!(serde_json::from_str::<Normalize>(r#"{"mode": "batch", "typo": 1}"#).is_err());
        assert!(Normalize::Fixed { mean: 0.0, std: 0.0 }.validate().is_err());
        assert!(Normalize::Running { window: Some(1), eps: 0.0 }.validate().is_err());
        assert!(Normalize::Batch { eps: -1.0, scale: true }.validate().is_err());
    }
}
