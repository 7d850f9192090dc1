//! `Idempotency-Key`, in-process with a model whose forward pass waits at a
//! gate, so "while the first request runs" is a fact rather than a race:
//! retries with the key wait for the same computation, a finished key is
//! replayed, another body with the key is 422, and a first request whose
//! client went away still runs to its end for the retry to find.

mod common;

use common::server::{gated_scorer, Gate};
use reqwest::StatusCode;
use reward_worker::reward::{PresetBook, RewardConfig, RewardPipeline};
use reward_worker::scheduler::QueueConfig;
use reward_worker::server::{self, Listener, ServeConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Metrics are process-wide, so these tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Service {
    url: String,
    gate: Arc<Gate>,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Service {
    let gate = Gate::new(false);
    let pipeline = RewardPipeline::new(RewardConfig::default(), PresetBook::builtin()).unwrap();
    let mut config = ServeConfig::new(pipeline);
    config.queue = QueueConfig { batch_tokens: 8192, queue_limit: 16, prepare_threads: 1 };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let scorer = gated_scorer(Arc::clone(&gate));
    let shutdown = async move {
        let _ = stopped.await;
    };
    let done = tokio::spawn(server::run(scorer, vec![Listener::Tcp(listener)], shutdown, config));
    Service { url, gate, stop: Some(stop), done }
}

impl Service {
    async fn stop(mut self) {
        self.gate.set(true);
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.done).await.expect("the server drains").unwrap().unwrap();
    }
}

fn body(text: &str) -> Value {
    json!({"conversations": [{"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": text}]}]})
}

type Answer = (StatusCode, Option<String>, String);

fn send(url: &str, key: &str, text: &str, timeout: Option<Duration>) -> JoinHandle<reqwest::Result<Answer>> {
    let (url, payload, key) = (format!("{url}/v1/rewards"), body(text), key.to_owned());
    tokio::spawn(async move {
        let mut client = reqwest::Client::builder();
        if let Some(t) = timeout {
            client = client.timeout(t);
        }
        let response = client.build()?.post(url).header("Idempotency-Key", key).json(&payload).send().await?;
        let status = response.status();
        let replayed = response.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
        Ok((status, replayed, response.text().await?))
    })
}

/// A counter from /metrics (0 when absent).
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

async fn until_metric(url: &str, name: &str, at_least: f64) {
    for _ in 0..600 {
        if metric(url, name).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never reached {at_least}");
}

const JOINED: &str = "reward_worker_idempotency_requests_total{outcome=\"joined\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_with_a_key_wait_for_the_first_computation_and_are_replayed_after() {
    let _serial = SERIAL.lock().await;
    let service = start().await;
    let joined = metric(&service.url, JOINED).await;
    let first = send(&service.url, "key-1", "Hi there.", None);
    service.gate.entered(1).await;
    let retries: Vec<_> = (0..2).map(|_| send(&service.url, "key-1", "Hi there.", None)).collect();
    until_metric(&service.url, JOINED, joined + 2.0).await;

    // Another body under the key: refused at once, while the first still runs.
    let (status, _, text) = send(&service.url, "key-1", "Something else.", None).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("idempotency_key_reused") && text.contains("key-1"), "{text}");

    service.gate.set(true);
    let (status, replayed, want) = first.await.unwrap().unwrap();
    assert_eq!((status, replayed), (StatusCode::OK, None), "{want}");
    for retry in retries {
        let (status, replayed, text) = retry.await.unwrap().unwrap();
        assert_eq!((status, replayed.as_deref()), (StatusCode::OK, Some("true")));
        assert_eq!(text, want, "the retry got the first computation's reply");
    }
    let (status, replayed, text) = send(&service.url, "key-1", "Hi there.", None).await.unwrap().unwrap();
    assert_eq!((status, replayed.as_deref(), text.as_str()), (StatusCode::OK, Some("true"), want.as_str()));
    assert_eq!(service.gate.calls(), 1, "four requests with one key, one forward pass");

    // Another key is computed on its own.
    send(&service.url, "key-2", "Hi there.", None).await.unwrap().unwrap();
    assert_eq!(service.gate.calls(), 2);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_request_whose_client_left_still_answers_its_retry() {
    let _serial = SERIAL.lock().await;
    let service = start().await;
    let joined = metric(&service.url, JOINED).await;
    let gone = send(&service.url, "key-left", "Bye.", Some(Duration::from_millis(300)));
    service.gate.entered(1).await;
    assert!(gone.await.unwrap().unwrap_err().is_timeout(), "the client gave up");
    let retry = send(&service.url, "key-left", "Bye.", None);
    until_metric(&service.url, JOINED, joined + 1.0).await;
    service.gate.set(true);
    let (status, replayed, text) = retry.await.unwrap().unwrap();
    assert_eq!((status, replayed.as_deref()), (StatusCode::OK, Some("true")), "{text}");
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert!(reply["results"][0]["turns"][0]["reward"].is_number(), "{reply}");
    assert_eq!(service.gate.calls(), 1, "the retry did not compute again");

    let bad = reqwest::Client::new()
        .post(format!("{}/v1/rewards", service.url))
        .header("Idempotency-Key", "k".repeat(300))
        .json(&body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.text().await.unwrap().contains("invalid_idempotency_key"));
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_waits_for_the_first_within_its_own_deadline() {
    let _serial = SERIAL.lock().await;
    let service = start().await;
    let first = send(&service.url, "key-slow", "Slow.", None);
    service.gate.entered(1).await;
    let retry = reqwest::Client::new()
        .post(format!("{}/v1/rewards", service.url))
        .header("Idempotency-Key", "key-slow")
        .header("x-request-timeout", "0.2")
        .json(&body("Slow."))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(retry.text().await.unwrap().contains("deadline_exceeded"));
    service.gate.set(true);
    let (status, replayed, _) = first.await.unwrap().unwrap();
    assert_eq!((status, replayed), (StatusCode::OK, None));
    assert_eq!(service.gate.calls(), 1);
    service.stop().await;
}
