#!/usr/bin/env python3
"""A static-padded reward server on transformers, the peer of `make bench-serve`.

How NeMo-Aligner's reward server and OpenRLHF's `serve_rm` work: one HTTP
request at a time (a plain, single-threaded HTTPServer), every rated turn of
the request's conversations its own prefix row (the SteerLM template, as
tests/fixtures/make_fixture.py renders it), rows in static micro-batches of
`--batch-size` padded to the longest (right padding + attention mask), the
hidden state of each row's last real token through the 9-way head in fp32
(bench/peers.py, the same code as `make bench`'s transformers peers).

    POST /score {"conversations": [record, ...]}  ->  {"results": [[[9 raw] per rated turn] per record]}
    GET  /stats                                    ->  {"padded_tokens", "rows", "forwards"}

Records are in the seed (`conversations`) or OpenAI (`messages`) format. It
prints `listening on http://HOST:PORT` to stderr once the model is loaded.
"""
import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "fixtures"))
from make_fixture import render_prefixes  # noqa: E402
from peers import HF, static_plan  # noqa: E402


def turns_of(record):
    """[(role, text)] in the template's role names."""
    if "conversations" in record:
        return [(t["from"], t["value"]) for t in record["conversations"]]
    names = {"user": "User", "assistant": "Assistant"}
    return [(names[m["role"]], m["content"]) for m in record["messages"] if m["role"] != "system"]


class Peer:
    def __init__(self, model_dir, dtype, batch_size, device):
        from tokenizers import Tokenizer
        self.hf = HF(model_dir, device)
        self.model = self.hf.model(dtype)
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.batch_size = batch_size
        self.stats = {"padded_tokens": 0, "rows": 0, "forwards": 0}

    def score(self, records):
        rows, owners = [], []
        for r, record in enumerate(records):
            for _, text in render_prefixes(turns_of(record)):
                rows.append(self.tok.encode(text, add_special_tokens=False).ids)
                owners.append(r)
        plan = static_plan([len(x) for x in rows], self.batch_size)
        batches = self.hf.batches(rows, plan, 0)
        out = self.hf.score(self.model, batches)
        self.stats["padded_tokens"] += sum(ids.numel() for ids, _, _ in batches)
        self.stats["rows"] += len(rows)
        self.stats["forwards"] += len(batches)
        results = [[] for _ in records]
        order = [i for b in plan for i in b]
        for row, i in enumerate(order):
            results[owners[i]].append((i, out[row].tolist()))
        return [[raw for _, raw in sorted(turns)] for turns in results]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    peer = Peer(a.model, a.dtype, a.batch_size, a.device)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.answer(200, peer.stats) if self.path == "/stats" else self.answer(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/score":
                return self.answer(404, {"error": "not found"})
            try:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                self.answer(200, {"results": peer.score(body["conversations"])})
            except Exception as e:  # a bad request is answered, never the end of the server
                self.answer(400, {"error": f"{type(e).__name__}: {e}"})

    class Server(HTTPServer):
        request_queue_size = 256  # 64 clients connect at once; the default 5 drops SYNs into 1 s retries

    server = Server(("127.0.0.1", a.port), Handler)
    host, port = server.server_address
    print(f"listening on http://{host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
