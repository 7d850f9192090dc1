"""The package on its own: no torch import, and the replica and retry rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from reward_worker._replicas import Replicas, RetryPolicy, retry_after_seconds


def test_importing_every_module_loads_no_torch():
    code = ("import sys; import reward_worker, reward_worker.trl, reward_worker.verl, reward_worker.openrlhf, "
            "reward_worker.slime; sys.exit('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "python", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr or "torch was imported"


def test_least_outstanding_among_ready_replicas_and_back_after_a_failure():
    r = Replicas(["http://a", "http://b/", "http://c"])
    assert [x.url for x in r.replicas] == ["http://a", "http://b", "http://c"]
    for x in r.replicas:
        r.succeeded(x)
    a, probe = r.pick(0.0)
    assert not probe
    b, _ = r.pick(0.0)
    c, _ = r.pick(0.0)
    assert {a.url, b.url, c.url} == {"http://a", "http://b", "http://c"}, "one each while all have work"
    r.release(b)
    assert r.pick(0.0)[0] is b, "the one with the fewest in flight"
    r.release(a)
    r.release(b)
    r.release(c)
    down = r.failed(a, 0.0)
    assert down == 1.0 and r.failed(a, 0.0) == 2.0, "a replica that keeps failing stays down longer"
    assert all(r.pick(1.0)[0] is not a for _ in range(6)), "skipped while down"
    back, probe = r.pick(10.0, avoid=b)
    assert probe or back is not a, "a replica back from down must answer /ready first"
    with pytest.raises(ValueError):
        Replicas([])
    with pytest.raises(ValueError):
        Replicas(["localhost:8000"])


def test_backoff_never_undercuts_retry_after():
    policy = RetryPolicy(backoff=0.25, max_backoff=8.0, rng=lambda: 1.0)
    assert [policy.wait(k, None) for k in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.wait(0, 3.0) == 3.0
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("1.5") == 1.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now_epoch=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert retry_after_seconds("-1") is None
