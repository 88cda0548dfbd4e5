"""Strategies for packed batches (layouts) and metamorphic variants of them."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

from esmfuzz.alphabet import (
    MAX_RESIDUES,
    InvalidSequence,
    residue_count,
    split_residues,
    validate_sequence,
)
from esmfuzz.edges import count_edges, length_edges, tile_lengths
from strategies._validation import _check_bool, _check_int, _check_strategy, _lazy
from strategies.sequences import LENGTH_STRATA, _fixed_range, _sequences

__all__ = [
    "crowded_layouts",
    "cu_seqlens_of",
    "metamorphic_pairs",
    "metamorphic_variants",
    "packing_layouts",
    "stratified_layouts",
]

_MAX_TOKENS_PER_SEQUENCE = MAX_RESIDUES + 2


def cu_seqlens_of(layout: Sequence[str]) -> list[int]:
    """Cumulative token offsets of a packed layout, from 0; each sequence adds <cls>/<eos>."""
    offsets = [0]
    for sequence in layout:
        offsets.append(offsets[-1] + residue_count(sequence) + 2)
    return offsets


def _tokens(layout: Sequence[str]) -> int:
    return sum(residue_count(s) + 2 for s in layout)


def _fit(raw: Sequence[str], min_n: int, max_n: int, budget: int) -> list[str]:
    """Keep the first ``max_n`` sequences, cutting residues off those that overflow ``budget``.

    Three tokens stay reserved for each sequence still needed to reach ``min_n``;
    callers pass ``len(raw) >= min_n`` and ``budget >= 3 * min_n``.
    """
    out: list[str] = []
    left = budget
    for sequence in raw[:max_n]:
        reserve = 3 * max(0, min_n - len(out) - 1)
        allowed = min(left - reserve - 2, MAX_RESIDUES)
        if allowed < 1:
            break
        tokens = split_residues(sequence)
        if len(tokens) > allowed:
            sequence = "".join(tokens[:allowed])
        out.append(sequence)
        left -= residue_count(sequence) + 2
    return out


def _boundaries(
    tile_sizes: Iterable[int], min_sequences: int, max_sequences: int, max_tokens: int
) -> list[int]:
    """Offsets t-1, t, t+1 for every multiple t of a tile size that a layout can reach."""
    found = set()
    for tile in tile_sizes:
        for multiple in range(tile, max_tokens + 2, tile):
            for offset in (multiple - 1, multiple, multiple + 1):
                needed = -(-offset // _MAX_TOKENS_PER_SEQUENCE)
                if (
                    3 <= offset <= max_tokens
                    and needed <= max_sequences
                    and max_tokens - offset >= 3 * max(0, min_sequences - needed)
                ):
                    found.add(offset)
    return sorted(found)


def _split_tokens(total: int) -> list[int]:
    """Split ``total >= 3`` tokens into as few sequences as possible, each 3..1024 tokens."""
    count = -(-total // _MAX_TOKENS_PER_SEQUENCE)
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def _land(layout: list[str], boundary: int) -> list[str]:
    """Cut the sequence that spans ``boundary`` so that it ends exactly there, if it can."""
    start = 0
    for index, sequence in enumerate(layout):
        end = start + residue_count(sequence) + 2
        if end >= boundary:
            if boundary - start - 2 >= 1:
                tokens = split_residues(sequence)[: boundary - start - 2]
                layout = [*layout[:index], "".join(tokens), *layout[index + 1 :]]
            break
        start = end
    return layout


_EDGE = st.sampled_from((False, True, True, True, True))
"""Whether a layout is built on the edges (:func:`_edge_layouts`): four times in five. With
each kind of edge then drawn four times in five, a layout sits on it with probability about
0.64, and a ci run (six examples, the first the simplest) on it with probability over 0.95
(``benchmarks/edge_reach.py`` measures it). False comes first: examples shrink towards the
plain layouts."""
_OFTEN = _EDGE


def _on_edges(plain: SearchStrategy[list[str]], edges: SearchStrategy[list[str]]):
    @st.composite
    def build(draw: st.DrawFn) -> list[str]:
        return draw(edges if draw(_EDGE) else plain)

    return build()


def _rebalance(sizes: list[int], target: int, most: int) -> list[int]:
    """``sizes`` (tokens per sequence, each 3..``most``) changed from the last one back until
    they add up to ``target``, or as near as the bounds allow; sizes on a tile edge change
    only where the others cannot close the gap."""
    sizes = list(sizes)
    gap = target - sum(sizes)
    tiles = {n + 2 for n in tile_lengths(1, most - 2)}
    on_tile = [size in tiles for size in sizes]
    for protect in (True, False):
        for index in reversed(range(len(sizes))):
            if gap == 0:
                return sizes
            if protect and on_tile[index]:
                continue
            step = min(gap, most - sizes[index]) if gap > 0 else -min(-gap, sizes[index] - 3)
            sizes[index] += step
            gap -= step
    return sizes


def _arranged(sizes: list[int], order: str | None, lead_at: int) -> list[int]:
    """``sizes`` (the lead first) in packing order: the longest first and the shortest last,
    the reverse, or the lead at ``lead_at`` and the rest in drawn order."""
    index = list(range(len(sizes)))
    if order is None or len(sizes) < 2:
        rest = index[1:]
        index = [*rest[:lead_at], 0, *rest[lead_at:]]
    else:
        big = max(index, key=lambda i: (sizes[i], -i))
        small = min((i for i in index if i != big), key=lambda i: (sizes[i], i))
        first, last = (big, small) if order == "longest" else (small, big)
        index = [first, *(i for i in index if i not in (first, last)), last]
    return [sizes[i] for i in index]


@functools.cache
def _edge_layouts(
    low: int, high: int, *, cap: int, min_sequences: int, max_sequences: int, max_tokens: int,
    masks: bool, rare: bool,
) -> SearchStrategy[list[str]]:
    """Layouts built on the edges of :mod:`esmfuzz.edges`: a lead sequence of ``low..high``
    residues, at ``high`` two times in three and otherwise at another edge of that range,
    plus further sequences of up to ``cap`` residues, most at tile lengths or bounds. Each of
    these, four times in five: the pack fills ``max_tokens`` exactly or to one token short
    (where sequences of ``cap`` residues can), holds c-1, c or c+1 sequences for a
    :data:`esmfuzz.edges.COUNTS` entry c (where the budget allows), and has its longest
    sequence first and its shortest last or the reverse. Residues come from one bytes choice
    per sequence, then (past 4 KiB of choices) from slices of the residues drawn so far.
    Examples shrink towards the lead at its other edges, fewer sequences, and 'L'."""
    most_tokens = cap + 2
    others = [n for n in length_edges(low, high) if n != high] or [high]
    fill_ok = max_sequences * most_tokens >= max_tokens and high + 2 <= max_tokens
    sized = sorted({3, most_tokens - 1, most_tokens} | {n + 2 for n in tile_lengths(1, cap)})
    lead_cap = max_tokens - 2 - 3 * (min_sequences - 1)  # three tokens per other sequence
    token_sizes = st.one_of(st.sampled_from(sized), st.integers(3, most_tokens))
    options = dict(composition="swissprot", rare=rare, masks=masks, low_complexity=True)

    @st.composite
    def build(draw: st.DrawFn) -> list[str]:
        lead = high if draw(st.sampled_from(("other", "max", "max"))) == "max" else draw(
            st.sampled_from(others))
        lead_tokens = min(lead, lead_cap) + 2
        total = None
        if fill_ok and draw(_OFTEN):
            total = max_tokens - draw(st.sampled_from((0, 1)))
        room = (total or max_tokens) - lead_tokens
        least = max(min_sequences - 1, 1 if max_sequences > 1 and room >= 3 else 0)
        most = min(max_sequences - 1, room // 3)
        if total is not None and max(least, -(-room // most_tokens)) > most:
            # Too few sequences fit to fill the budget around this lead: lead at the maximum.
            lead_tokens = min(high, lead_cap) + 2
            room = total - lead_tokens
            most = min(max_sequences - 1, room // 3)
        if total is not None:
            least = max(least, -(-room // most_tokens))
            if least > most:
                total, least = None, max(min_sequences - 1, 1 if most >= 1 else 0)
        counts = [c - 1 for c in count_edges(min_sequences, max_sequences, max_tokens)
                  if least <= c - 1 <= most]
        if counts and draw(_OFTEN):
            count = draw(st.sampled_from(counts))
        else:
            count = draw(st.integers(least, max(least, most)))
        sizes = draw(st.lists(token_sizes, min_size=count, max_size=count))
        target = room if total is not None else min(sum(sizes), room)
        sizes = _rebalance(sizes, target, most_tokens)
        order = draw(st.sampled_from((None, "longest", "shortest", "longest", "shortest")))
        lead_at = draw(st.integers(0, count)) if order is None else 0
        placed = _arranged([lead_tokens, *sizes], order, lead_at)
        layout: list[str] = []
        pool: list[str] = []
        for size in placed:
            residues = size - 2
            if len(pool) + residues <= _READ_BYTES:
                sequence = draw(_fixed_range(residues, residues, **options))
                pool += split_residues(sequence)
            else:
                start = draw(st.integers(0, len(pool) - 1))
                ring = pool[start:] + pool[:start]
                sequence = "".join((ring * (residues // len(ring) + 1))[:residues])
            layout.append(sequence)
        return layout

    return build()


def _check_counts(min_sequences: int, max_sequences: int, max_tokens: int, *, fewest: int) -> None:
    _check_int("min_sequences", min_sequences, at_least=fewest)
    _check_int("max_sequences", max_sequences, at_least=fewest)
    if max_sequences < min_sequences:
        raise InvalidArgument(
            f"max_sequences={max_sequences!r} must be at least min_sequences={min_sequences!r}"
        )
    _check_int("max_tokens", max_tokens, at_least=3)
    if max_tokens < 3 * min_sequences:
        raise InvalidArgument(
            f"max_tokens={max_tokens!r} must be at least 3 * min_sequences="
            f"{3 * min_sequences} (each sequence takes at least 3 tokens)"
        )


@_lazy
def packing_layouts(
    *,
    min_sequences: int = 1,
    max_sequences: int = 16,
    max_tokens: int = 4096,
    sequences: SearchStrategy[str] | None = None,
    tile_sizes: Iterable[int] = (64, 128, 256),
    masks: bool = True,
    rare: bool = True,
) -> SearchStrategy[list[str]]:
    """Lists of sequences to pack into one batch, in packing order.

    Packed (varlen) attention fails at sequence boundaries, so besides plain mixes
    the layouts include single sequences, 1-residue sequences, one long sequence
    among many short ones, duplicates, and boundaries (``cu_seqlens_of`` entries)
    placed exactly on t-1, t and t+1 for multiples t of ``tile_sizes``. Every
    layout fits ``max_tokens`` (residues plus <cls>/<eos> each); sequences that
    would overflow it are cut short. Four layouts in five are built on the edges
    of :mod:`esmfuzz.edges` instead: a sequence of the most residues that fit (up to
    1022), sequences at tile lengths, the budget filled exactly or to one token short,
    counts at 32/64/128/256 +-1, the longest sequence first and the shortest last or
    the reverse. ``sequences`` replaces the built-in element mix and its edges
    (boundaries are then placed by cutting a drawn sequence). Examples shrink
    towards ``min_sequences`` sequences of one 'L' each.
    """
    _check_counts(min_sequences, max_sequences, max_tokens, fewest=1)
    _check_strategy("sequences", sequences)
    if isinstance(tile_sizes, (str, bytes)) or not isinstance(tile_sizes, Iterable):
        raise InvalidArgument(f"tile_sizes={tile_sizes!r} must be a collection of ints")
    tile_sizes = tuple(tile_sizes)
    if not tile_sizes or any(
        isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tile_sizes
    ):
        raise InvalidArgument(
            f"tile_sizes={tile_sizes!r} must be a non-empty collection of positive ints"
        )
    _check_bool("masks", masks)
    _check_bool("rare", rare)

    cap = min(MAX_RESIDUES, max_tokens - 2 - 3 * (min_sequences - 1))
    if sequences is None:
        tiny = _sequences(1, min(cap, 8), masks=masks, rare=rare, low_complexity=False)
        elements = st.one_of(tiny, _sequences(1, cap, masks=masks, rare=rare))
    else:
        tiny = elements = sequences
    # Per tile: its first multiple (where off-by-one bugs live) as often as all others.
    per_tile = []
    for tile in dict.fromkeys(tile_sizes):
        reachable = _boundaries((tile,), min_sequences, max_sequences, max_tokens)
        if reachable:
            first = [b for b in reachable if b <= tile + 1] or reachable
            per_tile.append(st.one_of(st.sampled_from(first), st.sampled_from(reachable)))
    targets = st.one_of(per_tile) if per_tile else None

    def fitted(min_n: int, max_n: int, budget: int, items=elements) -> SearchStrategy:
        raw = st.lists(items, min_size=min_n, max_size=max_n)
        return raw.map(lambda layout: _fit(layout, min_n, max_n, budget))

    branches = [fitted(min_sequences, max_sequences, max_tokens)]

    @st.composite
    def on_boundary(draw: st.DrawFn) -> list[str]:
        boundary = draw(targets)
        if sequences is not None:
            layout = draw(fitted(min_sequences, max_sequences, max_tokens))
            return _land(layout, boundary)
        needed = len(_split_tokens(boundary))
        prefix = draw(fitted(0, max_sequences - needed, boundary - 3, tiny))
        layout = list(prefix)
        for size in _split_tokens(boundary - _tokens(prefix)):
            layout.append(draw(_sequences(size - 2, size - 2, masks=masks, rare=rare)))
        rest = max(0, min_sequences - len(layout))
        suffix = draw(fitted(rest, max_sequences - len(layout), max_tokens - boundary))
        return layout + suffix

    if targets is not None:
        branches.append(on_boundary())

    @st.composite
    def one_long_among_short(draw: st.DrawFn) -> list[str]:
        most = max_sequences - 1
        short = _sequences(1, min(cap, 10), masks=masks, rare=rare)
        shorts = draw(fitted(min(most, max(min_sequences - 1, 3)), most, max_tokens - 3, short))
        long_cap = min(MAX_RESIDUES, max_tokens - _tokens(shorts) - 2)
        longest = max(residue_count(s) for s in shorts)
        long_min = min(long_cap, max(longest + 1, 100))
        long = draw(_sequences(long_min, long_cap, masks=masks, rare=rare))
        position = draw(st.integers(0, len(shorts)))
        return [*shorts[:position], long, *shorts[position:]]

    @st.composite
    def with_duplicate(draw: st.DrawFn) -> list[str]:
        least = max(min_sequences - 1, 1)
        raw = draw(st.lists(elements, min_size=least, max_size=max_sequences - 1))
        copied = draw(st.integers(0, len(raw) - 1))
        position = draw(st.integers(0, len(raw)))
        raw.insert(position, raw[copied])
        return _fit(raw, min_sequences, max_sequences, max_tokens)

    if max_sequences >= 2:
        if sequences is None and max_tokens >= 3 * max(min_sequences, 4):
            branches.append(one_long_among_short())
        branches.append(with_duplicate())
    if sequences is not None:
        return st.one_of(branches)
    edges = _edge_layouts(1, cap, cap=cap, min_sequences=min_sequences,
                          max_sequences=max_sequences, max_tokens=max_tokens, masks=masks,
                          rare=rare)
    return _on_edges(st.one_of(branches), edges)


_MEAN_FRAMES = 3.5  # frames per read: st.integers(1, 6)
# Hypothesis allows 8 KiB of choices per example; reads get about half of it on
# average, leaving the rest for the spread of pack sizes.
_READ_BYTES = 4096


def _frames(read: str, count: int) -> list[str]:
    """The first ``count`` of a read's six frames: the read, then without its first one
    and two residues, then the same three for the reversed read (never empty)."""
    tokens = split_residues(read)
    frames = []
    for frame in range(count):
        strand = tokens if frame < 3 else tokens[::-1]
        frames.append("".join(strand[min(frame % 3, len(strand) - 1) :]))
    return frames


def _typical_residues(max_residues: int) -> float:
    """Mean length of ``_sequences(1, max_residues)``: its strata's mean sizes, averaged."""
    means = [
        min(max(2 * low, low + 5), (low + min(high, max_residues)) / 2)
        for low, high in LENGTH_STRATA.values()
        if low <= max_residues
    ]
    return sum(means) / len(means)


