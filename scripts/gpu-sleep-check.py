#!/usr/bin/env python3
"""The GPU check of sleep / wake (issue 22), one script, at most a few minutes
on one GPU: a random Nemotron-layout model (hidden 4096, 16 layers, bf16),
`reward-worker serve --device cuda`, the device memory this process holds
(`nvidia-smi --query-compute-apps`) awake, after `/sleep?level=1`, after its
`/wake_up`, after `/sleep?level=2` and after that wake, the time of each
transition, and the scores before and after each wake (they must be equal).

    .venv/bin/python scripts/gpu-sleep-check.py [--binary target/release/reward-worker] [--dir /tmp/rw-gpu-model]

Prints one JSON line. Needs torch (the .venv's) to write the model.
Not yet run: no GPU was at hand when it was written.
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_model(dir: Path, hidden=4096, layers=16, heads=32, kv=8, ffn=16384, vocab=1024):
    import torch
    from safetensors.torch import save_file

    dir.mkdir(parents=True, exist_ok=True)
    if (dir / "model.safetensors").exists():
        return
    d = hidden // heads
    config = {"model_type": "nemotron", "architectures": ["NemotronForSequenceClassification"],
              "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": d,
              "max_position_embeddings": 4096, "norm_eps": 1e-5, "hidden_act": "relu2", "num_labels": 9,
              "rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default"}}
    (dir / "config.json").write_text(json.dumps(config))
    (dir / "tokenizer.json").write_bytes((ROOT / "tests/fixtures/tiny-nemotron-rm/tokenizer.json").read_bytes())
    g = torch.Generator().manual_seed(0)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(torch.bfloat16)  # noqa: E731
    t = {"model.embed_tokens.weight": r(vocab, hidden), "model.norm.weight": r(hidden, scale=0.1),
         "model.norm.bias": r(hidden, scale=0.1), "score.weight": r(9, hidden, scale=0.05)}
    s = hidden ** -0.5
    for i in range(layers):
        p = f"model.layers.{i}"
        t |= {f"{p}.self_attn.q_proj.weight": r(heads * d, hidden, scale=s),
              f"{p}.self_attn.k_proj.weight": r(kv * d, hidden, scale=s),
              f"{p}.self_attn.v_proj.weight": r(kv * d, hidden, scale=s),
              f"{p}.self_attn.o_proj.weight": r(hidden, heads * d, scale=s),
              f"{p}.mlp.up_proj.weight": r(ffn, hidden, scale=s),
              f"{p}.mlp.down_proj.weight": r(hidden, ffn, scale=ffn ** -0.5)}
        for n in ("input_layernorm", "post_attention_layernorm"):
            t |= {f"{p}.{n}.weight": r(hidden, scale=0.1), f"{p}.{n}.bias": r(hidden, scale=0.1)}
    save_file(t, str(dir / "model.safetensors"))


def gpu_mib(pid: int) -> int:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return sum(int(m) for p, m in (l.split(",") for l in out.strip().splitlines() if l) if int(p) == pid)


def call(url: str, method: str = "POST", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/release/reward-worker"))
    ap.add_argument("--dir", default="/tmp/rw-gpu-model")
    a = ap.parse_args()
    write_model(Path(a.dir))
    proc = subprocess.Popen([a.binary, "serve", "--model", a.dir, "--device", "cuda", "--dtype", "bf16", "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    url = None
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.startswith("listening on http://"):
            url = line.split("listening on ", 1)[1].strip()
            break
    import threading

    threading.Thread(target=lambda: [sys.stderr.write(l) for l in proc.stderr], daemon=True).start()
    try:
        convs = {"conversations": [{"messages": [{"role": "user", "content": f"What is {i}+{i}?"},
                                                  {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(8)]}
        score = lambda: [r["turns"] for r in call(url + "/v1/rewards", body=convs)["results"]]  # noqa: E731
        before = score()
        out = {"awake_mib": gpu_mib(proc.pid), "transitions": []}
        for level in (1, 2):
            slept = call(f"{url}/sleep?level={level}")
            asleep = gpu_mib(proc.pid)
            woke = call(f"{url}/wake_up")
            out["transitions"].append({"level": level, "sleep_s": slept["seconds"], "asleep_mib": asleep,
                                       "wake_s": woke["seconds"], "woken_mib": gpu_mib(proc.pid),
                                       "scores_identical": score() == before})
        print(json.dumps(out))
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
