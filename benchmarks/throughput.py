"""How fast the soak profile fuzzes, and how busy it keeps the accelerator.

Runs the real fuzz targets the way ``esmfuzz soak`` does (one pytest process, the soak
profile, a time slice per target, statistics from :mod:`esmfuzz.runlog`) while
``nvidia-smi`` samples GPU utilization every 250 ms, and prints per target:

- examples/s and residues checked/s;
- the fraction of the target's wall time the GPU was busy (mean utilization over the
  samples taken while it fuzzed);
- where the time went: the property checks (with ``--timings``: split into forwards under
  test, baselines and the oracle, each waited for on the device, and the same forwards
  again by dtype, ``in float32``) and the rest
  (generating examples, Hypothesis, the plugin);
- with ``--launches``: the operations (on a GPU, kernel launches) and read-backs per
  example, by kind of forward and the checks (:mod:`esmfuzz.launches`).

The selection runs ``--runs`` times (default 3); the summary gives each figure as the
median (min-max) of the runs, and the fraction of the FP64-oracle roofline reached: the
residues/s the float64 oracle alone could check at the device's measured float64 matmul
rate, 2 FLOP per parameter and residue.

Examples::

    python benchmarks/throughput.py --model synthetic:esm2_t33_650M_UR50D --seconds 30
    python benchmarks/throughput.py --device cpu --seconds 20 --targets "error_ratio and short"
    python benchmarks/throughput.py --workers auto --seconds 15   # as esmfuzz soak --workers auto
    python benchmarks/throughput.py --trees ../before . --runs 3  # before and after, alternated

``--timings`` waits for the GPU after every forward to attribute time, which costs the
overlap of one forward with the next: measure utilization without it, attribution with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from esmfuzz.mps import MODES as MPS_MODES

REPO = Path(__file__).resolve().parents[1]
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


def run(args, workers: int, number: int = 1, tree: Path = REPO, sharing=None) -> dict:
    """One run: every selected target for ``args.seconds`` in one pytest session, with the
    esmfuzz and fuzz targets of the checkout ``tree``."""
    logs = Path(tempfile.mkdtemp(prefix="esmfuzz-throughput-"))
    select = " or ".join(f"({t})" for t in args.targets)
    command = [sys.executable, "-m", "pytest", str(tree / "fuzz" / "test_properties.py"),
               "-k", select, "-q",
               "-p", "no:cacheprovider", "--rootdir", str(logs),
               "--esm-profile", "soak", "--esm-soak-slice", str(args.seconds),
               "--esm-soak-log", str(logs / "{worker}.json"),
               "--esm-model", args.model, "--esm-device", args.device, "--esm-dtype", args.dtype,
               "--esm-corpus", str(logs / "corpus"), "--esm-database", str(logs / "examples"),
               *args.pytest_args]
    if workers > 1:
        command += ["-n", str(workers), "--dist", args.dist]
    env = {**os.environ, **(sharing.env if sharing else {}), "PYTHONPATH": os.pathsep.join(
        p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)}
    env.pop("CI", None)
    if args.launches:
        env["ESMFUZZ_TIMINGS"] = "launches"
    elif args.timings:
        env["ESMFUZZ_TIMINGS"] = "1"
    sampler = GpuSampler()
    began = time.time()
    done = subprocess.run(command, env=env, cwd=logs, capture_output=True, text=True)
    ended = time.time()
    sampler.stop()
    processes = [json.loads(p.read_text()) for p in sorted(logs.glob("*.json"))]
    described = {
        "run": number, "tree": str(tree), "model": args.model, "device": args.device,
        "device_name": processes[0].get("device", args.device) if processes else args.device,
        "dtype": args.dtype, "workers": workers, "workers_asked": args.workers,
        "targets": list(args.targets), "dist": args.dist if workers > 1 else None,
        "sharing": sharing.why if sharing else None,
        "seconds_per_target": args.seconds, "timings": args.timings, "launches": args.launches,
    }
    failed = (f"pytest exited {done.returncode}" if done.returncode not in (0, 1) else
              "no example ran" if not any(t["examples"] for p in processes
                                          for t in p["targets"].values()) else None)
    if failed:
        return {**described, "failed": failed, "wall_s": ended - began,
                "output": done.stdout[-4000:] + done.stderr[-2000:]}
    rows = []
    for proc in processes:
        gpu = _gpu_index(proc.get("device", ""))
        for name, t in sorted(proc["targets"].items()):
            start = (t.get("began") or [t.get("first") or began])[0]
            end = t.get("last") or start
            wall = max(end - start, 1e-9)
            phases = t.get("phases", {})
            rows.append({
                "target": name, "worker": proc["worker"], "device": proc["device"],
                "examples": t["examples"], "examples_per_s": t["examples"] / wall,
                "residues_per_s": t.get("residues", 0) / wall,
                "gpu_busy": sampler.busy(start, end, None if gpu is None else {gpu}),
                "check_share": t.get("check_seconds", 0.0) / wall,
                "phases": {k: v / wall for k, v in phases.items() if _timed(k)},
                "per_example": {k: v / max(t["examples"], 1) for k, v in phases.items()
                                if not _timed(k)},
                "wall_s": wall, "began": start,
            })
    starts = [r for p in processes for t in p["targets"].values() for r in (t.get("began") or [])]
    ends = [t["last"] for p in processes for t in p["targets"].values() if t.get("last")]
    active = (min(starts), max(ends)) if starts and ends else (began, ended)
    span = max(active[1] - active[0], 1e-9)
    total = sum(r["examples"] for r in rows)
    residues = sum(t.get("residues", 0) for p in processes for t in p["targets"].values())
    return {
        **described, "rows": rows, "examples": total, "examples_per_s": total / span,
        "residues_per_s": residues / span, "gpu_busy": sampler.busy(*active),
        "wall_s": ended - began, "fuzzing_s": span,
    }


def steady_rate(rows: list[dict], span: float) -> float | None:
    """Examples/s without each worker's first slice, which pays for CUDA and library
    warm-up (at slices of a few seconds it checks one example or none): every worker's
    rate over its later slices, weighted by the share of the span it was fuzzing at all
    (so the workers ``--dist load`` leaves idle count as idle), summed. What a soak's long
    slices approach. Rows without ``began`` (runs before it was recorded) take each
    worker's slowest slice as its first."""
    total = 0.0
    for worker in {r["worker"] for r in rows}:
        mine = [r for r in rows if r["worker"] == worker]
        first = min(mine, key=lambda r: (r["began"],) if "began" in r else
                    (r["examples_per_s"],))
        later = [r for r in mine if r is not first]
        seconds = sum(r["wall_s"] for r in later)
        if not later or seconds <= 0:
            return None
        busy = min(1.0, sum(r["wall_s"] for r in mine) / span)
        total += sum(r["examples"] for r in later) / seconds * busy
    return total


