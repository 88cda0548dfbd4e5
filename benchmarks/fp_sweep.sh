#!/usr/bin/env bash
# The false-positive sweep of docs/false-positives.md on one GPU host, in calls that each
# fit a 10-minute device session. A plan file names one GPU process per line:
#     NAME  MODEL  JOB...        MODEL: 8M, 650M or 3B; JOB: SEEDS[:PROPERTY,...]
# (benchmarks/plans/ holds the plans that were run). Every process checks all four
# controls in float16 and bfloat16 on the same samples. The first line (the largest
# model) loads alone, so that the others cannot crowd its float64 oracle out of memory;
# the rest then run side by side. No process starts a row after $BUDGET seconds, and
# every one is stopped at $HARD seconds; rows are JSON lines in OUT_DIR, written as
# they finish, with nvidia-smi samples in OUT_DIR/smi.csv.
#     BUDGET=480 HARD=560 bash benchmarks/fp_sweep.sh PLAN OUT_DIR
# FP_ARGS adds options to every false_positives.py (FP_ARGS=--deferred: baselines as a
# fuzz run leaves them out).
# With FAULTS=1 it instead runs the precision faults on the GPU (detection margins).
set -u
plan="$1"; out="${2:-fp}"; mkdir -p "$out"
budget="${BUDGET:-480}"; hard="${HARD:-560}"; start=$(date +%s)
C="tests.impls.packed"; ALL="$C:loop_packed $C:tiled_packed $C:blockdiag_packed esmfuzz.forward:packed_forward"
F="tests.faults.packed"
PRECISION="$F:low_precision_softmax $F:low_precision_accumulation $F:positions_run_on $F:rotary_table_over_stream"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
spec() { echo "synthetic:esm2_$(case $1 in 8M) echo t6_8M;; 650M) echo t33_650M;; 3B) echo t36_3B;; esac)_UR50D"; }
gpu() {  # NAME MODEL CONTROLS -- JOB...
    name=$1; model=$(spec "$2"); controls=$3; shift 3
    layers=$([ "$model" = "$(spec 8M)" ] && echo all || echo checked)
    jobs=(); for job in "$@"; do jobs+=(--job "$job"); done
    left=$(( hard - ($(date +%s) - start) ))
    timeout "$left" python3 benchmarks/false_positives.py --budget "$budget" --examples 2 \
        --model "$model" --device "${DEVICE:-cuda}" --dtypes float16 bfloat16 --layers "$layers" \
        --controls $controls "${jobs[@]}" ${FP_ARGS:-} --ready "$out/$name.ready" \
        --json "$out/$name.jsonl" > /dev/null 2>> "$out/$name.log"
    echo "$name exit $? after $(( $(date +%s) - start )) s" >> "$out/log.txt"
}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$out/smi.csv" &
smi=$!
if [ "${FAULTS:-0}" = 1 ]; then
    for model in 8M 650M; do
        gpu "faults-$model" $model "$PRECISION" 1-2:error_ratio &
    done
    wait $(jobs -p | grep -v "^$smi$"); kill $smi; exit
fi
first=1
while read -r name model jobs; do
    case "$name" in ''|'#'*) continue;; esac
    gpu "$name" "$model" "$ALL" $jobs &
    pid=$!
    if [ $first = 1 ]; then
        first=0
        for model_ in 650M 8M; do  # write the other synthetic checkpoints meanwhile
            python3 -c "from esmfuzz.models import synthetic_checkpoint as s; s('esm2_$( [ $model_ = 8M ] && echo t6_8M || echo t33_650M)_UR50D')" &
        done
        until [ -e "$out/$name.ready" ] || ! kill -0 $pid 2>/dev/null; do sleep 2; done
    fi
done < "$plan"
wait $(jobs -p | grep -v "^$smi$")
kill $smi
