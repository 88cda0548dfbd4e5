"""Reads the runs of benchmarks/blame_gpu.sh: per run its exit status, examples, skips,
nondeterminism, and every corpus case with the implementation it blames.

    python benchmarks/blame_report.py OUT
A case whose message names one of esmfuzz's own forwards as the one that failed is
listed under "blames esmfuzz" (there must be none).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OWN = ("implementation esmfuzz.forward:", "esmfuzz's")


def main(out: Path) -> int:
    exits = dict(line.split(" exit ") for line in (out / "exits.txt").read_text().split("\n")
                 if " exit " in line)
    wrong = 0
    for report in sorted(out.glob("*.json")):
        name = report.stem
        data = json.loads(report.read_text())
        rows = data["rows"]
        checked = sum(r["examples"] for r in rows)
        failing = sum(r["failures"] for r in rows)
        skipped = {reason: sum(item["targets"].values())
                   for reason, item in data.get("skipped", {}).items()}
        print(f"{name}: exit {exits.get(name, '?').strip()}, {len(rows)} targets, {checked} "
              f"examples checked, {failing} failing; skipped {skipped or 0}; unchecked "
              f"targets {data.get('unchecked') or 'none'}")
        for target, item in sorted(data.get("nondeterministic", {}).items()):
            print(f"  nondeterministic {target}: spread up to {item['worst']} vs {item['bound']} "
                  f"({item['where']}); reproduced {item['reproduced']}, noise {item['noise']}, "
                  f"finding {item['finding']}")
        for path in sorted((out / f"corpus-{name}").rglob("*.json")):
            case = json.loads(path.read_text())
            first = case["message"].splitlines()[0]
            blames_us = any(own in first for own in OWN)
            wrong += blames_us
            print(f"  case {path.name} [{case['status']}]{' BLAMES ESMFUZZ' if blames_us else ''}"
                  f": {first[:220]}")
    print(f"cases that blame esmfuzz's own forwards: {wrong}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
