//! `reward-worker serve` and `launch` as users start them (a child process on
//! port 0): bad requests each get a 4xx with a JSON error naming the problem
//! and the next request is still served; the API key, body and request limits;
//! a Unix socket; SIGTERM answers what was accepted and exits 0; recipes.

mod common;

use common::server::ChildServer;
use common::*;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::io::{Read, Write};

const KEY: &str = "s3cret-key";

/// (what, url, body, status, error code, words the message must contain)
type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, &'a str, &'a str);

fn conversation(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": text}]})
}

fn strict_server() -> ChildServer {
    let model = fixture("tiny-nemotron-rm");
    ChildServer::start_with_env(
        &[
            "serve",
            "--model",
            path_str(&model),
            "--port",
            "0",
            "--api-key-env",
            "RW_KEY",
            "--max-conversations",
            "4",
            "--max-body-bytes",
            "65536",
            "--served-model-name",
            "nvidia/nemotron-4-340b-reward",
        ],
        &[("RW_KEY", KEY)],
    )
}

async fn post(client: &Client, url: &str, body: impl Into<reqwest::Body>, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = client.post(url).header("content-type", "application/json").body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// A good request right after a bad one is still answered.
async fn still_serving(client: &Client, base: &str) {
    let body = json!({"conversations": [conversation("fine")]}).to_string();
    let (status, answer) = post(client, &format!("{base}/v1/rewards"), body, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn bad_requests_get_4xx_naming_the_problem_and_the_service_goes_on() {
    let server = strict_server();
    let base = server.url.clone();
    let client = Client::new();
    let rewards = format!("{base}/v1/rewards");
    let chat = format!("{base}/v1/chat/completions");
    let long = "word ".repeat(6000);
    let cases: Vec<Case> = vec![
        ("malformed JSON", &rewards, b"{\"conversations\": [".to_vec(), 400, "invalid_json", "not valid JSON"),
        ("missing field", &rewards, b"{}".to_vec(), 400, "invalid_request", "`conversations`"),
        ("wrong type", &rewards, br#"{"conversations": "all of them"}"#.to_vec(), 400, "invalid_request", "must be an array"),
        ("wrong type in a record", &rewards,
         json!({"conversations": [{"messages": [{"role": "user", "content": 3}]}]}).to_string().into_bytes(),
         400, "invalid_record", "conversations[0]: messages[0].content must be a string"),
        ("unknown role", &rewards,
         json!({"conversations": [conversation("ok"), {"messages": [{"role": "robot", "content": "beep"}]}]}).to_string().into_bytes(),
         400, "unknown_role", "conversations[1]: messages[0].role: unknown role `robot`"),
        ("no assistant turn", &rewards,
         json!({"conversations": [{"messages": [{"role": "user", "content": "anyone?"}]}]}).to_string().into_bytes(),
         400, "no_assistant_turn", "conversations[0]"),
        ("over the context", &rewards, json!({"conversations": [conversation(&long)]}).to_string().into_bytes(),
         400, "context_length_exceeded", "the model's context is 4096"),
        ("too many conversations", &rewards,
         json!({"conversations": vec![conversation("x"); 5]}).to_string().into_bytes(),
         400, "too_many_items", "the limit is 4 per request"),
        ("body over the limit", &rewards, json!({"conversations": [conversation(&"y".repeat(70_000))]}).to_string().into_bytes(),
         413, "payload_too_large", "65536 bytes"),
        ("unknown model", &chat, json!({"model": "gpt-5", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}).to_string().into_bytes(),
         404, "model_not_found", "unknown model `gpt-5`"),
        ("invalid UTF-8", &rewards, b"{\"conversations\": [\"\xff\xfe\"]}".to_vec(), 400, "invalid_utf8", "offset 20"),
        ("unknown field", &rewards, json!({"conversations": [conversation("x")], "wieghts": [1]}).to_string().into_bytes(),
         400, "unknown_field", "`wieghts`"),
        ("chat ending with the user", &chat,
         json!({"model": "tiny-nemotron-rm", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]}).to_string().into_bytes(),
         400, "last_message_not_assistant", "got role `user`"),
        ("unknown preset", &rewards, json!({"conversations": [conversation("x")], "preset": "nope"}).to_string().into_bytes(),
         400, "unknown_preset", "nope"),
    ];
    for (what, url, body, status, code, needle) in cases {
        let (got, error) = post(&client, url, body, Some(KEY)).await;
        assert_eq!(got.as_u16(), status, "{what}: {error}");
        assert_eq!(error["error"]["code"], code, "{what}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: `{message}` does not say `{needle}`");
        still_serving(&client, &base).await;
    }
}

#[tokio::test]
async fn kserve_shape_and_datatype_mistakes_are_400_in_the_v2_error_shape() {
    let server = strict_server();
    let client = Client::new();
    let infer = format!("{}/v2/models/reward_model/infer", server.url);
    let cases = [
        (
            json!({"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [2, 3], "data": [1, 2, 3]},
                           {"name": "sequence_lengths", "datatype": "INT64", "shape": [2, 1], "data": [3, 3]}]}),
            "shape [2, 3] has 6 elements but its data has 3",
        ),
        (
            json!({"inputs": [{"name": "tokens", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]},
                           {"name": "sequence_lengths", "datatype": "INT64", "shape": [1], "data": [2]}]}),
            "datatype FP32",
        ),
        (
            json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]}),
            "shape [B, 1] or [B]",
        ),
        (
            json!({"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 2], "data": [1, 99999]},
                           {"name": "sequence_lengths", "datatype": "INT64", "shape": [1, 1], "data": [2]}]}),
            "outside the vocabulary",
        ),
        (
            json!({"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}),
            "unknown input `pixels`",
        ),
    ];
    for (body, needle) in cases {
        let (status, error) = post(&client, &infer, body.to_string(), Some(KEY)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        let message = error["error"].as_str().expect("KServe errors are a string");
        assert!(message.contains(needle), "`{message}` does not say `{needle}`");
    }
    let good = json!({"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [1, 1],
                                  "data": ["<extra_id_1>User\nhi\n<extra_id_1>Assistant\nhello\n<extra_id_2>"]}]});
    let (status, answer) = post(&client, &infer, good.to_string(), Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([1, 9]));
}