@_lazy
def crowded_layouts(
    *,
    min_sequences: int = 2,
    max_sequences: int = 256,
    max_tokens: int = 16384,
    max_residues: int = 170,
    masks: bool = True,
    rare: bool = True,
) -> SearchStrategy[list[str]]:
    """Production-shaped packs: dozens to hundreds of short proteins filling a big budget.

    Production packs hold six-frame translations of sequencing reads, so each read
    (a sequence of 1..``max_residues`` residues, with occasional ``<mask>`` and rare
    residues unless ``masks``/``rare`` are False) adds 1..6 adjacent frames: itself,
    itself without its first one or two residues, and the same three reversed.
    Frames of very short reads coincide, giving duplicates, and reads often reach
    ``max_residues``. Each sequence takes its residues plus <cls>/<eos> tokens.

    A pack is a list of slots, each empty or a read (``one_of(none(), reads)``),
    whose min_size is 1.25 times the reads that fit (by ``max_sequences``, by
    ``max_tokens``, and by Hypothesis's 8 KiB of choices per example). About half
    the slots hold a read, so a pack draws about 0.6 to 1.25 times what fits, not the
    handful of elements a list with a small min_size averages; packs over
    ``max_sequences`` or ``max_tokens`` are cut as in :func:`packing_layouts`, and
    packs under ``min_sequences`` repeat their sequences. Emptying a slot removes
    one read without moving the others, so examples shrink towards
    ``min_sequences`` sequences of one 'L'; a failure that needs more than n
    sequences shrinks to n + 1 of them, and one that needs more than t tokens to a
    couple of dozen sequences totalling just over t (shrinking never lengthens one).

    Four packs in five are built on the edges instead, as in :func:`packing_layouts`:
    the budget filled exactly or to one token short, 32/64/128/256 +-1 sequences,
    reads at tile lengths and at ``max_residues``, the longest first and the shortest
    last or the reverse; those shrink towards the plain packs.
    """
    _check_counts(min_sequences, max_sequences, max_tokens, fewest=1)
    _check_int("max_residues", max_residues, at_least=1)
    if max_residues > MAX_RESIDUES:
        raise InvalidArgument(
            f"max_residues={max_residues!r} must be at most MAX_RESIDUES={MAX_RESIDUES}"
        )
    _check_bool("masks", masks)
    _check_bool("rare", rare)

    typical = _typical_residues(max_residues)
    fits = min(
        max_sequences / _MEAN_FRAMES,
        max_tokens / (_MEAN_FRAMES * (typical + 2)),
        _READ_BYTES / (typical + 8),  # a read costs about 8 choice bytes beyond its residues
    )
    slots = max(1, round(1.25 * fits))
    reads = st.tuples(_sequences(1, max_residues, masks=masks, rare=rare), st.integers(1, 6))
    packs = st.lists(st.one_of(st.none(), reads), min_size=slots, max_size=2 * slots)

    def build(drawn: list[tuple[str, int] | None]) -> list[str]:
        raw = [frame for slot in drawn if slot is not None for frame in _frames(*slot)]
        if len(raw) < min_sequences:
            cycle = raw or ["L"]
            raw = [cycle[i % len(cycle)] for i in range(min_sequences)]
        return _fit(raw, min_sequences, max_sequences, max_tokens)

    edges = _edge_layouts(1, max_residues, cap=max_residues, min_sequences=min_sequences,
                          max_sequences=max_sequences, max_tokens=max_tokens, masks=masks,
                          rare=rare)
    return _on_edges(packs.map(build), edges)


