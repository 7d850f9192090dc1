//! Workloads (f) and (g) of `make bench-serve`: requests that arrive the way
//! training loops send them, through the service with the prefix cache on and
//! off in the same run.
//!
//! - (f) GRPO groups whose responses arrive one by one, each its own request,
//!   at seeded random times over a window, groups interleaved: a group's
//!   responses rarely meet in one batch, so only a cache computes its prompt once.
//! - (g) multi-turn rollouts: conversations growing to `turns` assistant turns,
//!   each step (the whole history, every assistant turn rated) its own request,
//!   sent when the previous step's answer is back.
//!
//! Reported per run: useful tokens/s, p50/p99 latency, tokens computed against
//! the unique tokens (distinct prefixes: the floor), the hit rate, the bytes
//! the cache holds against its bound and the process's peak resident memory.

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reward_worker::engine::{PreparedRecord, Preparer, ScoreOptions};

use super::workload::{text, tokens_per_word, Rng};

/// (f): `groups` x `group_size` records and the second each is sent at, over `window` seconds.
pub fn grpo_arrivals(
    preparer: &Preparer,
    groups: usize,
    group_size: usize,
    window: f64,
    seed: u64,
) -> (Vec<Value>, Vec<f64>) {
    let per_word = tokens_per_word(preparer);
    let mut rng = Rng::new(seed ^ 0xF);
    let mut sends: Vec<(f64, Value)> = Vec::new();
    for _ in 0..groups {
        let prompt_tokens = rng.range(300, 1000);
        let prompt = text(&mut rng, prompt_tokens, per_word);
        for _ in 0..group_size {
            let response_tokens = rng.range(16, 300);
            let response = text(&mut rng, response_tokens, per_word);
            let at = window * (rng.next() % 1_000_000) as f64 / 1e6;
            sends.push((
                at,
                json!({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}),
            ));
        }
    }
    sends.sort_by(|a, b| a.0.total_cmp(&b.0));
    sends.into_iter().map(|(t, r)| (r, t)).unzip()
}

/// (g): `conversations` rollouts, each as its `turns` growing steps.
pub fn growing(preparer: &Preparer, conversations: usize, turns: usize, seed: u64) -> Vec<Vec<Value>> {
    let per_word = tokens_per_word(preparer);
    let mut rng = Rng::new(seed ^ 0x6);
    (0..conversations)
        .map(|_| {
            let mut messages = Vec::new();
            (0..turns)
                .map(|_| {
                    let user = rng.range(20, 120);
                    messages.push(json!({"role": "user", "content": text(&mut rng, user, per_word)}));
                    let answer = rng.range(60, 250);
                    messages.push(json!({"role": "assistant", "content": text(&mut rng, answer, per_word)}));
                    json!({ "messages": messages })
                })
                .collect()
        })
        .collect()
}

/// Distinct prefixes of every scored prefix of `records` (each counted once
/// at its position): what any engine must compute at the least.
pub fn unique_tokens(preparer: &Preparer, records: &[&Value]) -> usize {
    let mut seen = std::collections::HashSet::new();
    for r in records {
        let prepared: PreparedRecord = preparer.prepare(r, ScoreOptions::default()).expect("the workload is valid");
        for seq in prepared.sequences {
            for &(token, prefix) in &seq.probes {
                let mut path = seq.tokens[..prefix as usize].to_vec();
                path.push(token);
                for end in 1..=path.len() {
                    seen.insert(path[..end].to_vec());
                }
            }
        }
    }
    seen.len()
}

pub fn useful_tokens(preparer: &Preparer, records: &[&Value]) -> usize {
    records.iter().map(|r| preparer.prepare(r, ScoreOptions::default()).expect("valid").useful_tokens()).sum()
}

/// Latencies and the wall time of one streaming run.
pub struct StreamRun {
    pub seconds: f64,
    pub latencies: Vec<f64>,
    pub failures: usize,
}

async fn post(client: &reqwest::Client, url: &str, record: &Value) -> (f64, bool) {
    let sent = Instant::now();
    let answer =
        client.post(url).json(&json!({"conversations": [record]})).timeout(Duration::from_secs(600)).send().await;
    let ok = match answer {
        Ok(r) if r.status().is_success() => {
            r.json::<Value>().await.ok().is_some_and(|v| v["results"][0]["turns"].as_array().is_some())
        }
        _ => false,
    };
    (sent.elapsed().as_secs_f64(), ok)
}

/// (f): every record sent at its time, whether or not earlier ones are answered.
pub async fn drive_arrivals(client: &reqwest::Client, url: &str, records: &[Value], at: &[f64]) -> StreamRun {
    let started = Instant::now();
    let tasks: Vec<_> = records
        .iter()
        .zip(at)
        .map(|(record, &at)| {
            let (client, url, record) = (client.clone(), url.to_string(), record.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(started + Duration::from_secs_f64(at))).await;
                post(&client, &url, &record).await
            })
        })
        .collect();
    collect(started, tasks).await
}

/// (g): one task per conversation, each step sent when the last one is answered.
pub async fn drive_growing(client: &reqwest::Client, url: &str, conversations: &[Vec<Value>]) -> StreamRun {
    let started = Instant::now();
    let tasks: Vec<_> = conversations
        .iter()
        .map(|steps| {
            let (client, url, steps) = (client.clone(), url.to_string(), Arc::new(steps.clone()));
            tokio::spawn(async move {
                let mut out = Vec::new();
                for step in steps.iter() {
                    out.push(post(&client, &url, step).await);
                }
                out
            })
        })
        .collect();
    let mut run = StreamRun { seconds: 0.0, latencies: Vec::new(), failures: 0 };
    for task in tasks {
        for (latency, ok) in task.await.expect("a client task does not panic") {
            run.latencies.push(latency);
            run.failures += !ok as usize;
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    run
}

async fn collect(started: Instant, tasks: Vec<tokio::task::JoinHandle<(f64, bool)>>) -> StreamRun {
    let mut run = StreamRun { seconds: 0.0, latencies: Vec::new(), failures: 0 };
    for task in tasks {
        let (latency, ok) = task.await.expect("a client task does not panic");
        run.latencies.push(latency);
        run.failures += !ok as usize;
    }
    run.seconds = started.elapsed().as_secs_f64();
    run
}

/// Peak resident memory of this process since the last [`reset_peak_memory`], in bytes.
pub fn peak_memory() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Start counting the peak resident memory again (Linux: `5` > `/proc/self/clear_refs`).
pub fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
