//! `reward-worker annotate`: SteerLM labelling of a JSONL file in the seed format.
//!
//! Every turn whose `label` is not null gets the rounded attribute string of its
//! per-prefix score (`helpfulness:3,correctness:3,...`), as NeMo-Aligner's
//! `attribute_annotate.py` writes. NeMo also scores a *User* turn with a label,
//! on a prefix that ends in a user turn, which the reward model never saw in
//! training; here such labels are set to null (`--user-labels keep` leaves them).
//!
//! The output has one line per input line, in input order, so a run is
//! resumable by position: a re-run keeps the complete lines already written
//! (after checking that they belong to this input, see [`super::annotate_output`]),
//! continues after them and appends, under an exclusive lock on the output. A
//! bad line (not UTF-8, invalid JSON, not the seed format, too long, ...) is
//! reported and written through unchanged, never dropped, so positions stay
//! aligned. Records are re-serialised compactly, keys in input order. The input
//! is read once (a pipe works), with the next chunk prepared on a reader thread
//! while the model scores the current one.

use clap::{Args, ValueEnum};
use serde_json::Value;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use super::annotate_output::{AnnotateOutput, LineWriter};
use super::common::{self, LineArgs, ModelArgs};
use super::overlap::{self, Next, Stop};
use super::progress;
use crate::chat::{parse_record, RecordError, Role};
use crate::engine::{PreparedRecord, Preparer, RecordScores, ScoreOptions, Scorer};
use crate::files::{self, check_distinct, FileError, FileRole, Line, LineReader, NumberedLine, OutputPlan};
use crate::reward::steerlm::{self, LabelOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UserLabels {
    /// Set a non-null User label to null (NeMo's SFT data has none there).
    Null,
    /// Leave User labels as they are.
    Keep,
}

#[derive(Args, Debug)]
pub struct AnnotateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub lines: LineArgs,
    /// JSONL input in the seed format (`conversations` with `from`, `value`, `label`); `-` for stdin.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL output; if it exists the run resumes after its complete lines. `-` for stdout (not resumable).
    #[arg(long)]
    pub output: PathBuf,
    /// Write all nine attributes instead of the five HelpSteer ones.
    #[arg(long)]
    pub all_attributes: bool,
    /// Write the clamped scores as floats instead of rounding them.
    #[arg(long)]
    pub no_round: bool,
    /// What to do with a non-null label on a User turn.
    #[arg(long, value_enum, default_value = "null")]
    pub user_labels: UserLabels,
    /// Start over: empty the output (once the model has loaded) instead of resuming.
    #[arg(long)]
    pub overwrite: bool,
    /// Lines read and scored together, 1..=65536.
    #[arg(long, default_value_t = 64, value_parser = common::chunk)]
    pub chunk: usize,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// A line's bytes, to be written through unchanged.
enum Raw {
    Bytes(Vec<u8>),
    /// An over-long line, in its spill file.
    Spilled(File),
}

/// One input line on its way out.
enum Planned {
    /// Labelled (or nothing to label): the new JSON.
    Done(Value),
    /// Needs the model; `prepared` is scored with the rest of the chunk.
    Score { raw: Vec<u8>, record: Value, prepared: PreparedRecord },
    /// Written through unchanged.
    Bad { raw: Raw, error: RecordError },
}

/// A chunk from the reader, and how far into the input it ends (bytes).
struct Chunk {
    lines: Vec<(usize, Planned)>,
    input_bytes: u64,
}

/// A chunk's output: each line as JSON text or raw bytes, how far into the input.
struct Written {
    lines: Vec<Result<String, Raw>>,
    input_bytes: u64,
}

pub fn run(args: AnnotateArgs) -> Result<i32, String> {
    let limit = args.lines.limit(&args.model, 1)?;
    let model_files = args.model.files();
    let mut inputs = vec![FileRole::new("input", &args.input)];
    inputs.extend(model_files.iter().map(|p| FileRole::new("model file", p)));
    check_distinct(&inputs, &[FileRole::new("output", &args.output)]).map_err(|e| e.to_string())?;
    let plan = OutputPlan::check("output", &args.output).map_err(|e| e.to_string())?;
    let input_name = files::display(&args.input, true);
    let input = files::open_input("input", &args.input).map_err(|e| e.to_string())?;
    let mut lines = LineReader::new(input, limit).keep_long_lines();
    let mut output = AnnotateOutput::open(&args.output, plan.is_stream()).map_err(|e| e.to_string())?;
    let kept = if args.overwrite { Default::default() } else { output.verify(&mut lines, &input_name)? };
    if kept.lines > 0 {
        tracing::info!(lines = kept.lines, "resuming after the complete lines already in the output");
    }
    let read_err = |e: std::io::Error| format!("cannot read input {input_name}: {e}");
    if lines.peek().map_err(read_err)?.is_none() {
        output.start(&kept, args.overwrite).and_then(LineWriter::finish).map_err(|e| e.to_string())?;
        tracing::info!(lines = kept.lines, "nothing left to annotate");
        return Ok(0);
    }
    let scorer = args.model.load()?;
    let writer = output.start(&kept, args.overwrite).map_err(|e| e.to_string())?;
    let total = files::regular_file_size(&args.input);
    let bar = progress::bytes_bar(total, kept.input_bytes, !args.no_progress);
    let opts = LabelOptions { all_attributes: args.all_attributes, round: !args.no_round };
    let (preparer, options, at) = (scorer.preparer(), args.model.options(), (input_name, kept.input_bytes));
    let read = read_chunks(lines, preparer, options, args.user_labels, args.chunk, at);
    let (mut bad, mut done) = (0usize, 0usize);
    let bar_w = bar.clone();
    let outcome = overlap::run(
        read,
        |next| match next {
            Next::Chunk(chunk) => {
                done += chunk.lines.len();
                Ok(Some(finish_chunk(chunk, &scorer, args.model.batch_tokens, opts, &mut bad)))
            }
            Next::End => Ok(None),
        },
        move |chunks| write_chunks(chunks, writer, bar_w),
    );
    bar.finish_and_clear();
    match outcome.finish() {
        Err(Stop::ClosedPipe) => tracing::debug!(lines = done, "the output was closed by its reader: stopping"),
        Err(Stop::Failed(e)) => return Err(e),
        Ok(writer) => writer.finish().map_err(|e| e.to_string())?,
    }
    tracing::info!(lines = done, bad, "annotated");
    Ok(if bad > 0 { 1 } else { 0 })
}

/// The reader thread: lines -> labelling plans, with the records that need
/// the model tokenised, a chunk at a time.
fn read_chunks(
    mut lines: LineReader,
    preparer: Arc<Preparer>,
    opts: ScoreOptions,
    user_labels: UserLabels,
    chunk: usize,
    (name, mut offset): (String, u64),
) -> impl FnOnce(&mut dyn FnMut(Chunk) -> bool) -> Result<(), String> + Send + 'static {
    move |send| {
        let mut batch = Chunk { lines: Vec::with_capacity(chunk), input_bytes: 0 };
        while let Some(line) = lines.next_line().map_err(|e| format!("cannot read input {name}: {e}"))? {
            offset += line.input_bytes();
            batch.lines.push((line.number, plan(line, &preparer, opts, user_labels, lines.limit())));
            if batch.lines.len() == chunk {
                batch.input_bytes = offset;
                let full = std::mem::replace(&mut batch, Chunk { lines: Vec::with_capacity(chunk), input_bytes: 0 });
                if !send(full) {
                    return Ok(());
                }
            }
        }
        if !batch.lines.is_empty() {
            batch.input_bytes = offset;
            send(batch);
        }
        Ok(())
    }
}

