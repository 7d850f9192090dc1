# The two commands of the README: `make run` and `make test`. Both set up the
# project-local libtorch (PyPI torch==2.11.0 in .venv) on first use.
.PHONY: setup build run test bench

setup:
	@scripts/setup.sh

build: setup
	cargo build --release

# Score the example conversations with the embedded demo model.
run: build
	./target/release/reward-worker score --input examples/conversations.jsonl

test: setup
	cargo test --release

# reward-worker vs transformers on the same weights (installs transformers into .venv).
# Full run: workloads a-e, 35-45 min on 2 quiet cores; `make bench BENCH_ARGS=--quick` for a smoke run.
bench: build
	.venv/bin/pip install --quiet --disable-pip-version-check "transformers>=5" tokenizers safetensors
	.venv/bin/python bench/compare.py $(BENCH_ARGS)
