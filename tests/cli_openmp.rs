//! The binary shortens libgomp's idle spin unless the user set OpenMP's wait
//! settings (see `short_openmp_spin` in src/main.rs), and scores the same either way.

mod common;

use common::*;
use std::process::{Command, Stdio};

/// stdout and the start-up log of `score` on the examples with `env` set
/// (and OpenMP's wait settings otherwise unset).
fn score(env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reward-worker"));
    cmd.args(["score", "--model", FIXTURE, "--input", "examples/conversations.jsonl"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GOMP_SPINCOUNT")
        .env_remove("OMP_WAIT_POLICY")
        .env("RUST_LOG", "reward_worker=debug")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    (stdout(&out), stderr(&out))
}

#[test]
fn the_spin_is_short_unless_the_user_chose_one() {
    let (shortened, log) = score(&[]);
    assert!(log.contains(r#"OpenMP spin count spin="10000""#), "{log}");
    let (chosen, log) = score(&[("GOMP_SPINCOUNT", "7")]);
    assert!(log.contains(r#"OpenMP spin count spin="7""#), "{log}");
    let (passive, log) = score(&[("OMP_WAIT_POLICY", "passive")]);
    assert!(log.contains(r#"spin="libgomp's default""#), "{log}");
    assert!(!shortened.is_empty());
    assert_eq!(shortened, chosen);
    assert_eq!(shortened, passive);
}
