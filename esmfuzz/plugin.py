"""The pytest plugin: ``--esm-*`` options, the fuzz fixtures, and the hooks of a fuzz run.

Registered through the ``pytest11`` entry point, so ``pytest fuzz/`` finds it wherever
esmfuzz is installed. It stays quiet until asked, like Hypothesis's own plugin: in a
session that gives no ``--esm-*`` option and collects no test using its fixtures, it
imports neither torch nor the rest of esmfuzz, loads no Hypothesis profile and changes
nothing. Asked, it starts one :class:`esmfuzz.session.Session` per process; the checking,
shrinking and saving happen there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from esmfuzz.config import OPTIONS, ConfigError, default_profile

if TYPE_CHECKING:
    from esmfuzz.config import Config
    from esmfuzz.harness import Harness
    from esmfuzz.session import Session

__all__ = ["FIXTURES"]

FIXTURES = ("esm_config", "esm_harness", "esm_fuzz")
"""A collected test that uses one of these asks for esmfuzz."""

_SESSION = pytest.StashKey["Session"]()
_CLAIMS = pytest.StashKey[str]()
"""The claims directory an xdist controller hands its workers (made by the first user)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("esmfuzz", "esmfuzz: fuzzing ESM-2 inference")
    for option in OPTIONS:
        kwargs = {"dest": _dest(option), "help": option.help, "metavar": option.metavar}
        if option.action == "store_false":
            group.addoption(option.pytest_flag, action="store_true", default=False,
                            dest=_dest(option), help=option.help)
        elif option.action == "append":
            group.addoption(option.pytest_flag, action="append", default=[], **kwargs)
        else:
            if not option.run_only:
                kwargs["help"] += " (default from [tool.esmfuzz])"
            group.addoption(option.pytest_flag, default=None, **kwargs)


def _dest(option) -> str:
    return f"esm_{option.field}"


def _given(config: pytest.Config) -> dict[str, object]:
    """The ``--esm-*`` options given on the command line, by option name."""
    given = {}
    for option in OPTIONS:
        value = config.getoption(_dest(option))
        if option.action == "store_false":
            if value:
                given[option.name] = False
        elif option.action == "append":
            if value:
                given[option.name] = dict(_pair(item) for item in value)
        elif value is not None:
            given[option.name] = value
    return given


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise pytest.UsageError(f"--esm-threshold {item!r} must be NAME=VALUE")
    return key.strip(), value.strip()


