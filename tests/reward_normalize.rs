//! Every normalisation mode of the reward pipeline, with numbers small enough
//! to check by hand. The `helpfulness` preset makes the weighted sum raw[4].

mod common;

use common::pipeline::*;
use reward_worker::reward::{Normalize, RewardError, RewardInput, RewardOverride};

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
