"""Time to catch and shrink seeded faults: the real ``pytest fuzz/ -x`` under the ci profile.

Per fault of ``tests.faults.FAULTS`` and per seed, one run (``--esm-seed N``, the fault
plugged in by option): whether it was caught, the run's wall time (model loading
included), the target that caught it, its examples and shrink steps, and the shrunk case's
sequence lengths. The median and range over the seeds close each fault::

    python benchmarks/shrink_time.py --faults at_1022_residues --seeds 1 2
    python benchmarks/shrink_time.py --faults leak_past_2048_tokens --seeds 1 2 3 \\
        --extra=--esm-device=cuda --json results.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esmfuzz.alphabet import residue_count  # noqa: E402
from tests.faults import FAULTS  # noqa: E402
from tests.faults.run import run_fuzz  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    parser.add_argument("--extra", action="append", default=[], help="extra pytest option")
    parser.add_argument("--json", type=Path, help="append one JSON line per run")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    by_name = {fault.name: fault for fault in FAULTS}
    unknown = [name for name in args.faults if name not in by_name]
    if unknown:
        raise SystemExit(f"--faults: unknown {unknown}; choose from {sorted(by_name)}")
    for name in args.faults:
        fault = by_name[name]
        times = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as work:
                run = run_fuzz(fault.options, Path(work), select=fault.select,
                               extra=(*args.extra, "--esm-seed", seed), timeout=args.timeout)
            row = run.first_failing_row or {}
            case = run.smallest_case
            out = {
                "fault": name, "seed": seed, "caught": run.caught, "seconds": round(run.seconds, 1),
                "target": f"{row.get('property')}[{row.get('stratum')}]" if row else None,
                "examples": row.get("examples"), "shrink_steps": row.get("shrink_calls"),
                "case_lengths": [residue_count(s) for s in case.sequences] if case else None,
                "shrink_note": next((line for line in (case.message if case else "").splitlines()
                                     if "shrunk by" in line), None),
                "options": [*fault.options, *args.extra],
            }
            times.append(run.seconds)
            print(json.dumps(out), flush=True)
            if not run.caught:
                print(run.output[-2000:], flush=True)
            if args.json:
                with args.json.open("a") as handle:
                    handle.write(json.dumps(out) + "\n")
        print(f"{name}: median {statistics.median(times):.1f} s, min {min(times):.1f}, "
              f"max {max(times):.1f} over seeds {' '.join(args.seeds)}", flush=True)


if __name__ == "__main__":
    main()
