//! `--dtype auto` (the default) picks bf16 only where the CPU computes it
//! natively, and says so at start-up.

mod common;

use common::*;
use reward_worker::config::dtype::{cpu_has_native_bf16, flags_have_native_bf16};
use std::process::{Command, Stdio};

fn score_log(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_reward-worker"))
        .args(["score", "--model", FIXTURE, "--input", "examples/conversations.jsonl", "--output", "/dev/null"])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn auto_follows_the_cpu_flags_and_logs_why() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    assert_eq!(cpu_has_native_bf16(), flags_have_native_bf16(&cpuinfo));
    let log = score_log(&[]);
    if cpu_has_native_bf16() {
        assert!(log.contains("decoder dtype bf16 (auto: this CPU computes bf16 natively"), "{log}");
    } else {
        assert!(log.contains("decoder dtype f32 (auto: this CPU has no native bf16"), "{log}");
    }
    assert!(score_log(&["--dtype", "f32"]).contains("decoder dtype f32 (asked for)"));
}

#[test]
fn explicit_bf16_warns_only_where_it_is_slow() {
    let log = score_log(&["--dtype", "bf16"]);
    assert_eq!(log.contains("bf16 matmul runs at well under"), !cpu_has_native_bf16(), "{log}");
}
