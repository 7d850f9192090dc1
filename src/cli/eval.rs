//! `reward-worker eval`: preference pairs -> accuracy per subset and per
//! RewardBench section, for any weights. Raw attributes are cached (`--cache`),
//! so a second run with other weights does not load the model at all. The
//! cache is keyed by everything that changes the scores (see
//! [`crate::preference::cache`]); the subset of a pair always comes from the
//! pairs file. Pairs missing from the cache are prepared on a reader thread
//! while the model scores the previous chunk, and appended to the cache as
//! they are scored.

use clap::Args;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use super::common::{self, LineArgs, ModelArgs};
use super::overlap::{self, Next, Stop};
use super::progress;
use super::reward_args::WeightArgs;
use crate::engine::{PreparedRecord, Preparer, ScoreOptions, Scorer};
use crate::files::{self, check_distinct, fingerprint, output, FileError, FileRole, Line, LineReader, OutputPlan};
use crate::model::parse_device;
use crate::preference::pairs::{parse_pair_bytes, scoring_identity};
use crate::preference::sections::{self, Weighting};
use crate::preference::{cache, CacheEntry, Pair, PreferenceError};
use crate::reward::AttributeWeights;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub weights: WeightArgs,
    #[command(flatten)]
    pub lines: LineArgs,
    /// Preference pairs JSONL: {"prompt", "chosen", "rejected", "subset"}; `-` for stdin.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Attribute cache JSONL: reused, extended while scoring, replaced at the end.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// JSON report, `-` for stdout.
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
    /// Also write the accuracies as a markdown table.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// How subsets are weighted within a RewardBench section.
    #[arg(long, value_enum, default_value = "counts")]
    pub section_weighting: Weighting,
    /// Pairs scored together, 1..=65536.
    #[arg(long, default_value_t = 64, value_parser = common::chunk)]
    pub chunk: usize,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// A chunk of missing pairs with both sides prepared (or the pair's error).
type Prepared = Vec<(Pair, Result<(PreparedRecord, PreparedRecord), PreferenceError>)>;

