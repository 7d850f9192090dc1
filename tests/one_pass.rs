//! One forward per conversation equals scoring every prefix on its own (to f32
//! rounding: the GEMMs see other row counts, and raw scores are O(10); the
//! bound is `close::SAME_MATH` relative to the scores compared), and a record's
//! scores do not depend on what else is in its batch or how the checkpoint is
//! split into files.

mod common;

use common::*;
use reward_worker::engine::{ModelSource, PreparedRecord, RecordScores, ScoreOptions, Scorer};
use reward_worker::model::DType;
use serde_json::{json, Value};
use tch::Device;

fn score(scorer: &Scorer, records: &[Value], batch_tokens: usize) -> Vec<RecordScores> {
    let prepared: Vec<PreparedRecord> =
        records.iter().map(|r| scorer.prepare(r, ScoreOptions::default()).unwrap()).collect();
    let refs: Vec<&PreparedRecord> = prepared.iter().collect();
    scorer.score(&refs, batch_tokens).into_iter().map(Result::unwrap).collect()
}

fn raw(scores: &RecordScores, i: usize) -> Vec<f64> {
    close::widen(&scores.turns[i].raw)
}

/// The record cut after turn `k`: scoring it scores exactly prefix k (and earlier assistant turns).
fn cut(record: &Value, k: usize) -> Value {
    let turns = record["conversations"].as_array().unwrap()[..=k].to_vec();
    json!({ "conversations": turns })
}

#[test]
fn one_pass_equals_per_prefix_scoring() {
    for name in FIXTURES {
        let scorer = Scorer::load(&ModelSource::Dir(fixture(name)), DType::F32, Device::Cpu).unwrap();
        let mut worst: f64 = 0.0;
        for case in expected(name) {
            let record = &case["record"];
            let together = &score(&scorer, std::slice::from_ref(record), 8192)[0];
            for (i, turn) in together.turns.iter().enumerate() {
                let alone = &score(&scorer, &[cut(record, turn.turn)], 8192)[0];
                let last = alone.turns.len() - 1;
                assert_eq!(alone.turns[last].turn, turn.turn);
                let diff = close::rel_diff(&raw(together, i), &raw(alone, last));
                worst = worst.max(diff);
                assert!(
                    diff < close::SAME_MATH,
                    "{name} {} turn {}: one pass differs by {diff} (relative)",
                    case["id"],
                    turn.turn
                );
            }
        }
        eprintln!("{name}: one pass vs per prefix, largest relative difference {worst:.2e}");
    }
}

#[test]
fn scores_do_not_depend_on_batch_composition() {
    let scorer = Scorer::load(&ModelSource::Dir(fixture("tiny-gqa-odd-bias-legacy")), DType::F32, Device::Cpu).unwrap();
    let records: Vec<Value> = expected("tiny-gqa-odd-bias-legacy").iter().map(|c| c["record"].clone()).collect();
    let all_at_once = score(&scorer, &records, 1 << 20);
    let one_per_batch = score(&scorer, &records, 1);
    let mut worst: f64 = 0.0;
    for (a, b) in all_at_once.iter().zip(&one_per_batch) {
        for i in 0..a.turns.len() {
            let diff = close::rel_diff(&raw(a, i), &raw(b, i));
            worst = worst.max(diff);
            assert!(diff < close::SAME_MATH, "turn {i}: {diff} (relative) between one batch and one record per batch");
        }
    }
    eprintln!("batch composition: largest relative difference {worst:.2e}");
}

#[test]
fn sharded_checkpoint_loads_the_same_model() {
    use safetensors::tensor::TensorView;
    let dir = copy_model("tiny-nemotron-rm");
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView)> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(&file)).unwrap();
        for n in part.iter() {
            weight_map.insert(n.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let records: Vec<Value> = expected("tiny-nemotron-rm").iter().map(|c| c["record"].clone()).collect();
    let single = Scorer::load(&ModelSource::Dir(fixture("tiny-nemotron-rm")), DType::F32, Device::Cpu).unwrap();
    let sharded = Scorer::load(&ModelSource::Dir(dir.path().to_path_buf()), DType::F32, Device::Cpu).unwrap();
    for (a, b) in score(&single, &records, 8192).iter().zip(&score(&sharded, &records, 8192)) {
        assert_eq!(a, b);
    }
}

#[test]
fn sequences_of_one_shape_attend_as_a_group_and_score_as_alone() {
    // Same-shape sequences share one batched attention call; scores must not change.
    let scorer = Scorer::load(&ModelSource::Dir(fixture("tiny-mha-rot025")), DType::F32, Device::Cpu).unwrap();
    let records: Vec<Value> = expected("tiny-mha-rot025").iter().map(|c| c["record"].clone()).collect();
    let (a, b) = (&records[2], &records[3]);
    let grouped = score(&scorer, &[a.clone(), a.clone(), b.clone(), b.clone(), a.clone()], 1 << 20);
    let mut worst: f64 = 0.0;
    for (got, want) in grouped.iter().zip([a, a, b, b, a]) {
        let alone = &score(&scorer, std::slice::from_ref(want), 1 << 20)[0];
        for i in 0..alone.turns.len() {
            let diff = close::rel_diff(&raw(got, i), &raw(alone, i));
            worst = worst.max(diff);
            assert!(diff < close::SAME_MATH, "turn {i}: grouped attention differs by {diff} (relative)");
        }
    }
    eprintln!("same-shape group vs alone: largest relative difference {worst:.2e}");
}
