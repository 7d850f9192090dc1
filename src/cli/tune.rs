//! `reward-worker tune-weights`: fit attribute weights to the preference pairs
//! of an attribute cache (written by `eval --cache`), compare them on held-out
//! pairs with a baseline (the model card's weights by default), save them as a
//! preset that `score` (and `serve`) accept, and plot accuracy against lambda.

use clap::{Args, ValueEnum};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;

use super::common::in_range;
use super::eval::write_text;
use crate::files::{check_distinct, FileRole, OutputPlan};
use crate::preference::fit::{self, TuneOptions};
use crate::preference::{cache, plot};
use crate::reward::presets::save_preset;
use crate::reward::{Preset, PresetBook, ATTRIBUTES, HELPSTEER_ATTRIBUTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttributeSet {
    /// The five HelpSteer attributes (the others of Nemotron-4-340B-Reward are untrained).
    Helpsteer,
    /// All nine.
    All,
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Attribute cache JSONL written by `eval --cache`.
    #[arg(long)]
    pub cache: PathBuf,
    /// Presets file: where the baseline is looked up and --save-preset writes.
    #[arg(long)]
    pub presets: Option<PathBuf>,
    /// Save the tuned weights as this preset in the --presets file.
    #[arg(long, requires = "presets")]
    pub save_preset: Option<String>,
    /// The preset the tuned weights are compared with.
    #[arg(long, default_value = "default")]
    pub baseline: String,
    /// Cross-validation folds, 2..=1000.
    #[arg(long, default_value_t = 5, value_parser = folds)]
    pub folds: usize,
    /// L2 strengths to try, comma-separated.
    #[arg(long, default_value = "0.0001,0.001,0.01,0.1,1,10")]
    pub lambdas: String,
    /// Share of pairs held out for the final default-vs-tuned comparison (0 for none).
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Seed of the split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which attributes get a weight.
    #[arg(long, value_enum, default_value = "helpsteer")]
    pub attributes: AttributeSet,
    /// JSON report, `-` for stdout.
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
    /// SVG plot of held-out accuracy against lambda.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn folds(text: &str) -> Result<usize, String> {
    in_range(text, 2, 1000).map(|n| n as usize)
}

pub fn run(args: TuneArgs) -> Result<i32, String> {
    check_files(&args)?;
    let book = PresetBook::load(args.presets.as_deref().filter(|p| p.exists())).map_err(|e| e.to_string())?;
    let baseline = book.get(&args.baseline).map_err(|e| e.to_string())?;
    let lambdas = args
        .lambdas
        .split(',')
        .map(|s| s.trim().parse::<f64>().map_err(|_| format!("--lambdas: `{}` is not a number", s.trim())))
        .collect::<Result<Vec<_>, _>>()?;
    let cache::CacheRead { entries, errors: bad } = cache::read(&args.cache).map_err(|e| e.to_string())?;
    for e in &bad {
        tracing::warn!("cache {}: {e} (pair skipped)", args.cache.display());
    }
    if entries.is_empty() {
        return Err(format!("cache {} has no usable pairs", args.cache.display()));
    }
    let models: BTreeSet<&str> = entries.iter().map(|(_, e)| e.model.as_str()).collect();
    if models.len() > 1 {
        tracing::warn!(?models, "the cache mixes models");
    }
    let diffs: Vec<[f64; 9]> =
        entries.iter().map(|(_, e)| std::array::from_fn(|i| e.chosen[i] as f64 - e.rejected[i] as f64)).collect();
    let attributes: Vec<usize> = match args.attributes {
        AttributeSet::Helpsteer => HELPSTEER_ATTRIBUTES.collect(),
        AttributeSet::All => (0..9).collect(),
    };
    let opts = TuneOptions {
        folds: args.folds,
        lambdas,
        test_fraction: args.test_fraction,
        seed: args.seed,
        attributes: attributes.clone(),
    };
    let result = fit::tune(&diffs, &baseline, &opts).map_err(|e| e.to_string())?;
    let named: Map<String, Value> =
        ATTRIBUTES.iter().zip(result.weights.0).map(|(n, w)| (n.to_string(), json!(w))).collect();
    let fit_json = json!({
        "cache": args.cache.display().to_string(),
        "models": models,
        "pairs": entries.len(),
        "train": result.train,
        "test": result.test,
        "folds": args.folds,
        "seed": args.seed,
        "attributes": attributes.iter().map(|&i| ATTRIBUTES[i]).collect::<Vec<_>>(),
        "best_lambda": result.best_lambda,
        "tuned": {"cv_accuracy": result.tuned_cv_accuracy, "test_accuracy": result.tuned_test_accuracy},
        "baseline": {"name": args.baseline, "weights": baseline.0,
                     "cv_accuracy": result.baseline_cv_accuracy, "test_accuracy": result.baseline_test_accuracy},
    });
    let mut report = json!({
        "weights": result.weights.0,
        "weights_by_attribute": named,
        "fit": fit_json,
        "grid": result.grid,
        "skipped": bad.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    });
    if let Some(name) = &args.save_preset {
        let path = args.presets.as_ref().expect("clap requires --presets: this is a bug");
        let mut extra = Map::new();
        extra.insert("fit".into(), fit_json.clone());
        let description = format!(
            "Bradley-Terry fit on {} pairs (lambda {}), held-out accuracy {}",
            entries.len(),
            result.best_lambda,
            result.tuned_test_accuracy.map_or("n/a".to_string(), |a| format!("{:.3}", a))
        );
        let preset = Preset { weights: result.weights.0.to_vec(), description: Some(description), extra };
        save_preset(path, name, preset).map_err(|e| e.to_string())?;
        report["preset"] = json!({"name": name, "file": path.display().to_string()});
    }
    if let Some(path) = &args.plot {
        let svg =
            plot::accuracy_vs_lambda(&result.grid, result.best_lambda, result.baseline_cv_accuracy, &args.baseline);
        write_text("plot", path, &svg)?;
    }
    write_text("report", &args.output, &(serde_json::to_string_pretty(&report).expect("JSON") + "\n"))?;
    Ok(if bad.is_empty() { 0 } else { 1 })
}

/// No output (the presets file written to, the report, the plot) may be the
/// cache or another output; each is checked before any work.
fn check_files(args: &TuneArgs) -> Result<(), String> {
    let mut inputs = vec![FileRole::new("cache", &args.cache)];
    let mut outputs = vec![FileRole::new("report", &args.output)];
    if let Some(p) = args.presets.as_deref() {
        if args.save_preset.is_some() {
            outputs.push(FileRole::new("presets", p));
        } else {
            inputs.push(FileRole::new("presets", p));
        }
    }
    outputs.extend(args.plot.as_deref().map(|p| FileRole::new("plot", p)));
    check_distinct(&inputs, &outputs).map_err(|e| e.to_string())?;
    for role in &outputs {
        OutputPlan::check(role.what, role.path).map_err(|e| e.to_string())?;
    }
    Ok(())
}
