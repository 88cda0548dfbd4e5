"""How fast the soak profile fuzzes, and how busy it keeps the accelerator.

Runs the real fuzz targets the way ``esmfuzz soak`` does (one pytest process, the soak
profile, a time slice per target, statistics from :mod:`esmfuzz.runlog`) while
``nvidia-smi`` samples GPU utilization every 250 ms, and prints per target:

- examples/s and residues checked/s;
- the fraction of the target's wall time the GPU was busy (mean utilization over the
  samples taken while it fuzzed);
- where the time went: the property checks (with ``--timings``: split into forwards under
  test, baselines and the oracle, each waited for on the device) and the rest
  (generating examples, Hypothesis, the plugin).

Examples::

    python benchmarks/throughput.py --model synthetic:esm2_t33_650M_UR50D --seconds 30
    python benchmarks/throughput.py --device cpu --seconds 20 --targets "error_ratio and short"
    python benchmarks/throughput.py --workers 2 --seconds 60     # two GPUs, two xdist workers

``--timings`` waits for the GPU after every forward to attribute time, which costs the
overlap of one forward with the next: measure utilization without it, attribution with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = REPO / "fuzz" / "test_properties.py"
DEFAULT_TARGETS = (
    "error_ratio and short", "error_ratio and long", "error_ratio and crowded",
    "isolation and mixed", "packed_precision and medium", "finite and long",
    "statistics", "test_property[precision-medium]", "padding_invariance",
)


class GpuSampler:
    """``nvidia-smi`` utilization per GPU every ``ms``, timestamped on this clock."""

    def __init__(self, ms: int = 250):
        self.samples: list[tuple[float, int, float]] = []
        self.process = None
        if shutil.which("nvidia-smi") is None:
            return
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits",
             f"-lms={ms}"], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                index, busy = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), int(index), busy))

    def busy(self, start: float, end: float, gpus=None) -> float | None:
        values = [b for t, i, b in self.samples
                  if start <= t <= end and (gpus is None or i in gpus)]
        return sum(values) / len(values) / 100 if values else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()


def run(args) -> dict:
    logs = Path(tempfile.mkdtemp(prefix="esmfuzz-throughput-"))
    select = " or ".join(f"({t})" for t in args.targets)
    command = [sys.executable, "-m", "pytest", str(TARGETS), "-k", select, "-q",
               "-p", "no:cacheprovider", "--rootdir", str(logs),
               "--esm-profile", "soak", "--esm-soak-slice", str(args.seconds),
               "--esm-soak-log", str(logs / "{worker}.json"),
               "--esm-model", args.model, "--esm-device", args.device, "--esm-dtype", args.dtype,
               "--esm-corpus", str(logs / "corpus"), "--esm-database", str(logs / "examples"),
               *args.pytest_args]
    if args.workers > 1:
        command += ["-n", str(args.workers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.pop("CI", None)
    if args.timings:
        env["ESMFUZZ_TIMINGS"] = "1"
    sampler = GpuSampler()
    began = time.time()
    done = subprocess.run(command, env=env, cwd=logs, capture_output=True, text=True)
    ended = time.time()
    sampler.stop()
    if done.returncode not in (0, 1):
        sys.exit(f"pytest failed ({done.returncode}):\n{done.stdout[-4000:]}{done.stderr[-2000:]}")
    processes = [json.loads(p.read_text()) for p in sorted(logs.glob("*.json"))]
    if not any(t["examples"] for p in processes for t in p["targets"].values()):
        sys.exit(f"no example ran; pytest said:\n{done.stdout[-6000:]}{done.stderr[-2000:]}")
    rows = []
    for proc in processes:
        gpu = _gpu_index(proc.get("device", ""))
        for name, t in sorted(proc["targets"].items()):
            start = (t.get("began") or [t.get("first") or began])[0]
            end = t.get("last") or start
            wall = max(end - start, 1e-9)
            rows.append({
                "target": name, "worker": proc["worker"], "device": proc["device"],
                "examples": t["examples"], "examples_per_s": t["examples"] / wall,
                "residues_per_s": t.get("residues", 0) / wall,
                "gpu_busy": sampler.busy(start, end, None if gpu is None else {gpu}),
                "check_share": t.get("check_seconds", 0.0) / wall,
                "phases": {k: v / wall for k, v in t.get("phases", {}).items()},
                "wall_s": wall,
            })
    starts = [r for p in processes for t in p["targets"].values() for r in (t.get("began") or [])]
    ends = [t["last"] for p in processes for t in p["targets"].values() if t.get("last")]
    active = (min(starts), max(ends)) if starts and ends else (began, ended)
    total = sum(r["examples"] for r in rows)
    return {
        "model": args.model, "device": args.device, "dtype": args.dtype, "workers": args.workers,
        "seconds_per_target": args.seconds, "timings": args.timings, "rows": rows,
        "examples": total, "examples_per_s": total / max(active[1] - active[0], 1e-9),
        "gpu_busy": sampler.busy(*active), "wall_s": ended - began,
        "fuzzing_s": active[1] - active[0],
    }


def _gpu_index(device: str) -> int | None:
    head = device.split()[0] if device else ""
    if head.startswith("cuda"):
        return int(head.split(":")[1]) if ":" in head else 0
    return None


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def show(result: dict) -> None:
    print(f"model {result['model']} on {result['device']}, {result['dtype']}, "
          f"{result['workers']} worker(s), {result['seconds_per_target']:g} s per target"
          + (", forwards timed" if result["timings"] else ""))
    print(f"{'target':<32}{'worker':<7}{'examples':>9}{'ex/s':>8}{'res/s':>9}{'GPU busy':>10}"
          f"{'checks':>8}  forwards (share of wall time)")
    for r in result["rows"]:
        phases = ", ".join(f"{k} {_pct(v)}" for k, v in sorted(r["phases"].items()))
        print(f"{r['target']:<32}{r['worker']:<7}{r['examples']:>9}{r['examples_per_s']:>8.2f}"
              f"{r['residues_per_s']:>9.0f}{_pct(r['gpu_busy']):>10}{_pct(r['check_share']):>8}"
              f"  {phases}")
    print(f"all targets: {result['examples']} examples in {result['fuzzing_s']:.0f} s of fuzzing "
          f"({result['examples_per_s']:.2f}/s), GPU busy {_pct(result['gpu_busy'])}; "
          f"{result['wall_s']:.0f} s with start-up and model loading")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:esm2_t6_8M_UR50D")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--seconds", type=float, default=30.0, help="time slice per target")
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS),
                        help="pytest -k expressions, one per target")
    parser.add_argument("--workers", type=int, default=1, help="pytest-xdist workers")
    parser.add_argument("--timings", action="store_true", help="time each kind of forward")
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    parser.add_argument("pytest_args", nargs="*", help="more pytest options, after --")
    args = parser.parse_args(argv)
    result = run(args)
    show(result)
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
