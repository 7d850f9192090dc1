//! Parity with Hugging Face transformers on the reference fixtures: token ids,
//! f32 raw scores and the default-weight reward within `close::TO_TRANSFORMERS`
//! of the record's largest |raw|, and bf16 no further from the f32 reference
//! than `close::BF16_FACTOR` times transformers' own bf16 run.

mod common;

use common::*;
use reward_worker::engine::{ModelSource, PreparedRecord, ScoreOptions, Scorer};
use reward_worker::model::DType;
use reward_worker::reward::AttributeWeights;
use tch::Device;

fn scorer(name: &str, dtype: DType) -> Scorer {
    Scorer::load(&ModelSource::Dir(fixture(name)), dtype, Device::Cpu).unwrap()
}

/// Score every fixture record in one batch; `(expected turn, our raw)` pairs.
fn score_all(scorer: &Scorer, name: &str) -> Vec<(serde_json::Value, Vec<f64>)> {
    let cases = expected(name);
    let prepared: Vec<PreparedRecord> =
        cases.iter().map(|c| scorer.prepare(&c["record"], ScoreOptions::default()).unwrap()).collect();
    let refs: Vec<&PreparedRecord> = prepared.iter().collect();
    let results = scorer.score(&refs, 8192);
    let mut out = Vec::new();
    for (case, result) in cases.iter().zip(results) {
        let result = result.unwrap();
        let turns = case["turns"].as_array().unwrap();
        assert_eq!(turns.len(), result.turns.len(), "{name} {}", case["id"]);
        for (want, got) in turns.iter().zip(&result.turns) {
            assert_eq!(want["turn"].as_u64().unwrap() as usize, got.turn);
            out.push((want.clone(), got.raw.iter().map(|&x| x as f64).collect()));
        }
    }
    out
}

#[test]
fn token_ids_equal_the_reference_for_every_scored_prefix() {
    for name in FIXTURES {
        let s = scorer(name, DType::F32);
        for case in expected(name) {
            let prepared = s.prepare(&case["record"], ScoreOptions::default()).unwrap();
            assert_eq!(prepared.sequences.len(), 1, "one sequence per conversation");
            let seq = &prepared.sequences[0];
            for (want, &(probe, prefix)) in case["turns"].as_array().unwrap().iter().zip(&seq.probes) {
                let mut ids = seq.tokens[..prefix as usize].to_vec();
                ids.push(probe);
                let want: Vec<i64> =
                    want["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
                assert_eq!(ids, want, "{name} {}", case["id"]);
            }
        }
    }
}

#[test]
fn f32_raw_scores_and_rewards_match_transformers() {
    let weights = AttributeWeights::default();
    for name in FIXTURES {
        let s = scorer(name, DType::F32);
        let (mut worst, mut worst_abs): (f64, f64) = (0.0, 0.0);
        for (want, got) in score_all(&s, name) {
            let want_raw = floats(&want["raw"]);
            let diff = close::rel_diff(&got, &want_raw);
            (worst, worst_abs) = (worst.max(diff), worst_abs.max(max_abs_diff(&got, &want_raw)));
            assert!(diff < close::TO_TRANSFORMERS, "{name}: raw off by {diff} (relative)");
            // The reward is a weighted sum of raw scores: its rounding is that of
            // the raw scores, so it is bounded on their scale.
            let raw: [f32; 9] = std::array::from_fn(|i| got[i] as f32);
            let reward_diff = (weights.reward(&raw) - want["reward"].as_f64().unwrap()).abs() / close::scale(&want_raw);
            assert!(reward_diff < close::TO_TRANSFORMERS, "{name}: reward off by {reward_diff} (relative)");
        }
        eprintln!("{name}: f32 largest difference to transformers {worst:.2e} relative, {worst_abs:.2e} absolute");
    }
}

#[test]
fn bf16_is_as_close_to_f32_as_transformers_bf16() {
    for name in FIXTURES {
        let s = scorer(name, DType::Bf16);
        let (mut ours, mut theirs): (f64, f64) = (0.0, 0.0);
        for (want, got) in score_all(&s, name) {
            let f32_ref = floats(&want["raw"]);
            ours = ours.max(max_abs_diff(&got, &f32_ref));
            theirs = theirs.max(max_abs_diff(&floats(&want["raw_bf16"]), &f32_ref));
        }
        let bound = theirs * close::BF16_FACTOR;
        eprintln!(
            "{name}: bf16 max |diff| to f32 reference: ours {ours:.4}, transformers {theirs:.4} ({:.2}x, bound {bound:.4})",
            ours / theirs
        );
        assert!(ours <= bound, "{name}: bf16 off by {ours}, transformers' bf16 by {theirs}, bound {bound}");
    }
}