def _differ(sequence: str, *others: str) -> str:
    """``sequence``, or the same length with its first residue changed to avoid ``others``."""
    if sequence not in others:
        return sequence
    rest = "".join(split_residues(sequence)[1:])
    return next(r + rest for r in "LAG" if r + rest not in others)


def _check_layout(layout: object, target: object) -> list[str]:
    if not isinstance(layout, (list, tuple)) or not layout:
        raise InvalidArgument(f"layout={layout!r} must be a non-empty list of sequences")
    for index, sequence in enumerate(layout):
        try:
            validate_sequence(sequence, name=f"layout[{index}]")
        except InvalidSequence as error:
            raise InvalidArgument(f"layout={layout!r} is not a valid layout: {error}") from None
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(layout):
        raise InvalidArgument(
            f"target={target!r} must be an index into layout (0..{len(layout) - 1})"
        )
    return list(layout)


@_lazy
def metamorphic_variants(
    layout: Sequence[str],
    target: int,
    *,
    sequences: SearchStrategy[str] | None = None,
    masks: bool = True,
    rare: bool = True,
) -> SearchStrategy[tuple[list[str], int]]:
    """Pairs ``(variant, index)``: ``layout`` with the target's neighbours replaced or reordered.

    The target's outputs must not change, so any difference is a leak across a
    packing boundary. ``variant[index] == layout[target]``, and no neighbour equals
    the target, because attending to an identical copy cannot show a leak. A
    replacement never has more residues than the neighbour it replaces, so the
    token budget never grows; with ``sequences`` given, its draws are cut to fit
    (otherwise ``masks``/``rare`` say whether replacements hold ``<mask>`` and rare
    residues). With two or more sequences the variant always differs from ``layout``.
    Examples shrink towards the original order with the next neighbour replaced
    by a single 'L' (or 'A' or 'G', whichever differs from target and original).
    """
    layout = _check_layout(layout, target)
    _check_strategy("sequences", sequences)
    _check_bool("masks", masks)
    _check_bool("rare", rare)
    centre = layout[target]
    if len(layout) == 1:
        return st.just((layout, 0))

    def replacement(draw: st.DrawFn, old: str) -> str:
        size = residue_count(old)
        if sequences is None:
            new = draw(_sequences(1, size, masks=masks, rare=rare))
        else:
            new = "".join(split_residues(draw(sequences))[:size]) or "L"
        return _differ(new, centre)

    @st.composite
    def build(draw: st.DrawFn) -> tuple[list[str], int]:
        items = list(layout)
        for index, neighbour in enumerate(layout):
            if index == target:
                continue
            if neighbour == centre or draw(st.booleans()):
                items[index] = replacement(draw, neighbour)
        order = draw(st.permutations(range(len(items))))
        variant = [items[i] for i in order]
        moved = order.index(target)
        if variant == layout:
            # Nothing changed: replace the next neighbour by the simplest different
            # sequence, without further draws (extra draws would stall shrinking).
            near = target + 1 if target + 1 < len(layout) else target - 1
            variant[near] = _differ("L", centre, layout[near])
        return variant, moved

    return build()


