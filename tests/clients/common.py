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


# `score` itself moves with what else is in the batch (the kernels block a GEMM
# differently for other row counts, and differently on AVX2, AVX-512 and AMX).
# A route is "equal to score" within that spread: the bound of
# tests/common/close.rs (SAME_MATH), relative to the largest |value| compared
# (at least 1).
TOLERANCE = 5e-6


WORST = [0.0]


def raw_scale(turns):
    """The scale of rewards made from these turns' raw scores: a weighted sum
    carries the rounding of the raw scores it sums, however small it is."""
    return max([1.0] + [abs(x) for t in turns for x in t["raw"]])


def close(got, want, what, tol=TOLERANCE, scale=None):
    """Equal within the batch-composition spread of `score`, relative to the
    scores' scale (the largest |want|, at least 1, unless given)."""
    got, want = list(got), list(want)
    assert len(got) == len(want), f"{what}: {len(got)} values, expected {len(want)}"
    scale = scale or max([1.0] + [abs(w) for w in want])
    WORST[0] = max([WORST[0]] + [abs(g - w) / scale for g, w in zip(got, want)])
    for i, (g, w) in enumerate(zip(got, want)):
        assert math.isfinite(g), f"{what}[{i}] is {g}"
        assert abs(g - w) <= tol * scale, f"{what}[{i}]: {g} vs score's {w} (scale {scale})"


HELPSTEER = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def to_messages(record):
    """A seed-format record as OpenAI messages (the format does not change the score)."""
    if "messages" in record:
        return record["messages"]
    role = {"user": "user", "assistant": "assistant"}
    return [{"role": role[t["from"].lower()], "content": t["value"]} for t in record["conversations"]]
