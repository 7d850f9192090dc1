#!/usr/bin/env python3
"""Benchmark reward-worker against Hugging Face transformers on the same weights.

One run:
  1. makes the bench model if it is missing (tests/fixtures/make_fixture.py,
     Nemotron-shaped, ~89M parameters by default, random weights),
  2. writes the seeded workloads (bench/workloads.py) into bench/out/ and prints
     their sizes (records, scored turns, useful and unique tokens),
  3. for every workload x dtype, in one process and at one thread count:
     - torch.mm at the model's linear shapes (the machine's matmul rate),
     - `reward-worker bench` (the forward alone: tokens computed, GFLOP/s),
     - the whole `reward-worker score` process, wall time (start-up, model load,
       tokenisation and output included),
     - transformers with static micro-batches of 8 in workload order (bench/peers.py),
     - transformers with length-sorted batches under a token budget, over a small
       budget sweep; the best budget is reported,
  4. checks that reward-worker's `score` output equals transformers' on every
     scored turn (and, for bf16, how far each is from transformers f32),
  5. prints the tables and writes bench/out/results.json.

Run from anywhere:  .venv/bin/python bench/compare.py [--quick] [--workloads d,e] ...
See bench/README.md.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
from make_fixture import WEIGHTS  # noqa: E402
import peers  # noqa: E402
import workloads  # noqa: E402
from report import print_tables, print_targets  # noqa: E402

# The default bench model (~89M parameters with the fixture's 1024-token vocab).
DEFAULT_SHAPE = dict(hidden=1024, layers=8, heads=16, kv_heads=4, head_dim=64, ffn=4096,
                     vocab=1024, rotary=0.5)
LARGE = ("d", "e")  # workloads whose peers run one timed pass by default
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


# --------------------------------------------------------------------------- machine and model

def cpu_info():
    """CPU model and the flags that decide the bf16 picture (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return dict(model=model, cores=os.cpu_count(), flags={f: f in flags for f in CPU_FLAGS})


def native_dtype(device, cpu):
    """bf16 on CUDA and on CPUs that compute bf16 natively (AVX512-BF16 or AMX), else f32."""
    if device.startswith("cuda"):
        return "bf16"
    return "bf16" if cpu["flags"]["avx512_bf16"] or cpu["flags"]["amx_bf16"] else "f32"


def model_dir_for(a):
    shape = {k: getattr(a, k) for k in DEFAULT_SHAPE}
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


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --------------------------------------------------------------------------- reward-worker

def model_flags(a, mdir, dtype):
    """Flags of every reward-worker run; dtype None leaves --dtype to the binary's default."""
    flags = ["--model", mdir, "--threads", str(a.threads), "--device", a.device]
    if dtype:
        flags += ["--dtype", dtype]
    if a.batch_tokens:
        flags += ["--batch-tokens", str(a.batch_tokens)]
    return flags


def run_rust_bench(a, mdir, path, dtype, env=None):
    cmd = [a.binary, "bench", "--input", path, "--warmup", str(a.warmup), "--repeat", str(a.repeat)]
    cmd += model_flags(a, mdir, dtype)
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    line = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")][-1]
    return json.loads(line), cmd


def run_rust_score(a, mdir, path, dtype, out_path, repeat):
    """Wall time of the whole `reward-worker score` process, `repeat` times: the median,
    every time, the raw outputs of the last run keyed by (record, turn), its failed
    records, and its log lines that mention the dtype."""
    cmd = [a.binary, "score", "--input", path, "--output", out_path] + model_flags(a, mdir, dtype)
    times = []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    got, errors = {}, []
    with open(out_path) as f:
        for line in f:
            rec = json.loads(line)
            if "error" in rec:
                errors.append(rec)
                continue
            for tr in rec["turns"]:
                got[(rec["index"], tr["turn"])] = tr["raw"]
    log = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip()[:200] for ln in p.stderr.splitlines() if "dtype" in ln]
    return dict(seconds=statistics.median(times), times=times, got=got, errors=errors, cmd=cmd, log=log)


