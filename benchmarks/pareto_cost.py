"""What Hypothesis's Pareto front costs a soak, per example, on esmfuzz's strategies.

Where a database is set (the soak profile), Hypothesis keeps a Pareto front of targeted
examples: every example that reports ``target()`` is tested for dominance against the
front, each test computing two examples' shortlex keys over every choice, and each new
member is saved to the database, to be replayed when the target starts again. esmfuzz's
fuzz targets run without it (``esmfuzz.session.without_pareto_front``).

This runs each target's strategy under the soak profile's settings with a body that does
nothing but report a score as ``check_example`` does (a fixed pseudo-random number per
sample, standing in for the margin), so the time per example is Hypothesis's own and the
strategy's, no model. Three modes: a database and the front (Hypothesis as it is), a
database without the front (esmfuzz's fuzz targets), no database. Per target and mode:
milliseconds per example, median (min-max) over ``--runs``, and the entries the run left
in the database (the front's, where kept: a slice of the same target replays them all
before drawing anything new; without it, two: the example the run stopped on, which
Hypothesis keeps as it keeps any example that raised, and the database's list of keys).

    python benchmarks/pareto_cost.py --seconds 4 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import statistics
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIX = [("error_ratio", "short"), ("error_ratio", "long"), ("error_ratio", "very_long"),
       ("error_ratio", "crowded"), ("finite", "long"), ("finite", "very_long"),
       ("isolation", "mixed"), ("packed_precision", "medium"), ("padding_invariance", "mixed"),
       ("statistics", "mixed")]
"""The 10 targets of benchmarks/plans/throughput-23.sh's 8 selections."""

MODES = ("front", "no front", "no database")


class _Spent(unittest.SkipTest):
    """Ends a run: Hypothesis re-raises skips at once, as esmfuzz's SliceOver."""


def _score(sample) -> float:
    digest = hashlib.sha256("\n".join(sample.sequences).encode()).digest()
    return -int.from_bytes(digest[:4], "big") / 2**32


FIRST = 40
"""Examples whose size and repeats are compared: about what one worker's 10-s slice of a
650M target checks."""


def run_target(strategy, mode: str, seconds: float) -> dict[str, float]:
    """One run of ``strategy``: its examples, seconds and the database entries it left;
    over its first :data:`FIRST` examples, the mean residues and the share of distinct
    samples (the front's optimiser replays and simplifies, so what is drawn may differ)."""
    from hypothesis import given, settings, target
    from hypothesis.database import DirectoryBasedExampleDatabase
    from hypothesis.reporting import with_reporter

    from esmfuzz.config import hypothesis_settings
    from esmfuzz.session import without_pareto_front

    with tempfile.TemporaryDirectory() as directory:
        database = DirectoryBasedExampleDatabase(directory) if mode != "no database" else None
        drawn: list[tuple[str, ...]] = []
        start = time.perf_counter()

        @settings(hypothesis_settings("soak"), database=database)
        @given(sample=strategy)
        def test(sample):
            drawn.append(tuple(sample.sequences))
            target(_score(sample), label="margin")
            if time.perf_counter() - start > seconds:
                raise _Spent

        front = contextlib.nullcontext() if mode == "front" else without_pareto_front()
        try:
            with with_reporter(lambda text: None), front:
                test()
        except _Spent:
            pass
        wall = time.perf_counter() - start
        entries = sum(1 for p in Path(directory).rglob("*") if p.is_file())
    first = drawn[:FIRST]
    return {"examples": len(drawn), "seconds": wall, "left": entries,
            "residues": statistics.mean(sum(map(len, s)) for s in first) if first else 0.0,
            "distinct": len(set(first)) / max(len(first), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per target, mode and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--draws-for", default="cuda", choices=("cuda", "cpu"),
                        help="the device whose soak limits the strategies take (crowded packs)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs {args.runs} must be at least 1")

    from esmfuzz.config import Config, read_pyproject
    from esmfuzz.reach import profile_config
    from esmfuzz.registry import PROPERTIES

    config = profile_config(
        Config.from_mapping({**read_pyproject(ROOT), "device": args.draws_for}), "soak")
    print(f"soak profile, draws for {args.draws_for}, {args.seconds:g} s per target, mode and "
          f"run, {args.runs} runs; ms per example, median (min-max); database entries left; "
          f"over the first {FIRST} examples, mean residues and distinct share (medians)")
    print(f"{'target':<28}" + "".join(f"{mode:>44}" for mode in MODES))
    for prop, stratum in MIX:
        strategy = PROPERTIES[prop].samples(config, stratum)
        cells = []
        for mode in MODES:
            runs = [run_target(strategy, mode, args.seconds) for _ in range(args.runs)]
            per = [1000 * r["seconds"] / max(r["examples"], 1) for r in runs]
            middle = {key: statistics.median(r[key] for r in runs)
                      for key in ("left", "residues", "distinct")}
            cells.append(f"{statistics.median(per):6.1f} ({min(per):.1f}-{max(per):.1f}), "
                         f"{middle['left']:>3g} left, {middle['residues']:5.0f} res "
                         f"{middle['distinct']:4.0%}")
        print(f"{prop + '[' + stratum + ']':<28}" + "".join(f"{c:>44}" for c in cells),
              flush=True)


if __name__ == "__main__":
    main()
