//! `reward-worker`: a reward-model worker group for RLAIF training loops.
//!
//! It holds a frozen multi-attribute reward model of the Nemotron-4 family,
//! scores every assistant turn of the conversations a policy-rollout engine
//! sends, and turns the nine attribute scores into the scalar rewards that
//! PPO / REINFORCE / GRPO updates consume. The contract is `DESIGN.md`.
//!
//! # Layout
//!
//! - [`config`]: the types every layer shares, below `model` and `parallel`:
//!   `config.json` -> [`config::Config`], the decoder dtype, the parallel layout.
//! - [`model`]: safetensors loading by HF
//!   names (with per-rank slices), and the Nemotron-4 decoder + reward head as
//!   plain math over a packed batch (and a rank's slice of the prefix cache).
//! - [`chat`]: input formats (seed `conversations`, OpenAI `messages`), the
//!   SteerLM template, tokenisation, and the one-pass layout that scores every
//!   assistant turn with probe tokens.
//! - [`parallel`]: the worker group: the [`parallel::Comm`] trait the model
//!   all-reduces through (a no-op for one rank) with its threads and NCCL
//!   backends, the launcher rendezvous, the shard and stage plans, the group
//!   behind the engine's `Forward`, and the arithmetic of `plan`.
//! - [`engine`]: [`engine::Scorer`] = model + tokenizer; prepares records and
//!   scores them in token-budget batches; sleeps and wakes for co-location
//!   ([`engine::sleep`]).
//! - [`batching`]: grouping by token budget: the prefix tree, its cut into
//!   batches, and the prefix cache's index (what the ranks keep across batches,
//!   whose keys and values live in `model::kv_cache`).
//! - [`reward`]: raw scores -> scalar: calibration, weights and presets,
//!   normalisation (none, fixed, running, batch, group), clip; SteerLM labels.
//! - [`preference`]: preference pairs, the attribute cache, RewardBench
//!   section accuracy and the Bradley-Terry fit of attribute weights.
//! - [`files`]: how every command handles files and lines: outputs replaced
//!   safely (temp file + rename), same-file checks by device and inode, byte
//!   lines with a size limit, the exclusive lock of an appended output.
//! - [`output`]: a scored record's rewards and JSON, shared by `score` and the service.
//! - [`scheduler`]: the queue between front ends and the model: admission,
//!   tokenising while the model runs, token-budget batches on the engine thread;
//!   also the in-process handle for programs that embed the worker.
//! - [`server`]: the HTTP service (axum): `/v1/rewards`, OpenAI chat
//!   completions, OpenRLHF `/get_reward`, KServe v2, health and metrics;
//!   connections with header/body timeouts and a bounded shutdown, and the
//!   running statistics saved durably per step.
//! - [`recipe`]: training recipes (TOML) that `launch` turns into `serve` flags.
//! - [`cli`]: the `reward-worker` command line (`main.rs` only calls it).

pub mod batching;
pub mod chat;
pub mod cli;
pub mod config;
pub mod engine;
pub mod files;
pub mod model;
pub mod output;
pub mod parallel;
pub mod preference;
pub mod recipe;
pub mod reward;
pub mod scheduler;
pub mod server;
