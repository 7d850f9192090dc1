//! Loading with tp=4 holds about one copy of the model, not four: each rank
//! reads only its slices from the shared mmap. Measured as the peak resident
//! size (ru_maxrss, from wait4) of a `reward-worker score` child process on a
//! random model of 170 MB, tp=4 against tp=1.

mod common;

use common::random_model::{write_random_model, Shape};
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Peak resident bytes of `reward-worker score --model dir ARGS` on one record.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
fn peak_rss(dir: &std::path::Path, args: &[&str]) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reward-worker"))
        .args(["score", "--model", path_str(dir), "--threads", "1"])
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let record =
        r#"{"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]}"#;
    child.stdin.take().unwrap().write_all(record.as_bytes()).unwrap();
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
        usage
    };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "score {args:?} failed: {status}");
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn tp4_loading_peaks_near_one_copy_of_the_model() {
    let dir = scratch("memory-model");
    let shape = Shape { layers: 4, hidden: 1024, heads: 16, kv_heads: 4, ffn: 4096 };
    write_random_model(&dir, shape, &fixture("tiny-nemotron-rm").join("tokenizer.json"));
    let model = shape.bytes();
    let one = peak_rss(&dir, &[]);
    let four = peak_rss(&dir, &["--tp", "4"]);
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!("model {:.0} MB; peak RSS tp=1 {:.0} MB, tp=4 {:.0} MB", mb(model), mb(one), mb(four));
    // Four full copies would add 3 x 170 MB; slices add only per-rank buffers.
    assert!(four < one + model / 2, "tp=4 peaked at {:.0} MB, tp=1 at {:.0} MB", mb(four), mb(one));
}
