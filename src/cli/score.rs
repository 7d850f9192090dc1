//! `reward-worker score`: JSONL in, one JSON line out per input line, same order.
//!
//! Rewards go through the shared [`RewardPipeline`]. Output is streamed chunk by
//! chunk, except with `batch` or `group` normalisation, whose transform depends
//! on the other records: then the whole input is one batch (only the nine raw
//! scores per turn are held until the end).

use clap::Args;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use super::common::ModelArgs;
use super::reward_args::RewardArgs;
use crate::chat::RecordError;
use crate::engine::{PreparedRecord, Scorer};
use crate::output::{record_group, render_rows, Scored};
use crate::reward::{RewardOverride, RewardPipeline};

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub reward: RewardArgs,
    /// JSONL input, `-` for stdin.
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// JSONL output, `-` for stdout.
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
    /// Records read and scored together (their sequences are then batched by --batch-tokens).
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
}

type Row = (usize, Result<Scored, RecordError>);
type Prepared = (usize, Result<(PreparedRecord, Option<String>), RecordError>);

pub fn run(args: ScoreArgs) -> Result<i32, String> {
    let mut pipeline = args.reward.build()?;
    let whole_input = pipeline.needs_whole_batch();
    let input = open_input(&args.input)?;
    let mut output = open_output(&args.output)?;
    let scorer = args.model.load()?;

    let started = std::time::Instant::now();
    let (mut lines, mut failed, mut tokens) = (0usize, 0usize, 0usize);
    let mut held: Vec<Row> = Vec::new();
    let mut chunk: Vec<(usize, Result<Value, RecordError>)> = Vec::with_capacity(args.chunk.max(1));
    let mut write = |rows: Vec<Row>, pipeline: &mut RewardPipeline| -> Result<(), String> {
        let lines = render_rows(rows, pipeline, &RewardOverride::default()).map_err(|e| e.to_string())?;
        for (index, line) in lines {
            match line {
                Ok((value, n)) => {
                    tokens += n;
                    writeln!(output, "{value}")
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(index, code = e.code, "{}", e.message);
                    writeln!(output, "{}", json!({"index": index, "error": e}))
                }
            }
            .map_err(|e| format!("cannot write output: {e}"))?;
        }
        Ok(())
    };
    for (index, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {} at line {}: {e}", args.input.display(), index + 1))?;
        lines += 1;
        chunk.push((index, parse_line(index, &line)));
        if chunk.len() >= args.chunk.max(1) {
            let rows = score_chunk(&scorer, &chunk, &args, &pipeline);
            chunk.clear();
            if whole_input {
                held.extend(rows);
            } else {
                write(rows, &mut pipeline)?;
            }
        }
    }
    held.extend(score_chunk(&scorer, &chunk, &args, &pipeline));
    write(held, &mut pipeline)?;
    output.flush().map_err(|e| format!("cannot write output: {e}"))?;
    if lines == 0 {
        return Err(format!("input {} is empty: no records to score", args.input.display()));
    }
    args.reward.save_running_state(&mut pipeline)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(records = lines, failed, tokens, seconds, tokens_per_s = tokens as f64 / seconds, "scored");
    Ok(if failed > 0 { 1 } else { 0 })
}

fn parse_line(index: usize, line: &str) -> Result<Value, RecordError> {
    if line.trim().is_empty() {
        return Err(RecordError::new("empty_line", format!("line {} is empty", index + 1)));
    }
    serde_json::from_str(line).map_err(|e| RecordError::new("invalid_json", format!("line {}: {e}", index + 1)))
}

fn score_chunk(
    scorer: &Scorer,
    chunk: &[(usize, Result<Value, RecordError>)],
    args: &ScoreArgs,
    pipeline: &RewardPipeline,
) -> Vec<Row> {
    let opts = args.model.options();
    let prepared: Vec<Prepared> = chunk
        .iter()
        .map(|(i, v)| {
            let prepared = v.as_ref().map_err(Clone::clone).and_then(|v| {
                let group = record_group(v, pipeline)?;
                Ok((scorer.prepare(v, opts)?, group))
            });
            (*i, prepared)
        })
        .collect();
    let ready: Vec<&PreparedRecord> = prepared.iter().filter_map(|(_, p)| p.as_ref().ok().map(|(r, _)| r)).collect();
    let mut scored = scorer.score(&ready, args.model.batch_tokens).into_iter();
    prepared
        .into_iter()
        .map(|(i, p)| {
            let row = p.and_then(|(_, group)| {
                let scores = scored.next().expect("one result per prepared record: this is a bug")?;
                Ok(Scored { scores, group })
            });
            (i, row)
        })
        .collect()
}

fn open_input(path: &PathBuf) -> Result<Box<dyn BufRead>, String> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open input {}: {e}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

fn open_output(path: &PathBuf) -> Result<Box<dyn Write>, String> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufWriter::new(std::io::stdout())));
    }
    let file = std::fs::File::create(path).map_err(|e| format!("cannot create output {}: {e}", path.display()))?;
    Ok(Box::new(BufWriter::new(file)))
}
