//! The reward pipeline with numbers small enough to check by hand.

use reward_worker::reward::{
    Clip, Normalize, PresetBook, RewardConfig, RewardError, RewardInput, RewardOverride,
    RewardPipeline,
};

/// A raw vector whose only non-zero attribute is helpfulness (index 4).
fn h(x: f32) -> [f32; 9] {
    let mut raw = [0.0; 9];
    raw[4] = x;
    raw
}

fn inputs(values: &[f32]) -> Vec<RewardInput> {
    values
        .iter()
        .map(|&x| RewardInput { raw: h(x), group: None, turn: 1 })
        .collect()
}

fn grouped(items: &[(&str, usize, f32)]) -> Vec<RewardInput> {
    items
        .iter()
        .map(|&(g, turn, x)| RewardInput { raw: h(x), group: Some(g.into()), turn })
        .collect()
}

/// Pipeline with the `helpfulness` preset, so the weighted sum is raw[4].
fn pipeline(normalize: Normalize, clip: Option<Clip>) -> RewardPipeline {
    let config = RewardConfig {
        preset: Some("helpfulness".into()),
        normalize,
        clip,
        ..Default::default()
    };
    RewardPipeline::new(config, PresetBook::builtin()).unwrap()
}

fn rewards(p: &mut RewardPipeline, items: &[RewardInput]) -> Vec<f64> {
    p.rewards(items, &RewardOverride::default())
        .unwrap()
        .results
        .into_iter()
        .map(|r| r.unwrap().reward)
        .collect()
}

fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
    }
}

#[test]
fn default_weights_without_normalisation() {
    let mut p = RewardPipeline::new(RewardConfig::default(), PresetBook::builtin()).unwrap();
    let raw = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
    let batch = p
        .rewards(&[RewardInput { raw, group: None, turn: 1 }], &RewardOverride::default())
        .unwrap();
    // 0.3*1 + 0.74*2 + 0.46*3 + 0.47*4 - 0.33*5
    close(&[batch.results[0].as_ref().unwrap().reward], &[3.39]);
    assert_eq!(batch.weights_name, "default");
    assert_eq!(batch.weights.0, [0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33]);
    assert_eq!(batch.transform, "weights(default)");
}

#[test]
fn fixed_mean_and_std() {
    let mut p = pipeline(Normalize::Fixed { mean: 1.0, std: 2.0 }, None);
    close(&rewards(&mut p, &inputs(&[5.0, 1.0, 0.0])), &[2.0, 0.0, -0.5]);
    let batch = p.rewards(&inputs(&[1.0]), &RewardOverride::default()).unwrap();
    assert_eq!(batch.transform, "weights(helpfulness) -> fixed(mean=1, std=2)");
}

#[test]
fn running_statistics_are_frozen_until_advanced() {
    let mut p = pipeline(Normalize::Running { window: None, eps: 0.0 }, None);
    // No committed statistics yet: the identity, however many calls.
    close(&rewards(&mut p, &inputs(&[1.0, 2.0, 3.0])), &[1.0, 2.0, 3.0]);
    assert_eq!(p.pending(), 3);
    p.advance(); // mean 2, sample std 1
    close(&rewards(&mut p, &inputs(&[4.0, 0.0])), &[2.0, -2.0]);
    // Still the same step: 4 and 0 are pending, not applied.
    close(&rewards(&mut p, &inputs(&[2.0])), &[0.0]);
    let batch = p.rewards(&inputs(&[3.0]), &RewardOverride::default()).unwrap();
    assert_eq!(batch.transform, "weights(helpfulness) -> running(mean=2, std=1, n=3, step=1)");
    p.advance(); // [1,2,3,4,0,2,3]: mean 15/7
    let stats = p.running_stats().clone();
    assert_eq!((stats.count, stats.steps), (7, 2));
    let values = [1.0, 2.0, 3.0, 4.0, 0.0, 2.0, 3.0];
    let mean = 15.0 / 7.0;
    let std = (values.iter().map(|x: &f64| (x - mean).powi(2)).sum::<f64>() / 6.0).sqrt();
    close(&rewards(&mut p, &inputs(&[5.0])), &[(5.0 - mean) / std]);
    // Rewards made with request weights are normalised but not recorded.
    let before = p.pending();
    let other = RewardOverride { preset: Some("correctness".into()), weights: None };
    let batch = p.rewards(&inputs(&[5.0]), &other).unwrap();
    close(&[batch.results[0].as_ref().unwrap().reward], &[-mean / std]);
    assert!(batch.transform.contains("not recorded"), "{}", batch.transform);
    assert_eq!(p.pending(), before);
    p.reset();
    close(&rewards(&mut p, &inputs(&[5.0])), &[5.0]);
    assert_eq!(p.running_stats().count, 0);
}

