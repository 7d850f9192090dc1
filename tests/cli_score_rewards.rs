//! `reward-worker score` with the reward pipeline on the embedded demo model:
//! the numbers are checked against the raw scores each line echoes.

mod common;

use common::*;
use serde_json::{json, Value};

const DEFAULT: [f64; 9] = [0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33];

fn dot(w: &[f64; 9], raw: &Value) -> f64 {
    raw.as_array().unwrap().iter().zip(w).map(|(x, w)| x.as_f64().unwrap() * w).sum()
}

/// The fixture conversations, each with a `group` (0, 1, 0, 1, 0).
fn input(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("input.jsonl");
    let text: String = expected("tiny-nemotron-rm")
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut r = e["record"].clone();
            r["group"] = json!(i % 2);
            r.to_string() + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn score(args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let mut all = vec!["score"];
    all.extend_from_slice(args);
    let out = run(&all);
    let lines = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.code(), lines, stderr(&out))
}

/// `(record, turn, raw, reward)` for every scored turn.
fn turns(lines: &[Value]) -> Vec<(usize, u64, Value, f64)> {
    lines
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            l["turns"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (i, t["turn"].as_u64().unwrap(), t["raw"].clone(), t["reward"].as_f64().unwrap()))
        })
        .collect()
}

#[test]
fn score_echoes_weights_and_transform_with_the_default_mixing() {
    let dir = scratch("score_default");
    let (code, lines, err) = score(&["--input", path_str(&input(&dir))]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines.len(), 5);
    for l in &lines {
        assert_eq!(l["weights"], json!(DEFAULT));
        assert_eq!(l["transform"], "weights(default)");
        for key in ["index", "turns", "tokens"] {
            assert!(l.get(key).is_some(), "{key}");
        }
    }
    for (_, _, raw, reward) in turns(&lines) {
        assert!((reward - dot(&DEFAULT, &raw)).abs() < 1e-6);
    }
}

#[test]
fn score_fixed_normalisation_then_clip() {
    let dir = scratch("score_fixed");
    let (code, lines, err) = score(&[
        "--input",
        path_str(&input(&dir)),
        "--normalize",
        "fixed",
        "--norm-mean",
        "-2",
        "--norm-std",
        "4",
        "--clip",
        "-0.5,0.5",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines[0]["transform"], "weights(default) -> fixed(mean=-2, std=4) -> clip(-0.5, 0.5)");
    for (_, _, raw, reward) in turns(&lines) {
        let want = ((dot(&DEFAULT, &raw) + 2.0) / 4.0).clamp(-0.5, 0.5);
        assert!((reward - want).abs() < 1e-6, "{reward} vs {want}");
    }
}

#[test]
fn score_batch_whitening_over_the_whole_input() {
    let dir = scratch("score_batch");
    // --chunk 2: the batch is still the whole input, not a chunk.
    let (code, lines, err) =
        score(&["--input", path_str(&input(&dir)), "--chunk", "2", "--normalize", "batch", "--norm-eps", "0"]);
    assert_eq!(code, Some(0), "{err}");
    let rewards: Vec<f64> = turns(&lines).iter().map(|t| t.3).collect();
    assert_eq!(rewards.len(), 8);
    let mean = rewards.iter().sum::<f64>() / 8.0;
    let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 7.0;
    assert!(mean.abs() < 1e-9 && (var - 1.0).abs() < 1e-9, "mean {mean}, var {var}");
}

#[test]
fn score_group_normalisation_per_prompt_and_turn() {
    let dir = scratch("score_group");
    let (code, lines, err) =
        score(&["--input", path_str(&input(&dir)), "--normalize", "group", "--norm-eps", "0", "--norm-centre-only"]);
    assert_eq!(code, Some(0), "{err}");
    // Centred within (group, turn): each group's rewards sum to 0 and equal
    // the weighted sum minus the group mean.
    let all = turns(&lines);
    for group in 0..2 {
        for turn in [1u64, 3, 5] {
            let members: Vec<&(usize, u64, Value, f64)> =
                all.iter().filter(|t| t.0 % 2 == group && t.1 == turn).collect();
            if members.is_empty() {
                continue;
            }
            let mean = members.iter().map(|t| dot(&DEFAULT, &t.2)).sum::<f64>() / members.len() as f64;
            for t in &members {
                assert!((t.3 - (dot(&DEFAULT, &t.2) - mean)).abs() < 1e-6);
            }
        }
    }
    assert!(lines[0]["transform"].as_str().unwrap().contains("group-centre(groups=5"));

    // A record without a group fails alone.
    let path = dir.join("missing.jsonl");
    let mut text = std::fs::read_to_string(input(&dir)).unwrap();
    text += &(expected("tiny-nemotron-rm")[0]["record"].to_string() + "\n");
    std::fs::write(&path, text).unwrap();
    let (code, lines, _) = score(&["--input", path_str(&path), "--normalize", "group"]);
    assert_eq!(code, Some(1));
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[5]["error"]["code"], "missing_group");
    assert!(lines[4]["turns"].is_array());
}

