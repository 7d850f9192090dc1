//! Rendezvous of the processes of a multi-process group: who is rank what (from
//! the launcher's environment), and an exchange of small opaque byte strings
//! (the NCCL unique ids) over TCP, with a timeout.
//!
//! Launchers: torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`) or SLURM (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
//! and the first host of `SLURM_STEP_NODELIST` / `SLURM_JOB_NODELIST` /
//! `SLURM_NODELIST`, compressed forms like `gpu[01-02,07]` included, unless
//! `MASTER_ADDR` is set; port `MASTER_PORT` or 29500). torchrun's variables win
//! when both are present.
//!
//! The exchange is an all-gather: rank 0 listens on the master port, every
//! other rank connects (retrying until rank 0 is up) and sends its rank, the
//! world size, a tag that must match (the parallel layout) and its bytes; when
//! all have arrived rank 0 answers each with everyone's bytes in rank order.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Where this process sits in a launched group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// `torchrun` or `slurm`: which variables it came from.
    pub launcher: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("launcher environment: {0}")]
    Env(String),
    #[error("rendezvous at {addr}: {message}")]
    Exchange { addr: String, message: String },
}

fn env_err(message: impl Into<String>) -> RendezvousError {
    RendezvousError::Env(message.into())
}

impl LaunchEnv {
    /// The launcher's variables of this process, or `None` when none is set.
    pub fn from_env() -> Result<Option<LaunchEnv>, RendezvousError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchEnv>, RendezvousError> {
        let number = |name: &str| -> Result<Option<usize>, RendezvousError> {
            match get(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| env_err(format!("{name}={v} is not a number"))),
            }
        };
        let port = || -> Result<u16, RendezvousError> {
            match get("MASTER_PORT") {
                None => Ok(29500),
                Some(v) => v.trim().parse().map_err(|_| env_err(format!("MASTER_PORT={v} is not a port number"))),
            }
        };
        let (rank, world, local_rank, master_addr, launcher) = if let Some(rank) = number("RANK")? {
            let world = number("WORLD_SIZE")?.ok_or_else(|| env_err("RANK is set but WORLD_SIZE is not"))?;
            let addr = get("MASTER_ADDR").ok_or_else(|| env_err("RANK is set but MASTER_ADDR is not"))?;
            (rank, world, number("LOCAL_RANK")?.unwrap_or(0), addr, "torchrun")
        } else if let Some(rank) = number("SLURM_PROCID")? {
            let world =
                number("SLURM_NTASKS")?.ok_or_else(|| env_err("SLURM_PROCID is set but SLURM_NTASKS is not"))?;
            let addr = match get("MASTER_ADDR") {
                Some(addr) => addr,
                None => {
                    let (name, list) = ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"]
                        .into_iter()
                        .find_map(|n| get(n).map(|v| (n, v)))
                        .ok_or_else(|| env_err("SLURM_PROCID is set but neither MASTER_ADDR nor SLURM_NODELIST is"))?;
                    let hosts = expand_nodelist(&list).map_err(|e| env_err(format!("{name}={list}: {e}")))?;
                    hosts.into_iter().next().ok_or_else(|| env_err(format!("{name} is empty")))?
                }
            };
            (rank, world, number("SLURM_LOCALID")?.unwrap_or(0), addr, "slurm")
        } else {
            return Ok(None);
        };
        if world == 0 || rank >= world {
            return Err(env_err(format!("rank {rank} is not below the world size {world} ({launcher})")));
        }
        Ok(Some(LaunchEnv { rank, world, local_rank, master_addr, master_port: port()?, launcher }))
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

/// Expand a SLURM host list: `node[01-03,07],login` -> node01 node02 node03 node07 login.
/// Several bracket groups in one name multiply out (`r[1-2]n[1-2]`); zero padding is kept.
pub fn expand_nodelist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => return Err("unbalanced `]`".into()),
            ']' => depth -= 1,
            ',' if depth == 0 => {
                hosts.extend(expand_host(&list[start..i])?);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `[`".into());
    }
    hosts.extend(expand_host(&list[start..])?);
    Ok(hosts)
}

