//! The queue between the front ends and the model: requests in, scores out.
//!
//! ```text
//!   QueueHandle::submit ──(admission: at most `queue_limit` waiting, else Full)──▶
//!   prepare threads (tokenise with the Preparer while the model runs) ──▶
//!   engine thread (owns the Scorer: TokenBudgetBatcher -> Scorer::score_with_stats) ──▶
//!   one oneshot reply per request
//! ```
//!
//! [`QueueHandle`] is a cheap clone over a channel; async code holds it and
//! never touches a tensor. The engine thread takes *every* request waiting when
//! it is free, up to the token budget ([`TokenBudgetBatcher`]), and scores them
//! in one `Scorer::score` call, so the engine's batching (and its sharing of
//! equal prompts) sees requests from different clients together. Requests whose
//! client went away or whose deadline passed are dropped before their batch
//! runs. The same handle is the in-process API for programs that embed the
//! worker ([`Worker::start`]).

pub mod batcher;
mod engine;
pub mod sleep;

pub use batcher::{Dropped, NextBatch, TokenBudgetBatcher, Waiting};
pub use sleep::{SleepError, SleepStatus, SleepTag};

use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use crate::chat::RecordError;
use crate::engine::{RecordScores, ScoreOptions, Scorer};

/// One item to score.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A record in either chat format (seed `conversations` or OpenAI
    /// `messages`), rendered with the SteerLM template; every assistant turn is scored.
    Record(Value),
    /// A text the client already rendered, tokenised as it is and scored at its last token.
    Text(String),
    /// Token ids, scored at the last one.
    Tokens(Vec<i64>),
}

/// A request: its items are scored in the same batch.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub inputs: Vec<Input>,
    pub options: ScoreOptions,
    /// After this the request is dropped (and its waiter told so).
    pub deadline: Option<Instant>,
    /// When any item cannot be prepared, answer at once without scoring the
    /// others (the service refuses such a request with 400).
    pub all_or_nothing: bool,
    /// Most tokens the request may cost once prepared (after truncation, shared
    /// prefixes once); past it the request is refused before it reaches the engine.
    pub max_tokens: Option<usize>,
}

/// The code of an item not scored because another item of its request was invalid.
pub const NOT_SCORED: &str = "not_scored";

/// Where a request's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Tokenising its items.
    pub prepare: Duration,
    /// From prepared to the start of its batch.
    pub queue: Duration,
    /// Its batch's `score` call.
    pub forward: Duration,
}

/// The answer to a request: one result per input, in order.
#[derive(Debug, Clone)]
pub struct Reply {
    pub results: Vec<Result<RecordScores, RecordError>>,
    pub timing: Timing,
    /// When the engine sent it (the front end times its own part from here).
    pub sent: Instant,
}

impl Reply {
    /// The first item that failed, with its index (an item left unscored
    /// because another was invalid only if nothing else failed).
    pub fn first_error(&self) -> Option<(usize, &RecordError)> {
        let errors = || self.results.iter().enumerate().filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)));
        errors().find(|(_, e)| e.code != NOT_SCORED).or_else(|| errors().next())
    }
}

/// Why a request got no [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({waiting} requests waiting, the limit is {limit}); retry later")]
    Full { waiting: usize, limit: usize },
    #[error("the worker is shutting down and takes no new requests")]
    ShuttingDown,
    #[error("the request's deadline passed before it was scored")]
    DeadlineExceeded,
    #[error("the engine thread stopped")]
    EngineStopped,
    #[error(
        "the request would cost {tokens} tokens after truncation (shared prefixes counted once); \
         the limit is {limit} per request: split it"
    )]
    TooExpensive { tokens: usize, limit: usize },
}

/// How the queue batches and bounds its work.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Most tokens per batch (the engine splits it further for a pipeline).
    pub batch_tokens: usize,
    /// Most requests waiting (admitted, not yet in a batch); more are refused.
    pub queue_limit: usize,
    /// Threads that tokenise while the model runs.
    pub prepare_threads: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { batch_tokens: 8192, queue_limit: 1024, prepare_threads: 2 }
    }
}

/// What the front ends may know about the model without touching it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub context: usize,
    pub vocab_size: usize,
    /// Device, dtype and parallel layout, from the backend.
    pub describe: String,
}

/// A queued request on its way through the threads.
struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Reply, QueueError>>,
}

struct Shared {
    /// `None` once shutdown began: new requests are refused.
    submit: Mutex<Option<mpsc::Sender<Job>>>,
    /// Admitted and not yet taken into a batch (or dropped).
    waiting: AtomicUsize,
    limit: usize,
    healthy: AtomicBool,
    info: ModelInfo,
    batch_tokens: usize,
    /// Sleep and wake orders for the engine thread.
    sleep: sleep::SleepControl,
}

impl Shared {
    fn left_queue(&self, n: usize) {
        let now = self.waiting.fetch_sub(n, Ordering::AcqRel) - n;
        metrics::gauge!("reward_worker_queue_depth").set(now as f64);
    }
}

