//! [`RewardPipeline`]: a batch of raw attribute vectors (with optional group ids)
//! in, one scalar per vector out, with the weights used and a short description
//! of the transform, so every response can echo how its number was made.
//!
//! The pipeline is a plain struct over a serde [`RewardConfig`]; callers that
//! share it across threads (the HTTP server) wrap it in a mutex. Per-request
//! overrides ([`RewardOverride`]) change only the weights. With `running`
//! normalisation, rewards made with overridden weights are normalised with the
//! frozen statistics but not recorded into them, so an experiment in one request
//! cannot skew the transform the training run sees.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{
    short_num, AttributeWeights, Calibration, Clip, Moments, Normalize, PresetBook, RewardError, RunningStats,
    ATTRIBUTES,
};

/// Everything that turns raw attributes into a reward. JSON, e.g.
/// `{"preset": "default", "calibration": {"scale": [..9], "shift": [..9]},
///   "normalize": {"mode": "group"}, "clip": {"min": -5, "max": 5}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// A preset name (default: `default`); exclusive with `weights`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Nine explicit weights; exclusive with `preset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    pub normalize: Normalize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<Clip>,
}

/// One reward to make: a raw vector, and for `group` normalisation its group.
/// Rewards are grouped by `(group, turn)`: the k-th assistant turns of the
/// responses to one prompt form a group; earlier shared turns never mix with
/// the responses.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardInput {
    pub raw: [f32; 9],
    pub group: Option<String>,
    pub turn: usize,
}

/// Weights given by one request instead of the configured ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardOverride {
    #[serde(default)]
    pub weights: Option<Vec<f64>>,
    #[serde(default)]
    pub preset: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RewardOutput {
    /// The final scalar.
    pub reward: f64,
    /// The weighted sum before normalisation and clipping.
    pub weighted: f64,
    /// The calibrated attributes, when a calibration is configured.
    pub calibrated: Option<[f64; 9]>,
}

/// What one call produced: per-input results in input order, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardBatch {
    pub weights: AttributeWeights,
    /// The preset name, or `custom` for an explicit vector.
    pub weights_name: String,
    pub transform: String,
    pub results: Vec<Result<RewardOutput, RewardError>>,
}

/// A weighted sum and, when calibrated, the calibrated attributes.
type Weighted = (f64, Option<[f64; 9]>);

#[derive(Debug, Clone)]
pub struct RewardPipeline {
    config: RewardConfig,
    presets: PresetBook,
    weights: AttributeWeights,
    weights_name: String,
    running: RunningStats,
    pending: Vec<f64>,
}

fn resolve_weights(
    presets: &PresetBook,
    weights: Option<&[f64]>,
    preset: Option<&str>,
) -> Result<Option<(AttributeWeights, String)>, RewardError> {
    match (weights, preset) {
        (Some(_), Some(_)) => Err(RewardError::BadWeights("give either `weights` or `preset`, not both".into())),
        (Some(w), None) => Ok(Some((AttributeWeights::from_slice(w)?, "custom".into()))),
        (None, Some(p)) => Ok(Some((presets.get(p)?, p.to_string()))),
        (None, None) => Ok(None),
    }
}

/// A value a reward is made of, or a `non_finite_score` error that says which.
fn finite(value: f64, what: &str) -> Result<f64, RewardError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(RewardError::NonFiniteReward { what: what.to_string(), value })
    }
}

impl RewardPipeline {
    /// Validate `config` and resolve its weights against `presets`.
    pub fn new(config: RewardConfig, presets: PresetBook) -> Result<RewardPipeline, RewardError> {
        let (weights, weights_name) = resolve_weights(&presets, config.weights.as_deref(), config.preset.as_deref())?
            .unwrap_or((presets.get("default")?, "default".into()));
        if let Some(cal) = &config.calibration {
            cal.validate()?;
        }
        config.normalize.validate()?;
        if let Some(clip) = &config.clip {
            clip.validate()?;
        }
        Ok(RewardPipeline {
            config,
            presets,
            weights,
            weights_name,
            running: RunningStats::default(),
            pending: Vec::new(),
        })
    }