fn expand_host(host: &str) -> Result<Vec<String>, String> {
    let host = host.trim();
    if host.is_empty() {
        return Ok(Vec::new());
    }
    let Some(open) = host.find('[') else { return Ok(vec![host.to_string()]) };
    let close = open + host[open..].find(']').ok_or("unbalanced `[`")?;
    let (prefix, ranges, rest) = (&host[..open], &host[open + 1..close], &host[close + 1..]);
    let tails = if rest.is_empty() { vec![String::new()] } else { expand_host(rest)? };
    let mut out = Vec::new();
    for range in ranges.split(',') {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| format!("`{range}` is not a number range"));
        let (a, b) = (parse(lo)?, parse(hi)?);
        if b < a {
            return Err(format!("range `{range}` runs backwards"));
        }
        let width = lo.trim().len();
        for n in a..=b {
            for tail in &tails {
                out.push(format!("{prefix}{n:0width$}{tail}"));
            }
        }
    }
    Ok(out)
}

/// The opaque ids a multi-process group needs: one for the whole group's
/// communicator (made by rank 0) and one per pipeline stage for its
/// tensor-parallel communicator (made by the stage's first rank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupIdBytes {
    pub world: Vec<u8>,
    pub stages: Vec<Vec<u8>>,
}

/// Make the ids this rank is responsible for with `make_id` and exchange them,
/// so every rank ends with all of them.
pub fn exchange_group_ids(
    env: &LaunchEnv,
    layout: crate::config::ParallelLayout,
    timeout: Duration,
    mut make_id: impl FnMut() -> Result<Vec<u8>, String>,
) -> Result<GroupIdBytes, RendezvousError> {
    if env.world != layout.world() {
        return Err(env_err(format!(
            "the launcher started {} processes ({}) but --tp {} x --pp {} needs {}, one per rank",
            env.world,
            env.launcher,
            layout.tp,
            layout.pp,
            layout.world()
        )));
    }
    let fail = |message: String| RendezvousError::Exchange { addr: env.addr(), message };
    let world_id = if env.rank == 0 { make_id().map_err(&fail)? } else { Vec::new() };
    let stage_id = if env.rank.is_multiple_of(layout.tp) { make_id().map_err(&fail)? } else { Vec::new() };
    let payload = frame(&[&world_id, &stage_id]);
    let tag = format!("tp={} pp={}", layout.tp, layout.pp);
    let all = all_gather_bytes(env, &tag, &payload, timeout)?;
    let parts = |r: usize| -> Result<Vec<Vec<u8>>, RendezvousError> {
        parse_parts(&all[r]).ok_or_else(|| fail(format!("rank {r} sent a malformed id list")))
    };
    let world = parts(0)?.swap_remove(0);
    let stages = (0..layout.pp).map(|s| Ok(parts(s * layout.tp)?.swap_remove(1))).collect::<Result<_, _>>()?;
    Ok(GroupIdBytes { world, stages })
}

fn parse_parts(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut parts = Vec::new();
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        parts.push(take(len)?.to_vec());
    }
    (parts.len() == 2).then_some(parts)
}

const MAGIC: &[u8; 8] = b"rwrdv01\n";