# --------------------------------------------------------------------------- checks

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


def check(name, dtype, rw, static, best, f32_ref):
    """reward-worker `score` vs transformers static on every turn; sorted vs static as a
    check of the peer itself; for bf16, each engine's distance from transformers f32."""
    raw, rew, n = diffs(rw, static)
    c = dict(workload=name, dtype=dtype, turns=n, max_abs_raw_diff=raw, max_abs_reward_diff=rew,
             max_abs_raw=max(abs(x) for v in static.values() for x in v),
             sorted_vs_static=diffs(best, static)[0],
             unmatched=[str(k) for k in set(rw) ^ set(static)])
    if dtype == "f32":
        c["ok"] = raw <= 1e-3 and c["sorted_vs_static"] <= 1e-3 and not c["unmatched"]
    else:
        c["ref_turns"] = len(f32_ref)
        c["rw_vs_hf_f32"] = diffs(rw, f32_ref)[0]
        c["hf_vs_hf_f32"] = diffs(static, f32_ref)[0]
        # bf16: reward-worker may not be much further from f32 than transformers' own bf16
        c["ok"] = c["rw_vs_hf_f32"] <= 2 * c["hf_vs_hf_f32"] + 0.05 and not c["unmatched"]
    return c


def measure(a, mdir, cfg, hf, pad_id, name, p, dtype, native):
    """One table row: matmul rate, reward-worker bench and score, both peers, the check."""
    import torch
    useful = p["stats"]["useful_tokens"]
    la = loadavg()
    rate = peers.matmul_rate(torch, cfg, a.mm_rows, dtype, torch.device(a.device), warmup=1, repeat=a.repeat)
    rj, bench_cmd = run_rust_bench(a, mdir, p["path"], dtype)
    # bf16 on the CPU: the same forward with libtorch's attention instead of
    # src/model/cpu_flash.rs (the variable is ignored where that kernel does not run).
    torch_attention = None
    if dtype == "bf16" and a.device == "cpu":
        tj, _ = run_rust_bench(a, mdir, p["path"], dtype, env={"RW_CPU_ATTENTION": "torch"})
        torch_attention = dict(seconds=tj["seconds"], gflop_per_s=tj.get("forward_gflop_per_s"))
    sc = run_rust_score(a, mdir, p["path"], dtype, os.path.join(OUT, f"scores-{name}-{dtype}.jsonl"), a.repeat)
    default = None
    if dtype == native and not a.no_default_dtype:  # what a user gets without --dtype
        d = run_rust_score(a, mdir, p["path"], None, os.path.join(OUT, f"scores-{name}-default.jsonl"), a.repeat)
        default = dict(seconds=d["seconds"], times=d["times"], tok_s=useful / d["seconds"],
                       vs_explicit=sc["seconds"] / d["seconds"], same_outputs_max_diff=diffs(d["got"], sc["got"])[0],
                       log=d["log"][:3], cmd=d["cmd"])
    warm, rep = (0, a.large_repeat) if name in LARGE else (a.warmup, a.repeat)
    st_s, st_times, st_out = hf.run(dtype, p["ids"], p["static"], pad_id, warm, rep)
    # the sorted peer: one pass per budget picks the budget, which is then timed like the static peer
    sweep = []
    for budget in a.budgets:
        plan = peers.sorted_plan(p["lens"], budget)
        s, times, out = hf.run(dtype, p["ids"], plan, pad_id, 0, 1)
        sweep.append(dict(budget=budget, seconds=s, times=times, batches=len(plan), out=out, plan=plan,
                          padded=peers.padded_tokens(plan, p["lens"]),
                          gflop=peers.padded_flops(cfg, plan, p["lens"]) / 1e9))
        print(f"  {name} {dtype}: transformers sorted, budget {budget}: {useful / s:.0f} tok/s "
              f"({s:.2f}s, {len(plan)} batches, {sweep[-1]['padded']} padded tokens)", flush=True)
    best = dict(min(sweep, key=lambda x: x["seconds"]))
    if (warm, rep) != (0, 1):
        best["seconds"], best["times"], best["out"] = hf.run(dtype, p["ids"], best["plan"], pad_id, warm, rep)
    keys = [(r, t) for r, t, _ in p["prefixes"]]
    c = check(name, dtype, sc["got"], dict(zip(keys, st_out)), dict(zip(keys, best["out"])), p.get("f32_ref", {}))
    if sc["errors"]:
        c["ok"] = False
        c["unmatched"] += [str(e) for e in sc["errors"]]
    st_gflop = peers.padded_flops(cfg, p["static"], p["lens"]) / 1e9
    row = dict(
        workload=name, desc=p["desc"], dtype=dtype, threads=a.threads, **p["stats"],
        rw_tokens_computed=rj.get("tokens_computed"), rw_tokens_processed=rj.get("tokens_processed"),
        rw_batches=rj.get("batches"),
        rw_bench_seconds=rj["seconds"], rw_bench_tok_s=useful / rj["seconds"],
        rw_forward_gflop=rj.get("forward_gflop"), rw_forward_gflop_per_s=rj.get("forward_gflop_per_s"),
        rw_bench_torch_attention=torch_attention,
        rw_score_seconds=sc["seconds"], rw_score_times=sc["times"], rw_score_tok_s=useful / sc["seconds"],
        rw_default_dtype=default,
        mm_gflop_per_s=rate["gflop_per_s"], matmul=rate,
        static_seconds=st_s, static_times=st_times, static_tok_s=useful / st_s,
        static_tokens_computed=p["static_padded"], static_gflop_per_s=st_gflop / st_s,
        best_budget=best["budget"], best_seconds=best["seconds"], best_tok_s=useful / best["seconds"],
        best_tokens_computed=best["padded"], best_gflop_per_s=best["gflop"] / best["seconds"],
        best_times=best["times"],
        sweep=[{k: v for k, v in s.items() if k not in ("out", "plan")} for s in sweep],
        peer_warmup=warm, peer_repeat=rep,
        rust_json=rj, bench_cmd=bench_cmd, score_cmd=sc["cmd"], score_log=sc["log"][:3],
        loadavg_before=la, loadavg_after=loadavg())
    row["efficiency"] = (row["rw_forward_gflop_per_s"] or 0) / row["mm_gflop_per_s"]
    for peer in ("static", "best"):
        row[f"score_vs_{peer}"] = row["rw_score_tok_s"] / row[f"{peer}_tok_s"]
        row[f"bench_vs_{peer}"] = row["rw_bench_tok_s"] / row[f"{peer}_tok_s"]
    if rj.get("useful_tokens") != useful:
        print(f"WARNING: workload {name} {dtype}: useful tokens differ: reward-worker "
              f"{rj.get('useful_tokens')} vs python {useful}", flush=True)
    if rj.get("threads") != a.threads:
        print(f"WARNING: reward-worker reports threads={rj.get('threads')}", flush=True)
    print(f"  {name} {dtype}: reward-worker score {row['rw_score_tok_s']:.0f} tok/s ({sc['seconds']:.2f}s), "
          f"bench {row['rw_bench_tok_s']:.0f} tok/s ({rj['seconds']:.2f}s, "
          f"{row['rw_forward_gflop_per_s'] or 0:.1f} GFLOP/s vs mm {rate['gflop_per_s']:.1f}); "
          f"transformers static {row['static_tok_s']:.0f} tok/s ({st_s:.2f}s), "
          f"sorted {row['best_tok_s']:.0f} tok/s (budget {best['budget']}); "
          f"score/static {row['score_vs_static']:.2f} score/sorted {row['score_vs_best']:.2f}  "
          f"[load {la} -> {row['loadavg_after']}]", flush=True)
    if default:
        print(f"  {name} without --dtype: {default['tok_s']:.0f} tok/s ({default['vs_explicit']:.2f} x --dtype "
              f"{dtype}), outputs differ from --dtype {dtype} by {default['same_outputs_max_diff']:.2e}; "
              f"log: {' | '.join(default['log']) or '(no line mentions the dtype)'}", flush=True)
    print(f"  check {name} {dtype}: {c['turns']} turns, max |raw diff| {c['max_abs_raw_diff']:.2e}, "
          f"max |reward diff| {c['max_abs_reward_diff']:.2e} (max |raw| {c['max_abs_raw']:.1f}), "
          f"sorted vs static {c['sorted_vs_static']:.2e}"
          + (f"; vs transformers f32 ({c['ref_turns']} turns): reward-worker {c['rw_vs_hf_f32']:.2e}, "
             f"transformers {c['hf_vs_hf_f32']:.2e}" if "rw_vs_hf_f32" in c else "")
          + ("" if c["ok"] else f"  CHECK FAILED {c['unmatched'][:5]}"), flush=True)
    return row, c


