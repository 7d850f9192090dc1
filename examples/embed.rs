//! Embedding the reward worker in a Rust program (a rollout engine in the same
//! process): start a [`Worker`] on a loaded model, hand its cheap
//! [`QueueHandle`] to any number of tasks, and await scores. Requests from all
//! tasks share one queue and are batched together by token budget, exactly as
//! HTTP requests are; nothing here touches a tensor.
//!
//!     cargo run --release --example embed [-- MODEL_DIR]
//!
//! Without a directory it uses the embedded demo model (random weights: the
//! numbers show the plumbing, not quality).

use reward_worker::engine::{ModelSource, Scorer};
use reward_worker::model::DType;
use reward_worker::reward::{Normalize, PresetBook, RewardConfig, RewardInput, RewardOverride, RewardPipeline};
use reward_worker::scheduler::{Input, QueueConfig, Request, Worker};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).map(std::path::PathBuf::from);
    let scorer = Scorer::load(&ModelSource::from_arg(dir.as_deref()), DType::F32, tch::Device::Cpu)?;
    let worker = Worker::start(scorer, QueueConfig { batch_tokens: 8192, queue_limit: 256, prepare_threads: 1 });
    let queue = worker.handle();

    // A GRPO step: 8 responses to one prompt, each finished by a different
    // rollout task at its own time and scored as soon as it is done.
    let prompt = "Explain why the sky is blue in two sentences.";
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let queue = queue.clone();
            let response = format!("Sunlight scatters off air molecules; blue light scatters most. Answer number {i}.");
            tokio::spawn(async move {
                let record = json!({"messages": [{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": response}]});
                let request = Request {
                    inputs: vec![Input::Record(record)],
                    deadline: Some(Instant::now() + Duration::from_secs(30)),
                    ..Request::default()
                };
                queue.score(request).await
            })
        })
        .collect();
    let mut raw = Vec::new();
    for task in tasks {
        let reply = task.await??;
        let scores = reply.results.into_iter().next().expect("one input")?;
        raw.push(scores.turns.last().expect("one assistant turn").raw);
    }

    // Rewards with the model card's weights, whitened within the group.
    let config = RewardConfig { normalize: Normalize::Group { eps: 1e-6, scale: true }, ..RewardConfig::default() };
    let mut pipeline = RewardPipeline::new(config, PresetBook::builtin())?;
    let inputs: Vec<RewardInput> =
        raw.iter().map(|r| RewardInput { raw: *r, group: Some("prompt-0".into()), turn: 1 }).collect();
    let batch = pipeline.rewards(&inputs, &RewardOverride::default())?;
    println!("transform: {}", batch.transform);
    for (i, (r, out)) in raw.iter().zip(&batch.results).enumerate() {
        println!(
            "response {i}: helpfulness {:+.3}  reward {:+.3}",
            r[4],
            out.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?.reward
        );
    }
    worker.shutdown(); // answers anything still queued, then joins the threads
    Ok(())
}
