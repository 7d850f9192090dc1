"""TRL's GRPOTrainer on CPU, training a tiny random policy on the worker's
rewards through `reward_worker.trl.WorkerReward`: the rewards TRL logged
are the worker's numbers for those completions, and a worker restart in the
middle of the run costs retries, not a failed step."""

from __future__ import annotations

import math
import threading

import pytest

from conftest import ROOT, Worker
from test_client import same

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402

from reward_worker import RewardClient  # noqa: E402
from reward_worker.trl import WorkerReward  # noqa: E402

STEPS = 3
PROMPTS = ["Write a greeting.", "Name a fruit.", "Count to three.", "Say something kind."]


def tiny_policy() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(ROOT / "models/demo/tokenizer.json"),
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


class Recorded(WorkerReward):
    """The adapter, remembering each call's completions and the rewards the worker gave."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list, list, list[float]]] = []

    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts, completions, **kwargs)
        self.calls.append((list(prompts), list(completions), rewards))
        return rewards


class RestartWorker(TrainerCallback):
    """After step 1, kill the worker; bring it back once the client has seen it gone."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.killed = threading.Event()
        self.restarted = threading.Event()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and not self.killed.is_set():
            self.worker.kill()
            self.killed.set()

    def on_client_event(self, event) -> None:
        if event.kind == "down" and self.killed.is_set() and not self.restarted.is_set():
            self.restarted.set()
            threading.Thread(target=self.worker.start, daemon=True).start()


def test_grpo_trains_on_the_workers_rewards_through_a_restart(tmp_path):
    worker = Worker()
    restart = RestartWorker(worker)
    events = []

    def on_event(e):
        events.append(e)
        restart.on_client_event(e)

    client = RewardClient(worker.url, timeout=120, max_retries=30, on_event=on_event)
    reward = Recorded(client)
    model, tokenizer = tiny_policy()
    config = trl.GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        max_steps=STEPS, learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
        bf16=False, temperature=1.0, seed=0, dataloader_num_workers=0,
    )
    trainer = trl.GRPOTrainer(
        model=model, reward_funcs=[reward], args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}), callbacks=[restart],
    )
    before = [p.detach().clone() for p in model.parameters()]
    try:
        trainer.train()
        # TRL's own per-completion log of the last generation batch, scored again by the worker.
        logged_completions = list(trainer._logs["completion"])
        logged_prompts = list(trainer._logs["prompt"])
        logged_rewards = list(trainer._logs["rewards"]["reward_worker"])
        rescored = RewardClient(worker.url, timeout=60).score(prompts=logged_prompts, responses=logged_completions)
    finally:
        worker.kill()

    assert trainer.state.global_step == STEPS, "every step ran"
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the policy was updated"
    assert len(reward.calls) == STEPS, "one reward call per step"
    steps = [h for h in trainer.state.log_history if "rewards/reward_worker/mean" in h]
    assert len(steps) == STEPS
    for k, (h, (_, _, rewards)) in enumerate(zip(steps, reward.calls)):
        mean = sum(rewards) / len(rewards)
        assert math.isfinite(h["rewards/reward_worker/mean"])
        assert abs(h["rewards/reward_worker/mean"] - mean) <= 1e-5 * max(1.0, max(abs(r) for r in rewards)), k
    assert logged_completions == reward.calls[-1][1], "TRL logged the completions the worker scored"
    same(logged_rewards, reward.calls[-1][2], "TRL's logged rewards vs the worker's answer")
    same(logged_rewards, [r.reward for r in rescored], "TRL's logged rewards vs the worker scoring them again")
    # The restart: the worker was killed after step 1, the next reward call retried until it was back.
    assert restart.killed.is_set() and restart.restarted.is_set()
    assert client.stats["retries"] >= 1 and any(e.kind == "down" for e in events)
    print(f"GRPO {STEPS} steps, rewards per step {[round(h['rewards/reward_worker/mean'], 3) for h in steps]}, "
          f"client {client.stats}")
