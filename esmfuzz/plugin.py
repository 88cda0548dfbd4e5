"""The pytest plugin: ``--esm-*`` options, Hypothesis profiles, fixtures, corpus capture, summary.

Registered through the ``pytest11`` entry point, so ``pytest fuzz/`` finds it in
any environment where esmfuzz is installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import time
import unittest
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, seed, settings, target
from hypothesis.control import current_build_context
from hypothesis.database import DirectoryBasedExampleDatabase

from esmfuzz import edges
from esmfuzz.alphabet import residue_count
from esmfuzz.config import Config, crowd_limits, read_pyproject
from esmfuzz.corpus import Case, CorpusError, load_case, load_corpus, save_case
from esmfuzz.edges import Scope
from esmfuzz.harness import Harness, HarnessError, Repeat, harness_for
from esmfuzz.properties import FAILURE_KINDS, NONDETERMINISTIC, Sample, Verdict
from esmfuzz.registry import PROPERTIES
from esmfuzz.runlog import RunLog
from esmfuzz.tighten import tighten
from esmfuzz.triage import Claims, Known, signature

__all__ = ["FuzzRecorder", "PROFILES", "check_and_record", "seeded", "stratum_of_layout"]

PROFILES = ("quick", "ci", "dev", "soak")
_OPTIONS = {
    "model": "model spec: fair-esm name, path to a .pt, or "
             "synthetic:<esm2 name>[?seed=N][&profile=random] (default: trained-like weights)",
    "device": "auto, cpu, cuda or cuda:N",
    "dtype": "candidate dtype: float16, bfloat16 or float32",
    "oracle-dtype": "error-ratio oracle dtype: float64 (falls back to float32 if it does not fit) "
    "or float32",
    "loading": "auto, together (every model copy on the device) or sequential (one copy on "
    "the device at a time, for models whose copies do not fit together)",
    "device-memory": "GiB of device memory esmfuzz may use, for a GPU shared with other work "
    "(default 0: all that is free)",
    "backend": "attention backend of the reference packed forward: auto, flash-attn, "
    "torch-varlen or sdpa",
    "packed-impl": "packed forward under test, module:function",
    "padded-impl": "padded forward under test, module:function",
    "corpus": "corpus directory where shrunk failures are saved and replayed from",
    "pack-tokens": "token budget of a generated pack (default 1536; long packs reveal FP16 "
    "position rounding)",
    "crowd-tokens": "token budget of a crowded pack, many short proteins (default 6144 for "
    "quick and ci on the CPU, else 16384)",
    "crowd-sequences": "most sequences in a crowded pack (default 128 for quick and ci on the "
    "CPU, else 256)",
    "residues": "all (the 20 amino acids, X B Z U O) or standard (the 20 only), for pipelines "
    "that never see rare residues",
    "shrink-seconds": "seconds a target may spend shrinking its failure; past them the "
    "smallest failure so far is saved, with a note (default 0: Hypothesis's own limit); "
    "then a second pass drops sequences and residues, for as long again",
    "timeout": "seconds one call of an implementation under test may take; a call over the "
    "limit is a finding, saved, and the run goes on (default 0: no limit)",
    "paths": "dtype paths the implementations are checked on: auto, both (candidate dtype and "
    "float32) or candidate (FP16/BF16-only kernels)",
}


_PHASES = [phase for phase in Phase if phase is not Phase.explain]
"""Hypothesis's explain phase re-runs the shrunk failure ~100 times with parts of it
redrawn, to mark which parts do not matter; esmfuzz's message (the per-layer picture,
the second shrink pass) says more, and those runs took 70% of a failing target's time on
the CPU (22 s of 31 for a forward that raises)."""


def _register_profiles() -> None:
    common = {
        "deadline": None,
        "print_blob": True,
        "phases": _PHASES,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    settings.register_profile("quick", max_examples=3, **common)
    settings.register_profile("ci", max_examples=6, derandomize=True, database=None, **common)
    settings.register_profile("dev", max_examples=40, **common)
    settings.register_profile(
        "soak",
        max_examples=10**9,
        database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
        **common,
    )


_register_profiles()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("esmfuzz", "esmfuzz: fuzzing ESM-2 inference")
    for name, text in _OPTIONS.items():
        group.addoption(
            f"--esm-{name}",
            dest=f"esm_{name.replace('-', '_')}",
            default=None,
            help=f"{text} (default from [tool.esmfuzz])",
        )
    group.addoption(
        "--esm-threshold",
        dest="esm_threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one threshold, e.g. token_cosine=0.9",
    )
    group.addoption(
        "--esm-no-mask",
        dest="esm_no_mask",
        action="store_true",
        default=False,
        help="generate no <mask> tokens (pipelines that never see them; [tool.esmfuzz] masks)",
    )
    group.addoption(
        "--esm-report",
        dest="esm_report",
        default=None,
        metavar="PATH",
        help="write the per-property statistics of this run as JSON to PATH",
    )
    group.addoption(
        "--esm-database",
        dest="esm_database",
        default=None,
        metavar="URL",
        help="Hypothesis example database: a directory, or redis://host:port/db (needs "
        "esmfuzz[redis]); shared by the machines of a soak run (default: .hypothesis/examples "
        "where the profile keeps one)",
    )
    group.addoption(
        "--esm-claims",
        dest="esm_claims",
        default=None,
        metavar="DIR",
        help="directory where processes fuzzing one implementation claim each bug's signature, "
        "so one of them shrinks it (xdist workers get one of their own; esmfuzz soak shares "
        "one in the corpus)",
    )
    group.addoption(
        "--esm-soak-slice",
        dest="esm_soak_slice",
        default=None,
        type=float,
        metavar="SECONDS",
        help="(esmfuzz soak) each target fuzzes for this long, then passes; SIGTERM and SIGINT "
        "end the example in flight, save what was found and stop",
    )
    group.addoption(
        "--esm-soak-log",
        dest="esm_soak_log",
        default=None,
        metavar="PATH",
        help="(esmfuzz soak) write this process's statistics as JSON to PATH ({worker} is "
        "replaced by the xdist worker id) every 10 s and at the end",
    )
    group.addoption(
        "--esm-seed",
        dest="esm_seed",
        default=None,
        type=int,
        metavar="N",
        help="fuzz with seed N (mixed with each test's id) instead of the profile's; "
        "the ci profile is otherwise fixed",
    )
    group.addoption(
        "--esm-profile",
        dest="esm_profile",
        default=None,
        choices=PROFILES,
        help="Hypothesis profile: quick (3 examples per target, minutes on a laptop CPU), "
        "ci (6, fixed seed), dev (40), soak (unbounded) (default: ci when $CI is set, "
        "else quick)",
    )


def _config_from(pytest_config: pytest.Config, profile: str) -> Config:
    """``[tool.esmfuzz]`` overridden by ``--esm-*``; every error names where the value came from.

    The implementations are imported here too, so that a bad ``module:function`` is a
    usage error before any model is loaded.
    """
    from esmfuzz.forward import ImplementationError, load_implementation

    stored = dict(read_pyproject(pytest_config.rootpath))
    given: dict[str, object] = {}
    for name in _OPTIONS:
        value = pytest_config.getoption(f"esm_{name.replace('-', '_')}")
        if value is not None:
            given[name] = value
    if pytest_config.getoption("esm_no_mask"):
        given["masks"] = False
    overrides = {}
    for item in pytest_config.getoption("esm_threshold"):
        key, sep, value = item.partition("=")
        if not sep:
            raise pytest.UsageError(f"--esm-threshold {item!r} must be NAME=VALUE")
        overrides[key.strip()] = value.strip()
    try:
        Config.from_mapping(stored)
        merged = {**stored, **given}
        merged["thresholds"] = {**(stored.get("thresholds") or {}), **overrides}
        config = Config.from_mapping(merged, source="--esm-* options")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    for name in ("packed-impl", "padded-impl"):
        option = f"--esm-{name}" if name in given else f"[tool.esmfuzz] {name}"
        try:
            load_implementation(getattr(config, name.replace("-", "_")), option=option)
        except ImplementationError as exc:
            raise pytest.UsageError(str(exc)) from None
    config = _pinned(config, getattr(pytest_config, "workerinput", {}).get("workerid"))
    corpus = Path(config.corpus)
    if not corpus.is_absolute():
        corpus = pytest_config.rootpath / corpus
    _preflight(config, pytest_config.getoption("esm_report"))
    most, tokens = crowd_limits(config, profile=profile)
    return dataclasses.replace(
        config, corpus=str(corpus), crowd_sequences=most, crowd_tokens=tokens
    )


def _namespace(config: Config) -> str:
    """What a claim is about: a bug of this model, dtype and implementation."""
    return json.dumps([config.model, config.dtype, config.oracle_dtype, config.packed_impl,
                       config.padded_impl, config.paths, config.thresholds.as_dict()],
                      sort_keys=True)


def _pinned(config: Config, worker: str | None) -> Config:
    """An xdist worker on a machine with several GPUs takes ``cuda:{i % n}`` where the
    device is ``auto`` or ``cuda``: one worker per GPU, no scheduler of esmfuzz's own."""
    import torch

    if worker is None or config.device not in ("auto", "cuda") or not torch.cuda.is_available():
        return config
    count = torch.cuda.device_count()
    if count < 2:
        return config
    index = int(worker.removeprefix("gw")) % count
    return dataclasses.replace(config, device=f"cuda:{index}")


