//! The worker group: tensor x pipeline parallel ranks, one OS thread each,
//! behind the engine's [`Forward`] interface.
//!
//! The feeding side ([`Group`], owned by the engine's thread) hands each job (a
//! list of batch layouts, one per micro-batch) to the ranks and waits for
//! global rank 0's reply. Layouts travel as [`BatchLayout`]s, never
//! re-tokenised: shared through an `Arc` with the ranks of this process
//! ([`Delivery::Channel`]), or encoded into one `i64` tensor and broadcast by
//! rank 0 to ranks in other processes ([`Delivery::Broadcast`], which also
//! sends a heartbeat while idle so that every wait has a timeout).
//!
//! A rank that fails (an error, a panic, a timeout waiting for a peer) records
//! why in the group's [`Health`], aborts its communicators so its peers stop
//! waiting, and stops. Rank 0 answers the job with that error for every batch;
//! from then on the group is unhealthy and fails every batch at once.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::Device;

use super::rank::RankId;
use super::rank_thread::{rank_main, Command, Job, RankStart, Reply};
use super::threads::ThreadsHub;
use crate::config::{CommBackend, Config};
use crate::engine::{check_vocab, BatchScores, Forward, ModelSource, Scorer, SleepLevel};
use crate::model::{BatchLayout, ModelError, Weights};

pub use super::group_options::{Delivery, GroupError, GroupOptions, Health};
pub(crate) use super::rank_thread::CommSetup;

/// The feeding side of a worker group: an engine [`Forward`] backend.
pub struct Group {
    options: GroupOptions,
    /// Channels of the rank threads that take jobs from here.
    commands: Vec<Sender<Command>>,
    replies: Receiver<Reply>,
    health: Arc<Health>,
    threads: Vec<JoinHandle<()>>,
    next_job: std::cell::Cell<u64>,
    /// Set while every rank sleeps (`super::sleep`).
    asleep: Option<SleepLevel>,
}

/// Load `source` as a worker group and put it behind a [`Scorer`]. The layout
/// is checked against the model's shapes first (the error names the numbers).
pub fn load_scorer(source: &ModelSource, options: &GroupOptions) -> Result<Scorer, GroupError> {
    let (config, tokenizer, weights) = source.load()?;
    check_vocab(&config, tokenizer.vocab_size())?;
    let options = GroupOptions { source: Some(source.clone()), ..options.clone() };
    let group = Group::start(&config, Arc::new(weights), &options)?;
    Ok(Scorer::from_parts(source.name(), config, tokenizer, Box::new(group)))
}

impl Group {
    /// Start every rank of the group in this process, each loading its own slices.
    pub fn start(config: &Config, weights: Arc<Weights>, options: &GroupOptions) -> Result<Group, GroupError> {
        options.layout.validate(config).map_err(ModelError::from)?;
        let setup = match options.backend {
            CommBackend::Threads => CommSetup::Threads(ThreadsHub::new(options.timeout)),
            CommBackend::Nccl => CommSetup::nccl_in_process(options)?,
        };
        let ranks =
            (0..options.layout.world()).map(|g| (RankId::new(g, options.layout), rank_device(options.device, g)));
        Self::launch(config, weights, options, ranks.collect(), setup)
    }

