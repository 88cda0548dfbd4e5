#!/usr/bin/env bash
# Issue 23: do float32/float64 matmuls get faster with the weight column-major or through
# cuBLASLt (benchmarks/gemm_layouts.py)? Then 8M with one worker, before and after.
# One device call (carry [".whl"]): bash benchmarks/plans/layouts-23.sh
set -u
. benchmarks/plans/device-setup.sh
export ESMFUZZ_CACHE=/tmp/esmfuzz-cache PYTHONUNBUFFERED=1
python -c "from esmfuzz.models.synthetic import synthetic_checkpoint as c; c('esm2_t33_650M_UR50D')"
timeout 240 python benchmarks/gemm_layouts.py 2>&1 | tee $OUT/layouts-650M.txt
OUT=$OUT timeout 240 bash benchmarks/plans/throughput-23.sh 8M-one
