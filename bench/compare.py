#!/usr/bin/env python3
"""Benchmark reward-worker against Hugging Face transformers on the same weights.

One run:
  1. makes the bench model if it is missing (tests/fixtures/make_fixture.py,
     Nemotron-shaped, ~89M parameters by default, random weights),
  2. writes three seeded workloads (JSONL, seed format) into bench/out/,
  3. for every dtype x workload times `reward-worker bench` (subprocess) and
     transformers' NemotronModel (in process, same safetensors, same thread
     count, batch 8 in workload order, right padding + attention mask, last real
     token, fp32 head), both as warmup + median of repeats, tokenisation and
     model load excluded,
  4. checks that both give the same rewards for a few records
     (`reward-worker score` vs the transformers outputs of the timed runs),
  5. prints a table and writes bench/out/results.json.

Throughput is "useful tokens" per second: for every scored assistant turn, the
length of its scored prefix in tokens including the trailing <extra_id_2>, i.e.
each prefix counted as if it were scored on its own. reward-worker scores a
multi-turn conversation in one pass, transformers scores each prefix
separately, so both are credited with the same work.

Run from anywhere:  .venv/bin/python bench/compare.py [--quick] [--threads 2] ...
See bench/README.md.
"""
import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")

# The scoring semantics (SteerLM template, default weights) come from the fixture
# generator that made the reference data, so the bench scores exactly that text.
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
from make_fixture import WEIGHTS, render_prefixes  # noqa: E402

# The default bench model (~89M parameters with the fixture's 1024-token vocab).
DEFAULT_SHAPE = dict(hidden=1024, layers=8, heads=16, kv_heads=4, head_dim=64, ffn=4096,
                     vocab=1024, rotary=0.5)

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


# --------------------------------------------------------------------------- model

def model_dir_for(a):
    shape = dict(hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads,
                 head_dim=a.head_dim, ffn=a.ffn, vocab=a.vocab, rotary=a.rotary)
    if a.model:
        return a.model
    if shape == DEFAULT_SHAPE:
        return os.path.join(OUT, "model-100m")
    return os.path.join(OUT, "model-h{hidden}-l{layers}-a{heads}-kv{kv_heads}-d{head_dim}"
                             "-f{ffn}-v{vocab}-r{rotary}".format(**shape))


def ensure_model(a, mdir):
    if os.path.exists(os.path.join(mdir, "model.safetensors")) and \
            os.path.exists(os.path.join(mdir, "tokenizer.json")):
        if not a.model:  # a model we made: check it has the requested shape
            cfg = json.load(open(os.path.join(mdir, "config.json")))
            want = dict(hidden_size=a.hidden, num_hidden_layers=a.layers,
                        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                        head_dim=a.head_dim, intermediate_size=a.ffn)
            bad = {k: (cfg.get(k), v) for k, v in want.items() if cfg.get(k) != v}
            if bad:
                sys.exit(f"{mdir} exists with another shape {bad}; delete it or pass --model")
        return
    if a.model:
        sys.exit(f"--model {mdir}: no model.safetensors/tokenizer.json there")
    print(f"making bench model in {mdir} ...", flush=True)
    cmd = [sys.executable, os.path.join(REPO, "tests", "fixtures", "make_fixture.py"), mdir,
           "--seed", str(a.seed), "--vocab", str(a.vocab), "--hidden", str(a.hidden),
           "--layers", str(a.layers), "--heads", str(a.heads), "--kv-heads", str(a.kv_heads),
           "--head-dim", str(a.head_dim), "--ffn", str(a.ffn), "--rotary", str(a.rotary)]
    subprocess.run(cmd, check=True)


# --------------------------------------------------------------------------- workloads

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


def single_turn(tok, rng, target):
    """A one-exchange conversation whose scored prefix is `target` tokens (or as close as it gets)."""
    q = question(rng)
    src = filler(rng, 2 * target + 16)
    make = lambda ans: render_prefixes([("User", q), ("Assistant", ans)])[0][1]
    if ntok(tok, make("")) > target:  # question too long for this target: shortest question
        q = "Hi."
    ans = fit_text(tok, make, src, target)
    return [("User", q), ("Assistant", ans)]


def record(conv):
    return {"conversations": [{"from": r, "value": v} for r, v in conv]}


def make_workloads(tok, seed, names):
    """name -> (description, list of records)."""
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
                n = rng.randint(150, 250)
                conv.append(("Assistant", fit_text(tok, lambda s: s, filler(rng, 2 * n + 16), n)))
            convs.append(conv)
        out["c"] = ("8 x 3 rated turns, 150-250 tok/turn", convs)
    return out