    /// Start the ranks `hosted` (global id, device) of a group whose other ranks
    /// (if any) live in other processes, connected through `setup`.
    pub(crate) fn launch(
        config: &Config,
        weights: Arc<Weights>,
        options: &GroupOptions,
        hosted: Vec<(RankId, Device)>,
        setup: CommSetup,
    ) -> Result<Group, GroupError> {
        let health = Arc::new(Health::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let (reply_tx, replies) = mpsc::channel();
        let mut commands = Vec::new();
        let mut threads = Vec::new();
        for &(id, device) in &hosted {
            let (tx, rx) = mpsc::channel();
            let takes_jobs_here = id.global == 0 || options.delivery == Delivery::Channel;
            if takes_jobs_here {
                commands.push(tx);
            }
            let start = RankStart {
                id,
                device,
                config: config.clone(),
                weights: Some(Arc::clone(&weights)),
                options: options.clone(),
                setup: setup.clone(),
                health: Arc::clone(&health),
                ready: ready_tx.clone(),
                commands: takes_jobs_here.then_some(rx),
                replies: (id.global == 0).then(|| reply_tx.clone()),
            };
            let thread = std::thread::Builder::new()
                .name(format!("rank-{}", id.global))
                .spawn(move || rank_main(start))
                .map_err(|e| GroupError::Backend(format!("cannot start a thread for {id}: {e}")))?;
            threads.push(thread);
        }
        let group =
            Group { options: options.clone(), commands, replies, health, threads, next_job: 0.into(), asleep: None };
        let deadline = Instant::now() + options.start_timeout;
        let mut waiting: Vec<usize> = hosted.iter().map(|(id, _)| id.global).collect();
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok((rank, Ok(()))) => waiting.retain(|&g| g != rank.global),
                Ok((rank, Err(message))) => {
                    setup.abort(&format!("{rank} could not start: {message}"));
                    return Err(GroupError::RankStart { rank, message });
                }
                Err(_) => {
                    setup.abort("the group did not start in time");
                    let seconds = options.start_timeout.as_secs_f64();
                    return Err(GroupError::StartTimeout { seconds, missing: waiting });
                }
            }
        }
        Ok(group)
    }

    /// Wait until every rank thread of this process has stopped (a follower
    /// process: rank 0 broadcast the shutdown, or the group failed).
    pub fn wait_finished(mut self) -> Result<(), String> {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.health.failure().map_or(Ok(()), Err)
    }

    /// Send a sleep or wake order to the ranks and wait for rank 0's answer,
    /// which comes after every rank did it (`super::sleep`).
    fn control(&self, order: impl Fn(Sender<Result<(), String>>) -> Command) -> Result<(), ModelError> {
        if let Some(reason) = self.health.failure() {
            return Err(ModelError::Group(format!("the group is unhealthy ({reason}); restart the worker")));
        }
        let (ack, done) = mpsc::channel();
        for commands in &self.commands {
            if commands.send(order(ack.clone())).is_err() {
                self.health.fail("a rank thread has exited");
            }
        }
        drop(ack);
        match done.recv_timeout(self.options.job_timeout) {
            Ok(result) => result.map_err(ModelError::Group),
            Err(_) => {
                let secs = self.options.job_timeout.as_secs_f64();
                self.health.fail(&format!("rank 0 did not finish a sleep or wake within {secs:.0} s"));
                Err(ModelError::Group(self.health.failure().unwrap_or_default()))
            }
        }
    }

    fn failed(&self, batches: usize, message: String) -> Vec<Result<BatchScores, ModelError>> {
        (0..batches).map(|_| Err(ModelError::Group(message.clone()))).collect()
    }
}

impl Forward for Group {
    fn forward(&self, batches: &[BatchLayout]) -> Vec<Result<BatchScores, ModelError>> {
        if let Some(reason) = self.health.failure() {
            return self.failed(batches.len(), format!("the group is unhealthy ({reason}); restart the worker"));
        }
        if let Some(level) = self.asleep {
            return batches.iter().map(|_| Err(crate::engine::sleep::asleep_error(level))).collect();
        }
        let id = self.next_job.get();
        self.next_job.set(id + 1);
        let job = Arc::new(Job { id, layouts: batches.to_vec() });
        for commands in &self.commands {
            if commands.send(Command::Run(Arc::clone(&job))).is_err() {
                self.health.fail("a rank thread has exited");
            }
        }
        let deadline = Instant::now() + self.options.job_timeout;
        loop {
            match self.replies.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(reply) if reply.id == id => {
                    return reply.outcomes.into_iter().map(|o| o.map_err(ModelError::Group)).collect();
                }
                Ok(_) => continue, // the answer to an earlier job that timed out
                Err(RecvTimeoutError::Timeout) => {
                    let secs = self.options.job_timeout.as_secs_f64();
                    self.health.fail(&format!("rank 0 did not answer within {secs:.0} s"));
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.health.fail("rank 0's thread has exited");
                    break;
                }
            }
        }
        let reason = self.health.failure().unwrap_or_default();
        self.failed(batches.len(), reason)
    }

    fn micro_batches(&self) -> usize {
        self.options.layout.pp
    }

    fn healthy(&self) -> bool {
        self.health.failure().is_none()
    }

    fn sleep(&mut self, level: SleepLevel) -> Result<(), ModelError> {
        if self.asleep.is_some_and(|now| now >= level) {
            return Ok(());
        }
        if level == SleepLevel::Two && self.options.source.is_none() {
            return Err(ModelError::Config("sleep level 2: this group does not know its checkpoint to reload".into()));
        }
        self.control(|ack| Command::Sleep(level, ack))?;
        self.asleep = Some(level);
        Ok(())
    }

    fn wake(&mut self) -> Result<(), ModelError> {
        if self.asleep.is_none() {
            return Ok(());
        }
        self.control(Command::Wake)?;
        self.asleep = None;
        Ok(())
    }

    fn describe(&self) -> String {
        let device = match self.options.device {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(i) => format!("cuda:{i}.."),
            other => format!("{other:?}"),
        };
        let backend = match self.options.backend {
            CommBackend::Threads => "threads",
            CommBackend::Nccl => "nccl",
        };
        let (tp, pp) = (self.options.layout.tp, self.options.layout.pp);
        format!("{device}, {:?}, tp={tp}, pp={pp}, {backend}", self.options.dtype.kind())
    }

    fn kv_kind(&self) -> tch::Kind {
        crate::model::attention::attention_kind_of(self.options.dtype.kind(), self.options.device)
    }
}

