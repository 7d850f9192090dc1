//! `reward-worker bench`: time scoring of a workload, model load and tokenisation excluded.

use clap::Args;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use super::common::ModelArgs;
use crate::engine::PreparedRecord;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL workload (records as for `score`).
    #[arg(long)]
    pub input: PathBuf,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

pub fn run(args: BenchArgs) -> Result<i32, String> {
    let scorer = args.model.load()?;
    let file =
        std::fs::File::open(&args.input).map_err(|e| format!("cannot open input {}: {e}", args.input.display()))?;
    let mut prepared = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
        let record: Value = serde_json::from_str(&line).map_err(|e| format!("line {}: invalid JSON: {e}", i + 1))?;
        prepared.push(scorer.prepare(&record, args.model.options()).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    let records: Vec<&PreparedRecord> = prepared.iter().collect();
    let mut times = Vec::with_capacity(args.repeat);
    let mut stats = Default::default();
    for run in 0..args.warmup + args.repeat.max(1) {
        let started = Instant::now();
        let (results, run_stats) = scorer.score_with_stats(&records, args.model.batch_tokens);
        stats = run_stats;
        let elapsed = started.elapsed().as_secs_f64();
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(format!("scoring failed: {e}"));
        }
        if run >= args.warmup {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    let useful: usize = records.iter().map(|r| r.useful_tokens()).sum();
    let processed: usize = records.iter().map(|r| r.tokens()).sum();
    let turns: usize = records.iter().map(|r| r.sequences.iter().map(|s| s.probes.len()).sum::<usize>()).sum();
    let stats: crate::engine::ScoreStats = stats;
    let report = json!({
        "records": records.len(),
        "scored_turns": turns,
        "tokens_processed": processed,
        "tokens_computed": stats.tokens_computed,
        "batches": stats.batches,
        "forward_gflop": stats.flops / 1e9,
        "forward_gflop_per_s": stats.flops / 1e9 / seconds,
        "useful_tokens": useful,
        "seconds": seconds,
        "times": times,
        "useful_tokens_per_s": useful as f64 / seconds,
        "threads": tch::get_num_threads(),
        "dtype": args.model.dtype,
    });
    println!("{report}");
    Ok(0)
}
