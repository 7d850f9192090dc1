//! `annotate` appends to its own output under an exclusive lock: a second run
//! on the same output is refused, a resumed run checks that the kept lines
//! belong to the input it is given, bad lines (not UTF-8, over the byte limit)
//! are written through byte for byte, and a pipe works as the input.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The fixture records (labelled assistant turns), a line that is not UTF-8,
/// one over the byte limit used below, and the records again.
fn input_lines() -> Vec<Vec<u8>> {
    let records: Vec<Vec<u8>> =
        expected("tiny-nemotron-rm").iter().map(|e| e["record"].to_string().into_bytes()).collect();
    let mut long = expected("tiny-nemotron-rm")[0]["record"].clone();
    long["conversations"][0]["value"] = json!("padding ".repeat(400));
    let mut lines = records.clone();
    lines.push(b"{\"conversations\": [{\"from\": \"User\", \"value\": \"caf\xe9\"}]}".to_vec());
    lines.push(long.to_string().into_bytes());
    lines.extend(records);
    lines
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect()
}

fn input_bytes() -> Vec<u8> {
    join(&input_lines())
}

const LIMIT: &str = "2000";

fn args<'a>(input: &'a str, output: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["annotate", "--model", FIXTURE, "--dtype", "f32", "--max-line-bytes", LIMIT];
    args.extend_from_slice(&["--input", input, "--output", output]);
    args.extend_from_slice(extra);
    args
}

fn annotate(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    run(&args(path_str(input), path_str(output), extra))
}

fn setup(name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let dir = scratch(name);
    let input = dir.join("in.jsonl");
    std::fs::write(&input, input_bytes()).unwrap();
    let full = dir.join("full.jsonl");
    let out = annotate(&input, &full, &["--chunk", "3"]);
    assert_eq!(out.status.code(), Some(1), "two bad lines: {}", stderr(&out));
    let whole = std::fs::read(&full).unwrap();
    (dir, input, whole)
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect()
}

#[test]
fn bad_lines_are_written_through_byte_for_byte_and_resumed_across() {
    let (dir, input, whole) = setup("resume_bad_lines");
    let (ins, outs) = (input_bytes(), whole.clone());
    let (ins, outs) = (lines(&ins), lines(&outs));
    assert_eq!(outs.len(), 12);
    assert_eq!(outs[5], ins[5], "the line that is not UTF-8");
    assert_eq!(outs[6], ins[6], "the line over --max-line-bytes");
    assert!(ins[6].len() > 2000);
    let labelled: Value = serde_json::from_slice(outs[7]).unwrap();
    assert!(labelled["conversations"][1]["label"].as_str().unwrap().starts_with("helpfulness:"));
    // Killed inside the over-long line, and just after it: resumes to the same bytes.
    let starts: Vec<usize> =
        std::iter::once(0).chain(whole.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1)).collect();
    for cut in [starts[6] + 1500, starts[7], starts[5] + 3] {
        let resumed = dir.join("resumed.jsonl");
        std::fs::write(&resumed, &whole[..cut]).unwrap();
        let out = annotate(&input, &resumed, &["--chunk", "3"]);
        let bad_lines_left = cut < starts[7];
        assert_eq!(out.status.code(), Some(i32::from(bad_lines_left)), "{}", stderr(&out));
        assert_eq!(std::fs::read(&resumed).unwrap(), whole, "cut at byte {cut}");
    }
}

#[test]
fn a_resumed_run_on_a_changed_input_is_refused_naming_the_line() {
    let (dir, input, whole) = setup("resume_changed");
    let kept = dir.join("kept.jsonl");
    let partial =
        [join(&lines(&whole)[..3].iter().map(|l| l.to_vec()).collect::<Vec<_>>()), b"{\"conver".to_vec()].concat();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut lines = input_lines();
        let mut record: Value = serde_json::from_slice(&lines[1]).unwrap();
        f(&mut record);
        lines[1] = record.to_string().into_bytes();
        let path = dir.join("changed.jsonl");
        std::fs::write(&path, join(&lines)).unwrap();
        path
    };
    // The second record's text changed: line 2 no longer belongs.
    let changed = edit(&|r| r["conversations"][0]["value"] = json!("another question"));
    std::fs::write(&kept, &partial).unwrap();
    let out = annotate(&changed, &kept, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 2 does not belong to input"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&kept).unwrap(), partial, "the output is left as it was, partial line included");
    // Only a label differs: labels are what annotate writes, so the line belongs.
    let relabelled = edit(&|r| r["conversations"][1]["label"] = json!("anything"));
    let out = annotate(&relabelled, &kept, &["--chunk", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read(&kept).unwrap(), whole);
    // A shorter input than the output: refused, nothing cut.
    let short = dir.join("short.jsonl");
    std::fs::write(&short, join(&input_lines()[..4])).unwrap();
    let out = annotate(&short, &kept, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("has 12 lines but input"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&kept).unwrap(), whole);
    // --overwrite starts over whatever the output holds.
    std::fs::write(&kept, b"not from this input\n").unwrap();
    let out = annotate(&input, &kept, &["--overwrite", "--chunk", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read(&kept).unwrap(), whole);
}

#[test]
fn a_pipe_as_input_is_read_once() {
    let (dir, _, whole) = setup("resume_pipe");
    let output = dir.join("piped.jsonl");
    let out = run_cli_bytes(&args("/dev/stdin", path_str(&output), &[]), &input_bytes());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read(&output).unwrap(), whole);
    // Resumed from a pipe: the kept lines are checked against the piped input, then it continues.
    let cut = lines(&whole)[..4].iter().map(|l| l.len() + 1).sum::<usize>() + 5;
    std::fs::write(&output, &whole[..cut]).unwrap();
    let out = run_cli_bytes(&args("-", path_str(&output), &[]), &input_bytes());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read(&output).unwrap(), whole);
}

#[test]
fn a_second_run_on_the_same_output_is_refused_while_the_first_holds_it() {
    let (dir, input, whole) = setup("resume_concurrent");
    let output = dir.join("out.jsonl");
    let input_text = input_bytes();
    let mut first = spawn_cli(&args("/dev/stdin", path_str(&output), &["--chunk", "1"]));
    let mut stdin = first.stdin.take().unwrap();
    let split = lines(&input_text)[..2].iter().map(|l| l.len() + 1).sum::<usize>();
    stdin.write_all(&input_text[..split]).unwrap();
    stdin.flush().unwrap();
    // The first run holds the lock once it has written a line; it then waits for more input.
    let started = Instant::now();
    while std::fs::read(&output).map(|b| b.is_empty()).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(300), "the first run never wrote a line");
        std::thread::sleep(Duration::from_millis(50));
    }
    for extra in [&[][..], &["--overwrite"][..]] {
        let second = annotate(&input, &output, extra);
        assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
        assert!(stderr(&second).contains("locked by another run"), "{}", stderr(&second));
    }
    stdin.write_all(&input_text[split..]).unwrap();
    drop(stdin);
    let out = first.wait_with_output().unwrap();
    assert_no_crash(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read(&output).unwrap(), whole, "every line once, in order");
    // The lock went with the first run: a re-run finds nothing left to do.
    let again = annotate(&input, &output, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(std::fs::read(&output).unwrap(), whole);
}
