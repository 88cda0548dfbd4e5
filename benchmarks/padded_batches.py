"""Tokens and calls of esmfuzz's padded forwards on the examples each fuzz target draws.

Every padded forward (fair-esm's baseline, the FP32 path, the float64 oracle) splits a
pack into :func:`esmfuzz.forward.length_buckets` batches. This draws each target's
examples (the soak profile's crowded limits for ``--device``; the dev profile's draws,
``--examples`` per target, ``--seed``; no model runs) and prints, per target, the tokens of the
sequences, the padded tokens, the calls and the largest batch now (at most
``PADDED_BATCH_TOKENS`` tokens a batch), beside the same rule without that cap::

    python benchmarks/padded_batches.py --device cuda --examples 40 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esmfuzz.alphabet import residue_count  # noqa: E402
from esmfuzz.config import Config, read_pyproject  # noqa: E402
from esmfuzz.forward import length_buckets  # noqa: E402
from esmfuzz.reach import draws, profile_config  # noqa: E402
from esmfuzz.registry import targets  # noqa: E402


def _before(lengths: list[int]) -> list[list[int]]:
    """The batches of main at 9eb36b0: the same rule without the cap on a batch's tokens."""
    return length_buckets(lengths, max_tokens=sys.maxsize)


def _padded(lengths: list[int], groups: list[list[int]]) -> tuple[int, int, int]:
    """(padded tokens, calls, the largest batch's padded tokens)."""
    sizes = [len(g) * (max(lengths[i] for i in g) + 2) for g in groups]
    return sum(sizes), len(groups), max(sizes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="whose crowded limits (cpu, cuda)")
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    config = profile_config(Config.from_mapping({**read_pyproject(ROOT), "device": args.device}),
                            "soak")
    print(f"soak limits on {args.device}: {config.crowd_sequences} sequences, "
          f"{config.crowd_tokens} tokens per crowded pack; {args.examples} examples per "
          f"target, seed {args.seed}")
    print(f"{'target':<28}{'tokens':>9}{'padded before':>15}{'calls':>7}{'largest':>9}"
          f"{'padded now':>12}{'calls':>7}{'largest':>9}")
    totals = [0] * 5
    for target in targets():
        row = [0] * 5
        most = [0, 0]
        for sample in draws(target, config, profile="dev", seed=args.seed,
                            max_examples=args.examples):
            lengths = [residue_count(s) for s in sample.sequences]
            before = _padded(lengths, _before(lengths))
            now = _padded(lengths, length_buckets(lengths))
            for k, value in enumerate((sum(n + 2 for n in lengths), *before[:2], *now[:2])):
                row[k] += value
            most = [max(most[0], before[2]), max(most[1], now[2])]
        totals = [t + r for t, r in zip(totals, row)]
        name = f"{target[0]}[{target[1] or 'mixed'}]"
        print(f"{name:<28}{row[0]:>9}{row[1]:>15}{row[2]:>7}{most[0]:>9}{row[3]:>12}"
              f"{row[4]:>7}{most[1]:>9}")
    print(f"{'all':<28}{totals[0]:>9}{totals[1]:>15}{totals[2]:>7}{'':>9}{totals[3]:>12}"
          f"{totals[4]:>7}")
    print(f"padded tokens now / before: {totals[3] / totals[1]:.3f}; calls: "
          f"{totals[4] / totals[2]:.3f}")


if __name__ == "__main__":
    main()
