# The two commands of the README: `make run` and `make test`. Both set up the
# project-local libtorch (PyPI torch==2.11.0 in .venv) on first use.
.PHONY: setup build run test test-ray test-avx2 fault bench bench-serve

setup:
	@scripts/setup.sh

build: setup
	cargo build --release

# Score the example conversations with the embedded demo model.
run: build
	./target/release/reward-worker score --input examples/conversations.jsonl

# Then the Python package's tests (python/tests) against the binary just built;
# a failing pytest fails `make test`.
test: setup
	cargo test --release
	cargo build --release --bin reward-worker
	.venv/bin/python -m pytest python/tests -q
	$(MAKE) test-ray

# The Ray replica group (python/tests_ray) on a local CPU-only Ray cluster the
# test starts; its own target because Ray's start-up is slow on 2 cores.
test-ray: setup
	cargo build --release --bin reward-worker
	.venv/bin/python -m pytest python/tests_ray -q -s

# The rounding-sensitive tests again with libtorch's kernels held to AVX2, as on
# an AVX2-only CPU (README "Tests on every CPU").
test-avx2: setup
	scripts/test-avx2.sh

# The service under hostile clients, signals and crashes (also part of `make test`; about 1.5 min).
fault: setup
	cargo test --release --test serve_hostile --test serve_crash --test serve_faults

# reward-worker vs transformers on the same weights (installs transformers into .venv).
# Full run: workloads a-e, about 80 min on 2 quiet bf16-capable cores; `make bench BENCH_ARGS=--quick` for a smoke run.
bench: build
	.venv/bin/pip install --quiet --disable-pip-version-check "transformers>=5" tokenizers safetensors
	.venv/bin/python bench/compare.py $(BENCH_ARGS)

# The service under 64 concurrent HTTP clients vs `score` on the same records
# and vs a static-padded transformers server, bench/serve_peer.py (README
# "Serving: measured"). BENCH_SERVE_ARGS passes options, e.g.
# BENCH_SERVE_ARGS="--groups 2 --conversations 8" for a quick run.
bench-serve: setup
	.venv/bin/pip install --quiet --disable-pip-version-check "transformers>=5" tokenizers safetensors
	cargo run --release --example bench_serve -- $(BENCH_SERVE_ARGS)
