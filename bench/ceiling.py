#!/usr/bin/env python3
"""What bounds reward-worker's speed on this machine, from the last `make bench`.

Reads bench/out/results.json (written by bench/compare.py) and, in this process,
times libtorch's CPU attention kernel (`_scaled_dot_product_flash_attention_for_cpu`,
what reward-worker calls in f32, on CPUs without AVX512-BF16, and with
RW_CPU_ATTENTION=torch) at the bench model's head shapes, fp32 and bf16, causal
(a segment's own rows) and not (rows below a shared prefix against its keys), next
to torch.mm at the model's linear shapes. Then, per workload row of results.json:

  - the forward's FLOPs split into the linear layers and attention,
  - the time the linear layers take at the torch.mm rate (a lower bound), and
    what is left of the measured forward for attention and everything else,
  - the ceiling: the forward with every FLOP at the torch.mm rate, plus the
    measured start-up of `score`, against the peers' measured times; and the
    compute efficiency each ratio target needs;
  - the exact ceiling: the same, but with attention's p.v (half its FLOPs) at
    half the bf16 mm rate, as the parity bound makes cpu_flash compute it: fp32
    probabilities times fp32 values (vfmadd231ps does 16 multiply-adds per
    instruction where the bf16 GEMMs' vdpbf16ps does 32). The efficiency at that
    ceiling is the most any exact bf16 forward reaches on a CPU without AMX, with
    softmax, norms, rotary, casts and thread waits all taking no time.

Run:  .venv/bin/python bench/ceiling.py [--results bench/out/results.json]
Numbers, not a test. Same threads as the bench (2 by default).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402


def attention_rate(torch, heads, kv_heads, d, n_q, n_k, causal, kind, repeat=5):
    """GFLOP/s of one flash call on [1, heads, n_q, d] x [1, kv_heads, n_k, d], counting
    only the (query, key) pairs that attend (4 * d FLOPs per pair per head)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, n_q, d, generator=g).to(kind)
    k = torch.randn(1, kv_heads, n_k, d, generator=g).to(kind)
    v = torch.randn(1, kv_heads, n_k, d, generator=g).to(kind)
    call = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    call(q, k, v, 0.0, causal)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call(q, k, v, 0.0, causal)
        times.append(time.perf_counter() - t)
    pairs = n_q * (n_q + 1) / 2 if causal else n_q * n_k
    return 4.0 * d * heads * pairs / statistics.median(times) / 1e9


