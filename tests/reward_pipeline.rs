//! The reward pipeline with numbers small enough to check by hand: weights,
//! presets, per-request overrides, calibration, clipping and bad inputs.
//! (Normalisation modes: `reward_normalize.rs`.)

mod common;

use common::pipeline::*;

use reward_worker::reward::{
    Clip, Normalize, PresetBook, RewardConfig, RewardError, RewardInput, RewardOverride, RewardPipeline,
};

#[test]
fn default_weights_without_normalisation() {
    let mut p = RewardPipeline::new(RewardConfig::default(), PresetBook::builtin()).unwrap();
    let raw = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
    let batch = p.rewards(&[RewardInput { raw, group: None, turn: 1 }], &RewardOverride::default()).unwrap();
    // 0.3*1 + 0.74*2 + 0.46*3 + 0.47*4 - 0.33*5
    close(&[batch.results[0].as_ref().unwrap().reward], &[3.39]);
    assert_eq!(batch.weights_name, "default");
    assert_eq!(batch.weights.0, [0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33]);
    assert_eq!(batch.transform, "weights(default)");
}

#[test]
fn clipping_after_normalisation() {
    let clip = Clip { min: Some(-1.0), max: Some(1.0) };
    let mut p = pipeline(Normalize::Fixed { mean: 0.0, std: 1.0 }, Some(clip));
    let batch = p.rewards(&inputs(&[-3.0, 0.5, 3.0]), &RewardOverride::default()).unwrap();
    let got: Vec<f64> = batch.results.iter().map(|r| r.as_ref().unwrap().reward).collect();
    close(&got, &[-1.0, 0.5, 1.0]);
    assert_eq!(batch.results[2].as_ref().unwrap().weighted, 3.0);
    assert!(batch.transform.ends_with("-> clip(-1, 1)"), "{}", batch.transform);
    let upper = Clip::parse(",2").unwrap();
    assert_eq!((upper.min, upper.max), (None, Some(2.0)));
    assert_eq!((upper.apply(-7.0), upper.apply(7.0)), (-7.0, 2.0));
    assert!(Clip::parse("3,1").unwrap_err().to_string().contains("above"));
    assert!(Clip::parse("x,1").unwrap_err().to_string().contains("clip min `x`"));
}

#[test]
fn calibration_before_weights() {
    let config: RewardConfig = serde_json::from_str(
        r#"{"preset": "helpfulness",
            "calibration": {"scale": [1,1,1,1,2,1,1,1,1], "shift": [0,0,0,0,1,0,0,0,0]}}"#,
    )
    .unwrap();
    let mut p = RewardPipeline::new(config, PresetBook::builtin()).unwrap();
    let batch = p.rewards(&inputs(&[1.5]), &RewardOverride::default()).unwrap();
    let out = batch.results[0].as_ref().unwrap();
    assert_eq!(out.reward, 4.0); // 2 * 1.5 + 1
    assert_eq!(out.calibrated.unwrap()[4], 4.0);
    assert_eq!(batch.transform, "calibrate(affine) -> weights(helpfulness)");
    let bad: RewardConfig = serde_json::from_str(r#"{"calibration": {"shift": [0, 1]}}"#).unwrap();
    let err = RewardPipeline::new(bad, PresetBook::builtin()).unwrap_err().to_string();
    assert!(err.contains("calibration.shift") && err.contains("got 2"), "{err}");
}

#[test]
fn presets_from_a_file_and_per_request_overrides() {
    let mut book = PresetBook::builtin();
    book.add_json(r#"{"presets": {"mine": {"weights": [0,0,0,0,0,0,0,0,2]}}}"#, "mine.json").unwrap();
    let config = RewardConfig { preset: Some("mine".into()), ..Default::default() };
    let mut p = RewardPipeline::new(config, book).unwrap();
    let mut raw = h(1.0);
    raw[8] = 3.0;
    let item = [RewardInput { raw, group: None, turn: 1 }];
    let out = p.rewards(&item, &RewardOverride::default()).unwrap();
    assert_eq!((out.results[0].as_ref().unwrap().reward, out.weights_name.as_str()), (6.0, "mine"));
    let by_preset = RewardOverride { preset: Some("helpfulness".into()), weights: None };
    let out = p.rewards(&item, &by_preset).unwrap();
    assert_eq!((out.results[0].as_ref().unwrap().reward, out.weights_name.as_str()), (1.0, "helpfulness"));
    let by_vector = RewardOverride { weights: Some(vec![0., 0., 0., 0., 1., 0., 0., 0., 1.]), preset: None };
    let out = p.rewards(&item, &by_vector).unwrap();
    assert_eq!((out.results[0].as_ref().unwrap().reward, out.weights_name.as_str()), (4.0, "custom"));
    // The configured weights are untouched by overrides.
    assert_eq!(p.weights().1, "mine");

    let short = RewardOverride { weights: Some(vec![1.0; 8]), preset: None };
    let err = p.rewards(&item, &short).unwrap_err();
    assert_eq!(err.code(), "invalid_weights");
    assert!(err.to_string().contains("expected 9 weights") && err.to_string().contains("got 8"));
    let unknown = RewardOverride { preset: Some("nope".into()), weights: None };
    let err = p.rewards(&item, &unknown).unwrap_err().to_string();
    assert!(err.contains("unknown preset `nope`") && err.contains("mine"), "{err}");
    let both = RewardOverride { preset: Some("mine".into()), weights: Some(vec![0.0; 9]) };
    assert!(p.rewards(&item, &both).unwrap_err().to_string().contains("not both"));
    let config = RewardConfig { preset: Some("nope".into()), ..Default::default() };
    assert!(matches!(RewardPipeline::new(config, PresetBook::builtin()), Err(RewardError::UnknownPreset(..))));
}

#[test]
fn a_non_finite_score_fails_only_its_own_result() {
    let mut p = pipeline(Normalize::Batch { eps: 0.0, scale: true }, None);
    let mut items = inputs(&[1.0, 2.0, 3.0]);
    items.insert(1, RewardInput { raw: h(f32::NAN), group: None, turn: 1 });
    let results = p.rewards(&items, &RewardOverride::default()).unwrap().results;
    // The batch statistics come from 1, 2, 3 only.
    assert_eq!(results[0].as_ref().unwrap().reward, -1.0);
    assert_eq!(results[3].as_ref().unwrap().reward, 1.0);
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.code(), "non_finite_score");
    assert!(err.to_string().contains("helpfulness"), "{err}");
}

#[test]
fn a_full_config_round_trips_through_json() {
    let text = r#"{"weights": [0,0,0,0,1,1,1,1,-1], "normalize": {"mode": "running", "window": 1000},
                   "clip": {"min": -5, "max": 5}}"#;
    let config: RewardConfig = serde_json::from_str(text).unwrap();
    assert_eq!(config.normalize, Normalize::Running { window: Some(1000), eps: 1e-6 });
    let again: RewardConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(config, again);
    let err = serde_json::from_str::<RewardConfig>(r#"{"normalise": {"mode": "batch"}}"#).unwrap_err().to_string();
    assert!(err.contains("normalise"), "{err}");
}
