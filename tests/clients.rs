//! The real Python clients (`openai`, `tritonclient[http]`, `requests`,
//! installed into .venv by scripts/setup.sh) against `reward-worker serve` on
//! every shipped fixture: each score they read equals what `reward-worker
//! score` prints for the same record (1e-5). The scripts are in tests/clients/.

mod common;

use common::server::ChildServer;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let check = Command::new(&python).args(["-c", "import openai, tritonclient.http, requests, numpy"]).output();
    match check {
        Ok(out) if out.status.success() => python,
        _ => panic!(
            "{} cannot import openai, tritonclient.http, requests and numpy: run scripts/setup.sh (make test does)",
            python.display()
        ),
    }
}

/// What `score` says about a fixture's records, in the form the scripts read.
fn expected_from_score(name: &str) -> PathBuf {
    let cases = expected(name);
    let records: Vec<Value> = cases.iter().map(|c| c["record"].clone()).collect();
    let input: String = records.iter().map(|r| format!("{r}\n")).collect();
    let out = run_cli(&["score", "--model", path_str(&fixture(name)), "--dtype", "f32"], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let mut turns = Vec::new();
    for (case, line) in cases.iter().zip(&lines) {
        for want in case["turns"].as_array().unwrap() {
            let scored = line["turns"].as_array().unwrap().iter().find(|t| t["turn"] == want["turn"]).unwrap();
            turns.push(json!({"text": want["text"], "input_ids": want["input_ids"],
                              "raw": scored["raw"], "reward": scored["reward"]}));
        }
    }
    let dir = scratch(&format!("clients-{name}"));
    let path = dir.join("expected.json");
    let data = json!({"model": name, "records": records, "score_lines": lines, "turns": turns});
    std::fs::write(&path, data.to_string()).unwrap();
    path
}

fn run_script(script: &str, server: &ChildServer, expected: &Path, extra: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = Command::new(python())
        .arg(dir.join(script))
        .args(["--url", &server.url, "--expected", path_str(expected)])
        .args(extra)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{script} failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{}",
        server.stderr()
    );
    eprint!("{stdout}");
}

fn each_fixture(script: &str, key: Option<&str>) {
    for name in FIXTURES {
        let expected = expected_from_score(name);
        let model = fixture(name);
        let mut args = vec!["serve", "--model", path_str(&model), "--port", "0", "--dtype", "f32"];
        let server = match key {
            Some(key) => {
                args.extend(["--api-key-env", "REWARD_WORKER_TEST_KEY"]);
                let server = ChildServer::start_with_env(&args, &[("REWARD_WORKER_TEST_KEY", key)]);
                run_script(script, &server, &expected, &["--api-key", key]);
                server
            }
            None => {
                let server = ChildServer::start(&args);
                run_script(script, &server, &expected, &[]);
                server
            }
        };
        drop(server);
    }
}

#[test]
fn openai_client_reads_chat_completions_equal_to_score() {
    each_fixture("test_openai.py", Some("test-key-123"));
}

#[test]
fn tritonclient_reads_v2_rewards_equal_to_score() {
    each_fixture("test_triton.py", None);
}

#[test]
fn requests_reads_rewards_and_get_reward_equal_to_score() {
    each_fixture("test_requests.py", None);
}
