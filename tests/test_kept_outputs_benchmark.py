"""benchmarks/kept_outputs.py counts the tokens each dtype computes, kept and recomputed."""

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
