"""``esmfuzz soak``: the fuzz targets under the soak profile until time is up or a stop.

No scheduler of its own: each round is one ``pytest`` run of the fuzz targets, each
target fuzzing for a time slice; with several pytest-xdist workers (for several GPUs, or
several processes sharing one under MPS) every worker runs every target (``--dist each``),
each starting at another point of the list, so none idles while others finish. Rounds
repeat until the duration is spent. Hypothesis's example database (a directory or Redis)
carries what a round learnt to the next and to other machines; the corpus and the claims
in it make each bug shrunk and saved once. Each process writes its statistics
(:mod:`esmfuzz.runlog`); this runner merges them into ``statistics.json`` at least once
a minute and shows them live.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from esmfuzz.config import option_value
from esmfuzz.errors import EsmfuzzError

__all__ = ["SoakError", "SoakRun", "parse_duration", "run_soak", "worker_count",
           "workers_per_gpu"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_STATS_EVERY = 30.0
_GRACE = 120.0
"""Seconds a stopped round may take to end its examples in flight and save what it found."""


_BROKEN = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}
"""pytest exit codes after which another round would fail the same way."""


class SoakError(EsmfuzzError, ValueError):
    """A soak option or run directory that cannot be used; the message names it."""


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``10m``, ``8h``, ``1h30m`` or a plain number of seconds."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise SoakError(f"--duration {text!r} is not a duration such as 90s, 10m, 8h or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise SoakError(f"--duration {text!r} must be longer than 0")
    return seconds


@dataclass
class SoakRun:
    """``run.json``: what a run was asked to do and how far it got (``--resume`` reads it)."""

    run_dir: str
    duration: float
    workers: str = "1"
    database: str | None = None
    mps: str = "auto"
    """CUDA MPS for workers sharing a GPU (:mod:`esmfuzz.mps`): auto, on or off."""
    corpus: str = "corpus"
    pytest_args: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    elapsed: float = 0.0
    rounds: int = 0
    state: str = "running"
    targets: list[str] = field(default_factory=list)
    """The fuzz targets collected (``error_ratio[short]``): a target that never ran is said."""

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / "run.json"

    def save(self) -> None:
        self.updated = time.time()
        _atomic_write(self.path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, run_dir: Path | str) -> SoakRun:
        path = Path(run_dir) / "run.json"
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError:
            raise SoakError(f"--resume {str(run_dir)!r}: no run.json there; is it a soak "
                            f"run directory?") from None
        except (OSError, ValueError, TypeError) as exc:
            raise SoakError(f"--resume {str(run_dir)!r}: run.json cannot be read: {exc}") from None


def _atomic_write(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_text(text)
    os.replace(part, path)


PER_GPU = 4
"""Workers sharing one GPU under ``--workers auto`` when they time-slice it: one process
keeps an H200 busy 41% of the time at synthetic 650M (docs/performance.md), launching
kernels for small packs faster than it can; several processes fill the gaps, and past 4
only wait their turn. Fewer where memory or cores run out."""

PER_GPU_MPS = 8
"""The same under CUDA MPS (:mod:`esmfuzz.mps`), where their kernels run side by side:
twice as many, a first guess not yet measured on a GPU (docs/performance.md)."""


def worker_count(text: str, pytest_args: list[str], mps: str = "auto") -> tuple[int, str]:
    """The worker count, and why (``auto``: as many per GPU as memory, cores and
    :data:`PER_GPU` allow, :data:`PER_GPU_MPS` where ``mps`` may start a daemon; one on a
    machine without a GPU)."""
    if text != "auto":
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise SoakError(f"--workers {text!r} must be a positive number or auto")
        return count, "as asked"
    gpus = _gpus()
    if gpus == 0 or option_value(pytest_args, "device") == "cpu":
        return 1, "auto: no GPU in use, one worker (a CPU forward uses every core already)"
    cores = max(1, (os.cpu_count() or 1) // gpus)
    fit = _fitting(pytest_args)
    cap = PER_GPU_MPS if mps != "off" and shutil.which("nvidia-cuda-mps-control") else PER_GPU
    per_gpu = max(1, min(cap, cores, fit))
    return gpus * per_gpu, (f"auto: {per_gpu} per GPU on {gpus} GPU(s) (at most {cap}"
                            f"{' under MPS' if cap == PER_GPU_MPS else ''}; {cores} cores and "
                            f"memory for {fit} model set(s) per GPU)")


def workers_per_gpu(workers: int, pytest_args: list[str]) -> int:
    """How many of ``workers`` share each GPU (1 where none is in use): what decides
    whether :func:`esmfuzz.mps.mps_for` starts a daemon."""
    gpus = _gpus()
    if gpus == 0 or option_value(pytest_args, "device") == "cpu":
        return 1
    return -(-workers // gpus)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _fitting(pytest_args: list[str]) -> int:
    """How many processes' model copies fit on one GPU, by esmfuzz's memory estimate."""
    import torch

    from esmfuzz.models import estimate_memory, parse_spec

    spec = parse_spec(option_value(pytest_args, "model"))
    estimate = estimate_memory(spec, device="cuda:0",
                               oracle_dtype=option_value(pytest_args, "oracle-dtype"),
                               dtype=option_value(pytest_args, "dtype"))
    total = torch.cuda.get_device_properties(0).total_memory  # no CUDA context here: MPS
    return max(1, int(0.9 * total // estimate.device_bytes))


_PYTEST_VALUES = ("-k", "-m", "-p", "-n", "-c", "-o", "-W", "--rootdir", "--maxfail", "--tb",
                  "--junitxml", "--basetemp", "--confcutdir", "--deselect", "--ignore",
                  "--ignore-glob", "--hypothesis-seed", "--durations", "--dist",
                  "--override-ini", "--log-level", "--import-mode", "--capture",
                  "--numprocesses")
"""pytest's (and its plugins') options that take a value, as ``esmfuzz soak`` passes them on."""


def pytest_arguments(args: list[str]) -> list[str]:
    """``args`` with every option's value joined to it (``--esm-corpus=DIR``, ``-kEXPR``):
    a value that is an existing path (a corpus, a checkpoint) can never become a test path,
    whose presence would replace ``fuzz/``."""
    from esmfuzz.config import OPTIONS

    takes_value = {o.pytest_flag for o in OPTIONS if o.action != "store_false"}
    takes_value.update(_PYTEST_VALUES)
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in takes_value and i + 1 < len(args):
            out.append(f"{arg}={args[i + 1]}" if arg.startswith("--") else arg + args[i + 1])
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def _target_name(nodeid: str) -> str | None:
    """``error_ratio[short]`` for a fuzz target's node id; None for any other test."""
    found = re.search(r"::test_property\[(\w+)-(\w+)\]$", nodeid)
    return f"{found.group(1)}[{found.group(2)}]" if found else None


