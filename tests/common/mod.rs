//! Helpers for the CLI tests: the real binary, scratch directories, fixtures.
#![allow(dead_code)]

pub mod pipeline;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tiny-nemotron-rm"
);

/// Run `reward-worker` with `args`; logs off so stderr holds only errors.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reward-worker"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("the reward-worker binary runs")
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

/// The fixture's expected lines: `record` and reference `raw` per assistant turn.
pub fn expected() -> Vec<serde_json::Value> {
    std::fs::read_to_string(format!("{FIXTURE}/expected.jsonl"))
        .expect("read expected.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("expected.jsonl is JSON"))
        .collect()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
