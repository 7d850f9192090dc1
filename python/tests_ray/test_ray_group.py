"""The Ray replica group on a local, CPU-only Ray cluster started here: two
replicas of the embedded demo model, a stream of requests from the group's
client, and one replica's `reward-worker` process killed in the middle.
Every request is answered once with the scores its pair gets alone; the
replica comes back on its address (Ray restarts its actor); shutdown drains.

Own directory (and `make test-ray`): Ray's start-up is slow on 2 cores, and
`python/tests` must not need Ray."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), os.environ.get("PYTHONPATH")]))

import ray  # noqa: E402  (scripts/setup.sh installs it: a missing Ray fails, never skips)

from reward_worker.ray_group import RewardWorkerGroup, plan_replica  # noqa: E402


def binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = (target if target.is_absolute() else ROOT / target) / "release" / "reward-worker"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --release` first (make test does)")
    return path


def test_the_2x8_layout_keeps_each_stage_on_one_node():
    plan = plan_replica(tp=8, pp=2, gpus_per_replica=16, gpus_per_node=8)
    assert [n.bundle() for n in plan.nodes] == [{"CPU": 8.0, "GPU": 8}, {"CPU": 8.0, "GPU": 8}]
    assert [n.ranks for n in plan.nodes] == [list(range(8)), list(range(8, 16))]
    assert plan.strategy == "STRICT_SPREAD"
    print(plan.describe())
    one = plan_replica(tp=2, pp=2, gpus_per_replica=0, cpus_per_rank=0.5)
    assert [n.bundle() for n in one.nodes] == [{"CPU": 2.0}] and one.strategy == "STRICT_PACK"
    with pytest.raises(ValueError, match="tp must divide gpus_per_node"):
        plan_replica(tp=3, pp=1, gpus_per_replica=3, gpus_per_node=8)
    with pytest.raises(ValueError, match="needs 4"):
        plan_replica(tp=2, pp=2, gpus_per_replica=2)


@pytest.fixture(scope="module")
def cluster():
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
             object_store_memory=128 * 1024 * 1024)  # nothing big goes through it
    yield
    ray.shutdown()


PAIRS = [(f"What is {a}+{b}?", f"It is {a + b}.") for a in range(3) for b in range(3)]


def served(url: str) -> float:
    """`/v1/rewards` requests a replica answered, from its /metrics."""
    lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
    return sum(float(l.rsplit(" ", 1)[1]) for l in lines
               if l.startswith("reward_worker_http_requests_total{") and 'route="/v1/rewards"' in l)


def close(a: list[float], b: list[float]) -> bool:
    # Another batch composition rounds differently in f32 (README "Tests on every CPU").
    return max(abs(x - y) for x, y in zip(a, b)) <= 5e-6 * max(1.0, *map(abs, a))


def test_two_replicas_answer_every_request_once_while_one_is_killed(cluster):
    group = RewardWorkerGroup(
        replicas=2, binary=str(binary()), serve_args=["--dtype", "f32", "--threads", "1"],
        client_options={"timeout": 90, "max_retries": 30},
    )
    try:
        client = group.client
        alone = {p: client.score(prompts=[p[0]], responses=[p[1]])[0].raw for p in PAIRS}
        # Kill the replica that has been serving (the client keeps to ready
        # replicas, so the other one has not been asked yet): a real failover.
        hit = max(range(2), key=lambda r: served(group.urls[r]))
        victim = group.pids(hit)[0]
        answers: list[tuple[int, tuple[str, str], list[float], float, float]] = []
        lock = threading.Lock()
        killed = threading.Event()
        kill_time = [0.0]

        def stream(worker: int) -> None:
            for i in range(12):
                pair = PAIRS[(worker * 5 + i) % len(PAIRS)]
                started = time.monotonic()
                raw = client.score(prompts=[pair[0]], responses=[pair[1]])[0].raw
                with lock:
                    answers.append((worker * 100 + i, pair, raw, started, time.monotonic()))
                    if len(answers) == 8 and not killed.is_set():
                        os.kill(victim, signal.SIGKILL)
                        kill_time[0] = time.monotonic()
                        killed.set()

        threads = [threading.Thread(target=stream, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert killed.is_set()
        ids = [a[0] for a in answers]
        assert len(ids) == 36 and len(set(ids)) == 36, "a request was lost or answered twice"
        wrong = [(a[1], a[2], alone[a[1]]) for a in answers if not close(a[2], alone[a[1]])]
        assert not wrong, wrong
        # Failover time: the slowest call in flight at the kill or started in the second after it
        # (those are the calls that met the dead replica and moved to the other).
        at_kill = [end - start for (_, _, _, start, end) in answers if start <= kill_time[0] + 1.0 and end >= kill_time[0]]
        failover = max(at_kill, default=0.0)
        assert client.stats["failovers"] >= 1, client.stats

        # The replica comes back (Ray restarts its actor, which restarts the server on its port).
        url = group.urls[hit]
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the killed replica did not come back"
            time.sleep(0.2)
        back = time.monotonic() - kill_time[0]
        assert group.pids(hit)[0] != victim
        print(f"\nfailover: calls in flight at the kill or sent in the second after it took at most {failover:.2f} s "
              f"({len(at_kill)} call(s)); the replica was back {back:.2f} s after the kill; "
              f"client stats {client.stats}")
        # Both replicas serve again: a call to the restarted one directly.
        direct = httpx.post(url + "/v1/rewards", json={"conversations": [
            {"messages": [{"role": "user", "content": PAIRS[0][0]}, {"role": "assistant", "content": PAIRS[0][1]}]}
        ]}, timeout=30).json()
        assert close(direct["results"][0]["turns"][0]["raw"], alone[PAIRS[0]])
        # Sleep and wake every replica through the group's client.
        slept = client.sleep(level=2)
        assert all(s["is_sleeping"] and s["level"] == 2 for s in slept.values()), slept
        woke = client.wake_up()
        assert not any(s["is_sleeping"] for s in woke.values()), woke
        again = client.score(prompts=[PAIRS[0][0]], responses=[PAIRS[0][1]])[0].raw
        assert close(again, alone[PAIRS[0]])
    finally:
        group.shutdown()
    for url in group.urls:
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/health", timeout=2)
