"""The colocate pattern (veRL's colocate mode, OpenRLHF's `colocate_all`,
ROLL's load / compute / offload): the reward model shares its GPUs with the
policy's rollout engine, and holds them only while it scores.

    for each step:
        rollout phase   the rollout engine generates (the reward model sleeps)
        wake_up         the reward model takes its memory back
        score           one batch: every response of the step
        sleep           the reward model gives its memory to the rollout engine again

Level 1 keeps the weights in pinned host memory (a wake is a copy to the
device); level 2 drops them (a wake reads the checkpoint again: slower, no
host memory held). The recipe key is `[colocate] sleep_level`, the serve flag
`--sleep-level` (the level of a `POST /sleep` without one).

    REWARD_WORKER_URLS=http://127.0.0.1:8000 python examples/python/colocate.py --steps 2 --level 2

Requests sent while the model sleeps are not refused: they wait in the
queue and are answered after the wake.
"""

import argparse
import json
import time

from reward_worker import client_from_env

PROMPTS = ["What is 2+2?", "Name a colour.", "Write a haiku about rain."]


def rollout(step: int) -> list[tuple[str, str]]:
    """Stands in for the rollout engine's generation (it has the GPUs now)."""
    time.sleep(0.2)
    return [(p, f"Answer {step}.{i}: {p.lower()}") for i, p in enumerate(PROMPTS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--level", type=int, choices=(1, 2), default=1)
    args = parser.parse_args()
    client = client_from_env()
    client.sleep(level=args.level)  # the first rollout phase needs the GPUs
    steps = []
    for step in range(args.steps):
        pairs = rollout(step)
        started = time.monotonic()
        client.wake_up()
        woke = time.monotonic()
        rewards = client.score(prompts=[p for p, _ in pairs], responses=[r for _, r in pairs])
        scored = time.monotonic()
        slept = client.sleep(level=args.level)
        steps.append({
            "step": step,
            "rewards": [r.reward for r in rewards],
            "wake_seconds": round(woke - started, 3),
            "score_seconds": round(scored - woke, 3),
            "sleep_seconds": round(time.monotonic() - scored, 3),
            "asleep": all(s["is_sleeping"] for s in slept.values()),
        })
    client.wake_up()  # leave it awake for whoever comes next
    print(json.dumps({"level": args.level, "steps": steps}))


if __name__ == "__main__":
    main()
