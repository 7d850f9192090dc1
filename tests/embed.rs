//! The in-process handle (what examples/embed.rs shows): requests submitted
//! from many tasks share one queue and batch, and every score equals
//! `Scorer::score` on the same record.

mod common;

use common::*;
use reward_worker::engine::{ModelSource, ScoreOptions, Scorer};
use reward_worker::model::DType;
use reward_worker::scheduler::{Input, QueueConfig, QueueError, Request, Worker};
use serde_json::json;
use std::time::{Duration, Instant};

fn scorer() -> Scorer {
    Scorer::load(&ModelSource::Dir(fixture("tiny-nemotron-rm")), DType::F32, tch::Device::Cpu).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_score_like_the_engine_and_batch_together() {
    let cases = expected("tiny-nemotron-rm");
    let direct = scorer();
    let prepared: Vec<_> =
        cases.iter().map(|c| direct.prepare(&c["record"], ScoreOptions::default()).unwrap()).collect();
    let want = direct.score(&prepared.iter().collect::<Vec<_>>(), 8192);

    let worker = Worker::start(scorer(), QueueConfig { batch_tokens: 8192, queue_limit: 64, prepare_threads: 2 });
    let tasks: Vec<_> = (0..4)
        .flat_map(|_| cases.iter().cloned())
        .map(|case| {
            let queue = worker.handle();
            tokio::spawn(async move {
                queue.score(Request { inputs: vec![Input::Record(case["record"].clone())], ..Request::default() }).await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let reply = task.await.unwrap().unwrap();
        let got = reply.results[0].as_ref().unwrap();
        let want = want[i % cases.len()].as_ref().unwrap();
        assert_eq!(got.turns.len(), want.turns.len());
        for (g, w) in got.turns.iter().zip(&want.turns) {
            assert_eq!(g.turn, w.turn);
            // Another batch composition than the engine's own call: f32 rounding only.
            let diff = close::rel_diff(&close::widen(&g.raw), &close::widen(&w.raw));
            assert!(diff < close::SAME_MATH, "record {i} turn {}: {diff} (relative)", g.turn);
        }
    }
    worker.shutdown();
}

#[tokio::test]
async fn text_and_token_inputs_score_at_their_last_token() {
    let case = &expected("tiny-nemotron-rm")[0];
    let turn = &case["turns"][0];
    let ids: Vec<i64> = turn["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let worker = Worker::start(scorer(), QueueConfig::default());
    let inputs =
        vec![Input::Text(turn["text"].as_str().unwrap().to_owned()), Input::Tokens(ids), Input::Tokens(vec![])];
    let reply = worker.handle().score(Request { inputs, ..Request::default() }).await.unwrap();
    let text = reply.results[0].as_ref().unwrap().turns[0].raw;
    let tokens = reply.results[1].as_ref().unwrap().turns[0].raw;
    assert!(close::rel_diff(&close::widen(&text), &floats(&turn["raw"])) < close::TO_TRANSFORMERS);
    assert_eq!(text, tokens, "the same tokens, in the same batch, give the same numbers");
    let empty = reply.results[2].as_ref().unwrap_err();
    assert!(empty.message.contains("empty"), "{empty:?}");
    worker.shutdown();
}

#[tokio::test]
async fn a_closed_queue_refuses_and_a_past_deadline_expires() {
    let worker = Worker::start(scorer(), QueueConfig::default());
    let queue = worker.handle();
    let record = json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]});
    let late = Request {
        inputs: vec![Input::Record(record.clone())],
        deadline: Some(Instant::now() - Duration::from_millis(1)),
        ..Request::default()
    };
    assert_eq!(queue.score(late).await.unwrap_err(), QueueError::DeadlineExceeded);
    worker.shutdown();
    let refused = queue.submit(Request { inputs: vec![Input::Record(record)], ..Request::default() });
    assert!(matches!(refused, Err(QueueError::ShuttingDown)));
    assert!(!queue.ready());
}
