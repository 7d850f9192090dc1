//! The worker group gives the same scores as one rank: every tp in {1, 2, 4} x
//! pp in {1, 2} that a fixture's shapes allow, on every reference fixture (GQA
//! with tp above the kv head count, MHA split over 4 ranks, head bias, uneven
//! pipeline stages), within `close::SAME_MATH` of tp=1, pp=1 and
//! `close::TO_TRANSFORMERS` of transformers, both relative to the largest
//! |raw| of the turn (the fixtures' raw outputs reach 23). The layouts a
//! fixture does not allow are refused with the numbers named.
//!
//! Splitting a matmul over ranks changes its summation order, and pp=2 halves
//! each batch (the engine gives each stage its own micro-batch), which changes
//! the prefix trees and the GEMM shapes: f32 rounding, which differs with the
//! CPU's kernels. The absolute differences are printed too.

mod common;

use common::close::widen;
use common::*;
use reward_worker::config::{CommBackend, ParallelLayout};
use reward_worker::engine::{ModelSource, PreparedRecord, ScoreOptions, Scorer};
use reward_worker::model::{Config, DType};
use reward_worker::parallel::{load_scorer, Delivery, GroupOptions};
use tch::Device;

const LAYOUTS: [(usize, usize); 6] = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)];

fn options(tp: usize, pp: usize) -> GroupOptions {
    GroupOptions::new(ParallelLayout { tp, pp }, CommBackend::Threads, DType::F32, Device::Cpu)
}

/// Raw scores of every turn of every fixture record. A small token budget makes
/// several micro-batches per call, so the pipeline really overlaps them.
fn score_all(scorer: &Scorer, name: &str) -> Vec<[f32; 9]> {
    let prepared: Vec<PreparedRecord> =
        expected(name).iter().map(|c| scorer.prepare(&c["record"], ScoreOptions::default()).unwrap()).collect();
    let refs: Vec<&PreparedRecord> = prepared.iter().collect();
    let results = scorer.score(&refs, 160);
    results.into_iter().flat_map(|r| r.unwrap().turns.into_iter().map(|t| t.raw)).collect()
}

fn reference(name: &str) -> Vec<Vec<f64>> {
    expected(name).iter().flat_map(|c| c["turns"].as_array().unwrap().iter().map(|t| floats(&t["raw"]))).collect()
}

fn max_diff(a: &[[f32; 9]], b: &[[f32; 9]]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| max_abs_diff(&widen(x), &widen(y))).fold(0.0, f64::max)
}

/// Largest difference of a turn's scores over that turn's scale in `b`.
fn max_rel_diff(a: &[[f32; 9]], b: &[[f32; 9]]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| close::rel_diff(&widen(x), &widen(y))).fold(0.0, f64::max)
}

#[test]
fn every_allowed_layout_matches_one_rank_and_transformers() {
    let mut allowed = Vec::new();
    for name in FIXTURES {
        let config = Config::from_file(&fixture(name).join("config.json")).unwrap();
        let source = ModelSource::Dir(fixture(name));
        let one = score_all(&Scorer::load(&source, DType::F32, Device::Cpu).unwrap(), name);
        let want = reference(name);
        for (tp, pp) in LAYOUTS {
            if let Err(refusal) = (ParallelLayout { tp, pp }).validate(&config) {
                let err = load_scorer(&source, &options(tp, pp)).err().expect("a refused layout").to_string();
                assert_eq!(err, refusal.to_string(), "{name}");
                continue;
            }
            let scorer = load_scorer(&source, &options(tp, pp)).unwrap();
            let got = score_all(&scorer, name);
            let (to_one, rel) = (max_diff(&got, &one), max_rel_diff(&got, &one));
            let to_ref = got.iter().zip(&want).map(|(g, w)| close::rel_diff(&widen(g), w)).fold(0.0, f64::max);
            eprintln!(
                "{name} tp={tp} pp={pp}: max |diff| to tp=1,pp=1 {to_one:.1e} (relative {rel:.1e}), to transformers {to_ref:.1e} (relative)"
            );
            assert!(rel < close::SAME_MATH, "{name} tp={tp} pp={pp}: {rel} (relative) from one rank");
            assert!(to_ref < close::TO_TRANSFORMERS, "{name} tp={tp} pp={pp}: {to_ref} (relative) from transformers");
            assert!(scorer.healthy());
            assert_eq!(scorer.describe(), format!("cpu, Float, tp={tp}, pp={pp}, threads"));
            allowed.push(format!("{name} {tp}x{pp}"));
        }
    }
    // Which layouts the shapes allow is part of what is tested: every fixture
    // runs pp=2, and tp=4 runs both with replicated kv heads (2 kv heads) and
    // with kv heads split one per rank (MHA).
    let count = |prefix: &str| allowed.iter().filter(|a| a.starts_with(prefix)).count();
    assert_eq!(count("tiny-nemotron-rm "), 6);
    assert_eq!(count("tiny-mha-4l-bias "), 6);
    assert_eq!(count("tiny-gqa-odd-bias-legacy "), 4);
    assert_eq!(count("tiny-mha-rot025 "), 2);
    assert_eq!(count("tiny-full-rotary-hd "), 2);
}

