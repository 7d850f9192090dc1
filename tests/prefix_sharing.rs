//! Prefix sharing is exact: records that share a prompt or a conversation
//! history are scored together in one prefix tree, and every turn equals the
//! record scored alone (in f32 within `close::SAME_MATH` of the turn's largest
//! |raw|: GEMM blocking changes with batch shape), whatever the batch
//! composition or token budget.

mod common;

use common::words::{chat, text};
use common::*;
use reward_worker::engine::{ModelSource, PreparedRecord, RecordScores, ScoreStats, Scorer};
use reward_worker::model::DType;
use serde_json::{json, Value};
use tch::Device;

/// GRPO groups: prompts of several lengths, responses of several lengths, a group
/// of one, a group of identical responses, a response that is a prefix of another;
/// and multi-turn records sharing a history (and one that shares only the header).
fn workload() -> Vec<Value> {
    let mut records = Vec::new();
    for (g, (prompt_len, sizes)) in
        [(5, vec![3, 40, 17]), (60, vec![25]), (23, vec![9, 9, 9]), (140, vec![8, 33, 61, 2])].iter().enumerate()
    {
        let prompt = text(100 + g as u64, *prompt_len);
        for (r, &n) in sizes.iter().enumerate() {
            let same = g == 2; // identical responses
            records.push(chat(&[prompt.clone(), text(if same { 7 } else { 1000 + 10 * g as u64 + r as u64 }, n)]));
        }
    }
    let long = text(555, 30);
    let short: String = long.split(' ').take(12).collect::<Vec<_>>().join(" ");
    records.push(chat(&[text(9, 10), long]));
    records.push(chat(&[text(9, 10), short])); // its response is a prefix of the one above
    let history = [text(21, 15), text(22, 30), text(23, 12)];
    for k in 0..3u64 {
        let mut turns = history.to_vec();
        turns.push(text(30 + k, 10 + 7 * k as usize));
        records.push(chat(&turns));
    }
    records.push(chat(&[text(40, 5), text(41, 6), text(42, 7), text(43, 8), text(44, 9), text(45, 10)]));
    records
}

fn scorer(name: &str, dtype: DType) -> Scorer {
    Scorer::load(&ModelSource::Dir(fixture(name)), dtype, Device::Cpu).unwrap()
}

fn score(scorer: &Scorer, records: &[Value], budget: usize) -> (Vec<RecordScores>, ScoreStats) {
    let prepared = prepare(scorer, records);
    let refs: Vec<&PreparedRecord> = prepared.iter().collect();
    let (results, stats) = scorer.score_with_stats(&refs, budget);
    (results.into_iter().map(Result::unwrap).collect(), stats)
}

/// Every turn of every record, scored on its own: the record cut after the turn.
fn alone(scorer: &Scorer, records: &[Value]) -> Vec<Vec<[f32; 9]>> {
    records
        .iter()
        .map(|record| {
            let messages = record["messages"].as_array().unwrap();
            (1..messages.len())
                .step_by(2)
                .map(|k| {
                    let cut = json!({"messages": messages[..=k].to_vec()});
                    let (scores, _) = score(scorer, &[cut], 1 << 20);
                    scores[0].turns.last().unwrap().raw
                })
                .collect()
        })
        .collect()
}

/// Largest difference of a turn's scores between `together` and `alone`,
/// relative to the turn's scale in `alone`.
fn worst(together: &[RecordScores], alone: &[Vec<[f32; 9]>]) -> f64 {
    let mut worst: f64 = 0.0;
    for (t, a) in together.iter().zip(alone) {
        assert_eq!(t.turns.len(), a.len());
        for (turn, raw) in t.turns.iter().zip(a) {
            worst = worst.max(close::rel_diff(&close::widen(&turn.raw), &close::widen(raw)));
        }
    }
    worst
}

