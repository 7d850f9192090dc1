//! One rank's thread: build its communicators, load its stage, connect, then
//! take jobs (from the feeder's channel, or from rank 0's broadcast) and run
//! them until shut down or failed. A failure is recorded in the group's
//! [`Health`], the rank's communicators are aborted so its peers stop waiting,
//! and rank 0 answers the job with the group's first failure.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

use super::fault::FaultyComm;
use super::group_options::{Delivery, GroupError, GroupOptions, Health};
use super::rank::{decode_job, encode_job, BatchOutcome, RankId, RankWorker};
use super::threads::{ThreadComm, ThreadsHub};
use super::StagePlan;
use crate::config::Config;
use crate::engine::SleepLevel;
use crate::model::{BatchLayout, ModelError, NemotronRewardModel, Weights};

pub(crate) struct Job {
    pub id: u64,
    pub layouts: Vec<BatchLayout>,
}

pub(crate) enum Command {
    Run(Arc<Job>),
    /// Sleep at this level (`super::sleep`); the answer comes once every rank did.
    Sleep(SleepLevel, Sender<Result<(), String>>),
    Wake(Sender<Result<(), String>>),
    Shutdown,
}

/// What a rank does next.
enum Next {
    Run(Arc<Job>),
    /// A sleep (`Some(level)`) or wake (`None`) order, with the feeder's
    /// answer channel on the ranks it feeds.
    Control(Option<SleepLevel>, Option<Sender<Result<(), String>>>),
    Stop,
}

pub(crate) struct Reply {
    pub id: u64,
    pub outcomes: Vec<BatchOutcome>,
}

use super::comm::RankComms;

/// How a rank builds its communicators.
#[derive(Clone)]
pub(crate) enum CommSetup {
    Threads(Arc<ThreadsHub>),
    #[cfg(feature = "nccl")]
    Nccl(Arc<super::nccl::GroupIds>),
}

impl CommSetup {
    pub(crate) fn nccl_in_process(options: &GroupOptions) -> Result<CommSetup, GroupError> {
        #[cfg(feature = "nccl")]
        {
            let ids = super::nccl::GroupIds::generate(options.layout).map_err(GroupError::Backend)?;
            Ok(CommSetup::Nccl(Arc::new(ids)))
        }
        #[cfg(not(feature = "nccl"))]
        {
            let _ = options;
            Err(GroupError::Backend(super::NCCL_NOT_BUILT.into()))
        }
    }

    /// This rank's (tensor-parallel group, world) communicators.
    fn connect(&self, id: RankId, options: &GroupOptions, device: Device) -> Result<RankComms, String> {
        let layout = options.layout;
        let stage_ranks: Vec<usize> = (id.stage * layout.tp..(id.stage + 1) * layout.tp).collect();
        let tp_name = format!("tensor-parallel group of stage {} (global ranks {stage_ranks:?})", id.stage);
        match self {
            CommSetup::Threads(hub) => {
                let world = (0..layout.world()).collect();
                let tp = ThreadComm::new(Arc::clone(hub), 1 + id.stage, tp_name, stage_ranks, id.tp_rank, device);
                let world = ThreadComm::new(Arc::clone(hub), 0, "worker group", world, id.global, device);
                Ok((Arc::new(tp), Arc::new(world)))
            }
            #[cfg(feature = "nccl")]
            CommSetup::Nccl(ids) => ids.connect(id, layout, device, options.timeout, tp_name),
        }
    }

    pub(crate) fn abort(&self, reason: &str) {
        match self {
            CommSetup::Threads(hub) => hub.abort(reason),
            #[cfg(feature = "nccl")]
            CommSetup::Nccl(_) => {} // each rank aborts its own communicators
        }
    }
}

/// What a rank thread needs to start.
pub(crate) struct RankStart {
    pub(crate) id: RankId,
    pub(crate) device: Device,
    pub(crate) config: Config,
    /// `None` while asleep at level 2.
    pub(crate) weights: Option<Arc<Weights>>,
    pub(crate) options: GroupOptions,
    pub(crate) setup: CommSetup,
    pub(crate) health: Arc<Health>,
    pub(crate) ready: Sender<(RankId, Result<(), String>)>,
    pub(crate) commands: Option<Receiver<Command>>,
    pub(crate) replies: Option<Sender<Reply>>,
}

