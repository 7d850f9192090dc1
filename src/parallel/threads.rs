//! The in-process backend: ranks are OS threads of one process and exchange
//! tensors through shared memory. One [`ThreadsHub`] serves every group of a
//! worker group (the tensor-parallel groups and the whole world), so aborting
//! it wakes every waiting rank at once.
//!
//! A collective is a slot keyed by (group, sequence number): each rank drops
//! its tensor in, the last to arrive combines them (outside the lock), and each
//! rank takes its own copy of the result. Point-to-point sends go through a
//! mailbox per (sender, receiver) that holds at most [`MAILBOX_DEPTH`] tensors,
//! so a fast stage cannot run arbitrarily far ahead of a slow one (NCCL's send
//! also waits for its receiver).
//!
//! Sends and receives wait twice the collective timeout: a pipeline stage
//! legitimately waits for a whole stage's work upstream, and when a rank hangs
//! inside a collective, its tensor-parallel peers (whose timeouts name it) give
//! up first and abort the group, instead of the next stage blaming the peer it
//! was waiting for.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

use super::comm::{Comm, CommError};

/// Tensors a sender may have in flight to one receiver.
pub const MAILBOX_DEPTH: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    AllReduce,
    AllGather,
    Broadcast(usize),
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce",
            Op::AllGather => "all_gather",
            Op::Broadcast(_) => "broadcast",
        }
    }
}

struct Slot {
    op: Op,
    inputs: Vec<Option<Tensor>>,
    arrived: usize,
    output: Option<Result<Tensor, String>>,
    taken: usize,
}

#[derive(Default)]
struct HubState {
    aborted: Option<String>,
    slots: HashMap<(usize, u64), Slot>,
    /// (sender, receiver) global ranks -> tensors in flight.
    mail: HashMap<(usize, usize), VecDeque<Tensor>>,
}

/// Shared state of one in-process worker group.
pub struct ThreadsHub {
    state: Mutex<HubState>,
    wake: Condvar,
    timeout: Duration,
}

impl ThreadsHub {
    /// `timeout` bounds every wait of a collective; sends and receives wait twice as long.
    pub fn new(timeout: Duration) -> Arc<ThreadsHub> {
        Arc::new(ThreadsHub { state: Mutex::new(HubState::default()), wake: Condvar::new(), timeout })
    }