/// A cheap, cloneable handle to the queue.
#[derive(Clone)]
pub struct QueueHandle {
    shared: Arc<Shared>,
}

/// A submitted request; await [`Ticket::wait`] for its reply. Dropping it
/// tells the engine nobody waits any more: the request is not computed if its
/// batch has not started.
pub struct Ticket {
    rx: oneshot::Receiver<Result<Reply, QueueError>>,
    deadline: Option<Instant>,
}

impl Ticket {
    /// The reply, or [`QueueError::DeadlineExceeded`] as soon as the deadline
    /// passes, whether the request is still queued or already running.
    pub async fn wait(self) -> Result<Reply, QueueError> {
        let answer = match self.deadline {
            Some(deadline) => {
                tokio::time::timeout_at(deadline.into(), self.rx).await.map_err(|_| QueueError::DeadlineExceeded)?
            }
            None => self.rx.await,
        };
        answer.unwrap_or(Err(QueueError::EngineStopped))
    }
}

impl QueueHandle {
    /// Admit a request or refuse it at once (queue full, shutting down).
    pub fn submit(&self, request: Request) -> Result<Ticket, QueueError> {
        let guard = self.shared.submit.lock().expect("the submit lock is never poisoned");
        let Some(tx) = guard.as_ref() else {
            return Err(QueueError::ShuttingDown);
        };
        let limit = self.shared.limit;
        let admitted =
            self.shared.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1));
        let waiting = match admitted {
            Ok(before) => before + 1,
            Err(waiting) => return Err(QueueError::Full { waiting, limit }),
        };
        metrics::gauge!("reward_worker_queue_depth").set(waiting as f64);
        let (reply, rx) = oneshot::channel();
        let deadline = request.deadline;
        if tx.send(Job { request, reply }).is_err() {
            self.shared.left_queue(1);
            return Err(QueueError::EngineStopped);
        }
        Ok(Ticket { rx, deadline })
    }

    /// Submit and wait: the in-process way to score.
    pub async fn score(&self, request: Request) -> Result<Reply, QueueError> {
        self.submit(request)?.wait().await
    }

    /// Requests admitted and not yet in a batch.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    pub fn queue_limit(&self) -> usize {
        self.shared.limit
    }

    pub fn batch_tokens(&self) -> usize {
        self.shared.batch_tokens
    }

    /// False once the backend lost a rank, or once shutdown began.
    pub fn ready(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire) && !self.is_shutting_down()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.submit.lock().expect("the submit lock is never poisoned").is_none()
    }

    pub fn model(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// Stop taking requests (they get [`QueueError::ShuttingDown`]); everything
    /// already admitted is still answered.
    pub fn close(&self) {
        self.shared.submit.lock().expect("the submit lock is never poisoned").take();
    }
}

/// The owner of the queue's threads. Dropping it without [`Worker::shutdown`]
/// leaves the threads running until every handle is gone.
pub struct Worker {
    handle: QueueHandle,
    threads: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Move `scorer` onto its own engine thread and start the prepare threads.
    pub fn start(scorer: Scorer, config: QueueConfig) -> Worker {
        let info = ModelInfo {
            name: scorer.name.clone(),
            context: scorer.context(),
            vocab_size: scorer.config.vocab_size as usize,
            describe: scorer.describe(),
        };
        let (submit_tx, submit_rx) = mpsc::channel::<Job>();
        let (prepared_tx, prepared_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            submit: Mutex::new(Some(submit_tx)),
            waiting: AtomicUsize::new(0),
            limit: config.queue_limit,
            healthy: AtomicBool::new(scorer.healthy()),
            info,
            batch_tokens: config.batch_tokens,
            sleep: sleep::SleepControl::default(),
        });
        metrics::gauge!("reward_worker_sleeping").set(0.0);
        let preparer = scorer.preparer();
        let submit_rx = Arc::new(Mutex::new(submit_rx));
        let mut threads = Vec::new();
        for i in 0..config.prepare_threads.max(1) {
            let (rx, tx, preparer, shared) =
                (Arc::clone(&submit_rx), prepared_tx.clone(), Arc::clone(&preparer), Arc::clone(&shared));
            let thread = std::thread::Builder::new()
                .name(format!("prepare-{i}"))
                .spawn(move || engine::prepare_loop(&preparer, &rx, &tx, &shared))
                .expect("spawn a prepare thread");
            threads.push(thread);
        }
        drop(prepared_tx);
        let engine_shared = Arc::clone(&shared);
        let batch_tokens = config.batch_tokens;
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine::engine_loop(scorer, prepared_rx, batch_tokens, &engine_shared))
            .expect("spawn the engine thread");
        threads.push(thread);
        Worker { handle: QueueHandle { shared }, threads }
    }

    pub fn handle(&self) -> QueueHandle {
        self.handle.clone()
    }

    /// [`QueueHandle::close`], then wait until every admitted request is
    /// answered and the threads have exited.
    pub fn shutdown(mut self) {
        self.handle.close();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}
