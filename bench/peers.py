"""The transformers peers of the benchmark, and the machine's matmul rate.

Both peers run transformers' NemotronModel in this process on the bench
model's safetensors (checked bit for bit against the file), one row per scored
prefix, right padding + attention mask, the hidden state of each row's last
real token, then the 9-way head in fp32. They differ only in how rows are
batched:

  static  micro-batches of 8 rows in workload order, padded to the longest
          (how NeMo-Aligner's reward server and OpenRLHF's serve_rm batch)
  sorted  all prefixes sorted by length, then batched greedily under a token
          budget that counts padded tokens (rows x longest row <= budget)

Batches are built (tokenised, padded, moved to the device) before timing, so
a peer's time is its scoring loop alone.
"""
import copy
import os
import statistics
import time


def static_plan(lens, batch_size):
    """Consecutive rows in workload order, `batch_size` at a time."""
    idx = list(range(len(lens)))
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


def sorted_plan(lens, budget):
    """Rows sorted by length; a batch grows while rows x longest <= budget (at least one row)."""
    order = sorted(range(len(lens)), key=lambda i: (lens[i], i))
    plan, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lens[i] > budget:
            plan.append(cur)
            cur = []
        cur.append(i)
    if cur:
        plan.append(cur)
    return plan


def padded_tokens(plan, lens):
    return sum(len(b) * max(lens[i] for i in b) for b in plan)


def padded_flops(cfg, plan, lens):
    """Matmul FLOPs of transformers' forward on a plan, counted like reward-worker's
    (src/model/flops.rs): every layer computes q, k, v, o and the MLP for every row,
    padding included; a query at position p attends to p + 1 keys (causal, so the
    padded rows' attention is not counted); the head is applied to one row per prefix."""
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv_heads, layers = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or h // heads
    q_w, kv_w = heads * head_dim, kv_heads * head_dim
    per_row = 2 * h * 2 * kv_w + 2 * h * q_w + 2 * q_w * h + 2 * 2 * h * f
    total = 0.0
    for b in plan:
        width = max(lens[i] for i in b)
        rows = len(b) * width
        keys = len(b) * width * (width + 1) / 2
        total += layers * (rows * per_row + 2 * 2 * q_w * keys)
    return total + 2 * len(lens) * h * cfg.get("num_labels", 9)


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
        self.n_params = sum(p.numel() for p in base.parameters()) + self.head_w.numel()

    def model(self, dtype):
        torch = self.torch
        if dtype not in self.models:
            self.models.clear()  # keep one copy in memory
            if dtype == "f32":
                m = self.base_f32.to(self.device)
            else:
                m = copy.deepcopy(self.base_f32).to(torch.bfloat16).to(self.device)
            self.models[dtype] = m.eval()
        return self.models[dtype]

    def batches(self, ids_list, plan, pad_id):
        """Right-padded (ids, mask, last) per batch of the plan."""
        torch = self.torch
        out = []
        for b in plan:
            rows = [ids_list[i] for i in b]
            width = max(len(x) for x in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, x in enumerate(rows):
                ids[r, :len(x)] = torch.tensor(x)
                mask[r, :len(x)] = 1
            last = torch.tensor([len(x) - 1 for x in rows])
            out.append((ids.to(self.device), mask.to(self.device), last.to(self.device)))
        return out

    def score(self, model, batches):
        """[rows, 9] fp32 raw outputs, rows in the batches' order."""
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

    def run(self, dtype, ids_list, plan, pad_id, warmup, repeat):
        """Time the scoring loop over the plan: one untimed batch (the plan's smallest),
        `warmup` untimed passes, `repeat` timed passes. Returns (median seconds, all
        timed seconds, outputs in workload order)."""
        model = self.model(dtype)
        batches = self.batches(ids_list, plan, pad_id)
        smallest = min(range(len(batches)), key=lambda i: batches[i][0].numel())
        self.score(model, [batches[smallest]])
        times, out = [], None
        for run in range(warmup + max(1, repeat)):
            t = time.perf_counter()
            out = self.score(model, batches)
            dt = time.perf_counter() - t
            if run >= warmup:
                times.append(dt)
        order = [i for b in plan for i in b]
        ordered = [None] * len(order)
        for row, i in enumerate(order):
            ordered[i] = out[row].tolist()
        return statistics.median(times), times, ordered

    def reference(self, ids_list, pad_id, batch_size=8):
        """f32 outputs, workload order (for the bf16 noise floor)."""
        plan = static_plan([len(x) for x in ids_list], batch_size)
        out = self.score(self.model("f32"), self.batches(ids_list, plan, pad_id))
        return [row.tolist() for row in out]


def matmul_rate(torch, cfg, rows, dtype, device, warmup=1, repeat=3):
    """GFLOP/s of torch.mm at the model's linear shapes: x [rows, in] @ W[out, in].T for
    q, k, v, o, up and down, in `dtype`. The rate is all their FLOPs over all their
    time (the median of `repeat` timed rounds), i.e. what a forward made only of
    these matmuls would reach; each shape's own rate is returned too."""
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    q_w, kv_w = heads * head_dim, kv_heads * head_dim
    shapes = dict(q=(h, q_w), k=(h, kv_w), v=(h, kv_w), o=(q_w, h), up=(h, f), down=(f, h))
    kind = torch.float32 if dtype == "f32" else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    per_shape = {}
    total_flop, total_s = 0.0, 0.0
    with torch.inference_mode():
        for name, (n_in, n_out) in shapes.items():
            x = torch.randn(rows, n_in, generator=g).to(kind).to(device)
            w = torch.randn(n_out, n_in, generator=g).div(n_in ** 0.5).to(kind).to(device)
            times = []
            for run in range(warmup + max(1, repeat)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                torch.mm(x, w.t())
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if run >= warmup:
                    times.append(time.perf_counter() - t)
            s = statistics.median(times)
            flop = 2.0 * rows * n_in * n_out
            per_shape[name] = dict(shape=[rows, n_in, n_out], seconds=s, gflop_per_s=flop / s / 1e9)
            total_flop += flop
            total_s += s
    return dict(rows=rows, dtype=dtype, gflop_per_s=total_flop / total_s / 1e9, per_shape=per_shape)