    /// Fail every pending and later operation with `reason`.
    pub fn abort(&self, reason: &str) {
        let mut state = self.lock();
        if state.aborted.is_none() {
            state.aborted = Some(reason.to_string());
        }
        state.slots.clear();
        state.mail.clear();
        drop(state);
        self.wake.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A rank that panicked while holding the lock leaves consistent state
        // behind (every update is a single insert or take), so keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One rank's handle on one group of a [`ThreadsHub`].
pub struct ThreadComm {
    hub: Arc<ThreadsHub>,
    /// Identifies the group within the hub (the same for all its members).
    group: usize,
    name: String,
    /// Global ranks of the group's members, in group-rank order.
    members: Vec<usize>,
    rank: usize,
    device: Device,
    seq: AtomicU64,
}

impl ThreadComm {
    /// Rank `rank` of the group `group` (an id unique within the hub) whose
    /// members are the global ranks `members`. Results land on `device`.
    pub fn new(
        hub: Arc<ThreadsHub>,
        group: usize,
        name: impl Into<String>,
        members: Vec<usize>,
        rank: usize,
        device: Device,
    ) -> ThreadComm {
        assert!(rank < members.len(), "rank {rank} outside a group of {}: this is a bug", members.len());
        ThreadComm { hub, group, name: name.into(), members, rank, device, seq: AtomicU64::new(0) }
    }

    fn timeout(&self, op: &str, waiting_for: String, started: Instant) -> CommError {
        CommError::Timeout {
            op: op.into(),
            group: self.name.clone(),
            waiting_for,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn aborted(&self, op: &str, reason: &str) -> CommError {
        CommError::Aborted { op: op.into(), group: self.name.clone(), reason: reason.into() }
    }

    fn failed(&self, op: &str, message: impl Into<String>) -> CommError {
        CommError::Failed { op: op.into(), group: self.name.clone(), message: message.into() }
    }

    /// Wait on the hub's condition variable until `deadline`; false once it has passed.
    fn wait<'a>(&self, guard: MutexGuard<'a, HubState>, deadline: Instant) -> (MutexGuard<'a, HubState>, bool) {
        let now = Instant::now();
        if now >= deadline {
            return (guard, false);
        }
        let (guard, _) =
            self.hub.wake.wait_timeout(guard, deadline - now).unwrap_or_else(|poisoned| poisoned.into_inner());
        (guard, true)
    }

    fn collective(&self, op: Op, t: &Tensor) -> Result<Tensor, CommError> {
        let name = op.name();
        let n = self.members.len();
        let key = (self.group, self.seq.fetch_add(1, Ordering::SeqCst));
        let started = Instant::now();
        let deadline = started + self.hub.timeout;
        let mut state = self.hub.lock();
        if let Some(reason) = &state.aborted {
            return Err(self.aborted(name, reason));
        }
        let slot = state.slots.entry(key).or_insert_with(|| Slot {
            op,
            inputs: (0..n).map(|_| None).collect(),
            arrived: 0,
            output: None,
            taken: 0,
        });
        if slot.op != op {
            let message = format!("ranks disagree on the operation ({} here, {} elsewhere)", name, slot.op.name());
            return Err(self.failed(name, message));
        }
        slot.inputs[self.rank] = Some(t.shallow_clone());
        slot.arrived += 1;
        if slot.arrived == n {
            let inputs: Vec<Tensor> = slot.inputs.iter_mut().map(|i| i.take().expect("every rank arrived")).collect();
            drop(state);
            let output = combine(op, inputs).map_err(|e| e.to_string());
            state = self.hub.lock();
            if let Some(slot) = state.slots.get_mut(&key) {
                slot.output = Some(output);
            }
            self.hub.wake.notify_all();
        }
        loop {
            if let Some(reason) = &state.aborted {
                return Err(self.aborted(name, reason));
            }
            let slot = state.slots.get_mut(&key).expect("a slot lives until its last rank takes the result");
            if let Some(output) = &slot.output {
                let mine = match output {
                    Ok(t) => t
                        .f_to_device(self.device)
                        .and_then(|t| t.f_detach_copy())
                        .map_err(|e| self.failed(name, e.to_string())),
                    Err(message) => Err(self.failed(name, message.clone())),
                };
                slot.taken += 1;
                if slot.taken == n {
                    state.slots.remove(&key);
                }
                return mine;
            }
            let missing: Vec<usize> =
                slot.inputs.iter().enumerate().filter(|(_, i)| i.is_none()).map(|(r, _)| self.members[r]).collect();
            let (guard, in_time) = self.wait(state, deadline);
            state = guard;
            if !in_time {
                let waiting_for = if missing.is_empty() {
                    "the result to be combined".to_string()
                } else {
                    format!("global rank(s) {missing:?}")
                };
                // Leave the slot: the late ranks find it and time out or are aborted.
                return Err(self.timeout(name, waiting_for, started));
            }
        }
    }
}

/// The result of a collective from every rank's input, in rank order.
fn combine(op: Op, inputs: Vec<Tensor>) -> Result<Tensor, tch::TchError> {
    let device = inputs[0].device();
    match op {
        Op::AllReduce => {
            let mut sum = inputs[0].f_to_device(device)?.f_detach_copy()?;
            for t in &inputs[1..] {
                sum = sum.f_add(&t.f_to_device(device)?)?;
            }
            Ok(sum)
        }
        Op::AllGather => {
            let on_one: Vec<Tensor> = inputs.iter().map(|t| t.f_to_device(device)).collect::<Result<_, _>>()?;
            Tensor::f_cat(&on_one, 0)
        }
        Op::Broadcast(root) => inputs[root].f_detach_copy(),
    }
}

impl Comm for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.members.len()
    }

    fn all_reduce(&self, t: &Tensor) -> Result<Tensor, CommError> {
        self.collective(Op::AllReduce, t)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, CommError> {
        self.collective(Op::AllGather, t)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor, CommError> {
        if root >= self.members.len() {
            return Err(self.failed("broadcast", format!("root {root} is outside a group of {}", self.members.len())));
        }
        self.collective(Op::Broadcast(root), t)
    }

    fn send(&self, t: &Tensor, to: usize) -> Result<(), CommError> {
        let Some(&peer) = self.members.get(to) else {
            return Err(self.failed("send", format!("rank {to} is outside a group of {}", self.members.len())));
        };
        let copy = t.f_detach_copy().map_err(|e| self.failed("send", e.to_string()))?;
        let key = (self.members[self.rank], peer);
        let started = Instant::now();
        let deadline = started + 2 * self.hub.timeout;
        let mut state = self.hub.lock();
        loop {
            if let Some(reason) = &state.aborted {
                return Err(self.aborted("send", reason));
            }
            let queue = state.mail.entry(key).or_default();
            if queue.len() < MAILBOX_DEPTH {
                queue.push_back(copy);
                self.hub.wake.notify_all();
                return Ok(());
            }
            let (guard, in_time) = self.wait(state, deadline);
            state = guard;
            if !in_time {
                return Err(self.timeout("send", format!("global rank {peer} to receive"), started));
            }
        }
    }

    fn recv(&self, from: usize, shape: &[i64], kind: Kind) -> Result<Tensor, CommError> {
        let Some(&peer) = self.members.get(from) else {
            return Err(self.failed("recv", format!("rank {from} is outside a group of {}", self.members.len())));
        };
        let key = (peer, self.members[self.rank]);
        let started = Instant::now();
        let deadline = started + 2 * self.hub.timeout;
        let mut state = self.hub.lock();
        loop {
            if let Some(reason) = &state.aborted {
                return Err(self.aborted("recv", reason));
            }
            if let Some(t) = state.mail.get_mut(&key).and_then(VecDeque::pop_front) {
                self.hub.wake.notify_all();
                drop(state);
                if t.size() != shape || t.kind() != kind {
                    let message = format!(
                        "expected {shape:?} {kind:?} from global rank {peer}, got {:?} {:?}",
                        t.size(),
                        t.kind()
                    );
                    return Err(self.failed("recv", message));
                }
                return t.f_to_device(self.device).map_err(|e| self.failed("recv", e.to_string()));
            }
            let (guard, in_time) = self.wait(state, deadline);
            state = guard;
            if !in_time {
                return Err(self.timeout("recv", format!("global rank {peer} to send"), started));
            }
        }
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.collective(Op::AllReduce, &Tensor::zeros([1], (Kind::Float, Device::Cpu))).map(|_| ())
    }

    fn abort(&self, reason: &str) {
        self.hub.abort(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f(rank comm)` on `n` threads of one group; results in rank order.
    fn on_ranks<T: Send + 'static>(
        n: usize,
        timeout: Duration,
        f: impl Fn(ThreadComm) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let hub = ThreadsHub::new(timeout);
        let f = Arc::new(f);
        let handles: Vec<_> = (0..n)
            .map(|r| {
                let (hub, f) = (Arc::clone(&hub), Arc::clone(&f));
                std::thread::spawn(move || f(ThreadComm::new(hub, 0, "test group", (0..n).collect(), r, Device::Cpu)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn collectives_agree_across_ranks() {
        let out = on_ranks(3, Duration::from_secs(20), |c| {
            let mine = Tensor::from_slice(&[c.rank() as f32 + 1.0, 10.0]);
            let sum = values(&c.all_reduce(&mine).unwrap());
            let gathered = values(&c.all_gather(&mine).unwrap());
            let root = values(&c.broadcast(&mine, 2).unwrap());
            c.barrier().unwrap();
            // repeated collectives keep their order
            let again = values(&c.all_reduce(&Tensor::from_slice(&[1.0f32])).unwrap());
            (sum, gathered, root, again)
        });
        for (sum, gathered, root, again) in out {
            assert_eq!(sum, vec![6.0, 30.0]);
            assert_eq!(gathered, vec![1.0, 10.0, 2.0, 10.0, 3.0, 10.0]);
            assert_eq!(root, vec![3.0, 10.0]);
            assert_eq!(again, vec![3.0]);
        }
    }

    #[test]
    fn send_and_recv_keep_order_and_check_shapes() {
        let out = on_ranks(2, Duration::from_secs(20), |c| {
            if c.rank() == 0 {
                for i in 0..5 {
                    c.send(&Tensor::from_slice(&[i as f32; 3]), 1).unwrap();
                }
                c.send(&Tensor::from_slice(&[0i64]), 1).unwrap();
                vec![]
            } else {
                let mut got: Vec<f32> = (0..5).map(|_| values(&c.recv(0, &[3], Kind::Float).unwrap())[0]).collect();
                let err = c.recv(0, &[3], Kind::Float).unwrap_err().to_string();
                assert!(err.contains("expected [3] Float from global rank 0, got [1] Int64"), "{err}");
                got.push(-1.0);
                got
            }
        });
        assert_eq!(out[1], vec![0.0, 1.0, 2.0, 3.0, 4.0, -1.0]);
    }

    #[test]
    fn a_missing_rank_is_named_in_the_timeout() {
        let out = on_ranks(3, Duration::from_millis(200), |c| {
            if c.rank() == 2 {
                return String::new();
            }
            c.all_reduce(&Tensor::from_slice(&[1.0f32])).unwrap_err().to_string()
        });
        for msg in &out[..2] {
            assert!(msg.starts_with("all_reduce in the test group: timed out after"), "{msg}");
            assert!(msg.ends_with("waiting for global rank(s) [2]"), "{msg}");
        }
        let hub = ThreadsHub::new(Duration::from_millis(100));
        let c = ThreadComm::new(hub, 0, "pair", vec![0, 1], 0, Device::Cpu);
        let err = c.recv(1, &[1], Kind::Float).unwrap_err().to_string();
        assert!(
            err.contains("recv in the pair: timed out") && err.contains("waiting for global rank 1 to send"),
            "{err}"
        );
        for _ in 0..MAILBOX_DEPTH {
            c.send(&Tensor::from_slice(&[1.0f32]), 1).unwrap();
        }
        let err = c.send(&Tensor::from_slice(&[1.0f32]), 1).unwrap_err().to_string();
        assert!(err.contains("waiting for global rank 1 to receive"), "{err}");
    }

    #[test]
    fn abort_wakes_every_waiting_rank() {
        let out = on_ranks(3, Duration::from_secs(60), |c| {
            if c.rank() == 2 {
                std::thread::sleep(Duration::from_millis(100));
                c.abort("rank 2 failed: injected");
                return String::new();
            }
            // The timeout is a minute: only the abort can end this wait with this message.
            c.all_reduce(&Tensor::from_slice(&[1.0f32])).unwrap_err().to_string()
        });
        for msg in &out[..2] {
            assert_eq!(msg, "all_reduce in the test group: the group was aborted: rank 2 failed: injected");
        }
    }
}
