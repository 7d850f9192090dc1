//! The eval cache is keyed by everything that changes the scores (the model's
//! files, dtype, template options, texts) and never supplies what comes from
//! the current pairs file (the subset); bad bytes in the pairs or the cache
//! are errors of their line, never of the run.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;

fn pairs() -> Vec<Value> {
    vec![
        json!({"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5.", "subset": "alpacaeval-easy"}),
        json!({"prompt": "Name a colour", "chosen": "Blue", "rejected": "Dog", "subset": "donotanswer"}),
        json!({"prompt": "Say hi", "chosen": "Hi there!", "rejected": "Go away.", "subset": "xstest-should-respond"}),
    ]
}

fn write_pairs(path: &Path, pairs: &[Value]) {
    std::fs::write(path, pairs.iter().map(|p| p.to_string() + "\n").collect::<String>()).unwrap();
}

fn eval(pairs: &Path, cache: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["eval", "--pairs", path_str(pairs), "--cache", path_str(cache)];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.code().is_some_and(|c| c <= 1), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn cache_lines(cache: &Path) -> Vec<Value> {
    std::fs::read_to_string(cache).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_cache_hit_takes_the_subset_from_the_changed_pairs_file() {
    let dir = scratch("eval_cache_subset");
    let (pairs_path, cache) = (dir.join("pairs.jsonl"), dir.join("cache.jsonl"));
    write_pairs(&pairs_path, &pairs());
    let first = eval(&pairs_path, &cache, &[]);
    assert_eq!(first["cache"], json!({"hits": 0, "scored": 3}));
    // The same texts, reordered, with the first pair moved to another subset.
    let mut changed = pairs();
    changed[0]["subset"] = json!("math-prm");
    changed.rotate_left(1);
    write_pairs(&pairs_path, &changed);
    let second = eval(&pairs_path, &cache, &[]);
    assert_eq!(second["cache"], json!({"hits": 3, "scored": 0}), "the texts did not change");
    assert_eq!(second["subsets"]["math-prm"]["pairs"], 1, "{second}");
    assert!(second["subsets"].get("alpacaeval-easy").is_none(), "{second}");
    assert_eq!(first["correct"], second["correct"]);
    // The rewritten cache says where each pair is now.
    let lines = cache_lines(&cache);
    assert_eq!((lines[2]["index"].clone(), lines[2]["subset"].clone()), (json!(2), json!("math-prm")));
}

#[test]
fn the_key_covers_model_files_dtype_and_template_options() {
    let dir = scratch("eval_cache_key");
    let (pairs_path, cache) = (dir.join("pairs.jsonl"), dir.join("cache.jsonl"));
    write_pairs(&pairs_path, &pairs());
    let f32 = ["--dtype", "f32"];
    assert_eq!(eval(&pairs_path, &cache, &f32)["cache"]["scored"], 3);
    assert_eq!(eval(&pairs_path, &cache, &f32)["cache"]["hits"], 3);
    assert_eq!(eval(&pairs_path, &cache, &["--dtype", "bf16"])["cache"]["scored"], 3, "another dtype");
    assert_eq!(eval(&pairs_path, &cache, &["--dtype", "bf16", "--truncate", "left"])["cache"]["scored"], 3);
    let record_system = ["--dtype", "bf16", "--truncate", "left", "--use-record-system"];
    assert_eq!(eval(&pairs_path, &cache, &record_system)["cache"]["scored"], 3);
    // Two different models in directories of the same name.
    for (i, fixture_name) in ["tiny-nemotron-rm", "tiny-mha-rot025"].iter().enumerate() {
        let model = dir.join(format!("m{i}")).join("model");
        std::fs::create_dir_all(&model).unwrap();
        for entry in std::fs::read_dir(fixture(fixture_name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
        }
        let report = eval(&pairs_path, &cache, &["--dtype", "f32", "--model", path_str(&model)]);
        assert_eq!(report["model"], "model");
        assert_eq!(report["cache"], json!({"hits": 0, "scored": 3}), "{fixture_name}");
    }
}

#[test]
fn bad_bytes_in_pairs_or_cache_are_errors_of_their_line() {
    let dir = scratch("eval_cache_bad_bytes");
    let (pairs_path, cache) = (dir.join("pairs.jsonl"), dir.join("cache.jsonl"));
    let mut bytes = Vec::new();
    for (i, p) in pairs().iter().enumerate() {
        if i == 1 {
            bytes.extend_from_slice(b"{\"prompt\": \"caf\xe9\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{oops\n");
        }
        bytes.extend_from_slice((p.to_string() + "\n").as_bytes());
    }
    std::fs::write(&pairs_path, &bytes).unwrap();
    let out = run(&["eval", "--pairs", path_str(&pairs_path), "--cache", path_str(&cache)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["pairs"], 3, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{report}");
    assert_eq!(errors[0]["line"], 2);
    assert!(errors[0]["message"].as_str().unwrap().starts_with("invalid_utf8"), "{report}");
    assert_eq!(errors[1]["line"], 3);
    assert!(errors[1]["message"].as_str().unwrap().starts_with("invalid_json"), "{report}");
    // A cache line with a bad byte (and a cut last line, as a killed run leaves):
    // skipped, the pair scored again, the cache rewritten clean.
    let mut cached = std::fs::read(&cache).unwrap();
    let first_end = cached.iter().position(|&b| b == b'\n').unwrap();
    cached[first_end - 3] = 0xff;
    cached.extend_from_slice(b"{\"index\": 7, \"key\": \"ab");
    std::fs::write(&cache, &cached).unwrap();
    let out = run(&["eval", "--pairs", path_str(&pairs_path), "--cache", path_str(&cache)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let again: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(again["cache"], json!({"hits": 2, "scored": 1}), "{again}");
    assert_eq!(again["correct"], report["correct"]);
    assert_eq!(cache_lines(&cache).len(), 3);
}
