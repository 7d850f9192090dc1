//! The two kinds of threads behind a [`super::QueueHandle`]: prepare threads
//! tokenise requests as they arrive (so the next batch is ready while the model
//! runs the current one), and the engine thread owns the [`Scorer`], forms
//! batches with the [`TokenBudgetBatcher`] and answers each request.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::batcher::{Dropped, TokenBudgetBatcher, Waiting};
use super::{Input, Job, QueueError, Reply, Shared, Timing};
use crate::chat::RecordError;
use crate::engine::{PreparedRecord, Preparer, RecordScores, Scorer, SharedTokens};
use crate::reward::ATTRIBUTES;

/// A request whose items are tokenised.
pub(super) struct PreparedJob {
    items: Vec<Result<PreparedRecord, RecordError>>,
    deadline: Option<Instant>,
    prepared_at: Instant,
    prepare: Duration,
    reply: oneshot::Sender<Result<Reply, QueueError>>,
}

impl Waiting for PreparedJob {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

fn dropped(why: Dropped) {
    metrics::counter!("reward_worker_requests_dropped_total", "reason" => why.label()).increment(1);
}

/// Why a job is not worth preparing, if it is not.
fn not_wanted(reply: &oneshot::Sender<Result<Reply, QueueError>>, deadline: Option<Instant>) -> Option<Dropped> {
    if deadline.is_some_and(|d| d <= Instant::now()) {
        Some(Dropped::Expired)
    } else if reply.is_closed() {
        Some(Dropped::Abandoned)
    } else {
        None
    }
}

pub(super) fn prepare_loop(
    preparer: &Preparer,
    jobs: &Mutex<Receiver<Job>>,
    prepared: &Sender<PreparedJob>,
    shared: &Shared,
) {
    loop {
        // Hold the lock only to take one job, so the other prepare threads can too.
        let next = jobs.lock().expect("the job receiver lock is never poisoned").recv();
        let Ok(Job { request, reply }) = next else {
            return; // every handle is gone or shutdown began: the queue is drained
        };
        if let Some(why) = not_wanted(&reply, request.deadline) {
            dropped(why);
            shared.left_queue(1);
            if why == Dropped::Expired {
                let _ = reply.send(Err(QueueError::DeadlineExceeded));
            }
            continue;
        }
        let started = Instant::now();
        let opts = request.options;
        let items: Vec<Result<PreparedRecord, RecordError>> = request
            .inputs
            .iter()
            .map(|input| match input {
                Input::Record(value) => preparer.prepare(value, opts),
                Input::Text(text) => preparer.prepare_text(text),
                Input::Tokens(ids) => preparer.prepare_tokens(ids),
            })
            .map(|r| r.map(|r| PreparedRecord { bypass_cache: opts.bypass_prefix_cache, ..r }))
            .collect();
        let prepare = started.elapsed();
        metrics::histogram!("reward_worker_stage_seconds", "stage" => "prepare").record(prepare.as_secs_f64());
        let failed = items.iter().any(Result::is_err);
        if items.iter().all(Result::is_err) || (failed && request.all_or_nothing) {
            // Nothing to score: answer now and keep the model for others.
            shared.left_queue(1);
            let results = items.into_iter().map(|r| r.and(Err(not_scored()))).collect();
            let timing = Timing { prepare, ..Timing::default() };
            let _ = reply.send(Ok(Reply { results, timing, sent: Instant::now() }));
            continue;
        }
        if let Some(limit) = request.max_tokens {
            // What the request would make the engine compute, counted before it is queued.
            let mut cost = SharedTokens::default();
            let tokens: usize = items.iter().filter_map(|r| r.as_ref().ok()).map(|r| cost.add(r)).sum();
            if tokens > limit {
                shared.left_queue(1);
                let _ = reply.send(Err(QueueError::TooExpensive { tokens, limit }));
                continue;
            }
        }
        let job = PreparedJob { items, deadline: request.deadline, prepared_at: Instant::now(), prepare, reply };
        if let Err(lost) = prepared.send(job) {
            shared.left_queue(1);
            let _ = lost.0.reply.send(Err(QueueError::EngineStopped));
        }
    }
}

fn not_scored() -> RecordError {
    RecordError::new(super::NOT_SCORED, "not scored: another item of the request is invalid")
}

pub(super) fn engine_loop(mut scorer: Scorer, jobs: Receiver<PreparedJob>, batch_tokens: usize, shared: &Shared) {
    let _no_grad = tch::no_grad_guard();
    let mut batcher = TokenBudgetBatcher::new(batch_tokens);
    let mut open = true;
    loop {
        // Sleep and wake orders, between batches; stays there while asleep.
        shared.sleep.serve(&mut scorer, shared);
        loop {
            match jobs.try_recv() {
                Ok(job) => batcher.push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if batcher.is_empty() {
            if !open {
                return; // shut down and drained
            }
            match jobs.recv_timeout(super::sleep::POLL) {
                Ok(job) => batcher.push(job),
                Err(RecvTimeoutError::Timeout) => {} // look for sleep orders
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            continue;
        }
        let budget = batcher.budget();
        let batch = take_batch(&mut batcher, shared, &scorer);
        if !batch.is_empty() {
            // Between the groups of forward batches of a long batch, one batch of
            // whatever waits meanwhile runs: a request that costs many batches
            // gets at most every other turn while others wait, and never starves them.
            let mut others = || {
                while let Ok(job) = jobs.try_recv() {
                    batcher.push(job);
                }
                let interleaved = take_batch(&mut batcher, shared, &scorer);
                if !interleaved.is_empty() {
                    run_batch(&scorer, interleaved, batcher.budget(), &mut || {});
                }
            };
            run_batch(&scorer, batch, budget, &mut others);
            shared.healthy.store(scorer.healthy(), Ordering::Release);
        }
    }
}

/// The next batch from the waiting jobs, filled by tokens computed (a response
/// whose prompt is already in the batch, or in the prefix cache, costs only its
/// own tokens); jobs that expired or lost their client meanwhile are answered
/// or dropped.
fn take_batch(batcher: &mut TokenBudgetBatcher<PreparedJob>, shared: &Shared, scorer: &Scorer) -> Vec<PreparedJob> {
    if batcher.is_empty() {
        return Vec::new();
    }
    let mut computed = scorer.shared_tokens();
    let next = batcher.next_batch(Instant::now(), |job| {
        job.items.iter().filter_map(|r| r.as_ref().ok()).map(|r| computed.add(r)).sum()
    });
    shared.left_queue(next.batch.len() + next.dropped.len());
    for (job, why) in next.dropped {
        dropped(why);
        if why == Dropped::Expired {
            let _ = job.reply.send(Err(QueueError::DeadlineExceeded));
        }
    }
    next.batch
}

/// Score every prepared item of `batch` in one `score` call and answer each job;
/// `between` runs between its groups of forward batches.
fn run_batch(scorer: &Scorer, batch: Vec<PreparedJob>, budget: usize, between: &mut dyn FnMut()) {
    let _span = tracing::info_span!("batch", requests = batch.len()).entered();
    let started = Instant::now();
    for job in &batch {
        let waited = started.saturating_duration_since(job.prepared_at);
        metrics::histogram!("reward_worker_stage_seconds", "stage" => "queue").record(waited.as_secs_f64());
    }
    // (job, item) of every prepared item. Their order does not matter: the
    // engine's prefix tree finds what they share and keeps sharers together.
    let order: Vec<(usize, usize)> = batch
        .iter()
        .enumerate()
        .flat_map(|(j, job)| job.items.iter().enumerate().filter(|(_, r)| r.is_ok()).map(move |(i, _)| (j, i)))
        .collect();
    let record = |&(j, i): &(usize, usize)| batch[j].items[i].as_ref().expect("only prepared items are ordered");
    let records: Vec<&PreparedRecord> = order.iter().map(record).collect();
    // A request whose deadline passes or whose client leaves mid-batch stops
    // costing forward passes (its waiter has its 504 already).
    let wanted = |r: usize| {
        let job = &batch[order[r].0];
        !job.abandoned() && job.deadline.is_none_or(|d| d > Instant::now())
    };
    let (scores, stats) = scorer.score_while(&records, budget, &wanted, between);
    let mut cut: Vec<usize> = order
        .iter()
        .zip(&scores)
        .filter(|(_, s)| s.as_ref().is_err_and(|e| e.code == "cancelled"))
        .map(|(&(j, _), _)| j)
        .collect();
    cut.dedup();
    for j in cut {
        dropped(if batch[j].abandoned() { Dropped::Abandoned } else { Dropped::Expired });
    }
    let forward = started.elapsed();
    metrics::histogram!("reward_worker_stage_seconds", "stage" => "forward").record(forward.as_secs_f64());
    metrics::counter!("reward_worker_batches_total").increment(1);
    metrics::counter!("reward_worker_batch_tokens_requested_total").increment(stats.tokens_requested as u64);
    metrics::counter!("reward_worker_batch_tokens_computed_total").increment(stats.tokens_computed as u64);
    record_prefix_cache(stats.tokens_cached, &scorer.prefix_cache_stats());
    metrics::counter!("reward_worker_forward_batches_total").increment(stats.batches as u64);
    metrics::histogram!("reward_worker_batch_fill").record(stats.tokens_computed as f64 / budget as f64);
    metrics::histogram!("reward_worker_batch_requests").record(batch.len() as f64);
    tracing::debug!(
        requests = batch.len(),
        records = records.len(),
        requested = stats.tokens_requested,
        computed = stats.tokens_computed,
        seconds = forward.as_secs_f64(),
        "batch"
    );

    let mut answers: Vec<Vec<Option<Result<RecordScores, RecordError>>>> =
        batch.iter().map(|job| vec![None; job.items.len()]).collect();
    for (&(j, i), result) in order.iter().zip(scores) {
        if let Ok(scores) = &result {
            record_raw_scores(scores);
        }
        answers[j][i] = Some(result);
    }
    for (job, answer) in batch.into_iter().zip(answers) {
        let results = job
            .items
            .into_iter()
            .zip(answer)
            .map(|(item, scored)| match item {
                Err(e) => Err(e),
                Ok(_) => scored.expect("every prepared item was scored: this is a bug"),
            })
            .collect();
        let queue = started.saturating_duration_since(job.prepared_at);
        let timing = Timing { prepare: job.prepare, queue, forward };
        let _ = job.reply.send(Ok(Reply { results, timing, sent: Instant::now() }));
    }
}

fn record_raw_scores(scores: &RecordScores) {
    for turn in &scores.turns {
        for (name, value) in ATTRIBUTES.iter().zip(turn.raw) {
            metrics::histogram!("reward_worker_raw_score", "attribute" => *name).record(value as f64);
        }
    }
}

/// The prefix cache on `/metrics`: tokens read from it (beside
/// `reward_worker_batch_tokens_computed_total`, the tokens computed), bytes
/// held against the bound, evictions.
pub(super) fn record_prefix_cache(hit: usize, cache: &crate::batching::CacheStats) {
    metrics::counter!("reward_worker_prefix_cache_hit_tokens_total").increment(hit as u64);
    if cache.bytes_per_token == 0 {
        return; // a nested call: the outer one holds the cache and records it
    }
    metrics::counter!("reward_worker_prefix_cache_evictions_total").absolute(cache.evictions);
    metrics::gauge!("reward_worker_prefix_cache_bytes").set(cache.bytes_held as f64);
    metrics::gauge!("reward_worker_prefix_cache_bound_bytes").set(cache.bound_bytes as f64);
}
