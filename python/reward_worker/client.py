"""`RewardClient` (sync) and `AsyncRewardClient` (asyncio): the same calls,
the same replica choice and retry rules (`_core`, `_replicas`).

Every call:
- has a total deadline (`timeout`, or `deadline=` per call), always finite,
  sent to the server as `x-request-timeout` so it stops working when the
  client stops waiting;
- carries one `Idempotency-Key` for all its attempts, so a retry of a request
  the server already computed (or is computing) is answered from that
  computation, never computed twice;
- goes to the ready replica with the fewest requests in flight; a replica that
  stops answering is skipped, and the attempt moves to another at once;
  a replica is used again after it answers `/ready`;
- retries 408/429/5xx and connection failures with jittered exponential
  back-off, never shorter than the server's `Retry-After`, and never past
  the deadline. Other 4xx answers raise `RequestRefused` at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import httpx

from ._core import Call, Settings, Verdict, judge
from ._payload import Message, Prompt, RecordReward, TextReward, record_rewards, records_from, text_rewards
from ._replicas import Event, Replica
from .errors import RewardWorkerError


def _score_body(records: list[dict[str, Any]], weights, preset, truncate) -> dict[str, Any]:
    body: dict[str, Any] = {"conversations": records}
    for name, value in (("weights", weights), ("preset", preset), ("truncate", truncate)):
        if value is not None:
            body[name] = list(value) if name == "weights" else value
    return body


def _texts_body(texts: Sequence[str], prompts: Optional[Sequence[str]]) -> dict[str, Any]:
    if isinstance(texts, str):
        raise TypeError("score_texts takes a list of strings")
    body: dict[str, Any] = {"query": list(texts)}
    if prompts is not None:
        if len(prompts) != len(texts):
            raise ValueError(f"prompts= has {len(prompts)} items for {len(texts)} texts")
        body["prompts"] = list(prompts)
    return body


class _Shared:
    """Constructor and bookkeeping common to both clients."""

    def __init__(
        self,
        urls: Sequence[str] | str,
        api_key: Optional[str] = None,
        timeout: float = 120.0,
        max_retries: int = 8,
        *,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        ready_timeout: float = 2.0,
        on_event: Optional[Callable[[Event], None]] = None,
    ):
        self._s = Settings(urls, api_key, timeout, max_retries, backoff, max_backoff, ready_timeout, on_event)

    @property
    def stats(self) -> dict[str, int]:
        """Calls, attempts, retries and failovers since the client was made."""
        return dict(self._s.stats)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self._s.replicas.replicas]

    def _after_failure(self, call: Call, replica: Replica, verdict: Verdict) -> float:
        """Book a failed attempt; the wait before the next (raises when out of time or attempts)."""
        s = self._s
        call.last = verdict.failure
        now = time.monotonic()
        failover = False
        if verdict.replica_down:
            seconds = s.replicas.failed(replica, now)
            s.emit(Event("down", replica.url, call.attempts, verdict.status, verdict.failure, seconds))
            failover = s.replicas.others_up(replica, now)
            if failover:
                s.stats["failovers"] += 1
        elif verdict.retry_after is not None:
            s.emit(Event("throttled", replica.url, call.attempts, verdict.status, verdict.failure, verdict.retry_after))
        wait = call.next_wait(verdict.retry_after, failover)
        s.emit(Event("retry", replica.url, call.attempts, verdict.status, verdict.failure, wait))
        return wait

    def _succeeded(self, call: Call, replica: Replica) -> None:
        if self._s.replicas.succeeded(replica):
            self._s.emit(Event("up", replica.url, call.attempts))


def _sleep_path(level: int) -> str:
    if level not in (1, 2):
        raise ValueError(f"sleep level must be 1 or 2, got {level!r}")
    return f"/sleep?level={level}"


def _wake_path(tags: Optional[Sequence[str]]) -> str:
    if isinstance(tags, str):
        tags = [tags]
    return "/wake_up" + ("?" + "&".join(f"tags={t}" for t in tags) if tags else "")


def _each_answer(verdict: Verdict, url: str, path: str) -> Any:
    """Sleep and wake go to one named replica each: no failover, a failure raises."""
    if not verdict.done:
        raise RewardWorkerError(f"{path}: {verdict.failure}")
    return verdict.body


def _transport_failure(replica: Replica, e: Exception) -> Verdict:
    return Verdict(done=False, replica_down=True, failure=f"{replica.url}: {type(e).__name__}: {e}")


def _not_ready(replica: Replica, status: int) -> Verdict:
    return Verdict(done=False, replica_down=True, failure=f"{replica.url}: /ready answered {status}", status=status)


class RewardClient(_Shared):
    """A blocking client over one or more replica URLs (thread-safe).

    >>> client = RewardClient(["http://rm-0:8000", "http://rm-1:8000"], timeout=60)
    >>> client.score(prompts=["What is 2+2?"], responses=["4."])[0].reward
    """

    def __init__(self, urls: Sequence[str] | str, api_key: Optional[str] = None, timeout: float = 120.0,
                 max_retries: int = 8, **options: Any):
        super().__init__(urls, api_key, timeout, max_retries, **options)
        self._http = httpx.Client(trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The calls.

    def score(
        self,
        records: Optional[Sequence[Mapping[str, Any]]] = None,
        *,
        messages: Optional[Sequence[Sequence[Message]]] = None,
        prompts: Optional[Sequence[Prompt]] = None,
        responses: Optional[Sequence[Any]] = None,
        groups: Optional[Sequence[Any]] = None,
        weights: Optional[Sequence[float]] = None,
        preset: Optional[str] = None,
        truncate: Optional[str] = None,
        deadline: Optional[float] = None,
    ) -> list[RecordReward]:
        """Score records (either chat format), message lists, or prompt/response
        pairs in one request (`POST /v1/rewards`). `groups` sets each record's
        GRPO group for a server running `--normalize group`."""
        body = _score_body(records_from(records, messages, prompts, responses, groups), weights, preset, truncate)
        return record_rewards(self._call("POST", "/v1/rewards", body, deadline))

    def score_texts(self, texts: Sequence[str], prompts: Optional[Sequence[str]] = None,
                    deadline: Optional[float] = None) -> list[TextReward]:
        """Pre-rendered texts (SteerLM template, or prompt + response with
        `prompts`), OpenRLHF's `/get_reward`; queries with equal prompts form a group."""
        return text_rewards(self._call("POST", "/get_reward", _texts_body(texts, prompts), deadline))

    def classify(self, inputs: Any, use_activation: bool = False, deadline: Optional[float] = None) -> list[list[float]]:
        """vLLM's `/classify`: one vector per input (a string, strings or token ids)."""
        body = {"input": inputs, "use_activation": use_activation}
        return [d["probs"] for d in self._call("POST", "/classify", body, deadline)["data"]]

    def step(self, deadline: Optional[float] = None) -> dict[str, Any]:
        """End a training step for `--normalize running` (`POST /v1/rewards/step`), once per call."""
        return self._call("POST", "/v1/rewards/step", {}, deadline)

    def sleep(self, level: int = 1, deadline: Optional[float] = None) -> dict[str, Any]:
        """vLLM's `POST /sleep?level=N` on every replica (co-location: each one
        gives its GPUs back). Returns once each sleeps (after its running
        batch), `{url: {"is_sleeping", "level", "sleeping_tags", "seconds"}}`."""
        return self._each("POST", _sleep_path(level), deadline)

    def wake_up(self, tags: Optional[Sequence[str]] = None, deadline: Optional[float] = None) -> dict[str, Any]:
        """vLLM's `POST /wake_up[?tags=weights]` on every replica; requests sent
        while asleep were queued and are answered from now on."""
        return self._each("POST", _wake_path(tags), deadline)

    def is_sleeping(self, deadline: Optional[float] = None) -> dict[str, Any]:
        """`GET /is_sleeping` of every replica: `{url: {"is_sleeping": bool, ...}}`."""
        return self._each("GET", "/is_sleeping", deadline)

    def _each(self, method: str, path: str, deadline: Optional[float]) -> dict[str, Any]:
        call = Call(self._s, deadline)
        out = {}
        for url in self.urls:
            try:
                response = self._http.request(method, url + path, headers=self._auth(), timeout=max(call.remaining(), 0.001))
            except httpx.TransportError as e:
                raise RewardWorkerError(f"{url}{path}: {type(e).__name__}: {e}") from e
            out[url] = _each_answer(judge(response, url), url, path)
        return out

    def ready(self) -> dict[str, bool]:
        """Which replicas answer `/ready` now."""
        out = {}
        for r in self._s.replicas.replicas:
            try:
                out[r.url] = self._http.get(r.url + "/ready", headers=self._auth(), timeout=self._s.ready_timeout).status_code == 200
            except httpx.HTTPError:
                out[r.url] = False
        return out

    # The loop.

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._s.api_key}"} if self._s.api_key else {}

    def _call(self, method: str, path: str, body: Any, deadline: Optional[float]) -> Any:
        s = self._s
        call = Call(s, deadline)
        avoid: Optional[Replica] = None
        while True:
            if call.remaining() <= 0:
                raise call.expired()
            replica, probe = s.replicas.pick(time.monotonic(), avoid)
            try:
                pause = replica.down_until - time.monotonic()
                if pause > 0:  # every replica is down: wait for the one back soonest
                    if pause >= call.remaining():
                        raise call.expired()
                    time.sleep(pause)
                verdict = self._attempt(call, replica, probe, method, path, body)
            finally:
                s.replicas.release(replica)
            if verdict.done:
                self._succeeded(call, replica)
                return verdict.body
            avoid = replica
            time.sleep(self._after_failure(call, replica, verdict))

    def _attempt(self, call: Call, replica: Replica, probe: bool, method: str, path: str, body: Any) -> Verdict:
        try:
            if probe:
                timeout = min(self._s.ready_timeout, max(call.remaining(), 0.001))
                status = self._http.get(replica.url + "/ready", headers=self._auth(), timeout=timeout).status_code
                if status != 200:
                    return _not_ready(replica, status)
            call.attempts += 1
            self._s.stats["attempts"] += 1
            remaining = max(call.remaining(), 0.001)
            response = self._http.request(
                method, replica.url + path, json=body, headers=self._s.headers(call.key, remaining), timeout=remaining
            )
            return judge(response, replica.url)
        except httpx.TransportError as e:
            return _transport_failure(replica, e)