#[test]
fn score_running_statistics_carry_over_through_the_state_file() {
    let dir = scratch("score_running");
    let input = input(&dir);
    let state = dir.join("state.json");
    let args =
        ["--input", path_str(&input), "--normalize", "running", "--norm-eps", "0", "--running-state", path_str(&state)];
    // Step 1: no statistics yet, so the identity; then 8 rewards are committed.
    let (code, first, err) = score(&args);
    assert_eq!(code, Some(0), "{err}");
    let weighted: Vec<f64> = turns(&first).iter().map(|t| dot(&DEFAULT, &t.2)).collect();
    for (t, w) in turns(&first).iter().zip(&weighted) {
        assert!((t.3 - w).abs() < 1e-6);
    }
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!((saved["count"].as_u64(), saved["steps"].as_u64()), (Some(8), Some(1)));
    // Step 2: the same inputs are standardised with step 1's statistics.
    let (_, second, _) = score(&args);
    let mean = weighted.iter().sum::<f64>() / 8.0;
    let std = (weighted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 7.0).sqrt();
    for (t, w) in turns(&second).iter().zip(&weighted) {
        assert!((t.3 - (w - mean) / std).abs() < 1e-5, "{} vs {}", t.3, (w - mean) / std);
    }
    assert!(second[0]["transform"].as_str().unwrap().contains("running(mean="));
}

#[test]
fn score_reward_config_file_and_flags_that_override_it() {
    let dir = scratch("score_config");
    let config = dir.join("reward.json");
    std::fs::write(
        &config,
        r#"{"preset": "helpfulness", "calibration": {"scale": [1,1,1,1,0.5,1,1,1,1], "shift": [0,0,0,0,1,0,0,0,0]},
                                "clip": {"max": 1000}}"#,
    )
    .unwrap();
    let (code, lines, err) = score(&["--input", path_str(&input(&dir)), "--reward-config", path_str(&config)]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines[0]["transform"], "calibrate(affine) -> weights(helpfulness) -> clip(-inf, 1000)");
    for l in &lines {
        for t in l["turns"].as_array().unwrap() {
            let h = t["raw"][4].as_f64().unwrap();
            assert!((t["reward"].as_f64().unwrap() - (0.5 * h + 1.0)).abs() < 1e-6);
            assert!((t["calibrated"][4].as_f64().unwrap() - (0.5 * h + 1.0)).abs() < 1e-6);
        }
    }
    // --weights replaces the file's preset.
    let (_, lines, _) = score(&[
        "--input",
        path_str(&input(&dir)),
        "--reward-config",
        path_str(&config),
        "--weights",
        "0,0,0,0,0,0,0,0,1",
    ]);
    assert_eq!(lines[0]["transform"], "calibrate(affine) -> weights(custom) -> clip(-inf, 1000)");
    let v = lines[0]["turns"][0]["raw"][8].as_f64().unwrap();
    assert!((lines[0]["turns"][0]["reward"].as_f64().unwrap() - v).abs() < 1e-6);
}

#[test]
fn score_bad_reward_options_are_clear_errors() {
    let dir = scratch("score_bad_options");
    let input = input(&dir);
    let cases: [(&[&str], &str); 6] = [
        (&["--weights", "1,2,3,4,5,6,7,8"], "expected 9 weights"),
        (&["--preset", "nope"], "unknown preset `nope`"),
        (&["--normalize", "fixed", "--norm-mean", "1"], "needs --norm-mean and --norm-std"),
        (&["--norm-std", "2"], "--norm-* flags need --normalize"),
        (&["--clip", "5,1"], "clip.min (5) is above clip.max (1)"),
        (&["--normalize", "batch", "--running-state", "s.json"], "--running-state needs running"),
    ];
    for (extra, message) in cases {
        let mut args = vec!["--input", path_str(&input)];
        args.extend_from_slice(extra);
        let (code, lines, err) = score(&args);
        assert_eq!(code, Some(2), "{extra:?}");
        assert!(lines.is_empty());
        assert!(err.contains(message), "{extra:?}: {err}");
    }
    let presets = dir.join("presets.json");
    std::fs::write(&presets, r#"{"presets": {"short": {"weights": [1, 2]}}}"#).unwrap();
    let (code, _, err) = score(&["--input", path_str(&input), "--presets", path_str(&presets)]);
    assert_eq!(code, Some(2));
    assert!(err.contains("presets.json") && err.contains("preset `short`") && err.contains("got 2"), "{err}");
}
