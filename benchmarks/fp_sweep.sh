#!/usr/bin/env bash
# The false-positive sweep of docs/false-positives.md on one H200 host, split into calls
# that each fit a 10-minute device session: one GPU process per model size, each checking
# both dtypes on the same samples (the oracle and the FP32 path are then computed once),
# and CPU rows (8M, the ci crowd limits) on the host's cores, one process and one thread
# per seed. Seed ranges come from the environment; every process stops starting rows
# after $BUDGET seconds. Output: JSON lines in OUT_DIR.
#     S8=1-10 S650=1-5 S3B=1-3 SCPU="1 2 3" BUDGET=480 bash benchmarks/fp_sweep.sh OUT_DIR
# With FAULTS=1 it instead runs the precision faults on the GPU (detection margins).
set -u
out="${1:-fp}"; mkdir -p "$out"; budget="${BUDGET:-480}"
M8=synthetic:esm2_t6_8M_UR50D; M650=synthetic:esm2_t33_650M_UR50D; M3B=synthetic:esm2_t36_3B_UR50D
C="tests.impls.packed"; ALL="$C:loop_packed $C:tiled_packed $C:blockdiag_packed esmfuzz.forward:packed_forward"
F="tests.faults.packed"
PRECISION="$F:low_precision_softmax $F:low_precision_accumulation $F:positions_run_on $F:rotary_table_over_stream"
fp() { name=$1; shift; python3 benchmarks/false_positives.py --budget "$budget" --examples 2 \
    --json "$out/$name.jsonl" "$@" > /dev/null 2>> "$out/log.txt"; }
gpu() { OMP_NUM_THREADS=2 fp "gpu-$1" --model "$2" --seeds "$3" --device cuda \
    --dtypes float16 bfloat16 "${@:4}"; }
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ "${FAULTS:-0}" = 1 ]; then
    for model in $M8 $M650; do
        gpu faults $model 1-2 --layers checked --properties error_ratio --controls $PRECISION &
    done
    wait; exit
fi
[ -n "${S8:-}" ] && gpu 8M $M8 "$S8" --controls $ALL &
[ -n "${S650:-}" ] && gpu 650M $M650 "$S650" --layers checked --controls $ALL &
[ -n "${S3B:-}" ] && gpu 3B $M3B "$S3B" --layers checked --controls $ALL &
for seed in ${SCPU:-}; do
    OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES= fp cpu-8M --model $M8 --device cpu \
        --dtypes float16 --seeds "$seed" --crowd-tokens 6144 --crowd-sequences 128 \
        --controls $ALL &
done
wait
