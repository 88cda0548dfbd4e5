#!/usr/bin/env bash
# Issue 23 on one GPU: throughput before and after, runs alternated, median (min-max) of 3.
#
# Here, once (the wheel and the "before" tree travel in .whl/, ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps -d .whl fair-esm==2.0.0
#   mkdir -p .whl/before && git archive 5a31352 | tar -x -C .whl/before
# Then one device call per part, each under 10 minutes (carry [".whl"]):
#   bash benchmarks/plans/throughput-23.sh 650M-auto      # the target: >= 14.5 ex/s, >= 85% busy
#   bash benchmarks/plans/throughput-23.sh 650M-one
#   bash benchmarks/plans/throughput-23.sh 8M             # one worker and auto
#   bash benchmarks/plans/throughput-23.sh 3B             # one worker and auto
#   bash benchmarks/plans/throughput-23.sh 650M-mps       # auto workers under CUDA MPS, after only
#   bash benchmarks/plans/throughput-23.sh launches       # operations per example, 650M, after only
# 5a31352 is main before issue 23's changes. Figures go to $OUT/*.jsonl and *.txt; the
# synthetic checkpoints are generated on first use (about a minute at 650M, three at 3B).
set -euo pipefail
part=${1:?part}
before=${BEFORE:-.whl/before}
out=${OUT:-/tmp/throughput-23}
mkdir -p "$out"
pip install -q --no-deps .whl/fair_esm-*.whl 2>/dev/null || true
pip install -q --no-deps -e . 2>/dev/null || true
export ESMFUZZ_CACHE=${ESMFUZZ_CACHE:-/tmp/esmfuzz-cache}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/$part.txt"

MIX=("error_ratio and short" "error_ratio and long" "error_ratio and crowded"
     "isolation and mixed" "packed_precision and medium" "finite and long" "statistics"
     "padding_invariance")
BIG=("error_ratio and short" "error_ratio and crowded" "isolation and mixed" "finite and long")
M650=synthetic:esm2_t33_650M_UR50D

bench() {
    python benchmarks/throughput.py --device cuda --json "$out/$part.jsonl" "$@" 2>&1 \
        | tee -a "$out/$part.txt"
}

case $part in
    650M-auto) bench --model $M650 --workers auto --seconds 5 --runs 3 --trees "$before" . \
                   --targets "${MIX[@]}" ;;
    650M-one)  bench --model $M650 --workers 1 --seconds 5 --runs 3 --trees "$before" . \
                   --targets "${MIX[@]}" ;;
    8M)        bench --workers 1 --seconds 4 --runs 3 --trees "$before" . --targets "${MIX[@]}"
               bench --workers auto --seconds 4 --runs 3 --trees "$before" . \
                   --targets "${MIX[@]}" ;;
    3B)        bench --model synthetic:esm2_t36_3B_UR50D --workers 1 --seconds 8 --runs 3 \
                   --trees "$before" . --targets "${BIG[@]}"
               bench --model synthetic:esm2_t36_3B_UR50D --workers auto --seconds 8 --runs 3 \
                   --no-roofline --targets "${BIG[@]}" ;;
    650M-mps)  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
               mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
               nvidia-cuda-mps-control -d
               trap 'echo quit | nvidia-cuda-mps-control' EXIT
               bench --model $M650 --workers auto --seconds 5 --runs 3 --targets "${MIX[@]}" ;;
    launches)  bench --model $M650 --workers 1 --seconds 5 --runs 1 --launches --no-roofline \
                   --targets "${MIX[@]}" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
esac
