"""The framework adapters against a real worker, and the runnable examples
under examples/python/ run as their users would run them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT
from reward_worker import RewardClient
from reward_worker.trl import AsyncWorkerReward, WorkerReward
from test_client import same

PROMPTS = ["What is 2+2?", "Name a colour.", "Say hi."]
COMPLETIONS = [" It is 4.", " Blue.", " Hello there!"]


@pytest.fixture()
def env_worker(worker, monkeypatch):
    monkeypatch.setenv("REWARD_WORKER_URLS", worker.url)
    return worker


def want(worker, prompts, responses) -> list[float]:
    return [r.reward for r in RewardClient(worker.url, timeout=60).score(prompts=prompts, responses=responses)]


def test_trl_reward_funcs_plain_and_conversational(worker):
    reward = WorkerReward(worker.url, timeout=60)
    assert reward.__name__ == "reward_worker"
    same(reward(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=None), want(worker, PROMPTS, COMPLETIONS),
         "plain")
    chat_prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS]
    chat_completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    records = [{"messages": p + c} for p, c in zip(chat_prompts, chat_completions)]
    expected = [r.reward for r in RewardClient(worker.url, timeout=60).score(records=records)]
    same(reward(prompts=chat_prompts, completions=chat_completions), expected, "conversational")
    same(asyncio.run(AsyncWorkerReward(worker.url, timeout=60)(prompts=chat_prompts, completions=chat_completions)),
         expected, "async")
    assert [c for _, c, _ in reward.history][-3:] == chat_completions
    with pytest.raises(TypeError):
        reward(prompts=["text"], completions=[[{"role": "assistant", "content": "x"}]])


def test_verl_compute_score(env_worker):
    from reward_worker.verl import compute_score, compute_score_async

    [expected] = want(env_worker, PROMPTS[:1], COMPLETIONS[:1])
    got = compute_score("gsm8k", COMPLETIONS[0], "4", {"question": PROMPTS[0], "index": 3})
    same([got["score"]], [expected], "compute_score")
    assert set(got) == {"score", "helpfulness", "correctness", "coherence", "complexity", "verbosity"}
    got = asyncio.run(compute_score_async("gsm8k", COMPLETIONS[0], "4", extra_info={"prompt": PROMPTS[0]}))
    same([got["score"]], [expected], "compute_score_async")
    with pytest.raises(ValueError, match="extra_info"):
        compute_score("gsm8k", "x", "4", {"index": 3})


def test_openrlhf_and_slime(env_worker):
    from reward_worker.openrlhf import rewards
    from reward_worker.slime import group_reward, reward

    expected = want(env_worker, PROMPTS, COMPLETIONS)
    out = rewards([p + c for p, c in zip(PROMPTS, COMPLETIONS)], PROMPTS, None)
    same(out["rewards"], expected, "openrlhf")
    assert out["scores"] == out["rewards"] and len(out["extra_logs"]["helpfulness"]) == 3
    args = SimpleNamespace(rm_url=env_worker.url)
    samples = [SimpleNamespace(prompt=p, response=c, label=None) for p, c in zip(PROMPTS, COMPLETIONS)]
    same([asyncio.run(reward(args, samples[1]))], expected[1:2], "slime reward")
    same(asyncio.run(group_reward(SimpleNamespace(), samples)), expected, "slime group_reward")


def run_example(name: str, worker, *args: str) -> dict:
    env = dict(os.environ, REWARD_WORKER_URLS=worker.url, PYTHONPATH=str(ROOT / "python"))
    out = subprocess.run([sys.executable, str(ROOT / "examples/python" / name), *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{name}\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_examples_run(worker):
    client = RewardClient(worker.url, timeout=60)
    verl = run_example("verl_reward.py", worker)
    [expected] = [r.reward for r in client.score(prompts=["What is the capital of France?"],
                                                 responses=["Paris is the capital of France."])]
    same([verl["compute_score"]["score"], verl["compute_score_async"]["score"]], [expected] * 2, "verl example")

    openrlhf = run_example("openrlhf_reward_func.py", worker)
    same(openrlhf["rewards"], [r.reward for r in client.score(prompts=["What is 2+2?", "Name a colour."],
                                                              responses=[" It is 4.", " Blue."])], "openrlhf example")

    slime = run_example("slime_rm.py", worker)
    responses = ["Soft rain on the roof.", "Rain falls; the street shines; we wait.", "no"]
    expected = [r.reward for r in client.score(prompts=["Write a haiku about rain."] * 3, responses=responses)]
    same([slime["reward"]] + slime["group_reward"], expected[:1] + expected, "slime example")

    colocate = run_example("colocate.py", worker, "--steps", "2", "--level", "2")
    prompts = ["What is 2+2?", "Name a colour.", "Write a haiku about rain."]
    responses = [f"Answer 0.{i}: {p.lower()}" for i, p in enumerate(prompts)]
    same(colocate["steps"][0]["rewards"], [r.reward for r in client.score(prompts=prompts, responses=responses)],
         "colocate example (scored after a level-2 wake)")
    assert all(s["asleep"] for s in colocate["steps"]) and client.is_sleeping()[worker.url]["is_sleeping"] is False

    trl = run_example("trl_grpo.py", worker, "--url", worker.url, "--steps", "1", "--conversational", "--async")
    assert trl["steps"] == 1 and len(trl["mean_reward_per_step"]) == 1
