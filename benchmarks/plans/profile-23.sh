#!/usr/bin/env bash
# Issue 23: where a 650M forward's GPU time goes (benchmarks/profile_forwards.py), the forwards'
# seconds by dtype in the soak mix (throughput.py --timings), and the gpu-marked graphs
# test. One device call (carry [".whl"]): bash benchmarks/plans/profile-23.sh
set -u
. benchmarks/plans/device-setup.sh
export ESMFUZZ_CACHE=/tmp/esmfuzz-cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "from esmfuzz.models.synthetic import synthetic_checkpoint as c; c('esm2_t33_650M_UR50D')"
timeout 200 python benchmarks/profile_forwards.py --packed 2>&1 | grep -v USDT | tee $OUT/profile-650M.txt
timeout 150 python benchmarks/throughput.py --model synthetic:esm2_t33_650M_UR50D --device cuda --workers 1 --seconds 10 --runs 1 --timings --json $OUT/timings-650M.jsonl --targets "error_ratio and short" "error_ratio and crowded" "isolation and mixed" 2>&1 | tee $OUT/timings-650M.txt
timeout 60 python -m pytest -q -p no:cacheprovider tests/test_graphs_benchmark.py -m gpu 2>&1 | tail -5 | tee $OUT/graphs-test.txt