_TIMED = ("under test", "baselines", "oracle", "loading")
"""Phases the run log holds in seconds; with ``--launches`` the others are counts."""


def _timed(phase: str) -> bool:
    """Seconds (a kind of forward, or ``in float32``: forwards of that dtype), not counts."""
    return phase in _TIMED or phase.startswith("in ")


def peak_fp64(device: str) -> tuple[float, str]:
    """FLOP/s of a float64 matrix product on ``device``, median of 5: what the float64
    oracle's linear layers can reach at best there."""
    import torch

    from esmfuzz.config import resolve_device

    place = resolve_device(device)
    n = 4096 if place.type == "cuda" else 1024
    a = torch.randn(n, n, dtype=torch.float64, device=place)
    b = torch.randn(n, n, dtype=torch.float64, device=place)
    times = []
    for _ in range(6):
        if place.type == "cuda":
            torch.cuda.synchronize(place)
        start = time.perf_counter()
        a @ b
        if place.type == "cuda":
            torch.cuda.synchronize(place)
        times.append(time.perf_counter() - start)
    flops = 2 * n**3 / statistics.median(times[1:])
    return flops, f"float64 {n}x{n} matmul on {place}, median of 5"


def oracle_bound(model: str, flops: float) -> float:
    """Residues/s the float64 oracle alone could check at ``flops``: 2 FLOP per parameter
    and residue (the linear layers; attention's length-dependent part is left out, so the
    bound is high and the fraction of it reached is a lower bound)."""
    from esmfuzz.models import parse_spec
    from esmfuzz.models.memory import parameters_of

    parameters = parameters_of(parse_spec(model))
    return flops / (2 * parameters)


