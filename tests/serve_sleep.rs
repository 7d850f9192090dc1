//! Sleep and wake (co-location), as users see them: the in-process handle
//! over a model whose forward waits at a gate (so "a sleep asked for while a
//! batch runs" is a fact, not a race), and `reward-worker serve` as a child
//! process over a generated model of a few hundred MB, whose resident memory
//! (VmRSS from /proc/PID/status) is read around `/sleep?level=2` and `/wake_up`.

mod common;

use common::random_model::{write_random_model, Shape};
use common::server::{gated_scorer, ChildServer, Gate};
use common::*;
use reward_worker::engine::SleepLevel;
use reward_worker::scheduler::{Input, QueueConfig, QueueError, Request, SleepTag, Worker};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn record(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": text}]})
}

fn request(text: &str) -> Request {
    Request { inputs: vec![Input::Record(record(text))], ..Request::default() }
}

fn bits(raw: [f32; 9]) -> [u32; 9] {
    raw.map(f32::to_bits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_waits_for_the_running_batch_and_requests_wait_for_the_wake() {
    let gate = Gate::new(false);
    let config = QueueConfig { batch_tokens: 8192, queue_limit: 64, prepare_threads: 1 };
    let worker = Worker::start(gated_scorer(gate.clone()), config);
    let queue = worker.handle();

    // A batch is in the engine (its forward waits at the gate) when the sleep is asked for.
    let running = tokio::spawn({
        let queue = queue.clone();
        async move { queue.score(request("4.")).await }
    });
    gate.entered(1).await;
    let sleeping = tokio::spawn({
        let queue = queue.clone();
        async move { queue.sleep(SleepLevel::Two).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sleeping.is_finished(), "the sleep finished while a batch was running");
    assert!(!queue.sleep_status().sleeping);
    gate.set(true);
    let first = running.await.unwrap().expect("the running batch is answered, not lost");
    let before = first.results[0].as_ref().unwrap().turns[0].raw;
    let status = sleeping.await.unwrap().expect("the sleep happens after the batch");
    assert!(status.sleeping);
    assert_eq!(status.level, Some(SleepLevel::Two));
    assert_eq!(status.tags, vec!["weights", "kv_cache"]);

    // Asleep: requests are admitted and wait; none reaches the model.
    let calls = gate.calls();
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.score(request("4.")).await }
    });
    let short = Request { deadline: Some(Instant::now() + Duration::from_millis(200)), ..request("four") };
    let expired = queue.score(short).await;
    assert_eq!(expired.unwrap_err(), QueueError::DeadlineExceeded, "a deadline still applies while asleep");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a request was answered while the model slept");
    assert_eq!(gate.calls(), calls, "a forward pass ran while the model slept");
    assert_eq!(queue.sleep(SleepLevel::One).await.unwrap().level, Some(SleepLevel::Two), "already deeper: no-op");

    // `kv_cache` alone leaves the weights asleep; `weights` brings them back.
    let status = queue.wake_up(&[SleepTag::KvCache]).await.unwrap();
    assert_eq!((status.sleeping, status.tags.clone()), (true, vec!["weights"]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    let status = queue.wake_up(&[SleepTag::Weights]).await.unwrap();
    assert!(!status.sleeping && status.level.is_none());
    let after = waiting.await.unwrap().expect("the request that waited is answered after the wake");
    let after = after.results[0].as_ref().unwrap().turns[0].raw;
    assert_eq!(bits(before), bits(after), "scores after a level-2 wake differ: {before:?} vs {after:?}");

    // Level 1 (on the CPU the weights stay in host memory) and back, the same.
    queue.sleep(SleepLevel::One).await.unwrap();
    let status = queue.wake_up(&[]).await.unwrap();
    assert!(!status.sleeping);
    let again = queue.score(request("4.")).await.unwrap();
    assert_eq!(bits(before), bits(again.results[0].as_ref().unwrap().turns[0].raw));
    worker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_asleep_answers_what_was_admitted() {
    let gate = Gate::new(true);
    let worker = Worker::start(gated_scorer(gate), QueueConfig::default());
    let queue = worker.handle();
    queue.sleep(SleepLevel::Two).await.unwrap();
    let waiting = queue.submit(request("4.")).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(move || worker.shutdown()).await.unwrap();
    let reply = waiting.wait().await.expect("admitted before the shutdown: answered");
    assert!(reply.results[0].is_ok());
    assert_eq!(queue.sleep(SleepLevel::One).await.unwrap_err().to_string(), "the worker is shutting down");
}

/// VmRSS of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

async fn scores(client: &reqwest::Client, url: &str, texts: &[&str]) -> Vec<Value> {
    scores_with(client, url, texts, true).await
}

/// With `prefix_cache: false` the request neither reads nor fills the prefix cache.
async fn scores_with(client: &reqwest::Client, url: &str, texts: &[&str], prefix_cache: bool) -> Vec<Value> {
    let body = json!({
        "conversations": texts.iter().map(|t| record(t)).collect::<Vec<_>>(),
        "prefix_cache": prefix_cache,
    });
    let response = client.post(format!("{url}/v1/rewards")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer["results"].as_array().unwrap().iter().map(|r| r["turns"].clone()).collect()
}

async fn metric(client: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
    line.unwrap_or_else(|| panic!("no {name} in {text}")).split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn post(client: &reqwest::Client, url: &str) -> Value {
    let response = client.post(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_two_gives_the_weights_memory_back_and_the_wake_scores_the_same() {
    let dir = scratch("serve-sleep-model");
    let shape = Shape { layers: 6, hidden: 1024, heads: 16, kv_heads: 4, ffn: 4096 };
    write_random_model(&dir, shape, &fixture("tiny-nemotron-rm").join("tokenizer.json"));
    let weights = shape.bytes();
    let server = ChildServer::start(&[
        "serve",
        "--model",
        path_str(&dir),
        "--port",
        "0",
        "--dtype",
        "f32",
        "--threads",
        "2",
        "--sleep-level",
        "2",
    ]);
    let (client, url, pid) = (reqwest::Client::new(), server.url.clone(), server.child.id());
    let texts = ["4.", "It is 4, since 2 + 2 = 4.", "Five."];
    let before = scores(&client, &url, &texts).await;
    let awake = rss(pid);
    let cached = metric(&client, &url, "reward_worker_prefix_cache_bytes").await;
    assert!(cached > 0.0, "the first request fills the prefix cache");

    let slept = post(&client, &format!("{url}/sleep")).await; // --sleep-level 2
    assert_eq!((slept["is_sleeping"].clone(), slept["level"].clone()), (json!(true), json!(2)), "{slept}");
    let asleep = rss(pid);
    let is: Value = client.get(format!("{url}/is_sleeping")).send().await.unwrap().json().await.unwrap();
    assert_eq!(is["is_sleeping"], json!(true));
    let ready = client.get(format!("{url}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "asleep is still ready: requests are queued");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["sleeping"], json!(true));
    let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "reward_worker_sleeping 2"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l == "reward_worker_prefix_cache_bytes 0"),
        "a sleep drops the prefix cache: {metrics}"
    );

    // A request sent now waits, and is answered after the wake.
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { scores(&client, &url, &texts).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "answered while asleep");
    let woke = post(&client, &format!("{url}/wake_up?tags=weights&tags=kv_cache")).await;
    assert_eq!(woke["is_sleeping"], json!(false), "{woke}");
    let waited = pending.await.unwrap();
    let woken = rss(pid);
    // The request that waited read nothing from the prefix cache (the sleep
    // dropped it; had the index kept entries the ranks no longer hold, it
    // would have failed), so it is the first request's computation again. A
    // request that reads cached keys and values sums in another order, so
    // the comparison after the wake leaves the cache out.
    let after = scores_with(&client, &url, &texts, false).await;

    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "weights {:.0} MB; RSS awake {:.0} MB, asleep {:.0} MB (-{:.0} MB), woken {:.0} MB; sleep {:.3} s, wake {:.3} s",
        mb(weights),
        mb(awake),
        mb(asleep),
        mb(awake.saturating_sub(asleep)),
        mb(woken),
        slept["seconds"].as_f64().unwrap(),
        woke["seconds"].as_f64().unwrap()
    );
    assert!(
        awake.saturating_sub(asleep) as f64 >= 0.8 * weights as f64,
        "level 2 released {:.0} MB of {:.0} MB of weights",
        mb(awake.saturating_sub(asleep)),
        mb(weights)
    );
    assert!(
        woken.saturating_sub(asleep) as f64 >= 0.8 * weights as f64,
        "the wake brought back {:.0} MB of {:.0} MB of weights",
        mb(woken.saturating_sub(asleep)),
        mb(weights)
    );
    // The JSON of f32 scores is exact, so equal text is equal bits.
    assert_eq!(before, waited, "the request that waited was scored differently");
    assert_eq!(before, after, "scores after the wake differ");
    let bad = client.post(format!("{url}/sleep?level=3")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert!(bad["error"]["message"].as_str().unwrap().contains("got `3`"), "{bad}");
    let bad: Value = client.post(format!("{url}/wake_up?tags=kv")).send().await.unwrap().json().await.unwrap();
    assert_eq!(bad["error"]["code"], "invalid_tag", "{bad}");
}

#[test]
fn the_recipe_key_sets_the_default_sleep_level() {
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/cpu-demo.toml");
    let out = run(&["launch", recipe, "--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("--sleep-level 2"), "{}", stdout(&out));
    let out = run(&["serve", "--sleep-level", "3", "--port", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("sleep level must be 1"), "{}", stderr(&out));
}
