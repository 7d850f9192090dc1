//! The command line never destroys a file: an output that is an input (by
//! device and inode) is refused, a failed run (bad model, empty input, full
//! disk) leaves the earlier output in place and no temporary file behind, a
//! device is written straight through, and a closed output pipe ends the run
//! quietly. Every run is checked for panics and signals (`assert_no_crash`).

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const GOOD: &str =
    r#"{"conversations": [{"from": "User", "value": "What is 2 + 2?"}, {"from": "Assistant", "value": "4"}]}"#;

fn records(n: usize) -> String {
    (0..n).map(|i| GOOD.replace("2 + 2", &format!("{i} + 2")) + "\n").collect()
}

/// Files in `dir`, to check that no temporary file is left.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn refused(out: &std::process::Output, what: &str, other: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    let err = stderr(out);
    assert!(err.contains(&format!("{what} ")) && err.contains(&format!("is the same file as {other}")), "{err}");
}

#[test]
fn an_output_that_is_an_input_is_refused_whatever_its_spelling() {
    let dir = scratch("files_same");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, records(3)).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink(&input, dir.join("link.jsonl")).unwrap();
    std::fs::hard_link(&input, dir.join("hard.jsonl")).unwrap();
    let spellings = [input.clone(), dir.join("link.jsonl"), dir.join("hard.jsonl"), dir.join("sub/../in.jsonl")];
    for output in &spellings {
        let out = run(&["score", "--input", path_str(&input), "--output", path_str(output)]);
        refused(&out, "output", "input");
        assert!(stderr(&out).contains(path_str(&input)) && stderr(&out).contains(path_str(output)), "{}", stderr(&out));
    }
    // annotate --overwrite on its own input; eval with the pairs as cache; state file = output.
    let out = run(&["annotate", "--input", path_str(&input), "--output", path_str(&input), "--overwrite"]);
    refused(&out, "output", "input");
    let out = run(&["eval", "--pairs", path_str(&input), "--cache", path_str(&dir.join("link.jsonl"))]);
    refused(&out, "cache", "pairs");
    let out = run(&["eval", "--pairs", path_str(&input), "--output", path_str(&dir.join("hard.jsonl"))]);
    refused(&out, "report", "pairs");
    let state = dir.join("state.json");
    let args = ["--normalize", "running", "--running-state", path_str(&state), "--output", path_str(&state)];
    let out = run(&[&["score", "--input", path_str(&input)][..], &args[..]].concat());
    refused(&out, "running state", "output");
    // Stdout appended to the input (`score --input f >> f`) would read its own output forever.
    let appended = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_reward-worker"))
        .args(["score", "--input", path_str(&input)])
        .env("RUST_LOG", "error")
        .stdout(Stdio::from(appended))
        .output()
        .unwrap();
    assert_no_crash(&out);
    refused(&out, "output", "input");
    assert_eq!(std::fs::read_to_string(&input).unwrap(), records(3), "the input is untouched");
}

