//! Hostile clients, in-process on 127.0.0.1 with raw sockets: slow headers and
//! bodies by the hundred while real requests are served, lying and oversize
//! `Content-Length`, `Expect: 100-continue` past the limit, a shutdown with
//! connections at every stage, the shutdown grace, and amplification (a
//! request whose cost after truncation is over the limit, a deadline that
//! stops the work it paid for). The model's forward waits at a gate where a
//! test needs "while the engine is busy" to be a fact.

mod common;

use common::server::{gated_scorer, Gate};
use reward_worker::reward::{PresetBook, RewardConfig, RewardPipeline};
use reward_worker::scheduler::QueueConfig;
use reward_worker::server::{self, Listener, ServeConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Metrics are process-wide, so these tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough never to be what ends a wait in these tests; short ones are set per test.
const LONG: Duration = Duration::from_secs(600);

struct Service {
    addr: String,
    gate: Arc<Gate>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<std::io::Result<()>>>,
}

fn config() -> ServeConfig {
    let pipeline = RewardPipeline::new(RewardConfig::default(), PresetBook::builtin()).unwrap();
    let mut config = ServeConfig::new(pipeline);
    config.queue = QueueConfig { batch_tokens: 8192, queue_limit: 1024, prepare_threads: 2 };
    config.header_timeout = LONG;
    config.body_timeout = LONG;
    config.shutdown_grace = LONG;
    config
}

async fn start(config: ServeConfig, open: bool) -> Service {
    let gate = Gate::new(open);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server::run(
        gated_scorer(Arc::clone(&gate)),
        vec![Listener::Tcp(listener)],
        async move {
            let _ = stopped.await;
        },
        config,
    ));
    Service { addr, gate, stop: Some(stop), done: Some(done) }
}

impl Service {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }

    /// Wait for `run` to return (a hang fails the test after a minute).
    async fn finished(&mut self) {
        let done = self.done.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), done).await.expect("run returns").unwrap().unwrap();
    }

    async fn stop(mut self) {
        self.gate.set(true);
        self.shutdown();
        self.finished().await;
    }
}

fn conversation(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": text}]})
}

