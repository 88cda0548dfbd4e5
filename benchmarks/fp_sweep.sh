#!/usr/bin/env bash
# The false-positive sweep of docs/false-positives.md on one H200 host: GPU rows as
# concurrent processes sharing the GPU, CPU rows (8M) on the host's cores, one thread
# each, and the precision faults on the GPU for the detection margins. Every process
# stops starting rows after $BUDGET seconds. Output: JSON lines in $1.
set -u
out="${1:-fp}"; mkdir -p "$out"; budget="${BUDGET:-480}"
M8=synthetic:esm2_t6_8M_UR50D; M650=synthetic:esm2_t33_650M_UR50D; M3B=synthetic:esm2_t36_3B_UR50D
C="tests.impls.packed"; ALL="$C:loop_packed $C:tiled_packed $C:blockdiag_packed esmfuzz.forward:packed_forward"
F="tests.faults.packed"
FAULTS="$F:low_precision_softmax $F:low_precision_accumulation $F:positions_run_on $F:rotary_table_over_stream"
fp() { name=$1; shift; python3 benchmarks/false_positives.py --budget "$budget" \
    --json "$out/$name.jsonl" "$@" > /dev/null 2>> "$out/log.txt" & }
for dtype in float16 bfloat16; do
    fp gpu-8M --model $M8 --device cuda --dtypes $dtype --seeds 1-10 --examples 2 --controls $ALL
    fp gpu-650M --model $M650 --device cuda --dtypes $dtype --seeds 1-10 --examples 2 \
        --layers checked --controls $ALL
    fp gpu-3B --model $M3B --device cuda --dtypes $dtype --seeds 1-3 --examples 2 \
        --layers checked --controls $ALL
done
for model in $M8 $M650; do
    fp gpu-faults --model $model --device cuda --dtypes float16 --seeds 1-2 --examples 2 \
        --layers checked --properties error_ratio --controls $FAULTS
done
for seeds in ${CPU_SEEDS:-1-3 4-6 7-9 10-12 13-15 16-17 18-20}; do
    OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES= fp cpu-8M --model $M8 --device cpu \
        --dtypes float16 --seeds "$seeds" --examples 2 --controls $ALL
done
wait