    pub fn config(&self) -> &RewardConfig {
        &self.config
    }

    /// The configured weights and their name.
    pub fn weights(&self) -> (AttributeWeights, &str) {
        (self.weights, &self.weights_name)
    }

    pub fn presets(&self) -> &PresetBook {
        &self.presets
    }

    /// See [`Normalize::needs_whole_batch`].
    pub fn needs_whole_batch(&self) -> bool {
        self.config.normalize.needs_whole_batch()
    }

    /// The weights a request resolves to (its override, else the configured ones).
    pub fn resolve(&self, request: &RewardOverride) -> Result<(AttributeWeights, String), RewardError> {
        let resolved = resolve_weights(&self.presets, request.weights.as_deref(), request.preset.as_deref())?;
        if request.weights.is_some() {
            resolved.as_ref().map_or(Ok(()), |(w, _)| w.check_request())?;
        }
        Ok(resolved.unwrap_or_else(|| (self.weights, self.weights_name.clone())))
    }

    /// Map a batch of raw vectors to rewards. A bad request (unknown preset,
    /// wrong weights) fails the call; a bad input (non-finite score, missing
    /// group) fails only its own result.
    pub fn rewards(&mut self, items: &[RewardInput], request: &RewardOverride) -> Result<RewardBatch, RewardError> {
        let (weights, weights_name) = self.resolve(request)?;
        let calibration = self.config.calibration.clone().filter(|c| !c.is_identity());
        let weighted: Vec<Result<Weighted, RewardError>> = items
            .iter()
            .map(|item| {
                if let Some(i) = item.raw.iter().position(|v| !v.is_finite()) {
                    return Err(RewardError::NonFinite { attribute: ATTRIBUTES[i], value: item.raw[i] });
                }
                let (sum, calibrated) = match &calibration {
                    Some(cal) => {
                        let values = cal.apply(&item.raw);
                        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                            let what = format!("calibrated {}", ATTRIBUTES[i]);
                            return Err(RewardError::NonFiniteReward { what, value: values[i] });
                        }
                        (weights.dot(&values), Some(values))
                    }
                    None => (weights.reward(&item.raw), None),
                };
                finite(sum, "the weighted sum of the attributes")?;
                Ok((sum, calibrated))
            })
            .collect();
        let values: Vec<Result<f64, RewardError>> = weighted.iter().map(|w| w.clone().map(|(x, _)| x)).collect();
        let record = weights == self.weights;
        let (normalised, norm_text) = self.normalise(items, values, record);
        let clip = self.config.clip;
        let results = weighted
            .into_iter()
            .zip(normalised)
            .map(|(w, n)| {
                let (weighted, calibrated) = w?;
                // Overflow in a normalisation (huge rewards) would be clipped into a plausible number.
                let x = finite(n?, "the normalised reward")?;
                Ok(RewardOutput { reward: clip.map_or(x, |c| c.apply(x)), weighted, calibrated })
            })
            .collect();
        let mut steps = Vec::new();
        if calibration.is_some() {
            steps.push("calibrate(affine)".to_string());
        }
        steps.push(format!("weights({weights_name})"));
        steps.extend(norm_text);
        if let Some(c) = clip {
            steps.push(c.describe());
        }
        Ok(RewardBatch { weights, weights_name, transform: steps.join(" -> "), results })
    }

    fn normalise(
        &mut self,
        items: &[RewardInput],
        values: Vec<Result<f64, RewardError>>,
        record: bool,
    ) -> (Vec<Result<f64, RewardError>>, Option<String>) {
        let ok: Vec<f64> = values.iter().filter_map(|v| v.as_ref().ok().copied()).collect();
        match self.config.normalize {
            Normalize::None => (values, None),
            Normalize::Fixed { mean, std } => (
                values.into_iter().map(|v| v.map(|x| (x - mean) / std)).collect(),
                Some(format!("fixed(mean={}, std={})", short_num(mean), short_num(std))),
            ),
            Normalize::Running { eps, .. } => {
                let frozen = self.running.moments();
                let mut text = self.running.describe();
                if record {
                    self.pending.extend(&ok);
                } else {
                    text.push_str(" [not recorded: request weights differ]");
                }
                let out =
                    values.into_iter().map(|v| v.map(|x| frozen.map_or(x, |m| m.standardize(x, eps, true)))).collect();
                (out, Some(text))
            }
            Normalize::Batch { eps, scale } => {
                let m = Moments::of(&ok);
                let out = values.into_iter().map(|v| v.map(|x| m.standardize(x, eps, scale))).collect();
                let what = if scale { "batch" } else { "batch-centre" };
                let text = format!("{what}(mean={}, std={}, n={})", short_num(m.mean), short_num(m.std), m.n);
                (out, Some(text))
            }
            Normalize::Group { eps, scale } => {
                let mut groups: BTreeMap<(&str, usize), Vec<f64>> = BTreeMap::new();
                for (item, v) in items.iter().zip(&values) {
                    if let (Some(g), Ok(x)) = (&item.group, v) {
                        groups.entry((g.as_str(), item.turn)).or_default().push(*x);
                    }
                }
                let moments: BTreeMap<(&str, usize), Moments> =
                    groups.iter().map(|(k, xs)| (*k, Moments::of(xs))).collect();
                let out = items
                    .iter()
                    .zip(values)
                    .map(|(item, v)| {
                        let x = v?;
                        let g = item.group.as_deref().ok_or(RewardError::MissingGroup)?;
                        let m = moments
                            .get(&(g, item.turn))
                            .expect("every grouped finite reward has moments: this is a bug");
                        Ok(m.standardize(x, eps, scale))
                    })
                    .collect();
                let what = if scale { "group" } else { "group-centre" };
                let text = format!("{what}(groups={}, sample std, eps={})", moments.len(), short_num(eps));
                (out, Some(text))
            }
        }
    }

    /// End of a training step: commit the rewards seen since the last call into
    /// the running statistics, which the next calls then apply. No-op for other modes.
    pub fn advance(&mut self) -> &RunningStats {
        if let Normalize::Running { window, .. } = self.config.normalize {
            let pending = std::mem::take(&mut self.pending);
            self.running.commit(&pending, window);
        }
        &self.running
    }

    /// What [`RewardPipeline::advance`] would commit, without committing it: a
    /// caller that must make the step durable first saves this, then calls
    /// [`RewardPipeline::commit_step`] (a failed save leaves the pipeline as it was).
    pub fn next_step(&self) -> RunningStats {
        let mut next = self.running.clone();
        if let Normalize::Running { window, .. } = self.config.normalize {
            next.commit(&self.pending, window);
        }
        next
    }

    /// Make `next` (from [`RewardPipeline::next_step`]) the committed statistics
    /// and forget what was pending. No-op for other modes.
    pub fn commit_step(&mut self, next: RunningStats) -> &RunningStats {
        if let Normalize::Running { .. } = self.config.normalize {
            self.running = next;
            self.pending.clear();
        }
        &self.running
    }

    /// Forget all running statistics (and anything pending).
    pub fn reset(&mut self) {
        self.running = RunningStats::default();
        self.pending.clear();
    }

    pub fn running_stats(&self) -> &RunningStats {
        &self.running
    }

    /// Rewards recorded since the last `advance`.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Restore statistics saved from an earlier run.
    pub fn set_running_stats(&mut self, stats: RunningStats) -> Result<(), RewardError> {
        if !(stats.mean.is_finite() && stats.m2.is_finite() && stats.m2 >= 0.0) {
            return Err(RewardError::BadConfig("running statistics: mean and m2 must be finite, m2 >= 0".into()));
        }
        self.running = stats;
        Ok(())
    }
}
