//! The worker group's cost on CPU: the same batch scored by one rank, by tp=2,
//! pp=2 and tp=2 x pp=2 (threads backend), on a random Nemotron-shaped model.
//! On a 2-core machine the group is not expected to be faster (the ranks share
//! the cores); the difference shows what the all-reduces, the pipeline
//! hand-offs and the rank threads cost.
//!
//!     cargo run --release --example group_bench [-- --threads 2 --repeat 5 --records 16]
//!
//! Prints one line per layout: median seconds of `Scorer::score` over the
//! repeats (model load and tokenisation excluded) and the ratio to tp=1.

#[path = "../tests/common/random_model.rs"]
mod random_model;

use random_model::{write_random_model, Shape};
use reward_worker::config::{CommBackend, ParallelLayout};
use reward_worker::engine::{ModelSource, PreparedRecord, ScoreOptions, Scorer};
use reward_worker::model::DType;
use reward_worker::parallel::{load_scorer, GroupOptions};
use std::path::Path;
use std::time::Instant;
use tch::Device;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    keep_freed_memory();
    let (threads, repeat, records) = (arg("--threads", 2), arg("--repeat", 5), arg("--records", 16));
    tch::set_num_threads(threads as i32);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/group-bench-model");
    let shape = Shape { layers: 8, hidden: 1024, heads: 16, kv_heads: 4, ffn: 4096 };
    if !dir.join("model.safetensors").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        write_random_model(&dir, shape, &root.join("tests/fixtures/tiny-nemotron-rm/tokenizer.json"));
    }
    let words = "the model scores every assistant turn of a conversation in one pass with probe tokens";
    let words: Vec<&str> = words.split(' ').collect();
    let texts: Vec<serde_json::Value> = (0..records)
        .map(|i| {
            let answer: Vec<&str> = (0..120 + 7 * i).map(|j| words[(i * 7 + j * 3) % words.len()]).collect();
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("question {i}: explain the reward model")},
                {"role": "assistant", "content": answer.join(" ")}]})
        })
        .collect();
    let source = ModelSource::Dir(dir);
    println!(
        "model: {} layers, hidden {}, ffn {}, {} heads / {} kv heads, {:.0} MB f32; {records} records; {threads} libtorch threads; median of {repeat}",
        shape.layers, shape.hidden, shape.ffn, shape.heads, shape.kv_heads, shape.bytes() as f64 / 1e6
    );
    let mut base = None;
    for (tp, pp) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
        let scorer = if tp * pp == 1 {
            Scorer::load(&source, DType::F32, Device::Cpu).unwrap()
        } else {
            let layout = ParallelLayout { tp, pp };
            load_scorer(&source, &GroupOptions::new(layout, CommBackend::Threads, DType::F32, Device::Cpu)).unwrap()
        };
        let prepared: Vec<PreparedRecord> =
            texts.iter().map(|t| scorer.prepare(t, ScoreOptions::default()).unwrap()).collect();
        let refs: Vec<&PreparedRecord> = prepared.iter().collect();
        let tokens: usize = prepared.iter().map(PreparedRecord::tokens).sum();
        let _ = scorer.score(&refs, 8192); // warm-up
        let mut times: Vec<f64> = (0..repeat)
            .map(|_| {
                let started = Instant::now();
                let results = scorer.score(&refs, 8192);
                assert!(results.iter().all(Result::is_ok));
                started.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let base = *base.get_or_insert(median);
        println!(
            "tp={tp} pp={pp}: {median:.3} s for {tokens} tokens ({:.0} tokens/s), {:.2}x the time of tp=1",
            tokens as f64 / median,
            median / base
        );
    }
}

/// As `reward-worker` does at start-up (src/main.rs): keep freed memory in the
/// process, so no layout pays page faults for its activations on every batch.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
