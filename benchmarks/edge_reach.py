"""Print how often a ci-profile run of each fuzz target hits each kind of edge.

For every target of ``pytest fuzz/`` and every kind of edge it can reach
(``esmfuzz.edges``), the share of seeds whose run drew a sample on that edge, drawn as
``pytest fuzz/ --esm-profile ci --esm-seed N`` draws (no model runs: the code under test
is taken to pass). The last table gives, per kind, the least share over the targets::

    python benchmarks/edge_reach.py --seeds 1-100
    python benchmarks/edge_reach.py --seeds 1-50 --device cuda --edges
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esmfuzz.config import Config, read_pyproject  # noqa: E402
from esmfuzz.edges import CLASSES  # noqa: E402
from esmfuzz.reach import edge_reach  # noqa: E402


def _seeds(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_seeds, default=_seeds("1-100"), help="e.g. 1-200")
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--device", default="cpu",
                        help="the device the run would use (the crowded limits depend on it)")
    parser.add_argument("--edges", action="store_true", help="also print every single edge")
    args = parser.parse_args()

    config = Config.from_mapping({**read_pyproject(ROOT), "device": args.device})
    start = time.perf_counter()
    result = edge_reach(config, profile=args.profile, seeds=args.seeds)
    seconds = time.perf_counter() - start
    n = len(args.seeds)
    print(f"profile {args.profile}, device {args.device}, seeds {args.seeds.start}-"
          f"{args.seeds.stop - 1} ({n} runs per target), {seconds:.0f} s")
    print(f"{'target':<30}" + "".join(f"{c:>16}" for c in CLASSES))
    least: dict[str, tuple[float, str]] = {}
    for (prop, stratum), found in result.items():
        name = f"{prop}[{stratum or 'mixed'}]"
        cells = []
        for kind in CLASSES:
            if kind not in found["classes"]:
                cells.append(f"{'-':>16}")
                continue
            share = found["classes"][kind] / n
            cells.append(f"{share:>16.3f}")
            if kind not in least or share < least[kind][0]:
                least[kind] = (share, name)
        print(f"{name:<30}" + "".join(cells))
        if args.edges:
            for edge, count in found["edges"].items():
                print(f"    {edge:<52}{count / n:.3f}")
    print("\nleast share per kind of edge, over the targets that can reach it:")
    for kind in CLASSES:
        if kind in least:
            share, name = least[kind]
            print(f"  {kind:<16}{share:.3f}  ({name})")


if __name__ == "__main__":
    main()