# --------------------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: native dtype only, warmup 0, repeat 1, --groups 2, budgets 4096,16384")
    ap.add_argument("--workloads", default=",".join(workloads.NAMES), help="comma list of a,b,c,d,e")
    ap.add_argument("--dtypes", default=None,
                    help="comma list of f32,bf16 for every workload (default: a,b,c in f32 and the native "
                         "dtype, d,e in the native dtype; --quick: the native dtype)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every engine (default 2)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed passes before timing: reward-worker bench, and the peers on a,b,c "
                         "(default 1; 0 with --quick)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs, median reported: reward-worker bench and score, the peers on a,b,c "
                         "(default 3; 1 with --quick)")
    ap.add_argument("--large-repeat", type=int, default=1,
                    help="timed passes of each peer on d and e, after one untimed batch (default 1)")
    ap.add_argument("--groups", type=int, default=None,
                    help="prompts in (d) and conversations added in (e) (default 16; 2 with --quick)")
    ap.add_argument("--batch-size", type=int, default=8, help="static peer's micro-batch (default 8)")
    ap.add_argument("--budgets", default=None,
                    help="token budgets swept by the sorted peer (default 2048,4096,8192,16384; "
                         "4096,16384 with --quick)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="reward-worker --batch-tokens (default: its own)")
    ap.add_argument("--mm-rows", type=int, default=None,
                    help="rows of the torch.mm rate (default: --batch-tokens, or 8192 = reward-worker's default)")
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "reward-worker"))
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (every engine)")
    ap.add_argument("--model", default=None, help="use this model directory instead of making one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-default-dtype", action="store_true",
                    help="skip timing `reward-worker score` without --dtype in the native dtype's rows")
    ap.add_argument("--check-records", type=int, default=2,
                    help="records per workload scored by transformers f32 as the bf16 rows' reference (default 2)")
    ap.add_argument("--results", default=os.path.join(OUT, "results.json"))
    for k, v in DEFAULT_SHAPE.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v, help=f"bench model shape (default {v})")
    a = ap.parse_args()
    a.warmup = (0 if a.quick else 1) if a.warmup is None else a.warmup
    a.repeat = (1 if a.quick else 3) if a.repeat is None else a.repeat
    a.groups = (2 if a.quick else 16) if a.groups is None else a.groups
    a.budgets = [int(b) for b in (a.budgets or ("4096,16384" if a.quick else "2048,4096,8192,16384")).split(",")]
    a.mm_rows = a.mm_rows or a.batch_tokens or 8192
    a.names = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for n in a.names:
        if n not in workloads.NAMES:
            sys.exit(f"unknown workload {n}; known: {','.join(workloads.NAMES)}")
    if a.dtypes:
        for d in a.dtypes.split(","):
            if d not in ("f32", "bf16"):
                sys.exit(f"unknown dtype {d}")
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"no reward-worker binary at {a.binary} (build it or pass --binary)")
    return a