#[test]
fn shared_prompts_and_histories_score_as_if_alone_f32() {
    let records = workload();
    for name in ["tiny-gqa-odd-bias-legacy", "tiny-mha-rot025", "tiny-full-rotary-hd"] {
        let s = scorer(name, DType::F32);
        let reference = alone(&s, &records);
        // one batch, a budget that cuts groups, a budget below one group's prompt
        for budget in [1 << 20, 300, 40] {
            let (together, stats) = score(&s, &records, budget);
            let diff = worst(&together, &reference);
            eprintln!("{name} budget {budget}: {} batches, {stats:?}, max relative diff {diff:.2e}", stats.batches);
            assert!(
                diff < close::SAME_MATH,
                "{name} budget {budget}: shared scoring differs from alone by {diff} (relative)"
            );
        }
    }
}

#[test]
fn shared_tokens_are_computed_once() {
    let s = scorer("tiny-nemotron-rm", DType::F32);
    let records = workload();
    let (_, one_batch) = score(&s, &records, 1 << 20);
    let (_, small) = score(&s, &records, 40);
    assert!(one_batch.batches == 1 && small.batches > 1);
    assert!(one_batch.tokens_computed < one_batch.tokens_requested);
    // a cut inside a shared prefix computes it again
    assert!(small.tokens_computed > one_batch.tokens_computed);
    // one batch computes exactly the distinct prefixes: the header once, each
    // prompt once, identical responses once
    let unique = unique_tokens(&prepare(&s, &records));
    assert_eq!(one_batch.tokens_computed, unique);
}

#[test]
fn scores_do_not_depend_on_batch_composition() {
    let s = scorer("tiny-gqa-odd-bias-legacy", DType::F32);
    let records = workload();
    let (all, _) = score(&s, &records, 1 << 20);
    // every record with a different set of neighbours: reversed, and in pairs
    let reversed: Vec<Value> = records.iter().rev().cloned().collect();
    let (mut rev, _) = score(&s, &reversed, 1 << 20);
    rev.reverse();
    let pairs: Vec<RecordScores> = records.chunks(2).flat_map(|c| score(&s, c, 1 << 20).0).collect();
    for other in [&rev, &pairs] {
        let reference: Vec<Vec<[f32; 9]>> = other.iter().map(|r| r.turns.iter().map(|t| t.raw).collect()).collect();
        let diff = worst(&all, &reference);
        eprintln!("batch composition: max relative diff {diff:.2e}");
        assert!(diff < close::SAME_MATH, "{diff} (relative)");
    }
}

/// Like the parity test's bound ("no further from f32 than a factor of a
/// reference bf16 run"; there, transformers'), here the bf16 run of each record
/// alone is ours, on records longer than the fixtures' (bf16 error grows with
/// length), and the shared run must stay within `close::BF16_SHARED_FACTOR` of it.
#[test]
fn bf16_sharing_stays_within_the_parity_bound() {
    for name in ["tiny-gqa-odd-bias-legacy", "tiny-mha-rot025"] {
        let records = workload();
        let reference = alone(&scorer(name, DType::F32), &records);
        let bf16 = scorer(name, DType::Bf16);
        let alone_diff = worst_abs(&alone(&bf16, &records), &reference);
        let (together, _) = score(&bf16, &records, 300);
        let shared: Vec<Vec<[f32; 9]>> = together.iter().map(|r| r.turns.iter().map(|t| t.raw).collect()).collect();
        let diff = worst_abs(&shared, &reference);
        let bound = alone_diff * close::BF16_SHARED_FACTOR;
        eprintln!(
            "{name}: bf16 shared vs f32 alone {diff:.4}, bf16 alone {alone_diff:.4} ({:.2}x, bound {bound:.4})",
            diff / alone_diff
        );
        assert!(diff <= bound, "{name}: bf16 shared scoring is {diff} from f32, bound {bound}");
    }
}

/// The largest |difference| between two sets of turns.
fn worst_abs(a: &[Vec<[f32; 9]>], b: &[Vec<[f32; 9]>]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst: f64 = 0.0;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        worst = worst.max(max_abs_diff(&close::widen(x), &close::widen(y)));
    }
    worst
}
