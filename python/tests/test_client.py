"""The client against real servers: failover when a replica dies mid-stream,
Retry-After on 429, a total deadline against a server that never answers,
and idempotent retries that the server computes once."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Proxy, StallServer, Worker
from reward_worker import AsyncRewardClient, DeadlineExceeded, Event, RequestRefused, RewardClient

PROMPTS = [f"Question {i}: what is {i} plus {i}?" for i in range(24)]
RESPONSES = [f"It is {2 * i}." + " Really." * (i % 4) for i in range(24)]


def scale(values) -> float:
    return max(1.0, max(abs(v) for v in values))


def same(got, want, what: str) -> None:
    """Equal within 1e-5 of the values' magnitude (f32 kernels round differently with batch composition)."""
    s = scale(want)
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= 1e-5 * s, f"{what}[{i}]: {g} vs {w}"


def expected(worker: Worker) -> list[dict]:
    """Each pair scored alone with plain httpx: what the client must return."""
    out = []
    for p, r in zip(PROMPTS, RESPONSES):
        body = {"conversations": [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}]}
        out.append(httpx.post(worker.url + "/v1/rewards", json=body, timeout=60, trust_env=False).json()["results"][0])
    return out


def test_score_returns_the_servers_numbers_sync_and_async(worker):
    want = expected(worker)
    with RewardClient(worker.url, timeout=60) as client:
        got = client.score(prompts=PROMPTS[:4], responses=RESPONSES[:4])
        texts = client.score_texts([p + r for p, r in zip(PROMPTS[:4], RESPONSES[:4])], prompts=PROMPTS[:4])
        with pytest.raises(RequestRefused) as refused:
            client.score(records=[{"messages": [{"role": "robot", "content": "x"}]}])
    for g, w, t in zip(got, want, texts):
        same(g.raw, w["turns"][-1]["raw"], "raw")
        same([g.reward, t.reward], [w["turns"][-1]["reward"]] * 2, "reward")
        assert set(t.attributes) == {"helpfulness", "correctness", "coherence", "complexity", "verbosity"}
    assert refused.value.status == 400 and "conversations[0]" in refused.value.message
    assert RewardClient([worker.url, "http://127.0.0.1:9"], timeout=5).ready() == {worker.url: True,
                                                                                  "http://127.0.0.1:9": False}

    async def run():
        async with AsyncRewardClient([worker.url], timeout=60) as client:
            assert await client.ready() == {worker.url: True}
            return await asyncio.gather(*(client.score(prompts=[p], responses=[r]) for p, r in zip(PROMPTS, RESPONSES)))

    for [g], w in zip(asyncio.run(run()), want):
        same(g.raw, w["turns"][-1]["raw"], "async raw")


def test_failover_when_one_of_two_servers_is_killed_mid_stream(worker):
    want = expected(worker)
    a, b = Worker(), Worker()
    events: list[Event] = []
    answered: dict[int, list] = {}
    lock = threading.Lock()
    client = RewardClient([a.url, b.url], timeout=60, on_event=events.append)

    def one(i: int) -> None:
        [result] = client.score(prompts=[PROMPTS[i]], responses=[RESPONSES[i]])
        with lock:
            answered.setdefault(i, []).append(result)
        if len(answered) == 8:
            a.kill()  # mid-stream: requests are in flight or queued on both

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(len(PROMPTS))))
    finally:
        a.kill()
        b.kill()
    assert sorted(answered) == list(range(len(PROMPTS))), "every request answered"
    assert all(len(v) == 1 for v in answered.values()), "each answered once"
    for i, [result] in answered.items():
        same(result.raw, want[i]["turns"][-1]["raw"], f"request {i}")
    assert any(e.kind == "down" and e.url == a.url for e in events), "the dead replica was noticed"
    assert not any(e.kind == "down" and e.url == b.url for e in events)
    print(f"failover: {len(answered)} answered, client stats {client.stats}")


