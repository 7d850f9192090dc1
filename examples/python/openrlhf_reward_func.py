"""OpenRLHF's `.py` reward hook backed by reward-worker:

    --remote_rm_url examples/python/openrlhf_reward_func.py

(or, with no hook at all, `--remote_rm_url http://rm-0:8000/get_reward`: the
server speaks OpenRLHF's remote reward protocol). The hook goes through the
package's client: every URL of `REWARD_WORKER_URLS` with failover,
`Retry-After`, a finite deadline (`REWARD_WORKER_TIMEOUT`) and idempotent
retries, where OpenRLHF's own HTTP client retries a fixed 5 times and uses
only one URL.

Run it to score two queries as OpenRLHF would call it:

    REWARD_WORKER_URLS=http://127.0.0.1:8000 python examples/python/openrlhf_reward_func.py
"""

import json

import torch

from reward_worker.openrlhf import rewards


def reward_func(queries, prompts, labels):
    out = rewards(queries, prompts, labels)
    return {
        "rewards": torch.tensor(out["rewards"], dtype=torch.float32),
        "scores": torch.tensor(out["scores"], dtype=torch.float32),
        "extra_logs": {k: torch.tensor(v, dtype=torch.float32) for k, v in out["extra_logs"].items()},
    }


if __name__ == "__main__":
    prompts = ["What is 2+2?", "Name a colour."]
    queries = [prompts[0] + " It is 4.", prompts[1] + " Blue."]
    out = reward_func(queries, prompts, None)
    print(json.dumps({"rewards": out["rewards"].tolist(), "extra_logs": sorted(out["extra_logs"])}))
