//! `reward-worker annotate`: SteerLM labelling of a JSONL file in the seed format.
//!
//! Every turn whose `label` is not null gets the rounded attribute string of its
//! per-prefix score (`helpfulness:3,correctness:3,...`), as NeMo-Aligner's
//! `attribute_annotate.py` writes. NeMo also scores a *User* turn with a label,
//! on a prefix that ends in a user turn, which the reward model never saw in
//! training; here such labels are set to null (`--user-labels keep` leaves them).
//!
//! The output has one line per input line, in input order, so a run is
//! resumable by counting: a re-run keeps the complete lines already written
//! (dropping a partial last line), skips that many input lines and appends. A
//! bad line (invalid JSON, not the seed format, too long, ...) is reported and
//! written through unchanged, never dropped, so the count stays aligned.
//! Records are re-serialised compactly, keys in input order.

use clap::{Args, ValueEnum};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::common::ModelArgs;
use super::progress;
use crate::chat::{parse_record, RecordError, Role};
use crate::engine::{PreparedRecord, RecordScores, Scorer};
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
    /// JSONL input in the seed format (`conversations` with `from`, `value`, `label`).
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL output; if it exists the run resumes after its complete lines.
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
    /// Start over: truncate the output instead of resuming.
    #[arg(long)]
    pub overwrite: bool,
    /// Lines read and scored together.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// One input line on its way out.
enum Line {
    /// Labelled (or nothing to label): the new JSON.
    Done(Value),
    /// Needs the model; `prepared` is scored with the rest of the chunk.
    Score { raw: Vec<u8>, record: Value, prepared: PreparedRecord },
    /// Written through unchanged.
    Bad { raw: Vec<u8>, error: RecordError },
}

pub fn run(args: AnnotateArgs) -> Result<i32, String> {
    let total = count_lines(&args.input)?;
    let done = if args.overwrite { 0 } else { keep_complete_lines(&args.output, total, &args.input)? };
    if done > 0 {
        tracing::info!(done, total, "resuming after the complete lines already in the output");
    }
    let mut output = BufWriter::new(
        OpenOptions::new()
            .create(true)
            .append(!args.overwrite)
            .write(true)
            .truncate(args.overwrite)
            .open(&args.output)
            .map_err(|e| format!("cannot open output {}: {e}", args.output.display()))?,
    );
    let mut input = BufReader::new(
        File::open(&args.input).map_err(|e| format!("cannot open input {}: {e}", args.input.display()))?,
    );
    for _ in 0..done {
        next_line(&mut input, &args.input)?;
    }
    if done == total {
        tracing::info!(total, "nothing left to annotate");
        return Ok(0);
    }
    let scorer = args.model.load()?;
    let bar = progress::bar(total, done, "lines", !args.no_progress);
    let opts = LabelOptions { all_attributes: args.all_attributes, round: !args.no_round };
    let mut bad = 0usize;
    let mut line_no = done;
    while line_no < total {
        let mut chunk = Vec::with_capacity(args.chunk.max(1));
        while chunk.len() < args.chunk.max(1) && line_no < total {
            let raw = next_line(&mut input, &args.input)?;
            line_no += 1;
            chunk.push((line_no, plan(raw, &scorer, &args)));
        }
        let n = chunk.len() as u64;
        for (line, result) in finish_chunk(chunk, &scorer, &args.model, opts) {
            let written = match result {
                Ok(value) => writeln!(output, "{value}"),
                Err((raw, e)) => {
                    bad += 1;
                    tracing::warn!(line, code = e.code, "written through unlabelled: {}", e.message);
                    output.write_all(&raw).and_then(|_| output.write_all(b"\n"))
                }
            };
            written.map_err(|e| format!("cannot write output: {e}"))?;
        }
        // Whole lines reach the file chunk by chunk, so a kill loses at most a partial line.
        output.flush().map_err(|e| format!("cannot write output: {e}"))?;
        bar.inc(n);
    }
    bar.finish_and_clear();
    tracing::info!(lines = total - done, bad, "annotated");
    Ok(if bad > 0 { 1 } else { 0 })
}

/// Parse a line, apply the User-label policy and prepare it for the model if
/// an assistant turn needs a label.
fn plan(raw: Vec<u8>, scorer: &Scorer, args: &AnnotateArgs) -> Line {
    let bad = |raw: Vec<u8>, error: RecordError| Line::Bad { raw, error };
    let mut record: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => return bad(raw, RecordError::new("invalid_json", e.to_string())),
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
            Role::User if args.user_labels == UserLabels::Null => item["label"] = Value::Null,
            Role::User => {}
        }
    }
    if !needs_score {
        return Line::Done(record);
    }
    match scorer.prepare(&record, args.model.options()) {
        Ok(prepared) => Line::Score { raw, record, prepared },
        Err(e) => bad(raw, e),
    }
}

type LineResult = Result<Value, (Vec<u8>, RecordError)>;

/// Score the chunk's prepared records together and fill in their labels.
fn finish_chunk(
    chunk: Vec<(u64, Line)>,
    scorer: &Scorer,
    model: &ModelArgs,
    opts: LabelOptions,
) -> Vec<(u64, LineResult)> {
    let ready: Vec<&PreparedRecord> = chunk
        .iter()
        .filter_map(|(_, l)| match l {
            Line::Score { prepared, .. } => Some(prepared),
            _ => None,
        })
        .collect();
    let mut scored = scorer.score(&ready, model.batch_tokens).into_iter();
    chunk
        .into_iter()
        .map(|(line, l)| {
            let result = match l {
                Line::Done(v) => Ok(v),
                Line::Bad { raw, error } => Err((raw, error)),
                Line::Score { raw, mut record, .. } => {
                    let scores = scored.next().expect("one result per prepared record: this is a bug");
                    scores.and_then(|s| fill_labels(&mut record, &s, opts)).map(|_| record).map_err(|e| (raw, e))
                }
            };
            (line, result)
        })
        .collect()
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

/// One line without its `\n`.
fn next_line(input: &mut impl BufRead, path: &Path) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    input.read_until(b'\n', &mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(buf)
}

/// Lines in a file, counting a last line without `\n`.
fn count_lines(path: &Path) -> Result<u64, String> {
    let (newlines, _, tail) = scan(path).map_err(|e| format!("cannot read input {}: {e}", path.display()))?;
    Ok(newlines + u64::from(tail))
}

/// Count the complete lines of an existing output and cut off a partial last
/// line (what a killed run leaves). A missing output counts as empty; one with
/// more lines than the input is refused before anything is cut.
fn keep_complete_lines(path: &Path, total: u64, input: &Path) -> Result<u64, String> {
    if !path.exists() {
        return Ok(0);
    }
    let err = |e: std::io::Error| format!("cannot resume from output {}: {e}", path.display());
    let (lines, end, tail) = scan(path).map_err(err)?;
    if lines > total {
        return Err(format!(
            "output {} has {lines} lines but input {} has only {total}: not an output of this input?",
            path.display(),
            input.display()
        ));
    }
    if tail {
        tracing::warn!(line = lines + 1, "dropping the partial last line of the output");
        OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(end)).map_err(err)?;
    }
    Ok(lines)
}

/// `(number of '\n', offset just after the last '\n', bytes after it?)`.
fn scan(path: &Path) -> std::io::Result<(u64, u64, bool)> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut end, mut offset) = (0u64, 0u64, 0u64);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            if b == b'\n' {
                lines += 1;
                end = offset + i as u64 + 1;
            }
        }
        offset += n as u64;
    }
    Ok((lines, end, offset > end))
}
