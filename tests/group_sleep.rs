//! A worker group sleeps and wakes on every rank: tp=2 (and tp=2 x pp=2) over
//! the threads backend. Scores after a wake are bit-identical to before; and
//! after a level-2 wake every rank has read the checkpoint again: the group
//! scores exactly as a fresh group over the checkpoint as it is now.

mod common;

use common::*;
use reward_worker::config::{CommBackend, DType, ParallelLayout};
use reward_worker::engine::{ModelSource, PreparedRecord, ScoreOptions, Scorer, SleepLevel};
use reward_worker::parallel::{load_scorer, GroupOptions};
use serde_json::json;
use tch::{Device, Tensor};

fn group(dir: &std::path::Path, tp: usize, pp: usize) -> Scorer {
    let options = GroupOptions::new(ParallelLayout { tp, pp }, CommBackend::Threads, DType::F32, Device::Cpu);
    load_scorer(&ModelSource::Dir(dir.to_path_buf()), &options).unwrap()
}

fn records(scorer: &Scorer) -> Vec<PreparedRecord> {
    ["4.", "It is four.", "2 + 2 = 4, because two and two make four."]
        .iter()
        .map(|t| {
            let r = json!({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": t}]});
            scorer.prepare(&r, ScoreOptions::default()).unwrap()
        })
        .collect()
}

fn bits(scorer: &Scorer, records: &[PreparedRecord]) -> Vec<Vec<u32>> {
    let refs: Vec<&PreparedRecord> = records.iter().collect();
    scorer
        .score(&refs, 64)
        .into_iter()
        .map(|r| r.unwrap().turns.iter().flat_map(|t| t.raw.map(f32::to_bits)).collect())
        .collect()
}

#[test]
fn every_rank_sleeps_and_wakes_with_identical_scores() {
    for (tp, pp) in [(2, 1), (2, 2)] {
        let mut scorer = group(&fixture("tiny-nemotron-rm"), tp, pp);
        let records = records(&scorer);
        let before = bits(&scorer, &records);
        for level in [SleepLevel::One, SleepLevel::Two] {
            scorer.sleep(level).unwrap();
            let refs: Vec<&PreparedRecord> = records.iter().collect();
            let asleep = scorer.score(&refs, 64);
            let error = asleep[0].as_ref().unwrap_err();
            assert!(error.message.contains("asleep"), "tp={tp} pp={pp}: {}", error.message);
            assert!(scorer.healthy(), "a forward asked of a sleeping group fails it");
            scorer.wake().unwrap();
            assert_eq!(bits(&scorer, &records), before, "tp={tp} pp={pp}: scores after a level-{level} wake");
        }
    }
}

#[test]
fn a_level_two_wake_reads_the_checkpoint_again_on_every_rank() {
    let dir = copy_model("tiny-nemotron-rm");
    let mut scorer = group(dir.path(), 2, 1);
    let records = records(&scorer);
    let before = bits(&scorer, &records);
    scorer.sleep(SleepLevel::Two).unwrap();
    // Change the checkpoint while asleep: every tensor of every rank's slice moves.
    let file = dir.path().join("model.safetensors");
    let tensors: Vec<(String, Tensor)> =
        Tensor::read_safetensors(&file).unwrap().into_iter().map(|(n, t)| (n, t * 1.25)).collect();
    std::fs::remove_file(&file).unwrap();
    Tensor::write_safetensors(&tensors, &file).unwrap();
    scorer.wake().unwrap();
    let woken = bits(&scorer, &records);
    assert_ne!(woken, before, "the wake did not read the checkpoint");
    assert_eq!(woken, bits(&group(dir.path(), 2, 1), &records), "a rank kept its old slices");
    // A checkpoint gone at wake time is an error that names it, and the group
    // says it is unhealthy (restart the worker).
    scorer.sleep(SleepLevel::Two).unwrap();
    std::fs::remove_file(&file).unwrap();
    let error = scorer.wake().unwrap_err().to_string();
    assert!(error.contains("model.safetensors"), "{error}");
    assert!(!scorer.healthy());
}