def write_jsonl(path, convs):
    with open(path, "w") as f:
        for conv in convs:
            f.write(json.dumps(record(conv), ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- reward-worker

def run_rust_bench(a, mdir, path, dtype):
    cmd = [a.binary, "bench", "--model", mdir, "--input", path, "--dtype", dtype,
           "--threads", str(a.threads), "--warmup", str(a.warmup), "--repeat", str(a.repeat),
           "--device", a.device]
    if a.batch_tokens:
        cmd += ["--batch-tokens", str(a.batch_tokens)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    line = [l for l in p.stdout.splitlines() if l.strip().startswith("{")][-1]
    return json.loads(line), cmd


def run_rust_score(a, mdir, path, dtype):
    cmd = [a.binary, "score", "--model", mdir, "--input", path, "--dtype", dtype,
           "--threads", str(a.threads), "--device", a.device]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return [json.loads(l) for l in p.stdout.splitlines() if l.strip()]


# --------------------------------------------------------------------------- transformers

class HF:
    def __init__(self, mdir, device):
        import torch
        from safetensors.torch import load_file
        from transformers import NemotronModel
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.torch = torch
        self.device = torch.device(device)
        # from_pretrained strips the checkpoint's "model." prefix and ignores score.weight
        base = NemotronModel.from_pretrained(mdir, dtype=torch.float32).eval()
        sd = load_file(os.path.join(mdir, "model.safetensors"))
        mine = base.state_dict()
        worst = max((mine[k[len("model."):]] - v.float()).abs().max().item()
                    for k, v in sd.items() if k.startswith("model."))
        n_model = sum(k.startswith("model.") for k in sd)
        if worst != 0.0 or n_model != len(mine):
            raise RuntimeError(f"from_pretrained weights differ from the checkpoint "
                               f"(max diff {worst}, {n_model} vs {len(mine)} tensors)")
        self.base_f32 = base
        self.head_w = sd["score.weight"].float().to(self.device)
        self.head_b = sd["score.bias"].float().to(self.device) if "score.bias" in sd else None
        self.models = {}

    def model(self, dtype):
        torch = self.torch
        if dtype not in self.models:
            self.models.clear()  # keep one copy in memory
            if dtype == "f32":
                m = self.base_f32.to(self.device)
            else:
                import copy
                m = copy.deepcopy(self.base_f32).to(torch.bfloat16).to(self.device)
            self.models[dtype] = m.eval()
        return self.models[dtype]

    def prepare(self, ids_list, batch_size, pad_id):
        """Right-padded batches in workload order (done before timing, like tokenisation)."""
        torch = self.torch
        batches = []
        for i in range(0, len(ids_list), batch_size):
            chunk = ids_list[i:i + batch_size]
            width = max(len(x) for x in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, x in enumerate(chunk):
                ids[r, :len(x)] = torch.tensor(x)
                mask[r, :len(x)] = 1
            last = torch.tensor([len(x) - 1 for x in chunk])
            batches.append((ids.to(self.device), mask.to(self.device), last.to(self.device)))
        return batches

    def score(self, model, batches):
        torch = self.torch
        outs = []
        with torch.inference_mode():
            for ids, mask, last in batches:
                h = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                hl = h[torch.arange(ids.shape[0], device=ids.device), last].float()
                r = hl @ self.head_w.T
                if self.head_b is not None:
                    r = r + self.head_b
                outs.append(r)
            out = torch.cat(outs)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        return out.cpu()

    def bench(self, dtype, batches, warmup, repeat):
        model = self.model(dtype)
        times = []
        out = None
        for run in range(warmup + max(1, repeat)):
            t = time.perf_counter()
            out = self.score(model, batches)
            dt = time.perf_counter() - t
            if run >= warmup:
                times.append(dt)
        return statistics.median(sorted(times)), times, out


# --------------------------------------------------------------------------- main

def diffs(got, ref):
    """max |raw diff|, max |reward diff| (default weights) and count over the turns in both."""
    raw_diff, rew_diff, n = 0.0, 0.0, 0
    for key, want in ref.items():
        have = got.get(key)
        if have is None:
            continue
        raw_diff = max(raw_diff, max(abs(x - y) for x, y in zip(have, want)))
        rew_diff = max(rew_diff, abs(sum(w * (x - y) for w, x, y in zip(WEIGHTS, have, want))))
        n += 1
    return raw_diff, rew_diff, n


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: f32 only, warmup 1, repeat 1")
    ap.add_argument("--workloads", default="a,b,c", help="comma list of a,b,c")
    ap.add_argument("--dtypes", default=None, help="comma list of f32,bf16 (default both; f32 with --quick)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both (default 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs (default 1)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs, median reported (default 3; 1 with --quick)")
    ap.add_argument("--batch-size", type=int, default=8, help="transformers batch size (default 8)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="reward-worker --batch-tokens (default: its own)")
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "reward-worker"))
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both sides)")
    ap.add_argument("--model", default=None, help="use this model directory instead of making one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-records", type=int, default=2,
                    help="records per workload compared against `reward-worker score` (0: skip)")
    ap.add_argument("--results", default=os.path.join(OUT, "results.json"))
    for k, v in DEFAULT_SHAPE.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v,
                        help=f"bench model shape (default {v})")
    a = ap.parse_args()
    a.warmup = 1 if a.warmup is None else a.warmup
    a.repeat = (1 if a.quick else 3) if a.repeat is None else a.repeat
    dtypes = (a.dtypes or ("f32" if a.quick else "f32,bf16")).split(",")
    names = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for d in dtypes:
        if d not in ("f32", "bf16"):
            sys.exit(f"unknown dtype {d}")
    for n in names:
        if n not in ("a", "b", "c"):
            sys.exit(f"unknown workload {n}")
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"no reward-worker binary at {a.binary} (build it or pass --binary)")
    os.makedirs(OUT, exist_ok=True)

    mdir = model_dir_for(a)
    ensure_model(a, mdir)

    import torch
    from tokenizers import Tokenizer
    torch.set_num_threads(a.threads)
    tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    pad_id = tok.token_to_id("</s>")
    if pad_id is None:
        pad_id = 0

    workloads = make_workloads(tok, a.seed, names)
    hf = HF(mdir, a.device)
    n_params = sum(p.numel() for p in hf.base_f32.parameters()) + hf.head_w.numel()
    print(f"model {mdir}: {n_params / 1e6:.1f}M params; threads {a.threads}; device {a.device}; "
          f"warmup {a.warmup} repeat {a.repeat}; torch {torch.__version__}; "
          f"load avg {loadavg()}", flush=True)

    prepared = {}
    for name, (desc, convs) in workloads.items():
        path = os.path.join(OUT, f"workload-{name}.jsonl")
        write_jsonl(path, convs)
        prefixes = [(r, t, tok.encode(text, add_special_tokens=False).ids)
                    for r, conv in enumerate(convs) for t, text in render_prefixes(conv)]
        ids_list = [p[2] for p in prefixes]
        lens = [len(x) for x in ids_list]
        batches = hf.prepare(ids_list, a.batch_size, pad_id)
        padded = sum(b[0].numel() for b in batches)
        prepared[name] = dict(desc=desc, path=path, prefixes=prefixes, batches=batches,
                              useful=sum(lens), padded=padded, n_records=len(convs))
        print(f"workload {name}: {desc}: {len(convs)} records, {len(prefixes)} scored turns, "
              f"prefix tokens min/mean/max {min(lens)}/{sum(lens) / len(lens):.0f}/{max(lens)}, "
              f"useful {sum(lens)}, transformers padded {padded} -> {path}", flush=True)

    rows = []
    checks = []
    kept = {}  # (workload, dtype) -> (transformers raw, reward-worker raw) of the check records
    for dtype in dtypes:
        for name in names:
            p = prepared[name]
            la = loadavg()
            rj, cmd = run_rust_bench(a, mdir, p["path"], dtype)
            hf_s, hf_times, hf_out = hf.bench(dtype, p["batches"], a.warmup, a.repeat)
            row = dict(workload=name, desc=p["desc"], dtype=dtype, threads=a.threads,
                       useful_tokens=p["useful"], rust_useful_tokens=rj.get("useful_tokens"),
                       rust_tokens_processed=rj.get("tokens_processed"),
                       hf_tokens_processed=p["padded"],
                       rust_seconds=rj["seconds"], hf_seconds=hf_s, hf_times=hf_times,
                       rust_tok_s=p["useful"] / rj["seconds"], hf_tok_s=p["useful"] / hf_s,
                       rust_json=rj, rust_cmd=cmd, loadavg_before=la, loadavg_after=loadavg())
            row["ratio"] = row["rust_tok_s"] / row["hf_tok_s"]
            if rj.get("useful_tokens") != p["useful"]:
                print(f"WARNING: workload {name} {dtype}: useful tokens differ: reward-worker "
                      f"{rj.get('useful_tokens')} vs python {p['useful']}", flush=True)
            if rj.get("threads") != a.threads:
                print(f"WARNING: reward-worker reports threads={rj.get('threads')}", flush=True)
            rows.append(row)
            print(f"  {name} {dtype}: reward-worker {row['rust_tok_s']:.0f} tok/s "
                  f"({rj['seconds']:.3f}s), transformers {row['hf_tok_s']:.0f} tok/s "
                  f"({hf_s:.3f}s), ratio {row['ratio']:.2f}  [load {la}]", flush=True)

            # correctness: transformers outputs of the timed run vs `reward-worker score`
            if a.check_records > 0:
                k = min(a.check_records, p["n_records"])
                sub = os.path.join(OUT, f"check-{name}.jsonl")
                with open(p["path"]) as src, open(sub, "w") as dst:
                    for i, line in enumerate(src):
                        if i < k:
                            dst.write(line)
                got = run_rust_score(a, mdir, sub, dtype)
                hf_ref = {(r, t): hf_out[j].tolist()
                          for j, (r, t, _) in enumerate(p["prefixes"]) if r < k}
                rw_got, errors = {}, []
                for rec in got:
                    if "error" in rec:
                        errors.append(rec)
                        continue
                    for tr in rec["turns"]:
                        rw_got[(rec["index"], tr["turn"])] = tr["raw"]
                kept[(name, dtype)] = (hf_ref, rw_got)
                raw_diff, rew_diff, n = diffs(rw_got, hf_ref)
                scale = max(abs(x) for v in hf_ref.values() for x in v)
                unmatched = [str(e) for e in errors] + [str(x) for x in set(hf_ref) ^ set(rw_got)]
                c = dict(workload=name, dtype=dtype, records=k, turns=n, max_abs_raw_diff=raw_diff,
                         max_abs_reward_diff=rew_diff, max_abs_raw=scale, unmatched=unmatched)
                # bf16 context: how far each engine's bf16 is from transformers f32
                if dtype == "bf16" and (name, "f32") in kept:
                    f32_ref = kept[(name, "f32")][0]
                    c["rw_bf16_vs_hf_f32"] = diffs(rw_got, f32_ref)[0]
                    c["hf_bf16_vs_hf_f32"] = diffs(hf_ref, f32_ref)[0]
                checks.append(c)
                flag = "" if not unmatched else f"  UNMATCHED {unmatched}"
                extra = ""
                if "rw_bf16_vs_hf_f32" in c:
                    extra = (f"; vs transformers f32: reward-worker bf16 {c['rw_bf16_vs_hf_f32']:.2e}, "
                             f"transformers bf16 {c['hf_bf16_vs_hf_f32']:.2e}")
                print(f"  check {name} {dtype}: {n} turns of {k} records: max |raw diff| "
                      f"{raw_diff:.2e}, max |reward diff| {rew_diff:.2e} (max |raw| {scale:.2f}){extra}{flag}",
                      flush=True)

    # table
    print()
    hdr = (f"{'workload':<44} {'dtype':<5} {'useful tok':>10} {'rw tok/s':>10} {'hf tok/s':>10} "
           f"{'rw/hf':>6} {'rw s':>8} {'hf s':>8} {'rw proc':>8} {'hf proc':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['workload'] + ': ' + r['desc']:<44} {r['dtype']:<5} {r['useful_tokens']:>10} "
              f"{r['rust_tok_s']:>10.0f} {r['hf_tok_s']:>10.0f} {r['ratio']:>6.2f} "
              f"{r['rust_seconds']:>8.3f} {r['hf_seconds']:>8.3f} "
              f"{r['rust_tokens_processed']:>8} {r['hf_tokens_processed']:>8}")
    print("(rw proc / hf proc: tokens the forward passes actually process; hf includes padding)")
    if checks:
        print()
        print(f"{'check':<10} {'dtype':<5} {'turns':>5} {'max|raw diff|':>14} {'max|reward diff|':>17} "
              f"{'rw bf16 vs hf f32':>18} {'hf bf16 vs hf f32':>18}")
        for c in checks:
            ctx = ""
            if "rw_bf16_vs_hf_f32" in c:
                ctx = f" {c['rw_bf16_vs_hf_f32']:>18.3e} {c['hf_bf16_vs_hf_f32']:>18.3e}"
            print(f"{c['workload']:<10} {c['dtype']:<5} {c['turns']:>5} {c['max_abs_raw_diff']:>14.3e} "
                  f"{c['max_abs_reward_diff']:>17.3e}{ctx}")
        print("(max |raw diff|: reward-worker `score` vs transformers, the nine raw outputs; reward: default weights)")

    res = dict(
        when=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        host=dict(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version(),
                  torch=torch.__version__, transformers=__import__("transformers").__version__),
        model=dict(dir=mdir, params=n_params, config=json.load(open(os.path.join(mdir, "config.json")))),
        settings=dict(threads=a.threads, warmup=a.warmup, repeat=a.repeat, batch_size=a.batch_size,
                      batch_tokens=a.batch_tokens, device=a.device, binary=a.binary, seed=a.seed,
                      dtypes=dtypes, workloads=names, quick=a.quick),
        rows=rows, checks=checks)
    with open(a.results, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nwrote {a.results}")


if __name__ == "__main__":
    main()
