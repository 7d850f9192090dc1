"""TRL's GRPOTrainer trained on reward-worker's rewards.

    reward-worker serve --port 8000 &
    python examples/python/trl_grpo.py --url http://127.0.0.1:8000 --steps 2

Without `--policy` the policy is a tiny random Llama made here with the demo
model's tokenizer (nothing is downloaded), which is enough to see the loop run
on a CPU; with `--policy DIR` any local causal LM. `--conversational` uses
chat-format prompts (the completions come back as assistant messages);
`--async` uses the async adapter. The reward part is three lines:

    from reward_worker.trl import WorkerReward
    reward = WorkerReward(["http://rm-0:8000", "http://rm-1:8000"], timeout=120)
    GRPOTrainer(model=..., reward_funcs=[reward], args=GRPOConfig(...), train_dataset=...)
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from reward_worker.trl import AsyncWorkerReward, WorkerReward

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Write a greeting.", "Name a fruit.", "Count to three.", "Say something kind."]
CHAT_TEMPLATE = (
    "{% for m in messages %}<extra_id_1>{{ 'User' if m['role'] == 'user' else 'Assistant' }}\n{{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<extra_id_1>Assistant\n{% endif %}"
)


def tiny_policy():
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(ROOT / "models/demo/tokenizer.json"),
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config), tokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8000", help="comma-separated reward-worker URLs")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--policy", default=None, help="a local causal LM directory (default: a tiny random one)")
    p.add_argument("--conversational", action="store_true")
    p.add_argument("--async", dest="use_async", action="store_true")
    a = p.parse_args()

    if a.policy:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(a.policy), AutoTokenizer.from_pretrained(a.policy)
    else:
        model, tokenizer = tiny_policy()
    urls = a.url.split(",")
    reward = AsyncWorkerReward(urls, timeout=120) if a.use_async else WorkerReward(urls, timeout=120)
    prompts = [[{"role": "user", "content": q}] for q in PROMPTS] if a.conversational else PROMPTS
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(output_dir=out, per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                            max_steps=a.steps, learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True,
                            save_strategy="no", bf16=False, seed=0)
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, processing_class=tokenizer,
                              train_dataset=Dataset.from_dict({"prompt": prompts * 4}))
        trainer.train()
    logged = [h["rewards/reward_worker/mean"] for h in trainer.state.log_history if "rewards/reward_worker/mean" in h]
    print(json.dumps({"steps": trainer.state.global_step, "mean_reward_per_step": logged}))


if __name__ == "__main__":
    main()
