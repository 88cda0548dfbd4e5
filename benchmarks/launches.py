"""Operations (kernel launches on a GPU) and read-backs per check, on fixed samples.

The same seeded samples for every checkout, so two trees compare one for one (examples
drawn by a soak run differ from run to run). Counted with :class:`esmfuzz.launches.
LaunchCounter` of this checkout, split into esmfuzz's forwards (every call of
``run_packed``/``run_padded``, the implementations under test among them) and the rest
of the check (the oracles' statistics, packing, read-backs).

    python benchmarks/launches.py                          # this checkout, synthetic 8M, CPU
    python benchmarks/launches.py --trees ../before .      # before and after
    python benchmarks/launches.py --model synthetic:esm2_t33_650M_UR50D --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROPERTIES = ("error_ratio", "isolation", "finite", "statistics", "packed_precision",
              "padding_invariance")


def measure(model: str, device: str, samples: int, seed: int) -> dict:
    """Per property: mean launches and read-backs per check, in forwards and the rest."""
    import importlib.util
    import random
    from collections import Counter

    import esmfuzz.harness as harness_module
    from esmfuzz.config import Config
    from esmfuzz.properties import Sample

    spec = importlib.util.spec_from_file_location("launches", REPO / "esmfuzz" / "launches.py")
    launches = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launches)

    counts: Counter = Counter()
    counter = launches.LaunchCounter(counts)
    for name in ("run_packed", "run_padded"):
        original = getattr(harness_module, name)

        def phased(*args, _original=original, **kwargs):
            with counter.phase("forwards"):
                return _original(*args, **kwargs)

        setattr(harness_module, name, phased)
    harness = harness_module.Harness(Config(model=model, device=device, dtype="float16"))
    rng = random.Random(seed)
    letters = "ACDEFGHIKLMNPQRSTVWY"

    def protein(longest: int) -> str:
        return "".join(rng.choice(letters) for _ in range(rng.randint(1, longest)))

    packs = [[protein(120) for _ in range(rng.randint(2, 6))] for _ in range(samples)]
    result = {}
    for prop in PROPERTIES:
        counts.clear()
        if hasattr(harness, "kept"):  # nothing kept from another property's checks
            harness.kept.clear()
        for seqs in packs:
            target = rng.randrange(len(seqs))
            sample = {
                "isolation": Sample(tuple(seqs), target=target,
                                    variant=(seqs[target], protein(30)), variant_target=0),
                "padding_invariance": Sample(tuple(seqs), target=target),
            }.get(prop, seqs)
            with counter:
                harness.check(prop, sample)
        result[prop] = {key: value / samples for key, value in sorted(counts.items())}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:esm2_t6_8M_UR50D")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trees", nargs="+", type=Path, default=[REPO])
    parser.add_argument("--json", help="append one JSON line per tree here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.model, args.device, args.samples, args.seed)))
        return
    for tree in args.trees:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(tree.resolve()), os.environ.get("PYTHONPATH")) if p)}
        done = subprocess.run(
            [sys.executable, __file__, "--one", "--model", args.model, "--device", args.device,
             "--samples", str(args.samples), "--seed", str(args.seed)],
            env=env, capture_output=True, text=True, cwd=tree)
        if done.returncode:
            sys.exit(f"{tree}: {done.stderr[-3000:]}")
        result = json.loads(done.stdout.splitlines()[-1])
        print(f"{tree}: {args.model} on {args.device}, {args.samples} fixed samples "
              f"(seed {args.seed}), per check")
        print(f"  {'property':<20}{'forwards':>10}{'rest':>8}{'total':>8}{'read-backs':>12}")
        for prop, c in result.items():
            forwards, rest = c.get("launches forwards", 0), c.get("launches checks", 0)
            reads = c.get("read-backs forwards", 0) + c.get("read-backs checks", 0)
            print(f"  {prop:<20}{forwards:>10.0f}{rest:>8.0f}{forwards + rest:>8.0f}"
                  f"{reads:>12.1f}")
        if args.json:
            with open(args.json, "a") as out:
                out.write(json.dumps({"tree": str(tree), "model": args.model,
                                      "device": args.device, "samples": args.samples,
                                      "seed": args.seed, "per_check": result}) + "\n")


if __name__ == "__main__":
    main()