def _corpus_of(pytest_args: list[str]) -> str:
    return str(Path(option_value(pytest_args, "corpus")).resolve())


def _has_path(pytest_args: list[str]) -> bool:
    return any(not a.startswith("-") and (Path(a.split("::")[0]).exists()) for a in pytest_args)


class _Runner:
    def __init__(self, run: SoakRun, *, out=sys.stdout, progress_every: float | None = None,
                 counted: tuple[int, str] | None = None):
        self.run = run
        self.dir = Path(run.run_dir)
        self.out = out
        self.live = _live(out)
        self.progress_every = progress_every or (1.0 if self.live is not None else 30.0)
        self.stopping = False
        self.stop_asked: float | None = None
        self.child: subprocess.Popen | None = None
        self.workers, self.why_workers = counted or worker_count(run.workers, run.pytest_args,
                                                                 run.mps)
        self.env = dict(os.environ)
        self.why_sharing = ""

    # -- signals ------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.stopping:  # a second Ctrl-C: stop now; the statistics already written stay
            self._signal_child(signal.SIGKILL)
            return
        self.stopping = True
        self.stop_asked = time.monotonic()
        self._signal_child(signal.SIGTERM)

    def _signal_child(self, sig) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, sig)
            except ProcessLookupError:
                pass

    # -- rounds -------------------------------------------------------------------------
    def _count_targets(self) -> int:
        """The targets the rounds will run; a usage error (a bad option, an unreachable
        database), or a collection holding tests that are not esmfuzz's fuzz targets, ends
        the run here, before any round."""
        done = subprocess.run([*self._pytest(), "--collect-only"], capture_output=True,
                              text=True)
        nodeids = [line.strip() for line in done.stdout.splitlines() if "::" in line]
        if done.returncode != 0 or not nodeids:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise SoakError(f"pytest could not collect fuzz targets to soak (exit "
                            f"{done.returncode}):\n{tail}")
        others = [n for n in nodeids if _target_name(n) is None]
        if others:
            raise SoakError(f"pytest collected {len(others)} test(s) that are not esmfuzz fuzz "
                            f"targets (first: {', '.join(others[:3])}); give paths that hold "
                            f"only fuzz targets (default fuzz/)")
        self.run.targets = [_target_name(n) for n in nodeids]
        return len(nodeids)

    def _pytest(self) -> list[str]:
        """pytest on the fuzz targets (``fuzz/`` unless the arguments name a path) under the
        soak profile, with the run's claims and database."""
        args = pytest_arguments(list(self.run.pytest_args))
        base = args if _has_path(args) else ["fuzz/", *args]
        command = [sys.executable, "-m", "pytest", *base, "--esm-profile", "soak",
                   "--esm-claims", str(Path(self.run.corpus) / ".claims"),
                   "-p", "no:cacheprovider", "-q"]
        if self.run.database:
            command += ["--esm-database", self.run.database]
        return command

    def command(self, slice_seconds: float) -> list[str]:
        log = self.dir / "logs" / f"round-{self.run.rounds}-{{worker}}.json"
        command = [*self._pytest(), "--esm-soak-slice", f"{slice_seconds:g}",
                   "--esm-soak-log", str(log)]
        if self.workers > 1:
            command += ["-n", str(self.workers), "--dist", "each"]
        return command

    def main(self) -> int:
        from esmfuzz.mps import mps_for

        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with mps_for(workers_per_gpu(self.workers, self.run.pytest_args),
                         self.run.mps) as sharing:
                self.env = {**os.environ, **sharing.env}
                self.why_sharing = sharing.why
                return self._rounds()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _rounds(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.run.state = "running"
        while self._round_used(self.run.rounds):  # a resumed run never overwrites a round
            self.run.rounds += 1
        self.run.save()
        targets = self._count_targets()
        self._say(f"esmfuzz soak: {targets} targets, {self.workers} worker(s) "
                  f"({self.why_workers}; {self.why_sharing}), {_clock(self.remaining())} "
                  f"to go; run directory {self.dir}")
        while self.remaining() > 0 and not self.stopping:
            slice_seconds = min(600.0, max(5.0, self.remaining() / targets))
            self._round(slice_seconds)
            self.run.rounds += 1
            self.run.save()
        self.run.state = "stopped" if self.stopping else "finished"
        self.run.save()
        stats = self.merge()
        if self.live is not None:
            self.live.stop()
            self.live = None
        self._say(summary(stats))
        return 1 if failing(stats["processes"]) else 0

    def _round_used(self, number: int) -> bool:
        return ((self.dir / f"pytest-round-{number}.log").exists()
                or any((self.dir / "logs").glob(f"round-{number}-*.json")))

    def _round(self, slice_seconds: float) -> None:
        log = (self.dir / f"pytest-round-{self.run.rounds}.log").open("w")
        command = self.command(slice_seconds)
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        began = time.monotonic()
        elapsed_before = self.run.elapsed
        self.child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                      env=self.env, start_new_session=True,
                                      preexec_fn=_dies_with(os.getpid()))
        last_stats = last_progress = 0.0
        deadline_hit = False
        try:
            while self.child.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                self.run.elapsed = elapsed_before + (now - began)
                if self.remaining() <= 0 and not deadline_hit:
                    deadline_hit = True
                    self.stop_asked = self.stop_asked or now
                    self._signal_child(signal.SIGTERM)
                if self.stop_asked is not None and now - self.stop_asked > _GRACE:
                    self._signal_child(signal.SIGKILL)
                if now - last_stats >= _STATS_EVERY:
                    last_stats = now
                    self.run.save()
                    self.merge()
                if now - last_progress >= self.progress_every:
                    last_progress = now
                    self._progress()
            code = self.child.returncode
        finally:
            log.close()
            self.run.elapsed = elapsed_before + (time.monotonic() - began)
            self.child = None
        self.merge()
        if code in _BROKEN and self.stop_asked is None:
            self.run.state = "error"
            self.run.save()
            lines = (self.dir / f"pytest-round-{self.run.rounds}.log").read_text().splitlines()
            raise SoakError(f"round {self.run.rounds}: pytest exited {code} "
                            f"({_BROKEN[code]}); the run stops. Its log ends:\n"
                            + "\n".join(lines[-15:]))

    def remaining(self) -> float:
        return self.run.duration - self.run.elapsed

    # -- statistics and progress --------------------------------------------------------
    def merge(self) -> dict:
        """``statistics.json``: the run and every process's log, written atomically."""
        stats = {"schema": 1, "run": asdict(self.run), "processes": _read_logs(self.dir)}
        _atomic_write(self.dir / "statistics.json", json.dumps(stats, sort_keys=True) + "\n")
        return stats

    def _progress(self) -> None:
        processes = _read_logs(self.dir)
        table = self._state(processes) + "\n" + progress_table(processes, self.run)
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(table))  # plain text: rich would read [short] as markup
        else:
            self._say(table)

    def _state(self, processes: list[dict]) -> str:
        """What the run is doing now, in words: loading, fuzzing, stopping."""
        if self.stop_asked is not None:
            waited = time.monotonic() - self.stop_asked
            return (f"stopping: SIGTERM sent {waited:.0f} s ago; the examples in flight end "
                    f"and what was found is saved (SIGKILL after {_GRACE:g} s)")
        if not any(t["examples"] for t in totals(processes).values()):
            return "loading: pytest is starting and loading the model pair"
        busy = [p["activity"] for p in processes
                if p.get("activity") and p.get("round") == self.run.rounds]
        return f"fuzzing: round {self.run.rounds}" + "".join(f"; {b}" for b in busy)

    def _say(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.out, flush=True)