impl RankStart {
    fn build(&self) -> Result<RankWorker, String> {
        let (tp, world) = self.setup.connect(self.id, &self.options, self.device)?;
        let tp = match self.options.fault {
            Some(fault) if fault.rank == self.id.global => FaultyComm::wrap(tp, fault),
            _ => tp,
        };
        let layout = self.options.layout;
        let stage = StagePlan::new(self.config.num_layers, self.id.stage, layout.pp).map_err(|e| e.to_string())?;
        let kind = self.options.dtype.kind();
        let weights = self.weights.as_ref().expect("a rank starts with its weights: this is a bug");
        let model = NemotronRewardModel::load_stage(&self.config, weights, kind, self.device, Arc::clone(&tp), stage)
            .map_err(|e| e.to_string())?;
        Ok(RankWorker { id: self.id, layout, model, world, tp })
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => format!("panicked: {s}"),
        (_, Some(s)) => format!("panicked: {s}"),
        _ => "panicked".into(),
    }
}

pub(crate) fn rank_main(mut start: RankStart) {
    let id = start.id;
    let _span = tracing::info_span!("rank", rank = id.global, stage = id.stage, tp_rank = id.tp_rank).entered();
    let mut worker = match std::panic::catch_unwind(AssertUnwindSafe(|| start.build())) {
        Ok(Ok(worker)) => worker,
        Ok(Err(message)) => return drop(start.ready.send((id, Err(message)))),
        Err(panic) => return drop(start.ready.send((id, Err(panic_message(panic))))),
    };
    if let Err(e) = worker.warm_up() {
        let message = format!("connecting to the other ranks: {e}");
        worker.world.abort(&message);
        worker.tp.abort(&message);
        return drop(start.ready.send((id, Err(message))));
    }
    tracing::debug!(rank = id.global, stage = id.stage, tp_rank = id.tp_rank, "rank loaded and connected");
    let _ = start.ready.send((id, Ok(())));
    let feed = match (start.commands, start.options.delivery) {
        (Some(commands), Delivery::Channel) => Feed::Channel(commands),
        (Some(commands), Delivery::Broadcast) => Feed::Leader(commands, start.options.timeout / 4),
        (None, _) => Feed::Follower,
    };
    let mut asleep = None;
    loop {
        let job = match feed.next(&worker) {
            Ok(Next::Run(job)) => job,
            Ok(Next::Control(order, ack)) => {
                match control(&mut worker, &mut start.weights, start.options.source.as_ref(), &mut asleep, order) {
                    Ok(()) => {
                        if let Some(ack) = ack {
                            let _ = ack.send(Ok(()));
                        }
                        continue;
                    }
                    Err(message) => {
                        fail(&worker, &start.health, None, &start.replies, message);
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(start.health.failure().unwrap_or_default()));
                        }
                        return;
                    }
                }
            }
            Ok(Next::Stop) => return,
            Err(message) => return fail(&worker, &start.health, None, &start.replies, message),
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| worker.run(&job.layouts)));
        let message = match outcome {
            Ok(Ok(outcomes)) => {
                if let Some(replies) = &start.replies {
                    let _ = replies.send(Reply { id: job.id, outcomes });
                }
                continue;
            }
            Ok(Err(ModelError::Group(message) | ModelError::Device(message))) => message,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic_message(panic),
        };
        return fail(&worker, &start.health, Some(&job), &start.replies, message);
    }
}

/// A sleep (`Some(level)`) or wake order on this rank, then the group's
/// barrier: past it, every rank has done it.
fn control(
    worker: &mut RankWorker,
    weights: &mut Option<Arc<Weights>>,
    source: Option<&crate::engine::ModelSource>,
    asleep: &mut Option<SleepLevel>,
    order: Option<SleepLevel>,
) -> Result<(), String> {
    let done = std::panic::catch_unwind(AssertUnwindSafe(|| match (order, *asleep) {
        (Some(level), now) if now.is_some_and(|n| n >= level) => Ok(now),
        (Some(level), _) => super::sleep::sleep_rank(worker, weights, level).map(|()| Some(level)),
        (None, None) => Ok(None),
        (None, Some(level)) => super::sleep::wake_rank(worker, weights, source, level).map(|()| None),
    }));
    *asleep = match done {
        Ok(Ok(now)) => now,
        Ok(Err(message)) => return Err(message),
        Err(panic) => return Err(panic_message(panic)),
    };
    worker.world.barrier().map_err(|e| e.to_string())
}

