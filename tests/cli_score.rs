//! `reward-worker score` as a user runs it: JSONL in, JSON lines out, one bad
//! record never takes down the others, and every error names what is wrong.

mod common;

use common::*;
use serde_json::{json, Value};

const GOOD: &str =
    r#"{"conversations": [{"from": "User", "value": "What is 2 + 2?"}, {"from": "Assistant", "value": "4"}]}"#;

fn fixture_arg() -> String {
    fixture("tiny-nemotron-rm").display().to_string()
}

#[test]
fn scores_the_embedded_default_model_without_arguments() {
    let out = run_cli(&["score"], &format!("{GOOD}\n{GOOD}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["index"], 0);
    assert_eq!(lines[1]["index"], 1);
    let turn = &lines[0]["turns"][0];
    assert_eq!(turn["turn"], 1);
    assert_eq!(turn["raw"].as_array().unwrap().len(), 9);
    let attrs = turn["attributes"].as_object().unwrap();
    let names: Vec<&str> = attrs.keys().map(String::as_str).collect();
    assert_eq!(names.len(), 5);
    for name in ["helpfulness", "correctness", "coherence", "complexity", "verbosity"] {
        assert!(names.contains(&name));
    }
    assert_eq!(turn["attributes"]["helpfulness"], turn["raw"][4]);
    assert!(lines[0]["tokens"].as_u64().unwrap() > 0);
    assert_eq!(lines[0]["turns"], lines[1]["turns"]);
}

#[test]
fn output_matches_the_reference_file_for_each_fixture_record() {
    let cases = expected("tiny-nemotron-rm");
    let input: String = cases.iter().map(|c| format!("{}\n", c["record"])).collect();
    let out = run_cli(&["score", "--model", &fixture_arg(), "--dtype", "f32"], &input);
    assert!(out.status.success());
    for (case, line) in cases.iter().zip(json_lines(&out)) {
        for (want, got) in case["turns"].as_array().unwrap().iter().zip(line["turns"].as_array().unwrap()) {
            assert_eq!(want["turn"], got["turn"]);
            let (want_raw, got_raw) = (floats(&want["raw"]), floats(&got["raw"]));
            assert!(close::rel_diff(&got_raw, &want_raw) < close::TO_TRANSFORMERS);
            let reward_diff = (want["reward"].as_f64().unwrap() - got["reward"].as_f64().unwrap()).abs();
            assert!(reward_diff / close::scale(&want_raw) < close::TO_TRANSFORMERS, "reward off by {reward_diff}");
        }
    }
}

#[test]
fn openai_messages_score_like_the_seed_format() {
    let openai =
        json!({"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]});
    let out = run_cli(&["score"], &format!("{GOOD}\n{openai}\n"));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["turns"], lines[1]["turns"]);
}

#[test]
fn weights_and_presets_set_the_reward() {
    let out = run_cli(&["score", "--weights", "0,0,0,0,1,0,0,0,0"], &format!("{GOOD}\n"));
    let turn = &json_lines(&out)[0]["turns"][0];
    assert_eq!(turn["reward"].as_f64().unwrap() as f32, turn["raw"][4].as_f64().unwrap() as f32);

    let out = run_cli(&["score", "--weights", "1,2,3"], &format!("{GOOD}\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected 9 weights"));
    let out = run_cli(&["score", "--preset", "nonesuch"], &format!("{GOOD}\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset `nonesuch`"));
}

fn error_of(line: &Value) -> (&str, &str) {
    (line["error"]["code"].as_str().unwrap(), line["error"]["message"].as_str().unwrap())
}

#[test]
fn bad_records_get_errors_and_the_rest_are_scored() {
    let long = "word ".repeat(5000);
    let input = [
        GOOD.to_string(),
        "{not json".into(),
        r#"{"conversations": [{"from": "User", "value": "only a question"}]}"#.into(),
        r#"{"conversations": [{"from": "Narrator", "value": "x"}, {"from": "Assistant", "value": "y"}]}"#.into(),
        r#"{"conversations": [{"from": "User", "value": 42}, {"from": "Assistant", "value": "y"}]}"#.into(),
        r#"{"messages": {"role": "user"}}"#.into(),
        json!({"conversations": [{"from": "User", "value": long}, {"from": "Assistant", "value": "ok"}]}).to_string(),
        "".into(),
        GOOD.to_string(),
    ]
    .join("\n");
    let out = run_cli(&["score"], &format!("{input}\n"));
    assert_eq!(out.status.code(), Some(1), "exit status 1 when a record failed");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 9, "one output line per input line");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
    }
    assert!(lines[0]["turns"].is_array() && lines[8]["turns"].is_array());
    assert_eq!(lines[0]["turns"], lines[8]["turns"]);
    let (code, msg) = error_of(&lines[1]);
    assert_eq!(code, "invalid_json");
    assert!(msg.contains("line 2"), "{msg}");
    assert_eq!(error_of(&lines[2]).0, "no_assistant_turn");
    let (code, msg) = error_of(&lines[3]);
    assert_eq!(code, "unknown_role");
    assert!(msg.contains("conversations[0].from") && msg.contains("Narrator"), "{msg}");
    let (code, msg) = error_of(&lines[4]);
    assert_eq!(code, "invalid_record");
    assert!(msg.contains("conversations[0].value must be a string, got a number"), "{msg}");
    let (code, msg) = error_of(&lines[5]);
    assert_eq!(code, "invalid_record");
    assert!(msg.contains("`messages` must be an array"), "{msg}");
    let (code, msg) = error_of(&lines[6]);
    assert_eq!(code, "context_length_exceeded");
    assert!(msg.contains("context is 4096"), "{msg}");
    assert_eq!(error_of(&lines[7]).0, "empty_line");
}

#[test]
fn left_truncation_keeps_the_scored_turn_and_reports_it() {
    let dir = copy_model("tiny-nemotron-rm");
    let config_path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["max_position_embeddings"] = json!(200);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = dir.path().display().to_string();
    let filler = "The quick brown fox jumps over the lazy dog. ".repeat(3);
    let turns = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"from": if i % 2 == 0 { "User" } else { "Assistant" }, "value": format!("{i} {filler}")}))
            .collect()
    };
    let full = json!({"conversations": turns(6)});

    let out = run_cli(&["score", "--model", &model], &format!("{full}\n"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(error_of(&json_lines(&out)[0]).0, "context_length_exceeded");

    let out = run_cli(&["score", "--model", &model, "--truncate", "left"], &format!("{full}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = &json_lines(&out)[0];
    assert_eq!(line["truncated"], true);
    let scored: Vec<u64> = line["turns"].as_array().unwrap().iter().map(|t| t["turn"].as_u64().unwrap()).collect();
    assert_eq!(scored, vec![1, 3, 5], "every assistant turn is still scored");

    // The last turn's score equals scoring the turns that were kept, on their own.
    let kept_from = (1..6).find(|&s| {
        let rec = json!({"conversations": turns(6)[s..].to_vec()});
        json_lines(&run_cli(&["score", "--model", &model], &format!("{rec}\n")))[0]["error"].is_null()
    });
    let rec = json!({"conversations": turns(6)[kept_from.unwrap()..].to_vec()});
    let alone = &json_lines(&run_cli(&["score", "--model", &model], &format!("{rec}\n")))[0];
    let last = alone["turns"].as_array().unwrap().last().unwrap();
    let diff = close::rel_diff(&floats(&line["turns"][2]["raw"]), &floats(&last["raw"]));
    assert!(diff < close::SAME_MATH, "truncated turn differs by {diff} (relative)");
}

#[test]
fn empty_input_is_an_error() {
    let out = run_cli(&["score"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
}

fn load_error(model: &std::path::Path) -> String {
    let out = run_cli(&["score", "--model", &model.display().to_string()], &format!("{GOOD}\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn broken_models_give_errors_that_name_the_problem() {
    let missing = copy_model("tiny-nemotron-rm");
    std::fs::remove_file(missing.path().join("model.safetensors")).unwrap();
    let err = load_error(missing.path());
    assert!(err.contains("model.safetensors") && err.contains("No such file"), "{err}");

    let err = load_error(std::path::Path::new("/nonexistent/model"));
    assert!(err.contains("/nonexistent/model does not exist"), "{err}");

    let other = copy_model("tiny-nemotron-rm");
    let path = other.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"nemotron\"", "\"llama\"");
    std::fs::write(&path, text).unwrap();
    let err = load_error(other.path());
    assert!(err.contains("model_type is `llama`") && err.contains("config.json"), "{err}");

    let shapes = copy_model("tiny-nemotron-rm");
    let path = shapes.path().join("config.json");
    let text =
        std::fs::read_to_string(&path).unwrap().replace("\"intermediate_size\": 256", "\"intermediate_size\": 128");
    std::fs::write(&path, text).unwrap();
    let err = load_error(shapes.path());
    assert!(
        err.contains("model.layers.0.mlp.up_proj.weight") && err.contains("[256, 64]") && err.contains("[128, 64]"),
        "{err}"
    );

    let no_specials = copy_model("tiny-nemotron-rm");
    let path = no_specials.path().join("tokenizer.json");
    let mut tok: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["added_tokens"].as_array_mut().unwrap().retain(|t| !t["content"].as_str().unwrap().starts_with("<extra_id"));
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    vocab.retain(|k, _| !k.starts_with("<extra_id"));
    std::fs::write(&path, tok.to_string()).unwrap();
    let err = load_error(no_specials.path());
    assert!(err.contains("tokenizer.json") && err.contains("<extra_id_0>"), "{err}");

    let bad_weights = copy_model("tiny-nemotron-rm");
    std::fs::write(bad_weights.path().join("model.safetensors"), b"not a checkpoint").unwrap();
    let err = load_error(bad_weights.path());
    assert!(err.contains("not a valid safetensors file"), "{err}");
}

#[test]
fn layouts_the_model_cannot_split_and_missing_devices_are_refused_clearly() {
    // The demo model has 6 heads: 4 ranks cannot split them (tests/group_parity.rs runs the layouts that work).
    let out = run_cli(&["score", "--tp", "4"], &format!("{GOOD}\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("layout tp=4 pp=1: 6 attention heads do not divide into 4 tensor-parallel ranks"), "{err}");
    let out = run_cli(&["score", "--device", "cuda:0"], &format!("{GOOD}\n"));
    if !tch::Cuda::is_available() {
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no CUDA device"));
    }
}
