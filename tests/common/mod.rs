//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod close;
pub mod pipeline;
pub mod random_model;
pub mod server;
pub mod words;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The reference models made with transformers (see tests/fixtures/README.md).
pub const FIXTURES: [&str; 5] =
    ["tiny-nemotron-rm", "tiny-mha-rot025", "tiny-gqa-odd-bias-legacy", "tiny-full-rotary-hd", "tiny-mha-4l-bias"];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The `expected.jsonl` lines of a fixture.
pub fn expected(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(name).join("expected.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Run the `reward-worker` binary with `args`, feeding `stdin`; logs off so
/// stderr holds only errors. Fails the test if the binary crashed.
pub fn run_cli(args: &[&str], stdin: &str) -> Output {
    run_cli_bytes(args, stdin.as_bytes())
}

/// [`run_cli`] with any bytes on stdin.
pub fn run_cli_bytes(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = spawn_cli(args);
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // A writer thread, so a binary that stops reading early cannot block the test.
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert_no_crash(&out);
    out
}

/// The binary started with piped stdin, stdout and stderr (logs off).
pub fn spawn_cli(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_reward-worker"))
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Fail the test if the binary panicked or was killed by a signal: no input,
/// option or stream, however hostile, may do either.
pub fn assert_no_crash(out: &Output) {
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "the binary panicked:\n{err}");
    assert!(out.status.signal().is_none(), "the binary was killed by signal {:?}:\n{err}", out.status.signal());
}

/// stdout of a CLI run as JSON lines.
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Copy a fixture model into a temp dir so a test can change one file of it.
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-nemotron-rm");

/// Run `reward-worker` with `args` and empty stdin.
pub fn run(args: &[&str]) -> Output {
    run_cli(args, "")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Distinct (position, prefix) pairs over every scored prefix of `records`,
/// counted by brute force: the floor of what any scheme must compute.
pub fn unique_tokens(records: &[reward_worker::engine::PreparedRecord]) -> usize {
    let mut seen = std::collections::HashSet::new();
    for seq in records.iter().flat_map(|r| &r.sequences) {
        for &(token, prefix) in &seq.probes {
            let mut path = seq.tokens[..prefix as usize].to_vec();
            path.push(token);
            for end in 1..=path.len() {
                seen.insert(path[..end].to_vec());
            }
        }
    }
    seen.len()
}

/// `records` parsed, rendered and tokenised with the default options.
pub fn prepare(
    scorer: &reward_worker::engine::Scorer,
    records: &[Value],
) -> Vec<reward_worker::engine::PreparedRecord> {
    records.iter().map(|r| scorer.prepare(r, reward_worker::engine::ScoreOptions::default()).unwrap()).collect()
}
