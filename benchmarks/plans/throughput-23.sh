#!/usr/bin/env bash
# Issue 23 on one GPU, one device call per PART (each under 10 minutes):
#   650M        before (main at 5a31352 as it ran: its auto of 4 workers time-slicing, each
#               target once, --dist load) and after (--workers auto: up to 8 under a
#               private CUDA MPS daemon, each running every target), alternated, 3 runs
#               each, 3 s per target (about 8 minutes); EXTRA=1 adds 4 workers under MPS
#   650M-10s    the same pairs at 10 s per target, PAIRS of them (default 2, about 7
#               minutes; warm-up weighs a third as much as at 3 s): run it twice, PAIRS=2
#               then PAIRS=1, and --summarize both files together
#   650M-after  the issue's target alone: after, --workers auto, 3 runs (about 5 minutes)
#   650M-one    one worker, before and after alternated, 3 runs each
#   8M          auto (before as it ran, after) and one worker, 3 runs each
#   8M-one      one worker alone, before and after alternated, 3 runs each, 1 s per target
#   8M-auto     auto alone, before and after alternated, 3 runs each, 2 s per target
#   3B          auto (before as it ran, after), PAIRS of them (default 3); the 3B checkpoint
#               takes ~3 min: in under 10 minutes, PAIRS=1 then PAIRS=2, summarized together
#   3B-before   before alone, 3 runs (for a call whose 3B before-runs did not start)
#   launches    operations per example, 650M, one worker, after only
#   650M-finite this tree against .whl/prev (b902d84, before finite's reference ran only on
#               a NaN or Inf: git archive b902d84 | tar -x -C .whl/prev), --workers auto,
#               10 s per target, alternated, RUNS of each (default 2; a run took 2.5
#               minutes on an H100 with six workers, so RUNS=2 overran a 590 s call by
#               one run: RUNS=1 per call, or a 3-run call of the after-tree alone)
#   650M-buckets this tree against .whl/prev (git archive 9eb36b0 | tar -x -C .whl/prev),
#               --workers auto, 10 s per target, in the ORDER given (default "prev new
#               prev"; 3 runs fit one call): run it again with ORDER="new prev new" and
#               --summarize both files together (its run on an H200 had as this tree the
#               cost-based padded batches that were not kept, without 247d5f2's cap);
#               run again with .whl/prev at 01d5da1 (git archive 01d5da1) for the kept
#               outputs and lazy baselines: "new prev new", "prev new", "prev" (an H100)
#               SLICE=15 gives each target 15 s, as the issue measured (2 runs fit a call)
#               IMPL=tests.impls.packed:blockdiag_packed runs a packed forward other than
#               esmfuzz's reference under test, as a user's run does (the packed
#               reference is then a forward of its own, not the tested output)
#   650M-workers this tree, 650M, 10 s per target, one run per entry of WORKERS (default
#               "auto 6 auto"; 3 runs fit one call; then "6 auto 6"): on an H200 auto is 8
#               under MPS, and 8 were not faster than 6 on an H100 in another session
# Here, once: pip download --no-deps -d .whl fair-esm==2.0.0
#             mkdir -p .whl/before && git archive 5a31352 | tar -x -C .whl/before
# There (carry [".whl"]):  bash benchmarks/plans/throughput-23.sh PART
# Figures go to $OUT/PART.jsonl and .txt; PART-summary.txt holds the medians (min-max).
set -uo pipefail
part=${1:?part}
out=${OUT:-/tmp/throughput-23}; mkdir -p "$out"
. benchmarks/plans/device-setup.sh
export ESMFUZZ_CACHE=${ESMFUZZ_CACHE:-/tmp/esmfuzz-cache} PYTHONUNBUFFERED=1
command -v nvidia-cuda-mps-control || echo "no nvidia-cuda-mps-control"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
MIX=("error_ratio and short" "error_ratio and long" "error_ratio and crowded"
     "isolation and mixed" "packed_precision and medium" "finite and long" "statistics"
     "padding_invariance")
python - <<'PY' || { echo "MPS preflight failed: after-runs time-slice"; export NO_MPS=1; }
import os, subprocess, sys
from esmfuzz.mps import mps_for
with mps_for(2, "on") as sharing:
    print("MPS preflight:", sharing.why)
    subprocess.run([sys.executable, "-c", "import torch; print(torch.ones(4, device='cuda')"
                    ".sum().item())"], env={**os.environ, **sharing.env}, check=True, timeout=90)
