"""veRL: a custom reward function (`custom_reward_function.path` /
`custom_reward_function.name=compute_score`, or `compute_score_async` for the
reward loop, which awaits a coroutine function).

veRL calls `compute_score(data_source, solution_str, ground_truth,
extra_info, **kwargs)` once per sample. The response is `solution_str`; the
prompt comes from `extra_info["prompt"]` (text or messages; `"question"` or
`"raw_prompt"` also work), which the dataset's preprocessing puts there.
The answer is `{"score": reward, <five HelpSteer attributes>}`: veRL takes
`score` as the reward and logs the rest as `reward_extra_info`.

veRL's reward-model loop (`reward_model.enable=True` with a vLLM reward
server) needs nothing from here: it posts vLLM's `/classify`, which
`reward-worker serve --merge-attributes` answers with the scalar reward as
`data[-1].probs[-1]`.

The server is `REWARD_WORKER_URLS` (see `reward_worker.env`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .env import async_client_from_env, client_from_env

_PROMPT_FIELDS = ("prompt", "question", "raw_prompt")


def _prompt(extra_info: Optional[Mapping[str, Any]]) -> Any:
    for field in _PROMPT_FIELDS:
        if extra_info and extra_info.get(field) is not None:
            value = extra_info[field]
            return value if isinstance(value, str) else [dict(m) for m in value]
    have = sorted(extra_info) if extra_info else []
    raise ValueError(
        f"reward_worker.verl needs the prompt in extra_info['prompt'] (or 'question', 'raw_prompt'); "
        f"extra_info has {have}"
    )


def _answer(result: Any) -> dict[str, float]:
    return {"score": result.reward, **result.attributes}


def compute_score(data_source: Any, solution_str: str, ground_truth: Any = None,
                  extra_info: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> dict[str, float]:
    """One sample's reward from the worker (blocking)."""
    result = client_from_env().score(prompts=[_prompt(extra_info)], responses=[solution_str])[0]
    return _answer(result)


_async_clients: dict[int, Any] = {}


async def compute_score_async(data_source: Any, solution_str: str, ground_truth: Any = None,
                              extra_info: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> dict[str, float]:
    """The same as a coroutine, for veRL's asynchronous reward loop (one client per event loop)."""
    import asyncio

    loop = id(asyncio.get_running_loop())
    if loop not in _async_clients:
        _async_clients[loop] = async_client_from_env()
    result = (await _async_clients[loop].score(prompts=[_prompt(extra_info)], responses=[solution_str]))[0]
    return _answer(result)
