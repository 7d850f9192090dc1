//! The two kinds of threads behind a [`super::QueueHandle`]: prepare threads
//! tokenise requests as they arrive (so the next batch is ready while the model
//! runs the current one), and the engine thread owns the [`Scorer`], forms
//! batches with the [`TokenBudgetBatcher`] and answers each request.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::batcher::{Dropped, TokenBudgetBatcher, Waiting};
use super::{Input, Job, QueueError, Reply, Shared, Timing};
use crate::chat::RecordError;
use crate::engine::{PreparedRecord, Preparer, RecordScores, Scorer};
use crate::reward::ATTRIBUTES;

/// A request whose items are tokenised.
pub(super) struct PreparedJob {
    items: Vec<Result<PreparedRecord, RecordError>>,
    tokens: usize,
    deadline: Option<Instant>,
    prepared_at: Instant,
    prepare: Duration,
    reply: oneshot::Sender<Result<Reply, QueueError>>,
}

impl Waiting for PreparedJob {
    fn tokens(&self) -> usize {
        self.tokens
    }
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
        let tokens = items.iter().filter_map(|r| r.as_ref().ok()).map(PreparedRecord::tokens).sum();
        let job =
            PreparedJob { items, tokens, deadline: request.deadline, prepared_at: Instant::now(), prepare, reply };
        if let Err(lost) = prepared.send(job) {
            shared.left_queue(1);
            let _ = lost.0.reply.send(Err(QueueError::EngineStopped));
        }
    }
}

fn not_scored() -> RecordError {
    RecordError::new(super::NOT_SCORED, "not scored: another item of the request is invalid")
}

pub(super) fn engine_loop(scorer: Scorer, jobs: Receiver<PreparedJob>, batch_tokens: usize, shared: &Shared) {
    let _no_grad = tch::no_grad_guard();
    let mut batcher = TokenBudgetBatcher::new(batch_tokens);
    let mut open = true;
    loop {
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
            match jobs.recv() {
                Ok(job) => batcher.push(job),
                Err(_) => open = false,
            }
            continue;
        }
        let next = batcher.next_batch(Instant::now());
        shared.left_queue(next.batch.len() + next.dropped.len());
        for (job, why) in next.dropped {
            dropped(why);
            if why == Dropped::Expired {
                let _ = job.reply.send(Err(QueueError::DeadlineExceeded));
            }
        }
        if !next.batch.is_empty() {
            run_batch(&scorer, next.batch, batcher.budget());
            shared.healthy.store(scorer.healthy(), Ordering::Release);
        }
    }
}

/// Score every prepared item of `batch` in one `score` call and answer each job.
fn run_batch(scorer: &Scorer, batch: Vec<PreparedJob>, budget: usize) {
    let _span = tracing::info_span!("batch", requests = batch.len()).entered();
    let started = Instant::now();
    for job in &batch {
        let waited = started.saturating_duration_since(job.prepared_at);
        metrics::histogram!("reward_worker_stage_seconds", "stage" => "queue").record(waited.as_secs_f64());
    }
    // (job, item) of every prepared item; equal prompts next to each other, so a
    // forward batch split by the budget keeps a shared prompt's requests together.
    let order: Vec<(usize, usize)> = batch
        .iter()
        .enumerate()
        .flat_map(|(j, job)| job.items.iter().enumerate().filter(|(_, r)| r.is_ok()).map(move |(i, _)| (j, i)))
        .collect();
    let record = |&(j, i): &(usize, usize)| batch[j].items[i].as_ref().expect("only prepared items are ordered");
    let unordered: Vec<&PreparedRecord> = order.iter().map(record).collect();
    let order: Vec<(usize, usize)> = prompt_order(&unordered).into_iter().map(|k| order[k]).collect();
    let records: Vec<&PreparedRecord> = order.iter().map(record).collect();
    let (scores, stats) = scorer.score_with_stats(&records, budget);
    let forward = started.elapsed();
    metrics::histogram!("reward_worker_stage_seconds", "stage" => "forward").record(forward.as_secs_f64());
    metrics::counter!("reward_worker_batches_total").increment(1);
    metrics::counter!("reward_worker_batch_tokens_requested_total").increment(stats.tokens_requested as u64);
    metrics::counter!("reward_worker_batch_tokens_computed_total").increment(stats.tokens_computed as u64);
    metrics::counter!("reward_worker_forward_batches_total").increment(stats.batches as u64);
    metrics::histogram!("reward_worker_batch_fill").record(stats.tokens_requested as f64 / budget as f64);
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

/// An order of `records` in which records that start with the same tokens
/// (the same prompt: a GRPO group's responses) are next to each other, so the
/// engine's prefix sharing finds them in the same forward batch. Sorting by
/// the first sequence's tokens does it (stable: equal records keep their
/// arrival order). The order changes which records share a batch, not a score.
pub(super) fn prompt_order(records: &[&PreparedRecord]) -> Vec<usize> {
    let first = |r: &PreparedRecord| r.sequences.first().map(|s| s.tokens.clone()).unwrap_or_default();
    let keys: Vec<Vec<i64>> = records.iter().map(|r| first(r)).collect();
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    order
}

fn record_raw_scores(scores: &RecordScores) {
    for turn in &scores.turns {
        for (name, value) in ATTRIBUTES.iter().zip(turn.raw) {
            metrics::histogram!("reward_worker_raw_score", "attribute" => *name).record(value as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Sequence;

    fn record(tokens: &[i64]) -> PreparedRecord {
        let seq = Sequence {
            tokens: tokens.to_vec(),
            probes: vec![(9, tokens.len() as i64)],
            turns: vec![1],
            truncated: false,
        };
        PreparedRecord { sequences: vec![seq] }
    }

    #[test]
    fn responses_to_the_same_prompt_end_up_next_to_each_other() {
        // prompt A = [1, 2, 3], prompt B = [1, 2, 4], arriving interleaved
        let records = [
            record(&[1, 2, 3, 7]),
            record(&[1, 2, 4, 7]),
            record(&[1, 2, 3, 8]),
            record(&[1, 2, 4, 5]),
            record(&[1, 2, 3, 6]),
        ];
        let refs: Vec<&PreparedRecord> = records.iter().collect();
        let order = prompt_order(&refs);
        let prompts: Vec<i64> = order.iter().map(|&k| records[k].sequences[0].tokens[2]).collect();
        assert_eq!(prompts, vec![3, 3, 3, 4, 4]);
        let mut seen = order.clone();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4], "a permutation: every record once");
    }
}
