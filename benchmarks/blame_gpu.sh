#!/usr/bin/env bash
# The GPU runs behind "never blame the code under test" (docs/performance.md, false-positives.md).
#   bash benchmarks/blame_gpu.sh jitter OUT   pytest fuzz/ (ci, 8M) on the two one-ulp
#        nondeterministic correct forwards, seeds 1-3, six runs side by side
#   bash benchmarks/blame_gpu.sh shared OUT   four pytest runs (ci, synthetic 35M, crowded and
#        very_long targets) on one GPU that a hog squeezes until memory runs out: from
#        $HOG_AFTER seconds in (default 12), it takes all but $LEAVE GiB (default 1) that is free
# Each run writes OUT/NAME.log, OUT/NAME.json (--esm-report) and OUT/corpus-NAME/;
# benchmarks/blame_report.py reads them. $SECONDS_LEFT bounds every run (default 500).
set -u
mode="$1"; out="$2"; mkdir -p "$out"
limit="${SECONDS_LEFT:-500}"
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
fuzz() {  # NAME SELECTION OPTIONS...
    name=$1; select=$2; shift 2
    timeout -s INT "$limit" python3 -m pytest fuzz/ -k "$select" -p no:cacheprovider \
        --esm-profile ci --esm-device cuda --esm-corpus "$out/corpus-$name" \
        --esm-report "$out/$name.json" "$@" > "$out/$name.log" 2>&1
    echo "$name exit $?" >> "$out/exits.txt"
}
case "$mode" in
jitter)
    for impl in jittery_packed jittery_attention_packed; do
        for seed in 1 2 3; do
            fuzz "$impl-$seed" "test_" --esm-seed "$seed" \
                --esm-packed-impl "tests.impls.packed:$impl" &
        done
    done
    wait ;;
shared)
    model=synthetic:esm2_t12_35M_UR50D
    python3 -c "from esmfuzz.models import synthetic_checkpoint as s; s('esm2_t12_35M_UR50D')"
    i=0
    for impl in tests.impls.packed:blockdiag_packed tests.impls.packed:tiled_packed \
                tests.impls.packed:leaky_packed esmfuzz.forward:packed_forward; do
        i=$((i + 1))
        fuzz "shared-$i" "crowded or very_long" --esm-model "$model" --esm-packed-impl "$impl" &
    done
    sleep "${HOG_AFTER:-12}"
    # The hog: every second, take all the device memory but ${LEAVE:-1} GiB that is free.
    timeout "$limit" python3 - <<'PY' > "$out/hog.log" 2>&1 &
import os, time, torch
leave, held = float(os.environ.get("LEAVE", "1")) * 2**30, []
while True:
    free, total = torch.cuda.mem_get_info()
    if free > leave + 2**26:
        try:
            held.append(torch.empty(int(free - leave), dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            pass
        print(f"{time.time():.0f} hog holds {sum(t.numel() for t in held) / 2**30:.1f} GiB, "
              f"{free / 2**30:.1f} GiB was free", flush=True)
    time.sleep(1)
PY
    wait $(jobs -p | head -n 4)
    kill %5 2>/dev/null ;;
esac
