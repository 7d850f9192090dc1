"""veRL with reward-worker, two ways.

1. veRL's reward-model loop (a vLLM reward server) pointed at the worker:
   start `reward-worker serve --merge-attributes --served-model-name MODEL`,
   then veRL posts `/classify` `{"model", "input": <rendered>, "use_activation": false}`
   and reads the reward at `data[-1].probs[-1]`.
2. A custom reward function (this file's way): in the veRL config

       custom_reward_function.path=<site-packages>/reward_worker/verl.py
       custom_reward_function.name=compute_score        # or compute_score_async

   with `REWARD_WORKER_URLS=http://rm-0:8000,http://rm-1:8000` in the workers'
   environment, and the prompt in each sample's `extra_info["prompt"]`.

Run this file to score one sample the way veRL calls the function:

    REWARD_WORKER_URLS=http://127.0.0.1:8000 python examples/python/verl_reward.py
"""

import asyncio
import json

from reward_worker.verl import compute_score, compute_score_async

if __name__ == "__main__":
    extra_info = {"prompt": "What is the capital of France?", "split": "train", "index": 0}
    sync = compute_score("demo", "Paris is the capital of France.", None, extra_info)
    both = asyncio.run(compute_score_async("demo", "Paris is the capital of France.", None, extra_info))
    print(json.dumps({"compute_score": sync, "compute_score_async": both}))
