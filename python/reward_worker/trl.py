"""TRL: `reward_funcs` for `GRPOTrainer` (and any trainer that calls
`f(prompts=..., completions=..., **kwargs) -> list[float]`).

    from reward_worker.trl import WorkerReward
    trainer = GRPOTrainer(model=..., reward_funcs=[WorkerReward("http://127.0.0.1:8000")], ...)

One request per call: TRL hands the whole generation batch at once, so the
server sees every completion of every group together (one forward batch,
each group's prompt computed once). Prompts and completions may be plain text
(`"prompt"` datasets) or conversational (lists of `{"role", "content"}`);
both become one conversation per completion, scored at its last assistant
turn. `AsyncWorkerReward` is the same as an `async` callable, which TRL runs
concurrently with its other async reward functions.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from typing import Any, Optional, Sequence

from ._payload import pair_record
from .client import AsyncRewardClient, RewardClient


def _record(prompt: Any, completion: Any) -> dict[str, Any]:
    if isinstance(prompt, str) != isinstance(completion, str):
        raise TypeError(
            "a prompt and its completion must both be text or both be message lists, "
            f"got {type(prompt).__name__} and {type(completion).__name__}"
        )
    return pair_record(prompt, completion)


def _group_id(prompt: Any) -> str:
    return hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


class _Base:
    def __init__(self, weights: Optional[Sequence[float]], preset: Optional[str], group_by_prompt: bool,
                 name: str, keep: int):
        self.weights, self.preset, self.group_by_prompt = weights, preset, group_by_prompt
        #: TRL logs rewards under the function's `__name__` (`rewards/<name>/mean`).
        self.__name__ = name
        #: the last `keep` (prompt, completion, reward) the worker returned, newest last.
        self.history: deque[tuple[Any, Any, float]] = deque(maxlen=keep)

    def _request(self, prompts: Sequence[Any], completions: Sequence[Any]) -> dict[str, Any]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        records = [_record(p, c) for p, c in zip(prompts, completions)]
        groups = [_group_id(p) for p in prompts] if self.group_by_prompt else None
        return {"records": records, "groups": groups, "weights": self.weights, "preset": self.preset}

    def _keep(self, prompts: Sequence[Any], completions: Sequence[Any], rewards: list[float]) -> list[float]:
        self.history.extend(zip(prompts, completions, rewards))
        return rewards


class WorkerReward(_Base):
    """A synchronous TRL reward function backed by the worker.

    `client`: a `RewardClient` or the URL(s) to make one with. `weights` /
    `preset` choose the attribute mix per request (the server's default
    otherwise). `group_by_prompt=True` sends each completion's prompt as its
    GRPO group (for a server running `--normalize group`).
    """

    def __init__(self, client: RewardClient | str | Sequence[str], *, weights: Optional[Sequence[float]] = None,
                 preset: Optional[str] = None, group_by_prompt: bool = False, name: str = "reward_worker",
                 keep: int = 4096, **client_options: Any):
        super().__init__(weights, preset, group_by_prompt, name, keep)
        self.client = client if isinstance(client, RewardClient) else RewardClient(client, **client_options)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        results = self.client.score(**self._request(prompts, completions))
        return self._keep(prompts, completions, [r.reward for r in results])


class AsyncWorkerReward(_Base):
    """The `async` twin of `WorkerReward` (TRL awaits it on its own event loop)."""

    def __init__(self, client: AsyncRewardClient | str | Sequence[str], *, weights: Optional[Sequence[float]] = None,
                 preset: Optional[str] = None, group_by_prompt: bool = False, name: str = "reward_worker",
                 keep: int = 4096, **client_options: Any):
        super().__init__(weights, preset, group_by_prompt, name, keep)
        self._client = client if isinstance(client, AsyncRewardClient) else None
        self._urls, self._options = client, client_options

    def _get_client(self) -> AsyncRewardClient:
        # Made on first use, inside the loop that awaits it (httpx's async pool belongs to one loop).
        if self._client is None:
            self._client = AsyncRewardClient(self._urls, **self._options)  # type: ignore[arg-type]
        return self._client

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        results = await self._get_client().score(**self._request(prompts, completions))
        return self._keep(prompts, completions, [r.reward for r in results])
