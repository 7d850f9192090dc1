//! SteerLM attribute labels, as NeMo-Aligner's `attribute_annotate.py` writes
//! them: each score clamped to [0, 4], rounded half to even (Python's `round`),
//! joined as `helpfulness:3,correctness:3,coherence:4,complexity:2,verbosity:2`.
//!
//! NeMo writes all nine names; the HelpSteer five are the default here because
//! the other four heads of Nemotron-4-340B-Reward are untrained (DESIGN.md §1).

use super::{RewardError, ATTRIBUTES, HELPSTEER_ATTRIBUTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelOptions {
    /// All nine attributes instead of the HelpSteer five.
    pub all_attributes: bool,
    /// Round to integers (the SteerLM training format); else clamped floats.
    pub round: bool,
}

impl Default for LabelOptions {
    fn default() -> Self {
        LabelOptions { all_attributes: false, round: true }
    }
}

/// Clamp to the HelpSteer scale [0, 4] and round half to even.
pub fn clamp_round(x: f32) -> f32 {
    x.clamp(0.0, 4.0).round_ties_even()
}

/// The label string for one turn's raw scores.
pub fn label(raw: &[f32; 9], opts: LabelOptions) -> Result<String, RewardError> {
    let range = if opts.all_attributes { 0..9 } else { HELPSTEER_ATTRIBUTES };
    let parts: Vec<String> = range
        .map(|i| {
            let x = raw[i];
            if !x.is_finite() {
                return Err(RewardError::NonFinite { attribute: ATTRIBUTES[i], value: x });
            }
            Ok(if opts.round {
                format!("{}:{}", ATTRIBUTES[i], clamp_round(x) as i64)
            } else {
                // `+ 0.0` turns a -0 into 0.
                format!("{}:{}", ATTRIBUTES[i], x.clamp(0.0, 4.0) + 0.0)
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_and_rounds_half_to_even() {
        assert_eq!(clamp_round(0.5), 0.0);
        assert_eq!(clamp_round(1.5), 2.0);
        assert_eq!(clamp_round(2.5), 2.0);
        assert_eq!(clamp_round(3.5), 4.0);
        assert_eq!(clamp_round(2.51), 3.0);
        assert_eq!(clamp_round(-3.0), 0.0);
        assert_eq!(clamp_round(7.2), 4.0);
    }

    #[test]
    fn formats_five_or_nine_names() {
        let raw = [9.0, -1.0, 0.4, 1.6, 2.5, 3.49, 4.2, 1.5, -0.2];
        let five = label(&raw, LabelOptions::default()).unwrap();
        assert_eq!(five, "helpfulness:2,correctness:3,coherence:4,complexity:2,verbosity:0");
        let nine = label(&raw, LabelOptions { all_attributes: true, round: true }).unwrap();
        assert!(nine.starts_with("quality:4,toxicity:0,humor:0,creativity:2,helpfulness:2"), "{nine}");
        let floats = label(&raw, LabelOptions { all_attributes: false, round: false }).unwrap();
        assert_eq!(floats, "helpfulness:2.5,correctness:3.49,coherence:4,complexity:1.5,verbosity:0");
        let mut bad = raw;
        bad[6] = f32::NAN;
        let err = label(&bad, LabelOptions::default()).unwrap_err().to_string();
        assert!(err.contains("coherence"), "{err}");
    }
}
