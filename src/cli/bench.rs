//! `reward-worker bench`: time scoring of a workload, model load and tokenisation excluded.

use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

use super::common::{self, ModelArgs};
use crate::engine::PreparedRecord;
use crate::files::{self, lines::record_line_limit, output, LineReader};
use crate::model::parse_device;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL workload (records as for `score`).
    #[arg(long)]
    pub input: PathBuf,
    /// Untimed runs before timing, 0..=1000.
    #[arg(long, default_value_t = 1, value_parser = |s: &str| common::in_range(s, 0, 1000).map(|n| n as usize))]
    pub warmup: usize,
    /// Timed runs, 1..=1000; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = |s: &str| common::in_range(s, 1, 1000).map(|n| n as usize))]
    pub repeat: usize,
}

pub fn run(args: BenchArgs) -> Result<i32, String> {
    let input = files::open_input("input", &args.input).map_err(|e| e.to_string())?;
    let scorer = args.model.load()?;
    // A workload is read whole (it is timed in memory), as bytes per line with the model's limit.
    let limit = record_line_limit(scorer.context(), args.model.truncate, 1);
    let mut lines = LineReader::new(input, limit);
    let mut prepared = Vec::new();
    while let Some(line) = lines.next_line().map_err(|e| format!("cannot read {}: {e}", args.input.display()))? {
        let record = line.json(limit).map_err(|e| e.to_string())?;
        prepared.push(scorer.prepare(&record, args.model.options()).map_err(|e| format!("line {}: {e}", line.number))?);
    }
    let records: Vec<&PreparedRecord> = prepared.iter().collect();
    let mut times = Vec::with_capacity(args.repeat);
    let mut stats = Default::default();
    let cache_bytes = scorer.prefix_cache_stats().bound_bytes;
    for run in 0..args.warmup + args.repeat.max(1) {
        // Every run starts from an empty prefix cache: it measures what the
        // cache saves within the workload, not a second pass over it.
        scorer.set_prefix_cache_bytes(cache_bytes);
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
        "tokens_cached": stats.tokens_cached,
        "prefix_cache_hit_rate": hit_rate(&stats),
        "prefix_cache_bytes": cache_bytes,
        "batches": stats.batches,
        "forward_gflop": stats.flops / 1e9,
        "forward_gflop_per_s": stats.flops / 1e9 / seconds,
        "useful_tokens": useful,
        "seconds": seconds,
        "times": times,
        "useful_tokens_per_s": useful as f64 / seconds,
        "threads": tch::get_num_threads(),
        "dtype": args.model.dtype.resolve(parse_device(&args.model.device).map_err(|e| e.to_string())?).0.name(),
    });
    // Not println!, which panics when stdout is a closed pipe.
    output::write_file("report", std::path::Path::new("-"), format!("{report}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(0)
}

/// Tokens read from the prefix cache over all tokens the forward passes used.
fn hit_rate(stats: &crate::engine::ScoreStats) -> f64 {
    let used = stats.tokens_cached + stats.tokens_computed;
    if used == 0 {
        0.0
    } else {
        stats.tokens_cached as f64 / used as f64
    }
}