async fn post(url: &str, body: &Value, timeout: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{url}/v1/rewards")).json(body);
    if let Some(t) = timeout {
        request = request.header("x-request-timeout", t);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A counter from /metrics (0 when absent).
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// Everything the server sends until it closes the connection (or `limit` passes).
async fn read_all(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One response's head and body (Content-Length framed), leaving the connection open.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(60), stream.read(&mut byte)).await.expect("a response").unwrap();
        assert!(n == 1, "the connection closed mid-response: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

fn rewards_head(length: usize, extra: &str) -> String {
    format!("POST /v1/rewards HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n")
}

/// Dribble `first`, then a byte every 200 ms, until the server closes the
/// connection; what it answered.
async fn slow_client(addr: String, first: String) -> String {
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(first.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let dribble = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut out)).await;
    dribble.abort();
    assert!(read.is_ok(), "the server never closed a slow connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_headers_and_bodies_by_the_hundred_time_out_while_real_requests_are_served() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.header_timeout = Duration::from_secs(1);
    config.body_timeout = Duration::from_secs(1);
    let service = start(config, true).await;
    let url = service.url();
    let headers_before = metric(&url, "reward_worker_client_timeouts_total{stage=\"headers\"}").await;
    let bodies_before = metric(&url, "reward_worker_client_timeouts_total{stage=\"body\"}").await;

    const EACH: usize = 120; // 240 slow connections at once
    let mut slow = Vec::new();
    for i in 0..EACH {
        let half_headers = format!("POST /v1/rewards HTTP/1.1\r\nHost: t\r\nX-Slow-{i}: ");
        slow.push(tokio::spawn(slow_client(service.addr.clone(), half_headers)));
        // A lying Content-Length: 200 promised, 50 sent, then a trickle.
        let half_body = rewards_head(200, "") + &"{".repeat(50);
        slow.push(tokio::spawn(slow_client(service.addr.clone(), half_body)));
    }
    // Real clients meanwhile: every one is answered.
    let real: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                post(&url, &json!({"conversations": [conversation(&format!("real {i}"))]}), None).await
            })
        })
        .collect();
    for r in real {
        let (status, answer) = r.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["results"][0]["turns"][0]["turn"], 1);
    }
    let mut body_timeouts = 0;
    for (i, s) in slow.into_iter().enumerate() {
        let answer = s.await.unwrap();
        if i % 2 == 1 {
            assert!(answer.starts_with("HTTP/1.1 408"), "a slow body gets 408: {answer}");
            assert!(answer.contains("body_timeout") && answer.contains("--body-timeout"), "{answer}");
            body_timeouts += 1;
        } else {
            assert!(!answer.contains("200 OK"), "{answer}");
        }
    }
    assert_eq!(body_timeouts, EACH);
    let headers = metric(&url, "reward_worker_client_timeouts_total{stage=\"headers\"}").await - headers_before;
    let bodies = metric(&url, "reward_worker_client_timeouts_total{stage=\"body\"}").await - bodies_before;
    assert!(headers >= EACH as f64, "{headers} header timeouts counted");
    assert_eq!(bodies, EACH as f64);
    // Still serving.
    let (status, _) = post(&url, &json!({"conversations": [conversation("after")]}), None).await;
    assert_eq!(status, 200);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversize_content_length_is_413_at_once_and_expect_never_gets_100_continue() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.max_body_bytes = 1000;
    let service = start(config, true).await;

    // A Content-Length over the limit with 10 bytes sent: answered without waiting
    // for the rest (the body timeout is 600 s here, so nothing else could end it).
    let mut stream = TcpStream::connect(&service.addr).await.unwrap();
    stream.write_all((rewards_head(100_000_000, "") + "0123456789").as_bytes()).await.unwrap();
    let answer = read_all(&mut stream, Duration::from_secs(60)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large") && answer.contains("100000000"), "{answer}");

    // Expect: 100-continue over the limit: 413 first, never 100 Continue.
    let mut stream = TcpStream::connect(&service.addr).await.unwrap();
    stream.write_all(rewards_head(5000, "Expect: 100-continue\r\n").as_bytes()).await.unwrap();
    let answer = read_all(&mut stream, Duration::from_secs(60)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");

    // Within the limit, Expect still works: 100 Continue, then the answer.
    let body = json!({"conversations": [conversation("expected")]}).to_string();
    let mut stream = TcpStream::connect(&service.addr).await.unwrap();
    stream.write_all(rewards_head(body.len(), "Expect: 100-continue\r\n").as_bytes()).await.unwrap();
    let mut first = [0u8; 25];
    stream.read_exact(&mut first).await.unwrap();
    assert!(first.starts_with(b"HTTP/1.1 100 Continue"), "{}", String::from_utf8_lossy(&first));
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.contains("200 OK") && answer.contains("\"results\""), "{answer}");

    // A chunked body over the limit is 413 too, once the limit is passed.
    let mut stream = TcpStream::connect(&service.addr).await.unwrap();
    let chunk = "a".repeat(600);
    let head = "POST /v1/rewards HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(format!("{head}258\r\n{chunk}\r\n258\r\n{chunk}\r\n").as_bytes()).await.unwrap();
    let answer = read_all(&mut stream, Duration::from_secs(60)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_answers_keep_alive_requests_503_closes_half_sent_ones_and_finishes_the_accepted() {
    let _serial = SERIAL.lock().await;
    let mut service = start(config(), false).await;
    let url = service.url();
    // A request in the engine (the forward waits at the gate).
    let running = {
        let url = url.clone();
        tokio::spawn(async move { post(&url, &json!({"conversations": [conversation("running")]}), None).await })
    };
    service.gate.entered(1).await;
    // A keep-alive connection that has had one answer.
    let mut keep_alive = TcpStream::connect(&service.addr).await.unwrap();
    keep_alive.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    assert!(read_response(&mut keep_alive).await.contains("200 OK"));
    // Half a head, and half a body.
    let mut half_head = TcpStream::connect(&service.addr).await.unwrap();
    half_head.write_all(b"POST /v1/rewards HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    let mut half_body = TcpStream::connect(&service.addr).await.unwrap();
    half_body.write_all((rewards_head(1000, "") + "{\"conversations\": ").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the server has read both

    service.shutdown();
    // The half-sent body is answered 503 at once (the body timeout is 600 s).
    let answer = read_all(&mut half_body, Duration::from_secs(60)).await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("shutting_down"), "{answer}");
    // A new request on the keep-alive connection: 503 shutting_down, then closed.
    let body = json!({"conversations": [conversation("late")]}).to_string();
    keep_alive.write_all((rewards_head(body.len(), "") + &body).as_bytes()).await.unwrap();
    let answer = read_all(&mut keep_alive, Duration::from_secs(60)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("shutting_down") && answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(service.done.as_ref().is_some_and(|d| !d.is_finished()), "the accepted request is still running");

    // The accepted request is answered; then the half-sent head is closed and run returns.
    service.gate.set(true);
    let (status, answer) = running.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    service.finished().await;
    let rest = read_all(&mut half_head, Duration::from_secs(60)).await;
    assert!(!rest.contains("200 OK"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shutdown_grace_bounds_a_request_that_never_finishes() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.shutdown_grace = Duration::from_millis(500);
    let mut service = start(config, false).await;
    let url = service.url();
    let stuck = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/rewards"))
            .json(&json!({"conversations": [conversation("stuck")]}))
            .send()
            .await
    });
    service.gate.entered(1).await;
    service.shutdown();
    // The forward never returns while the gate is shut; run returns anyway.
    service.finished().await;
    assert!(stuck.await.unwrap().is_err(), "the stuck request's connection was closed");
    service.gate.set(true); // let the engine thread end
}

fn many_turns(turns: usize) -> Value {
    let messages: Vec<Value> = (0..turns)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            json!({"role": role, "content": format!("turn {i}: some words to make the turn a few tokens long")})
        })
        .collect();
    json!({"messages": messages})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_over_the_token_limit_is_413_with_its_cost_before_any_forward() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.max_request_tokens = Some(20_000);
    let service = start(config, true).await;
    // 700 short turns, left truncation: each of the 350 rated turns would get its
    // own window, sharing nothing with the others.
    let big = json!({"conversations": [many_turns(700)], "truncate": "left"});
    let (status, error) = post(&service.url(), &big, Some("2")).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "too_many_tokens");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("the limit is 20000") && message.contains("--max-request-tokens"), "{message}");
    let cost: usize = message.split("cost ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(cost > 20_000, "{message}");
    assert_eq!(service.gate.calls(), 0, "refused before the engine");
    let (status, _) = post(&service.url(), &json!({"conversations": [conversation("innocent")]}), None).await;
    assert_eq!(status, 200);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_deadline_stops_the_forward_passes_it_paid_for() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.queue.batch_tokens = 512; // the big request is many forward batches
    let service = start(config, false).await;
    let url = service.url();
    let big = json!({"conversations": [many_turns(300)], "truncate": "left"});
    let (status, error) = {
        let url = url.clone();
        let request = tokio::spawn(async move { post(&url, &big, Some("1.5")).await });
        service.gate.entered(1).await; // its first group of batches is running
        request.await.unwrap()
    };
    assert_eq!(status, 504, "{error}");
    // The deadline passed while the first group ran: nothing more of it is computed.
    service.gate.set(true);
    let innocent = post(&url, &json!({"conversations": [conversation("innocent")]}), None).await;
    assert_eq!(innocent.0, 200, "{}", innocent.1);
    assert_eq!(service.gate.calls(), 2, "one group of the expired request, then the innocent one");
    // Nothing of it runs later either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.gate.calls(), 2);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_that_can_only_overflow_are_400_before_the_forward() {
    let _serial = SERIAL.lock().await;
    let service = start(config(), true).await;
    let body = json!({"conversations": [conversation("x")], "weights": vec![1e308; 9]});
    let (status, error) = post(&service.url(), &body, None).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "invalid_weights");
    assert!(error["error"]["message"].as_str().unwrap().contains("1e6"), "{error}");
    assert_eq!(service.gate.calls(), 0);
    service.stop().await;
}

