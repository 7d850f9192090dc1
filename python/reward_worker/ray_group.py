"""A replica group on Ray: `RewardWorkerGroup(replicas=N, ...)` starts N
replicas of the reward model as Ray actors, each replica in a placement group
of its own, and gives back one `RewardClient` over every replica's address
(least outstanding requests, failover, idempotent retries).

Per replica (tensor-parallel `tp` x pipeline-parallel `pp` ranks):

- **One bundle per node** of the replica. A tensor-parallel stage never spans
  nodes (its all-reduces are the group's heaviest traffic); stages are packed
  onto nodes of `gpus_per_node` GPUs, and the bundles are spread over distinct
  nodes (`STRICT_SPREAD`; one bundle: `STRICT_PACK`). Nemotron-4-340B, TP8 x
  PP2 on 2 nodes of 8 GPUs (`recipes/nemotron-4-340b-2x8.toml`): two bundles
  `{"GPU": 8, "CPU": 8}`, node 0 = stage 0 (global ranks 0-7), node 1 =
  stage 1 (ranks 8-15); see `plan_replica`.
- **One actor per bundle.** It runs the replica's processes on its node as
  its children, with the GPUs Ray gave it (`CUDA_VISIBLE_DEVICES`): a replica
  on one node is one `reward-worker serve` (or `launch RECIPE`) holding every
  rank; a replica over several nodes is one process per rank, with the
  launcher variables the binary reads (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
  `MASTER_ADDR`, `MASTER_PORT`; `src/parallel/rendezvous.rs`), rank 0's node
  serving HTTP. The actor reads the `listening on http://...` line; its
  children die with it (`PR_SET_PDEATHSIG`), and it dies with them: a child
  that exits makes the actor exit, and Ray restarts it (`max_restarts`), on the
  same port, so the client's address list stays right.
- `shutdown()` drains: SIGTERM to every server (each answers what it accepted,
  then exits), then the actors and placement groups are removed.

CPU-only clusters work the same (`gpus_per_replica=0`: ranks are threads of
one process, `--backend threads`), which is what the tests run.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .client import RewardClient


@dataclass
class NodePlan:
    """One bundle of a replica: a node's share of its ranks."""

    ranks: list[int]
    gpus: int
    cpus: float

    def bundle(self) -> dict[str, float]:
        out: dict[str, float] = {"CPU": self.cpus}
        if self.gpus:
            out["GPU"] = self.gpus
        return out


@dataclass
class ReplicaPlan:
    tp: int
    pp: int
    nodes: list[NodePlan] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        return "STRICT_PACK" if len(self.nodes) == 1 else "STRICT_SPREAD"

    def describe(self) -> str:
        lines = [f"tp={self.tp} x pp={self.pp} = {self.tp * self.pp} ranks, {len(self.nodes)} bundle(s), {self.strategy}"]
        for i, n in enumerate(self.nodes):
            stages = sorted({r // self.tp for r in n.ranks})
            lines.append(f"  bundle {i}: {n.bundle()} ranks {n.ranks[0]}-{n.ranks[-1]} (stage(s) {stages})")
        return "\n".join(lines)


def plan_replica(tp: int = 1, pp: int = 1, gpus_per_replica: int = 0, gpus_per_node: int = 8,
                 cpus_per_rank: float = 1.0) -> ReplicaPlan:
    """The bundles of one replica. With GPUs: one GPU per rank, whole
    tensor-parallel stages per node; without: one bundle, ranks as threads."""
    world = tp * pp
    if tp < 1 or pp < 1:
        raise ValueError(f"tp and pp must be at least 1, got tp={tp} pp={pp}")
    if gpus_per_replica == 0:
        return ReplicaPlan(tp, pp, [NodePlan(list(range(world)), 0, cpus_per_rank * world)])
    if gpus_per_replica != world:
        raise ValueError(f"gpus_per_replica={gpus_per_replica}: a replica of tp={tp} x pp={pp} runs one rank per GPU, "
                         f"so it needs {world} (or 0 on CPUs)")
    if tp > gpus_per_node or gpus_per_node % tp:
        raise ValueError(f"tp={tp} does not fit whole on nodes of {gpus_per_node} GPUs: a tensor-parallel stage "
                         f"must stay on one node (tp must divide gpus_per_node)")
    per_node = min(world, gpus_per_node)
    nodes = [list(range(s, min(s + per_node, world))) for s in range(0, world, per_node)]
    return ReplicaPlan(tp, pp, [NodePlan(r, len(r), cpus_per_rank * len(r)) for r in nodes])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the actor (its parent) dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ReplicaNode:
    """One node of one replica (the body of the Ray actor): starts its rank
    processes, and exits when one of them does, so that Ray restarts it."""

    def __init__(self, command: list[str], ranks: list[int], world: int, port: int,
                 master: Optional[tuple[str, int]], start_timeout: float):
        self.procs: list[subprocess.Popen] = []
        self.url: Optional[str] = None
        self.draining = False
        self.log: list[str] = []
        listening = threading.Event()
        for local, rank in enumerate(ranks):
            env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "reward_worker=info"))
            if world > 1 and master is not None:
                env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local),
                           MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
            proc = subprocess.Popen([*command, "--port", str(port)], env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=_die_with_parent)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(proc, rank == 0, listening), daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()
        if 0 in ranks and not listening.wait(start_timeout):
            self._exit(f"no `listening on` line within {start_timeout:.0f} s: {self.log[-20:]}")

    def _read(self, proc: subprocess.Popen, serves: bool, listening: threading.Event) -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            self.log = (self.log + [line])[-200:]
            if serves and line.startswith("listening on http://"):
                self.url = line[len("listening on "):].strip()
                listening.set()

    def _watch(self) -> None:
        while True:
            for p in self.procs:
                if p.poll() is not None and not self.draining:
                    self._exit(f"pid {p.pid} exited with {p.returncode}")
            time.sleep(0.2)

    def _exit(self, why: str) -> None:
        print(f"reward-worker replica node: {why}; exiting so Ray restarts it", file=sys.stderr, flush=True)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        os._exit(1)

    def address(self) -> Optional[str]:
        return self.url

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def drain(self, timeout: float = 60.0) -> list[Optional[int]]:
        """SIGTERM every process (the server answers what it accepted), then wait."""
        self.draining = True
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
        return [p.returncode for p in self.procs]


