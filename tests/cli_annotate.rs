//! `reward-worker annotate` on the fixture conversations: labels are the
//! SteerLM rounding of the reference scores, bad lines pass through, and a
//! killed run resumes to the same file.

mod common;

use common::*;
use serde_json::{json, Value};

const HELPSTEER: [&str; 5] = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"];

/// Clamp to [0, 4] and round half to even (as Python's `round`).
fn steerlm(x: f64) -> i64 {
    x.clamp(0.0, 4.0).round_ties_even() as i64
}

/// The fixture records, a bad line, and a record with a User label.
fn write_input(dir: &std::path::Path) -> std::path::PathBuf {
    let mut lines: Vec<String> = expected("tiny-nemotron-rm").iter().map(|e| e["record"].to_string()).collect();
    lines.insert(2, "{\"conversations\": [truncated".into());
    let mut user_labelled = expected("tiny-nemotron-rm")[0]["record"].clone();
    user_labelled["conversations"][0]["label"] = json!("helpfulness:-1");
    lines.push(user_labelled.to_string());
    let path = dir.join("input.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn annotate(input: &std::path::Path, output: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "annotate",
        "--model",
        FIXTURE,
        "--dtype",
        "f32",
        "--input",
        path_str(input),
        "--output",
        path_str(output),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn annotate_labels_are_the_rounding_of_the_reference_scores() {
    let dir = scratch("annotate_labels");
    let input = write_input(&dir);
    let output = dir.join("out.jsonl");
    let out = annotate(&input, &output, &[]);
    // The bad line makes the exit status 1, but everything else is written.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[2], "{\"conversations\": [truncated");
    let annotated: Vec<Value> = [0, 1, 3, 4, 5].iter().map(|&i| serde_json::from_str(lines[i]).unwrap()).collect();
    let mut checked = 0;
    for (e, got) in expected("tiny-nemotron-rm").iter().zip(&annotated) {
        for turn in e["turns"].as_array().unwrap() {
            let k = turn["turn"].as_u64().unwrap() as usize;
            let raw: Vec<f64> = turn["raw"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            // The test means something only if no reference value sits on a rounding
            // edge. 1e-3 is absolute on purpose: labels are clamped to [0, 4], where our
            // scores are within close::TO_TRANSFORMERS * 4 = 4e-5 of the reference.
            for x in &raw[4..] {
                assert!((x.clamp(0.0, 4.0).fract() - 0.5).abs() > 1e-3, "{x} is too close to .5");
            }
            let want: Vec<String> =
                HELPSTEER.iter().zip(&raw[4..]).map(|(name, x)| format!("{name}:{}", steerlm(*x))).collect();
            assert_eq!(got["conversations"][k]["label"], json!(want.join(",")), "{}", e["id"]);
            checked += 1;
        }
        for (k, t) in got["conversations"].as_array().unwrap().iter().enumerate() {
            if t["from"] == "User" {
                assert_eq!(t["label"], Value::Null, "turn {k}");
            }
            assert_eq!(t["value"], e["record"]["conversations"][k]["value"]);
        }
    }
    assert_eq!(checked, 8);
    // A User label is set to null; the assistant turn is labelled as in line 0.
    let last: Value = serde_json::from_str(lines[6]).unwrap();
    assert_eq!(last["conversations"][0]["label"], Value::Null);
    assert_eq!(last["conversations"][1]["label"], annotated[0]["conversations"][1]["label"]);
}

#[test]
fn annotate_options_nine_names_floats_and_keeping_user_labels() {
    let dir = scratch("annotate_options");
    let input = write_input(&dir);
    let output = dir.join("out.jsonl");
    let out = annotate(&input, &output, &["--all-attributes", "--no-round", "--user-labels", "keep"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    let label = first["conversations"][1]["label"].as_str().unwrap().to_string();
    let raw = &expected("tiny-nemotron-rm")[0]["turns"][0]["raw"];
    let parts: Vec<(&str, f64)> = label
        .split(',')
        .map(|p| {
            let (n, v) = p.split_once(':').unwrap();
            (n, v.parse().unwrap())
        })
        .collect();
    assert_eq!(parts.len(), 9);
    assert_eq!(parts[0].0, "quality");
    for (i, (_, v)) in parts.iter().enumerate() {
        let want = raw[i].as_f64().unwrap().clamp(0.0, 4.0);
        // Absolute on [0, 4] (clamped): our f32 scores are within 4e-5 of the
        // reference there (close::TO_TRANSFORMERS); 1e-3 catches a wrong attribute.
        assert!((v - want).abs() < 1e-3, "{label}");
    }
    let last: Value = serde_json::from_str(lines[6]).unwrap();
    assert_eq!(last["conversations"][0]["label"], json!("helpfulness:-1"));
}

#[test]
fn annotate_resumes_after_a_kill_to_the_same_file() {
    let dir = scratch("annotate_resume");
    let input = write_input(&dir);
    let full = dir.join("full.jsonl");
    annotate(&input, &full, &["--chunk", "2"]);
    let whole = std::fs::read(&full).unwrap();
    let line_ends: Vec<usize> = whole.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1).collect();
    assert_eq!(line_ends.len(), 7);
    // Killed after 3 complete lines and half of the 4th; after 0 lines (half of
    // the first); after exactly 5 lines; and after everything.
    for cut in [line_ends[2] + 17, 9, line_ends[4], whole.len()] {
        let resumed = dir.join("resumed.jsonl");
        std::fs::write(&resumed, &whole[..cut]).unwrap();
        let out = annotate(&input, &resumed, &["--chunk", "2"]);
        assert!(out.status.code().is_some_and(|c| c <= 1), "{}", stderr(&out));
        assert_eq!(std::fs::read(&resumed).unwrap(), whole, "cut at byte {cut}");
    }
    // --overwrite starts over.
    let resumed = dir.join("resumed.jsonl");
    std::fs::write(&resumed, b"garbage\n").unwrap();
    annotate(&input, &resumed, &["--overwrite"]);
    assert_eq!(std::fs::read(&resumed).unwrap(), whole);
    // An output longer than the input is refused, not appended to or cut.
    let long = dir.join("long.jsonl");
    let mut text = whole.clone();
    text.extend_from_slice(b"x\npartial");
    std::fs::write(&long, &text).unwrap();
    let out = annotate(&input, &long, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has 8 lines but input"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&long).unwrap(), text, "left untouched");
}