class AsyncRewardClient(_Shared):
    """The asyncio twin of `RewardClient` (same arguments, same rules); `await client.score(...)`."""

    def __init__(self, urls: Sequence[str] | str, api_key: Optional[str] = None, timeout: float = 120.0,
                 max_retries: int = 8, **options: Any):
        super().__init__(urls, api_key, timeout, max_retries, **options)
        self._http = httpx.AsyncClient(trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def score(
        self,
        records: Optional[Sequence[Mapping[str, Any]]] = None,
        *,
        messages: Optional[Sequence[Sequence[Message]]] = None,
        prompts: Optional[Sequence[Prompt]] = None,
        responses: Optional[Sequence[Any]] = None,
        groups: Optional[Sequence[Any]] = None,
        weights: Optional[Sequence[float]] = None,
        preset: Optional[str] = None,
        truncate: Optional[str] = None,
        deadline: Optional[float] = None,
    ) -> list[RecordReward]:
        body = _score_body(records_from(records, messages, prompts, responses, groups), weights, preset, truncate)
        return record_rewards(await self._call("POST", "/v1/rewards", body, deadline))

    async def score_texts(self, texts: Sequence[str], prompts: Optional[Sequence[str]] = None,
                          deadline: Optional[float] = None) -> list[TextReward]:
        return text_rewards(await self._call("POST", "/get_reward", _texts_body(texts, prompts), deadline))

    async def classify(self, inputs: Any, use_activation: bool = False,
                       deadline: Optional[float] = None) -> list[list[float]]:
        body = {"input": inputs, "use_activation": use_activation}
        return [d["probs"] for d in (await self._call("POST", "/classify", body, deadline))["data"]]

    async def step(self, deadline: Optional[float] = None) -> dict[str, Any]:
        return await self._call("POST", "/v1/rewards/step", {}, deadline)

    async def sleep(self, level: int = 1, deadline: Optional[float] = None) -> dict[str, Any]:
        return await self._each("POST", _sleep_path(level), deadline)

    async def wake_up(self, tags: Optional[Sequence[str]] = None, deadline: Optional[float] = None) -> dict[str, Any]:
        return await self._each("POST", _wake_path(tags), deadline)

    async def is_sleeping(self, deadline: Optional[float] = None) -> dict[str, Any]:
        return await self._each("GET", "/is_sleeping", deadline)

    async def _each(self, method: str, path: str, deadline: Optional[float]) -> dict[str, Any]:
        call = Call(self._s, deadline)

        async def one(url: str) -> Any:
            try:
                response = await self._http.request(
                    method, url + path, headers=self._auth(), timeout=max(call.remaining(), 0.001)
                )
            except httpx.TransportError as e:
                raise RewardWorkerError(f"{url}{path}: {type(e).__name__}: {e}") from e
            return _each_answer(judge(response, url), url, path)

        urls = self.urls
        return dict(zip(urls, await asyncio.gather(*(one(u) for u in urls))))

    async def ready(self) -> dict[str, bool]:
        """Which replicas answer `/ready` now."""

        async def one(url: str) -> bool:
            try:
                r = await self._http.get(url + "/ready", headers=self._auth(), timeout=self._s.ready_timeout)
                return r.status_code == 200
            except httpx.HTTPError:
                return False

        urls = self.urls
        return dict(zip(urls, await asyncio.gather(*(one(u) for u in urls))))

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._s.api_key}"} if self._s.api_key else {}

    async def _call(self, method: str, path: str, body: Any, deadline: Optional[float]) -> Any:
        s = self._s
        call = Call(s, deadline)
        avoid: Optional[Replica] = None
        while True:
            if call.remaining() <= 0:
                raise call.expired()
            replica, probe = s.replicas.pick(time.monotonic(), avoid)
            try:
                pause = replica.down_until - time.monotonic()
                if pause > 0:
                    if pause >= call.remaining():
                        raise call.expired()
                    await asyncio.sleep(pause)
                verdict = await self._attempt(call, replica, probe, method, path, body)
            finally:
                s.replicas.release(replica)
            if verdict.done:
                self._succeeded(call, replica)
                return verdict.body
            avoid = replica
            await asyncio.sleep(self._after_failure(call, replica, verdict))

    async def _attempt(self, call: Call, replica: Replica, probe: bool, method: str, path: str, body: Any) -> Verdict:
        try:
            if probe:
                timeout = min(self._s.ready_timeout, max(call.remaining(), 0.001))
                status = (await self._http.get(replica.url + "/ready", headers=self._auth(), timeout=timeout)).status_code
                if status != 200:
                    return _not_ready(replica, status)
            call.attempts += 1
            self._s.stats["attempts"] += 1
            remaining = max(call.remaining(), 0.001)
            response = await self._http.request(
                method, replica.url + path, json=body, headers=self._s.headers(call.key, remaining), timeout=remaining
            )
            return judge(response, replica.url)
        except httpx.TransportError as e:
            return _transport_failure(replica, e)
