"""benchmarks/pareto_cost.py times Hypothesis's own work per example with and without the
Pareto front, on esmfuzz's strategies."""

from __future__ import annotations

from esmfuzz.config import Config
from esmfuzz.registry import PROPERTIES
from tests.conftest import benchmark


def test_only_the_front_leaves_a_front_in_the_database():
    """Without the front, a run leaves the example it stopped on and the list of keys."""
    run = benchmark("pareto_cost").run_target
    strategy = PROPERTIES["error_ratio"].samples(Config(device="cpu"), "short")
    front = run(strategy, "front", 0.5)
    assert front["examples"] >= 2 and front["seconds"] >= 0.5 and front["left"] > 2
    assert 0 < front["distinct"] <= 1 and front["residues"] >= 1
    assert run(strategy, "no front", 0.5)["left"] == 2
    assert run(strategy, "no database", 0.5)["left"] == 0


def test_pareto_cost_prints_a_row_per_target(capsys):
    benchmark("pareto_cost").main(["--seconds", "0.2", "--runs", "1", "--draws-for", "cpu"])
    rows = [line for line in capsys.readouterr().out.splitlines() if " left, " in line]
    assert len(rows) == 10 and all(row.count(" left, ") == 3 for row in rows), rows
