"""Replica choice and retry policy, shared by the sync and async clients.

Nothing here does I/O: the clients ask `Replicas.pick` where to send,
report what happened, and ask `RetryPolicy` how long to wait. That keeps the
two clients identical in behaviour and this file testable on its own.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence


@dataclass
class Replica:
    url: str
    outstanding: int = 0
    #: None: never probed; True: answered /ready (or a request) since its last failure.
    ready: Optional[bool] = None
    #: monotonic time before which the replica is not tried again.
    down_until: float = 0.0
    failures: int = 0


@dataclass
class Event:
    """What the client did, for logs and tests (`RewardClient(on_event=...)`).

    kind: `retry` (an attempt failed and another follows), `down` (a replica
    stopped answering and is skipped for a while), `up` (it answered `/ready`
    again), `throttled` (429/503 with `Retry-After`).
    """

    kind: str
    url: str
    attempt: int
    status: Optional[int] = None
    error: Optional[str] = None
    wait: float = 0.0
    at: float = field(default_factory=time.monotonic)


class Replicas:
    """Several URLs of one service. `pick` returns the ready replica with the
    fewest requests in flight (ties in turn); a replica that failed is skipped
    until its back-off passes and it answers `/ready` again."""

    def __init__(self, urls: Sequence[str], down_seconds: float = 1.0, max_down_seconds: float = 10.0):
        if isinstance(urls, str):
            urls = [urls]
        cleaned = [u.rstrip("/") for u in urls if u and u.strip()]
        if not cleaned:
            raise ValueError("RewardClient needs at least one URL (http://host:port)")
        for u in cleaned:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"{u!r} is not an http:// or https:// URL")
        self.replicas = [Replica(u) for u in cleaned]
        self.down_seconds, self.max_down_seconds = down_seconds, max_down_seconds
        self._turn = 0
        self._lock = threading.Lock()

    def pick(self, now: float, avoid: Optional[Replica] = None) -> tuple[Replica, bool]:
        """The replica to try and whether it must answer `/ready` first.

        Among replicas not marked down: the fewest outstanding requests, ready
        ones before unprobed ones. When all are down, the one back soonest
        (the caller waits until `down_until`). `avoid` (the replica that just
        failed) is taken only when nothing else is available.
        """
        with self._lock:
            n = len(self.replicas)
            order = [self.replicas[(self._turn + i) % n] for i in range(n)]
            self._turn = (self._turn + 1) % n
            up = [r for r in order if r.down_until <= now and r is not avoid]
            if not up:
                up = [r for r in order if r.down_until <= now]
            if up:
                best = min(up, key=lambda r: (r.ready is not True, r.outstanding))
            else:
                best = min(order, key=lambda r: r.down_until)
            best.outstanding += 1
            return best, best.ready is not True

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.outstanding -= 1

    def succeeded(self, replica: Replica) -> bool:
        """Mark it ready; True when it had been down (an `up` event)."""
        with self._lock:
            was_down = replica.ready is False
            replica.ready, replica.failures, replica.down_until = True, 0, 0.0
            return was_down

    def failed(self, replica: Replica, now: float) -> float:
        """Mark it down for a growing while; returns how long."""
        with self._lock:
            replica.ready = False
            replica.failures += 1
            seconds = min(self.max_down_seconds, self.down_seconds * 2 ** (replica.failures - 1))
            replica.down_until = now + seconds
            return seconds

    def others_up(self, replica: Replica, now: float) -> bool:
        with self._lock:
            return any(r is not replica and r.down_until <= now for r in self.replicas)


@dataclass
class RetryPolicy:
    """Exponential back-off with full jitter, floored by the server's `Retry-After`."""

    max_retries: int = 8
    backoff: float = 0.25
    max_backoff: float = 8.0
    rng: Callable[[], float] = random.random

    def wait(self, attempt: int, retry_after: Optional[float]) -> float:
        jittered = self.rng() * min(self.max_backoff, self.backoff * 2**attempt)
        return max(jittered, retry_after or 0.0)


def retry_after_seconds(value: Optional[str], now_epoch: Optional[float] = None) -> Optional[float]:
    """`Retry-After` as seconds: a number of seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now_epoch = time.time() if now_epoch is None else now_epoch
    return max(0.0, when.timestamp() - now_epoch)


def check_deadline(seconds: float, what: str = "timeout") -> float:
    """A total deadline must be a finite, positive number of seconds."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {seconds!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what} must be a finite number of seconds above 0, got {seconds!r}")
    return float(seconds)