PY
ckpt() { python -c "from esmfuzz.models.synthetic import synthetic_checkpoint as c; c('$1')"; }
before_auto() {  # main at 5a31352 chose its auto worker count in soak._workers
    python -c "import sys; sys.path.insert(0, '.whl/before')
from esmfuzz.soak import _workers
print(_workers('auto', ['--esm-model', '$1'])[0])"; }
b() { python benchmarks/throughput.py --device cuda --runs 1 --json "$out/$part.jsonl" \
        --targets "${MIX[@]}" "$@" 2>&1 | grep -v "^  .* per example" | tee -a "$out/$part.txt"; }
case $part in
    650M) M=(--model synthetic:esm2_t33_650M_UR50D --seconds 3)
          ckpt esm2_t33_650M_UR50D
          for i in 1 2 3; do
              b "${M[@]}" --trees .whl/before --workers 4 --mps off --dist load
              b "${M[@]}" --workers auto ${NO_MPS:+--mps off}
          done
          [ -n "${EXTRA:-}" ] && [ -z "${NO_MPS:-}" ] && b "${M[@]}" --workers 4 --mps on ;;
    650M-10s) M=(--model synthetic:esm2_t33_650M_UR50D --seconds 10)
          ckpt esm2_t33_650M_UR50D
          for i in $(seq "${PAIRS:-2}"); do
              b "${M[@]}" --trees .whl/before --workers 4 --mps off --dist load
              b "${M[@]}" --workers auto ${NO_MPS:+--mps off}
          done ;;
    650M-after) M=(--model synthetic:esm2_t33_650M_UR50D --seconds 3)  # the target alone
          ckpt esm2_t33_650M_UR50D
          b "${M[@]}" --workers auto --runs 3 ${NO_MPS:+--mps off} ;;
    650M-finite) M=(--model synthetic:esm2_t33_650M_UR50D --seconds 10)
          ckpt esm2_t33_650M_UR50D
          b "${M[@]}" --workers auto --runs "${RUNS:-2}" --trees .whl/prev . ;;
    650M-buckets) M=(--model synthetic:esm2_t33_650M_UR50D --seconds "${SLICE:-10}")
          U=(); [ -n "${IMPL:-}" ] && U=(-- --esm-packed-impl "$IMPL")
          ckpt esm2_t33_650M_UR50D
          for tree in ${ORDER:-prev new prev}; do
              if [ "$tree" = prev ]; then b "${M[@]}" --workers auto --trees .whl/prev ${U[@]+"${U[@]}"}
              else b "${M[@]}" --workers auto ${U[@]+"${U[@]}"}; fi
          done ;;
    650M-workers) M=(--model synthetic:esm2_t33_650M_UR50D --seconds 10)
          ckpt esm2_t33_650M_UR50D
          for n in ${WORKERS:-auto 6 auto}; do b "${M[@]}" --workers "$n"; done ;;
    650M-one) M=(--model synthetic:esm2_t33_650M_UR50D --seconds 3)
          ckpt esm2_t33_650M_UR50D
          b "${M[@]}" --workers 1 --runs 3 --trees .whl/before . ;;
    8M)   M=(--seconds 3)
          for i in 1 2 3; do
              b "${M[@]}" --trees .whl/before --workers 4 --mps off --dist load
              b "${M[@]}" --workers auto ${NO_MPS:+--mps off}
          done
          b "${M[@]}" --workers 1 --runs 3 --trees .whl/before . ;;
    8M-one) b --seconds 1 --workers 1 --runs 3 --trees .whl/before . ;;  # for a last 3 minutes
    8M-auto) M=(--seconds 2)  # auto alone, for a call with under 5 minutes left
          for i in 1 2 3; do
              b "${M[@]}" --trees .whl/before --workers 4 --mps off --dist load
              b "${M[@]}" --workers auto ${NO_MPS:+--mps off}
          done ;;
    3B)   M=(--model synthetic:esm2_t36_3B_UR50D --seconds 6 --targets "error_ratio and short"
             "error_ratio and crowded" "isolation and mixed" "finite and long")
          ckpt esm2_t36_3B_UR50D
          before=$(before_auto synthetic:esm2_t36_3B_UR50D)
          for i in $(seq "${PAIRS:-3}"); do
              b "${M[@]}" --trees .whl/before --workers "$before" --mps off --dist load
              b "${M[@]}" --workers auto ${NO_MPS:+--mps off}
          done ;;
    3B-before) M=(--model synthetic:esm2_t36_3B_UR50D --seconds 6 --targets "error_ratio and short"
             "error_ratio and crowded" "isolation and mixed" "finite and long")
          ckpt esm2_t36_3B_UR50D
          b "${M[@]}" --trees .whl/before --workers "$(before_auto synthetic:esm2_t36_3B_UR50D)" \
            --runs 3 --mps off --dist load ;;
    launches) ckpt esm2_t33_650M_UR50D
          b --model synthetic:esm2_t33_650M_UR50D --seconds 5 --workers 1 --launches \
            --no-roofline ;;
    *)    echo "unknown part $part" >&2; exit 2 ;;
esac
python benchmarks/throughput.py --summarize "$out/$part.jsonl" 2>&1 | tee "$out/$part-summary.txt"
