"""A second shrink pass over a failing sample: drop whole sequences and residues while the
failure keeps its signature.

Hypothesis shrinks the choices a strategy drew; a layout is a list of sequences, each a
list of residues, and its shrinker can stall where no single simplification of those
choices keeps the failure (seen: 4 sequences and 286 residues, or 1 + 24 + 1022 residues,
for bugs that a pair of one-residue sequences shows). This pass edits the sample itself:
it tries each smaller sample in turn, keeps the first that still fails the same way, and
starts again from there, until no candidate fails or time runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from esmfuzz.alphabet import split_residues
from esmfuzz.properties import Sample

__all__ = ["smaller_samples", "tighten"]


def tighten(
    sample: Sample, still_fails: Callable[[Sample], bool], *, seconds: float
) -> tuple[Sample, int]:
    """The smallest sample reached from ``sample`` by :func:`smaller_samples` steps that each
    ``still_fails``, and the number of samples tried; stops after ``seconds``."""
    deadline = time.monotonic() + seconds
    tried = 0
    current = sample
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for candidate in smaller_samples(current):
            if time.monotonic() >= deadline:
                break
            tried += 1
            if still_fails(candidate):
                current, progress = candidate, True
                break
    return current, tried


def smaller_samples(sample: Sample) -> Iterator[Sample]:
    """Samples one step smaller than ``sample``, largest steps first: without one sequence
    (never the followed target), then with a sequence cut to its first or second half, then
    one residue shorter at either end. A target sequence changes in both layouts alike."""
    layouts = [list(sample.sequences)] + ([list(sample.variant)] if sample.variant else [])
    targets = [sample.target, sample.variant_target]
    for which, layout in enumerate(layouts):
        if len(layout) == 1:
            continue
        for drop in reversed(range(len(layout))):
            if drop == targets[which]:
                continue
            moved = [t if t is None or t < drop else t - 1 for t in targets]
            changed = [list(x) for x in layouts]
            del changed[which][drop]
            yield _sample(changed, moved[0] if which == 0 else targets[0],
                          moved[1] if which == 1 else targets[1])
    for cut in (_first_half, _second_half, _drop_last, _drop_first):
        for which, layout in enumerate(layouts):
            for index, sequence in enumerate(layout):
                if which == 1 and index == targets[1]:
                    continue  # the target is cut in the first layout, for both
                shorter = cut(split_residues(sequence))
                if shorter is None:
                    continue
                changed = [list(x) for x in layouts]
                changed[which][index] = shorter
                if which == 0 and index == targets[0] and len(changed) > 1:
                    changed[1][targets[1]] = shorter
                yield _sample(changed, targets[0], targets[1])


def _sample(layouts: list[list[str]], target, variant_target) -> Sample:
    variant = layouts[1] if len(layouts) > 1 else None
    return Sample(tuple(layouts[0]), target, variant, variant_target if variant else None)


def _first_half(tokens: list[str]) -> str | None:
    return "".join(tokens[: len(tokens) // 2]) if len(tokens) > 3 else None


def _second_half(tokens: list[str]) -> str | None:
    return "".join(tokens[len(tokens) // 2 :]) if len(tokens) > 3 else None


def _drop_last(tokens: list[str]) -> str | None:
    return "".join(tokens[:-1]) if len(tokens) > 1 else None


def _drop_first(tokens: list[str]) -> str | None:
    return "".join(tokens[1:]) if len(tokens) > 1 else None
