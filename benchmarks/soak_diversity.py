"""How diverse the examples of a soak run were, next to those of a plain ``pytest fuzz/``.

For a soak run directory (``esmfuzz soak --run-dir DIR``), from its ``statistics.json``:
layouts checked, the share of single-sequence packs, the largest pack (sequences and
tokens, as histogram bins), the rare residues and ``<mask>`` seen. With ``--pytest
PROFILE``, the same for what ``pytest fuzz/`` draws under that profile (every target, seeds
``--seeds``, drawn without a model through :func:`esmfuzz.reach.draws`), for comparison.

    python benchmarks/soak_diversity.py soak-runs/A soak-runs/B --pytest quick --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esmfuzz.alphabet import MASK, RARE_RESIDUES, layout_residues  # noqa: E402
from esmfuzz.runlog import REACH_BINS, bin_of  # noqa: E402


def _largest(histogram: dict) -> str:
    def low(label: str) -> float:
        return float(label.lstrip(">").split("-")[0]) + (0.5 if label.startswith(">") else 0)

    filled = [label for label, n in histogram.items() if n]
    return max(filled, key=low) if filled else "-"


def of_soak(run_dir: Path) -> dict:
    stats = json.loads((run_dir / "statistics.json").read_text())
    layouts, single, masks = 0, 0, 0
    packs, tokens, residues = Counter(), Counter(), Counter()
    examples = Counter()
    for proc in stats["processes"]:
        reach = proc.get("reach") or proc.get("coverage") or {}
        layouts += reach.get("layouts", 0)
        masks += reach.get("layouts_with_mask", 0)
        packs.update(reach.get("sequences_per_pack", {}))
        tokens.update(reach.get("tokens_per_pack", {}))
        residues.update(reach.get("rare_and_mask_residues", {}))
        for name, row in proc.get("targets", {}).items():
            examples[name] += row.get("examples", 0)
    single = packs.get("1", 0)
    return {"source": str(run_dir), "elapsed_s": round(stats["run"]["elapsed"]),
            "targets_run": sum(1 for n in examples.values() if n),
            "examples": sum(examples.values()), "layouts": layouts,
            "single_sequence_share": round(single / layouts, 3) if layouts else None,
            "largest_pack_sequences": _largest(packs), "largest_pack_tokens": _largest(tokens),
            "rare_and_mask": dict(sorted(residues.items())), "layouts_with_mask": masks,
            "failures": sum(len(p.get("failures", [])) for p in stats["processes"])}


def of_pytest(profile: str, seeds: list[int]) -> dict:
    from esmfuzz.config import Config
    from esmfuzz.reach import draws, profile_config
    from esmfuzz.registry import targets

    config = profile_config(Config(device="cpu"), profile)
    layouts, single, masks = 0, 0, 0
    packs, tokens, residues = Counter(), Counter(), Counter()
    for seed in seeds:
        for target in targets():
            for sample in draws(target, config, profile=profile, seed=seed):
                for layout in (sample.sequences, sample.variant or ()):
                    if not layout:
                        continue
                    lengths, found = layout_residues(layout)
                    layouts += 1
                    single += len(lengths) == 1
                    masks += MASK in found
                    packs[bin_of(len(lengths), REACH_BINS["sequences_per_pack"])] += 1
                    tokens[bin_of(sum(lengths) + 2 * len(lengths),
                                  REACH_BINS["tokens_per_pack"])] += 1
                    residues.update(r for r in found if r in RARE_RESIDUES or r == MASK)
    return {"source": f"pytest fuzz/ --esm-profile {profile}, seeds {seeds} (drawn)",
            "layouts": layouts, "single_sequence_share": round(single / layouts, 3),
            "largest_pack_sequences": _largest(packs), "largest_pack_tokens": _largest(tokens),
            "rare_and_mask": dict(sorted(residues.items())), "layouts_with_mask": masks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="soak run directories")
    parser.add_argument("--pytest", metavar="PROFILE", help="also what pytest fuzz/ draws")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    args = parser.parse_args(argv)
    for run in args.runs:
        print(json.dumps(of_soak(run)))
    if args.pytest:
        print(json.dumps(of_pytest(args.pytest, args.seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
