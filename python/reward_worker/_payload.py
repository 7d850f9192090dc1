"""Request bodies and typed results for the worker's routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

Message = Mapping[str, Any]
Prompt = Union[str, Sequence[Message]]

#: The nine outputs of a Nemotron-4 reward model, in order.
ATTRIBUTES = (
    "quality", "toxicity", "humor", "creativity",
    "helpfulness", "correctness", "coherence", "complexity", "verbosity",
)


@dataclass(frozen=True)
class TurnReward:
    turn: int
    reward: float
    raw: tuple[float, ...]
    attributes: dict[str, float]


@dataclass(frozen=True)
class RecordReward:
    """One record's answer: `reward` and `raw` are its last assistant turn's;
    `turns` has every rated turn."""

    index: int
    reward: float
    raw: tuple[float, ...]
    attributes: dict[str, float]
    turns: tuple[TurnReward, ...]
    tokens: int
    truncated: bool = False


@dataclass(frozen=True)
class TextReward:
    """A pre-rendered text's reward (`/get_reward`) and its HelpSteer attributes."""

    reward: float
    attributes: dict[str, float]


def pair_record(prompt: Prompt, response: Union[str, Message, Sequence[Message]]) -> dict[str, Any]:
    """A prompt (text or messages) and a response (text, one message or messages) as one record."""
    if isinstance(prompt, str):
        messages: list[Any] = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
    if isinstance(response, str):
        messages.append({"role": "assistant", "content": response})
    elif isinstance(response, Mapping):
        messages.append(dict(response))
    else:
        messages.extend(dict(m) for m in response)
    return {"messages": messages}


def records_from(
    records: Optional[Sequence[Mapping[str, Any]]],
    messages: Optional[Sequence[Sequence[Message]]],
    prompts: Optional[Sequence[Prompt]],
    responses: Optional[Sequence[Any]],
    groups: Optional[Sequence[Any]],
) -> list[dict[str, Any]]:
    """Exactly one way of saying what to score, as the records `/v1/rewards` takes."""
    given = [name for name, v in (("records", records), ("messages", messages), ("prompts", prompts)) if v is not None]
    if len(given) != 1:
        raise ValueError("pass exactly one of records=, messages= or prompts= (with responses=)")
    if prompts is not None:
        if responses is None or len(responses) != len(prompts):
            n = "no" if responses is None else len(responses)
            raise ValueError(f"prompts= has {len(prompts)} items and responses= {n}; they go in pairs")
        out = [pair_record(p, r) for p, r in zip(prompts, responses)]
    elif messages is not None:
        out = [{"messages": [dict(m) for m in conversation]} for conversation in messages]
    else:
        out = [dict(r) for r in records or []]
    if not out:
        raise ValueError("nothing to score: the list is empty")
    if groups is not None:
        if len(groups) != len(out):
            raise ValueError(f"groups= has {len(groups)} items for {len(out)} records")
        for record, group in zip(out, groups):
            record["group"] = group
    return out


def record_rewards(body: Mapping[str, Any]) -> list[RecordReward]:
    """`/v1/rewards`'s `results` as typed values."""
    out = []
    for r in body["results"]:
        turns = tuple(
            TurnReward(int(t["turn"]), float(t["reward"]), tuple(float(x) for x in t["raw"]), dict(t["attributes"]))
            for t in r["turns"]
        )
        last = turns[-1]
        out.append(
            RecordReward(
                index=int(r["index"]), reward=last.reward, raw=last.raw, attributes=last.attributes,
                turns=turns, tokens=int(r.get("tokens", 0)), truncated=bool(r.get("truncated", False)),
            )
        )
    return out


def text_rewards(body: Mapping[str, Any]) -> list[TextReward]:
    """`/get_reward`'s answer as typed values."""
    logs = body.get("extra_logs") or {}
    return [
        TextReward(float(reward), {name: float(values[i]) for name, values in logs.items()})
        for i, reward in enumerate(body["rewards"])
    ]
