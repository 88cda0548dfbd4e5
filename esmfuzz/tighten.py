"""Structured shrinking of a failing sample: fewer sequences, then shorter and simpler ones,
while the failure keeps its signature.

Hypothesis shrinks the choices a strategy drew, one small step per forward pass. In a
crowded pack each forward is expensive and most steps remove little: a leak that needs
more than 2048 tokens was still shrinking after 240 s on an H200. This shrinker edits the
sample itself, in passes that each run to a fixed point and repeat until none helps:

1. **remove**: drop runs of sequences, halves first, then quarters, ... then one by one
   (never the followed target);
2. **merge**: join neighbouring sequences into one, their <eos>/<cls> pair becoming two
   residues, so the pack keeps its token count: faults that need a long pack end as two or
   three long sequences, not dozens of short ones;
3. **shorten**: cut every sequence at once to one residue or to half; then each sequence at
   its end, then at its start, by one residue and, where that keeps the failure, by half,
   a quarter, ... of it;
4. **simplify**: make every sequence at once, else each sequence (then each half of it),
   all 'L'.

Each accepted step costs one forward and most remove or shorten by a fraction, so a pack of
n sequences of m residues takes about log n + log m steps per survivor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from esmfuzz.alphabet import MAX_RESIDUES, residue_count, split_residues
from esmfuzz.properties import Sample, Verdict
from esmfuzz.triage import signature

if TYPE_CHECKING:
    from esmfuzz.harness import Harness

__all__ = ["crowded", "same_failure", "size", "smaller_samples", "tighten", "tightened"]


class _Attempts:
    """Tries candidates against the predicate until the time is up or a stop is asked."""

    def __init__(self, still_fails, seconds: float, stop: Callable[[], bool] | None):
        self.still_fails = still_fails
        self.deadline = time.monotonic() + seconds
        self.stop = stop or (lambda: False)
        self.tried = 0

    @property
    def over(self) -> bool:
        return time.monotonic() >= self.deadline or self.stop()

    def __call__(self, candidate: Sample) -> bool:
        if self.over:
            return False
        self.tried += 1
        return bool(self.still_fails(candidate))


def tighten(
    sample: Sample,
    still_fails: Callable[[Sample], object],
    *,
    seconds: float,
    stop: Callable[[], bool] | None = None,
) -> tuple[Sample, int]:
    """The smallest sample the passes reach from ``sample`` with every step ``still_fails``,
    and the number of samples tried; stops after ``seconds`` or once ``stop()`` is true."""
    attempt = _Attempts(still_fails, seconds, stop)
    current = sample
    progress = True
    while progress and not attempt.over:
        progress = False
        for step in _PASSES:
            smaller = step(current, attempt)
            if smaller != current:
                # Plainer residues seldom let a sequence go or get shorter: no new round.
                current, progress = smaller, progress or step is not _simplify
    return current, attempt.tried


def smaller_samples(sample: Sample) -> Iterator[Sample]:
    """The candidates the passes try from ``sample`` where none of them fails."""
    for step in _CANDIDATES:
        yield from step(sample)


def _layouts(sample: Sample) -> tuple[list[list[str]], list[int | None]]:
    layouts = [list(sample.sequences)] + ([list(sample.variant)] if sample.variant else [])
    return layouts, [sample.target, sample.variant_target]


def _sample(layouts: list[list[str]], targets: list[int | None]) -> Sample:
    variant = layouts[1] if len(layouts) > 1 else None
    return Sample(tuple(layouts[0]), targets[0], variant, targets[1] if variant else None)


def _without(sample: Sample, which: int, drop: set[int]) -> Sample | None:
    layouts, targets = _layouts(sample)
    layout = layouts[which]
    if targets[which] in drop or len(drop) >= len(layout):
        return None
    kept = [i for i in range(len(layout)) if i not in drop]
    layouts[which] = [layout[i] for i in kept]
    if targets[which] is not None:
        targets[which] = kept.index(targets[which])
    return _sample(layouts, targets)


def _remove_candidates(sample: Sample) -> Iterator[Sample]:
    layouts, _ = _layouts(sample)
    for which, layout in enumerate(layouts):
        size = max(len(layout) // 2, 1)
        while size >= 1:
            for start in range(0, len(layout), size):
                candidate = _without(sample, which, set(range(start, start + size)))
                if candidate is not None:
                    yield candidate
            size //= 2


def _remove(sample: Sample, attempt: _Attempts) -> Sample:
    for which in range(1 + (sample.variant is not None)):
        size = max(len(_layouts(sample)[0][which]) // 2, 1)
        while size >= 1 and not attempt.over:
            start = 0
            while start < len(_layouts(sample)[0][which]):
                candidate = _without(sample, which, set(range(start, start + size)))
                if candidate is not None and attempt(candidate):
                    sample = candidate
                else:
                    start += size
            size //= 2
    return sample


def _joined(first: str, second: str) -> str | None:
    """One sequence in place of two neighbours, as many tokens as the pair took."""
    joined = first + "LL" + second
    return joined if len(split_residues(joined)) <= MAX_RESIDUES else None


def _merged(sample: Sample, which: int, runs: list[tuple[int, int]]) -> Sample | None:
    """``sample`` with each run ``[start, end)`` of its layout ``which`` joined into one."""
    layouts, targets = _layouts(sample)
    layout, out, index, moved = layouts[which], [], 0, targets[which]
    for start, end in runs:
        out += layout[index:start]
        joined = layout[start]
        for sequence in layout[start + 1:end]:
            joined = _joined(joined, sequence)
            if joined is None:
                return None
        if moved is not None and moved >= end:
            moved -= end - start - 1
        out.append(joined)
        index = end
    out += layout[index:]
    if out == layout:
        return None
    layouts[which] = out
    targets[which] = moved
    return _sample(layouts, targets)


def _free_runs(sample: Sample, which: int) -> list[tuple[int, int]]:
    """Greedy runs of neighbouring sequences (never the target) that fit in one sequence."""
    layouts, targets = _layouts(sample)
    layout, runs, start, residues = layouts[which], [], None, 0
    for index, sequence in enumerate(layout + [None]):
        free = sequence is not None and index != targets[which]
        size = len(split_residues(sequence)) if free else 0
        if start is not None and (not free or residues + 2 + size > MAX_RESIDUES):
            if index - start > 1:
                runs.append((start, index))
            start = None
        if free and start is None:
            start, residues = index, size
        elif free:
            residues += 2 + size
    return runs


def _all_runs(sample: Sample, which: int) -> list[tuple[int, int]]:
    """The greedy runs, where they join more than one pair (one pair is the first pairwise
    candidate anyway)."""
    runs = _free_runs(sample, which)
    return runs if len(runs) > 1 or any(end - start > 2 for start, end in runs) else []


def _merge_candidates(sample: Sample) -> Iterator[Sample]:
    layouts, targets = _layouts(sample)
    for which, layout in enumerate(layouts):
        candidate = _merged(sample, which, _all_runs(sample, which))
        if candidate is not None:
            yield candidate
        for index in range(len(layout) - 1):
            if targets[which] not in (index, index + 1):
                candidate = _merged(sample, which, [(index, index + 2)])
                if candidate is not None:
                    yield candidate


def _merge(sample: Sample, attempt: _Attempts) -> Sample:
    for which in range(1 + (sample.variant is not None)):
        candidate = _merged(sample, which, _all_runs(sample, which))
        if candidate is not None and attempt(candidate):
            sample = candidate
        index = 0
        while index < len(_layouts(sample)[0][which]) - 1 and not attempt.over:
            target = _layouts(sample)[1][which]
            candidate = None
            if target not in (index, index + 1):
                candidate = _merged(sample, which, [(index, index + 2)])
            if candidate is not None and attempt(candidate):
                sample = candidate
            else:
                index += 1
    return sample


def _replaced(sample: Sample, which: int, index: int, sequence: str) -> Sample:
    """``sample`` with one sequence replaced; the target changes in both layouts alike."""
    layouts, targets = _layouts(sample)
    if which == 1 and index == targets[1]:
        which, index = 0, targets[0]
    layouts[which][index] = sequence
    if which == 0 and index == targets[0] and len(layouts) > 1:
        layouts[1][targets[1]] = sequence
    return _sample(layouts, targets)


def _positions(sample: Sample) -> Iterator[tuple[int, int]]:
    layouts, targets = _layouts(sample)
    for which, layout in enumerate(layouts):
        for index in range(len(layout)):
            if not (which == 1 and index == targets[1]):
                yield which, index


def _cuts(tokens: list[str]) -> Iterator[str]:
    if len(tokens) > 1:
        yield "".join(tokens[:-1])
        yield "".join(tokens[1:])


def _shorten_candidates(sample: Sample) -> Iterator[Sample]:
    yield from _at_once(sample)
    layouts, _ = _layouts(sample)
    for which, index in _positions(sample):
        for shorter in _cuts(split_residues(layouts[which][index])):
            yield _replaced(sample, which, index, shorter)


def _everywhere(sample: Sample, change) -> Iterator[Sample]:
    """``sample`` with ``change(tokens)`` applied to every sequence of one layout at once (the
    target in both): one step where dozens of sequences can each shrink."""
    layouts, targets = _layouts(sample)
    for which, layout in enumerate(layouts):
        if len(layout) < 2:
            continue
        candidate, changed = sample, 0
        for index in range(len(layout)):
            if not (which == 1 and index == targets[1]):
                new = change(split_residues(layout[index]))
                changed += new != layout[index]
                candidate = _replaced(candidate, which, index, new)
        if changed >= 2:  # one change is a one-by-one candidate anyway
            yield candidate


def _at_once(sample: Sample) -> Iterator[Sample]:
    yield from _everywhere(sample, lambda tokens: tokens[0])
    yield from _everywhere(sample, lambda tokens: "".join(tokens[: max(len(tokens) // 2, 1)]))


def _shorten(sample: Sample, attempt: _Attempts) -> Sample:
    """All sequences cut at once first; then, one by one: where one residue less at an end
    keeps the failure, cut by halving steps there; where it does not, no longer cut fails
    either for length-bound faults (past a token count, at an exact length): that end is
    left after one try."""
    for candidate in list(_at_once(sample)):
        if attempt(candidate):
            sample = candidate
            break
    for which, index in list(_positions(sample)):
        for from_start in (False, True):
            tokens = split_residues(_layouts(sample)[0][which][index])
            if len(tokens) < 2:
                continue
            one_less = "".join(tokens[1:] if from_start else tokens[:-1])
            if not attempt(_replaced(sample, which, index, one_less)):
                continue
            sample = _replaced(sample, which, index, one_less)
            step = (len(tokens) - 1) // 2
            while step >= 1 and not attempt.over:
                tokens = split_residues(_layouts(sample)[0][which][index])
                if len(tokens) <= step:
                    step //= 2
                    continue
                shorter = "".join(tokens[step:] if from_start else tokens[:-step])
                if attempt(_replaced(sample, which, index, shorter)):
                    sample = _replaced(sample, which, index, shorter)
                else:
                    step //= 2
    return sample


def _plainer(tokens: list[str]) -> Iterator[str]:
    half = len(tokens) // 2
    seen = {"".join(tokens)}
    for plain in (["L"] * len(tokens), ["L"] * half + tokens[half:], tokens[:half] + ["L"] * (
            len(tokens) - half)):
        if "".join(plain) not in seen:
            seen.add("".join(plain))
            yield "".join(plain)


def _simplify_candidates(sample: Sample) -> Iterator[Sample]:
    yield from _everywhere(sample, lambda tokens: "L" * len(tokens))
    layouts, _ = _layouts(sample)
    for which, index in _positions(sample):
        for plain in _plainer(split_residues(layouts[which][index])):
            yield _replaced(sample, which, index, plain)


def _simplify(sample: Sample, attempt: _Attempts) -> Sample:
    for candidate in _everywhere(sample, lambda tokens: "L" * len(tokens)):
        if attempt(candidate):
            return candidate
    for which, index in list(_positions(sample)):
        for plain in _plainer(split_residues(_layouts(sample)[0][which][index])):
            candidate = _replaced(sample, which, index, plain)
            if attempt(candidate):
                sample = candidate
                break
    return sample


_PASSES = (_remove, _merge, _shorten, _simplify)
_CANDIDATES = (_remove_candidates, _merge_candidates, _shorten_candidates,
               _simplify_candidates)


def same_failure(harness: Harness, prop: str, sig: str, candidate: Sample) -> Verdict | None:
    """The verdict of ``candidate`` where it fails with signature ``sig``; None where it
    passes, fails otherwise or raises (a shrink step must keep the very failure)."""
    try:
        found = harness.check(prop, candidate, explain=False)
    except Exception:
        return None
    return None if found.ok or signature(found, harness.layers) != sig else found


def crowded(sample: Sample) -> bool:
    """More than three sequences or 512 tokens: each forward is costly, and Hypothesis's
    small steps would take minutes (seen: 240 s at 8M on an H200 for a pack past 2048
    tokens; 4 s per step for one 1022-residue sequence on two CPU cores), so
    :func:`tighten` takes over."""
    layouts = [sample.sequences, sample.variant or ()]
    return any(len(layout) > 3 or sum(map(residue_count, layout)) + 2 * len(layout) > 512
               for layout in layouts)


def tightened(harness: Harness, prop: str, sample: Sample, verdict: Verdict, sig: str):
    """Hypothesis's final failure, made smaller where whole sequences or residues can go
    with the signature kept (:func:`tighten`), within ``shrink_seconds``: the
    sample and verdict to save. Only where a time is given: on by default at 60 s, it
    added minutes to CI's fault subset, whose cases shrink over hundreds of residues."""

    def still_fails(candidate: Sample) -> bool:
        return same_failure(harness, prop, sig, candidate) is not None

    smaller, tried = tighten(sample, still_fails, seconds=harness.config.shrink_seconds)
    if smaller == sample:
        return sample, verdict
    try:
        explained = harness.check(prop, smaller)
    except Exception:
        return sample, verdict
    if explained.ok or signature(explained, harness.layers) != sig:
        return sample, verdict
    explained.notes.append(
        f"shrunk further after Hypothesis, by dropping sequences and residues with the "
        f"signature kept ({tried} samples tried): from {size(sample)} to {size(smaller)}"
    )
    explained.notes.extend(n for n in verdict.notes if n.startswith("shrinking stopped"))
    return smaller, explained


def size(sample: Sample) -> str:
    count = len(sample.sequences)
    residues = sum(map(residue_count, sample.sequences))
    return f"{count} sequence{'s' * (count != 1)} of {residues} residues in all"
