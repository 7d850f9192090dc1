//! Reward-pipeline helpers: inputs whose weighted sum is a chosen number.

use reward_worker::reward::{Clip, Normalize, PresetBook, RewardConfig, RewardInput, RewardOverride, RewardPipeline};

/// A raw vector whose only non-zero attribute is helpfulness (index 4).
pub fn h(x: f32) -> [f32; 9] {
    let mut raw = [0.0; 9];
    raw[4] = x;
    raw
}

pub fn inputs(values: &[f32]) -> Vec<RewardInput> {
    values.iter().map(|&x| RewardInput { raw: h(x), group: None, turn: 1 }).collect()
}

pub fn grouped(items: &[(&str, usize, f32)]) -> Vec<RewardInput> {
    items.iter().map(|&(g, turn, x)| RewardInput { raw: h(x), group: Some(g.into()), turn }).collect()
}

/// Pipeline with the `helpfulness` preset, so the weighted sum is raw[4].
pub fn pipeline(normalize: Normalize, clip: Option<Clip>) -> RewardPipeline {
    let config = RewardConfig { preset: Some("helpfulness".into()), normalize, clip, ..Default::default() };
    RewardPipeline::new(config, PresetBook::builtin()).unwrap()
}

pub fn rewards(p: &mut RewardPipeline, items: &[RewardInput]) -> Vec<f64> {
    p.rewards(items, &RewardOverride::default()).unwrap().results.into_iter().map(|r| r.unwrap().reward).collect()
}

pub fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
    }
}