#[test]
fn running_window_keeps_the_latest_rewards() {
    let mut p = pipeline(Normalize::Running { window: Some(3), eps: 0.0 }, None);
    rewards(&mut p, &inputs(&[100.0, 1.0]));
    p.advance();
    rewards(&mut p, &inputs(&[2.0, 3.0]));
    p.advance(); // window [1, 2, 3]: mean 2, std 1
    close(&rewards(&mut p, &inputs(&[4.0])), &[2.0]);
}

#[test]
fn batch_whitening() {
    let mut p = pipeline(Normalize::Batch { eps: 0.0, scale: true }, None);
    close(&rewards(&mut p, &inputs(&[1.0, 2.0, 3.0])), &[-1.0, 0.0, 1.0]);
    let batch = p.rewards(&inputs(&[1.0, 2.0, 3.0]), &RewardOverride::default()).unwrap();
    assert_eq!(batch.transform, "weights(helpfulness) -> batch(mean=2, std=1, n=3)");
    // Sample std: [1, 3] has std sqrt(2).
    let s = 0.5f64.sqrt();
    close(&rewards(&mut p, &inputs(&[1.0, 3.0])), &[-s, s]);
    let mut centre = pipeline(Normalize::Batch { eps: 0.0, scale: false }, None);
    close(&rewards(&mut centre, &inputs(&[1.0, 3.0])), &[-1.0, 1.0]);
}

#[test]
fn group_whitening_per_prompt_and_turn() {
    let mut p = pipeline(Normalize::Group { eps: 0.0, scale: true }, None);
    let items = grouped(&[
        ("a", 1, 1.0),
        ("b", 1, 10.0),
        ("a", 1, 2.0),
        ("b", 1, 20.0),
        ("a", 1, 3.0),
        ("c", 1, 7.0),
        // Same prompt, a later turn: its own group.
        ("a", 3, 5.0),
        ("a", 3, 9.0),
    ]);
    let s = 0.5f64.sqrt(); // (10 - 15) / std(10, 20) = -5 / 7.0711
    close(&rewards(&mut p, &items), &[-1.0, -s, 0.0, s, 1.0, 0.0, -s, s]);
    let batch = p.rewards(&items, &RewardOverride::default()).unwrap();
    assert_eq!(batch.transform, "weights(helpfulness) -> group(groups=4, sample std, eps=0)");

    // A record without a group fails alone.
    let mut items = grouped(&[("a", 1, 1.0), ("a", 1, 2.0), ("a", 1, 3.0)]);
    items.insert(1, RewardInput { raw: h(2.0), group: None, turn: 1 });
    let results = p.rewards(&items, &RewardOverride::default()).unwrap().results;
    assert_eq!(results[0].as_ref().unwrap().reward, -1.0);
    assert_eq!(results[3].as_ref().unwrap().reward, 1.0);
    assert_eq!(results[1], Err(RewardError::MissingGroup));
    assert_eq!(results[1].as_ref().unwrap_err().code(), "missing_group");
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
    let bad: RewardConfig =
        serde_json::from_str(r#"{"calibration": {"shift": [0, 1]}}"#).unwrap();
    let err = RewardPipeline::new(bad, PresetBook::builtin()).unwrap_err().to_string();
    assert!(err.contains("calibration.shift") && err.contains("got 2"), "{err}");
}

#[test]
fn presets_from_a_file_and_per_request_overrides() {
    let mut book = PresetBook::builtin();
    book.add_json(r#"{"presets": {"mine": {"weights": [0,0,0,0,0,0,0,0,2]}}}"#, "mine.json")
        .unwrap();
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
    assert!(matches!(
        RewardPipeline::new(config, PresetBook::builtin()),
        Err(RewardError::UnknownPreset(..))
    ));
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
    let err = serde_json::from_str::<RewardConfig>(r#"{"normalise": {"mode": "batch"}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("normalise"), "{err}");
}
