//! Fault injection for tests: make one rank fail in the middle of a batch.
//!
//! The fault wraps the rank's tensor-parallel [`Comm`] and fires at its n-th
//! all-reduce (two per layer), so it lands inside a forward pass, between
//! layers, whatever the layout (with one tensor-parallel rank the all-reduce
//! is a no-op but is still counted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tch::{Kind, Tensor};

use super::comm::{Comm, CommError};

/// What the failing rank does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The all-reduce returns an error (as a CUDA or NCCL error would).
    Error,
    /// The rank's thread panics.
    Panic,
    /// The rank stops answering (sleeps for an hour): its peers must time out.
    Hang,
}

/// Rank `rank` (global) fails at its `at_all_reduce`-th all-reduce (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub rank: usize,
    pub at_all_reduce: u64,
    pub kind: FaultKind,
}

/// A [`Comm`] that fails as its [`Fault`] says, and otherwise passes through.
pub(crate) struct FaultyComm {
    inner: Arc<dyn Comm>,
    fault: Fault,
    calls: AtomicU64,
}

impl FaultyComm {
    pub(crate) fn wrap(inner: Arc<dyn Comm>, fault: Fault) -> Arc<dyn Comm> {
        Arc::new(FaultyComm { inner, fault, calls: AtomicU64::new(0) })
    }
}

impl Comm for FaultyComm {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor, CommError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fault.at_all_reduce {
            let what = format!("injected fault at all_reduce #{n} of global rank {}", self.fault.rank);
            match self.fault.kind {
                FaultKind::Error => return Err(CommError::Unavailable(what)),
                FaultKind::Panic => panic!("{what}"),
                FaultKind::Hang => std::thread::sleep(Duration::from_secs(3600)),
            }
        }
        self.inner.all_reduce(t)
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor, CommError> {
        self.inner.all_gather(t)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor, CommError> {
        self.inner.broadcast(t, root)
    }
    fn send(&self, t: &Tensor, to: usize) -> Result<(), CommError> {
        self.inner.send(t, to)
    }
    fn recv(&self, from: usize, shape: &[i64], kind: Kind) -> Result<Tensor, CommError> {
        self.inner.recv(from, shape, kind)
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.inner.barrier()
    }
    fn abort(&self, reason: &str) {
        self.inner.abort(reason)
    }
}
