"""Shared by the client tests: arguments, the expected numbers (what
`reward-worker score` printed for the same records) and the comparison."""

import argparse
import json
import math


def args():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="http://HOST:PORT of the running service")
    p.add_argument("--expected", required=True, help="JSON written by the Rust test from `score` output")
    p.add_argument("--api-key", default=None)
    return p.parse_args()


def load(path):
    with open(path) as f:
        return json.load(f)


# `score` itself moves by up to ~1e-5 with what else is in the batch (the
# kernels block a GEMM differently for other row counts): the same prefix in a
# chunk of records or alone differs by up to 9.5e-6 on the fixtures. A route is
# "equal to score" within that spread.
TOLERANCE = 2e-5


WORST = [0.0]


def close(got, want, what, tol=TOLERANCE):
    """Equal within the batch-composition spread of `score` (absolute, relative above 1)."""
    got, want = list(got), list(want)
    WORST[0] = max([WORST[0]] + [abs(g - w) / max(1.0, abs(w)) for g, w in zip(got, want)])
    assert len(got) == len(want), f"{what}: {len(got)} values, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert math.isfinite(g), f"{what}[{i}] is {g}"
        assert abs(g - w) <= tol * max(1.0, abs(w)), f"{what}[{i}]: {g} vs score's {w}"


HELPSTEER = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def to_messages(record):
    """A seed-format record as OpenAI messages (the format does not change the score)."""
    if "messages" in record:
        return record["messages"]
    role = {"user": "user", "assistant": "assistant"}
    return [{"role": role[t["from"].lower()], "content": t["value"]} for t in record["conversations"]]