#[test]
fn a_failed_run_leaves_the_earlier_output_and_no_temporary_file() {
    let dir = scratch("files_failed");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, records(40)).unwrap();
    let prev = dir.join("prev.jsonl");
    std::fs::write(&prev, "earlier results\n").unwrap();
    let before = names(&dir);
    let out = run(&["score", "--input", path_str(&input), "--output", path_str(&prev), "--model", "/typo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/typo does not exist"), "{}", stderr(&out));
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = run(&["score", "--input", path_str(&empty), "--output", path_str(&prev)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
    std::fs::remove_file(&empty).unwrap();
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), "earlier results\n");
    // A model whose config reads but whose weights do not load: annotate creates
    // no output and leaves an existing one as it was.
    let broken = copy_model("tiny-nemotron-rm");
    std::fs::write(broken.path().join("model.safetensors"), b"not a checkpoint").unwrap();
    for output in [dir.join("new.jsonl"), prev.clone()] {
        let args = ["annotate", "--model", path_str(broken.path()), "--input", path_str(&input)];
        let out = run(&[&args[..], &["--output", path_str(&output), "--overwrite"]].concat());
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("not a valid safetensors file"), "{}", stderr(&out));
    }
    assert_eq!(names(&dir), before, "no output created");
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), "earlier results\n");

    // A write error on a regular file (here a file-size limit of 4 KiB, where a
    // full disk would give ENOSPC) ends the run with exit 2, nothing replaced.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reward-worker"));
    cmd.args(["score", "--input", path_str(&input), "--output", path_str(&prev), "--chunk", "4"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's limit.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 4096, rlim_max: 4096 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_no_crash(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot write output") && stderr(&out).contains("prev.jsonl"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), "earlier results\n");
    assert_eq!(names(&dir), before, "no temporary file is left behind");

    // A good run replaces it, through a symbolic link to it too (the link stays).
    std::os::unix::fs::symlink(&prev, dir.join("link.jsonl")).unwrap();
    let out = run(&["score", "--input", path_str(&input), "--output", path_str(&dir.join("link.jsonl"))]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&prev).unwrap().lines().count(), 40);
    assert!(std::fs::symlink_metadata(dir.join("link.jsonl")).unwrap().file_type().is_symlink());
}

#[test]
fn a_full_device_ends_the_run_with_exit_2_and_never_hangs() {
    let dir = scratch("files_dev_full");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, records(300)).unwrap();
    for command in ["score", "annotate"] {
        let out = run(&[command, "--input", path_str(&input), "--output", "/dev/full", "--chunk", "8"]);
        assert_eq!(out.status.code(), Some(2), "{command}: {}", stderr(&out));
        assert!(stderr(&out).contains("/dev/full") && stderr(&out).contains("No space left"), "{}", stderr(&out));
    }
    // /dev/null is a device too: written straight through, never replaced.
    let out = run(&["score", "--input", path_str(&input), "--output", "/dev/null"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

#[test]
fn a_closed_output_pipe_ends_the_run_quietly() {
    for command in ["score", "annotate"] {
        let mut child = spawn_cli(&[command, "--input", "/dev/stdin", "--output", "-", "--chunk", "1"]);
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(records(1).as_bytes()).unwrap();
        stdin.flush().unwrap();
        // Read one line, then close the pipe, as `| head -1` does.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert!(serde_json::from_str::<Value>(&first).is_ok(), "{first}");
        drop(stdout);
        // More input: its output has nowhere to go.
        let _ = stdin.write_all(records(50).as_bytes());
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert_no_crash(&out);
        assert_eq!(out.status.code(), Some(0), "{command}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{command}: quiet, like Unix tools");
    }
}

#[test]
fn one_bad_byte_is_one_bad_record_and_a_bom_is_skipped() {
    let mut input = b"\xEF\xBB\xBF".to_vec();
    for i in 0..401 {
        if i == 299 {
            input.extend_from_slice(b"{\"conversations\": [{\"from\": \"User\", \"value\": \"caf\xe9\"}]}\n");
        } else {
            input.extend_from_slice(records(1).as_bytes());
        }
    }
    let out = run_cli_bytes(&["score"], &input);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 401, "every good record is written");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        if i == 299 {
            assert_eq!(line["error"]["code"], "invalid_utf8");
            assert!(line["error"]["message"].as_str().unwrap().contains("line 300"), "{line}");
        } else {
            assert!(line["turns"].is_array(), "{line}");
        }
    }
}

#[test]
fn a_pipe_works_wherever_a_file_does() {
    let dir = scratch("files_pipe");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, records(5)).unwrap();
    let from_file = run(&["score", "--input", path_str(&input)]);
    let from_pipe = run_cli(&["score", "--input", "/dev/stdin"], &records(5));
    assert_eq!(from_pipe.status.code(), Some(0), "{}", stderr(&from_pipe));
    assert_eq!(json_lines(&from_file), json_lines(&from_pipe));
    let pairs = r#"{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "subset": "alpacaeval-easy"}"#;
    let out = run_cli(&["eval", "--pairs", "/dev/stdin"], &format!("{pairs}\n{pairs}\n"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["pairs"], 2);
}
