"""The pytest plugin: ``--esm-*`` options, Hypothesis profiles, fixtures, corpus capture, summary.

Registered through the ``pytest11`` entry point, so ``pytest fuzz/`` finds it in
any environment where esmfuzz is installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, seed, settings, target
from hypothesis.control import current_build_context
from hypothesis.database import DirectoryBasedExampleDatabase

from esmfuzz.alphabet import residue_count
from esmfuzz.corpus import Case, CorpusError, load_corpus, save_case
from esmfuzz.harness import Config, Harness, harness_for, read_pyproject
from esmfuzz.properties import Verdict

__all__ = ["FuzzRecorder", "PROFILES", "check_and_record", "stratum_of_layout"]

PROFILES = ("ci", "dev", "soak")
_OPTIONS = {
    "model": "model spec: fair-esm name, path to a .pt, or synthetic:<esm2 name>[?seed=N]",
    "device": "auto, cpu, cuda or cuda:N",
    "dtype": "candidate dtype: float16, bfloat16 or float32",
    "oracle-dtype": "error-ratio oracle dtype: float64 (falls back to float32 if it does not fit) "
    "or float32",
    "backend": "attention backend of the reference packed forward: auto, flash-attn, "
    "torch-varlen or sdpa",
    "packed-impl": "packed forward under test, module:function",
    "padded-impl": "padded forward under test, module:function",
    "corpus": "corpus directory where shrunk failures are saved and replayed from",
    "pack-tokens": "token budget of a generated pack (default 1536; long packs reveal FP16 "
    "position rounding)",
}


def _register_profiles() -> None:
    common = {
        "deadline": None,
        "print_blob": True,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    settings.register_profile("ci", max_examples=6, derandomize=True, database=None, **common)
    settings.register_profile("dev", max_examples=40, **common)
    settings.register_profile(
        "soak",
        max_examples=10**9,
        database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
        phases=list(Phase),
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
        "--esm-report",
        dest="esm_report",
        default=None,
        metavar="PATH",
        help="write the per-property statistics of this run as JSON to PATH",
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
        help="Hypothesis profile: ci (small, fixed seed), dev, soak "
        "(default: ci when $CI is set, else dev)",
    )


def _config_from(pytest_config: pytest.Config) -> Config:
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
    corpus = Path(config.corpus)
    if not corpus.is_absolute():
        corpus = pytest_config.rootpath / corpus
    return dataclasses.replace(config, corpus=str(corpus))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    profile = config.getoption("esm_profile") or ("ci" if os.environ.get("CI") else "dev")
    settings.load_profile(profile)
    recorder = FuzzRecorder(_config_from(config), profile)
    config.stash[_RECORDER] = recorder


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
        self.saved: list[Path] = []
        self.unsaved: tuple | None = None
        """The latest failing example not yet in the corpus: saved if the test ends failed
        without a final (shrunk, reproduced) example, as with a flaky implementation."""
        self._corpus_cache: tuple[list[tuple[Path, Case]], list[CorpusError]] | None = None

    def corpus(self) -> tuple[list[tuple[Path, Case]], list[CorpusError]]:
        if self._corpus_cache is None:
            self._corpus_cache = load_corpus(self.config.corpus)
        return self._corpus_cache

    def record(self, prop: str, stratum: str, verdict: Verdict) -> None:
        row = self.rows.setdefault(
            (prop, stratum), {"examples": 0, "failures": 0, "first_failure": None, "worst": None}
        )
        row["examples"] += 1
        row["failures"] += not verdict.ok
        if not verdict.ok and row["first_failure"] is None:
            row["first_failure"] = row["examples"]
        if row["worst"] is None or verdict.margin < row["worst"].margin:
            row["worst"] = verdict

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
                    "metric": worst.metric,
                    "value": _json_float(worst.value),
                    "threshold": _json_float(worst.threshold),
                    "layer": worst.worst.get("layer"),
                }
            )
        return {"profile": self.profile, "rows": rows, "saved": [str(p) for p in self.saved]}


def _json_float(value: float) -> float | str:
    return value if value == value and abs(value) != float("inf") else str(value)


_RECORDER = pytest.StashKey[FuzzRecorder]()


def stratum_of_layout(sequences) -> str:
    from strategies import stratum_of

    return stratum_of(max(residue_count(s) for s in sequences))


def check_and_record(
    harness: Harness,
    recorder: FuzzRecorder,
    prop: str,
    sequences,
    extra: Mapping | None = None,
    *,
    stratum: str | None = None,
) -> Verdict:
    """One fuzz example: check, report to Hypothesis, save the final shrunk failure."""
    stratum = stratum or stratum_of_layout(sequences)
    event(f"stratum={stratum}")
    event(f"sequences={'1' if len(sequences) == 1 else '2-4' if len(sequences) <= 4 else '5+'}")
    try:
        verdict = harness.check(prop, sequences, extra)
    except Exception as exc:  # a crash of the implementation under test is a finding too
        verdict = Verdict(
            prop,
            ok=False,
            metric="exception",
            value=float("nan"),
            threshold=0.0,
            margin=float("-inf"),
            violations=[line.rstrip() for line in traceback.format_exception_only(exc)],
        )
    recorder.record(prop, stratum, verdict)
    if verdict.margin != float("inf") and verdict.margin == verdict.margin:
        target(max(-verdict.margin, -1e6), label=f"{prop} margin")
    if verdict.ok:
        return verdict
    message = verdict.message()
    if not current_build_context().is_final:
        recorder.unsaved = (harness, prop, list(sequences), extra, verdict)
    else:
        recorder.unsaved = None
        path, created = save_case(
            harness.case(prop, sequences, extra, verdict), harness.config.corpus
        )
        if created:
            recorder.saved.append(path)
        message += f"\ncorpus case: {path}{'' if created else ' (already in the corpus)'}"
    raise AssertionError(message)


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
    """Fuzz one property over a strategy of ``(sequences, extra)`` samples.

    Corpus cases of the same property and length stratum run first, as explicit
    examples; the strategy's examples follow under the loaded profile.
    """
    recorder = request.config.stash[_RECORDER]

    def run(prop: str, samples, *, stratum: str | None = None) -> None:
        def body(sample):
            sequences, extra = sample
            check_and_record(esm_harness, recorder, prop, list(sequences), extra, stratum=stratum)

        test = given(sample=samples)(body)
        cases, _ = recorder.corpus()
        for _, case in cases:
            if case.property == prop and (
                stratum is None or stratum_of_layout(case.sequences) == stratum
            ):
                test = example(sample=(list(case.sequences), dict(case.extra)))(test)
        test.hypothesis.inner_test._hypothesis_internal_add_digest = (
            f"{request.node.nodeid}".encode()
        )
        chosen = request.config.getoption("esm_seed")
        if chosen is not None:
            digest = hashlib.sha256(f"{chosen}:{request.node.nodeid}".encode()).digest()
            test = seed(int.from_bytes(digest[:8], "big"))(test)
        test()

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    recorder = item.config.stash.get(_RECORDER, None)
    if recorder is None or report.when != "call" or recorder.unsaved is None:
        return
    harness, prop, sequences, extra, verdict = recorder.unsaved
    recorder.unsaved = None
    if report.failed:
        verdict.notes.append("saved unshrunk: the failure did not reproduce on the final run")
        path, created = save_case(
            harness.case(prop, sequences, extra, verdict), harness.config.corpus
        )
        if created:
            recorder.saved.append(path)
        report.sections.append(("esmfuzz", f"unreproducible failure saved to {path}"))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    recorder = config.stash.get(_RECORDER, None)
    if recorder is None or not recorder.rows:
        return
    report = config.getoption("esm_report")
    if report:
        Path(report).write_text(json.dumps(recorder.report(), indent=2, sort_keys=True) + "\n")
    tr = terminalreporter
    tr.section("esmfuzz summary")
    try:
        harness = harness_for(recorder.config)
        pair = harness.pair
        tr.write_line(
            f"model {pair.spec.text} on {pair.device}; candidate {str(pair.dtype)[6:]}, "
            f"backend {harness.backend}; {pair.oracle_note}; profile {recorder.profile}"
        )
    except Exception as exc:  # the summary must never hide the test results
        tr.write_line(f"(model pair unavailable: {exc})")
    header = f"{'property':<20}{'stratum':<11}{'examples':>9}{'fail':>6}  worst metric"
    tr.write_line(header)
    tr.write_line("-" * len(header))
    for (prop, stratum), row in sorted(recorder.rows.items()):
        worst: Verdict = row["worst"]
        where = worst.worst.get("layer")
        detail = f"{worst.metric}={worst.value:.5g} vs {worst.threshold:g}" + (
            f" (layer {where})" if where is not None else ""
        )
        tr.write_line(f"{prop:<20}{stratum:<11}{row['examples']:>9}{row['failures']:>6}  {detail}")
    _, errors = recorder.corpus()
    for error in errors:
        tr.write_line(f"corpus error: {error}", red=True)
    for path in recorder.saved:
        tr.write_line(f"saved corpus case: {path}", yellow=True)