def _preflight(config: Config, report: str | None) -> None:
    """What would otherwise fail only once the model loads, in every test: one usage error
    before anything runs (device, backend, model spec, checkpoint, memory, report path)."""
    from esmfuzz.attention import select_backend
    from esmfuzz.models import parse_dtype, parse_spec, plan_memory, resolve_device

    try:
        device = resolve_device(config.device)
    except RuntimeError as exc:
        raise pytest.UsageError(f"--esm-device: {exc}") from None
    dtype = parse_dtype(config.dtype)
    try:
        select_backend(config.backend, device, dtype)
        oracle = parse_dtype(config.oracle_dtype, allowed=("float64", "float32"))
        plan_memory(parse_spec(config.model), device=device, dtype=dtype, oracle_dtype=oracle,
                    loading=config.loading, device_memory=config.device_memory)
    except (ValueError, RuntimeError, OSError) as exc:
        raise pytest.UsageError(str(exc)) from None
    if report:
        folder = Path(report).resolve().parent
        problem = (
            "does not exist" if not folder.is_dir()
            else "is not writable" if not os.access(folder, os.W_OK)
            else None
        )
        if problem:
            raise pytest.UsageError(f"--esm-report {report!r}: folder {str(folder)!r} {problem}")


def _save(harness: Harness, prop: str, sample: Sample, verdict: Verdict,
          recorder: FuzzRecorder, target_name: str, *, status: str = "new") -> str:
    """Save the case and settle its signature; what to add to the failure message. A
    failure to save is said, never raised: it must not replace the finding."""
    sig = signature(verdict, harness.layers)
    case = ""
    try:
        path, created = save_case(harness.case(prop, sample, verdict), harness.config.corpus)
    except (OSError, CorpusError) as exc:
        recorder.unsaved_errors.append(f"{prop}: {exc}")
        saved = f"could not save: {exc}"
    else:
        if created:
            recorder.saved.append(path)
        case = str(path)
        saved = f"corpus case: {path}{'' if created else ' (already in the corpus)'}"
    pattern = verdict.layer_pattern()
    recorder.settle(sig, status=status, case=case, pattern=pattern, target=target_name)
    if recorder.soak is not None and recorder.soak.log is not None:
        recorder.soak.log.failure({"signature": sig, "case": case, "target": target_name,
                                   "pattern": pattern, "status": status, "t": time.time()})
    if recorder.claims is not None:
        try:
            recorder.claims.settle(sig, case=case, pattern=pattern)
        except OSError as exc:
            recorder.notes.append(f"could not share the case of {sig!r} with the other "
                                  f"workers: {exc}")
    return f"signature: {sig}\n{saved}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    profile = config.getoption("esm_profile") or ("ci" if os.environ.get("CI") else "quick")
    settings.load_profile(profile)
    database = config.getoption("esm_database")
    if database:
        try:
            settings.register_profile(f"{profile}+database", settings.get_profile(profile),
                                      database=example_database(database))
        except ValueError as exc:
            raise pytest.UsageError(f"--esm-database: {exc}") from None
        settings.load_profile(f"{profile}+database")
    recorder = FuzzRecorder(_config_from(config, profile), profile)
    claims = (getattr(config, "workerinput", {}).get("esmfuzz_claims")
              or config.getoption("esm_claims"))
    if claims:
        recorder.claims = Claims(claims, namespace=_namespace(recorder.config))
    recorder.soak = Soak.from_options(config, recorder)
    config.stash[_RECORDER] = recorder


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """The xdist controller gives its workers one claims directory (:class:`Claims`)."""
    recorder = node.config.stash.get(_RECORDER, None)
    if recorder is None:
        return
    if recorder.claims is None:
        recorder.claims = Claims(tempfile.mkdtemp(prefix="esmfuzz-claims-"),
                                 namespace=_namespace(recorder.config))
        recorder.owns_claims = True
    node.workerinput["esmfuzz_claims"] = str(recorder.claims.directory)


def pytest_unconfigure(config: pytest.Config) -> None:
    recorder = config.stash.get(_RECORDER, None)
    if recorder is not None and recorder.owns_claims:
        shutil.rmtree(recorder.claims.directory, ignore_errors=True)
    if recorder is not None and recorder.soak is not None:
        recorder.soak.close()


