"""slime: reward functions for `--custom-rm-path`.

    --custom-rm-path reward_worker.slime.reward                 # one sample per call
    --group-rm --custom-rm-path reward_worker.slime.group_reward  # a prompt's samples together

slime awaits `fn(args, sample)` (or `fn(args, samples)` with `--group-rm`).
Each sample is scored as its prompt (`sample.prompt`: text or a message list)
followed by `sample.response` as the assistant turn. The server is
`args.rm_url` when set (comma-separated URLs), else `REWARD_WORKER_URLS`.
With `--group-rm` the samples of one call go in one request with one group
id, so a server running `--normalize group` normalises within the group.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from .client import AsyncRewardClient
from .env import async_client_from_env

_clients: dict[tuple[int, str], AsyncRewardClient] = {}


def _client(args: Any) -> AsyncRewardClient:
    urls = getattr(args, "rm_url", None) or ""
    key = (id(asyncio.get_running_loop()), urls)
    if key not in _clients:
        _clients[key] = async_client_from_env(urls or None)
    return _clients[key]


def _pair(sample: Any) -> tuple[Any, str]:
    prompt, response = getattr(sample, "prompt", None), getattr(sample, "response", None)
    if prompt is None or not isinstance(response, str):
        raise ValueError("a slime sample needs `prompt` (text or messages) and `response` (text)")
    return prompt, response


async def reward(args: Any, sample: Any, **kwargs: Any) -> float:
    prompt, response = _pair(sample)
    return (await _client(args).score(prompts=[prompt], responses=[response]))[0].reward


async def group_reward(args: Any, samples: Sequence[Any], **kwargs: Any) -> list[float]:
    pairs = [_pair(s) for s in samples]
    results = await _client(args).score(
        prompts=[p for p, _ in pairs], responses=[r for _, r in pairs], groups=[0] * len(pairs)
    )
    return [r.reward for r in results]