pub fn run(args: EvalArgs) -> Result<i32, String> {
    let (weights, weights_name) = args.weights.resolve()?;
    let source = args.model.source();
    let model_name = source.name();
    // A pair line holds up to three conversations' text (prompt, chosen, rejected).
    let limit = args.lines.limit(&args.model, 3)?;
    check_files(&args)?;
    let report_plan = OutputPlan::check("report", &args.output).map_err(|e| e.to_string())?;
    let markdown_plan = args.markdown.as_deref().map(|p| OutputPlan::check("markdown", p)).transpose();
    let markdown_plan = markdown_plan.map_err(|e| e.to_string())?;
    if let Some(path) = &args.cache {
        OutputPlan::check("cache", path).map_err(|e| e.to_string())?;
    }
    let model_id = fingerprint::model_fingerprint(&source).map_err(|e| e.to_string())?;
    // The dtype the scores are made in (`auto` resolved for this machine).
    let device = parse_device(&args.model.device).map_err(|e| e.to_string())?;
    let scoring = scoring_identity(&model_id, args.model.dtype.resolve(device).0, args.model.options());
    let (pairs, mut errors) = read_pairs(&args, limit, &scoring)?;

    let mut found: HashMap<String, [[f32; 9]; 2]> = HashMap::new();
    if let Some(path) = &args.cache {
        let read = cache::read(path).map_err(|e| e.to_string())?;
        for e in read.errors {
            tracing::warn!("cache {}: {e} (the pair is scored again)", path.display());
        }
        found.extend(read.entries.into_iter().map(|(_, e)| (e.key, [e.chosen, e.rejected])));
    }
    let missing: Vec<Pair> = pairs.iter().filter(|p| !found.contains_key(&p.key)).cloned().collect();
    let (hits, mut scored) = (pairs.len() - missing.len(), 0);
    if !missing.is_empty() {
        let scorer = args.model.load()?;
        let (new, failed) = score_missing(&args, &scorer, missing, &model_name)?;
        scored = new.len();
        found.extend(new);
        errors.extend(failed);
    }
    let evaluated: Vec<CacheEntry> = pairs
        .iter()
        .filter_map(|p| {
            let [chosen, rejected] = *found.get(&p.key)?;
            Some(CacheEntry {
                index: p.line - 1,
                key: p.key.clone(),
                model: model_name.clone(),
                subset: p.subset.clone(),
                chosen,
                rejected,
                id: p.id.clone(),
            })
        })
        .collect();
    if let Some(path) = &args.cache {
        cache::rewrite(path, &evaluated).map_err(|e| e.to_string())?;
    }
    let (outcomes, overflowed) = outcomes(&evaluated, &weights);
    errors.extend(overflowed);
    errors.sort_by_key(|e| match e {
        PreferenceError::Line { line, .. } => *line,
        PreferenceError::Data(_) => 0,
    });
    for e in &errors {
        tracing::warn!("{}: {e}", files::display(&args.pairs, true));
    }
    let report = sections::report(outcomes, args.section_weighting);
    let mut out = serde_json::to_value(&report).expect("a report serialises: this is a bug");
    let extra = json!({
        "model": model_name,
        "weights": {"name": weights_name, "values": weights.0},
        "failed": errors.len(),
        "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
        "cache": {"hits": hits, "scored": scored},
    });
    merge(&mut out, extra);
    let text = serde_json::to_string_pretty(&out).expect("JSON") + "\n";
    write_plan(report_plan, text.as_bytes())?;
    if let Some(plan) = markdown_plan {
        let title = format!("{model_name}, weights `{weights_name}`");
        write_plan(plan, report.to_markdown(&title).as_bytes())?;
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}

/// No output (the cache, the report, the table) may be an input or another output.
fn check_files(args: &EvalArgs) -> Result<(), String> {
    let model_files = args.model.files();
    let mut inputs = vec![FileRole::new("pairs", &args.pairs)];
    inputs.extend(args.weights.presets.as_deref().map(|p| FileRole::new("presets", p)));
    inputs.extend(model_files.iter().map(|p| FileRole::new("model file", p)));
    let mut outputs = Vec::new();
    outputs.extend(args.cache.as_deref().map(|p| FileRole::new("cache", p)));
    outputs.push(FileRole::new("report", &args.output));
    outputs.extend(args.markdown.as_deref().map(|p| FileRole::new("markdown", p)));
    check_distinct(&inputs, &outputs).map_err(|e| e.to_string())
}

/// Pairs as bytes per line: a bad line is that pair's error, never the run's.
fn read_pairs(args: &EvalArgs, limit: usize, scoring: &str) -> Result<(Vec<Pair>, Vec<PreferenceError>), String> {
    let name = files::display(&args.pairs, true);
    let input = files::open_input("pairs", &args.pairs).map_err(|e| e.to_string())?;
    let mut lines = LineReader::new(input, limit);
    let (mut pairs, mut errors) = (Vec::new(), Vec::new());
    while let Some(line) = lines.next_line().map_err(|e| format!("cannot read pairs {name}: {e}"))? {
        let n = line.number;
        let parsed = match &line.line {
            Line::Text(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Text(bytes) => parse_pair_bytes(n, bytes, scoring),
            Line::TooLong { bytes, .. } => Err(PreferenceError::line(
                n,
                format!(
                    "context_length_exceeded: {bytes} bytes, more than the {limit} that three conversations fit in \
                     the model's context; not tokenised (--max-line-bytes raises the limit)"
                ),
            )),
        };
        match parsed {
            Ok(pair) => pairs.push(pair),
            Err(e) => errors.push(e),
        }
    }
    if pairs.is_empty() && errors.is_empty() {
        return Err(format!("{name} has no pairs"));
    }
    Ok((pairs, errors))
}

type Scores = Vec<(String, [[f32; 9]; 2])>;

/// Score the pairs the cache does not have, appending them to the cache chunk by chunk.
fn score_missing(
    args: &EvalArgs,
    scorer: &Scorer,
    missing: Vec<Pair>,
    model_name: &str,
) -> Result<(Scores, Vec<PreferenceError>), String> {
    let bar = progress::bar(missing.len() as u64, 0, "pairs", !args.no_progress);
    let appender = match &args.cache {
        Some(path) => Some(cache::Appender::open(path).map_err(|e| e.to_string())?),
        None => None,
    };
    let read = read_chunks(missing, scorer.preparer(), args.model.options(), args.chunk);
    let (mut scores, mut errors) = (Vec::new(), Vec::new());
    let bar_w = bar.clone();
    let outcome = overlap::run(
        read,
        |next| match next {
            Next::Chunk(chunk) => {
                let (entries, failed) = score_chunk(scorer, chunk, args.model.batch_tokens, model_name);
                scores.extend(entries.iter().map(|e| (e.key.clone(), [e.chosen, e.rejected])));
                errors.extend(failed);
                Ok(Some(entries))
            }
            Next::End => Ok(None),
        },
        move |chunks| append_chunks(chunks, appender, bar_w),
    );
    bar.finish_and_clear();
    match outcome.finish() {
        Ok(()) => Ok((scores, errors)),
        Err(Stop::ClosedPipe) => Err("the cache was closed while scoring".into()),
        Err(Stop::Failed(e)) => Err(e),
    }
}

fn read_chunks(
    missing: Vec<Pair>,
    preparer: Arc<Preparer>,
    opts: ScoreOptions,
    chunk: usize,
) -> impl FnOnce(&mut dyn FnMut(Prepared) -> bool) -> Result<(), String> + Send + 'static {
    move |send| {
        let mut pairs = missing.into_iter().peekable();
        while pairs.peek().is_some() {
            let batch: Prepared = pairs
                .by_ref()
                .take(chunk)
                .map(|pair| {
                    let prep = |record: &Value, side: &str| {
                        preparer
                            .prepare(record, opts)
                            .map_err(|e| PreferenceError::line(pair.line, format!("`{side}`: {e}")))
                    };
                    let sides = prep(&pair.chosen, "chosen").and_then(|c| Ok((c, prep(&pair.rejected, "rejected")?)));
                    (pair, sides)
                })
                .collect();
            if !send(batch) {
                break;
            }
        }
        Ok(())
    }
}

fn append_chunks(
    chunks: Receiver<Vec<CacheEntry>>,
    mut appender: Option<cache::Appender>,
    bar: indicatif::ProgressBar,
) -> Result<(), FileError> {
    for entries in chunks {
        if let Some(a) = &mut appender {
            a.append(&entries)?;
        }
        bar.inc(entries.len() as u64);
    }
    Ok(())
}

/// Score both sides of each pair; the score of a side is its last assistant turn.
fn score_chunk(
    scorer: &Scorer,
    chunk: Prepared,
    batch_tokens: usize,
    model_name: &str,
) -> (Vec<CacheEntry>, Vec<PreferenceError>) {
    let mut errors = Vec::new();
    let mut ready = Vec::new();
    for (pair, sides) in chunk {
        match sides {
            Ok((c, r)) => ready.push((pair, c, r)),
            Err(e) => errors.push(e),
        }
    }
    let records: Vec<&PreparedRecord> = ready.iter().flat_map(|(_, c, r)| [c, r]).collect();
    let mut scores = scorer.score(&records, batch_tokens).into_iter();
    let mut entries = Vec::new();
    for (pair, _, _) in &ready {
        let mut side = |name: &str| {
            let s = scores.next().expect("one result per record: this is a bug");
            s.map_err(|e| PreferenceError::line(pair.line, format!("`{name}`: {e}"))).and_then(|s| {
                s.turns
                    .last()
                    .map(|t| t.raw)
                    .ok_or_else(|| PreferenceError::line(pair.line, format!("`{name}` has no scored turn")))
            })
        };
        match (side("chosen"), side("rejected")) {
            (Ok(chosen), Ok(rejected)) => entries.push(CacheEntry {
                index: pair.line - 1,
                key: pair.key.clone(),
                model: model_name.to_string(),
                subset: pair.subset.clone(),
                chosen,
                rejected,
                id: pair.id.clone(),
            }),
            (Err(e), _) | (_, Err(e)) => errors.push(e),
        }
    }
    (entries, errors)
}

/// Whether the chosen side wins, per pair; a reward that is not finite (weights
/// so large that the sum overflows) is that pair's `non_finite_score` error.
fn outcomes<'a>(entries: &'a [CacheEntry], weights: &AttributeWeights) -> (Vec<(&'a str, bool)>, Vec<PreferenceError>) {
    let (mut won, mut errors) = (Vec::new(), Vec::new());
    for e in entries {
        let (c, r) = (weights.reward(&e.chosen), weights.reward(&e.rejected));
        if c.is_finite() && r.is_finite() {
            won.push((e.subset.as_str(), c > r));
        } else {
            let message = format!("non_finite_score: the rewards are {c} (chosen) and {r} (rejected)");
            errors.push(PreferenceError::line(e.index + 1, message));
        }
    }
    (won, errors)
}

fn error_json(e: &PreferenceError) -> Value {
    match e {
        PreferenceError::Line { line, message } => json!({"line": line, "message": message}),
        PreferenceError::Data(message) => json!({"message": message}),
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Value::Object(t), Value::Object(e)) = (target, extra) {
        t.extend(e);
    }
}

fn write_plan(plan: OutputPlan, bytes: &[u8]) -> Result<(), String> {
    plan.write_all(bytes).map_err(|e| e.to_string())
}

/// Write a small output (`-` = stdout) safely: temporary file + rename.
pub(super) fn write_text(what: &'static str, path: &std::path::Path, text: &str) -> Result<(), String> {
    output::write_file(what, path, text.as_bytes()).map_err(|e| e.to_string())
}