#[test]
fn jobs_broadcast_by_rank_zero_give_the_same_scores() {
    // How ranks in other processes get their batches (encoded, broadcast), here over threads.
    let name = "tiny-gqa-odd-bias-legacy";
    let source = ModelSource::Dir(fixture(name));
    let one = score_all(&Scorer::load(&source, DType::F32, Device::Cpu).unwrap(), name);
    let mut opts = options(2, 2);
    opts.delivery = Delivery::Broadcast;
    let scorer = load_scorer(&source, &opts).unwrap();
    let first = score_all(&scorer, name);
    let second = score_all(&scorer, name);
    assert!(max_rel_diff(&first, &one) < close::SAME_MATH);
    assert_eq!(first, second);
}

#[test]
fn refused_layouts_name_the_numbers() {
    let refuse = |name: &str, tp: usize, pp: usize| {
        load_scorer(&ModelSource::Dir(fixture(name)), &options(tp, pp)).err().expect("refused").to_string()
    };
    assert_eq!(
        refuse("tiny-mha-rot025", 2, 1),
        "layout tp=2 pp=1: 3 attention heads do not divide into 2 tensor-parallel ranks"
    );
    assert_eq!(
        refuse("tiny-gqa-odd-bias-legacy", 3, 1),
        "layout tp=3 pp=1: intermediate_size 200 does not divide into 3 tensor-parallel ranks"
    );
    assert_eq!(refuse("tiny-nemotron-rm", 1, 3), "layout tp=1 pp=3: 3 pipeline stages but the model has only 2 layers");
    // 6 heads and an FFN of 210 split over 3 ranks, but 2 kv heads cannot serve 3 ranks.
    let dir = copy_model("tiny-gqa-odd-bias-legacy");
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let config = config.replace("\"intermediate_size\": 200", "\"intermediate_size\": 210");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = load_scorer(&ModelSource::Dir(dir.path().into()), &options(3, 1)).err().unwrap().to_string();
    assert_eq!(err, "layout tp=3 pp=1: 2 kv heads cannot be replicated evenly over 3 tensor-parallel ranks");
}

#[test]
fn score_with_tp_and_pp_prints_what_one_rank_prints() {
    let input = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/conversations.jsonl")).unwrap();
    let one = run_cli(&["score", "--model", FIXTURE, "--dtype", "f32"], &input);
    assert!(one.status.success(), "{}", stderr(&one));
    for layout in [["--tp", "2", "--pp", "2"], ["--tp", "4", "--pp", "1"]] {
        let mut args = vec!["score", "--model", FIXTURE, "--dtype", "f32", "--batch-tokens", "200"];
        args.extend(layout);
        let group = run_cli(&args, &input);
        assert!(group.status.success(), "{}", stderr(&group));
        let (a, b) = (json_lines(&one), json_lines(&group));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["index"], y["index"]);
            for (tx, ty) in x["turns"].as_array().unwrap().iter().zip(y["turns"].as_array().unwrap()) {
                let (want, got) = (floats(&tx["raw"]), floats(&ty["raw"]));
                let rel = close::rel_diff(&got, &want);
                assert!(rel < close::SAME_MATH, "{layout:?}: {rel} (relative)");
            }
        }
    }
    let refused = run(&["score", "--model", FIXTURE, "--tp", "3"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("layout tp=3 pp=1: 4 attention heads do not divide into 3 tensor-parallel ranks"),
        "{}",
        stderr(&refused)
    );
}
