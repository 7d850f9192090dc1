//! `reward-worker score`: JSONL in, one JSON line out per input line, same order.
//!
//! Rewards go through the shared [`RewardPipeline`]. Output is streamed chunk by
//! chunk, except with `batch` or `group` normalisation, whose transform depends
//! on the other records: then the whole input is one batch (only the nine raw
//! scores per turn are held until the end).

use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use super::common::{self, LineArgs, ModelArgs};
use super::overlap::{self, Next, Stop};
use super::reward_args::RewardArgs;
use crate::chat::RecordError;
use crate::engine::{PreparedRecord, Preparer, ScoreOptions, Scorer};
use crate::files::{self, check_distinct, FileRole, LineReader, OutputPlan, SafeOutput};
use crate::output::{needs_group, record_group, render_rows, Scored};
use crate::reward::{RewardOverride, RewardPipeline};

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub reward: RewardArgs,
    #[command(flatten)]
    pub lines: LineArgs,
    /// JSONL input, `-` for stdin.
    #[arg(long, default_value = "-")]
    pub input: PathBuf,
    /// JSONL output, `-` for stdout.
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
    /// Records read and scored together, 1..=65536 (their sequences are then batched by --batch-tokens).
    #[arg(long, default_value_t = 256, value_parser = common::chunk)]
    pub chunk: usize,
}

type Row = (usize, Result<Scored, RecordError>);
/// A chunk on its way from the reader to the model: each line's prepared
/// record and group, or its error, by 0-based line index.
type Prepared = Vec<(usize, Result<(PreparedRecord, Option<String>), RecordError>)>;

#[derive(Debug, Default)]
struct Counts {
    records: usize,
    failed: usize,
    tokens: usize,
}

pub fn run(args: ScoreArgs) -> Result<i32, String> {
    // Everything is validated (options, inputs, the model) before the output is opened.
    let mut pipeline = args.reward.build()?;
    let whole_input = pipeline.needs_whole_batch();
    let needs_group = needs_group(&pipeline);
    let limit = args.lines.limit(&args.model, 1)?;
    check_files(&args)?;
    let plan = OutputPlan::check("output", &args.output).map_err(|e| e.to_string())?;
    let input = files::open_input("input", &args.input).map_err(|e| e.to_string())?;
    let scorer = args.model.load()?;
    let output = plan.open().map_err(|e| e.to_string())?;

    let started = std::time::Instant::now();
    let read = read_chunks(
        LineReader::new(input, limit),
        scorer.preparer(),
        args.model.options(),
        needs_group,
        args.chunk,
        files::display(&args.input, true),
    );
    let mut counts = Counts::default();
    let mut held: Vec<Row> = Vec::new();
    let batch_tokens = args.model.batch_tokens;
    let outcome = overlap::run(
        read,
        |next| match next {
            Next::Chunk(chunk) => {
                let rows = score_chunk(&scorer, chunk, batch_tokens);
                counts.records += rows.len();
                if whole_input {
                    held.extend(rows);
                    return Ok(None);
                }
                render(rows, &mut pipeline, &mut counts).map(Some)
            }
            Next::End if whole_input => render(std::mem::take(&mut held), &mut pipeline, &mut counts).map(Some),
            Next::End => Ok(None),
        },
        move |chunks| write_chunks(chunks, output),
    );
    let status = if counts.failed > 0 { 1 } else { 0 };
    let (waited, read_busy) = (outcome.waited.as_secs_f64(), outcome.read_busy.unwrap_or_default().as_secs_f64());
    match outcome.finish() {
        Err(Stop::ClosedPipe) => {
            tracing::debug!(records = counts.records, "the output was closed by its reader: stopping");
            return Ok(status);
        }
        Err(Stop::Failed(e)) => return Err(e),
        Ok(_) if counts.records == 0 => {
            return Err(format!("input {} is empty: no records to score", files::display(&args.input, true)))
        }
        Ok(output) => output.commit().map_err(|e| e.to_string())?,
    }
    args.reward.save_running_state(&mut pipeline)?;
    let seconds = started.elapsed().as_secs_f64();
    let Counts { records, failed, tokens } = counts;
    let tokens_per_s = tokens as f64 / seconds;
    // Overlap: `reader_busy_s` of reading and tokenising ran beside the model,
    // which waited `model_waited_s` for it.
    tracing::info!(
        records,
        failed,
        tokens,
        seconds,
        tokens_per_s,
        reader_busy_s = read_busy,
        model_waited_s = waited,
        "scored"
    );
    Ok(status)
}

/// No output may be an input (or another output).
fn check_files(args: &ScoreArgs) -> Result<(), String> {
    let model_files = args.model.files();
    let mut inputs = vec![FileRole::new("input", &args.input)];
    let r = &args.reward;
    for (what, path) in
        [("reward config", &r.reward_config), ("calibration", &r.calibration), ("presets", &r.weights.presets)]
    {
        inputs.extend(path.as_deref().map(|p| FileRole::new(what, p)));
    }
    inputs.extend(model_files.iter().map(|p| FileRole::new("model file", p)));
    let mut outputs = vec![FileRole::new("output", &args.output)];
    outputs.extend(r.running_state.as_deref().map(|p| FileRole::new("running state", p)));
    check_distinct(&inputs, &outputs).map_err(|e| e.to_string())
}

/// The reader thread: lines -> records -> token sequences, a chunk at a time.
fn read_chunks(
    mut lines: LineReader,
    preparer: Arc<Preparer>,
    opts: ScoreOptions,
    needs_group: bool,
    chunk: usize,
    name: String,
) -> impl FnOnce(&mut dyn FnMut(Prepared) -> bool) -> Result<(), String> + Send + 'static {
    move |send| {
        let limit = lines.limit();
        let mut batch = Vec::with_capacity(chunk);
        while let Some(line) = lines.next_line().map_err(|e| format!("cannot read input {name}: {e}"))? {
            let prepared =
                line.json(limit).and_then(|v| Ok((preparer.prepare(&v, opts)?, record_group(&v, needs_group)?)));
            batch.push((line.number - 1, prepared));
            if batch.len() == chunk && !send(std::mem::take(&mut batch)) {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            send(batch);
        }
        Ok(())
    }
}

/// The writer thread: output lines as they come, flushed chunk by chunk.
fn write_chunks(chunks: Receiver<Vec<u8>>, mut output: SafeOutput) -> Result<SafeOutput, files::FileError> {
    for bytes in chunks {
        output.write_all(&bytes)?;
        output.flush()?;
    }
    Ok(output)
}

fn score_chunk(scorer: &Scorer, chunk: Prepared, batch_tokens: usize) -> Vec<Row> {
    let ready: Vec<&PreparedRecord> = chunk.iter().filter_map(|(_, p)| p.as_ref().ok().map(|(r, _)| r)).collect();
    let mut scored = scorer.score(&ready, batch_tokens).into_iter();
    chunk
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

/// Output lines for scored rows.
fn render(rows: Vec<Row>, pipeline: &mut RewardPipeline, counts: &mut Counts) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (index, line) in render_rows(rows, pipeline, &RewardOverride::default()).map_err(|e| e.to_string())? {
        let value = match line {
            Ok((value, n)) => {
                counts.tokens += n;
                value
            }
            Err(e) => {
                counts.failed += 1;
                tracing::warn!(index, code = e.code, "{}", e.message);
                json!({"index": index, "error": e})
            }
        };
        serde_json::to_writer(&mut out, &value).expect("JSON values serialise: this is a bug");
        out.push(b'\n');
    }
    Ok(out)
}
