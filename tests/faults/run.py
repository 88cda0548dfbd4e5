"""Run the real fuzz targets against one fault, through pytest and the plugin's options."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from esmfuzz.alphabet import residue_count
from esmfuzz.corpus import load_corpus

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FuzzRun:
    returncode: int
    seconds: float
    output: str
    report: dict
    cases: list = field(default_factory=list)

    @property
    def caught(self) -> bool:
        return self.returncode == 1 and any(r["failures"] for r in self.report.get("rows", []))

    @property
    def first_failing_row(self) -> dict | None:
        return next((r for r in self.report.get("rows", []) if r["failures"]), None)

    @property
    def smallest_case(self):
        return min(self.cases, key=lambda c: sum(map(residue_count, c.sequences)), default=None)


def run_fuzz(
    options, workdir: Path, *, select: str | None = None, extra=(), timeout=900
) -> FuzzRun:
    """``pytest fuzz/ -x`` under the ci profile with a fresh corpus in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, report = workdir / "corpus", workdir / "report.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "fuzz"),
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "--esm-profile",
        "ci",
        "--esm-corpus",
        str(corpus),
        "--esm-report",
        str(report),
        *options,
        *extra,
    ]
    if select:
        command += ["-k", select]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    data = json.loads(report.read_text()) if report.exists() else {}
    cases, errors = load_corpus(corpus)
    assert not errors, errors
    return FuzzRun(
        done.returncode, seconds, done.stdout + done.stderr, data, [case for _, case in cases]
    )
