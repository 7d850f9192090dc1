"""The client's errors: one base class, so a trainer can catch them all."""

from __future__ import annotations


class RewardWorkerError(Exception):
    """Anything the client could not do."""


class RequestRefused(RewardWorkerError):
    """The server answered with an error that a retry would not change (4xx).

    `status` is the HTTP status, `code` the server's stable error code
    (`invalid_record`, `idempotency_key_reused`, ...) and `message` what it
    said, naming the record and field.
    """

    def __init__(self, status: int, code: str, message: str, url: str):
        super().__init__(f"{url}: HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.url = status, code, message, url


class DeadlineExceeded(RewardWorkerError):
    """The call's total deadline passed before any replica answered.

    `last` is the last failure seen (an exception or an HTTP status), if any.
    """

    def __init__(self, seconds: float, attempts: int, last: str | None):
        detail = f"; last failure: {last}" if last else ""
        super().__init__(f"no answer within the {seconds:g} s deadline after {attempts} attempt(s){detail}")
        self.seconds, self.attempts, self.last = seconds, attempts, last


class RetriesExhausted(RewardWorkerError):
    """Every allowed attempt failed with a retryable error."""

    def __init__(self, attempts: int, last: str | None):
        super().__init__(f"gave up after {attempts} attempt(s); last failure: {last}")
        self.attempts, self.last = attempts, last
