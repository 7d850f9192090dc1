//! `reward-worker score`: JSONL in, one JSON line out per input line, same order.

use clap::Args;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use super::common::ModelArgs;
use crate::chat::RecordError;
use crate::engine::{PreparedRecord, RecordScores, Scorer};
use crate::reward::{AttributeWeights, ATTRIBUTES, HELPSTEER_ATTRIBUTES};

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL input, `-` for stdin.
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// JSONL output, `-` for stdout.
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
    /// Attribute weights w1,..,w9 for the scalar reward.
    #[arg(long, conflicts_with = "preset")]
    pub weights: Option<String>,
    /// A named weight preset.
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Records read and scored together (their sequences are then batched by --batch-tokens).
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
}

pub fn run(args: ScoreArgs) -> Result<i32, String> {
    let weights = match &args.weights {
        Some(csv) => AttributeWeights::parse(csv),
        None => AttributeWeights::preset(&args.preset),
    }
    .map_err(|e| e.to_string())?;
    let input = open_input(&args.input)?;
    let mut output = open_output(&args.output)?;
    let scorer = args.model.load()?;

    let started = std::time::Instant::now();
    let (mut lines, mut failed, mut tokens) = (0usize, 0usize, 0usize);
    let mut chunk: Vec<(usize, Result<Value, RecordError>)> = Vec::with_capacity(args.chunk.max(1));
    let mut flush = |chunk: &mut Vec<(usize, Result<Value, RecordError>)>| -> Result<(), String> {
        for (index, result) in score_chunk(&scorer, chunk, &args) {
            let line = match result {
                Ok(scores) => {
                    tokens += scores.tokens;
                    record_json(index, &scores, &weights)
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(index, code = e.code, "{}", e.message);
                    json!({"index": index, "error": e})
                }
            };
            writeln!(output, "{line}").map_err(|e| format!("cannot write output: {e}"))?;
        }
        chunk.clear();
        Ok(())
    };
    for (index, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {} at line {}: {e}", args.input.display(), index + 1))?;
        lines += 1;
        chunk.push((index, parse_line(index, &line)));
        if chunk.len() >= args.chunk.max(1) {
            flush(&mut chunk)?;
        }
    }
    flush(&mut chunk)?;
    output.flush().map_err(|e| format!("cannot write output: {e}"))?;
    if lines == 0 {
        return Err(format!("input {} is empty: no records to score", args.input.display()));
    }
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
) -> Vec<(usize, Result<RecordScores, RecordError>)> {
    let opts = args.model.options();
    let prepared: Vec<(usize, Result<PreparedRecord, RecordError>)> = chunk
        .iter()
        .map(|(i, v)| (*i, v.as_ref().map_err(Clone::clone).and_then(|v| scorer.prepare(v, opts))))
        .collect();
    let ready: Vec<&PreparedRecord> = prepared.iter().filter_map(|(_, p)| p.as_ref().ok()).collect();
    let mut scored = scorer.score(&ready, args.model.batch_tokens).into_iter();
    prepared
        .into_iter()
        .map(|(i, p)| (i, p.and_then(|_| scored.next().expect("one result per prepared record: this is a bug"))))
        .collect()
}

/// `{"index", "turns": [{"turn", "raw", "attributes", "reward"}], "tokens"}`
pub fn record_json(index: usize, scores: &RecordScores, weights: &AttributeWeights) -> Value {
    let turns: Vec<Value> = scores
        .turns
        .iter()
        .map(|t| {
            let attributes: serde_json::Map<String, Value> =
                HELPSTEER_ATTRIBUTES.map(|i| (ATTRIBUTES[i].to_string(), json!(t.raw[i]))).collect();
            json!({"turn": t.turn, "raw": t.raw, "attributes": attributes, "reward": weights.reward(&t.raw)})
        })
        .collect();
    let mut out = json!({"index": index, "turns": turns, "tokens": scores.tokens});
    if scores.truncated() {
        out["truncated"] = json!(true);
    }
    out
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
