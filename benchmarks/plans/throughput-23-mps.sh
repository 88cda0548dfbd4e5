#!/usr/bin/env bash
# Issue 23, first GPU call: does CUDA MPS let workers that share the H200 run side by side?
# One run each, 650M, 5 s per target, the mix; then the before tree at 4 workers.
#   bash benchmarks/plans/throughput-23-mps.sh        (carry [".whl"], as throughput-23.sh)
set -uo pipefail
out=${OUT:-/tmp/throughput-23}; mkdir -p "$out"
pip install -q --no-deps .whl/fair_esm-*.whl 2>/dev/null; pip install -q --no-deps -e . 2>/dev/null
export ESMFUZZ_CACHE=${ESMFUZZ_CACHE:-/tmp/esmfuzz-cache} PYTHONUNBUFFERED=1
command -v nvidia-cuda-mps-control || echo "no nvidia-cuda-mps-control"
MIX=("error_ratio and short" "error_ratio and long" "error_ratio and crowded"
     "isolation and mixed" "packed_precision and medium" "finite and long" "statistics"
     "padding_invariance")
M650=synthetic:esm2_t33_650M_UR50D
b() { python benchmarks/throughput.py --device cuda --model $M650 --seconds 5 --runs 1 \
        --no-roofline --json "$out/mps.jsonl" --targets "${MIX[@]}" "$@" 2>&1 \
      | grep -v "^  .* per example" | tee -a "$out/mps.txt"; }
b --workers 1
b --workers 4 --mps off
b --workers 4 --mps on
b --workers 8 --mps on
b --workers 8 --mps off
b --workers 4 --mps off --trees .whl/before