def example_database(url: str):
    """Hypothesis's own database for ``url``: ``redis://...`` or a directory."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            import redis
            from hypothesis.extra.redis import RedisExampleDatabase
        except ImportError:
            raise ValueError(
                f"{url!r} needs the redis client: pip install 'esmfuzz[redis]'") from None
        client = redis.Redis.from_url(url)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise ValueError(f"{url!r}: cannot reach the Redis server: {exc}") from None
        return RedisExampleDatabase(client)
    if "://" in url:
        raise ValueError(f"{url!r} is neither a directory nor a redis:// URL")
    return DirectoryBasedExampleDatabase(url)


class SliceOver(unittest.SkipTest):
    """Raised from an example to end a soak target's slice: Hypothesis re-raises skip
    exceptions at once, without counting a failure or shrinking."""


class Soak:
    """A soak process's share of the run: its time slice per target, its statistics log,
    and a stop asked for by SIGTERM or SIGINT (the example in flight ends, a failure being
    shrunk is saved as small as it got, the statistics are written, the targets pass)."""

    def __init__(self, slice_seconds: float | None, log: RunLog | None):
        self.slice = slice_seconds
        self.log = log
        self.stopping = False
        self.target_started = time.monotonic()
        if slice_seconds is not None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._stop)
        if log is not None:
            log.start()

    @classmethod
    def from_options(cls, config: pytest.Config, recorder: FuzzRecorder) -> Soak | None:
        slice_seconds = config.getoption("esm_soak_slice")
        path = config.getoption("esm_soak_log")
        if slice_seconds is None and path is None:
            return None
        if slice_seconds is not None and not (slice_seconds > 0 and math.isfinite(slice_seconds)):
            raise pytest.UsageError(f"--esm-soak-slice {slice_seconds!r} must be a positive "
                                    f"number of seconds")
        worker = getattr(config, "workerinput", {}).get("workerid", "main")
        controller = worker == "main" and bool(getattr(config.option, "numprocesses", None))
        log = None
        if path and not controller:  # an xdist controller runs no example
            import torch

            from esmfuzz.models import resolve_device

            c = recorder.config
            device = resolve_device(c.device)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
            log = RunLog(path.replace("{worker}", worker), worker=worker, describe={
                "model": c.model, "device": f"{device} ({name})", "dtype": c.dtype,
                "packed_impl": c.packed_impl, "padded_impl": c.padded_impl,
                "profile": recorder.profile})
        return cls(slice_seconds, log)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def begin(self, target: str) -> None:
        self.target_started = time.monotonic()
        if self.log is not None:
            self.log.begin(target)

    def over(self) -> bool:
        """The slice is spent, or a stop was asked for."""
        return self.stopping or (
            self.slice is not None and time.monotonic() - self.target_started > self.slice
        )

    def close(self) -> None:
        if self.log is not None:
            self.log.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA, which is not available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class FuzzRecorder:
    """Per-session state: the configuration, statistics per property and stratum, saved cases."""

    def __init__(self, config: Config, profile: str):
        self.config = config
        self.profile = profile
        self.rows: dict[tuple[str, str], dict] = {}
        self.reach = Reach()
        self.saved: list[Path] = []
        self.unsaved: tuple | None = None
        """The latest failing example not yet in the corpus: saved if the test ends failed
        without a final (shrunk, reproduced) example, as with a flaky implementation."""
        self.unsaved_errors: list[str] = []
        """Failures that could not be written to the corpus, and why."""
        self.header = ""
        self.notes: list[str] = []
        self.known: dict[str, Known] = {}
        """Distinct failures by signature: found and saved in this run, or open corpus
        cases that still fail. A later failure with one of these signatures is counted
        as seen again, not shrunk again."""
        self.claims: Claims | None = None
        """Shared with the other processes of the run (xdist workers), if any."""
        self.owns_claims = False
        self.soak: Soak | None = None
        self.mine: set[str] = set()
        """Signatures this process claimed: it shrinks and saves them."""
        self.skipped: dict[str, dict] = {}
        """Examples skipped because esmfuzz's own computation failed, by reason:
        ``{"advice": ..., "first": message, "targets": {target: count}}``."""
        self.unchecked: list[str] = []
        """Targets every example of which was skipped: the run fails as esmfuzz's error."""
        self.spreads: dict[str, dict] = {}
        """Per target where identical calls of the implementation under test gave different
        outputs: the worst spread measured, its bound, and how the failures it explained
        were judged."""
        self.firsts: dict[tuple[str, str], tuple[Sample, Verdict]] = {}
        """Per target, its first failure where it showed on every one of repeated calls of a
        nondeterministic implementation: saved should shrinking end on one that does not."""
        self._corpus_cache: tuple[list[tuple[Path, Case]], list[CorpusError]] | None = None

    def claimed_elsewhere(self, sig: str, *, claim: bool) -> bool:
        """True where another process of the run claimed ``sig`` first; it is then known
        here too, and this process does not shrink it again. ``claim``: a target's first
        failure claims its signature; a shrink step only looks (shrinking passes through
        failures it will not save)."""
        if self.claims is None or sig in self.known or sig in self.mine:
            return False
        if claim and self.claims.claim(sig):
            self.mine.add(sig)
            return False
        if not self.claims.claimed(sig):
            return False
        theirs = self.claims.read(sig)
        self.known[sig] = Known(sig, "new", theirs.get("case", ""), theirs.get("pattern", ""))
        return True

    def distinct(self) -> list[Known]:
        """Each distinct failure once (a signature folded into another's maps to it)."""
        out: dict[int, Known] = {}
        for known in self.known.values():
            out.setdefault(id(known), known)
        return list(out.values())

    def corpus(self) -> tuple[list[tuple[Path, Case]], list[CorpusError]]:
        if self._corpus_cache is None:
            self._corpus_cache = load_corpus(self.config.corpus)
        return self._corpus_cache

    def skip(self, target: str, failure: HarnessError) -> None:
        """One example not checked: esmfuzz's own computation failed (never a finding)."""
        item = self.skipped.setdefault(failure.reason, {"advice": failure.advice,
                                                        "first": str(failure), "targets": {}})
        item["targets"][target] = item["targets"].get(target, 0) + 1
        if self.soak is not None and self.soak.log is not None:
            self.soak.log.skip(target, failure.reason)

    def skipped_in(self, target: str) -> int:
        return sum(item["targets"].get(target, 0) for item in self.skipped.values())

    def spread(self, target: str, repeat: Repeat, *, outcome: str) -> None:
        """A nondeterministic implementation, measured on a failure of ``target``; ``outcome``
        says how that failure was judged (``reproduced``, ``noise``, ``finding``)."""
        spread = repeat.spread
        item = self.spreads.setdefault(target, {"worst": None, "bound": spread.threshold,
                                                "where": "", "reproduced": 0, "noise": 0,
                                                "finding": 0, "calls": len(repeat.verdicts)})
        if item["worst"] is None or spread.value > item["worst"]:
            layer = spread.worst.get("layer")
            item["worst"] = _json_float(spread.value)
            item["where"] = spread.path + (f", layer {layer}" if layer is not None else "")
        item[outcome] += 1

    def settle(self, sig: str, *, status: str, case: str, pattern: str, target: str) -> None:
        known = self.known.setdefault(sig, Known(sig, status, case, pattern))
        if target not in known.targets:
            known.targets.append(target)

    def record(self, prop: str, stratum: str, sample: Sample, verdict: Verdict,
               under_test: list[str], *, scope: Scope, seen_again: bool = False) -> None:
        row = self.rows.setdefault(
            (prop, stratum),
            {"examples": 0, "failures": 0, "first_failure": None, "worst": None,
             "under_test": under_test, "shrink_calls": 0, "seen_again": 0,
             "edges": dict.fromkeys(edges.reachable(scope), 0)},
        )
        shrinking = not seen_again and row["first_failure"] is not None
        if not shrinking:
            for edge in edges.hits((sample.sequences, sample.variant), scope):
                row["edges"][edge] += 1
        if seen_again:
            row["examples"] += 1
            row["seen_again"] += 1
        elif shrinking:
            row["shrink_calls"] += 1  # after the first failure, Hypothesis is shrinking it
        else:
            row["examples"] += 1
            row["failures"] += not verdict.ok
            if not verdict.ok:
                row["first_failure"] = row["examples"]
                row["failed_at"] = time.monotonic()
        if self.soak is not None and self.soak.log is not None and not shrinking:
            self.soak.log.example(f"{prop}[{stratum}]", verdict, known=seen_again,
                                  sequences=sample.sequences, variant=sample.variant)
        # A known bug seen again is listed under "distinct failures", not as this row's worst.
        if row["worst"] is None or (not seen_again and verdict.margin < row["worst"].margin):
            row["worst"] = verdict
        self.reach.add(sample)

    def export(self) -> dict:
        """Everything the summary needs, as JSON-ready data: what an xdist worker sends to
        the controller (:meth:`merge`)."""
        return {
            "rows": [
                {"key": list(key), **row, "worst": dataclasses.asdict(row["worst"])}
                for key, row in self.rows.items()
            ],
            "reach": self.reach.as_dict(),
            "saved": [str(p) for p in self.saved],
            "unsaved_errors": self.unsaved_errors,
            "header": self.header,
            "notes": self.notes,
            "known": [dataclasses.asdict(k) for k in self.distinct()],
            "skipped": self.skipped,
            "unchecked": self.unchecked,
            "spreads": self.spreads,
        }

    def merge(self, data: dict) -> None:
        """Add a worker's :meth:`export` to this (the controller's) recorder."""
        for item in data["rows"]:
            item = dict(item)
            key = tuple(item.pop("key"))
            worst = Verdict(**item.pop("worst"))
            row = self.rows.get(key)
            if row is None:
                self.rows[key] = {**item, "worst": worst}
                continue
            row["examples"] += item["examples"]
            row["failures"] += item["failures"]
            row["shrink_calls"] += item["shrink_calls"]
            row["seen_again"] += item["seen_again"]
            for edge, count in item["edges"].items():
                row["edges"][edge] = row["edges"].get(edge, 0) + count
            firsts = [x for x in (row["first_failure"], item["first_failure"]) if x is not None]
            row["first_failure"] = min(firsts) if firsts else None
            if worst.margin < row["worst"].margin:
                row["worst"] = worst
        self.reach.merge(data["reach"])
        self.saved += [Path(p) for p in data["saved"]]
        self.unsaved_errors += data["unsaved_errors"]
        self.header = self.header or data["header"]
        for item in data["known"]:
            mine = self.known.setdefault(item["signature"], Known(**{
                **item, "targets": [], "seen_again": 0, "also": []}))
            mine.seen_again += item["seen_again"]
            mine.case, mine.pattern = mine.case or item["case"], mine.pattern or item["pattern"]
            mine.targets += [t for t in item["targets"] if t not in mine.targets]
            for sig in item["also"]:
                if sig not in mine.also:
                    mine.also.append(sig)
                self.known.setdefault(sig, mine)
        self.notes += [n for n in data["notes"] if n not in self.notes]
        for reason, item in data["skipped"].items():
            mine = self.skipped.setdefault(reason, {**item, "targets": {}})
            for name, count in item["targets"].items():
                mine["targets"][name] = mine["targets"].get(name, 0) + count
        self.unchecked += data["unchecked"]
        for name, item in data["spreads"].items():
            mine = self.spreads.get(name)
            if mine is None:
                self.spreads[name] = dict(item)
                continue
            for key in ("reproduced", "noise", "finding"):
                mine[key] += item[key]
            if float(item["worst"]) > float(mine["worst"]):
                mine["worst"], mine["where"] = item["worst"], item["where"]

    def describe_harness(self) -> None:
        """The summary's header line and notes, from this process's harness (in a worker,
        before its results go to the controller, which loads no model)."""
        try:
            harness = harness_for(self.config)
            pair = harness.pair
            self.header = (
                f"model {pair.spec.text} on {pair.device}; candidate {str(pair.dtype)[6:]}, "
                f"backend {harness.backend}; {pair.oracle_note}; profile {self.profile}"
            )
            self.notes += [n for n in harness.refusal_notes() if n not in self.notes]
        except Exception as exc:  # the summary must never hide the test results
            self.header = f"(model pair unavailable: {exc})"

    def report(self) -> dict:
        """What ran, per property and stratum, as JSON-ready data (``--esm-report``)."""
        rows = []
        for (prop, stratum), row in sorted(self.rows.items()):
            worst: Verdict = row["worst"]
            rows.append(
                {
                    "property": prop,
                    "stratum": stratum,
                    "examples": row["examples"],
                    "failures": row["failures"],
                    "first_failure": row["first_failure"],
                    "shrink_calls": row["shrink_calls"],
                    "seen_again": row["seen_again"],
                    "metric": worst.metric,
                    "value": _json_float(worst.value),
                    "threshold": _json_float(worst.threshold),
                    "margin": _json_float(worst.margin),
                    "layer": worst.worst.get("layer"),
                    "path": worst.path,
                    "under_test": row["under_test"],
                    "edges": row["edges"],
                    "edges_never_hit": [e for e, n in row["edges"].items() if not n],
                    "skipped": self.skipped_in(f"{prop}[{stratum}]"),
                }
            )
        return {"profile": self.profile, "rows": rows, "saved": [str(p) for p in self.saved],
                "reach": self.reach.as_dict(),
                "failures": [dataclasses.asdict(k) for k in self.distinct()],
                "skipped": self.skipped, "unchecked": self.unchecked,
                "nondeterministic": self.spreads}


