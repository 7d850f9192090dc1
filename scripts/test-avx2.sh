#!/usr/bin/env bash
# The tests whose bounds depend on f32/bf16 rounding, run again with libtorch
# held to AVX2 kernels (ATen's dispatch, MKL and oneDNN) and to libtorch's CPU
# attention, as on an AVX2-only CPU: the same check as `make test` there, on
# any AVX-512 or AMX machine. Prints each measured difference; the bounds are
# in tests/common/close.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 RW_CPU_ATTENTION=torch
tests=(one_pass parity prefix_sharing group_parity cli_overlap cli_score cli_eval embed clients)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --lib "${args[@]}" -- --nocapture >"$log" 2>&1 || status=$?
grep -E 'relative|bf16 max|bf16 shared|largest difference|^test result|FAILED|panicked' "$log" | grep -Ev 'budget (300|40):' || true
exit "$status"