#[tokio::test]
async fn the_api_key_guards_every_route_but_health() {
    let server = strict_server();
    let client = Client::new();
    let body = json!({"conversations": [conversation("x")]}).to_string();
    let rewards = format!("{}/v1/rewards", server.url);
    let (status, error) = post(&client, &rewards, body.clone(), None).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_api_key")));
    let (status, error) = post(&client, &rewards, body.clone(), Some("wrong")).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_api_key")));
    for path in ["/ready", "/metrics", "/v1/models", "/v2/health/ready"] {
        let status = client.get(format!("{}{path}", server.url)).send().await.unwrap().status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    for path in ["/health", "/v2/health/live"] {
        let status = client.get(format!("{}{path}", server.url)).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let models: Value =
        client.get(format!("{}/v1/models", server.url)).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["nvidia/nemotron-4-340b-reward", "tiny-nemotron-rm"]);
}

#[tokio::test]
async fn metrics_count_routes_tokens_and_errors() {
    let server = strict_server();
    let client = Client::new();
    let body = json!({"conversations": [conversation("a"), conversation("b")]}).to_string();
    let (status, _) = post(&client, &format!("{}/v1/rewards", server.url), body, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&client, &format!("{}/v1/rewards", server.url), "{", Some(KEY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text =
        client.get(format!("{}/metrics", server.url)).bearer_auth(KEY).send().await.unwrap().text().await.unwrap();
    for needle in [
        "reward_worker_http_requests_total{route=\"/v1/rewards\",status=\"200\"} 1",
        "reward_worker_http_requests_total{route=\"/v1/rewards\",status=\"400\"} 1",
        "reward_worker_errors_total{code=\"invalid_json\"} 1",
        "reward_worker_queue_depth 0",
        "reward_worker_batches_total 1",
        "reward_worker_stage_seconds_count{stage=\"forward\"} 1",
        "reward_worker_stage_seconds_count{stage=\"respond\"} 1",
        "reward_worker_raw_score_count{attribute=\"helpfulness\"} 2",
    ] {
        assert!(text.contains(needle), "/metrics lacks `{needle}`:\n{text}");
    }
    let requested = metric_value(&text, "reward_worker_batch_tokens_requested_total");
    let computed = metric_value(&text, "reward_worker_batch_tokens_computed_total");
    assert!(requested > 0.0 && computed > 0.0 && computed <= requested, "{requested} {computed}");
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap()
}

#[test]
fn a_unix_socket_serves_the_same_routes() {
    let dir = scratch("serve-uds");
    let socket = dir.join("rw.sock");
    let server = ChildServer::start(&["serve", "--port", "0", "--uds", path_str(&socket)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !server.stderr().contains("listening on unix:") {
        assert!(std::time::Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(stream, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"status\":\"ok\""), "{reply}");
}

#[tokio::test]
async fn sigterm_answers_every_accepted_request_and_exits_zero() {
    let mut server = ChildServer::start(&["serve", "--port", "0", "--threads", "1", "--batch-tokens", "2048"]);
    let client = Client::new();
    let long = "many words in a long answer ".repeat(250);
    let url = format!("{}/v1/rewards", server.url);
    let requests: Vec<_> = (0..24)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            let body = json!({"conversations": [conversation(&format!("{i} {long}"))]}).to_string();
            tokio::spawn(async move { post(&client, &url, body, None).await })
        })
        .collect();
    // Wait until the service has taken requests in, then stop it mid-work.
    for _ in 0..500 {
        let text = client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
        if text.contains("reward_worker_batches_total") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server.stderr())
    });
    let mut answered = 0;
    for r in requests {
        match r.await.unwrap() {
            (StatusCode::OK, answer) => {
                assert_eq!(answer["results"][0]["turns"].as_array().unwrap().len(), 1);
                answered += 1;
            }
            (other, answer) => panic!("an accepted request got {other}: {answer}"),
        }
    }
    let (status, log) = status.await.unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("shutting down") && log.contains("drained"), "{log}");
    assert_eq!(answered, 24);
}

#[tokio::test]
async fn launch_starts_the_cpu_demo_recipe_with_flag_overrides() {
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/cpu-demo.toml");
    let mut server = ChildServer::start(&["launch", recipe, "--port", "0"]);
    let client = Client::new();
    let body = json!({"model": "reward-worker-demo", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
    let (status, answer) = post(&client, &format!("{}/v1/chat/completions", server.url), body.to_string(), None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    let clipped = answer["reward"]["transform"].as_str().unwrap();
    assert!(clipped.contains("clip(-10, 10)"), "the recipe's reward config is in use: {clipped}");
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn every_shipped_recipe_parses_and_fits_its_model() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = run(&["launch", path_str(&path), "--check"]);
            assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
            assert!(stdout(&out).contains("--batch-tokens"), "{}", stdout(&out));
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
    let slurm = dir.join("nemotron-4-340b-2x8.slurm");
    let out = std::process::Command::new("bash").arg("-n").arg(&slurm).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_recipes_are_refused_naming_the_key_and_the_file() {
    let dir = scratch("bad-recipes");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/nemotron-4-340b/config.json");
    let layout340 = format!("[model]\npath = \"/nowhere\"\nconfig = \"{config}\"\n[parallel]\ntp = 8\npp = 97\n");
    let cases: [(&str, &str, &str); 6] = [
        ("unknown.toml", "[serve]\nport = 8000\nhots = \"x\"\n", "key `serve.hots`"),
        ("type.toml", "[batching]\nqueue_limit = \"lots\"\n", "key `batching.queue_limit`"),
        ("layout.toml", "[parallel]\ntp = 4\n", "6 attention heads do not divide into 4"),
        ("layout340.toml", &layout340, "97 pipeline stages but the model has only 96 layers"),
        ("zero.toml", "[batching]\nbatch_tokens = 0\n", "`batching.batch_tokens` must be at least 1"),
        ("reward.toml", "[reward]\npreset = \"nope\"\n", "unknown preset `nope`"),
    ];
    for (name, text, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(&["launch", path_str(&path), "--check"]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = stderr(&out);
        assert!(err.contains(needle) && err.contains(name), "{name}: {err}");
    }
}

#[tokio::test]
async fn a_training_step_commits_rewards_into_running_normalisation() {
    // Without the prefix cache: the second request reads the first one's keys and
    // values, which moves raw scores by rounding (close::SAME_MATH, checked in
    // tests/prefix_cache.rs), and the 1/std of three close rewards scales that past
    // this check of the normalisation's arithmetic.
    let server = ChildServer::start(&["serve", "--port", "0", "--normalize", "running", "--prefix-cache-bytes", "0"]);
    let client = Client::new();
    let rewards = format!("{}/v1/rewards", server.url);
    let body =
        json!({"conversations": [conversation("one"), conversation("two, longer"), conversation("three words here")]})
            .to_string();
    let rewards_of = |answer: &Value| -> Vec<f64> {
        answer["results"].as_array().unwrap().iter().map(|r| r["turns"][0]["reward"].as_f64().unwrap()).collect()
    };
    let (status, first) = post(&client, &rewards, body.clone(), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let raw = rewards_of(&first); // identity until two rewards are committed
    let (status, step) = post(&client, &format!("{}/v1/rewards/step", server.url), "", None).await;
    assert_eq!(status, StatusCode::OK, "{step}");
    assert_eq!(step["committed"], 3);
    assert_eq!(step["running"]["count"], 3);
    let (_, second) = post(&client, &rewards, body, None).await;
    let normalised = rewards_of(&second);
    let mean = raw.iter().sum::<f64>() / 3.0;
    let std = (raw.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    for (n, x) in normalised.iter().zip(&raw) {
        assert!((n - (x - mean) / (std + 1e-6)).abs() < 1e-6, "{normalised:?} from {raw:?}");
    }
    assert!(second["results"][0]["transform"].as_str().unwrap().contains("running"), "{second}");
}
