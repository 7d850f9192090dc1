"""Real servers for the package's tests: `reward-worker serve` children (the
binary cargo built in this checkout), a server that accepts and never
answers, and a small proxy that misbehaves on purpose in front of a real one."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Nothing in these tests may reach the Hugging Face Hub (the policy is built from a config).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "python"))  # the package from this checkout, installed or not

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def steerlm(prompt: str, response: str) -> str:
    """A user/assistant pair in the SteerLM template, ending with the score token (what the server scores)."""
    return (f"<extra_id_0>System\n{SYSTEM}\n<extra_id_1>User\n{prompt}\n"
            f"<extra_id_1>Assistant\n{response}\n<extra_id_2>")


def binary() -> Path:
    if os.environ.get("REWARD_WORKER_BIN"):
        path = Path(os.environ["REWARD_WORKER_BIN"])
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        path = (target if target.is_absolute() else ROOT / target) / "release" / "reward-worker"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --release` first (make test does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_STARTED: list["Worker"] = []


def pytest_sessionfinish(session, exitstatus):
    """No child outlives the run, whatever a test did."""
    for w in _STARTED:
        w.kill()


class Worker:
    """`reward-worker serve` as a child process on a fixed port (so it can come back on the same URL)."""

    def __init__(self, *args: str, port: Optional[int] = None):
        _STARTED.append(self)
        self.args = ["serve", "--port", str(port or free_port()), "--dtype", "f32", *args]
        self.port = int(self.args[2])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.log: list[str] = []
        self.start()

    def start(self, wait: bool = True) -> None:
        env = dict(os.environ, RUST_LOG="reward_worker=warn")
        self.proc = subprocess.Popen(
            [str(binary()), *self.args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=env,
        )
        listening = threading.Event()
        proc = self.proc

        def read() -> None:
            for line in proc.stderr:  # type: ignore[union-attr]
                self.log.append(line.rstrip())
                if line.startswith("listening on http://"):
                    listening.set()

        threading.Thread(target=read, daemon=True).start()
        if wait and not listening.wait(120):
            self.kill()
            raise RuntimeError("reward-worker never printed `listening on`:\n" + "\n".join(self.log))
        self.listening = listening

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def metric(self, series: str) -> float:
        """One series of /metrics, e.g. `reward_worker_batch_requests_sum` (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=10, trust_env=False).text
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="session")
def worker():
    w = Worker()
    yield w
    w.kill()


@pytest.fixture(scope="session")
def merged_worker():
    w = Worker("--merge-attributes")
    yield w
    w.kill()


class _Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StallServer:
    """Accepts connections and reads requests, never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


class Proxy:
    """Forwards to a real worker, but misbehaves once per idempotency key:
    `throttle`: the first request of a key gets 429 with `Retry-After: N`;
    `lose_reply`: the first request of a key is forwarded, and its answer thrown
    away (the client sees 502 as from a gateway whose upstream dropped). Every
    arrival is logged as (key, path, monotonic time)."""

    def __init__(self, target: str, mode: str, retry_after: float = 1.0):
        self.target, self.mode, self.retry_after = target, mode, retry_after
        self.arrivals: list[tuple[str, str, float]] = []
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                r = httpx.get(proxy.target + self.path, timeout=30, trust_env=False)
                self._send(r.status_code, r.content, {"content-type": r.headers.get("content-type", "")})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                key = self.headers.get("idempotency-key", "")
                with proxy.lock:
                    proxy.arrivals.append((key, self.path, time.monotonic()))
                    first = key not in proxy.seen
                    proxy.seen.add(key)
                if first and proxy.mode == "throttle":
                    payload = b'{"error": {"code": "queue_full", "message": "busy (test proxy)", "type": "rate_limit_error"}}'
                    self._send(429, payload, {"retry-after": f"{proxy.retry_after:g}", "content-type": "application/json"})
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = httpx.post(proxy.target + self.path, content=body, headers=headers, timeout=60, trust_env=False)
                if first and proxy.mode == "lose_reply":
                    self._send(502, b'{"error": {"code": "bad_gateway", "message": "upstream reply lost (test proxy)"}}',
                               {"content-type": "application/json"})
                    return
                extra = {"content-type": r.headers.get("content-type", "")}
                if "idempotent-replayed" in r.headers:
                    extra["idempotent-replayed"] = r.headers["idempotent-replayed"]
                self._send(r.status_code, r.content, extra)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if v:
                        self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _Threaded(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