@_lazy
def metamorphic_pairs(
    *,
    min_sequences: int = 2,
    max_sequences: int = 8,
    max_tokens: int = 2048,
    layouts: SearchStrategy[list[str]] | None = None,
    masks: bool = True,
    rare: bool = True,
) -> SearchStrategy[tuple[list[str], int, list[str], int]]:
    """Tuples ``(layout, target, variant, variant_target)`` for packing-leak tests.

    The layout comes from :func:`packing_layouts`, or from ``layouts`` (for example
    :func:`crowded_layouts`; its layouts of fewer than ``min_sequences`` sequences
    are skipped), with any neighbour equal to the target changed in its first
    residue; the variant comes from :func:`metamorphic_variants`. ``masks``/``rare``
    say whether the drawn sequences hold ``<mask>`` and rare residues. Examples shrink
    towards two one-residue sequences, the target first, and a variant that replaces
    the other one.
    """
    _check_counts(min_sequences, max_sequences, max_tokens, fewest=2)
    _check_strategy("layouts", layouts)
    _check_bool("masks", masks)
    _check_bool("rare", rare)
    if layouts is None:
        layouts = packing_layouts(
            min_sequences=min_sequences,
            max_sequences=max_sequences,
            max_tokens=max_tokens,
            masks=masks,
            rare=rare,
        )
    else:
        layouts = layouts.filter(lambda layout: len(layout) >= min_sequences)

    @st.composite
    def build(draw: st.DrawFn) -> tuple[list[str], int, list[str], int]:
        layout = draw(layouts)
        target = draw(st.integers(0, len(layout) - 1))
        layout = [s if i == target else _differ(s, layout[target]) for i, s in enumerate(layout)]
        variant, moved = draw(metamorphic_variants(layout, target, masks=masks, rare=rare))
        return layout, target, variant, moved

    return build()


