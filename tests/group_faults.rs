//! A rank that fails in the middle of a batch, in tensor and in pipeline
//! parallel layouts: the batch's records end in errors (naming the rank) within
//! a bounded time, the group reports unhealthy, later batches fail at once, and
//! nothing hangs. Every call runs on a watchdog thread: a hang fails the test
//! instead of stalling it.

mod common;

use common::*;
use reward_worker::config::{CommBackend, ParallelLayout};
use reward_worker::engine::{ModelSource, PreparedRecord, ScoreOptions, Scorer};
use reward_worker::model::DType;
use reward_worker::parallel::{load_scorer, Fault, FaultKind, GroupOptions};
use std::sync::mpsc;
use std::time::Duration;
use tch::Device;

/// Far longer than any of these calls takes; only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(120);

fn faulty_group(tp: usize, pp: usize, fault: Fault) -> Scorer {
    let mut options = GroupOptions::new(ParallelLayout { tp, pp }, CommBackend::Threads, DType::F32, Device::Cpu);
    options.timeout = Duration::from_secs(2);
    options.fault = Some(fault);
    load_scorer(&ModelSource::Dir(fixture("tiny-mha-4l-bias")), &options).unwrap()
}

/// Score the fixture records twice (several micro-batches each time) on a
/// watchdog thread; the errors of both runs and whether the group was healthy after each.
fn score_twice(scorer: Scorer) -> (Vec<String>, bool, Vec<String>, bool) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let prepared: Vec<PreparedRecord> = expected("tiny-mha-4l-bias")
            .iter()
            .map(|c| scorer.prepare(&c["record"], ScoreOptions::default()).unwrap())
            .collect();
        let refs: Vec<&PreparedRecord> = prepared.iter().collect();
        let errors = |s: &Scorer| -> Vec<String> {
            s.score(&refs, 160).into_iter().map(|r| r.err().map(|e| e.to_string()).unwrap_or_default()).collect()
        };
        let first = errors(&scorer);
        let healthy_after_first = scorer.healthy();
        let second = errors(&scorer);
        let _ = tx.send((first, healthy_after_first, second, scorer.healthy()));
    });
    rx.recv_timeout(WATCHDOG).expect("the group hung")
}

/// `causes`: what the error may say (which peer notices a hang first is a race).
fn check(tp: usize, pp: usize, fault: Fault, causes: &[&str]) {
    let (first, healthy_first, second, healthy_second) = score_twice(faulty_group(tp, pp, fault));
    let rank = format!("rank {} (stage {}, tp rank {}) failed", fault.rank, fault.rank / tp, fault.rank % tp);
    let failed: Vec<&String> = first.iter().filter(|e| !e.is_empty()).collect();
    assert!(!failed.is_empty(), "tp={tp} pp={pp} {fault:?}: no record failed");
    for e in &failed {
        assert!(e.starts_with("model_error: worker group: "), "{e}");
        assert!(causes.iter().any(|c| e.contains(c)), "tp={tp} pp={pp}: `{e}` says none of {causes:?}");
    }
    if fault.kind != FaultKind::Hang {
        // A hung rank cannot say so; its peers name it in their timeouts.
        assert!(failed.iter().all(|e| e.contains(&rank)), "{failed:?} do not name {rank}");
    }
    assert!(!healthy_first && !healthy_second, "the group still reports healthy");
    for e in &second {
        assert!(e.contains("the group is unhealthy") && e.contains("restart the worker"), "{e}");
    }
    eprintln!("tp={tp} pp={pp} {:?}: {}", fault.kind, failed[0]);
}

#[test]
fn an_error_in_a_tensor_parallel_rank_fails_the_batch_and_the_group() {
    let fault = Fault { rank: 1, at_all_reduce: 5, kind: FaultKind::Error };
    check(2, 1, fault, &["failed: injected fault at all_reduce #5 of global rank 1"]);
}

#[test]
fn a_panic_in_a_pipeline_stage_fails_the_batch_and_the_group() {
    let fault = Fault { rank: 1, at_all_reduce: 7, kind: FaultKind::Panic };
    check(1, 2, fault, &["failed: panicked: injected fault at all_reduce #7 of global rank 1"]);
}

#[test]
fn a_hung_tensor_parallel_rank_is_timed_out() {
    // Rank 0 waits in the all-reduce for rank 1 and names it; stage 1 waits for
    // stage 0 twice as long (pipeline waits), so it does not blame rank 0.
    let fault = Fault { rank: 1, at_all_reduce: 3, kind: FaultKind::Hang };
    let cause = "rank 0 (stage 0, tp rank 0) failed: all_reduce in the tensor-parallel group of stage 0 \
                 (global ranks [0, 1]): timed out after 2.0 s waiting for global rank(s) [1]";
    check(2, 2, fault, &[cause]);
}

#[test]
fn a_hung_last_stage_is_timed_out() {
    // Stage 1 stops; stage 0 times out sending to it (or rank 0 waiting for the scores).
    let fault = Fault { rank: 1, at_all_reduce: 2, kind: FaultKind::Hang };
    let causes = [
        "send in the worker group: timed out after 4.0 s waiting for global rank 1 to receive",
        "recv in the worker group: timed out after 4.0 s waiting for global rank 1 to send",
    ];
    check(1, 2, fault, &causes);
}

#[test]
fn a_bad_batch_fails_alone_and_the_group_stays_healthy() {
    // An id past the vocabulary fails its own batch on every rank before any
    // communication; the other batches of the same call are scored.
    let source = ModelSource::Dir(fixture("tiny-mha-4l-bias"));
    let options = GroupOptions::new(ParallelLayout { tp: 2, pp: 2 }, CommBackend::Threads, DType::F32, Device::Cpu);
    let scorer = load_scorer(&source, &options).unwrap();
    let good = scorer.preparer().prepare_tokens(&[4, 5, 6, 7]).unwrap();
    let mut bad = good.clone();
    bad.sequences[0].tokens[1] = 5000;
    let results = scorer.score(&[&good, &bad, &good], 4);
    assert!(results[0].is_ok() && results[2].is_ok());
    let err = results[1].as_ref().unwrap_err().to_string();
    assert_eq!(err, "model_error: worker group: token id 5000 is outside the vocabulary [0, 1024)");
    assert!(scorer.healthy());
    assert_eq!(results[0], results[2]);
}