async fn post_to(url: &str, route: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{url}{route}")).header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.body(body.to_owned()).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_role_rule_for_every_role_and_route() {
    let _serial = SERIAL.lock().await;
    let service = start(config(), true).await;
    let url = service.url();
    let record = |system: &str, user: &str, assistant: &str| {
        json!({"messages": [{"role": system, "content": "Be brief."}, {"role": user, "content": "Hi?"},
                            {"role": assistant, "content": "Hello."}]})
    };
    // Any case, every role, /v1/rewards and the chat route alike.
    for (system, user, assistant) in
        [("system", "user", "assistant"), ("System", "USER", "Assistant"), ("SYSTEM", "human", "gpt")]
    {
        let (status, answer) = post(&url, &json!({"conversations": [record(system, user, assistant)]}), None).await;
        assert_eq!(status, 200, "{system}/{user}/{assistant}: {answer}");
        let chat = json!({"model": "tiny-nemotron-rm", "messages": record(system, user, assistant)["messages"]});
        let (status, answer) = post_to(&url, "/v1/chat/completions", &chat.to_string(), &[]).await;
        assert_eq!(status, 200, "chat {system}/{user}/{assistant}: {answer}");
    }
    // The seed format takes the same names.
    let seed = json!({"conversations": [{"conversations": [{"from": "SYSTEM", "value": "s"}, {"from": "User", "value": "q"},
                                                          {"from": "GPT", "value": "a"}]}]});
    let (status, answer) = post(&url, &seed, None).await;
    assert_eq!(status, 200, "{answer}");
    // Two leading system messages: refused, naming the second, not one silently dropped.
    let two = json!({"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                                  {"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]});
    let (status, error) = post(&url, &json!({"conversations": [two]}), None).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("messages[1]: a second system message"), "{error}");
    let (status, error) = post(&url, &json!({"conversations": [record("robot", "user", "assistant")]}), None).await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("unknown_role")));
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decided_edge_cases_behave_as_the_readme_says() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.api_key = Some("sekret".into());
    let service = start(config, true).await;
    let url = service.url();
    let key = [("authorization", "Bearer sekret")];
    // The Bearer scheme is case-insensitive (RFC 7235).
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let header = format!("{scheme} sekret");
        let body = json!({"conversations": [conversation("k")]}).to_string();
        let (status, answer) = post_to(&url, "/v1/rewards", &body, &[("authorization", &header)]).await;
        assert_eq!(status, 200, "{scheme}: {answer}");
    }
    // Duplicate keys: the last one wins, as in Python's json and JavaScript's JSON.parse.
    let dup = r#"{"conversations": [{"messages": [{"role": "user", "content": "q"}]}],
                  "conversations": [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]}"#;
    let (status, answer) = post_to(&url, "/v1/rewards", dup, &key).await;
    assert_eq!(status, 200, "{answer}");
    // Chat `n`: 1 (or 1.0) only.
    let chat =
        |n: Value| json!({"model": "tiny-nemotron-rm", "n": n, "messages": conversation("a")["messages"]}).to_string();
    assert_eq!(post_to(&url, "/v1/chat/completions", &chat(json!(1.0)), &key).await.0, 200);
    let (status, error) = post_to(&url, "/v1/chat/completions", &chat(json!(2.0)), &key).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("`n` must be 1"), "{error}");
    // KServe: a request id that is not a string, a nesting that disagrees with the shape.
    let infer = |id: Value, data: Value| {
        json!({"id": id, "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [2, 2], "data": data},
                                    {"name": "sequence_lengths", "datatype": "INT64", "shape": [2, 1], "data": [2, 2]}]})
        .to_string()
    };
    let route = "/v2/models/reward_model/infer";
    let (status, answer) = post_to(&url, route, &infer(json!("r1"), json!([[1, 2], [3, 4]])), &key).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "r1");
    let (status, error) = post_to(&url, route, &infer(json!(7), json!([1, 2, 3, 4])), &key).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("`id` must be a string"), "{error}");
    let (status, error) = post_to(&url, route, &infer(json!("r2"), json!([[1, 2, 3], [4]])), &key).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("nested but not as its shape"), "{error}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_of_many_forward_batches_does_not_starve_the_others() {
    let _serial = SERIAL.lock().await;
    let mut config = config();
    config.queue.batch_tokens = 512; // the big request is many groups of forward batches
    let service = start(config, false).await;
    let url = service.url();
    let big = {
        let url = url.clone();
        let body = json!({"conversations": [many_turns(300)], "truncate": "left"});
        tokio::spawn(async move { post(&url, &body, None).await })
    };
    service.gate.entered(1).await; // its first group is in the forward
    let innocent = {
        let url = url.clone();
        tokio::spawn(async move { post(&url, &json!({"conversations": [conversation("innocent")]}), None).await })
    };
    for _ in 0..600 {
        let ready: Value = reqwest::get(format!("{url}/ready")).await.unwrap().json().await.unwrap();
        if ready["queue"]["waiting"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two passes: the big request's first group, then the innocent request
    // between its groups; its second group then waits at the gate.
    service.gate.allow(2);
    let (status, answer) = innocent.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    service.gate.entered(3).await;
    assert!(!big.is_finished(), "the innocent request was answered between the big one's groups");
    service.gate.set(true);
    let (status, answer) = big.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["turns"].as_array().unwrap().len(), 150);
    service.stop().await;
}