def test_retry_after_is_honoured_on_429(worker):
    proxy = Proxy(worker.url, "throttle", retry_after=1.5)
    events: list[Event] = []
    try:
        with RewardClient(proxy.url, timeout=30, on_event=events.append) as client:
            [got] = client.score(prompts=PROMPTS[:1], responses=RESPONSES[:1])
    finally:
        proxy.close()
    same(got.raw, expected(worker)[0]["turns"][-1]["raw"], "raw")
    throttled = [e for e in events if e.kind == "throttled"]
    retries = [e for e in events if e.kind == "retry"]
    assert [e.status for e in throttled] == [429] and throttled[0].wait == 1.5
    assert len(retries) == 1 and retries[0].wait >= 1.5, retries
    posts = [t for k, path, t in proxy.arrivals if path == "/v1/rewards"]
    assert len(posts) == 2 and posts[1] - posts[0] >= 1.5 - 0.01, "the retry came no sooner than Retry-After"
    keys = {k for k, path, _ in proxy.arrivals if path == "/v1/rewards"}
    assert len(keys) == 1 and keys != {""}, "both attempts carried the same Idempotency-Key"


def test_a_real_queue_limit_answers_429_and_every_request_gets_through():
    small = Worker("--queue-limit", "1", "--prepare-threads", "1")
    events: list[Event] = []
    try:
        with RewardClient(small.url, timeout=120, max_retries=50, on_event=events.append) as client:
            with ThreadPoolExecutor(12) as pool:
                results = list(pool.map(lambda i: client.score(prompts=[PROMPTS[i]], responses=[RESPONSES[i]]),
                                        range(len(PROMPTS))))
        refused = small.metric('reward_worker_errors_total{code="queue_full"}')
    finally:
        small.kill()
    assert len(results) == len(PROMPTS)
    throttled = [e for e in events if e.kind == "throttled"]
    assert len(throttled) == refused, "every 429 the server sent was seen and retried"
    for e in throttled:
        assert e.wait == 1.0, "the server says Retry-After: 1"
    for e in events:
        if e.kind == "retry" and e.status == 429:
            assert e.wait >= 1.0
    print(f"queue limit 1, 12 threads: {int(refused)} answers were 429, all retried after >= 1 s")


def test_the_total_deadline_ends_a_call_to_a_server_that_never_answers(worker):
    stall = StallServer()
    try:
        client = RewardClient(stall.url, timeout=1.5, ready_timeout=5)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as ended:
            client.score(prompts=["hi"], responses=["hello"])
        took = time.monotonic() - started
        assert stall.accepted >= 1, "the server accepted the connection"
        assert "1.5 s deadline" in str(ended.value)
        print(f"deadline 1.5 s against a stalling server: ended after {took:.2f} s")
        # With a live replica beside it, the call goes there instead.
        events: list[Event] = []
        both = RewardClient([stall.url, worker.url], timeout=30, ready_timeout=0.5, on_event=events.append)
        for _ in range(3):
            [r] = both.score(prompts=["hi"], responses=["hello"])
            assert isinstance(r.reward, float)
        assert all(e.url == stall.url for e in events if e.kind == "down")
    finally:
        stall.close()
    with pytest.raises(ValueError):
        RewardClient(worker.url, timeout=float("inf"))


def test_a_key_sent_three_times_is_computed_once(worker):
    body = {"conversations": [{"messages": [{"role": "user", "content": "Idempotent?"},
                                            {"role": "assistant", "content": "Once."}]}]}
    before = worker.metric("reward_worker_batch_requests_sum")
    replayed = worker.metric('reward_worker_idempotency_requests_total{outcome="replayed"}')
    answers = [httpx.post(worker.url + "/v1/rewards", json=body, headers={"Idempotency-Key": "three-times"},
                          timeout=60, trust_env=False) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].content == answers[1].content == answers[2].content
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", "true"]
    assert worker.metric("reward_worker_batch_requests_sum") == before + 1, "the forward ran once"
    assert worker.metric('reward_worker_idempotency_requests_total{outcome="replayed"}') == replayed + 2
    other = httpx.post(worker.url + "/v1/rewards", json={**body, "weights": [1] * 9},
                       headers={"Idempotency-Key": "three-times"}, timeout=60, trust_env=False)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_the_clients_retry_after_a_lost_reply_is_answered_from_the_first_computation(worker):
    proxy = Proxy(worker.url, "lose_reply")
    before = worker.metric("reward_worker_batch_requests_sum")
    events: list[Event] = []
    try:
        with RewardClient(proxy.url, timeout=30, on_event=events.append) as client:
            [got] = client.score(prompts=["Was this scored twice?"], responses=["No."])
    finally:
        proxy.close()
    assert [e.status for e in events if e.kind == "retry"] == [502]
    assert worker.metric("reward_worker_batch_requests_sum") == before + 1, "computed once for two attempts"
    assert isinstance(got.reward, float)