/// Parse a line, apply the User-label policy and prepare it for the model if
/// an assistant turn needs a label.
fn plan(line: NumberedLine, preparer: &Preparer, opts: ScoreOptions, user_labels: UserLabels, limit: usize) -> Planned {
    let parsed = line.json(limit);
    let raw = match line.line {
        Line::Text(bytes) => bytes,
        Line::TooLong { spill, .. } => {
            let error = parsed.expect_err("an over-long line is an error: this is a bug");
            let file = spill.expect("annotate's reader keeps long lines: this is a bug");
            return Planned::Bad { raw: Raw::Spilled(file), error };
        }
    };
    let bad = |raw: Vec<u8>, error: RecordError| Planned::Bad { raw: Raw::Bytes(raw), error };
    let mut record = match parsed {
        Ok(v) => v,
        Err(e) => return bad(raw, e),
    };
    if !matches!(record.get("conversations"), Some(Value::Array(_))) {
        let e = RecordError::new("invalid_record", "not the seed format: no `conversations` array");
        return bad(raw, e);
    }
    let conv = match parse_record(&record) {
        Ok(c) => c,
        Err(e) => return bad(raw, e),
    };
    let mut needs_score = false;
    for (turn, item) in conv.turns.iter().zip(record["conversations"].as_array_mut().into_iter().flatten()) {
        if item.get("label").is_none_or(Value::is_null) {
            continue;
        }
        match turn.role {
            Role::Assistant => needs_score = true,
            Role::User if user_labels == UserLabels::Null => item["label"] = Value::Null,
            Role::User => {}
        }
    }
    if !needs_score {
        return Planned::Done(record);
    }
    match preparer.prepare(&record, opts) {
        Ok(prepared) => Planned::Score { raw, record, prepared },
        Err(e) => bad(raw, e),
    }
}

