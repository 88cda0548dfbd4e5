"""Tabulate benchmarks/false_positives.py output: the worst value per property and setting.

    python benchmarks/fp_report.py docs/data/fp-*.jsonl.gz > table.md

One row per (run, model, device, dtype, property): the seeds covered in every stratum of
the property (and how many more only in some), the controls, the number of samples
checked, and the worst value with where it occurred, next to the bound it is judged
against today (``Thresholds()``) and the factor of headroom left. ``--combine NAME``
pools the files into one run, ``--properties`` keeps only those properties: a sweep
continued over several calls is then one table row per setting.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esmfuzz.properties import Thresholds  # noqa: E402

_BOUND = {"error_ratio": "error_ratio", "context_ratio": "context_ratio",
          "sequence_cosine": "sequence_cosine", "token_cosine_min": "token_cosine"}


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _seeds(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds))


def _covered(rows: list[dict]) -> str:
    """The seeds present in every stratum of ``rows``, and how many more in only some."""
    by_stratum = collections.defaultdict(set)
    for row in rows:
        by_stratum[row["stratum"]].add(row["seed"])
    every = set.intersection(*by_stratum.values())
    some = set.union(*by_stratum.values()) - every
    text = _seeds(sorted(every)) if every else "none"
    return text + (f" (+{len(some)} in some strata)" if some else "")


def _headroom(row: dict, th: Thresholds) -> str:
    name = _BOUND.get(row["metric"])
    bound = getattr(th, name) if name else row["bound"]
    if row["metric"] == "non_finite":
        return "-"
    if row["metric"] in ("sequence_cosine", "token_cosine_min"):
        gap = 1 - row["value"]
        return f"{(1 - bound) / gap:.3g}x" if gap > 0 else "exact"
    return f"{bound / row['value']:.3g}x" if row["value"] > 0 else "exact"


def margins(faults: list[Path], controls: list[Path]) -> None:
    """Per fault (error_ratio rows): its largest value against today's bound k, and that
    value over the worst value any control reached on the same target (model, device)."""
    from tests.faults import FAULTS

    worst: dict = {}
    for path in controls:
        for row in _rows(path):
            key = (row["model"], row["device"], row["property"], row["stratum"])
            if key not in worst or row["severity"] > worst[key]["severity"]:
                worst[key] = row
    best: dict = {}
    for path in faults:
        for row in _rows(path):
            name = row["control"]
            value = row["value"] if row["value"] == row["value"] else float("inf")
            if name not in best or value > best[name][0]:
                best[name] = (value, row)
    print("| fault | bug class | caught by (stratum) | detecting value (bound) | worst control "
          "on that target | beyond the controls |")
    print("|---|---|---|---|---|---|")
    for fault in FAULTS:
        if fault.options[1] not in best:
            print(f"| `{fault.name}` | {fault.bug_class} | not measured | | | |")
            continue
        severity, row = best[fault.options[1]]
        caught = "caught" if severity > Thresholds().error_ratio else "NOT caught"
        model = row["model"].split(":")[-1].replace("esm2_", "").replace("_UR50D", "")
        control = worst.get((row["model"], row["device"], row["property"], row["stratum"]))
        value = "NaN" if row["value"] != row["value"] else f"{row['value']:.3g}"
        if control is None:
            shown, factor = "not measured", "-"
        else:
            shown = f"{control['value']:.3g} ({control['control'].rpartition(':')[2]})"
            factor = ("NaN: categorical" if severity == float("inf")
                      else f"{severity / max(control['value'], 1e-12):.3g}x")
        print(f"| `{fault.name}` | {fault.bug_class} | {caught}: `{row['property']}` "
              f"({model} {row['device']}, {row['stratum']}, {row['path']}, layer "
              f"{row['layer']}) | {value} ({Thresholds().error_ratio:g}) | {shown} | {factor} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--faults", nargs="+", type=Path,
                        help="fault rows: print the detection-margin table instead, with "
                             "FILES as the control rows")
    parser.add_argument("--combine", metavar="NAME", help="pool the files into one run NAME")
    parser.add_argument("--properties", nargs="+", help="only these properties")
    args = parser.parse_args(argv)
    if args.faults:
        margins(args.faults, args.files)
        return 0
    th = Thresholds()
    print("| run | model | device | dtype | property | seeds | controls | samples | worst value "
          "(path, layer, stratum) | bound today | headroom |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    runs = [(args.combine, args.files)] if args.combine else [
        (path.name.split(".")[0], [path]) for path in args.files]
    for run, paths in runs:
        groups = collections.defaultdict(list)
        for row in (row for path in paths for row in _rows(path)):
            if row["examples"] and (not args.properties or row["property"] in args.properties):
                model = row["model"].split(":")[-1].replace("esm2_", "").replace("_UR50D", "")
                groups[(model, row["device"], row["dtype"], row["property"])].append(row)
        for (model, device, dtype, prop), rows in sorted(groups.items()):
            worst = max(rows, key=lambda r: r["severity"])
            controls = sorted({r["control"].rpartition(":")[2] for r in rows})
            name = _BOUND.get(worst["metric"])
            bound = f"{getattr(th, name):g}" if name else f"{worst['bound']:g}"
            where = ", ".join(str(x) for x in (worst["path"] or "-", f"layer {worst['layer']}",
                                               worst["stratum"]))
            print(f"| {run} | {model} | {device} | {dtype} | `{prop}` | {_covered(rows)} | "
                  f"{', '.join(controls)} | "
                  f"{sum(r['examples'] for r in rows)} | {worst['metric']}="
                  f"{worst['value']:.4g} ({where}) | {bound} | {_headroom(worst, th)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