def linear_gflop(cfg, rows, probes):
    """The forward's matmul FLOPs outside attention, as src/model/flops.rs counts them."""
    h, f, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q_w, kv_w = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    kv = 2 * h * 2 * kv_w
    per_query_row = 2 * h * q_w + 2 * q_w * h + 4 * h * f
    return ((layers - 1) * rows * (kv + per_query_row) + rows * kv + probes * per_query_row) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(HERE, "out", "results.json"))
    ap.add_argument("--threads", type=int, default=None, help="default: the results' thread count")
    a = ap.parse_args()
    with open(a.results) as f:
        res = json.load(f)
    cfg = res["model"]["config"]
    import torch
    threads = a.threads or res["rows"][0]["threads"]
    torch.set_num_threads(threads)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // heads
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    print(f"CPU {cpu} ({platform.machine()}), flags {' '.join(wanted)}, torch {torch.__version__}, "
          f"threads {threads}; results of {res.get('when', '?')}")

    print(f"\nlibtorch CPU flash attention, {heads} heads / {kv_heads} kv heads / head dim {d}, "
          f"GFLOP/s on the pairs that attend")
    shapes = [(n, n, True) for n in (64, 128, 256, 512, 1024)] + \
             [(128, 512, False), (512, 512, False), (1024, 1024, False), (2048, 1024, False)]
    print(f"{'queries':>8} {'keys':>6} {'causal':>7} {'f32':>7} {'bf16':>7}")
    best = 0.0
    for n_q, n_k, causal in shapes:
        r = [attention_rate(torch, heads, kv_heads, d, n_q, n_k, causal, kind)
             for kind in (torch.float32, torch.bfloat16)]
        best = max(best, *r)
        print(f"{n_q:>8} {n_k:>6} {str(causal):>7} {r[0]:>7.0f} {r[1]:>7.0f}")
    mm = {dt: peers.matmul_rate(torch, cfg, 8192, dt, torch.device("cpu"))["gflop_per_s"] for dt in ("f32", "bf16")}
    print(f"torch.mm at the linear shapes (8192 rows): f32 {mm['f32']:.0f}, bf16 {mm['bf16']:.0f} GFLOP/s; "
          f"best attention call above: {best:.0f}")

    # The exact ceiling's premise, on the machine that made results.json.
    host_flags = res.get("host", {}).get("cpu", {}).get("flags", {})
    cpu_flash_host = host_flags.get("avx512_bf16", False) and not host_flags.get("amx_bf16", False)
    print("\nPer workload (results.json; mm = that run's torch.mm rate):")
    head = (f"{'wl':<3} {'dtype':<5} {'GFLOP':>7} {'attn %':>6} {'fwd s':>6} {'lin s@mm':>8} {'rest s':>6} "
            f"{'attn/rest':>9} {'eff':>5} {'start s':>7} {'max /static':>11} {'max /sorted':>11} "
            f"{'eff for 6x':>10} {'eff for 3x':>10} {'attn GF/s for 70%':>17} {'exact eff':>9} "
            f"{'exact /static':>13} {'exact /sorted':>13}")
    print(head + "\n" + "-" * len(head))
    for r in res["rows"]:
        if "rw_forward_gflop" not in r or "static_seconds" not in r:
            continue
        gflop, rate, fwd = r["rw_forward_gflop"], r["mm_gflop_per_s"], r["rw_bench_seconds"]
        lin = linear_gflop(cfg, r["rw_tokens_computed"], r["scored_turns"])
        attn = gflop - lin
        lin_s = lin / rate
        rest_s = fwd - lin_s
        start = max(0.0, r["rw_score_seconds"] - fwd)
        floor = gflop / rate
        # Efficiency e gives forward time gflop / (e * rate); a target ratio R against a
        # peer of T seconds needs start + gflop / (e * rate) <= T / R.
        def need(peer_s, ratio):
            room = peer_s / ratio - start
            return f"{gflop / rate / room:.0%}" if room > 0 else "never"
        # 70%: the forward in gflop / (0.7 rate) seconds; with the linear layers at the mm
        # rate and nothing else taking time, this much is left for attention.
        attn_room = gflop / (0.7 * rate) - lin_s
        need_attn = attn / attn_room if attn_room > 0 else float("inf")
        # Exact bf16 through cpu_flash (AVX512-BF16, no AMX): p.v (half of attention's
        # FLOPs) at half the rate. Elsewhere bf16 attention is not cpu_flash, and with
        # AMX the GEMMs are not vdpbf16ps: no figure rather than a wrong one.
        exact = floor
        if r["dtype"] == "bf16":
            exact = (lin + 1.5 * attn) / rate if cpu_flash_host else None
        exact_cols = (f"{floor / exact:>9.0%} {r['static_seconds'] / (start + exact):>13.2f} "
                      f"{r['best_seconds'] / (start + exact):>13.2f}") if exact else f"{'-':>9} {'-':>13} {'-':>13}"
        print(f"{r['workload']:<3} {r['dtype']:<5} {gflop:>7.0f} {100 * attn / gflop:>5.1f}% {fwd:>6.1f} "
              f"{lin_s:>8.1f} {rest_s:>6.1f} {attn / rest_s:>9.0f} {r['rw_forward_gflop_per_s'] / rate:>5.0%} "
              f"{start:>7.1f} {r['static_seconds'] / (start + floor):>11.2f} "
              f"{r['best_seconds'] / (start + floor):>11.2f} {need(r['static_seconds'], 6):>10} "
              f"{need(r['best_seconds'], 3):>10} {need_attn:>17.0f} {exact_cols}")
    print("lin s@mm: the linear layers' FLOPs at the torch.mm rate (a lower bound on their time); rest: the"
          " forward\nminus that (attention, norms, rotary, casts, merges, threads' waits); attn/rest: attention"
          " GFLOP over the\nrest, a lower bound on attention's own rate; max /static, /sorted: the ratios"
          " with every FLOP at the\nmm rate plus the measured start-up of `score`; eff for 6x / 3x: the"
          " compute efficiency those (e)\ntargets need, start-up included (\"never\": start-up alone is too"
          " long); attn GF/s for 70%: the\nattention rate 70% efficiency needs if the linear layers ran at"
          " the mm rate and nothing else took time;\nexact eff, /static, /sorted: the same ceiling with"
          " attention's p.v in fp32 at half the bf16 mm rate (bf16\nrows on AVX512-BF16 without AMX,"
          " else -; the parity bound keeps the probabilities fp32): the efficiency and ratios an exact\nforward reaches with"
          " softmax, norms, rotary and casts taking no time")


if __name__ == "__main__":
    main()
