"""vLLM's `/classify` and `/pooling` equal `/v1/rewards` on the same inputs,
with the payloads veRL's reward loop builds
(`verl/experimental/reward_loop/reward_loop.py`, `compute_score_disrm`:
`{"model", "input": <rendered string>, "use_activation": False}`, reward read
at `data[-1].probs[-1]`; older veRL sends `"activation": False`)."""

from __future__ import annotations

import base64
import math
import struct

import httpx

from conftest import ROOT, steerlm
from test_client import same

PAIRS = [("What is 2+2?", "4."), ("Name a colour.", "Blue, like the sky."), ("Say hi.", "")]


def post(url: str, path: str, body: dict) -> dict:
    r = httpx.post(url + path, json=body, timeout=60, trust_env=False)
    assert r.status_code == 200, r.text
    return r.json()


def rewards_of(url: str) -> list[dict]:
    records = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS]
    return [x["turns"][-1] for x in post(url, "/v1/rewards", {"conversations": records})["results"]]


def model_name(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=10, trust_env=False).json()["data"][0]["id"]


def test_classify_with_verls_payload_equals_v1_rewards(worker):
    want = rewards_of(worker.url)
    model = model_name(worker.url)
    for i, (p, r) in enumerate(PAIRS):
        for flag in ("use_activation", "activation"):
            out = post(worker.url, "/classify", {"model": model, "input": steerlm(p, r), flag: False})
            assert out["object"] == "list" and out["id"].startswith("classify-") and out["model"] == model
            [data] = out["data"]
            assert data["index"] == 0 and data["num_classes"] == 9
            same(data["probs"], want[i]["raw"], f"classify {flag} pair {i}")
            assert data["label"] == ["quality", "toxicity", "humor", "creativity", "helpfulness", "correctness",
                                     "coherence", "complexity", "verbosity"][max(range(9), key=data["probs"].__getitem__)]
            assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] == 0
    # A list of strings in one request; the index follows the input order.
    out = post(worker.url, "/classify", {"input": [steerlm(p, r) for p, r in PAIRS], "use_activation": False})
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    for d, w in zip(out["data"], want):
        same(d["probs"], w["raw"], "classify list")
    # use_activation absent: the model's activation (softmax over the nine outputs), as vLLM does.
    out = post(worker.url, "/classify", {"input": steerlm(*PAIRS[0])})
    raw = want[0]["raw"]
    top = max(raw)
    soft = [math.exp(v - top) / sum(math.exp(u - top) for u in raw) for v in raw]
    same(out["data"][0]["probs"], soft, "softmax")


def test_token_ids_and_messages_score_as_the_text(worker):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(ROOT / "models/demo/tokenizer.json"))
    want = rewards_of(worker.url)
    ids = [tokenizer.encode(steerlm(p, r), add_special_tokens=False).ids for p, r in PAIRS]
    out = post(worker.url, "/classify", {"input": ids, "use_activation": False})
    for d, w in zip(out["data"], want):
        same(d["probs"], w["raw"], "token ids")
    one = post(worker.url, "/classify", {"input": ids[0], "use_activation": False})
    same(one["data"][0]["probs"], want[0]["raw"], "one list of token ids")
    messages = [{"role": "user", "content": PAIRS[1][0]}, {"role": "assistant", "content": PAIRS[1][1]}]
    out = post(worker.url, "/classify", {"messages": messages, "use_activation": False})
    same(out["data"][0]["probs"], want[1]["raw"], "messages")


def test_pooling_equals_v1_rewards_as_floats_and_base64(worker):
    want = rewards_of(worker.url)
    texts = [steerlm(p, r) for p, r in PAIRS]
    out = post(worker.url, "/pooling", {"model": model_name(worker.url), "input": texts, "use_activation": False})
    assert out["id"].startswith("pool-")
    for d, w in zip(out["data"], want):
        assert d["object"] == "pooling"
        same(d["data"], w["raw"], "pooling")
    out = post(worker.url, "/pooling", {"input": texts, "use_activation": False, "encoding_format": "base64"})
    for d, w in zip(out["data"], want):
        floats = struct.unpack("<9f", base64.b64decode(d["data"]))
        same(floats, w["raw"], "pooling base64")


def test_with_merged_attributes_verls_probs_last_is_the_reward(merged_worker):
    want = rewards_of(merged_worker.url)
    for i, (p, r) in enumerate(PAIRS):
        payload = {"model": model_name(merged_worker.url), "input": steerlm(p, r), "use_activation": False}
        out = post(merged_worker.url, "/classify", payload)
        reward = out["data"][-1]["probs"][-1]  # exactly what veRL reads
        same([reward], [want[i]["reward"]], f"merged reward {i}")
        assert out["data"][-1]["label"] == "reward" and out["data"][-1]["num_classes"] == 1
        sig = post(merged_worker.url, "/classify", {"input": steerlm(p, r)})["data"][0]["probs"][0]
        same([sig], [1 / (1 + math.exp(-want[i]["reward"]))], "sigmoid over one output")


def test_bad_inputs_name_the_problem(worker):
    def refused(path: str, body: dict) -> str:
        r = httpx.post(worker.url + path, json=body, timeout=30, trust_env=False)
        assert r.status_code in (400, 404), r.text
        return r.json()["error"]["message"]

    assert "input[1]" in refused("/classify", {"input": ["ok", 3]})
    assert "input" in refused("/classify", {})
    assert "use_activation" in refused("/classify", {"input": "x", "use_activation": "no"})
    assert "encoding_format" in refused("/pooling", {"input": "x", "encoding_format": "binary"})
    assert "embed" in refused("/pooling", {"input": "x", "task": "embed"})
    assert "unknown model" in refused("/classify", {"input": "x", "model": "nope"})
