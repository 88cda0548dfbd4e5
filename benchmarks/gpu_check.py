"""Measure the packed paths on a GPU: error ratio, NaN-freedom, noise floors, throughput.

Prints one table and writes the figures as JSON (``--json PATH``). Run on a CUDA
machine, for example::

    python benchmarks/gpu_check.py --models esm2_t6_8M_UR50D esm2_t33_650M_UR50D \\
        --dtypes float16 bfloat16 --backend torch-varlen --layouts 24 --json gpu.json

Every figure comes from esmfuzz's own oracles (``Harness.check``), so what this
prints is what the fuzz targets would decide on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from esmfuzz.alphabet import MASK, STANDARD_RESIDUES
from esmfuzz.config import Config
from esmfuzz.forward import packed_forward, padded_forward, run_packed, run_padded
from esmfuzz.harness import harness_for
from esmfuzz.properties import Sample


def layouts(count: int, seed: int) -> list[list[str]]:
    """Mixed packs of 1 to 16 sequences, with <mask> tokens, length-1 and long sequences."""
    rng = random.Random(seed)

    def sequence(length: int) -> str:
        residues = [rng.choice(STANDARD_RESIDUES) for _ in range(length)]
        for i in rng.sample(range(length), k=min(length, rng.choice([0, 0, 1, 3]))):
            residues[i] = MASK
        return "".join(residues)

    packs = [["A"], [sequence(1022)], [sequence(1), sequence(1022), sequence(1)]]
    while len(packs) < count:
        n = rng.randint(1, 16)
        lengths = [rng.choice([1, rng.randint(2, 60), rng.randint(60, 300), rng.randint(300, 1022)])
                   for _ in range(n)]
        packs.append([sequence(k) for k in lengths])
    return packs[:count]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(model: str, dtype: str, backend: str, count: int, seed: int,
            device: str = "cuda") -> dict:
    config = Config(model=f"synthetic:{model}", device=device, dtype=dtype, backend=backend)
    harness = harness_for(config)
    pair = harness.pair
    packs = layouts(count, seed)
    ratio, finite_ok, worst = 0.0, True, None
    for pack in packs:
        verdict = harness.check("error_ratio", pack, layers=harness.all_layers)
        if verdict.value > ratio:
            ratio, worst = verdict.value, (verdict.worst, verdict.metric)
        finite_ok &= harness.check("finite", pack, layers=harness.all_layers).ok
    # The same sequence in two different packs / padded alone vs among others.
    rng = random.Random(seed + 1)
    iso, pad = 0.0, 0.0
    for pack in packs[3:]:
        if len(pack) < 2:
            continue
        target = rng.randrange(len(pack))
        others = [s for i, s in enumerate(pack) if i != target and s != pack[target]]
        if not others:
            continue
        variant = [pack[target]] + others[::-1]
        layers = harness.all_layers
        sample = Sample([pack[target], *others], 0, variant, 0)
        iso = max(iso, harness.check("isolation", sample, layers=layers).value)
        pad = max(pad, harness.check("padding_invariance", Sample(pack, target),
                                     layers=layers).value)
    # Throughput of the candidate: packed vs padded, the same 16-sequence mixed packs.
    bench = [p for p in packs if len(p) >= 8] or packs
    tokens = sum(len(s) + 2 for p in bench for s in p)
    timings = {}
    last = [pair.num_layers]
    for name, run in (
        ("packed", lambda p: run_packed(packed_forward, pair.candidate, pair.alphabet, p, last,
                                        backend=harness.backend)),
        ("padded", lambda p: run_padded(padded_forward, pair.candidate, pair.alphabet, p, last)),
    ):
        for p in bench[:2]:
            run(p)
        _sync()
        start = time.perf_counter()
        for p in bench:
            run(p)
        _sync()
        timings[name] = tokens / (time.perf_counter() - start)
    return {
        "model": model, "dtype": dtype, "backend": harness.backend, "layouts": len(packs),
        "error_ratio_max": ratio, "error_ratio_worst": worst,
        "threshold": harness.thresholds.error_ratio, "nan_free": finite_ok,
        "isolation_context_ratio_max": iso, "padding_context_ratio_max": pad,
        "tokens_per_s_packed": timings["packed"], "tokens_per_s_padded": timings["padded"],
        "oracle": pair.oracle_note,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["esm2_t6_8M_UR50D"])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--backend", default="torch-varlen")
    parser.add_argument("--layouts", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    print(f"{'model':<22}{'dtype':<10}{'backend':<14}{'ratio max':>10}{'NaN-free':>9}"
          f"{'iso ctx':>9}{'pad ctx':>9}{'packed tok/s':>14}{'padded tok/s':>14}")
    for model in args.models:
        for dtype in args.dtypes:
            row = measure(model, dtype, args.backend, args.layouts, args.seed, args.device)
            rows.append(row)
            print(f"{model:<22}{dtype:<10}{row['backend']:<14}{row['error_ratio_max']:>10.3f}"
                  f"{str(row['nan_free']):>9}{row['isolation_context_ratio_max']:>9.2f}"
                  f"{row['padding_context_ratio_max']:>9.2f}{row['tokens_per_s_packed']:>14,.0f}"
                  f"{row['tokens_per_s_padded']:>14,.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
