//! Reading, tokenising and writing overlap the model (reader and writer
//! threads): the output is the same, line for line and error for error,
//! whatever the chunk size, for `score` (streamed and whole-input
//! normalisation) and `annotate`.

mod common;

use common::*;
use serde_json::{json, Value};

/// Good records of several shapes around every kind of bad line.
fn mixed_input() -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for (i, e) in expected("tiny-nemotron-rm").iter().enumerate() {
        let mut record = e["record"].clone();
        record["group"] = json!(i % 2);
        lines.push(record.to_string().into_bytes());
    }
    let bad: [&[u8]; 6] = [
        b"{not json",
        b"",
        b"{\"conversations\": [{\"from\": \"User\", \"value\": \"caf\xe9?\"}, {\"from\": \"Assistant\", \"value\": \"x\"}]}",
        br#"{"conversations": [{"from": "User", "value": "only a question"}], "group": 0}"#,
        br#"{"conversations": [{"from": "Narrator", "value": "x"}, {"from": "Assistant", "value": "y"}], "group": 1}"#,
        br#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
    ];
    let long = json!({"conversations": [{"from": "User", "value": "word ".repeat(300)},
                                        {"from": "Assistant", "value": "ok"}], "group": 0});
    let mut out = Vec::new();
    for round in 0..3 {
        for (i, line) in lines.iter().enumerate() {
            out.extend_from_slice(line);
            out.push(b'\n');
            out.extend_from_slice(bad[(i + round) % bad.len()]);
            out.push(b'\n');
        }
        out.extend_from_slice(long.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// (index, error or raw scores per turn) for each output line.
fn summary(out: &std::process::Output) -> Vec<(u64, Value, Vec<Vec<f64>>)> {
    json_lines(out)
        .iter()
        .map(|l| {
            let raw = l["turns"].as_array().map_or(vec![], |t| t.iter().map(|t| floats(&t["raw"])).collect());
            (l["index"].as_u64().unwrap(), l["error"].clone(), raw)
        })
        .collect()
}

fn same(a: &[(u64, Value, Vec<Vec<f64>>)], b: &[(u64, Value, Vec<Vec<f64>>)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.0, &x.1), (y.0, &y.1), "{what}: index and error");
        assert_eq!(x.2.len(), y.2.len(), "{what}");
        for (p, q) in x.2.iter().zip(&y.2) {
            let diff = close::rel_diff(q, p);
            assert!(diff < close::SAME_MATH, "{what}: line {} differs by {diff} (relative)", x.0);
        }
    }
}

#[test]
fn score_output_is_the_same_whatever_the_chunk_size() {
    let input = mixed_input();
    let base = ["score", "--model", FIXTURE, "--dtype", "f32", "--max-line-bytes", "1000"];
    let reference = run_cli_bytes(&[&base[..], &["--chunk", "1000"]].concat(), &input);
    assert_eq!(reference.status.code(), Some(1), "{}", stderr(&reference));
    let want = summary(&reference);
    let n = input.split(|&b| b == b'\n').count() - 1;
    assert_eq!(want.len(), n);
    assert!(want.iter().enumerate().all(|(i, l)| l.0 == i as u64));
    let codes: Vec<&str> = want.iter().filter_map(|l| l.1["code"].as_str()).collect();
    for code in ["invalid_json", "empty_line", "invalid_utf8", "no_assistant_turn", "unknown_role"] {
        assert!(codes.contains(&code), "{code} in {codes:?}");
    }
    assert_eq!(codes.iter().filter(|&&c| c == "context_length_exceeded").count(), 3);
    for (chunk, budget) in [("1", "8192"), ("2", "8192"), ("7", "64")] {
        let out = run_cli_bytes(&[&base[..], &["--chunk", chunk, "--batch-tokens", budget]].concat(), &input);
        same(&want, &summary(&out), &format!("--chunk {chunk} --batch-tokens {budget}"));
    }
    // Group normalisation holds the whole input: still one line per input line, in order.
    // Without the prefix cache: a chunk of one reads what the chunk before kept,
    // which moves raw scores by rounding (SAME_MATH), and the normalisation's
    // 1/std scales that past this check's bound (tests/prefix_cache.rs checks
    // the cache's raw scores).
    let group = [&base[..], &["--normalize", "group", "--prefix-cache-bytes", "0"]].concat();
    let whole = run_cli_bytes(&[&group[..], &["--chunk", "1000"]].concat(), &input);
    let small = run_cli_bytes(&[&group[..], &["--chunk", "1"]].concat(), &input);
    same(&summary(&whole), &summary(&small), "group normalisation");
    let rewards = |out: &std::process::Output| -> Vec<f64> {
        json_lines(out)
            .iter()
            .flat_map(|l| l["turns"].as_array().cloned().unwrap_or_default())
            .map(|t| t["reward"].as_f64().unwrap())
            .collect()
    };
    // Normalised by each group's standard deviation, which scales the raw
    // scores' rounding up by 1/std: hence 10x the raw scores' bound.
    let diff = close::rel_diff(&rewards(&small), &rewards(&whole));
    eprintln!("group-normalised rewards: largest relative difference {diff:.2e}");
    assert!(diff < 10.0 * close::SAME_MATH, "group-normalised rewards differ by {diff} (relative)");
}

#[test]
fn annotate_output_is_the_same_whatever_the_chunk_size() {
    let dir = scratch("overlap_annotate");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, mixed_input()).unwrap();
    let mut outputs = Vec::new();
    for chunk in ["1", "5", "1000"] {
        let output = dir.join(format!("out{chunk}.jsonl"));
        let out = run(&[
            "annotate",
            "--model",
            FIXTURE,
            "--dtype",
            "f32",
            "--max-line-bytes",
            "1000",
            "--chunk",
            chunk,
            "--input",
            path_str(&input),
            "--output",
            path_str(&output),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        outputs.push(std::fs::read(&output).unwrap());
    }
    assert_eq!(outputs[0], outputs[2]);
    assert_eq!(outputs[1], outputs[2]);
    let lines = outputs[0].split(|&b| b == b'\n').count() - 1;
    assert_eq!(lines, mixed_input().split(|&b| b == b'\n').count() - 1);
}