class Reach:
    """How far into the input space the examples of a run went."""

    def __init__(self):
        self.sequences = self.tokens = self.longest = self.masks = 0
        self.rare: set[str] = set()

    def add(self, sample: Sample) -> None:
        from esmfuzz.alphabet import MASK, RARE_RESIDUES, layout_residues

        for layout in (sample.sequences, sample.variant or ()):
            if not layout:
                continue
            lengths, residues = layout_residues(layout)
            self.sequences = max(self.sequences, len(layout))
            self.tokens = max(self.tokens, sum(lengths) + 2 * len(lengths))
            self.longest = max(self.longest, max(lengths))
            self.masks += MASK in residues
            self.rare |= set(residues) & set(RARE_RESIDUES)

    def merge(self, data: dict) -> None:
        self.sequences = max(self.sequences, data["max_sequences_per_pack"])
        self.tokens = max(self.tokens, data["max_tokens_per_pack"])
        self.longest = max(self.longest, data["longest_sequence"])
        self.rare |= set(data["rare_residues_seen"])
        self.masks += data["layouts_with_mask"]

    def as_dict(self) -> dict:
        return {"max_sequences_per_pack": self.sequences, "max_tokens_per_pack": self.tokens,
                "longest_sequence": self.longest, "rare_residues_seen": sorted(self.rare),
                "layouts_with_mask": self.masks}

    def describe(self) -> str:
        return (f"reach: up to {self.sequences} sequences and {self.tokens} tokens per pack, "
                f"longest sequence {self.longest} residues; rare residues seen: "
                f"{' '.join(sorted(self.rare)) or 'none'}; <mask> in {self.masks} layouts")


