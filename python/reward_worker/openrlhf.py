"""OpenRLHF: two ways in.

1. `--remote_rm_url http://host:8000/get_reward` works as it is: the server
   speaks OpenRLHF's remote reward protocol (`{"query", "prompts", "labels"}`
   -> `{"rewards", "scores", "extra_logs"}`). Several replicas:
   `--remote_rm_url http://a:8000/get_reward,http://b:8000/get_reward`.
2. `--remote_rm_url reward_file.py`, OpenRLHF's `.py` hook: the file defines
   `reward_func(queries, prompts, labels)`. `rewards(queries, prompts)` below
   does the work with this package's client (failover over every URL,
   `Retry-After`, a finite deadline, idempotent retries), and
   `examples/python/openrlhf_reward_func.py` is such a file: it turns the lists
   into the tensors OpenRLHF expects.

Each query is prompt + response as one rendered string. The server scores a
query in the SteerLM template as it is, and splits any other query at its
prompt into a user and an assistant turn (see the server's README).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .env import client_from_env


def rewards(queries: Sequence[str], prompts: Optional[Sequence[str]] = None,
            labels: Any = None, urls: Optional[str] = None) -> dict[str, Any]:
    """`{"rewards": [...], "scores": [...], "extra_logs": {attribute: [...]}}` as plain lists."""
    results = client_from_env(urls).score_texts(list(queries), list(prompts) if prompts is not None else None)
    values = [r.reward for r in results]
    names = list(results[0].attributes) if results else []
    logs = {name: [r.attributes[name] for r in results] for name in names}
    return {"rewards": values, "scores": list(values), "extra_logs": logs}
