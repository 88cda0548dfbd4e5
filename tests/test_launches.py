"""Operation counts (:mod:`esmfuzz.launches`) and the throughput benchmark's summary."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from esmfuzz.config import Config
from esmfuzz.harness import Harness
from esmfuzz.launches import LaunchCounter
from tests.conftest import SYNTHETIC_8M, benchmark


def test_computing_operations_count_and_views_do_not():
    counts = Counter()
    x = torch.randn(4, 4)
    with LaunchCounter(counts) as counter:
        y = x * 2
        y.view(16), y.t(), y[1:], y.unsqueeze(0)
        y.add_(1)
        with counter.phase("oracle"):
            x @ x
        y.sum().item()
    assert counts == {"launches checks": 3, "launches oracle": 1, "read-backs checks": 1}


def test_a_check_counts_each_kind_of_forward(esmfuzz_cache, monkeypatch, one_cpu_thread):
    monkeypatch.setenv("ESMFUZZ_TIMINGS", "launches")
    harness = Harness(Config(model=SYNTHETIC_8M, device="cpu", dtype="float16"))
    assert harness.check("error_ratio", ["MKTAYIAK", "GGS"]).ok
    counts = {k: v for k, v in harness.timings.items() if k.startswith("launches")}
    assert set(counts) == {"launches baselines", "launches oracle", "launches checks"}
    # Six layers of a dozen kernels each, per forward; the statistics in a few batched calls.
    assert counts["launches oracle"] > 6 * 12
    assert counts["launches checks"] < counts["launches oracle"]
    assert harness.timings["oracle"] > 0
    # Per dtype across kinds: the float16 candidate's path, the FP32 reference's, the oracle.
    assert harness.timings["in float64"] == harness.timings["oracle"]
    assert harness.timings["in float16"] > 0 and harness.timings["in float32"] > 0
    assert harness.timings["in float16"] + harness.timings["in float32"] == pytest.approx(
        harness.timings["baselines"] + harness.timings["under test"])


def _run(number, rate, busy):
    row = {"target": "error_ratio[short]", "examples_per_s": rate, "residues_per_s": 10 * rate,
           "gpu_busy": busy, "per_example": {"launches oracle": 100.0 + number}}
    return {"run": number, "model": SYNTHETIC_8M, "device_name": "cpu", "dtype": "float16",
            "workers": 1, "workers_asked": "1", "targets": ["error_ratio and short"],
            "seconds_per_target": 5.0, "rows": [row], "examples_per_s": rate,
            "residues_per_s": 10 * rate, "gpu_busy": busy}


def test_the_summary_is_the_median_and_range_of_the_runs():
    summary = benchmark("throughput").summarize(
        [_run(1, 4.0, 0.5), _run(2, 9.0, None), _run(3, 5.0, 0.7)], bound=100.0)
    assert summary["runs"] == 3
    assert summary["examples_per_s"] == {"median": 5.0, "min": 4.0, "max": 9.0}
    assert summary["gpu_busy"] == {"median": pytest.approx(0.6), "min": 0.5, "max": 0.7}
    assert summary["roofline"] == {"median": 0.5, "min": 0.4, "max": 0.9}
    target = summary["per_target"]["error_ratio[short]"]
    assert target["per_example"]["launches oracle"] == {"median": 102.0, "min": 101.0,
                                                       "max": 103.0}


def test_a_failed_run_is_counted_apart_not_lost(capsys):
    """A run whose pytest failed (eight workers out of memory, say) is kept in the record
    and named in the summary, and leaves the figures to the runs that finished."""
    throughput = benchmark("throughput")
    failed = {**_run(2, 0.0, None), "tree": "/before", "failed": "pytest exited 3",
              "output": "2 failed"}
    summary = throughput.summarize([_run(1, 4.0, 0.5), failed, _run(3, 6.0, 0.7)], bound=None)
    assert summary["runs"] == 2 and summary["failed"] == ["pytest exited 3"]
    assert summary["examples_per_s"] == {"median": 5.0, "min": 4.0, "max": 6.0}
    throughput.show_summary(summary, None)
    throughput.show_run(failed)
    out = capsys.readouterr().out
    assert "1 run(s) failed, left out of the figures below: pytest exited 3" in out
    assert "2 run(s) of" in out and "run 2 of" in out and "FAILED (pytest exited 3)" in out
    alone = throughput.summarize([failed], bound=None)
    assert alone == {"summary": True, "runs": 0, "failed": ["pytest exited 3"]}
    throughput.show_summary(alone, None)
    assert "1 run(s) failed" in capsys.readouterr().out


def test_the_steady_rate_leaves_out_each_workers_warm_up_slice_and_counts_idle_time():
    def row(worker, examples, wall, began):
        return {"worker": worker, "examples": examples, "wall_s": wall,
                "examples_per_s": examples / wall, "began": began}

    throughput = benchmark("throughput")
    rows = [row("gw0", 30, 3.0, 3.0), row("gw0", 1, 3.0, 0.0), row("gw0", 60, 6.0, 6.0),
            row("gw1", 20, 3.0, 3.0), row("gw1", 0, 3.0, 0.0)]
    # gw0: 90 examples in 9 s, fuzzing 12 of 12 s; gw1: 20 in 3 s, fuzzing 6 of 12 s.
    assert throughput.steady_rate(rows, span=12.0) == pytest.approx(10.0 + 20 / 3 * 0.5)
    for r in rows:
        del r["began"]  # runs recorded before "began": the slowest slice is the warm-up
    assert throughput.steady_rate(rows, span=12.0) == pytest.approx(10.0 + 20 / 3 * 0.5)
    assert throughput.steady_rate([row("gw0", 1, 3.0, 0.0)], span=3.0) is None


def test_the_oracle_bound_counts_two_flop_per_parameter():
    from esmfuzz.models import parse_spec

    parameters = parse_spec(SYNTHETIC_8M).architecture.parameters
    bound = benchmark("throughput").oracle_bound(SYNTHETIC_8M, 2e12)
    assert bound == pytest.approx(1e12 / parameters)


def test_seconds_per_dtype_are_shares_of_wall_time_and_counts_are_per_example():
    throughput = benchmark("throughput")
    assert throughput._timed("in float32") and throughput._timed("oracle")
    assert not throughput._timed("launches oracle")
    assert not throughput._timed("read-backs checks")