impl Drop for Group {
    /// Ask every rank to stop and wait a little for them; a rank that hangs is left behind.
    fn drop(&mut self) {
        for commands in &self.commands {
            let _ = commands.send(Command::Shutdown);
        }
        self.commands.clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in self.threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Rank `g` of this process on `device`: CUDA ranks take consecutive devices.
fn rank_device(device: Device, g: usize) -> Device {
    match device {
        Device::Cuda(first) => Device::Cuda(first + g),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batching::layout_of;
    use crate::config::{DType, ParallelLayout};
    use crate::engine::LocalModel;
    use crate::model::NemotronRewardModel;
    use crate::parallel::SingleRank;
    use tch::Kind;

    /// Ranks split over two `Group`s sharing one hub behave like the processes
    /// of a launched group: rank 0 feeds by broadcast, the others follow until
    /// rank 0 shuts the group down.
    #[test]
    fn followers_in_another_group_serve_until_rank_zero_shuts_down() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-nemotron-rm");
        let (config, _, weights) = ModelSource::Dir(dir.clone()).load().unwrap();
        let weights = Arc::new(weights);
        let layout = ParallelLayout { tp: 2, pp: 2 };
        let mut options = GroupOptions::new(layout, CommBackend::Threads, DType::F32, Device::Cpu);
        options.delivery = Delivery::Broadcast;
        options.timeout = Duration::from_secs(60);
        options.source = Some(ModelSource::Dir(dir));
        let hub = ThreadsHub::new(options.timeout);
        let followers = {
            let (config, weights, options, hub) =
                (config.clone(), Arc::clone(&weights), options.clone(), Arc::clone(&hub));
            std::thread::spawn(move || {
                let ranks = (1..4).map(|g| (RankId::new(g, layout), Device::Cpu)).collect();
                Group::launch(&config, weights, &options, ranks, CommSetup::Threads(hub)).unwrap().wait_finished()
            })
        };
        let ranks = vec![(RankId::new(0, layout), Device::Cpu)];
        let mut leader =
            Group::launch(&config, Arc::clone(&weights), &options, ranks, CommSetup::Threads(hub)).unwrap();
        let batch = |n: i64| layout_of(&[((4..4 + n).collect(), vec![(6, n / 2), (6, n)])]);
        let layouts = vec![batch(9), batch(17), batch(5)];
        let got: Vec<BatchScores> = leader.forward(&layouts).into_iter().map(Result::unwrap).collect();
        let model =
            NemotronRewardModel::load(&config, &weights, Kind::Float, Device::Cpu, Arc::new(SingleRank)).unwrap();
        let one = LocalModel { model };
        for (layout, scores) in layouts.iter().zip(&got) {
            let want = one.forward_one(layout).unwrap();
            let diff =
                want.iter().flatten().zip(scores.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            // f32 rounding of other GEMM shapes (a rank's slice, a stage's
            // micro-batch), relative to the scores' size as in tests/common/close.rs.
            let scale = want.iter().flatten().fold(1.0, |m: f32, x| m.max(x.abs()));
            assert!(diff / scale < 1e-5, "{diff} on scores up to {scale}");
        }
        // Sleep and wake reach the followers through the broadcast too; the
        // scores after each wake are the same bits.
        for level in [SleepLevel::One, SleepLevel::Two] {
            leader.sleep(level).unwrap();
            leader.wake().unwrap();
            let again: Vec<BatchScores> = leader.forward(&layouts).into_iter().map(Result::unwrap).collect();
            assert_eq!(again, got, "scores after a level-{level} wake");
        }
        drop(leader);
        assert_eq!(followers.join().unwrap(), Ok(()));
    }
}
