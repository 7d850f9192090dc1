//! The NCCL backend, through cudarc's NCCL bindings with the library loaded at
//! run time: the crate builds and its tests run without CUDA or NCCL, and asking
//! for NCCL where it is missing is a start-up error that says so.
//!
//! Where libnccl comes from: `$REWARD_WORKER_LIBNCCL` when set (a path), else
//! the copy libtorch's CUDA library already loaded (the torch==2.11 CUDA wheel
//! ships `nvidia/nccl/lib/libnccl.so.2`), else the system's `libnccl.so.2` /
//! `libnccl.so`. cudarc's own loader looks for other
//! names (not `.so.2`), so this module opens the library itself and calls
//! through cudarc's function table.
//!
//! Tensors go to NCCL as raw device pointers (`Tensor::data_ptr`) on the legacy
//! default stream, which is the stream libtorch runs on here (tch never sets
//! another), so NCCL's work is ordered after the kernels that produced the
//! tensor. Every operation then waits for an event recorded after it, polling
//! with a deadline; past the deadline (twice as long for send/recv, as in the
//! threads backend) the communicator is aborted and the error names the
//! operation and the group. The wait is host-side per collective: simple and
//! bounded, at the cost of the host not running ahead of the GPU.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

use cudarc::driver::{result as cu, sys as cusys};
use cudarc::nccl::sys as nccl;

use super::comm::{Comm, CommError, RankComms};
use super::rank::RankId;
use super::rendezvous::GroupIdBytes;
use crate::config::ParallelLayout;

static LIBRARY: OnceLock<Result<&'static nccl::Lib, String>> = OnceLock::new();

/// The NCCL library, loaded once; the error says what was tried.
pub fn library() -> Result<&'static nccl::Lib, String> {
    LIBRARY
        .get_or_init(|| {
            let names = match std::env::var("REWARD_WORKER_LIBNCCL") {
                Ok(path) => vec![path],
                Err(_) => {
                    crate::model::load_torch_cuda();
                    vec!["libnccl.so.2".to_string(), "libnccl.so".to_string()]
                }
            };
            let mut tried = Vec::new();
            for name in &names {
                // cudarc's table panics on a missing symbol: an NCCL too old for it.
                match std::panic::catch_unwind(|| unsafe { nccl::Lib::new(name.as_str()) }) {
                    Ok(Ok(lib)) => return Ok(&*Box::leak(Box::new(lib))),
                    Ok(Err(e)) => tried.push(format!("{name}: {e}")),
                    Err(_) => tried.push(format!("{name}: lacks a function cudarc needs (NCCL older than 2.19?)")),
                }
            }
            Err(format!(
                "--backend nccl: NCCL is not available on this machine (tried {}). Install NCCL 2.x (the torch==2.11 \
                 CUDA wheel ships it) or use --backend threads",
                tried.join("; ")
            ))
        })
        .clone()
}

/// The NCCL version (e.g. 22809), after loading the library.
pub fn version() -> Result<i32, String> {
    let lib = library()?;
    let mut v = 0;
    check(unsafe { (lib.ncclGetVersion)(&mut v) }, lib).map(|()| v)
}

fn check(r: nccl::ncclResult_t, lib: &nccl::Lib) -> Result<(), String> {
    match r {
        nccl::ncclResult_t::ncclSuccess => Ok(()),
        other => {
            let text = unsafe { std::ffi::CStr::from_ptr((lib.ncclGetErrorString)(other)) };
            Err(format!("{other:?}: {}", text.to_string_lossy()))
        }
    }
}

/// The CUDA driver, initialised once.
fn driver() -> Result<(), String> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        if !unsafe { cusys::is_culib_present() } {
            return Err("--backend nccl: the CUDA driver (libcuda.so.1) is not installed".into());
        }
        cu::init().map_err(|e| format!("CUDA driver init failed: {e:?}"))
    })
    .clone()
}

