//! Sleep and wake in the queue. Orders from the front ends (HTTP `/sleep`,
//! `/wake_up`, the in-process [`QueueHandle`]) go to the engine thread, the
//! only owner of the model, which carries them out between batches: a sleep
//! asked for while a batch runs waits for that batch to be answered. While the
//! weights sleep the engine takes no batch, but the queue goes on admitting,
//! tokenising and holding requests (within `queue_limit`); they are scored
//! after the wake, and a deadline that passes meanwhile is answered 504 as
//! always. The levels are [`crate::engine::sleep`]'s.
//!
//! Tags are vLLM's: a sleep puts `weights` and `kv_cache` to sleep;
//! `wake_up` with no tags wakes both. Scoring resumes once `weights` is awake
//! (the prefix cache, `kv_cache`, starts empty either way); `is_sleeping`
//! stays true while any tag sleeps, as in vLLM.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::{QueueHandle, Shared};
use crate::engine::{Scorer, SleepLevel};

/// What can sleep, by vLLM's tag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SleepTag {
    Weights,
    KvCache,
}

impl SleepTag {
    pub const ALL: [SleepTag; 2] = [SleepTag::Weights, SleepTag::KvCache];

    pub fn parse(text: &str) -> Result<SleepTag, String> {
        match text.trim() {
            "weights" => Ok(SleepTag::Weights),
            "kv_cache" => Ok(SleepTag::KvCache),
            other => Err(format!("unknown wake_up tag `{other}`; the tags are `weights` and `kv_cache`")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SleepTag::Weights => "weights",
            SleepTag::KvCache => "kv_cache",
        }
    }
}

/// Where the worker stands.
#[derive(Debug, Clone, PartialEq)]
pub struct SleepStatus {
    /// Some tag sleeps (vLLM's `is_sleeping`).
    pub sleeping: bool,
    /// The weights' level while they sleep.
    pub level: Option<SleepLevel>,
    /// The tags asleep, by name.
    pub tags: Vec<&'static str>,
    /// How long the transition that answered took (0 when nothing was to do).
    pub seconds: f64,
}

/// Why a sleep or wake did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SleepError {
    #[error("the worker is shutting down")]
    ShuttingDown,
    #[error("the engine thread stopped")]
    EngineStopped,
    #[error("{0}")]
    Failed(String),
}

type Answer = oneshot::Sender<Result<SleepStatus, SleepError>>;

enum Order {
    Sleep(SleepLevel, Answer),
    Wake(Vec<SleepTag>, Option<Answer>),
}

#[derive(Default)]
struct State {
    level: Option<SleepLevel>,
    tags: BTreeSet<SleepTag>,
    orders: VecDeque<Order>,
}

/// The orders waiting for the engine, and what it last did.
#[derive(Default)]
pub(super) struct SleepControl {
    state: Mutex<State>,
    changed: Condvar,
}

/// How often a sleeping (or idle) engine looks for orders and shutdown.
pub(super) const POLL: Duration = Duration::from_millis(50);