def summarize(runs: list[dict], bound: float | None) -> dict:
    """Median, min and max over the runs of each figure, overall and per target; runs that
    failed count apart (``failed``: why each did), so that none is lost from the record."""
    failed = [r["failed"] for r in runs if r.get("failed")]
    runs = [r for r in runs if not r.get("failed")]
    if not runs:
        return {"summary": True, "runs": 0, "failed": failed}
    def spread(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    figures = {key: spread([r[key] for r in runs])
               for key in ("examples_per_s", "residues_per_s", "gpu_busy")}
    figures["steady_examples_per_s"] = spread(
        [steady_rate(r["rows"], r["fuzzing_s"]) if "fuzzing_s" in r else None for r in runs])
    if bound:
        figures["roofline"] = spread([r["residues_per_s"] / bound for r in runs])
    targets = sorted({row["target"] for r in runs for row in r["rows"]})
    per_target = {}
    for name in targets:
        rows = [row for r in runs for row in r["rows"] if row["target"] == name]
        per_target[name] = {
            key: spread([row[key] for row in rows])
            for key in ("examples_per_s", "residues_per_s", "gpu_busy")
        }
        counts = sorted({k for row in rows for k in row["per_example"]})
        per_target[name]["per_example"] = {
            k: spread([row["per_example"].get(k, 0.0) for row in rows]) for k in counts}
    first = runs[0]
    return {
        "summary": True, "runs": len(runs), "tree": first.get("tree"), "model": first["model"],
        "device_name": first["device_name"], "dtype": first["dtype"],
        "workers": first["workers"], "workers_asked": first["workers_asked"],
        "sharing": _sharing_kind(first.get("sharing")), "dist": first.get("dist"),
        "targets": first["targets"],
        "seconds_per_target": first["seconds_per_target"],
        "oracle_bound_residues_per_s": bound, **figures, "per_target": per_target,
        "failed": failed,
    }


def _gpu_index(device: str) -> int | None:
    head = device.split()[0] if device else ""
    if head.startswith("cuda"):
        return int(head.split(":")[1]) if ":" in head else 0
    return None


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _spread(figure, fmt="{:.2f}", scale=1.0) -> str:
    if figure is None:
        return "-"
    median, low, high = (fmt.format(scale * figure[k]) for k in ("median", "min", "max"))
    return f"{median} ({low}-{high})"


def show_run(result: dict) -> None:
    if result.get("failed"):
        print(f"run {result['run']} of {result['tree']} FAILED ({result['failed']}), counted "
              f"apart from the figures; its output ends:\n{result['output']}")
        return
    print(f"run {result['run']} of {result['tree']}: {result['model']} on {result['device_name']}, "
          f"{result['dtype']}, {result['workers']} worker(s) ({result['sharing']}"
          + (f"; --dist {result['dist']}" if result.get("dist") else "") + "), "
          f"{result['seconds_per_target']:g} s per target"
          + (", forwards timed" if result["timings"] else "")
          + (", operations counted" if result["launches"] else ""))
    print(f"{'target':<32}{'worker':<7}{'examples':>9}{'ex/s':>8}{'res/s':>9}{'GPU busy':>10}"
          f"{'checks':>8}  forwards (share of wall time)")
    for r in result["rows"]:
        phases = ", ".join(f"{k} {_pct(v)}" for k, v in sorted(r["phases"].items()))
        print(f"{r['target']:<32}{r['worker']:<7}{r['examples']:>9}{r['examples_per_s']:>8.2f}"
              f"{r['residues_per_s']:>9.0f}{_pct(r['gpu_busy']):>10}{_pct(r['check_share']):>8}"
              f"  {phases}")
    print(f"all targets: {result['examples']} examples in {result['fuzzing_s']:.0f} s of fuzzing "
          f"({result['examples_per_s']:.2f}/s, {result['residues_per_s']:.0f} residues/s), "
          f"GPU busy {_pct(result['gpu_busy'])}; {result['wall_s']:.0f} s with start-up and "
          f"model loading")
    steady = steady_rate(result["rows"], result["fuzzing_s"])
    if steady is not None:
        print(f"steady: {steady:.2f} examples/s without each worker's first (warm-up) slice")


def show_summary(summary: dict, peak: tuple[float, str] | None) -> None:
    failed = summary.get("failed") or []
    if failed:
        print(f"\n{len(failed)} run(s) failed, left out of the figures below: "
              + "; ".join(failed))
    if not summary["runs"]:
        return
    print(f"\n{summary['runs']} run(s) of {summary['tree']}: {summary['model']} on "
          f"{summary['device_name']}, "
          f"{summary['dtype']}, {summary['workers']} worker(s) (asked: "
          f"{summary['workers_asked']}; {summary['sharing']}"
          + (f"; --dist {summary['dist']}" if summary.get("dist") else "") + "), "
          f"{summary['seconds_per_target']:g} s per target; "
          f"median (min-max)")
    print(f"  examples/s  {_spread(summary['examples_per_s'])}")
    print(f"  steady      {_spread(summary.get('steady_examples_per_s'))} examples/s without "
          f"each worker's first (warm-up) slice")
    print(f"  residues/s  {_spread(summary['residues_per_s'], '{:.0f}')}")
    print(f"  GPU busy    {_spread(summary['gpu_busy'], '{:.0f}%', 100)}")
    if peak is not None and summary.get("roofline"):
        print(f"  FP64-oracle roofline: {summary['oracle_bound_residues_per_s']:.0f} residues/s "
              f"({peak[0] / 1e12:.2f} TFLOP/s, {peak[1]}; 2 FLOP per parameter and residue); "
              f"reached {_spread(summary['roofline'], '{:.1f}%', 100)}")
    width = max(len(n) for n in summary["per_target"]) + 2
    print(f"  {'target':<{width}}{'examples/s':>20}{'residues/s':>20}{'GPU busy':>16}")
    for name, t in summary["per_target"].items():
        print(f"  {name:<{width}}{_spread(t['examples_per_s']):>20}"
              f"{_spread(t['residues_per_s'], '{:.0f}'):>20}"
              f"{_spread(t['gpu_busy'], '{:.0f}%', 100):>16}")
        for key, figure in t["per_example"].items():
            print(f"  {'':<{width}}{key} per example: {_spread(figure, '{:.0f}')}")


def summarize_files(paths: list[str]) -> None:
    """The summary of every group of runs in ``paths``, with the median float64 peak that
    their invocations measured (if any) for the roofline."""
    lines = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()
             if line.strip()]
    peaks = [line["peak_fp64"] for line in lines if line.get("summary") and line.get("peak_fp64")]
    peak = None
    if peaks:
        flops = statistics.median(p["flops"] for p in peaks)
        peak = (flops, f"{peaks[0]['how']}; median of {len(peaks)} invocations")
    groups: dict[tuple, list[dict]] = {}
    for line in lines:
        if not line.get("summary"):
            key = (line["tree"], line["model"], line["device_name"], line["dtype"],
                   line["workers"], line.get("dist"),
                   _sharing_kind(line.get("sharing")), line["seconds_per_target"],
                   tuple(line["targets"]), line["timings"], line["launches"])
            groups.setdefault(key, []).append(line)
    for group in groups.values():
        bound = oracle_bound(group[0]["model"], peak[0]) if peak else None
        show_summary(summarize(group, bound), peak)