/// This rank failed: record why, abort its communicators (its peers stop
/// waiting for it), and on rank 0 answer the job with the group's first failure.
fn fail(worker: &RankWorker, health: &Health, job: Option<&Job>, replies: &Option<Sender<Reply>>, message: String) {
    let reason = format!("{} failed: {message}", worker.id);
    health.fail(&reason);
    worker.world.abort(&reason);
    worker.tp.abort(&reason);
    if let (Some(job), Some(replies)) = (job, replies) {
        let first = health.failure().unwrap_or(reason);
        let _ = replies.send(Reply { id: job.id, outcomes: job.layouts.iter().map(|_| Err(first.clone())).collect() });
    }
}

/// Where a rank's next job comes from.
enum Feed {
    Channel(Receiver<Command>),
    /// Rank 0 with ranks in other processes: takes jobs from the channel and
    /// broadcasts them; broadcasts a heartbeat after this long without one.
    Leader(Receiver<Command>, Duration),
    Follower,
}

const HEARTBEAT: i64 = 0;
const RUN: i64 = 1;
const SHUTDOWN: i64 = 2;
/// `[SLEEP, level]` and `[WAKE, 0]`.
const SLEEP: i64 = 3;
const WAKE: i64 = 4;

impl Feed {
    fn next(&self, worker: &RankWorker) -> Result<Next, String> {
        match self {
            Feed::Channel(commands) => match commands.recv() {
                Ok(Command::Run(job)) => Ok(Next::Run(job)),
                Ok(Command::Sleep(level, ack)) => Ok(Next::Control(Some(level), Some(ack))),
                Ok(Command::Wake(ack)) => Ok(Next::Control(None, Some(ack))),
                Ok(Command::Shutdown) | Err(_) => Ok(Next::Stop),
            },
            Feed::Leader(commands, heartbeat) => loop {
                match commands.recv_timeout(*heartbeat) {
                    Ok(Command::Run(job)) => {
                        let data = encode_job(&job.layouts);
                        broadcast(worker, &[RUN, data.len() as i64])?;
                        broadcast(worker, &data)?;
                        return Ok(Next::Run(job));
                    }
                    Ok(Command::Sleep(level, ack)) => {
                        broadcast(worker, &[SLEEP, level.number() as i64])?;
                        return Ok(Next::Control(Some(level), Some(ack)));
                    }
                    Ok(Command::Wake(ack)) => {
                        broadcast(worker, &[WAKE, 0])?;
                        return Ok(Next::Control(None, Some(ack)));
                    }
                    Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                        let _ = broadcast(worker, &[SHUTDOWN, 0]);
                        return Ok(Next::Stop);
                    }
                    Err(RecvTimeoutError::Timeout) => drop(broadcast(worker, &[HEARTBEAT, 0])?),
                }
            },
            Feed::Follower => loop {
                let header = broadcast(worker, &[0, 0])?;
                match header[0] {
                    HEARTBEAT => continue,
                    SHUTDOWN => return Ok(Next::Stop),
                    RUN => {
                        let data = broadcast(worker, &vec![0; header[1].max(0) as usize])?;
                        let layouts = decode_job(&data).map_err(|e| e.to_string())?;
                        return Ok(Next::Run(Arc::new(Job { id: 0, layouts })));
                    }
                    SLEEP => {
                        let level = SleepLevel::parse(&header[1].to_string())?;
                        return Ok(Next::Control(Some(level), None));
                    }
                    WAKE => return Ok(Next::Control(None, None)),
                    other => return Err(format!("rank 0 broadcast an unknown command {other}")),
                }
            },
        }
    }
}

/// Broadcast `data` from global rank 0 (the others pass a buffer of the same length).
fn broadcast(worker: &RankWorker, data: &[i64]) -> Result<Vec<i64>, String> {
    let t = Tensor::from_slice(data).f_to_device(worker.model.device).map_err(|e| e.to_string())?;
    let out = worker.world.broadcast(&t, 0).map_err(|e| e.to_string())?;
    let out = out.f_to_device(Device::Cpu).and_then(|t| t.f_to_kind(Kind::Int64)).map_err(|e| e.to_string())?;
    Vec::<i64>::try_from(&out).map_err(|e| e.to_string())
}
