"""`requests` against /v1/rewards (the same JSON per record as `score`) and
OpenRLHF's /get_reward (a rendered query string -> the scalar reward)."""

import requests

from common import WORST, HELPSTEER, args, close, load, raw_scale

a = args()
expected = load(a.expected)
records, lines, turns = expected["records"], expected["score_lines"], expected["turns"]
url = a.url


def same_record(got, want, what):
    assert got["index"] == want["index"], (got["index"], want["index"])
    assert [t["turn"] for t in got["turns"]] == [t["turn"] for t in want["turns"]], what
    for g, w in zip(got["turns"], want["turns"]):
        close(g["raw"], w["raw"], f"{what} turn {w['turn']} raw")
        close([g["reward"]], [w["reward"]], f"{what} turn {w['turn']} reward", scale=raw_scale([w]))
        assert list(g["attributes"]) == HELPSTEER
    assert got["tokens"] == want["tokens"], what
    assert got["weights"] == want["weights"] and got["transform"] == want["transform"], what


# All records in one request, then each alone: batching changes nothing.
r = requests.post(f"{url}/v1/rewards", json={"conversations": records}, timeout=60)
assert r.status_code == 200, r.text
body = r.json()
assert body["model"] == expected["model"] and len(body["results"]) == len(records)
for got, want in zip(body["results"], lines):
    same_record(got, want, "batched")
for record, want in zip(records, lines):
    r = requests.post(f"{url}/v1/rewards", json={"conversations": [record]}, timeout=60)
    assert r.status_code == 200, r.text
    same_record(r.json()["results"][0], dict(want, index=0), "alone")

# Per-request weights change the scalar only.
helpful = [0, 0, 0, 0, 1, 0, 0, 0, 0]
r = requests.post(f"{url}/v1/rewards", json={"conversations": records[:1], "weights": helpful}, timeout=60)
turn = r.json()["results"][0]["turns"][-1]
close([turn["reward"]], [lines[0]["turns"][-1]["raw"][4]], "reward with helpfulness weights")

# OpenRLHF: a SteerLM-rendered prompt + response, as a policy rendered with the
# reward model's template sends it (no trailing newline, no score token).
SUFFIX = "\n<extra_id_2>"
queries = [t["text"][: -len(SUFFIX)] for t in turns]
r = requests.post(f"{url}/get_reward", json={"query": queries, "prompts": None, "labels": None}, timeout=60)
assert r.status_code == 200, r.text
reply = r.json()
close(reply["rewards"], [t["reward"] for t in turns], "get_reward rewards", scale=raw_scale(turns))
assert reply["scores"] == reply["rewards"]
for k, name in enumerate(HELPSTEER):
    close(reply["extra_logs"][name], [t["raw"][4 + k] for t in turns], f"extra_logs.{name}")

# A plain prompt + response is split at its prompt into a user and an assistant turn.
single = [
    (rec, line)
    for rec, line in zip(records, lines)
    if "conversations" in rec and [t["from"] for t in rec["conversations"]] == ["User", "Assistant"]
]
assert single, "the fixture has a single-turn seed record"
prompts = [rec["conversations"][0]["value"] for rec, _ in single]
plain = [p + rec["conversations"][1]["value"] for p, (rec, _) in zip(prompts, single)]
r = requests.post(f"{url}/get_reward", json={"query": plain, "prompts": prompts}, timeout=60)
assert r.status_code == 200, r.text
close(
    r.json()["rewards"],
    [line["turns"][0]["reward"] for _, line in single],
    "get_reward plain queries",
    scale=raw_scale([line["turns"][0] for _, line in single]),
)

r = requests.post(f"{url}/get_reward", json={"query": ["no template here"]}, timeout=60)
assert r.status_code == 400 and "query[0]" in r.json()["error"]["message"], r.text
print(f"requests: {len(records)} records and {len(turns)} queries match score (largest difference {WORST[0]:.1e})")
