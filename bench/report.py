"""The tables bench/compare.py prints (the same numbers are in results.json)."""

# bench/compare.py before prefix sharing (README "Measured", 2026-11-30, 2 cores):
# `reward-worker bench` tokens/s over transformers static batches of 8.
README_BENCH_VS_STATIC = {("a", "f32"): 1.22, ("b", "f32"): 2.08, ("c", "f32"): 4.07,
                          ("a", "bf16"): 1.07, ("b", "bf16"): 2.56, ("c", "bf16"): 4.12}


def _table(title, header, lines, note):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    print(f"\n{title}")
    print(fmt(header))
    print("-" * len(fmt(header)))
    for line in lines:
        print(fmt(line))
    print(note)


def _torch_attention(r):
    t = r.get("rw_bench_torch_attention")
    if not t or not t.get("gflop_per_s"):
        return ""
    return f"{t['gflop_per_s']:.1f} ({100 * t['gflop_per_s'] / r['mm_gflop_per_s']:.0f}%)"


def print_tables(rows, checks):
    _table(
        "Useful tokens/s (every scored prefix counted as if scored alone; higher is better)",
        ["wl", "dtype", "useful", "rw score", "rw bench", "static", "sorted", "budget",
         "score/static", "score/sorted", "bench/static", "bench/sorted"],
        [[r["workload"], r["dtype"], r["useful_tokens"], f"{r['rw_score_tok_s']:.0f}", f"{r['rw_bench_tok_s']:.0f}",
          f"{r['static_tok_s']:.0f}", f"{r['best_tok_s']:.0f}", r["best_budget"],
          f"{r['score_vs_static']:.2f}", f"{r['score_vs_best']:.2f}",
          f"{r['bench_vs_static']:.2f}", f"{r['bench_vs_best']:.2f}"] for r in rows],
        "rw score: whole `reward-worker score` process (start-up, load, tokenise, write); rw bench: its forward "
        "alone;\nstatic: transformers, batches of 8 in workload order; sorted: transformers, length-sorted, "
        "best token budget of the sweep")
    _table(
        "Work and compute (tokens the forward passes computed, padding included; GFLOP/s on those tokens)",
        ["wl", "dtype", "useful", "unique", "rw computed", "% useful", "static comp", "sorted comp",
         "rw GFLOP/s", "mm GFLOP/s", "efficiency", "torch attn", "static GFLOP/s", "sorted GFLOP/s"],
        [[r["workload"], r["dtype"], r["useful_tokens"], r["unique_tokens"], r["rw_tokens_computed"],
          f"{100 * (r['rw_tokens_computed'] or 0) / r['useful_tokens']:.1f}%",
          r["static_tokens_computed"], r["best_tokens_computed"],
          f"{r['rw_forward_gflop_per_s'] or 0:.1f}", f"{r['mm_gflop_per_s']:.1f}", f"{100 * r['efficiency']:.0f}%",
          _torch_attention(r), f"{r['static_gflop_per_s']:.1f}", f"{r['best_gflop_per_s']:.1f}"] for r in rows],
        "unique: tokens of the prefix tree over all scored prefixes; rw computed: `reward-worker bench` "
        "tokens_computed;\nmm: torch.mm at the q/k/v/o/up/down shapes, same dtype and threads; efficiency = rw "
        "GFLOP/s / mm GFLOP/s;\ntorch attn (bf16 on the CPU): rw GFLOP/s and efficiency with RW_CPU_ATTENTION=torch, "
        "libtorch's attention\ninstead of src/model/cpu_flash.rs (the same where that kernel does not run)")
    if checks:
        lines = []
        for c in checks:
            lines.append([c["workload"], c["dtype"], c["turns"], f"{c['max_abs_raw_diff']:.2e}",
                          f"{c['max_abs_reward_diff']:.2e}", f"{c['sorted_vs_static']:.2e}",
                          f"{c['rw_vs_hf_f32']:.2e}" if "rw_vs_hf_f32" in c else "",
                          f"{c['hf_vs_hf_f32']:.2e}" if "hf_vs_hf_f32" in c else "",
                          "ok" if c["ok"] else "FAILED"])
        _table("Correctness (reward-worker `score` output vs transformers static, every scored turn)",
               ["wl", "dtype", "turns", "max|raw diff|", "max|reward diff|", "sorted vs static",
                "rw vs hf f32", "hf vs hf f32", ""],
               lines,
               "raw: the nine outputs (O(50) with random weights); reward: default weights; bf16 rows: each "
               "engine's\nmax |raw diff| from transformers f32 on the first --check-records records")


def print_targets(rows, native, default_model):
    """Issue 6's numbers, for the rows this run has (the README baseline only for the default bench model)."""
    out = []
    for r in rows:
        key = (r["workload"], r["dtype"])
        if r["workload"] == "e" and r["dtype"] == native:
            out.append(f"e {r['dtype']}: score/static {r['score_vs_static']:.2f} (target >= 6), "
                       f"score/sorted {r['score_vs_best']:.2f} (>= 3), "
                       f"compute efficiency {100 * r['efficiency']:.0f}% (>= 70%)")
        if r["workload"] == "d":
            share = (r["rw_tokens_computed"] or 0) / r["useful_tokens"]
            out.append(f"d {r['dtype']}: tokens computed {100 * share:.1f}% of useful (target <= 55%; "
                       f"unique {100 * r['unique_tokens'] / r['useful_tokens']:.1f}%)")
        d = r.get("rw_default_dtype")
        if d:
            same = "same outputs" if d["same_outputs_max_diff"] == 0 else \
                f"outputs differ by {d['same_outputs_max_diff']:.2e}: another dtype?"
            out.append(f"{key[0]} score without --dtype: {d['vs_explicit']:.2f} x the speed of --dtype {key[1]}, "
                       f"{same}; log: {' | '.join(d['log']) or '(no line mentions the dtype)'}")
        if default_model and key in README_BENCH_VS_STATIC:
            out.append(f"{key[0]} {key[1]}: bench/static {r['bench_vs_static']:.2f} "
                       f"(README before prefix sharing: {README_BENCH_VS_STATIC[key]:.2f})")
    if out:
        print("\nIssue 6 targets (native dtype " + native + "):")
        for line in out:
            print("  " + line)
