"""slime with reward-worker:

    --custom-rm-path reward_worker.slime.reward                    # per sample
    --group-rm --custom-rm-path reward_worker.slime.group_reward   # a prompt's samples in one request

The server is `--rm-url` (comma-separated URLs) or `REWARD_WORKER_URLS`.
Run this file to call both as slime does, with stand-in samples:

    REWARD_WORKER_URLS=http://127.0.0.1:8000 python examples/python/slime_rm.py
"""

import asyncio
import json
from types import SimpleNamespace

from reward_worker.slime import group_reward, reward


async def main():
    args = SimpleNamespace(rm_url=None)
    samples = [SimpleNamespace(prompt="Write a haiku about rain.", response=r, label=None, metadata={})
               for r in ["Soft rain on the roof.", "Rain falls; the street shines; we wait.", "no"]]
    one = await reward(args, samples[0])
    group = await group_reward(args, samples)
    print(json.dumps({"reward": one, "group_reward": group}))


if __name__ == "__main__":
    asyncio.run(main())
