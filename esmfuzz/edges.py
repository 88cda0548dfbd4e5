"""The edges of the input space: where production inputs sit and kernels break.

Pipelines pad or truncate to ESM-2's limit (1022 residues, 1024 tokens), pack builders
fill a token budget to the last token, kernels tile at 64/128/256/512 and size tables by
powers of two. Hypothesis's generic heuristics know none of these, so the strategies draw
them on purpose (``strategies``) and the run reports which ones its checked examples hit
(the summary, ``--esm-report``). Both read this module, so an edge means one thing.

A :class:`Scope` is what one fuzz target's strategy can draw; :func:`reachable` names the
edges inside it, :func:`hits` the edges one layout sits on. Each edge belongs to a
:data:`CLASSES` entry; ``benchmarks/edge_reach.py`` measures, per class, how often a
ci-profile run of each target hits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from esmfuzz.alphabet import MAX_RESIDUES, residue_count

__all__ = [
    "CLASSES",
    "COUNTS",
    "TILES",
    "Scope",
    "classes_of",
    "count_edges",
    "hits",
    "length_edges",
    "reachable",
    "tile_lengths",
]

TILES = (64, 128, 256, 512)
"""Attention tile sizes, in tokens; a sequence of t-1, t or t+1 tokens sits on an edge."""
COUNTS = (32, 64, 128, 256)
"""Sequence counts at which batch tables and grids change size; c-1, c, c+1 are edges."""
CLASSES = ("maximum length", "stratum bounds", "tile edges", "full budget",
           "sequence count", "order")
"""Kinds of edge, in the order the report lists them."""

LONGEST_FIRST = "longest first, shortest last"
SHORTEST_FIRST = "shortest first, longest last"


@dataclass(frozen=True)
class Scope:
    """What a target's layouts can be: the edges a run of it can reach."""

    lengths: tuple[int, int]
    """Residues of the sequence the target is about: its stratum, or all lengths."""
    max_residues: int
    """Residues of the longest sequence any layout may hold."""
    min_sequences: int
    max_sequences: int
    max_tokens: int
    """The token budget of one pack (residues plus <cls>/<eos> each)."""


def tile_lengths(low: int, high: int) -> list[int]:
    """Residue counts in ``low..high`` whose sequences (plus <cls>/<eos>) are t-1, t or t+1
    tokens for a tile size t."""
    return [t + d - 2 for t in TILES for d in (-1, 0, 1) if low <= t + d - 2 <= high]


def length_edges(low: int, high: int) -> list[int]:
    """Residue counts on an edge of ``low..high``, ascending: its bounds and the lengths
    next to them inside it, 1021 and 1022 where reachable, and the tile lengths."""
    found = {low, high, min(low + 1, high), max(high - 1, low)}
    found |= {n for n in (MAX_RESIDUES - 1, MAX_RESIDUES) if low <= n <= high}
    found |= set(tile_lengths(low, high))
    return sorted(found)


def count_edges(min_sequences: int, max_sequences: int, max_tokens: int) -> list[int]:
    """Sequence counts c-1, c, c+1 (c in :data:`COUNTS`) that a pack can hold."""
    return [
        c + d for c in COUNTS for d in (-1, 0, 1)
        if min_sequences <= c + d <= max_sequences and 3 * (c + d) <= max_tokens
    ]


def _length_name(n: int) -> str:
    if n == MAX_RESIDUES:
        return f"{n} residues ({n + 2} tokens, the model's limit)"
    return f"{n} residue{'s' * (n != 1)}"


def _tile_name(tile: int) -> str:
    return f"{tile}±1-token sequence"


def _count_name(count: int) -> str:
    return f"{count}±1 sequences"


def _budget_names(budget: int) -> tuple[str, str]:
    return f"{budget}-token pack (full)", f"{budget - 1}-token pack (one short)"


def reachable(scope: Scope) -> list[str]:
    """The edges a target of ``scope`` can hit, in report order."""
    low, high = scope.lengths
    names = [_length_name(n) for n in sorted(
        {low, high} | {n for n in (MAX_RESIDUES - 1, MAX_RESIDUES) if low <= n <= high})]
    names += [_tile_name(t) for t in TILES
              if any(1 <= t + d - 2 <= scope.max_residues for d in (-1, 0, 1))]
    if scope.max_sequences * (scope.max_residues + 2) >= scope.max_tokens:
        names += list(_budget_names(scope.max_tokens))
    counts = count_edges(scope.min_sequences, scope.max_sequences, scope.max_tokens)
    names += [_count_name(c) for c in COUNTS if any(abs(n - c) <= 1 for n in counts)]
    if scope.max_sequences >= 2:
        names += [LONGEST_FIRST, SHORTEST_FIRST]
    return names


def hits(layouts: Iterable[Sequence[str] | None], scope: Scope) -> set[str]:
    """The edges of ``scope`` that any of ``layouts`` sits on."""
    low, high = scope.lengths
    bounds = {low, high} | {n for n in (MAX_RESIDUES - 1, MAX_RESIDUES) if low <= n <= high}
    full, short = _budget_names(scope.max_tokens)
    found: set[str] = set()
    for layout in layouts:
        if not layout:
            continue
        lengths = [residue_count(s) for s in layout]
        found |= {_length_name(n) for n in lengths if n in bounds}
        found |= {_tile_name(t) for n in lengths for t in TILES if abs(n + 2 - t) <= 1}
        tokens = sum(lengths) + 2 * len(lengths)
        if tokens == scope.max_tokens:
            found.add(full)
        elif tokens == scope.max_tokens - 1:
            found.add(short)
        found |= {_count_name(c) for c in COUNTS if abs(len(layout) - c) <= 1}
        if len(layout) >= 2 and max(lengths) > min(lengths):
            if lengths[0] == max(lengths) and lengths[-1] == min(lengths):
                found.add(LONGEST_FIRST)
            elif lengths[0] == min(lengths) and lengths[-1] == max(lengths):
                found.add(SHORTEST_FIRST)
    return found & set(reachable(scope))


def classes_of(edge: str) -> tuple[str, ...]:
    """The :data:`CLASSES` entries of an edge named by :func:`reachable` (1022 residues is
    both the model's limit and the very_long stratum's maximum)."""
    if edge.startswith(f"{MAX_RESIDUES} residues"):
        return ("maximum length", "stratum bounds")
    if edge.endswith(("residue", "residues")):
        return ("stratum bounds",)
    if edge.endswith("-token sequence"):
        return ("tile edges",)
    if "-token pack" in edge:
        return ("full budget",)
    if edge.endswith("sequences"):
        return ("sequence count",)
    return ("order",)
