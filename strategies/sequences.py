"""Strategies for protein sequence strings, valid and invalid."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

from esmfuzz.alphabet import (
    MASK,
    MAX_RESIDUES,
    RARE_RESIDUES,
    SWISSPROT_FREQUENCIES,
    split_residues,
)
from esmfuzz.edges import length_edges
from strategies._validation import _check_bool, _check_int, _lazy

__all__ = [
    "INVALID_KINDS",
    "LENGTH_STRATA",
    "invalid_sequences",
    "protein_sequences",
    "stratum_of",
]

LENGTH_STRATA: dict[str, tuple[int, int]] = {
    "short": (1, 49),
    "medium": (50, 200),
    "long": (201, 500),
    "very_long": (501, MAX_RESIDUES),
}
"""Inclusive residue-count ranges; numerical trouble differs between them (tiling,
softmax over long rows, positional embeddings near the 1024 limit)."""

INVALID_KINDS = ("empty", "bad_character", "lowercase", "special_token", "too_long")

_COMPOSITIONS = ("swissprot", "uniform")
# Most frequent first, so the simplest residue (index/byte 0) is 'L'.
_BY_FREQUENCY = "".join(sorted(SWISSPROT_FREQUENCIES, key=lambda r: -SWISSPROT_FREQUENCIES[r]))
_BAD_CHARACTERS = "*J0123456789 \t\n-.!?#"
_SPECIAL_TOKENS = ("<cls>", "<eos>", "<pad>", "<unk>", "<sep>", "<null_1>")


def stratum_of(length: int) -> str:
    """Name the :data:`LENGTH_STRATA` entry that holds ``length`` residues."""
    for name, (low, high) in LENGTH_STRATA.items():
        if low <= length <= high:
            return name
    raise ValueError(f"length={length!r} is outside every stratum (1..{MAX_RESIDUES})")


def _byte_table(composition: str) -> bytes:
    """Map each byte value to one residue letter; byte 0 is 'L', the commonest."""
    if composition == "uniform":
        letters = [_BY_FREQUENCY[b * 20 // 256] for b in range(256)]
    else:
        total = sum(SWISSPROT_FREQUENCIES.values())
        bounds, running = [], 0.0
        for residue in _BY_FREQUENCY:
            running += SWISSPROT_FREQUENCIES[residue] / total
            bounds.append(running)
        bounds[-1] = 2.0  # no byte may fall past the last residue through rounding
        letters = []
        for b in range(256):
            point = (b + 0.5) / 256
            pairs = zip(_BY_FREQUENCY, bounds, strict=True)
            letters.append(next(r for r, top in pairs if point < top))
    return "".join(letters).encode("ascii")


_TABLES = {name: _byte_table(name) for name in _COMPOSITIONS}

_RESIDUES = st.sampled_from(_BY_FREQUENCY)
_RUNS = st.one_of(
    # Homopolymer runs such as QQQQQQQQ.
    st.builds(lambda r, n: [r] * n, _RESIDUES, st.integers(4, 30)),
    # Short tandem repeats such as PEPEPEPE or GGSGGSGGS.
    st.builds(
        lambda unit, n: unit * n,
        st.lists(_RESIDUES, min_size=2, max_size=4),
        st.integers(3, 10),
    ),
)


_OVERLAY_ITEMS = {
    "run": (_RUNS, 3),
    "rare": (st.sampled_from(RARE_RESIDUES), 8),
    "mask": (st.just(MASK), 8),
}
# Each kind of overlay appears in about one example in four; False comes first to shrink to.
_SOMETIMES = st.sampled_from((False, False, False, True))


@functools.cache
def _overlays(n: int, kind: str) -> SearchStrategy[list[tuple[int, object]]]:
    """A few (position, item) substitutions, cached per length: building strategies
    inside every draw is slow."""
    items, max_size = _OVERLAY_ITEMS[kind]
    return st.lists(st.tuples(st.integers(0, n - 1), items), min_size=1, max_size=max_size)


@functools.cache
def _fixed_range(
    low: int, high: int, *, composition: str, rare: bool, masks: bool, low_complexity: bool
) -> SearchStrategy[str]:
    table = _TABLES[composition]
    backgrounds = st.binary(min_size=low, max_size=high)

    @st.composite
    def build(draw: st.DrawFn) -> str:
        # One bytes choice for the whole background keeps 1022-residue sequences cheap
        # and shrinks towards fewer bytes, each towards 0 (= 'L').
        background = draw(backgrounds).translate(table)
        tokens: list[str] = list(background.decode("ascii"))
        n = len(tokens)
        if low_complexity:
            for start, run in draw(_overlays(n, "run")) if draw(_SOMETIMES) else ():
                run = run[: n - start]
                tokens[start : start + len(run)] = run
        if rare:
            for position, residue in draw(_overlays(n, "rare")) if draw(_SOMETIMES) else ():
                tokens[position] = residue
        if masks:
            for position, mask in draw(_overlays(n, "mask")) if draw(_SOMETIMES) else ():
                tokens[position] = mask
        return "".join(tokens)

    return build()


@functools.cache
def _sequences(
    low: int,
    high: int,
    *,
    composition: str = "swissprot",
    rare: bool = True,
    masks: bool = True,
    low_complexity: bool = True,
) -> SearchStrategy[str]:
    """Sequences of ``low..high`` residues, one branch per length stratum touched, and a last
    branch for the lengths on an edge of ``low..high`` (:func:`esmfuzz.edges.length_edges`):
    a bytes choice of random size seldom lands on one."""
    ranges = [(max(low, a), min(high, b)) for a, b in LENGTH_STRATA.values()]
    if high > MAX_RESIDUES:
        ranges.append((max(low, MAX_RESIDUES + 1), high))
    options = dict(composition=composition, rare=rare, masks=masks, low_complexity=low_complexity)
    branches = [_fixed_range(a, b, **options) for a, b in ranges if a <= b]
    branches.append(_exact_lengths(tuple(length_edges(low, high)), **options))
    return st.one_of(branches)


@functools.cache
def _exact_lengths(lengths: tuple[int, ...], **options) -> SearchStrategy[str]:
    """Sequences of one of ``lengths`` residues; shrinks towards the first, the shortest."""
    return st.sampled_from(lengths).flatmap(lambda n: _fixed_range(n, n, **options))


@_lazy
def protein_sequences(
    *,
    min_size: int = 1,
    max_size: int = MAX_RESIDUES,
    stratum: str | None = None,
    composition: str = "swissprot",
    rare: bool = True,
    masks: bool = True,
    low_complexity: bool = True,
) -> SearchStrategy[str]:
    """Valid ESM-2 sequence strings of ``min_size..max_size`` residues (``<mask>`` is one).

    Lengths are spread over the :data:`LENGTH_STRATA` rather than piled up near
    ``min_size``, because kernels misbehave at long lengths too, and land on an edge
    (:func:`esmfuzz.edges.length_edges`: the bounds, 1021 and 1022, tile lengths) in
    one draw out of two to five (one more branch beside one per stratum). Residues follow
    Swiss-Prot background frequencies (or ``composition="uniform"``); ``rare``
    occasionally adds X B Z U O, ``masks`` occasionally adds ``<mask>``, and
    ``low_complexity`` occasionally overwrites stretches with homopolymer runs or
    short tandem repeats, as real proteins have. Examples shrink towards the
    shortest allowed length, made only of 'L', with no masks and no rare residues.
    """
    _check_int("min_size", min_size, at_least=1)
    _check_int("max_size", max_size, at_least=1)
    if max_size > MAX_RESIDUES:
        raise InvalidArgument(
            f"max_size={max_size!r} must be at most MAX_RESIDUES={MAX_RESIDUES}; "
            "use invalid_sequences(kinds=['too_long']) for longer ones"
        )
    if min_size > max_size:
        raise InvalidArgument(f"min_size={min_size!r} must be at most max_size={max_size!r}")
    if stratum is not None:
        if stratum not in LENGTH_STRATA:
            raise InvalidArgument(
                f"stratum={stratum!r} must be None or one of {sorted(LENGTH_STRATA)}"
            )
        low, high = LENGTH_STRATA[stratum]
        if max(low, min_size) > min(high, max_size):
            raise InvalidArgument(
                f"stratum={stratum!r} holds {low}..{high} residues, which does not meet "
                f"min_size={min_size!r}..max_size={max_size!r}"
            )
        min_size, max_size = max(low, min_size), min(high, max_size)
    if composition not in _COMPOSITIONS:
        raise InvalidArgument(f"composition={composition!r} must be one of {_COMPOSITIONS}")
    _check_bool("rare", rare)
    _check_bool("masks", masks)
    _check_bool("low_complexity", low_complexity)
    return _sequences(
        min_size,
        max_size,
        composition=composition,
        rare=rare,
        masks=masks,
        low_complexity=low_complexity,
    )


def _insert(base: SearchStrategy[str], items: SearchStrategy[str]) -> SearchStrategy[str]:
    """Put one item between two residues of a base sequence (never inside ``<mask>``)."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        tokens = split_residues(draw(base))
        position = draw(st.integers(0, len(tokens)))
        tokens.insert(position, draw(items))
        return "".join(tokens)

    return build()


