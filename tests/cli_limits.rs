//! Limits before work and clear refusals: absurd options are refused with exit
//! 2 naming the option and its range, a line over the byte limit is rejected
//! without being tokenised (memory stays small whatever the line), and numbers
//! that overflow are per-record `non_finite_score` errors, never `null`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Read;
use std::process::{Command, Stdio};

const GOOD: &str =
    r#"{"conversations": [{"from": "User", "value": "What is 2 + 2?"}, {"from": "Assistant", "value": "4"}]}"#;

#[test]
fn absurd_options_are_refused_naming_the_option_and_its_range() {
    let dir = scratch("limits_options");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, format!("{GOOD}\n")).unwrap();
    let input = path_str(&input);
    let cases: &[(&[&str], &str, &str)] = &[
        (&["score", "--chunk", "0"], "--chunk", "1..=65536"),
        (&["score", "--chunk", "1000000000000000"], "--chunk", "1..=65536"),
        (&["score", "--batch-tokens", "0"], "--batch-tokens", "1..=16777216"),
        (&["score", "--batch-tokens", "99999999999"], "--batch-tokens", "1..=16777216"),
        (&["score", "--threads", "0"], "--threads", "1..=1024"),
        (&["score", "--threads", "100000"], "--threads", "1..=1024"),
        (&["score", "--threads=-3"], "--threads", "1..=1024"),
        (&["score", "--max-line-bytes", "0"], "--max-line-bytes", "64..=1073741824"),
        (&["annotate", "--output", "/dev/null", "--chunk", "0"], "--chunk", "1..=65536"),
        (&["eval", "--pairs", "p.jsonl", "--chunk", "0"], "--chunk", "1..=65536"),
        (&["bench", "--repeat", "0"], "--repeat", "1..=1000"),
        (&["bench", "--warmup", "99999"], "--warmup", "0..=1000"),
        (&["tune-weights", "--cache", "c.jsonl", "--folds", "1"], "--folds", "2..=1000"),
    ];
    for (args, option, range) in cases {
        let mut args = args.to_vec();
        if args[0] != "tune-weights" && args[0] != "eval" {
            args.extend_from_slice(&["--input", input]);
        }
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(option) && err.contains(range), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// Run the binary and measure its peak resident memory (wait4's rusage).
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives the rusage
fn run_measured(args: &[&str], stdin: Vec<u8>) -> (std::process::Output, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reward-worker"))
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(&stdin);
    });
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stdout = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).unwrap();
        b
    });
    let stderr = std::thread::spawn(move || {
        let mut b = Vec::new();
        err.read_to_end(&mut b).unwrap();
        b
    });
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: wait4 on our own child's pid, writing into locals we own.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    feeder.join().unwrap();
    use std::os::unix::process::ExitStatusExt;
    let output = std::process::Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert_no_crash(&output);
    (output, usage.ru_maxrss as u64 * 1024)
}

#[test]
fn a_line_over_the_byte_limit_is_rejected_untokenised_in_bounded_memory() {
    let huge = json!({"conversations": [{"from": "User", "value": "word ".repeat(8 << 20)},
                                        {"from": "Assistant", "value": "ok"}]});
    let input = format!("{GOOD}\n{huge}\n{GOOD}\n").into_bytes();
    assert!(input.len() > 40 << 20);
    let (out, peak) = run_measured(&["score"], input);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["turns"].is_array() && lines[2]["turns"].is_array());
    assert_eq!(lines[1]["error"]["code"], "context_length_exceeded");
    let message = lines[1]["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 2 has 41943") && message.contains("not tokenised"), "{message}");
    // Tokenising it would take gigabytes; skipping it keeps the process near its idle size.
    assert!(peak < 1 << 30, "peak resident memory {} MiB", peak >> 20);

    // The limit is bytes, checked before tokens: 2,000 bytes fit the context in
    // tokens but not --max-line-bytes 1000.
    let medium = json!({"conversations": [{"from": "User", "value": "word ".repeat(400)},
                                          {"from": "Assistant", "value": "ok"}]});
    let out = run_cli(&["score", "--max-line-bytes", "1000"], &format!("{medium}\n"));
    assert_eq!(json_lines(&out)[0]["error"]["code"], "context_length_exceeded");
    assert!(stdout(&out).contains("more than the 1000"), "{}", stdout(&out));
    let out = run_cli(&["score"], &format!("{medium}\n"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn with_truncate_left_a_line_longer_than_the_context_is_taken_up_to_16_contexts() {
    // 100 user turns of about 4 KB and one answer: 400 KB, more than the 320 KiB
    // bound of one 4096-token context, well within 16.
    let turn = json!({"from": "User", "value": "The quick brown fox jumps over the lazy dog. ".repeat(90)});
    let mut turns = vec![turn; 100];
    turns.push(json!({"from": "Assistant", "value": "ok"}));
    let record = json!({ "conversations": turns }).to_string() + "\n";
    assert!(record.len() > 4096 * 64 + 65536);
    let out = run_cli(&["score"], &record);
    assert_eq!(json_lines(&out)[0]["error"]["code"], "context_length_exceeded");
    assert!(stdout(&out).contains("not tokenised"), "{}", stdout(&out));
    let out = run_cli(&["score", "--truncate", "left"], &record);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = &json_lines(&out)[0];
    assert_eq!((line["truncated"].clone(), line["turns"][0]["turn"].clone()), (json!(true), json!(100)));
}

#[test]
fn overflowing_numbers_are_non_finite_score_errors_never_null() {
    let dir = scratch("limits_numbers");
    let huge = ["1e308"; 9].join(",");
    let out = run_cli(&["score", "--weights", &huge], &format!("{GOOD}\n{GOOD}\n"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stdout(&out).contains("null"), "{}", stdout(&out));
    for line in json_lines(&out) {
        assert_eq!(line["error"]["code"], "non_finite_score", "{line}");
        assert!(line["error"]["message"].as_str().unwrap().contains("weighted sum"), "{line}");
    }
    // A calibration that overflows names the attribute; a clip would otherwise hide it.
    let calibration = dir.join("calibration.json");
    std::fs::write(&calibration, json!({"scale": vec![1e308; 9], "shift": vec![0.0; 9]}).to_string()).unwrap();
    let args = ["score", "--calibration", path_str(&calibration), "--clip", "-5,5"];
    let out = run_cli(&args, &format!("{GOOD}\n"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line: Value = json_lines(&out).remove(0);
    assert_eq!(line["error"]["code"], "non_finite_score");
    assert!(line["error"]["message"].as_str().unwrap().starts_with("calibrated "), "{line}");
    // eval: a pair whose rewards overflow is an error of that pair, not a silent loss.
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(&pairs, json!({"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}).to_string() + "\n").unwrap();
    let out = run(&["eval", "--pairs", path_str(&pairs), "--weights", &huge]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(report["errors"][0]["message"].as_str().unwrap().starts_with("non_finite_score"), "{report}");
}
