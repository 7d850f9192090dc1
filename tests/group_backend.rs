//! `--backend nccl` where it cannot run: a clear start-up error (exit status 2),
//! never a panic or a hang. The NCCL path is compiled in by default; this
//! machine has no GPU, so the furthest it gets is loading libnccl.

mod common;

use common::*;
use std::process::{Command, Stdio};

fn score_nccl(libnccl: Option<&str>, extra: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reward-worker"));
    cmd.args(["score", "--model", FIXTURE, "--backend", "nccl"]).args(extra).env("RUST_LOG", "error");
    cmd.env_remove("RANK").env_remove("SLURM_PROCID").stdin(Stdio::null());
    if let Some(path) = libnccl {
        cmd.env("REWARD_WORKER_LIBNCCL", path);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn missing_nccl_is_a_clear_start_up_error() {
    let (code, err) = score_nccl(Some("/nonexistent/libnccl.so.2"), &["--tp", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("reward-worker: error: cannot start the worker group: --backend nccl: NCCL is not available on this machine (tried /nonexistent/libnccl.so.2: "),
        "{err}"
    );
    assert!(err.contains("or use --backend threads"), "{err}");
}

#[test]
fn nccl_without_a_gpu_is_a_clear_start_up_error() {
    // Where libnccl loads (the torch wheel ships it) the message is about the
    // device; where it does not, about NCCL. Either way: exit 2, one clear line.
    for extra in [&[][..], &["--tp", "2", "--pp", "2"][..]] {
        let (code, err) = score_nccl(None, extra);
        assert_eq!(code, 2, "{err}");
        let device = "--backend nccl needs GPUs (found NCCL ";
        let missing = "--backend nccl: NCCL is not available on this machine";
        assert!(err.contains(device) || err.contains(missing), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn threads_is_the_default_backend_on_the_cpu() {
    let record = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let out = run_cli(&["score", "--model", FIXTURE, "--tp", "2"], record);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["turns"][0]["turn"], 1);
    let out = run_cli(&["score", "--model", FIXTURE, "--tp", "2", "--comm-timeout", "0"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--comm-timeout must be a positive number of seconds, got 0"), "{}", stderr(&out));
}