/// Every rank's `payload`, in rank order. `tag` must be the same on every rank
/// (e.g. the parallel layout); a rank with another tag or world size is refused.
pub fn all_gather_bytes(
    env: &LaunchEnv,
    tag: &str,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, RendezvousError> {
    let deadline = Instant::now() + timeout;
    let fail = |message: String| RendezvousError::Exchange { addr: env.addr(), message };
    if env.world == 1 {
        return Ok(vec![payload.to_vec()]);
    }
    if env.rank == 0 {
        serve(env, tag, payload, deadline, timeout).map_err(fail)
    } else {
        join(env, tag, payload, deadline, timeout).map_err(fail)
    }
}

fn serve(
    env: &LaunchEnv,
    tag: &str,
    payload: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, String> {
    let listener = TcpListener::bind(("0.0.0.0", env.master_port))
        .map_err(|e| format!("rank 0 cannot listen on port {}: {e}", env.master_port))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut payloads: Vec<Option<Vec<u8>>> = vec![None; env.world];
    payloads[0] = Some(payload.to_vec());
    let mut peers: Vec<(usize, TcpStream)> = Vec::new();
    while peers.len() + 1 < env.world {
        match listener.accept() {
            Ok((mut stream, from)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                stream.set_read_timeout(Some(remaining(deadline))).map_err(|e| e.to_string())?;
                let (rank, world, their_tag, bytes) = match read_hello(&mut stream) {
                    Ok(hello) => hello,
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "rendezvous: ignoring a connection that did not say hello");
                        continue;
                    }
                };
                let refuse = if world != env.world {
                    Some(format!("rank {rank} says the world has {world} ranks, rank 0 says {}", env.world))
                } else if their_tag != tag {
                    Some(format!("rank {rank} was started with `{their_tag}`, rank 0 with `{tag}`"))
                } else if rank == 0 || rank >= env.world || payloads[rank].is_some() {
                    Some(format!("rank {rank} joined twice or is out of range (world {})", env.world))
                } else {
                    None
                };
                if let Some(message) = refuse {
                    let _ = write_frame(&mut stream, 1, &[message.as_bytes()]);
                    return Err(give_up(&mut peers, message));
                }
                payloads[rank] = Some(bytes);
                peers.push((rank, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (0..env.world).filter(|&r| payloads[r].is_none()).collect();
                    let message = format!(
                        "timed out after {:.1} s waiting for ranks {missing:?} of {} to join",
                        timeout.as_secs_f64(),
                        env.world
                    );
                    return Err(give_up(&mut peers, message));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept failed: {e}")),
        }
    }
    let all: Vec<Vec<u8>> = payloads.into_iter().map(|p| p.expect("every rank joined")).collect();
    let parts: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    for (rank, stream) in &mut peers {
        write_frame(stream, 0, &parts).map_err(|e| format!("cannot answer rank {rank}: {e}"))?;
    }
    Ok(all)
}

/// Tell the ranks that already joined why rank 0 stops, so each of them says
/// the same (rather than "connection closed"), and return the reason.
fn give_up(peers: &mut [(usize, TcpStream)], message: String) -> String {
    for (_, stream) in peers.iter_mut() {
        let _ = write_frame(stream, 1, &[message.as_bytes()]);
    }
    message
}

fn join(
    env: &LaunchEnv,
    tag: &str,
    payload: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, String> {
    let mut stream = loop {
        let last_error = match connect(&env.addr()) {
            Ok(stream) => break stream,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "rank {} cannot reach rank 0 within {:.1} s (last error: {last_error})",
                env.rank,
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    stream.set_read_timeout(Some(remaining(deadline))).map_err(|e| e.to_string())?;
    let hello = [
        MAGIC.as_slice(),
        &(env.rank as u32).to_le_bytes(),
        &(env.world as u32).to_le_bytes(),
        &frame(&[tag.as_bytes(), payload]),
    ]
    .concat();
    stream.write_all(&hello).map_err(|e| format!("cannot send to rank 0: {e}"))?;
    match read_frame(&mut stream) {
        Ok((0, parts)) if parts.len() == env.world => Ok(parts),
        Ok((0, parts)) => Err(format!("rank 0 answered with {} ranks, expected {}", parts.len(), env.world)),
        Ok((_, parts)) => Err(format!("rank 0 gave up: {}", String::from_utf8_lossy(&parts.concat()))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err("rank 0 closed the connection without answering (see rank 0's error)".to_string())
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Err(format!(
            "rank {} timed out after {:.1} s waiting for rank 0 to answer (are all {} ranks started?)",
            env.rank,
            timeout.as_secs_f64(),
            env.world
        )),
        Err(e) => Err(format!("reading rank 0's answer: {e}")),
    }
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?.collect();
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

/// `[u32 count, (u32 len, bytes) * count]`.
fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = (parts.len() as u32).to_le_bytes().to_vec();
    for p in parts {
        out.extend((p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn write_frame(stream: &mut TcpStream, status: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    stream.write_all(&[[status].as_slice(), &frame(parts)].concat())
}

fn read_u32(stream: &mut TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    stream.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_parts(stream: &mut TcpStream) -> std::io::Result<Vec<Vec<u8>>> {
    let count = read_u32(stream)?;
    if count > 1 << 16 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "too many parts"));
    }
    let mut parts = Vec::new();
    for _ in 0..count {
        let len = read_u32(stream)? as usize;
        if len > 1 << 24 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "part too large"));
        }
        let mut p = vec![0u8; len];
        stream.read_exact(&mut p)?;
        parts.push(p);
    }
    Ok(parts)
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<Vec<u8>>)> {
    let mut status = [0u8; 1];
    stream.read_exact(&mut status)?;
    Ok((status[0], read_parts(stream)?))
}

fn read_hello(stream: &mut TcpStream) -> std::io::Result<(usize, usize, String, Vec<u8>)> {
    let mut magic = [0u8; 8];
    stream.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a reward-worker rank"));
    }
    let (rank, world) = (read_u32(stream)? as usize, read_u32(stream)? as usize);
    let mut parts = read_parts(stream)?.into_iter();
    let (Some(tag), Some(payload), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a hello has a tag and a payload"));
    };
    Ok((rank, world, String::from_utf8_lossy(&tag).into_owned(), payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn expands_compressed_slurm_nodelists() {
        assert_eq!(expand_nodelist("node[01-02]").unwrap(), vec!["node01", "node02"]);
        assert_eq!(expand_nodelist("gpu[8-10,12],login1").unwrap(), vec!["gpu8", "gpu9", "gpu10", "gpu12", "login1"]);
        assert_eq!(expand_nodelist("r[1-2]n[01-02]").unwrap(), vec!["r1n01", "r1n02", "r2n01", "r2n02"]);
        assert_eq!(expand_nodelist("a-b-c").unwrap(), vec!["a-b-c"]);
        assert!(expand_nodelist("node[01-02").unwrap_err().contains("unbalanced"));
        assert!(expand_nodelist("node[3-1]").unwrap_err().contains("runs backwards"));
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_torchrun_and_slurm_variables() {
        assert_eq!(LaunchEnv::from_vars(vars(&[])).unwrap(), None);
        let torchrun = vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "n1"),
            ("MASTER_PORT", "1234"),
        ]);
        let env = LaunchEnv::from_vars(torchrun).unwrap().unwrap();
        assert_eq!(
            (env.rank, env.world, env.local_rank, env.addr(), env.launcher),
            (3, 16, 3, "n1:1234".into(), "torchrun")
        );
        let slurm = vars(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "node[01-02]"),
        ]);
        let env = LaunchEnv::from_vars(slurm).unwrap().unwrap();
        assert_eq!(
            (env.rank, env.world, env.local_rank, env.addr(), env.launcher),
            (9, 16, 1, "node01:29500".into(), "slurm")
        );
        let err = LaunchEnv::from_vars(vars(&[("RANK", "4"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "x")])).unwrap_err();
        assert_eq!(err.to_string(), "launcher environment: rank 4 is not below the world size 4 (torchrun)");
        let err = LaunchEnv::from_vars(vars(&[("RANK", "x")])).unwrap_err();
        assert_eq!(err.to_string(), "launcher environment: RANK=x is not a number");
    }
}
