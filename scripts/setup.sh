#!/usr/bin/env bash
# One-time set-up: a project-local Python environment holding the PyPI
# torch==2.11.0 wheel (libtorch 2.11 for tch 0.24). Re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.11.0
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "setup: installing torch==$TORCH_VERSION into .venv (about 3 GB, once)" >&2
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
torch_dir=$(.venv/bin/python -c "import os, torch; print(os.path.dirname(torch.__file__))" 2>/dev/null)
ln -sfn "$torch_dir" .venv/libtorch

# The HTTP clients the service's tests drive (tests/clients/*.py): openai,
# tritonclient[http] (with numpy and gevent) and requests. Skipped when present.
if ! .venv/bin/python -c "import openai, tritonclient.http, requests, numpy" 2>/dev/null; then
    echo "setup: installing the Python test clients (openai, tritonclient[http], requests) into .venv" >&2
    .venv/bin/pip install --quiet --disable-pip-version-check "openai>=1.40" "tritonclient[http]>=2.40" "requests>=2.31" numpy
fi

# The Python package's tests (python/tests, run by `make test`): httpx, pytest
# and TRL's GRPOTrainer with what it needs (transformers, accelerate, datasets;
# torch is the one above). Pinned: TRL 1.16.0 with transformers 5.24.0 is what
# the GRPO test was run with on torch 2.11.0. Skipped when present.
PY_TEST_PINS=("trl==1.16.0" "transformers==5.24.0" "accelerate==1.16.0" "datasets==5.2.0" "httpx==0.29.0" "pytest==9.2.0")
if ! .venv/bin/python - "${PY_TEST_PINS[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(any(version(name) != want for name, want in (pin.split("==") for pin in sys.argv[1:])))
PY
then
    echo "setup: installing the Python package's test dependencies (${PY_TEST_PINS[*]}) into .venv" >&2
    .venv/bin/pip install --quiet --disable-pip-version-check "${PY_TEST_PINS[@]}"
fi

# The Ray replica group's tests (python/tests_ray, `make test-ray`): Ray on a
# local CPU-only cluster. Pinned (2.60.0 has a wheel for CPython 3.10-3.13 on
# linux x86_64). Skipped when present.
RAY_PIN="ray==2.60.0"
if ! .venv/bin/python - "$RAY_PIN" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
name, want = sys.argv[1].split("==")
sys.exit(version(name) != want)
PY
then
    echo "setup: installing $RAY_PIN into .venv" >&2
    .venv/bin/pip install --quiet --disable-pip-version-check "$RAY_PIN"
fi
