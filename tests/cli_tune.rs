//! `reward-worker tune-weights` on a synthetic cache where verbosity alone
//! decides the preference (the default weights penalise it), and on bad input.

mod common;

use common::*;
use serde_json::{json, Value};

/// A small deterministic generator (the test must not depend on a crate's RNG).
struct Lcg(u64);

impl Lcg {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// 300 pairs: attributes uniform in [0, 4], the chosen side 0.2..2 more verbose.
fn synthetic_cache(path: &std::path::Path) {
    let mut rng = Lcg(42);
    let mut text = String::new();
    for index in 0..300 {
        let mut chosen: Vec<f64> = (0..9).map(|_| rng.uniform(0.0, 4.0)).collect();
        let rejected: Vec<f64> = (0..9).map(|_| rng.uniform(0.0, 4.0)).collect();
        chosen[8] = rejected[8] + rng.uniform(0.2, 2.0);
        let line = json!({"index": index, "key": format!("k{index}"), "model": "synthetic",
                          "subset": "synthetic", "chosen": chosen, "rejected": rejected});
        text += &format!("{line}\n");
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn tune_weights_recovers_the_deciding_attribute_and_beats_the_default() {
    let dir = scratch("tune_synthetic");
    let cache = dir.join("cache.jsonl");
    synthetic_cache(&cache);
    let presets = dir.join("presets.json");
    let plot = dir.join("accuracy.svg");
    let out = run(&[
        "tune-weights",
        "--cache",
        path_str(&cache),
        "--presets",
        path_str(&presets),
        "--save-preset",
        "tuned",
        "--plot",
        path_str(&plot),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let w: Vec<f64> = serde_json::from_value(report["weights"].clone()).unwrap();
    // Only the HelpSteer five are fitted; verbosity dominates and is positive.
    assert!(w[..4].iter().all(|&x| x == 0.0), "{w:?}");
    let dominant = (0..9).max_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs())).unwrap();
    assert_eq!(dominant, 8, "{w:?}");
    assert!(w[8] > 0.0 && w[4..8].iter().all(|x| x.abs() < 0.25 * w[8]), "{w:?}");
    let fit = &report["fit"];
    assert_eq!((fit["pairs"].as_u64(), fit["test"].as_u64(), fit["train"].as_u64()), (Some(300), Some(60), Some(240)));
    let tuned = fit["tuned"]["test_accuracy"].as_f64().unwrap();
    let default = fit["baseline"]["test_accuracy"].as_f64().unwrap();
    assert!(tuned >= 0.95, "tuned held-out accuracy {tuned}");
    assert!(default < 0.6 && tuned > default + 0.3, "default {default}, tuned {tuned}");
    assert!(fit["tuned"]["cv_accuracy"].as_f64().unwrap() > fit["baseline"]["cv_accuracy"].as_f64().unwrap());
    assert_eq!(report["grid"].as_array().unwrap().len(), 6);

    // The plot has one point per lambda.
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<circle").count(), 6);

    // The saved preset is what `score` then uses.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&presets).unwrap()).unwrap();
    assert_eq!(saved["presets"]["tuned"]["weights"], report["weights"]);
    let input = dir.join("one.jsonl");
    std::fs::write(&input, format!("{}\n", expected("tiny-nemotron-rm")[0]["record"])).unwrap();
    let out = run(&["score", "--input", path_str(&input), "--presets", path_str(&presets), "--preset", "tuned"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(line["weights"], report["weights"]);
    assert_eq!(line["transform"], "weights(tuned)");
    let raw: Vec<f64> = serde_json::from_value(line["turns"][0]["raw"].clone()).unwrap();
    let want: f64 = raw.iter().zip(&w).map(|(x, w)| x * w).sum();
    assert!((line["turns"][0]["reward"].as_f64().unwrap() - want).abs() < 1e-6);

    // Fitting again with another name keeps the first preset.
    let out = run(&[
        "tune-weights",
        "--cache",
        path_str(&cache),
        "--presets",
        path_str(&presets),
        "--save-preset",
        "again",
        "--folds",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&presets).unwrap()).unwrap();
    assert!(saved["presets"]["tuned"].is_object() && saved["presets"]["again"].is_object());
}

#[test]
fn tune_weights_reports_bad_cache_lines_and_fits_the_rest() {
    let dir = scratch("tune_bad_cache");
    let cache = dir.join("cache.jsonl");
    synthetic_cache(&cache);
    let mut lines: Vec<String> = std::fs::read_to_string(&cache).unwrap().lines().map(String::from).collect();
    lines[2] = lines[2].replacen("\"chosen\":[", "\"chosen\":[null,", 1); // ten values
    let mut line3: Value = serde_json::from_str(&lines[3]).unwrap();
    line3["rejected"][5] = Value::Null; // what serde_json writes for a NaN
    lines[3] = line3.to_string();
    lines[4] = lines[4].replace("\"rejected\":[", "\"rejected\":[NaN,");
    std::fs::write(&cache, lines.join("\n") + "\n").unwrap();
    let out = run(&["tune-weights", "--cache", path_str(&cache)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let skipped: Vec<String> = serde_json::from_value(report["skipped"].clone()).unwrap();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped[0].starts_with("line 3: `chosen` has 10 values"), "{skipped:?}");
    assert!(skipped[1].starts_with("line 4: `rejected`[5] (correctness) is null, not a finite number"), "{skipped:?}");
    assert!(skipped[2].starts_with("line 5: invalid_json") && skipped[2].contains("NaN"), "{skipped:?}");
    assert_eq!(report["fit"]["pairs"], 297);
}

#[test]
fn tune_weights_refuses_bad_options() {
    let dir = scratch("tune_bad_options");
    let cache = dir.join("cache.jsonl");
    synthetic_cache(&cache);
    let out = run(&["tune-weights", "--cache", path_str(&cache), "--baseline", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown preset `nope`"), "{}", stderr(&out));
    let out = run(&["tune-weights", "--cache", path_str(&cache), "--lambdas", "0.1,x"]);
    assert!(stderr(&out).contains("`x` is not a number"), "{}", stderr(&out));
    let out = run(&["tune-weights", "--cache", path_str(&dir.join("missing.jsonl"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has no usable pairs"), "{}", stderr(&out));
    let out = run(&["tune-weights", "--cache", path_str(&cache), "--save-preset", "x"]);
    assert_eq!(out.status.code(), Some(2), "--save-preset needs --presets");
}