def _sharing_kind(why: str | None) -> str | None:
    """The sharing without the private daemon's directory, which differs in every run."""
    return re.sub(r" \(/[^)]*\)", "", why) if why else why


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:esm2_t6_8M_UR50D")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--seconds", type=float, default=30.0, help="time slice per target")
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS),
                        help="pytest -k expressions, one per target")
    parser.add_argument("--workers", default="1",
                        help="pytest-xdist workers, or auto (as esmfuzz soak --workers auto)")
    parser.add_argument("--mps", default="auto", choices=MPS_MODES,
                        help="CUDA MPS for workers sharing a GPU, as esmfuzz soak --mps")
    parser.add_argument("--dist", default="each", choices=("each", "load"),
                        help="with several workers: each runs every target (as esmfuzz soak "
                             "does since issue 23), or load: each target once, on one worker "
                             "(as it did before)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of the whole selection; figures are their median (min-max)")
    parser.add_argument("--trees", nargs="+", type=Path, default=[REPO],
                        help="checkouts to measure (default: this one); with several, their "
                             "runs alternate, so drift of the machine falls on all alike")
    parser.add_argument("--timings", action="store_true", help="time each kind of forward")
    parser.add_argument("--launches", action="store_true",
                        help="count each kind of forward's operations (esmfuzz.launches)")
    parser.add_argument("--no-roofline", action="store_true",
                        help="skip measuring the device's float64 matmul peak")
    parser.add_argument("--json", help="append each run and the summary as JSON lines here")
    parser.add_argument("--summarize", nargs="+", metavar="JSONL",
                        help="run nothing: summarize the runs in these --json files, grouped by "
                             "checkout, model, workers and sharing (runs taken in separate "
                             "invocations, e.g. before and after with different --mps)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest options, after --")
    args = parser.parse_args(argv)
    if args.summarize:
        summarize_files(args.summarize)
        return
    if args.runs < 1:
        parser.error(f"--runs {args.runs} must be at least 1")
    from esmfuzz.soak import worker_count

    try:
        workers, why = worker_count(args.workers, ["--esm-model", args.model,
                                                   "--esm-device", args.device,
                                                   "--esm-dtype", args.dtype, *args.pytest_args],
                                     args.mps)
    except Exception as exc:
        parser.error(str(exc))
    if args.workers == "auto":
        print(f"workers: {workers} ({why})")
    from esmfuzz.mps import mps_for
    from esmfuzz.soak import workers_per_gpu

    per_gpu = workers_per_gpu(workers, ["--esm-device", args.device])
    runs: dict[Path, list[dict]] = {tree: [] for tree in args.trees}
    with mps_for(per_gpu, args.mps) as sharing:
        print(f"sharing: {sharing.why}")
        for number in range(1, args.runs + 1):
            for tree in args.trees:
                result = run(args, workers, number, tree.resolve(), sharing)
                show_run(result)
                runs[tree].append(result)
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(json.dumps(result) + "\n")
    peak = None if args.no_roofline else peak_fp64(args.device)
    for tree_runs in runs.values():
        summary = summarize(tree_runs, oracle_bound(args.model, peak[0]) if peak else None)
        summary["peak_fp64"] = peak and {"flops": peak[0], "how": peak[1]}
        show_summary(summary, peak)
        if args.json:
            with open(args.json, "a") as out:
                out.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