@_lazy
def stratified_layouts(
    stratum: str,
    *,
    max_sequences: int = 8,
    max_tokens: int = 4096,
    masks: bool = True,
    rare: bool = True,
) -> SearchStrategy[list[str]]:
    """Layouts whose longest sequence lies in one length stratum.

    Errors grow with sequence length (rounding of rotary angles, longer softmax
    sums), so fuzz targets run per stratum: one sequence of the stratum placed
    anywhere among shorter packing neighbours from :func:`packing_layouts`;
    ``masks``/``rare`` as there. Four layouts in five are built on the edges: that
    sequence at the stratum's maximum (1022 residues for ``very_long``) two times in
    three, else at its minimum, next to either, or at a tile length, among neighbours
    that fill ``max_tokens`` exactly or to one token short, longest first and shortest
    last or the reverse. Examples shrink towards that one sequence alone, at the
    stratum's shortest length.
    """
    from strategies.sequences import LENGTH_STRATA, protein_sequences

    if stratum not in LENGTH_STRATA:
        raise InvalidArgument(f"stratum={stratum!r} must be one of {sorted(LENGTH_STRATA)}")
    _check_int("max_sequences", max_sequences, at_least=1)
    _check_int("max_tokens", max_tokens, at_least=_MAX_TOKENS_PER_SEQUENCE + 3)
    _check_bool("masks", masks)
    _check_bool("rare", rare)
    shortest, longest = LENGTH_STRATA[stratum]
    anchors = protein_sequences(stratum=stratum, masks=masks, rare=rare)
    edges = _edge_layouts(shortest, longest, cap=longest, min_sequences=1,
                          max_sequences=max_sequences, max_tokens=max_tokens, masks=masks,
                          rare=rare)

    @st.composite
    def build(draw: st.DrawFn) -> list[str]:
        anchor = draw(anchors)
        room = max_tokens - residue_count(anchor) - 2
        others: list[str] = []
        if max_sequences > 1 and room >= 3:
            drawn = draw(
                st.one_of(
                    st.just([]),
                    packing_layouts(
                        max_sequences=max_sequences - 1, max_tokens=room, masks=masks, rare=rare
                    ),
                )
            )
            others = [s for s in drawn if residue_count(s) <= longest]
        where = draw(st.integers(0, len(others)))
        return [*others[:where], anchor, *others[where:]]

    return _on_edges(build(), edges)