def _write_edges(tr, rows: dict) -> None:
    """Per target, the edges its checked examples hit, and those they never hit."""
    tr.write_line("edges hit, in examples checked (esmfuzz.edges; shrink steps not counted):")
    never = 0
    for (prop, stratum), row in sorted(rows.items()):
        hit = [f"{edge}: {n}" for edge, n in row["edges"].items() if n]
        missed = [edge for edge, n in row["edges"].items() if not n]
        never += len(missed)
        line = f"  {prop}[{stratum}]: " + ("; ".join(hit) or "no edge")
        if missed:
            line += f"; never hit: {', '.join(missed)}"
        tr.write_line(line, yellow=bool(missed))
    if never:
        tr.write_line(f"{never} edge(s) reachable by a target were never hit by it: run more "
                      "examples (--esm-profile dev, or a soak) to reach them", yellow=True)


def _write_skipped(tr, recorder: FuzzRecorder) -> None:
    """Examples esmfuzz did not check because its own computation failed, by why."""
    for reason, item in recorder.skipped.items():
        total = sum(item["targets"].values())
        where = ", ".join(f"{t}: {n}" for t, n in sorted(item["targets"].items()))
        tr.write_line(f"{total} example{'s' * (total != 1)} skipped: {reason}; "
                      f"{item['advice']} ({where}); first: {_clip(item['first'], 300)}",
                      red=True)
    for name in recorder.unchecked:
        tr.write_line(f"esmfuzz error: {name} checked no example (every one was skipped); "
                      f"this is not a finding against the code under test", red=True)


def _write_spreads(tr, recorder: FuzzRecorder) -> None:
    """Where identical calls of the implementation under test gave different outputs."""
    for name, item in sorted(recorder.spreads.items()):
        judged = []
        if item["reproduced"]:
            judged.append(f"{item['reproduced']} failed on every call and stand")
        if item["noise"]:
            judged.append(f"{item['noise']} failed on some calls only, within the noise "
                          f"bound: not findings")
        if item["finding"]:
            judged.append(f"{item['finding']} spread past the bound: finding "
                          f"'nondeterministic'")
        tr.write_line(
            f"nondeterministic: {name}: identical calls of the implementation under test "
            f"give different outputs, spread up to {float(item['worst']):.3g} against "
            f"bound {item['bound']:g} ({item['where']}); of the failures judged on "
            f"{item['calls'] + 1} calls: {'; '.join(judged)}",
            red=bool(item["finding"]), yellow=not item["finding"],
        )


