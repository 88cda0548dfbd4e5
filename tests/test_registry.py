"""The registry is complete: every property is fuzzed, and declares what its oracle reports.

Adding a property is its oracle plus one :mod:`esmfuzz.registry` entry; these tests fail
where the entry is not enough: a target missing from ``pytest fuzz/``, a metric its oracle
reports that the entry does not declare (its direction would otherwise be guessed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from esmfuzz.config import Config
from esmfuzz.harness import harness_for
from esmfuzz.properties import FAILURE_KINDS
from esmfuzz.registry import PROPERTIES, STRATA, metric, targets

REPO = Path(__file__).resolve().parents[1]


def test_every_registry_target_is_collected_from_fuzz(run_env, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(REPO), "--esm-device", "cpu", str(REPO / "fuzz")],
        cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    collected = [line.split("::", 1)[1] for line in done.stdout.splitlines() if "::" in line]
    assert collected == [f"test_property[{p}-{s}]" for p, s in targets()]
    assert collected[0] == "test_property[error_ratio-short]"  # -x stops at the sharpest first


def test_every_property_declares_its_metrics_and_strata():
    for entry in PROPERTIES.values():
        assert entry.metrics, entry.name
        assert set(entry.strata) <= set(STRATA) | {"mixed", "crowded"}, entry.name
        assert set(entry.calls) <= {"packed", "padded"}, entry.name
    assert metric("token_cosine_min").higher_is_better
    assert not metric("error_ratio").higher_is_better
    assert not metric("timeout").higher_is_better
    with pytest.raises(ValueError, match="metric='speed' is not declared"):
        metric("speed")


@pytest.fixture(scope="module")
def harness(esmfuzz_cache, one_cpu_thread):
    return harness_for(Config(device="cpu", pack_tokens=1027))


@pytest.mark.parametrize("prop", list(PROPERTIES))
def test_each_metric_a_verdict_reports_is_declared(harness, prop):
    """The bounded metrics, each layer's worst (a verdict also carries raw measurements,
    ``rms_error[packed float16]``, that bound nothing)."""
    entry = PROPERTIES[prop]
    reported: set[str] = set()

    @settings(max_examples=2, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(entry.samples(harness.config, entry.strata[0]))
    def check(sample):
        verdict = harness.check(prop, sample, layers=harness.all_layers)
        reported.add(verdict.metric)
        reported.update(metric for _, metric, _ in verdict.layers.values())

    check()
    declared = {m.name for m in entry.metrics}
    assert reported and reported - set(FAILURE_KINDS) <= declared, (reported, declared)