def _binary() -> str:
    if os.environ.get("REWARD_WORKER_BIN"):
        return os.environ["REWARD_WORKER_BIN"]
    return "reward-worker"


def _recipe_layout(recipe: str) -> tuple[int, int]:
    import tomllib

    parallel = tomllib.loads(Path(recipe).read_text()).get("parallel", {})
    return int(parallel.get("tp", 1)), int(parallel.get("pp", 1))


class RewardWorkerGroup:
    """`replicas` copies of the reward model on a Ray cluster (`ray.init()` first).

    `recipe`: a training recipe (`reward-worker launch RECIPE`), else `serve`
    with `serve_args` (model, dtype, device, ...). `tp`/`pp` default to the
    recipe's `[parallel]`. `gpus_per_replica`: 0 on CPUs, else `tp * pp`.
    `client` is a `RewardClient` over every replica; `urls` their addresses.
    """

    def __init__(self, replicas: int = 1, recipe: Optional[str] = None, tp: Optional[int] = None,
                 pp: Optional[int] = None, gpus_per_replica: int = 0, *, serve_args: Sequence[str] = (),
                 binary: Optional[str] = None, gpus_per_node: int = 8, cpus_per_rank: float = 1.0,
                 host: str = "127.0.0.1", ports: Optional[Sequence[int]] = None, start_timeout: float = 600.0,
                 max_restarts: int = -1, client_options: Optional[dict[str, Any]] = None):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        if recipe is not None:
            rtp, rpp = _recipe_layout(recipe)
            tp, pp = tp or rtp, pp or rpp
        self.tp, self.pp = tp or 1, pp or 1
        self.plan = plan_replica(self.tp, self.pp, gpus_per_replica, gpus_per_node, cpus_per_rank)
        world = self.tp * self.pp
        base = [binary or _binary()]
        base += ["launch", recipe] if recipe else ["serve"]
        base += ["--host", host, *serve_args]
        if tp or pp or recipe is None:
            base += ["--tp", str(self.tp), "--pp", str(self.pp)]
        self.groups, self.actors, self.urls = [], [], []
        actor = ray.remote(max_restarts=max_restarts, max_task_retries=-1)(ReplicaNode)

        @ray.remote(num_cpus=0)
        def free_port() -> tuple[str, int]:
            return ray.util.get_node_ip_address(), _free_port()

        for r in range(replicas):
            pg = placement_group([n.bundle() for n in self.plan.nodes], strategy=self.plan.strategy)
            ray.get(pg.ready(), timeout=start_timeout)
            self.groups.append(pg)
            on = lambda i: PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)  # noqa: E731
            ip, port = ray.get(free_port.options(scheduling_strategy=on(0)).remote())
            port = ports[r] if ports else port
            master = None
            if len(self.plan.nodes) > 1:
                _, rendezvous = ray.get(free_port.options(scheduling_strategy=on(0)).remote())
                master = (ip, rendezvous)
            nodes = []
            for i, n in enumerate(self.plan.nodes):
                # A one-node replica is one process holding every rank (threads,
                # or NCCL over the node's GPUs); over nodes, one process per rank.
                ranks = n.ranks if master else [0]
                nodes.append(actor.options(num_cpus=n.cpus, num_gpus=n.gpus, scheduling_strategy=on(i)).remote(
                    base, ranks, world if master else 1, port, master, start_timeout))
            self.actors.append(nodes)
            self.urls.append(ray.get(nodes[0].address.remote(), timeout=start_timeout))
        self.client = RewardClient(self.urls, **(client_options or {}))

    def pids(self, replica: int) -> list[int]:
        """The processes of `replica` (rank 0's first)."""
        import ray

        return [p for a in self.actors[replica] for p in ray.get(a.pids.remote())]

    def shutdown(self, timeout: float = 60.0) -> None:
        """Drain every replica (each answers what it accepted), then remove the actors and placement groups."""
        import ray
        from ray.util.placement_group import remove_placement_group

        self.client.close()
        drains = [a.drain.remote(timeout) for nodes in self.actors for a in nodes]
        try:
            ray.get(drains, timeout=timeout + 10)
        finally:
            for nodes in self.actors:
                for a in nodes:
                    ray.kill(a, no_restart=True)
            for pg in self.groups:
                remove_placement_group(pg)

    def __enter__(self) -> "RewardWorkerGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
