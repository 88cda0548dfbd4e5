"""benchmarks/kept_outputs.py counts the tokens each dtype computes, with and without a
saving (kept outputs, deferred baselines)."""

from __future__ import annotations

import pytest

from tests.conftest import benchmark

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_kept_outputs_compute_no_more_tokens_and_no_other_verdict(esmfuzz_cache, capsys):
    """isolation checks its target alone beside the packs: the alone batches come back, and
    are kept. The benchmark stops on any verdict that differs from recomputing's."""
    benchmark("kept_outputs").main(["--examples", "3", "--seeds", "1",
                                    "--targets", "isolation[mixed]"])
    lines = capsys.readouterr().out.splitlines()
    cells = next(line for line in lines if line.startswith("isolation[mixed]")).split()
    assert float(cells[-1]) > 0  # kept hits per example
    for dtype in ("float16", "float32", "float64"):
        line = next(line for line in lines if line.strip().startswith(f"{dtype}:"))
        before, after = (float(x) for x in line.split(":")[1].split("(")[0].split("->"))
        assert 0 < after <= before


def test_kept_outputs_benchmark_names_an_unknown_target():
    with pytest.raises(SystemExit):
        benchmark("kept_outputs").main(["--targets", "error_ratio[everything]"])


def test_deferred_baselines_compute_fewer_tokens_and_no_other_verdict(esmfuzz_cache, capsys):
    """With a user's packed forward under test, error_ratio's passes skip fair-esm's padded
    forward in both dtypes; the benchmark stops on any verdict that differs but in a pass's
    ratio."""
    benchmark("kept_outputs").main(["--compare", "deferred", "--examples", "3", "--seeds", "1",
                                    "--targets", "error_ratio[short]", "--packed-impl",
                                    "tests.impls.packed:tiled_packed"])
    lines = capsys.readouterr().out.splitlines()
    assert "every baseline -> deferred" in lines[0] and "tiled_packed" in lines[0]
    for dtype in ("float16", "float32"):
        line = next(line for line in lines if line.strip().startswith(f"{dtype}:"))
        before, after = (float(x) for x in line.split(":")[1].split("(")[0].split("->"))
        assert 0 < after < before