def _clip(text: str, most: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."


def _json_float(value: float) -> float | str:
    return value if value == value and abs(value) != float("inf") else str(value)


_RECORDER = pytest.StashKey[FuzzRecorder]()


def stratum_of_layout(sequences) -> str:
    from strategies import stratum_of

    return stratum_of(max(residue_count(s) for s in sequences))


_COUNT_BINS = ((1, "1"), (4, "2-4"), (32, "5-32"), (math.inf, "33+"))


def check_and_record(
    harness: Harness,
    recorder: FuzzRecorder,
    prop: str,
    sample: Sample,
    *,
    stratum: str | None = None,
) -> Verdict | None:
    """One fuzz example: check, report to Hypothesis, save the final shrunk failure.

    Returns None for an example not checked: a shrink attempt past ``shrink_seconds``
    (Hypothesis sees it pass, so it keeps the smallest failure so far), or one that
    esmfuzz's own computation failed on (skipped and counted, never a finding).
    """
    scope = PROPERTIES[prop].scope(harness.config, stratum)
    stratum = stratum or "mixed"
    target_name = f"{prop}[{stratum}]"
    count = len(sample.sequences)
    event(f"stratum={stratum}")
    event("sequences=" + next(b for n, b in _COUNT_BINS if count <= n))
    final = current_build_context().is_final
    budget = harness.config.shrink_seconds
    row = recorder.rows.get((prop, stratum))
    shrinking = not final and row is not None and row.get("failed_at") is not None
    stopping = recorder.soak is not None and recorder.soak.stopping
    if shrinking and (stopping or (budget and time.monotonic() - row["failed_at"] > budget)):
        row["shrink_cut"] = "the soak run was stopped" if stopping else (
            f"--esm-shrink-seconds {budget:g}")
        return None
    if not shrinking and not final and recorder.soak is not None and recorder.soak.over():
        raise SliceOver("the soak slice is over")
    started = time.perf_counter()
    phases = dict(harness.timings) if harness.timings is not None else None
    try:
        verdict = harness.check(prop, sample, explain=final)
        sig = None if verdict.ok else signature(verdict, harness.layers)
        first = row is None or row["first_failure"] is None
        if sig is not None and shrinking and target_name in recorder.spreads:
            verdict = _confirmed(harness, prop, sample, verdict, sig)
            sig = None if verdict.ok else sig
        judged = None
        if (sig is not None and not final and first and sig not in recorder.known
                and verdict.metric not in FAILURE_KINDS):
            verdict, judged = _judged(harness, recorder, prop, stratum, sample, verdict, sig)
            sig = None if verdict.ok else signature(verdict, harness.layers)
    except HarnessError as failure:
        recorder.skip(target_name, failure)
        return None
    except Exception as exc:  # esmfuzz's own code, outside the check (never a finding)
        recorder.skip(target_name, HarnessError.of("esmfuzz's checks", exc))
        return None
    if recorder.soak is not None and recorder.soak.log is not None:
        recorder.soak.log.timing(target_name, time.perf_counter() - started,
                                 _spent(harness.timings, phases))
    if final and verdict.ok and (prop, stratum) in recorder.firsts:
        # Shrinking ended on a failure that showed on some calls only: save the first one.
        sample, verdict = recorder.firsts.pop((prop, stratum))
        verdict.notes.append("saved before shrinking: Hypothesis's smallest failure did not "
                             "fail again (the implementation under test is not "
                             "deterministic); this one failed on every repeated call")
        sig = signature(verdict, harness.layers)
    if sig is not None and not final and first and judged is None:
        same = _same_bug(harness, recorder, prop, sig, sample)
        if same is not None:
            recorder.known[sig] = same
    if (
        sig is not None
        and not final  # the final, shrunk failure is always saved: nothing found is lost
        and (sig in recorder.known or recorder.claimed_elsewhere(sig, claim=first))
    ):
        # A bug this run already knows: counted, not shrunk again; fuzzing goes on.
        known = recorder.known[sig]
        if known.signature == sig:
            known.hit(target_name)
        else:
            known.fold(sig, target_name)
        recorder.record(prop, stratum, sample, verdict, harness.under_test(prop), scope=scope,
                        seen_again=True)
        return verdict
    recorder.record(prop, stratum, sample, verdict, harness.under_test(prop), scope=scope)
    if math.isfinite(verdict.margin) and judged is None:
        target(max(-verdict.margin, -1e6), label=f"{prop} margin")
    if verdict.ok:
        return verdict
    cut = recorder.rows[(prop, stratum)].get("shrink_cut")
    if cut:
        verdict.notes.append(f"shrinking stopped ({cut}): this case may not be minimal")
    if not final:
        if judged == "finding":
            raise Shrunk(_shrunk_now(harness, recorder, prop, stratum, sample, verdict, sig,
                                     judge=lambda c: _spread_failure(harness, prop, sig, c)))
        if first and _crowded(sample):
            raise Shrunk(_shrunk_now(harness, recorder, prop, stratum, sample, verdict, sig))
        recorder.unsaved = (harness, prop, sample, verdict, target_name)
        raise AssertionError(verdict.message())
    recorder.unsaved = None
    recorder.firsts.pop((prop, stratum), None)
    if harness.config.shrink_seconds:
        sample, verdict = _tightened(harness, prop, sample, verdict, sig)
    raise AssertionError(
        verdict.message() + "\n" + _save(harness, prop, sample, verdict, recorder, target_name)
    )


def _judged(harness: Harness, recorder: FuzzRecorder, prop: str, stratum: str, sample: Sample,
            verdict: Verdict, sig: str) -> tuple[Verdict, str | None]:
    """A target's first failure, before it is shrunk: the implementation under test called
    on it twice more. Where the calls' outputs are identical, or differ but every call
    fails the same way, the failure stands (None). Where it showed on some calls only, it
    is judged on the calls' spread instead: within the property's noise bound, it is the
    implementation's nondeterminism, not a bug (``noise``: a passing verdict, counted in
    the summary); past it, the spread is the finding (``finding``)."""
    repeat = harness.repeat(prop, sample)
    if repeat.spread is None:
        return verdict, None
    spread = repeat.spread
    calls = len(repeat.verdicts) + 1
    if repeat.reproduced(lambda v: signature(v, harness.layers), sig):
        recorder.spread(f"{prop}[{stratum}]", repeat, outcome="reproduced")
        recorder.firsts.setdefault((prop, stratum), (sample, verdict))
        verdict.notes.append(f"the implementation under test is not deterministic (identical "
                             f"calls differ: {spread.brief()}, {spread.path}); this failure "
                             f"showed on every one of {calls} calls")
        return verdict, None
    outcome = "noise" if spread.ok else "finding"
    recorder.spread(f"{prop}[{stratum}]", repeat, outcome=outcome)
    failing = sum(not v.ok for v in repeat.verdicts) + 1
    spread.notes.insert(0, f"{prop} failed on {failing} of {calls} identical calls "
                           f"({verdict.brief()} first); judged on the calls' spread instead")
    return spread, outcome


def _confirmed(harness: Harness, prop: str, sample: Sample, verdict: Verdict,
               sig: str) -> Verdict:
    """A shrink step's failure, for an implementation seen to be nondeterministic: it stands
    only where a second call fails the same way (else the second call's verdict)."""
    again = harness.check(prop, sample, explain=False)
    return verdict if not again.ok and signature(again, harness.layers) == sig else again


def _spread_failure(harness: Harness, prop: str, sig: str, candidate: Sample) -> Verdict | None:
    """The spread verdict of ``candidate`` where identical calls still disagree past the
    noise bound; None otherwise (a shrink step of a ``nondeterministic`` finding)."""
    try:
        repeat = harness.repeat(prop, candidate)
    except Exception:
        return None
    spread = repeat.spread
    if spread is None or spread.ok or signature(spread, harness.layers) != sig:
        return None
    failing = sum(not v.ok for v in repeat.verdicts)
    spread.notes.insert(0, f"{prop} failed on {failing} of {len(repeat.verdicts)} identical "
                           f"calls; judged on the calls' spread instead")
    return spread


def _spent(now: dict | None, before: dict | None) -> dict:
    """Seconds per kind of forward since ``before`` (with ``$ESMFUZZ_TIMINGS``)."""
    if now is None or before is None:
        return {}
    return {kind: now[kind] - before.get(kind, 0.0) for kind in now}


def _same_bug(harness: Harness, recorder: FuzzRecorder, prop: str, sig: str,
              sample: Sample) -> Known | None:
    """The failure of another property that this failure is the same bug as.

    One bug shows through several oracles (a missing rescale fails ``error_ratio``,
    ``packed_precision`` and ``statistics``). This failure is that bug again when the known
    failure's shrunk case, checked by ``prop``, fails with this very signature, or when this
    failing ``sample``, checked by the known failure's property, fails with the known
    signature; either costs a check or two per known failure instead of a shrink. A case or
    sample that fails otherwise, passes, or cannot run as the other property's sample
    belongs to another bug: this failure is shrunk as new.
    """
    if sig in recorder.known or (recorder.claims is not None and recorder.claims.claimed(sig)):
        return None
    candidates = [k for k in recorder.distinct() if k.case]
    if recorder.claims is not None:
        seen = {k.signature for k in candidates}
        candidates += [Known(c["signature"], "new", c["case"], c.get("pattern", ""))
                       for c in recorder.claims.settled() if c["signature"] not in seen]
    for known in candidates:
        if known.property == prop or known.status.startswith("accepted"):
            continue
        for check, expected in ((lambda k=known: _case_under(harness, prop, k.case), sig),
                                (lambda k=known: harness.check(k.property, sample,
                                                               explain=False),
                                 known.signature)):
            try:
                found = check()
            except Exception:
                continue
            if not found.ok and signature(found, harness.layers) == expected:
                return recorder.known.setdefault(known.signature, known)
    return None


def _case_under(harness: Harness, prop: str, path: str) -> Verdict:
    case = load_case(path)
    return harness.check(prop, case.sequences, case.extra, explain=False)


def _same_failure(harness: Harness, prop: str, sig: str, candidate: Sample) -> Verdict | None:
    """The verdict of ``candidate`` where it fails with signature ``sig``; None where it
    passes, fails otherwise or raises (a shrink step must keep the very failure)."""
    try:
        found = harness.check(prop, candidate, explain=False)
    except Exception:
        return None
    return None if found.ok or signature(found, harness.layers) != sig else found


STRUCTURED_SECONDS = 300.0
"""Time the structured passes may take on a crowded failure without ``--esm-shrink-seconds``
(measured: well under a minute at 8M on an H200, docs/performance.md)."""


class Shrunk(unittest.SkipTest):
    """Raised from an example once its crowded failure was shrunk and saved: Hypothesis
    re-raises skip exceptions at once, without shrinking again; the target then fails with
    the message."""


def _crowded(sample: Sample) -> bool:
    """More than three sequences or 512 tokens: each forward is costly, and Hypothesis's
    small steps would take minutes (seen: 240 s at 8M on an H200 for a pack past 2048
    tokens; 4 s per step for one 1022-residue sequence on two CPU cores), so
    :mod:`esmfuzz.tighten` takes over."""
    layouts = [sample.sequences, sample.variant or ()]
    return any(len(layout) > 3 or sum(map(residue_count, layout)) + 2 * len(layout) > 512
               for layout in layouts)


def _shrunk_now(harness: Harness, recorder: FuzzRecorder, prop: str, stratum: str,
                sample: Sample, verdict: Verdict, sig: str,
                judge: Callable[[Sample], Verdict | None] | None = None) -> str:
    """A first failure shrunk by :func:`esmfuzz.tighten.tighten` right away and saved (a
    crowded pack, or a spread between identical calls, which Hypothesis cannot shrink):
    the message the target fails with. ``judge(candidate)`` is the candidate's failing
    verdict with signature ``sig``, else None (default: :func:`_same_failure`); candidates
    that raise, pass or fail otherwise are refused. ``--esm-shrink-seconds`` (else
    :data:`STRUCTURED_SECONDS`) or a soak's stop ends the passes, and the smallest failure
    so far is saved."""
    judge = judge or (lambda candidate: _same_failure(harness, prop, sig, candidate))
    last = {"verdict": verdict}

    def still_fails(candidate: Sample) -> bool:
        found = judge(candidate)
        if found is not None:
            last["verdict"] = found
        return found is not None

    seconds = harness.config.shrink_seconds or STRUCTURED_SECONDS
    started = time.monotonic()
    smaller, tried = tighten(sample, still_fails, seconds=seconds,
                             stop=lambda: recorder.soak is not None and recorder.soak.stopping)
    spent = time.monotonic() - started
    recorder.rows[(prop, stratum)]["shrink_calls"] += tried
    try:
        explained = (harness.check(prop, smaller) if verdict.metric != NONDETERMINISTIC
                     else judge(smaller))
    except Exception:
        explained = None
    if explained is None or explained.ok or signature(explained, harness.layers) != sig:
        explained = last["verdict"]
        explained.notes.append("the shrunk case did not fail again when checked once more "
                               "(the implementation under test is not deterministic)")
    explained.notes.append(
        f"shrunk by esmfuzz's structured passes (fewer sequences, merged, shorter, plainer; "
        f"{tried} samples tried in {spent:.0f} s): from {_size(sample)} to {_size(smaller)}")
    if recorder.soak is not None and recorder.soak.stopping:
        explained.notes.append("shrinking stopped (the soak run was stopped): this case may "
                               "not be minimal")
    elif spent >= seconds:
        cut = (f"--esm-shrink-seconds {seconds:g}" if harness.config.shrink_seconds
               else f"after {seconds:g} s")
        explained.notes.append(f"shrinking stopped ({cut}): this case may not be minimal")
    return explained.message() + "\n" + _save(harness, prop, smaller, explained, recorder,
                                              f"{prop}[{stratum}]")


def _tightened(harness: Harness, prop: str, sample: Sample, verdict: Verdict, sig: str):
    """Hypothesis's final failure, made smaller where whole sequences or residues can go
    with the signature kept (:mod:`esmfuzz.tighten`), within ``shrink_seconds``: the
    sample and verdict to save. Only where a time is given: on by default at 60 s, it
    added minutes to CI's fault subset, whose cases shrink over hundreds of residues."""

    def still_fails(candidate: Sample) -> bool:
        return _same_failure(harness, prop, sig, candidate) is not None

    smaller, tried = tighten(sample, still_fails, seconds=harness.config.shrink_seconds)
    if smaller == sample:
        return sample, verdict
    try:
        explained = harness.check(prop, smaller)
    except Exception:
        return sample, verdict
    if explained.ok or signature(explained, harness.layers) != sig:
        return sample, verdict
    explained.notes.append(
        f"shrunk further after Hypothesis, by dropping sequences and residues with the "
        f"signature kept ({tried} samples tried): from {_size(sample)} to {_size(smaller)}"
    )
    explained.notes.extend(n for n in verdict.notes if n.startswith("shrinking stopped"))
    return smaller, explained


def _size(sample: Sample) -> str:
    count = len(sample.sequences)
    residues = sum(map(residue_count, sample.sequences))
    return f"{count} sequence{'s' * (count != 1)} of {residues} residues in all"


def replay_open_case(harness: Harness, recorder: FuzzRecorder, path: Path, case: Case,
                     target_name: str) -> None:
    """An open or accepted corpus case, before its target fuzzes: still failing, its
    signature is known (fuzzing goes on past it); passing, the summary says to mark it
    fixed."""
    try:
        verdict = harness.check_case(case)
    except Exception as exc:  # a case that cannot run must not stop the fuzzing
        recorder.notes.append(f"open case {path} could not run: {type(exc).__name__}: {exc}")
        return
    if verdict.ok:
        recorder.notes.append(f"open case {path} now passes: mark it fixed")
        return
    status = f"accepted: {case.reason}" if case.status == "accepted" else "still open"
    recorder.settle(signature(verdict, harness.layers), status=status, case=str(path),
                    pattern=verdict.layer_pattern(), target=target_name)


@pytest.fixture(scope="session")
def esm_config(request: pytest.FixtureRequest) -> Config:
    """The effective configuration: [tool.esmfuzz] overridden by --esm-* options."""
    return request.config.stash[_RECORDER].config


@pytest.fixture(scope="session")
def esm_harness(esm_config: Config) -> Harness:
    """The session-cached model pair and the implementations under test."""
    return harness_for(esm_config)


@pytest.fixture
def esm_fuzz(request: pytest.FixtureRequest, esm_harness: Harness) -> Callable:
    """Fuzz one property of :mod:`esmfuzz.registry` in one stratum (None: all lengths).

    Corpus cases of the same property run first, in the target of their length stratum:
    ``fixed`` ones as explicit examples (a regression fails the target), open ones as
    known bugs (:func:`replay_open_case`); the strategy's examples follow under the
    loaded profile.
    """
    recorder = request.config.stash[_RECORDER]

    def run(prop: str, stratum: str | None = None) -> None:
        entry = PROPERTIES[prop]
        name = f"{prop}[{stratum or 'mixed'}]"
        soak = recorder.soak
        if soak is not None and soak.stopping:
            pytest.skip("the soak run was stopped")
        progress = _Progress(request.config, name)

        def body(sample):
            try:
                verdict = check_and_record(esm_harness, recorder, prop, sample, stratum=stratum)
            except AssertionError:
                progress.example(ok=False)
                raise
            progress.example(ok=True, known=verdict is not None and not verdict.ok)

        test = given(sample=entry.samples(esm_harness.config, stratum))(body)
        cases, _ = recorder.corpus()
        for path, case in cases:
            if case.property != prop or not _replays_in(case, entry.strata, stratum):
                continue
            if case.status == "fixed":  # a regression fails the target at once
                test = example(sample=Sample.from_extra(case.sequences, case.extra))(test)
            else:
                replay_open_case(esm_harness, recorder, path, case, name)
        test = seeded(test, request.node.nodeid, request.config.getoption("esm_seed"))
        if soak is not None:
            soak.begin(name)
        shrunk = None
        try:
            test()
        except SliceOver:
            pass
        except Shrunk as done:
            shrunk = str(done)
        finally:
            progress.end()
        if shrunk is not None:
            pytest.fail(shrunk, pytrace=False)
        _all_skipped(recorder, prop, stratum or "mixed")

    return run


def _all_skipped(recorder: FuzzRecorder, prop: str, stratum: str) -> None:
    """A target that checked no example because esmfuzz's own computation failed on every
    one fails as esmfuzz's error, naming why; never as a finding (the run's exit status
    says so too: :func:`pytest_sessionfinish`)."""
    name = f"{prop}[{stratum}]"
    skipped = recorder.skipped_in(name)
    row = recorder.rows.get((prop, stratum))
    if not skipped or (row is not None and row["examples"]):
        return
    recorder.unchecked.append(name)
    why = "; ".join(f"{reason} ({item['advice']}); first: {item['first']}"
                    for reason, item in recorder.skipped.items() if name in item["targets"])
    pytest.fail(f"esmfuzz error, not a finding against the code under test: {name} checked "
                f"no example, all {skipped} were skipped because esmfuzz's own computation "
                f"failed: {why}", pytrace=False)


def seeded(test, nodeid: str, chosen: int | str | None):
    """``test`` (a ``@given`` function) with the randomness of the fuzz target ``nodeid``: the
    profile's (derandomized under ci: from the node id), or seed ``chosen`` mixed with it.
    ``benchmarks/edge_reach.py`` draws what a run draws through this too."""
    test.hypothesis.inner_test._hypothesis_internal_add_digest = nodeid.encode()
    if chosen is None:
        return test
    digest = hashlib.sha256(f"{chosen}:{nodeid}".encode()).digest()
    return seed(int.from_bytes(digest[:8], "big"))(test)


class _Progress:
    """A line per fuzz target as it ends, and every ``every`` seconds while it runs: on a
    CPU one target can take minutes, and pytest's dots say nothing meanwhile. Silent in
    xdist workers (their output is not shown) and under ``-q -q``."""

    def __init__(self, config: pytest.Config, name: str, *, every: float = 30.0):
        quiet = config.getoption("verbose") < -1 or hasattr(config, "workeroutput")
        self.tr = None if quiet else config.pluginmanager.get_plugin("terminalreporter")
        self.capture = config.pluginmanager.get_plugin("capturemanager")
        self.name, self.every = name, every
        self.start = self.last = time.monotonic()
        self.examples = self.failing = self.known = 0

    def example(self, *, ok: bool, known: bool = False) -> None:
        self.examples += 1
        self.failing += not ok
        self.known += known
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._write("running")

    def end(self) -> None:
        self._write("done")

    def _write(self, state: str) -> None:
        if self.tr is None:
            return
        # Output capture holds file descriptor 1 during a test: step around it, as pytest's
        # live logging does.
        suspended = self.capture.global_and_fixture_disabled() if self.capture else nullcontext()
        with suspended:
            self.tr.write_line(
                f"esmfuzz: {self.name} {state}: {self.examples} examples run "
                f"({self.failing} failing, shrinking included"
                + (f"; {self.known} of a known bug" if self.known else "")
                + f"), "
                f"{time.monotonic() - self.start:.0f} s"
            )


def _replays_in(case: Case, strata, stratum) -> bool:
    """A corpus case runs in one target: its length stratum's, else the property's first."""
    own = stratum_of_layout(case.sequences)
    return stratum == (own if own in strata else strata[0])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    recorder = item.config.stash.get(_RECORDER, None)
    if recorder is None or report.when != "call" or recorder.unsaved is None:
        return
    harness, prop, sample, verdict, target_name = recorder.unsaved
    recorder.unsaved = None
    if report.failed:
        verdict.notes.append(
            "saved unshrunk: the failure did not reproduce on the final run (the implementation "
            "under test is not deterministic)"
        )
        saved = _save(harness, prop, sample, verdict, recorder, target_name,
                      status="new, unshrunk")
        report.sections.append(("esmfuzz", f"unreproducible failure; {saved}"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker sends its rows to the controller, which prints one summary. A run
    that failed only because esmfuzz checked nothing in some target ends with pytest's
    internal-error status (3), not the status of a finding (1)."""
    recorder = session.config.stash.get(_RECORDER, None)
    if recorder is None:
        return
    if hasattr(session.config, "workeroutput"):
        if recorder.rows or recorder.skipped:
            recorder.describe_harness()
        session.config.workeroutput["esmfuzz"] = json.dumps(recorder.export())
        return
    if (recorder.unchecked and session.exitstatus == pytest.ExitCode.TESTS_FAILED
            and session.testsfailed <= len(recorder.unchecked)):
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    recorder = node.config.stash.get(_RECORDER, None)
    data = getattr(node, "workeroutput", {}).get("esmfuzz")
    if recorder is not None and data:
        recorder.merge(json.loads(data))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    recorder = config.stash.get(_RECORDER, None)
    if recorder is None or hasattr(config, "workeroutput"):
        return
    if not recorder.rows and not recorder.skipped:
        return
    tr = terminalreporter
    tr.section("esmfuzz summary")
    if not recorder.header:
        recorder.describe_harness()
    tr.write_line(recorder.header)
    header = (f"{'property':<20}{'stratum':<11}{'examples':>9}{'fail':>6}  "
              f"{'worst metric (path, layer)':<58}under test")
    tr.write_line(header)
    tr.write_line("-" * len(header))
    unexercised = []
    for (prop, stratum), row in sorted(recorder.rows.items()):
        worst: Verdict = row["worst"]
        where = ", ".join(
            x for x in (worst.path, f"layer {worst.worst.get('layer')}"
                        if worst.worst.get("layer") is not None else "") if x
        )
        detail = _clip(worst.brief() + (f" ({where})" if where else ""), 57)
        tested = "; ".join(row["under_test"]) or "none: esmfuzz defaults only"
        if row["seen_again"]:
            tested += f"  [+{row['seen_again']} failing with a known signature]"
        if not row["under_test"]:
            unexercised.append(f"{prop}[{stratum}]")
        tr.write_line(f"{prop:<20}{stratum:<11}{row['examples']:>9}{row['failures']:>6}  "
                      f"{detail:<58}{tested}")
    tr.write_line(recorder.reach.describe())
    _write_edges(tr, recorder.rows)
    _write_skipped(tr, recorder)
    _write_spreads(tr, recorder)
    if recorder.known:
        distinct = recorder.distinct()
        tr.write_line(f"distinct failures: {len(distinct)}", red=True)
        for known in distinct:
            again = f"; seen again {known.seen_again} times" if known.seen_again else ""
            also = f"; also seen as {'; '.join(known.also)}" if known.also else ""
            tr.write_line(
                f"  [{known.status}] {known.signature}"
                f"{': ' + known.pattern if known.pattern else ''}{also}; targets "
                f"{', '.join(known.targets)}{again}; case {known.case or '-'}",
                red=known.status == "new",
                yellow=known.status != "new",
            )
    if unexercised and len(unexercised) < len(recorder.rows):
        tr.write_line(
            f"{len(recorder.rows) - len(unexercised)} of {len(recorder.rows)} targets called "
            f"an implementation under test; the others ran only esmfuzz's default forwards "
            f"(their passes say nothing about your code): {', '.join(unexercised)}",
            yellow=True,
        )
    for note in recorder.notes:
        tr.write_line(f"note: {note}", yellow=True)
    _, errors = recorder.corpus()
    for error in errors:
        tr.write_line(f"corpus error: {error}", red=True)
    for path in recorder.saved:
        tr.write_line(f"saved corpus case: {path}", yellow=True)
    for error in recorder.unsaved_errors:
        tr.write_line(f"could not save: {error}", red=True)
    report = config.getoption("esm_report")
    if report:
        try:
            Path(report).write_text(json.dumps(recorder.report(), indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            tr.write_line(f"could not write --esm-report: {exc}", red=True)
