#!/usr/bin/env python3
"""The bench workloads: seeded conversations sized in tokens of the bench model's tokenizer.

  a  8 single-turn conversations, each scored prefix exactly 512 tokens
  b  32 single-turn conversations, scored prefix uniform in [lo, 1024] tokens
  c  8 conversations of 3 exchanges, every assistant turn rated (150-250 tokens each)
  d  GRPO: 16 prompts of 64-1,024 tokens x 8 responses of 32-1,024 tokens; each
     record is one prompt + one response, and the 8 records of a prompt carry the
     same prompt text (so their token ids agree up to the response)
  e  the RLAIF mix: the records of (d) plus 16 three-turn conversations (user
     turns 32-256 tokens, assistant turns 64-384 tokens, every assistant turn
     rated), all shuffled

For (a) and (b) the target is the whole scored prefix (system header + turns +
<extra_id_2>); for (c), (d) and (e) it is each message's own text, counted alone.
Texts are filler from a fixed word list, trimmed at the character level, so
targets are hit exactly or to within a token. Everything is a function of the
seed and the tokenizer.

What a workload holds (`stats`): records, scored turns, useful tokens (every
scored prefix counted as if scored alone) and unique tokens (the nodes of the
prefix tree over all scored prefixes: what an engine that computes every shared
token once has to compute).

Run alone to write the workloads and print their sizes:
  .venv/bin/python bench/workloads.py [--tokenizer bench/out/model-100m/tokenizer.json]
      [--workloads a,b,c,d,e] [--groups 16] [--seed 0] [--out bench/out]
"""
import argparse
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
from make_fixture import render_prefixes  # noqa: E402  (the SteerLM template the engine scores)

NAMES = ("a", "b", "c", "d", "e")

WORDS = """the of and to in is that it for as with was on be by this are or at from
have an but not which all were when we there can more one their will has would what
about if out so up them some into than its time only other new could these two may
first any then like now such over most also after where made just many way well
because through each people long little very even work much good great own world
still while last might state never under same between life light water small number
house place point day year old sound answer model reward score conversation turn
assistant user question helpful correct coherent complex verbose quality example
system train data value result method simple explain reason detail step process
plant sunlight energy sugar oxygen river mountain stone cloud snow wind sea wave
tide number language code function program memory thread kernel batch token layer
attention head vector matrix weight bias norm gradient update policy rollout""".split()

QUESTIONS = [
    "Explain how {a} relates to {b}.",
    "What is the best way to {a} a {b}?",
    "Can you describe the {a} of the {b} in detail?",
    "Write a short note about {a} and {b}.",
    "Why does the {a} change the {b}?",
    "Give me three facts about {a}.",
    "Summarise the {a} {b} for a beginner, please.",
]


# --------------------------------------------------------------------------- text

def filler(rng, n_words):
    words = []
    for i in range(n_words):
        w = rng.choice(WORDS)
        if i == 0 or words[-1].endswith((".", "\n")):
            w = w.capitalize()
        r = rng.random()
        if r < 0.08:
            w += "."
        elif r < 0.12:
            w += ","
        elif r < 0.13:
            w += ".\n"
        words.append(w)
    return " ".join(words).replace("\n ", "\n")


def question(rng):
    return rng.choice(QUESTIONS).format(a=rng.choice(WORDS), b=rng.choice(WORDS))


def ntok(tok, text):
    return len(tok.encode(text, add_special_tokens=False).ids)


def fit_text(tok, make, source, target):
    """The longest prefix `source[:c]` with ntok(make(source[:c])) <= target; exact when possible.

    Token count is (nearly) monotonic in the character count, so binary search then
    look a few characters either side for an exact hit."""
    lo, hi = 0, len(source)
    while ntok(tok, make(source[:hi])) < target:  # make sure the source is long enough
        source = source + " " + source
        hi = len(source)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ntok(tok, make(source[:mid])) <= target:
            lo = mid
        else:
            hi = mid - 1
    best = lo
    for c in range(max(0, lo - 8), min(len(source), lo + 8) + 1):
        if ntok(tok, make(source[:c].rstrip())) == target:
            return source[:c].rstrip()
    return source[:best]


def message(tok, rng, n):
    """Filler text of `n` tokens (counted alone)."""
    return fit_text(tok, lambda s: s, filler(rng, 2 * n + 16), n)


def single_turn(tok, rng, target):
    """A one-exchange conversation whose scored prefix is `target` tokens (or as close as it gets)."""
    q = question(rng)
    src = filler(rng, 2 * target + 16)
    make = lambda ans: render_prefixes([("User", q), ("Assistant", ans)])[0][1]  # noqa: E731
    if ntok(tok, make("")) > target:  # question too long for this target: shortest question
        q = "Hi."
    ans = fit_text(tok, make, src, target)
    return [("User", q), ("Assistant", ans)]


# --------------------------------------------------------------------------- workloads

def grpo(tok, rng, prompts, responses):
    """`prompts` prompts of 64-1,024 tokens, each with `responses` responses of 32-1,024 tokens."""
    convs = []
    for _ in range(prompts):
        prompt = message(tok, rng, rng.randint(64, 1024))
        for _ in range(responses):
            convs.append([("User", prompt), ("Assistant", message(tok, rng, rng.randint(32, 1024)))])
    return convs