def pytest_configure(config: pytest.Config) -> None:
    """Start esmfuzz at once where an ``--esm-*`` option was given (or a controller's
    worker is told to); otherwise only once a collected test asks for it."""
    if _given(config) or "esmfuzz" in getattr(config, "workerinput", {}):
        _start(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash.get(_SESSION, None) is None and any(
        set(FIXTURES) & set(getattr(item, "fixturenames", ())) for item in items
    ):
        _start(config)


def _start(config: pytest.Config) -> Session:
    """The process's fuzz session: ``[tool.esmfuzz]`` overridden by ``--esm-*``, checked
    up front, so a bad option is one usage error before any model loads."""
    from esmfuzz.config import hypothesis_settings
    from esmfuzz.session import Session, Soak

    given = _given(config)
    profile = given.pop("profile", None) or default_profile()
    run = {name: given.pop(name) for name in ("seed", "report", "database", "claims",
                                               "soak-slice", "soak-log") if name in given}
    try:
        run = {name: _parsed(name, value) for name, value in run.items()}
        settings = hypothesis_settings(profile, database=run.get("database"))
        esm_config = _configured(config, given, profile, run.get("report"))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    session = Session(esm_config, profile)
    session.run_options = run
    session.settings = settings
    claims = getattr(config, "workerinput", {}).get("esmfuzz_claims") or run.get("claims")
    if claims:
        session.share_claims(claims)
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    controller = worker == "main" and bool(getattr(config.option, "numprocesses", None))
    session.start_soak(Soak.open(session, slice_seconds=run.get("soak-slice"),
                                 log_path=run.get("soak-log"), worker=worker,
                                 runs_examples=not controller))
    config.stash[_SESSION] = session
    workerinput = getattr(config, "workerinput", {})
    if profile == "soak" and workerinput.get("esmfuzz_dist") == "each":
        config.pluginmanager.register(_Rotation(workerinput), "esmfuzz-rotation")
    return session


class _Rotation:
    """Under the soak profile with ``--dist each`` (every worker runs every target, as
    ``esmfuzz soak`` asks), worker *i* of *n* starts *i/n* of the way down the selected
    targets: all workers stay busy for the whole round, and at any moment they fuzz
    different targets rather than the same one side by side."""

    def __init__(self, workerinput: dict):
        self.index = int(str(workerinput.get("workerid", "gw0")).removeprefix("gw"))
        self.count = max(1, int(workerinput.get("workercount", 1)))

    @pytest.hookimpl(trylast=True)  # after -k and -m have deselected
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        start = self.index * len(items) // self.count
        items[:] = items[start:] + items[:start]


def _parsed(name: str, value: object) -> object:
    from esmfuzz.config import OPTION

    return OPTION[name].parse(value, f"--esm-{name}")


def _configured(config: pytest.Config, given: dict, profile: str, report: str | None) -> Config:
    import dataclasses

    from esmfuzz.config import crowd_limits, merged, read_pyproject
    from esmfuzz.forward import ImplementationError, load_implementation
    from esmfuzz.harness import check_runnable

    esm_config = merged(read_pyproject(config.rootpath), given,
                        lambda option: option.pytest_flag)
    for kind in ("packed", "padded"):
        flag = f"--esm-{kind}-impl" if f"{kind}-impl" in given else f"[tool.esmfuzz] {kind}-impl"
        try:
            load_implementation(getattr(esm_config, f"{kind}_impl"), option=flag)
        except ImplementationError as exc:
            raise ConfigError(str(exc)) from None
    esm_config = _pinned(esm_config, getattr(config, "workerinput", {}).get("workerid"))
    corpus = Path(esm_config.corpus)
    if not corpus.is_absolute():
        corpus = config.rootpath / corpus
    check_runnable(esm_config, report)
    most, tokens = crowd_limits(esm_config, profile=profile)
    return dataclasses.replace(esm_config, corpus=str(corpus), crowd_sequences=most,
                               crowd_tokens=tokens)


def _pinned(config: Config, worker: str | None) -> Config:
    """An xdist worker on a machine with several GPUs takes ``cuda:{i % n}`` where the
    device is ``auto`` or ``cuda``: one worker per GPU, no scheduler of esmfuzz's own."""
    import dataclasses

    import torch

    if worker is None or config.device not in ("auto", "cuda") or not torch.cuda.is_available():
        return config
    count = torch.cuda.device_count()
    if count < 2:
        return config
    index = int(worker.removeprefix("gw")) % count
    return dataclasses.replace(config, device=f"cuda:{index}")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """The xdist controller tells its workers to start esmfuzz where it did, and gives them
    one claims directory (:class:`esmfuzz.triage.Claims`); the first to use it makes it."""
    session = node.config.stash.get(_SESSION, None)
    if session is not None:
        node.workerinput["esmfuzz"] = "1"
        node.workerinput["esmfuzz_dist"] = node.config.option.dist  # workers see "no"
        if session.claims is not None:
            node.workerinput["esmfuzz_claims"] = str(session.claims.directory)
            return
    if _CLAIMS not in node.config.stash:
        node.config.stash[_CLAIMS] = os.path.join(tempfile.gettempdir(),
                                                  f"esmfuzz-claims-{uuid.uuid4().hex}")
    node.workerinput["esmfuzz_claims"] = node.config.stash[_CLAIMS]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _CLAIMS in config.stash:
        shutil.rmtree(config.stash[_CLAIMS], ignore_errors=True)
    session = config.stash.get(_SESSION, None)
    if session is not None and session.soak is not None:
        session.soak.close()


@pytest.fixture(scope="session")
def esm_config(request: pytest.FixtureRequest) -> Config:
    """The effective configuration: [tool.esmfuzz] overridden by --esm-* options."""
    return _session_of(request.config).config


@pytest.fixture(scope="session")
def esm_harness(request: pytest.FixtureRequest) -> Harness:
    """The session-cached model pair and the implementations under test."""
    return _session_of(request.config).harness


@pytest.fixture
def esm_fuzz(request: pytest.FixtureRequest, esm_harness: Harness) -> Callable:
    """``esm_fuzz(prop, stratum)`` fuzzes one property of :mod:`esmfuzz.registry` in one
    stratum (:func:`esmfuzz.session.fuzz`)."""
    from esmfuzz.session import fuzz

    session = _session_of(request.config)

    def run(prop: str, stratum: str = "mixed") -> None:
        if session.stopping():
            pytest.skip("the soak run was stopped")
        elsewhere = session.harness.judges(prop)
        if elsewhere:
            pytest.skip(elsewhere)
        progress = _Progress(request.config, f"{prop}[{stratum}]")
        try:
            failed = fuzz(session, prop, stratum, chosen_seed=session.run_options.get("seed"),
                          on_example=progress.example)
        finally:
            progress.end()
        if failed is not None:
            pytest.fail(failed, pytrace=False)

    return run


def _session_of(config: pytest.Config) -> Session:
    session = config.stash.get(_SESSION, None)
    return session if session is not None else _start(config)


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

    def example(self, ok: bool, known: bool = False) -> None:
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
                + f"), {time.monotonic() - self.start:.0f} s"
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A failure that did not reproduce on Hypothesis's final run is saved unshrunk."""
    outcome = yield
    report = outcome.get_result()
    session = item.config.stash.get(_SESSION, None)
    if session is None or report.when != "call" or session.unsaved is None:
        return
    from esmfuzz.session import save_failure

    harness, prop, sample, verdict, target_name = session.unsaved
    session.unsaved = None
    if report.failed:
        verdict.notes.append(
            "saved unshrunk: the failure did not reproduce on the final run (the implementation "
            "under test is not deterministic)"
        )
        saved = save_failure(harness, prop, sample, verdict, session, target_name,
                             status="new, unshrunk")
        report.sections.append(("esmfuzz", f"unreproducible failure; {saved}"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker sends its rows to the controller, which prints one summary. A run
    that failed only because esmfuzz checked nothing in some target ends with pytest's
    internal-error status (3), not the status of a finding (1)."""
    fuzzing = session.config.stash.get(_SESSION, None)
    if fuzzing is None:
        return
    if hasattr(session.config, "workeroutput"):
        if fuzzing.rows or fuzzing.skipped:
            fuzzing.describe_harness()
        session.config.workeroutput["esmfuzz"] = json.dumps(fuzzing.export())
        return
    if (fuzzing.unchecked and session.exitstatus == pytest.ExitCode.TESTS_FAILED
            and session.testsfailed <= len(fuzzing.unchecked)):
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    data = getattr(node, "workeroutput", {}).get("esmfuzz")
    if data:
        _session_of(node.config).merge(json.loads(data))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is None or hasattr(config, "workeroutput"):
        return
    if not session.rows and not session.skipped:
        return
    from esmfuzz.summary import write_summary

    write_summary(terminalreporter, session, report=session.run_options.get("report"))
