//! `reward-worker eval`: section weighting with hand-computed numbers (from a
//! prepared cache, so the model is never loaded), bad pairs, and a real run on
//! the embedded demo model whose second pass is served from the cache.

mod common;

use common::*;
use reward_worker::config::DType;
use reward_worker::engine::{ModelSource, ScoreOptions};
use reward_worker::files::fingerprint::model_fingerprint;
use reward_worker::preference::pairs::{pair_key, scoring_identity};
use serde_json::{json, Value};

const DEMO: &str = "reward-worker-demo";

/// What `eval` scores the demo model's pairs with by default (part of every cache key).
fn demo_scoring() -> String {
    let dtype = DType::Auto.resolve(tch::Device::Cpu).0;
    scoring_identity(&model_fingerprint(&ModelSource::EmbeddedDemo).unwrap(), dtype, ScoreOptions::default())
}

/// `(subset, chosen helpfulness, rejected helpfulness)`; with the
/// `helpfulness` preset the reward is exactly that number.
const PAIRS: [(&str, f64, f64); 12] = [
    ("alpacaeval-easy", 3.0, 1.0), // right
    ("alpacaeval-easy", 2.0, 2.0), // tie: wrong
    ("mt-bench-med", 3.0, 1.0),
    ("mt-bench-med", 2.5, 1.0),
    ("mt-bench-med", 4.0, 0.0),
    ("llmbar-natural", 1.0, 2.0), // wrong
    ("donotanswer", 2.0, 1.0),
    ("donotanswer", 0.0, 1.0),
    ("hep-go", 2.0, 1.0),
    ("hep-go", 3.0, 1.0),
    ("math-prm", 1.0, 3.0),
    ("my-own-subset", 2.0, 1.0),
];

fn attrs(helpfulness: f64) -> Value {
    json!([0, 0, 0, 0, helpfulness, 0, 0, 0, 0])
}

/// A pairs file (with a bad line 2) and a cache holding every good pair.
fn prepared(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (mut pairs, mut cache) = (Vec::new(), String::new());
    for (i, (subset, _, _)) in PAIRS.iter().enumerate() {
        let (prompt, chosen, rejected) =
            (json!(format!("q{i}")), json!(format!("good {i}")), json!(format!("bad {i}")));
        pairs.push(json!({"prompt": prompt, "chosen": chosen, "rejected": rejected, "subset": subset}).to_string());
    }
    pairs.insert(1, json!({"prompt": "p", "chosen": "c", "subset": "alpacaeval-easy"}).to_string());
    for (index, line) in pairs.iter().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        let Some(rejected) = v.get("rejected") else {
            continue;
        };
        let (_, c, r) = PAIRS[if index == 0 { 0 } else { index - 1 }];
        let key = pair_key(&demo_scoring(), v.get("prompt"), &v["chosen"], rejected);
        cache += &format!(
            "{}\n",
            json!({"index": index, "key": key, "model": DEMO, "subset": v["subset"],
                   "chosen": attrs(c), "rejected": attrs(r)})
        );
    }
    let (p, c) = (dir.join("pairs.jsonl"), dir.join("cache.jsonl"));
    std::fs::write(&p, pairs.join("\n") + "\n").unwrap();
    std::fs::write(&c, cache).unwrap();
    (p, c)
}

fn section(report: &Value, name: &str) -> f64 {
    report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["section"] == name)
        .unwrap_or_else(|| panic!("no section {name}"))["accuracy"]
        .as_f64()
        .unwrap()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}

#[test]
fn eval_weights_sections_by_count_from_the_cache() {
    let dir = scratch("eval_sections");
    let (pairs, cache) = prepared(&dir);
    let md = dir.join("table.md");
    let out = run(&[
        "eval",
        "--pairs",
        path_str(&pairs),
        "--cache",
        path_str(&cache),
        "--preset",
        "helpfulness",
        "--markdown",
        path_str(&md),
    ]);
    // Line 2 lacks `rejected`: reported, exit 1, the other pairs still count.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["errors"], json!([{"line": 2, "message": "missing `rejected`"}]));
    assert_eq!(report["cache"], json!({"hits": 12, "scored": 0}));
    assert_eq!((report["pairs"].as_u64(), report["correct"].as_u64()), (Some(12), Some(8)));
    close(section(&report, "Chat"), 4.0 / 5.0);
    close(section(&report, "Chat Hard"), 0.0);
    close(section(&report, "Safety"), 0.5);
    close(section(&report, "Reasoning"), 2.0 / 3.0);
    close(report["overall"].as_f64().unwrap(), (0.8 + 0.0 + 0.5 + 2.0 / 3.0) / 4.0);
    assert_eq!(report["subsets"]["alpacaeval-easy"]["accuracy"], 0.5);
    assert_eq!(report["subsets"]["my-own-subset"]["section"], Value::Null);
    assert_eq!(report["weights"]["name"], "helpfulness");
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(table.contains("| **Chat** | | 5 | **80.0** |"), "{table}");
    assert!(table.contains("| **Overall** (mean of sections) | | | **49.2** |"), "{table}");

    // The leaderboard weighting counts math-prm like both hep-go pairs: (2*0 + 2*1) / 4.
    let out = run(&[
        "eval",
        "--pairs",
        path_str(&pairs),
        "--cache",
        path_str(&cache),
        "--preset",
        "helpfulness",
        "--section-weighting",
        "leaderboard",
    ]);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    close(section(&report, "Reasoning"), 0.5);
    close(report["overall"].as_f64().unwrap(), (0.8 + 0.0 + 0.5 + 0.5) / 4.0);

    // All-zero weights tie every pair, and a tie is wrong.
    let out =
        run(&["eval", "--pairs", path_str(&pairs), "--cache", path_str(&cache), "--weights", "0,0,0,0,0,0,0,0,0"]);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((report["correct"].as_u64(), report["overall"].as_f64()), (Some(0), Some(0.0)));
}