def plan_dtypes(a, native):
    """workload -> dtypes it runs in."""
    if a.dtypes:
        chosen = a.dtypes.split(",")
        return {n: chosen for n in a.names}
    small = [native] if a.quick else sorted({"f32", native}, key=["f32", "bf16"].index)
    return {n: ([native] if n in LARGE else small) for n in a.names}


def main():
    a = parse_args()
    os.makedirs(OUT, exist_ok=True)
    mdir = model_dir_for(a)
    ensure_model(a, mdir)
    cpu = cpu_info()
    native = native_dtype(a.device, cpu)
    dtypes_of = plan_dtypes(a, native)

    import torch
    from tokenizers import Tokenizer
    torch.set_num_threads(a.threads)
    tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    pad_id = tok.token_to_id("</s>")
    pad_id = 0 if pad_id is None else pad_id
    cfg = json.load(open(os.path.join(mdir, "config.json")))
    hf = peers.HF(mdir, a.device)
    flags = " ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    print(f"CPU {cpu['model']} ({cpu['cores']} cores): {flags}; native dtype {native}", flush=True)
    print(f"model {mdir}: {hf.n_params / 1e6:.1f}M params; threads {a.threads}; device {a.device}; "
          f"warmup {a.warmup} repeat {a.repeat} (peers on d,e: {a.large_repeat} pass); "
          f"torch {torch.__version__}; load avg {loadavg()}", flush=True)

    prepared = {}
    for name, (desc, convs) in workloads.make_workloads(tok, a.seed, a.names, a.groups).items():
        path = os.path.join(OUT, f"workload-{name}.jsonl")
        workloads.write_jsonl(path, convs)
        prefixes = workloads.scored_prefixes(tok, convs)
        st = workloads.stats(prefixes, len(convs))
        ids_list = [p[2] for p in prefixes]
        lens = [len(x) for x in ids_list]
        static = peers.static_plan(lens, a.batch_size)
        prepared[name] = dict(desc=desc, path=path, prefixes=prefixes, ids=ids_list, lens=lens, stats=st,
                              static=static, static_padded=peers.padded_tokens(static, lens))
        print(workloads.describe(name, desc, st) + f", static padded {prepared[name]['static_padded']}"
              f" -> {path}", flush=True)
        if "bf16" in dtypes_of[name] and a.check_records > 0:  # transformers f32 reference, first records
            keys = [(r, t) for r, t, _ in prefixes if r < a.check_records]
            ref = hf.reference([ids for r, _, ids in prefixes if r < a.check_records], pad_id)
            prepared[name]["f32_ref"] = dict(zip(keys, ref))

    rows, checks = [], []
    for dtype in ("f32", "bf16"):
        for name in a.names:
            if dtype in dtypes_of[name]:
                row, c = measure(a, mdir, cfg, hf, pad_id, name, prepared[name], dtype, native)
                rows.append(row)
                checks.append(c)

    print_tables(rows, checks)
    print_targets(rows, native, mdir == os.path.join(OUT, "model-100m"))
    import transformers
    res = dict(
        when=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        host=dict(cpu=cpu, native_dtype=native, machine=platform.machine(), python=platform.python_version(),
                  torch=torch.__version__, transformers=transformers.__version__),
        model=dict(dir=mdir, params=hf.n_params, config=cfg),
        settings=dict(threads=a.threads, warmup=a.warmup, repeat=a.repeat, large_repeat=a.large_repeat,
                      groups=a.groups, batch_size=a.batch_size, budgets=a.budgets, batch_tokens=a.batch_tokens,
                      mm_rows=a.mm_rows, device=a.device, binary=a.binary, seed=a.seed,
                      dtypes={n: d for n, d in dtypes_of.items()}, workloads=a.names, quick=a.quick),
        workloads={n: dict(desc=p["desc"], **p["stats"], static_padded=p["static_padded"])
                   for n, p in prepared.items()},
        rows=rows, checks=checks)
    with open(a.results, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nwrote {a.results}")
    if not all(c["ok"] for c in checks):
        print("some correctness checks failed (see above)")
        sys.exit(1)


if __name__ == "__main__":
    main()