/// Make `device`'s primary context (the one libtorch uses) current on this thread.
fn make_current(device: Device) -> Result<cusys::CUcontext, String> {
    let Device::Cuda(ordinal) = device else {
        return Err("--backend nccl needs GPUs: use --device cuda (or --backend threads on the CPU)".into());
    };
    driver()?;
    let dev = cu::device::get(ordinal as i32).map_err(|e| format!("cuda:{ordinal}: {e:?}"))?;
    let ctx = unsafe { cu::primary_ctx::retain(dev) }.map_err(|e| format!("cuda:{ordinal}: {e:?}"))?;
    unsafe { cu::ctx::set_current(ctx) }.map_err(|e| format!("cuda:{ordinal}: {e:?}"))?;
    Ok(ctx)
}

/// One NCCL unique id as bytes (for the rendezvous).
pub fn unique_id_bytes() -> Result<Vec<u8>, String> {
    let lib = library()?;
    let mut id = std::mem::MaybeUninit::<nccl::ncclUniqueId>::uninit();
    check(unsafe { (lib.ncclGetUniqueId)(id.as_mut_ptr()) }, lib)?;
    let id = unsafe { id.assume_init() };
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

fn id_from_bytes(bytes: &[u8]) -> Result<nccl::ncclUniqueId, String> {
    let mut id = nccl::ncclUniqueId { internal: [0; 128] };
    if bytes.len() != id.internal.len() {
        return Err(format!("an NCCL unique id has 128 bytes, got {}", bytes.len()));
    }
    for (d, &s) in id.internal.iter_mut().zip(bytes) {
        *d = s as _;
    }
    Ok(id)
}

/// The unique ids of a group's communicators: the world, and each stage's tensor-parallel group.
pub struct GroupIds {
    world: nccl::ncclUniqueId,
    stages: Vec<nccl::ncclUniqueId>,
}

// SAFETY: a unique id is 128 plain bytes.
unsafe impl Send for GroupIds {}
unsafe impl Sync for GroupIds {}

impl GroupIds {
    /// All ids made in this process (every rank lives here).
    pub fn generate(layout: ParallelLayout) -> Result<GroupIds, String> {
        let world = id_from_bytes(&unique_id_bytes()?)?;
        let stages = (0..layout.pp).map(|_| id_from_bytes(&unique_id_bytes()?)).collect::<Result<_, _>>()?;
        Ok(GroupIds { world, stages })
    }

    /// Ids exchanged with the other processes at the rendezvous.
    pub fn from_bytes(ids: &GroupIdBytes) -> Result<GroupIds, String> {
        Ok(GroupIds {
            world: id_from_bytes(&ids.world)?,
            stages: ids.stages.iter().map(|s| id_from_bytes(s)).collect::<Result<_, _>>()?,
        })
    }

    /// This rank's communicators; initialisation waits at most `timeout` for the other ranks.
    pub fn connect(
        &self,
        id: RankId,
        layout: ParallelLayout,
        device: Device,
        timeout: Duration,
        tp_name: String,
    ) -> Result<RankComms, String> {
        let world = NcclComm::init(self.world, id.global, layout.world(), device, timeout, "worker group".into())?;
        let tp = NcclComm::init(self.stages[id.stage], id.tp_rank, layout.tp, device, timeout, tp_name)?;
        Ok((std::sync::Arc::new(tp), std::sync::Arc::new(world)))
    }
}

struct RawComm(nccl::ncclComm_t);
// SAFETY: the handle is used by one thread at a time (its rank's).
unsafe impl Send for RawComm {}

/// One rank's NCCL communicator.
pub struct NcclComm {
    lib: &'static nccl::Lib,
    comm: nccl::ncclComm_t,
    rank: usize,
    world: usize,
    name: String,
    device: Device,
    ctx: cusys::CUcontext,
    timeout: Duration,
    aborted: Mutex<Option<String>>,
}

// SAFETY: a rank's communicators are used only from that rank's thread; the
// raw handles are never shared with another rank.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

impl NcclComm {
    fn init(
        id: nccl::ncclUniqueId,
        rank: usize,
        world: usize,
        device: Device,
        timeout: Duration,
        name: String,
    ) -> Result<NcclComm, String> {
        let lib = library()?;
        let ctx = make_current(device)?;
        // ncclCommInitRank blocks until every rank has joined: run it on a helper
        // thread so that a missing rank is a timeout, not a hang.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = make_current(device).and_then(|_| {
                let mut comm: nccl::ncclComm_t = std::ptr::null_mut();
                check(unsafe { (lib.ncclCommInitRank)(&mut comm, world as i32, id, rank as i32) }, lib)
                    .map(|()| RawComm(comm))
            });
            let _ = tx.send(result);
        });
        let comm = match rx.recv_timeout(timeout) {
            Ok(result) => result.map_err(|e| format!("NCCL init of the {name}: {e}"))?.0,
            Err(_) => {
                return Err(format!(
                    "NCCL init of the {name}: timed out after {:.0} s waiting for all {world} ranks to join",
                    timeout.as_secs_f64()
                ))
            }
        };
        Ok(NcclComm { lib, comm, rank, world, name, device, ctx, timeout, aborted: Mutex::new(None) })
    }

    fn error(&self, op: &str, message: String) -> CommError {
        CommError::Failed { op: op.into(), group: self.name.clone(), message }
    }

    fn dtype(&self, op: &str, kind: Kind) -> Result<nccl::ncclDataType_t, CommError> {
        use nccl::ncclDataType_t as D;
        Ok(match kind {
            Kind::Float => D::ncclFloat32,
            Kind::BFloat16 => D::ncclBfloat16,
            Kind::Half => D::ncclFloat16,
            Kind::Double => D::ncclFloat64,
            Kind::Int64 => D::ncclInt64,
            Kind::Int => D::ncclInt32,
            Kind::Uint8 => D::ncclUint8,
            other => return Err(self.error(op, format!("{other:?} tensors are not supported"))),
        })
    }

    /// A contiguous copy of `t` on this rank's device (NCCL's input and output buffer).
    fn buffer(&self, op: &str, t: &Tensor) -> Result<Tensor, CommError> {
        if t.device() != self.device {
            return Err(
                self.error(op, format!("the tensor is on {:?}, the communicator on {:?}", t.device(), self.device))
            );
        }
        t.f_contiguous().and_then(|t| t.f_detach_copy()).map_err(|e| self.error(op, e.to_string()))
    }

    /// Enqueue `launch` on the default stream, then wait for it with a deadline.
    fn run(
        &self,
        op: &str,
        waiting_for: &str,
        timeout: Duration,
        launch: impl FnOnce(nccl::cudaStream_t) -> nccl::ncclResult_t,
    ) -> Result<(), CommError> {
        if let Some(reason) = self.aborted.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(CommError::Aborted { op: op.into(), group: self.name.clone(), reason });
        }
        unsafe { cu::ctx::set_current(self.ctx) }.map_err(|e| self.error(op, format!("{e:?}")))?;
        check(launch(std::ptr::null_mut()), self.lib).map_err(|e| self.error(op, e))?;
        let event = cu::event::create(cusys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| self.error(op, format!("{e:?}")))?;
        let result = self.wait(op, waiting_for, timeout, event);
        unsafe {
            let _ = cu::event::destroy(event);
        }
        result
    }

    fn wait(&self, op: &str, waiting_for: &str, timeout: Duration, event: cusys::CUevent) -> Result<(), CommError> {
        let started = Instant::now();
        unsafe { cu::event::record(event, std::ptr::null_mut()) }.map_err(|e| self.error(op, format!("{e:?}")))?;
        let mut pause = Duration::from_micros(20);
        loop {
            match unsafe { cu::event::query(event) } {
                Ok(()) => return Ok(()),
                Err(cu::DriverError(cusys::CUresult::CUDA_ERROR_NOT_READY)) => {}
                Err(e) => return Err(self.error(op, format!("CUDA error while waiting: {e:?}"))),
            }
            let mut state = nccl::ncclResult_t::ncclSuccess;
            unsafe { (self.lib.ncclCommGetAsyncError)(self.comm, &mut state) };
            if let Err(e) = check(state, self.lib) {
                self.abort(&e);
                return Err(self.error(op, e));
            }
            if started.elapsed() >= timeout {
                let error = CommError::Timeout {
                    op: op.into(),
                    group: self.name.clone(),
                    waiting_for: waiting_for.into(),
                    seconds: started.elapsed().as_secs_f64(),
                };
                self.abort(&error.to_string());
                return Err(error);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    fn everyone(&self) -> String {
        format!("the other {} rank(s)", self.world - 1)
    }
}

impl Comm for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, t: &Tensor) -> Result<Tensor, CommError> {
        let (buf, dtype) = (self.buffer("all_reduce", t)?, self.dtype("all_reduce", t.kind())?);
        let (ptr, n, comm, lib) = (buf.data_ptr(), buf.numel(), self.comm, self.lib);
        self.run("all_reduce", &self.everyone(), self.timeout, |stream| unsafe {
            (lib.ncclAllReduce)(ptr, ptr, n, dtype, nccl::ncclRedOp_t::ncclSum, comm, stream)
        })?;
        Ok(buf)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, CommError> {
        let (input, dtype) = (self.buffer("all_gather", t)?, self.dtype("all_gather", t.kind())?);
        let mut shape = input.size();
        if shape.is_empty() {
            shape.push(1);
        }
        shape[0] *= self.world as i64;
        let out = Tensor::f_empty(shape.as_slice(), (t.kind(), self.device))
            .map_err(|e| self.error("all_gather", e.to_string()))?;
        let (src, dst, n, comm, lib) = (input.data_ptr(), out.data_ptr(), input.numel(), self.comm, self.lib);
        self.run("all_gather", &self.everyone(), self.timeout, |stream| unsafe {
            (lib.ncclAllGather)(src, dst, n, dtype, comm, stream)
        })?;
        Ok(out)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor, CommError> {
        let (buf, dtype) = (self.buffer("broadcast", t)?, self.dtype("broadcast", t.kind())?);
        let (ptr, n, comm, lib) = (buf.data_ptr(), buf.numel(), self.comm, self.lib);
        let waiting = if self.rank == root { self.everyone() } else { format!("rank {root}") };
        self.run("broadcast", &waiting, self.timeout, |stream| unsafe {
            (lib.ncclBroadcast)(ptr, ptr, n, dtype, root as i32, comm, stream)
        })?;
        Ok(buf)
    }

    fn send(&self, t: &Tensor, to: usize) -> Result<(), CommError> {
        let (buf, dtype) = (self.buffer("send", t)?, self.dtype("send", t.kind())?);
        let (ptr, n, comm, lib) = (buf.data_ptr(), buf.numel(), self.comm, self.lib);
        self.run("send", &format!("rank {to} to receive"), 2 * self.timeout, |stream| unsafe {
            (lib.ncclSend)(ptr, n, dtype, to as i32, comm, stream)
        })
    }

    fn recv(&self, from: usize, shape: &[i64], kind: Kind) -> Result<Tensor, CommError> {
        let dtype = self.dtype("recv", kind)?;
        let out = Tensor::f_empty(shape, (kind, self.device)).map_err(|e| self.error("recv", e.to_string()))?;
        let (ptr, n, comm, lib) = (out.data_ptr(), out.numel(), self.comm, self.lib);
        self.run("recv", &format!("rank {from} to send"), 2 * self.timeout, |stream| unsafe {
            (lib.ncclRecv)(ptr, n, dtype, from as i32, comm, stream)
        })?;
        Ok(out)
    }

    fn barrier(&self) -> Result<(), CommError> {
        let one = Tensor::f_zeros([1], (Kind::Float, self.device)).map_err(|e| self.error("barrier", e.to_string()))?;
        self.all_reduce(&one).map(|_| ())
    }

    fn abort(&self, reason: &str) {
        let mut aborted = self.aborted.lock().unwrap_or_else(|p| p.into_inner());
        if aborted.is_none() {
            *aborted = Some(reason.to_string());
            unsafe {
                let _ = (self.lib.ncclCommAbort)(self.comm);
            }
        }
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let aborted = self.aborted.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if !aborted {
            unsafe {
                let _ = (self.lib.ncclCommDestroy)(self.comm);
            }
        }
    }
}
