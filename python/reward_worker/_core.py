"""What both clients share: settings, headers, and how one HTTP answer is judged."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import httpx

from ._replicas import Event, Replicas, RetryPolicy, check_deadline, retry_after_seconds
from .errors import DeadlineExceeded, RequestRefused, RetriesExhausted

#: Statuses worth another attempt (elsewhere or later): overload, shutdown, a
#: failed batch, a gateway or deadline error. Anything else 4xx is final.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


@dataclass
class Verdict:
    """What to do after one attempt."""

    done: bool
    body: Any = None
    #: the replica stopped answering (or is shutting down): skip it for a while.
    replica_down: bool = False
    retry_after: Optional[float] = None
    failure: Optional[str] = None
    status: Optional[int] = None


def judge(response: httpx.Response, url: str) -> Verdict:
    """A 200 is the answer; a retryable status is a retry; any other status raises."""
    if response.status_code == 200:
        return Verdict(done=True, body=response.json())
    code, message = error_of(response)
    status = response.status_code
    if status not in RETRYABLE:
        raise RequestRefused(status, code, message, url)
    return Verdict(
        done=False,
        replica_down=status in (502, 503),
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
        failure=f"{url}: HTTP {status} {code}: {message}",
        status=status,
    )


def error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error")
    except ValueError:
        return "http_error", response.text[:200]
    if isinstance(error, dict):
        return str(error.get("code", "error")), str(error.get("message", ""))
    return "error", str(error)


class Settings:
    """The client's configuration, checked once."""

    def __init__(
        self,
        urls: Sequence[str] | str,
        api_key: Optional[str],
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        ready_timeout: float,
        on_event: Optional[Callable[[Event], None]],
    ):
        self.replicas = Replicas(urls)
        self.timeout = check_deadline(timeout)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
        self.policy = RetryPolicy(max_retries=max_retries, backoff=backoff, max_backoff=max_backoff)
        self.ready_timeout = check_deadline(ready_timeout, "ready_timeout")
        self.api_key = api_key
        self.on_event = on_event
        #: counts since the client was made: requests (calls), attempts, retries, failovers.
        self.stats = {"calls": 0, "attempts": 0, "retries": 0, "failovers": 0}

    def headers(self, key: str, remaining: float) -> dict[str, str]:
        headers = {"Idempotency-Key": key, "x-request-timeout": f"{max(remaining, 0.001):.3f}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def emit(self, event: Event) -> None:
        if event.kind == "retry":
            self.stats["retries"] += 1
        if self.on_event is not None:
            self.on_event(event)


class Call:
    """One logical call: its key, its deadline, its attempts."""

    def __init__(self, settings: Settings, deadline: Optional[float]):
        self.settings = settings
        self.seconds = check_deadline(deadline if deadline is not None else settings.timeout, "deadline")
        self.end = time.monotonic() + self.seconds
        self.key = uuid.uuid4().hex
        self.attempts = 0
        self.last: Optional[str] = None
        settings.stats["calls"] += 1

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(self.seconds, self.attempts, self.last)

    def next_wait(self, verdict_retry_after: Optional[float], failover: bool) -> float:
        """How long to wait before the next attempt, or raise when out of attempts or time."""
        settings = self.settings
        if self.attempts > settings.policy.max_retries:
            raise RetriesExhausted(self.attempts, self.last)
        wait = 0.0 if failover and verdict_retry_after is None else settings.policy.wait(self.attempts - 1, verdict_retry_after)
        if wait >= self.remaining():
            raise self.expired()
        return wait