impl SleepControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn order(&self, order: Order) {
        self.lock().orders.push_back(order);
        self.changed.notify_all();
    }

    fn status(&self, seconds: f64) -> SleepStatus {
        let state = self.lock();
        SleepStatus {
            sleeping: !state.tags.is_empty(),
            level: state.level,
            tags: state.tags.iter().map(|t| t.name()).collect(),
            seconds,
        }
    }

    /// The engine thread's hook, before it takes a batch: carry out waiting
    /// orders; while the weights sleep, stay here until they are woken (or the
    /// queue is shut down: then wake to answer what was admitted, if anything).
    pub(super) fn serve(&self, scorer: &mut Scorer, shared: &Shared) {
        loop {
            let mut state = self.lock();
            if let Some(order) = state.orders.pop_front() {
                drop(state);
                self.carry_out(order, scorer, shared);
                continue;
            }
            if !state.tags.contains(&SleepTag::Weights) {
                return;
            }
            let (state, _) = self.changed.wait_timeout(state, POLL).unwrap_or_else(|p| p.into_inner());
            drop(state);
            let closed = shared.submit.lock().unwrap_or_else(|p| p.into_inner()).is_none();
            if closed {
                if shared.waiting.load(Ordering::Acquire) == 0 {
                    return; // nothing to answer: exit asleep
                }
                tracing::info!("shutting down while asleep with requests admitted: waking to answer them");
                self.order(Order::Wake(SleepTag::ALL.to_vec(), None));
            }
        }
    }

    fn carry_out(&self, order: Order, scorer: &mut Scorer, shared: &Shared) {
        let started = Instant::now();
        let (result, answer, transition) = match order {
            Order::Sleep(level, answer) => {
                let result = scorer.sleep(level).map(|()| {
                    let mut state = self.lock();
                    state.level = Some(state.level.map_or(level, |now| now.max(level)));
                    state.tags.extend(SleepTag::ALL);
                });
                (result, Some(answer), if level == SleepLevel::One { "sleep1" } else { "sleep2" })
            }
            Order::Wake(tags, answer) => {
                let weights = tags.contains(&SleepTag::Weights) && self.lock().tags.contains(&SleepTag::Weights);
                let result = if weights { scorer.wake() } else { Ok(()) };
                let result = result.map(|()| {
                    let mut state = self.lock();
                    for tag in &tags {
                        state.tags.remove(tag);
                    }
                    if !state.tags.contains(&SleepTag::Weights) {
                        state.level = None;
                    }
                });
                (result, answer, "wake")
            }
        };
        shared.healthy.store(scorer.healthy(), Ordering::Release);
        // A sleep dropped the prefix cache: `/metrics` says so now, not after the next batch.
        super::engine::record_prefix_cache(0, &scorer.prefix_cache_stats());
        let seconds = started.elapsed().as_secs_f64();
        let status = self.status(seconds);
        metrics::gauge!("reward_worker_sleeping").set(status.level.map_or(0.0, |l| l.number() as f64));
        let outcome = match result {
            Ok(()) => {
                tracing::info!(transition, seconds, sleeping = ?status.tags, "sleep state changed");
                metrics::counter!("reward_worker_sleep_transitions_total", "transition" => transition).increment(1);
                metrics::histogram!("reward_worker_sleep_seconds", "transition" => transition).record(seconds);
                Ok(status)
            }
            Err(e) => {
                tracing::error!(transition, error = %e, "sleep or wake failed");
                Err(SleepError::Failed(format!("{transition} failed: {e}")))
            }
        };
        if let Some(answer) = answer {
            let _ = answer.send(outcome);
        }
    }
}

impl QueueHandle {
    /// Put the model to sleep at `level` once the running batch (if any) is
    /// answered; returns when every rank sleeps.
    pub async fn sleep(&self, level: SleepLevel) -> Result<SleepStatus, SleepError> {
        if self.is_shutting_down() {
            return Err(SleepError::ShuttingDown);
        }
        let (answer, done) = oneshot::channel();
        self.shared.sleep.order(Order::Sleep(level, answer));
        done.await.unwrap_or(Err(SleepError::EngineStopped))
    }

    /// Wake `tags` (all when empty); returns when the weights are back, and
    /// the requests that waited are being scored.
    pub async fn wake_up(&self, tags: &[SleepTag]) -> Result<SleepStatus, SleepError> {
        let tags = if tags.is_empty() { SleepTag::ALL.to_vec() } else { tags.to_vec() };
        let (answer, done) = oneshot::channel();
        self.shared.sleep.order(Order::Wake(tags, Some(answer)));
        done.await.unwrap_or(Err(SleepError::EngineStopped))
    }

    /// vLLM's `is_sleeping`, the level and the tags asleep.
    pub fn sleep_status(&self) -> SleepStatus {
        self.shared.sleep.status(0.0)
    }
}