#[test]
fn eval_rejects_bad_weights_and_presets_before_any_work() {
    let dir = scratch("eval_bad_weights");
    let (pairs, _) = prepared(&dir);
    let out = run(&["eval", "--pairs", path_str(&pairs), "--weights", "1,2,3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected 9 weights") && stderr(&out).contains("got 3"), "{}", stderr(&out));
    let out = run(&["eval", "--pairs", path_str(&pairs), "--preset", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown preset `nope` (known: correctness, default"), "{}", stderr(&out));
}

#[test]
fn eval_on_the_demo_model_caches_raw_attributes() {
    let dir = scratch("eval_demo");
    let pairs = dir.join("pairs.jsonl");
    let lines = [
        json!({"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4.", "rejected": "It is 5.", "subset": "alpacaeval-easy"}),
        json!({"prompt": [{"role": "user", "content": "Name a colour"}],
               "chosen": [{"role": "assistant", "content": "Blue"}], "rejected": "Dog", "subset": "donotanswer"}),
        json!({"chosen": [{"from": "User", "value": "Sum 1..3"}, {"from": "Assistant", "value": "6"}],
               "rejected": [{"from": "User", "value": "Sum 1..3"}, {"from": "Assistant", "value": "7"}], "subset": "math-prm"}),
        json!({"prompt": "Say hi", "chosen": "Hi there!", "rejected": "Go away.", "subset": "xstest-should-respond"}),
    ];
    std::fs::write(&pairs, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let cache = dir.join("cache.jsonl");
    let eval = |weights: &str| {
        let out = run(&["eval", "--pairs", path_str(&pairs), "--cache", path_str(&cache), "--weights", weights]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap()
    };
    let first = eval("0,0,0,0,0.3,0.74,0.46,0.47,-0.33");
    assert_eq!(first["cache"], json!({"hits": 0, "scored": 4}));
    assert_eq!(first["model"], DEMO);
    // Second run: the cache answers, and -w ranks every pair the other way.
    let flipped = eval("0,0,0,0,-0.3,-0.74,-0.46,-0.47,0.33");
    assert_eq!(flipped["cache"], json!({"hits": 4, "scored": 0}));
    assert_eq!(first["correct"].as_u64().unwrap() + flipped["correct"].as_u64().unwrap(), 4);
    // The cache holds exactly the four pairs, and its raw values are the model's.
    let cached: Vec<Value> =
        std::fs::read_to_string(&cache).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(cached.len(), 4);
    let record = dir.join("record.jsonl");
    std::fs::write(
        &record,
        json!({"messages": [{"role": "user", "content": "What is 2 + 2?"},
                                                {"role": "assistant", "content": "2 + 2 = 4."}]})
        .to_string()
            + "\n",
    )
    .unwrap();
    let scored: Value =
        serde_json::from_str(stdout(&run(&["score", "--input", path_str(&record)])).lines().next().unwrap()).unwrap();
    // Scored alone here, in a batch of pairs there: f32 rounding only.
    let diff = close::rel_diff(&floats(&scored["turns"][0]["raw"]), &floats(&cached[0]["chosen"]));
    assert!(diff < close::SAME_MATH, "{diff} (relative) between score and the cache");
    // An edited pair is scored again; the others still come from the cache.
    let mut edited = lines.clone();
    edited[3]["rejected"] = json!("Leave me alone.");
    std::fs::write(&pairs, edited.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let again = eval("0,0,0,0,1,0,0,0,0");
    assert_eq!(again["cache"], json!({"hits": 3, "scored": 1}));
}
