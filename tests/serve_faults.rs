//! Overload and faults, in-process with a model whose forward pass waits at a
//! gate, so "while the engine is busy" is a fact rather than a race: a full
//! queue answers 429 at once, a deadline gives 504 whether the request is
//! queued or running, a client that disconnects costs no forward pass, and a
//! shutdown answers everything already accepted.

mod common;

use common::server::{gated_scorer, Gate};
use reqwest::StatusCode;
use reward_worker::reward::{PresetBook, RewardConfig, RewardPipeline};
use reward_worker::scheduler::QueueConfig;
use reward_worker::server::{self, Listener, ServeConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

async fn start(queue_limit: usize) -> Service {
    let gate = Gate::new(false);
    let pipeline = RewardPipeline::new(RewardConfig::default(), PresetBook::builtin()).unwrap();
    let mut config = ServeConfig::new(pipeline);
    config.queue = QueueConfig { batch_tokens: 8192, queue_limit, prepare_threads: 1 };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let scorer = gated_scorer(Arc::clone(&gate));
    let done = tokio::spawn(server::run(
        scorer,
        vec![Listener::Tcp(listener)],
        async move {
            let _ = stopped.await;
        },
        config,
    ));
    Service { url, gate, stop: Some(stop), done }
}

fn body(text: &str) -> Value {
    json!({"conversations": [{"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": text}]}]})
}

fn send(url: &str, text: &str, timeout: Option<&str>) -> JoinHandle<reqwest::Result<(StatusCode, Value)>> {
    let (url, payload) = (format!("{url}/v1/rewards"), body(text));
    let timeout = timeout.map(str::to_owned);
    tokio::spawn(async move {
        let mut request = reqwest::Client::new().post(url).json(&payload);
        if let Some(t) = timeout {
            request = request.header("x-request-timeout", t);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.json().await?))
    })
}

async fn waiting(url: &str) -> u64 {
    let ready: Value = reqwest::get(format!("{url}/ready")).await.unwrap().json().await.unwrap();
    ready["queue"]["waiting"].as_u64().unwrap()
}

async fn until_waiting(url: &str, n: u64) {
    for _ in 0..600 {
        if waiting(url).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} requests never got queued");
}

/// A counter or gauge from /metrics (0 when absent).
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

impl Service {
    async fn stop(mut self) {
        self.gate.set(true);
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.done).await.expect("the server drains").unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_at_once_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let service = start(2).await;
    let running = send(&service.url, "first", None);
    service.gate.entered(1).await;
    let queued: Vec<_> = (0..2).map(|i| send(&service.url, &format!("queued {i}"), None)).collect();
    until_waiting(&service.url, 2).await;

    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/rewards", service.url))
        .json(&body("one too many"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_secs(5), "a refusal does not wait for the model");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "queue_full");
    assert!(error["error"]["message"].as_str().unwrap().contains("the limit is 2"), "{error}");

    // A burst while the queue is full: every request is refused, none hangs.
    let burst: Vec<_> = (0..10).map(|i| send(&service.url, &format!("burst {i}"), None)).collect();
    for r in burst {
        assert_eq!(r.await.unwrap().unwrap().0, StatusCode::TOO_MANY_REQUESTS);
    }
    service.gate.set(true);
    assert_eq!(running.await.unwrap().unwrap().0, StatusCode::OK);
    for r in queued {
        let (status, answer) = r.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["results"][0]["turns"][0]["turn"], 1);
    }
    assert_eq!(service.gate.calls(), 2, "the requests that waited together ran in one batch");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_is_answered_or_refused_never_dropped() {
    let _serial = SERIAL.lock().await;
    let service = start(4).await;
    service.gate.set(true);
    let burst: Vec<_> = (0..40).map(|i| send(&service.url, &format!("burst {i}"), None)).collect();
    let (mut ok, mut refused) = (0, 0);
    for r in burst {
        match r.await.unwrap().unwrap() {
            (StatusCode::OK, answer) => {
                assert_eq!(answer["results"].as_array().unwrap().len(), 1);
                ok += 1;
            }
            (StatusCode::TOO_MANY_REQUESTS, _) => refused += 1,
            (other, answer) => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(ok + refused, 40);
    assert!(ok >= 1);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_give_504_queued_or_running_and_expired_work_is_not_computed() {
    let _serial = SERIAL.lock().await;
    let service = start(16).await;
    let dropped_before = metric(&service.url, "reward_worker_requests_dropped_total{reason=\"deadline\"}").await;
    let running = send(&service.url, "running", Some("0.3"));
    service.gate.entered(1).await;
    let queued = send(&service.url, "queued", Some("0.2"));
    for r in [running, queued] {
        let (status, error) = r.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{error}");
        assert_eq!(error["error"]["code"], "deadline_exceeded");
    }
    let bad = send(&service.url, "bad header", Some("soon"));
    let (status, error) = bad.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"]["message"].as_str().unwrap().contains("x-request-timeout"));

    service.gate.set(true);
    let (status, _) = send(&service.url, "after", None).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(service.gate.calls(), 2, "the expired queued request never reached the model");
    let dropped = metric(&service.url, "reward_worker_requests_dropped_total{reason=\"deadline\"}").await;
    assert_eq!(dropped - dropped_before, 1.0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_costs_no_forward_pass() {
    let _serial = SERIAL.lock().await;
    let service = start(16).await;
    let label = "reward_worker_requests_dropped_total{reason=\"disconnected\"}";
    let dropped_before = metric(&service.url, label).await;
    let running = send(&service.url, "running", None);
    service.gate.entered(1).await;
    let impatient = send(&service.url, "gone", None);
    until_waiting(&service.url, 1).await;
    impatient.abort();
    let _ = impatient.await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the server sees the closed socket
    service.gate.set(true);
    assert_eq!(running.await.unwrap().unwrap().0, StatusCode::OK);
    let (status, _) = send(&service.url, "next", None).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(service.gate.calls(), 2, "only the running and the next request were computed");
    assert_eq!(metric(&service.url, label).await - dropped_before, 1.0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_answers_every_accepted_request_then_returns() {
    let _serial = SERIAL.lock().await;
    let mut service = start(16).await;
    let running = send(&service.url, "running", None);
    service.gate.entered(1).await;
    let queued: Vec<_> = (0..3).map(|i| send(&service.url, &format!("queued {i}"), None)).collect();
    until_waiting(&service.url, 3).await;
    let _ = service.stop.take().unwrap().send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Intake is closed: a new request is refused or cannot connect.
    let late = reqwest::Client::new()
        .post(format!("{}/v1/rewards", service.url))
        .json(&body("late"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    if let Ok(response) = late {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(!service.done.is_finished(), "the server waits for the accepted requests");
    service.gate.set(true);
    assert_eq!(running.await.unwrap().unwrap().0, StatusCode::OK);
    for r in queued {
        assert_eq!(r.await.unwrap().unwrap().0, StatusCode::OK);
    }
    tokio::time::timeout(Duration::from_secs(30), service.done).await.expect("run returns").unwrap().unwrap();
}
