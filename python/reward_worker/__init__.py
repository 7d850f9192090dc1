"""reward-worker from Python: a client for the reward-model service
(`reward-worker serve`) and adapters for the trainers that use it.

- `RewardClient` / `AsyncRewardClient`: several replica URLs, least
  outstanding requests among ready replicas, failover, `Retry-After`, a
  finite total deadline, an `Idempotency-Key` on every request;
- `reward_worker.trl`: `reward_funcs` for TRL's `GRPOTrainer`;
- `reward_worker.verl`: veRL's `compute_score` (its reward-model loop posts
  `/classify`, which the server answers as vLLM does);
- `reward_worker.openrlhf`: the reward function file for `--remote_rm_url x.py`
  (`--remote_rm_url http://host:port/get_reward` needs nothing from here);
- `reward_worker.slime`: a `--custom-rm-path` function.

Pure Python: httpx only; nothing here imports torch.
"""

from ._payload import ATTRIBUTES, RecordReward, TextReward, TurnReward, pair_record
from ._replicas import Event
from .client import AsyncRewardClient, RewardClient
from .errors import DeadlineExceeded, RequestRefused, RetriesExhausted, RewardWorkerError
from .env import client_from_env

__all__ = [
    "ATTRIBUTES", "AsyncRewardClient", "DeadlineExceeded", "Event", "RecordReward", "RequestRefused",
    "RetriesExhausted", "RewardClient", "RewardWorkerError", "TextReward", "TurnReward", "client_from_env",
    "pair_record",
]