/// Score the chunk's prepared records together and fill in their labels.
fn finish_chunk(chunk: Chunk, scorer: &Scorer, batch_tokens: usize, opts: LabelOptions, bad: &mut usize) -> Written {
    let ready: Vec<&PreparedRecord> = chunk
        .lines
        .iter()
        .filter_map(|(_, l)| match l {
            Planned::Score { prepared, .. } => Some(prepared),
            _ => None,
        })
        .collect();
    let mut scored = scorer.score(&ready, batch_tokens).into_iter();
    let lines = chunk
        .lines
        .into_iter()
        .map(|(line, planned)| {
            let result = match planned {
                Planned::Done(v) => Ok(v),
                Planned::Bad { raw, error } => Err((raw, error)),
                Planned::Score { raw, mut record, .. } => {
                    let scores = scored.next().expect("one result per prepared record: this is a bug");
                    scores
                        .and_then(|s| fill_labels(&mut record, &s, opts))
                        .map(|_| record)
                        .map_err(|e| (Raw::Bytes(raw), e))
                }
            };
            result.map(|v| v.to_string()).map_err(|(raw, e)| {
                *bad += 1;
                tracing::warn!(line, code = e.code, "written through unlabelled: {}", e.message);
                raw
            })
        })
        .collect();
    Written { lines, input_bytes: chunk.input_bytes }
}

/// The writer thread: whole lines, flushed chunk by chunk.
fn write_chunks(
    chunks: Receiver<Written>,
    mut out: LineWriter,
    bar: indicatif::ProgressBar,
) -> Result<LineWriter, FileError> {
    let mut lines = 0u64;
    for chunk in chunks {
        for line in chunk.lines {
            match line {
                Ok(text) => out.write_all(text.as_bytes())?,
                Err(Raw::Bytes(bytes)) => out.write_all(&bytes)?,
                Err(Raw::Spilled(mut file)) => out.copy_from(&mut file)?,
            }
            out.write_all(b"\n")?;
            lines += 1;
        }
        out.flush()?;
        bar.set_position(bar.position().max(chunk.input_bytes));
        bar.set_message(format!("{lines} lines"));
    }
    Ok(out)
}

fn fill_labels(record: &mut Value, scores: &RecordScores, opts: LabelOptions) -> Result<(), RecordError> {
    let turns = record["conversations"].as_array_mut().expect("checked in plan(): this is a bug");
    for t in &scores.turns {
        let item = &mut turns[t.turn];
        if item.get("label").is_none_or(Value::is_null) {
            continue;
        }
        let label =
            steerlm::label(&t.raw, opts).map_err(|e| RecordError::new(e.code(), format!("turn {}: {e}", t.turn)))?;
        item["label"] = Value::String(label);
    }
    Ok(())
}
