"""The edges of the input space: named once (esmfuzz.edges), drawn on purpose by the
strategies, and drawn often enough that a ci run of each target hits each kind."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, find, given, settings

from esmfuzz import edges
from esmfuzz.config import Config
from esmfuzz.edges import Scope
from esmfuzz.reach import edge_reach
from esmfuzz.registry import targets
from strategies import crowded_layouts, packing_layouts, stratified_layouts

VERY_LONG = Scope((501, 1022), 1022, 1, 8, 1536)
CROWDED = Scope((1, 170), 170, 2, 128, 6144)


def test_reachable_names_each_kind_of_edge_once_per_value():
    names = edges.reachable(VERY_LONG)
    assert names[:3] == ["501 residues", "1021 residues",
                         "1022 residues (1024 tokens, the model's limit)"]
    assert "512±1-token sequence" in names and "64±1-token sequence" in names
    assert {"1536-token pack (full)", "1535-token pack (one short)"} <= set(names)
    assert not any(name.endswith("±1 sequences") for name in names)  # 8 sequences at most
    crowded = edges.reachable(CROWDED)
    assert {"32±1 sequences", "64±1 sequences", "128±1 sequences"} <= set(crowded)
    assert "256±1 sequences" not in crowded and "512±1-token sequence" not in crowded
    # A budget that the longest sequences cannot fill is no edge of the scope.
    assert not any("token pack" in n for n in edges.reachable(Scope((1, 49), 49, 1, 8, 1536)))


def test_hits_reads_lengths_budget_count_and_order():
    layout = ["L" * 1022, "G" * 444, "A" * 62]  # 1024 + 446 + 64 = 1534 tokens
    assert edges.hits([layout], VERY_LONG) == {
        "1022 residues (1024 tokens, the model's limit)", "64±1-token sequence",
        "longest first, shortest last"}
    assert "1535-token pack (one short)" in edges.hits([[layout[0], "G" * 445, layout[2]]],
                                                       VERY_LONG)
    assert "1536-token pack (full)" in edges.hits([[layout[0], "G" * 446, layout[2]]], VERY_LONG)
    assert "32±1 sequences" in edges.hits([["L"] * 33], CROWDED)
    assert "shortest first, longest last" in edges.hits([["L", "LL", "LLL"]], CROWDED)
    # Equal lengths have no longest and shortest; a variant counts as well.
    assert edges.hits([["LL", "LL"]], CROWDED) == set()
    assert "1 residue" in edges.hits([["LL"], ["L", "LL"]], CROWDED)


def test_classes_cover_every_reachable_edge():
    for scope in (VERY_LONG, CROWDED):
        for name in edges.reachable(scope):
            assert set(edges.classes_of(name)) <= set(edges.CLASSES), name
    assert edges.classes_of("1022 residues (1024 tokens, the model's limit)") == (
        "maximum length", "stratum bounds")


@pytest.mark.parametrize("strategy, scope, edge", [
    (stratified_layouts("very_long", max_tokens=1536), VERY_LONG,
     "1022 residues (1024 tokens, the model's limit)"),
    (stratified_layouts("very_long", max_tokens=1536), VERY_LONG, "1535-token pack (one short)"),
    (stratified_layouts("very_long", max_tokens=1536), VERY_LONG, "512±1-token sequence"),
    (packing_layouts(max_sequences=4, max_tokens=1024), Scope((1, 1022), 1022, 1, 4, 1024),
     "shortest first, longest last"),
])
def test_each_edge_is_drawn_and_shrinks_to_a_small_layout(strategy, scope, edge):
    """Hypothesis finds a layout on the edge and shrinks it: towards few, short sequences
    (a full pack keeps its tokens, so it shrinks to the fewest sequences that hold them)."""
    found = find(strategy, lambda layout: edge in edges.hits([layout], scope),
                 settings=settings(max_examples=200, database=None,
                                   suppress_health_check=list(HealthCheck)))
    assert edge in edges.hits([found], scope)
    tokens = sum(len(s) + 2 for s in found)
    assert len(found) <= max(3, -(-tokens // (scope.max_residues + 2)) + 1), found


def test_crowded_packs_fill_the_budget_and_hold_counts_at_powers_of_two():
    """Drawn, not shrunk: Hypothesis's steps through a 6144-token pack take minutes, which
    is why a crowded failure goes to esmfuzz.tighten (test_tighten.py)."""
    seen = set()

    @settings(max_examples=30, database=None, suppress_health_check=list(HealthCheck))
    @given(crowded_layouts(max_sequences=128, max_tokens=6144))
    def draw(layout):
        seen.update(edges.hits([layout], CROWDED))

    draw()
    assert {"6144-token pack (full)", "longest first, shortest last"} <= seen, seen
    assert any(e.endswith("±1 sequences") for e in seen), seen


def test_a_ci_run_of_every_target_hits_every_kind_of_edge_it_can_reach():
    """Per target and kind of edge, the share of examples on it, over 20 seeds' runs: a run
    checks five random examples after its first, so a share q gives 1 - (1 - q)**5, which
    must be over 0.95 (q > 0.45). ``benchmarks/edge_reach.py --seeds 1-100`` gives the
    run-level shares (docs/performance.md)."""
    found = edge_reach(Config(device="cpu"), profile="ci", seeds=range(1, 21))
    assert set(found) == set(targets())
    weak = []
    for (prop, stratum), counts in found.items():
        for kind, on in counts["examples_on"].items():
            share = on / counts["examples"]
            if 1 - (1 - share) ** 5 < 0.95:
                weak.append(f"{prop}[{stratum}] {kind}: {share:.2f} of examples")
        for kind, runs in counts["classes"].items():
            if runs < 17:  # 20 runs: 0.85, well below what 0.95 per run gives
                weak.append(f"{prop}[{stratum}] {kind}: {runs} of 20 runs")
    assert not weak, weak