@st.composite
def _lowercased(draw: st.DrawFn) -> str:
    tokens = list(draw(_sequences(1, 30, masks=False)))
    position = draw(st.integers(0, len(tokens) - 1))
    tokens[position] = tokens[position].lower()
    return "".join(tokens)


def _invalid_kind(kind: str) -> SearchStrategy[str]:
    if kind == "empty":
        return st.just("")
    if kind == "bad_character":
        return _insert(_sequences(1, 30), st.sampled_from(_BAD_CHARACTERS))
    if kind == "lowercase":
        return _lowercased()
    if kind == "special_token":
        return _insert(_sequences(1, 30), st.sampled_from(_SPECIAL_TOKENS))
    return _sequences(MAX_RESIDUES + 1, MAX_RESIDUES + 200)


@_lazy
def invalid_sequences(*, kinds: Iterable[str] | None = None) -> SearchStrategy[tuple[str, str]]:
    """Pairs ``(sequence, kind)`` of strings the model must refuse before any forward pass.

    Kinds are "empty", "bad_character" (``*``, ``J``, digits, whitespace, ...),
    "lowercase", "special_token" (``<cls>``, ``<eos>``, ... inside the string) and
    "too_long" (over 1022 residues); ``kinds`` restricts to a subset, since silent
    acceptance of any one is a distinct bug. Examples shrink towards the first
    allowed kind in that order, with the shortest surrounding sequence of 'L'
    (``too_long`` towards exactly 1023 residues).
    """
    if kinds is None:
        chosen = list(INVALID_KINDS)
    else:
        if isinstance(kinds, str):
            raise InvalidArgument(f"kinds={kinds!r} must be a collection of kinds, not a str")
        chosen = list(kinds)
        unknown = [k for k in chosen if k not in INVALID_KINDS]
        if unknown:
            raise InvalidArgument(
                f"kinds={kinds!r} contains unknown kind(s) {unknown}; choose from {INVALID_KINDS}"
            )
        if not chosen:
            raise InvalidArgument(f"kinds={kinds!r} must name at least one kind")
        chosen = [k for k in INVALID_KINDS if k in chosen]
    return st.one_of([_invalid_kind(kind).map(lambda s, kind=kind: (s, kind)) for kind in chosen])