def multi_turn(tok, rng, n, exchanges=3):
    """`n` conversations of `exchanges` user (32-256 tokens) / assistant (64-384 tokens) exchanges."""
    convs = []
    for _ in range(n):
        conv = []
        for _ in range(exchanges):
            conv.append(("User", message(tok, rng, rng.randint(32, 256))))
            conv.append(("Assistant", message(tok, rng, rng.randint(64, 384))))
        convs.append(conv)
    return convs


def make_workloads(tok, seed, names, groups=16):
    """name -> (description, list of conversations [(role, text)]).

    `groups` is the number of prompts in (d) and of multi-turn conversations in
    (e) (16 as the issue defines them; fewer for smoke runs)."""
    out = {}
    min_prefix = ntok(tok, render_prefixes([("User", "Hi."), ("Assistant", "Ok.")])[0][1])
    if "a" in names:
        rng = random.Random(seed * 1000 + 1)
        convs = [single_turn(tok, rng, 512) for _ in range(8)]
        out["a"] = ("8 x single-turn, prefix 512 tok", convs)
    if "b" in names:
        rng = random.Random(seed * 1000 + 2)
        lo = max(64, min_prefix)
        convs = [single_turn(tok, rng, rng.randint(lo, 1024)) for _ in range(32)]
        out["b"] = (f"32 x single-turn, prefix U[{lo},1024] tok", convs)
    if "c" in names:
        rng = random.Random(seed * 1000 + 3)
        convs = []
        for _ in range(8):
            conv = []
            for _ in range(3):
                conv.append(("User", question(rng)))
                conv.append(("Assistant", message(tok, rng, rng.randint(150, 250))))
            convs.append(conv)
        out["c"] = ("8 x 3 rated turns, 150-250 tok/turn", convs)
    if "d" in names or "e" in names:
        d = grpo(tok, random.Random(seed * 1000 + 4), groups, 8)
        if "d" in names:
            out["d"] = (f"GRPO {groups} prompts x 8 responses", d)
        if "e" in names:
            mix = d + multi_turn(tok, random.Random(seed * 1000 + 5), groups)
            random.Random(seed * 1000 + 6).shuffle(mix)
            out["e"] = (f"RLAIF mix: d + {groups} x 3 rated turns", mix)
    return out


# --------------------------------------------------------------------------- sizes

def record(conv):
    return {"conversations": [{"from": r, "value": v} for r, v in conv]}


def write_jsonl(path, convs):
    with open(path, "w") as f:
        for conv in convs:
            f.write(json.dumps(record(conv), ensure_ascii=False) + "\n")


def scored_prefixes(tok, convs):
    """[(record, turn, token ids of the scored prefix incl. <extra_id_2>)] in workload order."""
    return [(r, t, tok.encode(text, add_special_tokens=False).ids)
            for r, conv in enumerate(convs) for t, text in render_prefixes(conv)]


def unique_tokens(seqs):
    """Nodes of the prefix tree over `seqs`: in lexicographic order each sequence
    adds the tokens past its longest common prefix with the one before it."""
    total, prev = 0, ()
    for s in sorted(tuple(x) for x in seqs):
        common = 0
        for x, y in zip(prev, s):
            if x != y:
                break
            common += 1
        total += len(s) - common
        prev = s
    return total


def stats(prefixes, n_records):
    seqs = [ids for _, _, ids in prefixes]
    lens = [len(x) for x in seqs]
    return dict(records=n_records, scored_turns=len(seqs), useful_tokens=sum(lens),
                unique_tokens=unique_tokens(seqs), min_prefix=min(lens), max_prefix=max(lens),
                mean_prefix=sum(lens) / len(lens))


def describe(name, desc, st):
    return (f"workload {name}: {desc}: {st['records']} records, {st['scored_turns']} scored turns, "
            f"prefix tokens min/mean/max {st['min_prefix']}/{st['mean_prefix']:.0f}/{st['max_prefix']}, "
            f"useful {st['useful_tokens']}, unique {st['unique_tokens']} "
            f"({100 * st['unique_tokens'] / st['useful_tokens']:.1f}% of useful)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "out", "model-100m", "tokenizer.json"),
                    help="the bench model's tokenizer.json (made by compare.py's first run)")
    ap.add_argument("--workloads", default=",".join(NAMES))
    ap.add_argument("--groups", type=int, default=16, help="prompts in (d), conversations added in (e)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write workload-NAME.jsonl here")
    a = ap.parse_args()
    names = [n.strip() for n in a.workloads.split(",") if n.strip()]
    bad = [n for n in names if n not in NAMES]
    if bad:
        sys.exit(f"unknown workload(s) {bad}; known: {','.join(NAMES)}")
    if not os.path.exists(a.tokenizer):
        sys.exit(f"no tokenizer at {a.tokenizer}: run bench/compare.py once (it makes the bench model) "
                 f"or pass --tokenizer")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(a.tokenizer)
    for name, (desc, convs) in make_workloads(tok, a.seed, names, a.groups).items():
        print(describe(name, desc, stats(scored_prefixes(tok, convs), len(convs))), flush=True)
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            write_jsonl(os.path.join(a.out, f"workload-{name}.jsonl"), convs)


if __name__ == "__main__":
    main()