def _live(out):
    """A rich live display on a terminal; plain lines every 30 s otherwise (logs, CI)."""
    if not getattr(out, "isatty", lambda: False)():
        return None
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        return None
    live = Live("", console=Console(file=out), refresh_per_second=2, transient=False)
    live.start()
    return live


def _read_logs(run_dir: Path) -> list[dict]:
    """Every process's log (``logs/round-N-<worker>.json``), with its round; a log being
    replaced at that instant is skipped until the next read."""
    out = []
    for path in sorted((run_dir / "logs").glob("round-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["round"] = int(path.stem.split("-")[1])
        out.append(data)
    return out


def totals(processes: list[dict]) -> dict[str, dict]:
    """Per target, over every process and round: examples, failures, worst margin, rate."""
    out: dict[str, dict] = {}
    for proc in processes:
        for name, row in proc.get("targets", {}).items():
            t = out.setdefault(name, {"examples": 0, "failing": 0, "seen_again": 0,
                                      "worst_margin": None, "seconds": 0.0, "devices": set()})
            t["examples"] += row.get("examples", 0)
            t["failing"] += row.get("failing", 0)
            t["seen_again"] += row.get("seen_again", 0)
            margin = row.get("worst_margin")
            if margin is not None and (t["worst_margin"] is None or margin < t["worst_margin"]):
                t["worst_margin"] = margin
            t["seconds"] += row.get("seconds", 0.0)
            t["devices"].add(f"{proc.get('worker', '?')}:{proc.get('device', '?')}")
    return out


def progress_table(processes: list[dict], run: SoakRun) -> str:
    rows = totals(processes)
    failures = sum(len(p.get("failures", [])) for p in processes)
    lines = [f"-- {_clock(run.elapsed)} run, {_clock(max(run.duration - run.elapsed, 0))} left, "
             f"round {run.rounds}, {failures} failure(s) saved --"]
    lines.append(f"{'target':<30}{'examples':>9}{'ex/s':>8}{'fail':>6}{'again':>7}"
                 f"{'worst margin':>14}  workers")
    for name, t in sorted(rows.items()):
        rate = t["examples"] / t["seconds"] if t["seconds"] > 0 else 0.0
        margin = "-" if t["worst_margin"] is None else f"{t['worst_margin']:.3g}"
        lines.append(f"{name:<30}{t['examples']:>9}{rate:>8.2f}{t['failing']:>6}{t['seen_again']:>7}"
                     f"{margin:>14}  {', '.join(sorted(t['devices']))}")
    return "\n".join(lines)


def known_again(processes: list[dict]) -> dict[str, dict]:
    """Known bugs (saved by another process or machine, or open in the corpus) that this
    run failed on again, by signature, over every process: failures of this run too."""
    out: dict[str, dict] = {}
    for proc in processes:
        for sig, item in (proc.get("seen_again") or {}).items():
            mine = out.setdefault(sig, {"case": "", "targets": [], "count": 0})
            mine["count"] += item.get("count", 0)
            mine["case"] = mine["case"] or item.get("case", "")
            mine["targets"] += [t for t in item.get("targets", []) if t not in mine["targets"]]
    return out


def failing(processes: list[dict]) -> bool:
    """The run found a bug: a new failure saved, or a known one failing again."""
    return any(p.get("failures") for p in processes) or bool(known_again(processes))


def not_run(run: dict, processes: list[dict]) -> list[str]:
    """Collected targets that no process ran an example of."""
    ran = {name for name, t in totals(processes).items() if t["examples"]}
    return [name for name in run.get("targets", []) if name not in ran]


def summary(stats: dict) -> str:
    run = stats["run"]
    processes = stats["processes"]
    rows = totals(processes)
    examples = sum(t["examples"] for t in rows.values())
    failures = [f for p in processes for f in p.get("failures", [])]
    again = known_again(processes)
    lines = [f"esmfuzz soak {run['state']} after {_clock(run['elapsed'])} "
             f"({run['rounds']} round(s)): {examples} examples over {len(rows)} targets; "
             f"{len(failures)} failure(s) saved"
             + (f"; still failing: {len(again)} known bug(s)" if again else ""),
             progress_table(processes, SoakRun(**run))]
    for f in failures:
        lines.append(f"  {f.get('target')}: {f.get('signature')}; case {f.get('case') or '-'}")
    for sig, item in sorted(again.items()):
        lines.append(f"  still failing: {sig}; {item['count']} example(s) in "
                     f"{', '.join(item['targets'])}; case {item['case'] or '-'}")
    missing = not_run(run, processes)
    if missing:
        lines.append(f"{len(missing)} of {len(run['targets'])} targets did not run: "
                     f"{', '.join(missing)} (a longer --duration gives each a slice)")
    lines.append(f"statistics: {Path(run['run_dir']) / 'statistics.json'}; "
                 f"report: esmfuzz report {run['run_dir']}")
    return "\n".join(lines)


def _dies_with(parent: int):
    """A ``preexec_fn``: the child gets SIGTERM when the soak process dies, even by SIGKILL
    (Linux's parent-death signal), so no orphan keeps fuzzing and holding the device."""

    import ctypes

    try:  # resolved here: the child, between fork and exec, must not import or allocate
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def run_soak(*, duration: str | None, workers: str = "1", database: str | None = None,
             mps: str = "auto", run_dir: str | None = None, resume: str | None = None,
             pytest_args: list[str] | None = None, out=sys.stdout,
             progress_every: float | None = None) -> int:
    """Start (or resume) a soak run; returns the exit status."""
    from esmfuzz.mps import MODES

    if mps not in MODES:
        raise SoakError(f"--mps {mps!r} must be one of {', '.join(MODES)}")
    counted = None
    if resume:
        run = SoakRun.load(resume)
        if run.state == "finished" and run.elapsed >= run.duration and not duration:
            raise SoakError(f"--resume {resume!r}: the run already finished its "
                            f"{_clock(run.duration)}; give --duration to extend it")
        if duration:
            run.duration = run.elapsed + parse_duration(duration)
    else:
        seconds = parse_duration(duration or "8h")
        if run_dir is None:
            run_dir = str(Path("soak-runs") / time.strftime("%Y%m%d-%H%M%S"))
        path = Path(run_dir)
        if (path / "run.json").exists():
            raise SoakError(f"--run-dir {run_dir!r} already holds a run; --resume it, or "
                            f"choose another directory")
        args = list(pytest_args or [])
        counted = worker_count(workers, args, mps)
        run = SoakRun(str(path.resolve()), seconds, workers, database, mps, _corpus_of(args),
                      args)
    return _Runner(run, out=out, progress_every=progress_every, counted=counted).main()
