//! `reward-worker eval`: preference pairs -> accuracy per subset and per
//! RewardBench section, for any weights. Raw attributes are cached (`--cache`),
//! so a second run with other weights does not load the model at all.

use clap::Args;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

use super::common::ModelArgs;
use super::progress;
use super::reward_args::WeightArgs;
use crate::engine::{ModelSource, PreparedRecord, Scorer};
use crate::preference::pairs::parse_pair;
use crate::preference::sections::{self, Weighting};
use crate::preference::{cache, chosen_wins, CacheEntry, Pair, PreferenceError};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub weights: WeightArgs,
    /// Preference pairs JSONL: {"prompt", "chosen", "rejected", "subset"}.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Attribute cache JSONL: reused, extended while scoring, rewritten at the end.
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
    /// Pairs scored together.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: EvalArgs) -> Result<i32, String> {
    let (weights, weights_name) = args.weights.resolve()?;
    let model_name = ModelSource::from_arg(args.model.model.as_deref()).name();
    let text =
        std::fs::read_to_string(&args.pairs).map_err(|e| format!("cannot read pairs {}: {e}", args.pairs.display()))?;
    let mut errors: Vec<PreferenceError> = Vec::new();
    let mut pairs: Vec<(usize, Pair)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_pair(index + 1, line, &model_name) {
            Ok(pair) => pairs.push((index, pair)),
            Err(e) => errors.push(e),
        }
    }
    if pairs.is_empty() && errors.is_empty() {
        return Err(format!("{} has no pairs", args.pairs.display()));
    }
    let mut found: HashMap<(usize, String), CacheEntry> = HashMap::new();
    if let Some(path) = &args.cache {
        let read = cache::read(path).map_err(|e| e.to_string())?;
        for e in read.errors {
            tracing::warn!("cache {}: {e} (the pair is scored again)", path.display());
        }
        found.extend(read.entries.into_iter().map(|(_, e)| ((e.index, e.key.clone()), e)));
    }
    let missing: Vec<&(usize, Pair)> =
        pairs.iter().filter(|(i, p)| !found.contains_key(&(*i, p.key.clone()))).collect();
    let hits = pairs.len() - missing.len();
    let mut scored = 0;
    if !missing.is_empty() {
        let scorer = args.model.load()?;
        let bar = progress::bar(missing.len() as u64, 0, "pairs", !args.no_progress);
        for chunk in missing.chunks(args.chunk.max(1)) {
            let (entries, failed) = score_pairs(&scorer, chunk, &args.model, &model_name);
            if let Some(path) = &args.cache {
                cache::append(path, &entries).map_err(|e| e.to_string())?;
            }
            scored += entries.len();
            found.extend(entries.into_iter().map(|e| ((e.index, e.key.clone()), e)));
            errors.extend(failed);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }
    let evaluated: Vec<&CacheEntry> = pairs.iter().filter_map(|(i, p)| found.get(&(*i, p.key.clone()))).collect();
    if let Some(path) = &args.cache {
        cache::rewrite(path, &evaluated).map_err(|e| e.to_string())?;
    }
    errors.sort_by_key(|e| match e {
        PreferenceError::Line { line, .. } => *line,
        PreferenceError::Data(_) => 0,
    });
    for e in &errors {
        tracing::warn!("{}: {e}", args.pairs.display());
    }
    let report = sections::report(
        evaluated.iter().map(|e| (e.subset.as_str(), chosen_wins(&weights, &e.chosen, &e.rejected))),
        args.section_weighting,
    );
    let mut out = serde_json::to_value(&report).expect("a report serialises: this is a bug");
    let extra = json!({
        "model": model_name,
        "weights": {"name": weights_name, "values": weights.0},
        "failed": errors.len(),
        "errors": errors.iter().map(error_json).collect::<Vec<_>>(),
        "cache": {"hits": hits, "scored": scored},
    });
    merge(&mut out, extra);
    write_text(&args.output, &(serde_json::to_string_pretty(&out).expect("JSON") + "\n"))?;
    if let Some(path) = &args.markdown {
        let title = format!("{model_name}, weights `{weights_name}`");
        write_text(path, &report.to_markdown(&title))?;
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}

/// Score both sides of each pair; the score of a side is its last assistant turn.
fn score_pairs(
    scorer: &Scorer,
    chunk: &[&(usize, Pair)],
    model: &ModelArgs,
    model_name: &str,
) -> (Vec<CacheEntry>, Vec<PreferenceError>) {
    let mut errors = Vec::new();
    let mut ready: Vec<(&(usize, Pair), PreparedRecord, PreparedRecord)> = Vec::new();
    for item in chunk {
        let pair = &item.1;
        let prep = |record: &Value, side: &str| {
            scorer
                .prepare(record, model.options())
                .map_err(|e| PreferenceError::line(pair.line, format!("`{side}`: {e}")))
        };
        match (prep(&pair.chosen, "chosen"), prep(&pair.rejected, "rejected")) {
            (Ok(c), Ok(r)) => ready.push((item, c, r)),
            (Err(e), _) | (_, Err(e)) => errors.push(e),
        }
    }
    let records: Vec<&PreparedRecord> = ready.iter().flat_map(|(_, c, r)| [c, r]).collect();
    let mut scores = scorer.score(&records, model.batch_tokens).into_iter();
    let mut entries = Vec::new();
    for ((index, pair), _, _) in ready {
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
                index: *index,
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

pub(super) fn write_text(path: &PathBuf, text: &str) -> Result<(), String> {
    if path.as_os_str() == "-" {
        print!("{text}");
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
