"""The ESM-2 residue alphabet and validation of sequence strings.

Kept free of torch so that strategies and corpus code can import it cheaply.
A sequence is a string of one-letter residues in which ``<mask>`` may stand for
one masked position, exactly as fair-esm's batch converter reads it.
"""

from __future__ import annotations

import re

from esmfuzz.errors import EsmfuzzError

__all__ = [
    "MASK",
    "MAX_RESIDUES",
    "RARE_RESIDUES",
    "STANDARD_RESIDUES",
    "SWISSPROT_FREQUENCIES",
    "InvalidSequence",
    "layout_residues",
    "residue_count",
    "split_residues",
    "validate_sequence",
]

STANDARD_RESIDUES = "LAGVSERTIDPKQNFYMHWC"
RARE_RESIDUES = "XBUZO"
MASK = "<mask>"
MAX_RESIDUES = 1022
"""ESM-2 was trained with 1024 positions: 1022 residues plus ``<cls>`` and ``<eos>``."""

SWISSPROT_FREQUENCIES = {
    "L": 9.65, "A": 8.25, "G": 7.07, "V": 6.86, "E": 6.72, "S": 6.63, "I": 5.91,
    "K": 5.80, "R": 5.53, "D": 5.46, "T": 5.35, "P": 4.74, "N": 4.06, "Q": 3.93,
    "F": 3.86, "Y": 2.92, "M": 2.41, "H": 2.27, "C": 1.38, "W": 1.10,
}
"""UniProtKB/Swiss-Prot background residue composition, percent, as published in
UniProt's Swiss-Prot release statistics; normalised where used."""

_TOKEN = re.compile(r"<[^<>]*>|.", re.DOTALL)
_SPECIAL_TEXT = ("<cls>", "<pad>", "<eos>", "<unk>", "<null_1>", "<sep>")
_ALLOWED = set(STANDARD_RESIDUES + RARE_RESIDUES)


class InvalidSequence(EsmfuzzError, ValueError):
    """A sequence string that the model cannot take."""


def split_residues(sequence: str) -> list[str]:
    """Split a sequence into residue tokens, ``<mask>`` counting as one."""
    return _TOKEN.findall(sequence)


def residue_count(sequence: str) -> int:
    return len(split_residues(sequence))


def layout_residues(layout) -> tuple[list[int], list[str]]:
    """Each sequence's residue count, and every residue of the layout in order: what the
    reach of a run and of a soak count."""
    split = [split_residues(s) for s in layout]
    return [len(r) for r in split], [r for residues in split for r in residues]


def validate_sequence(
    sequence: object, *, name: str = "sequence", max_residues: int = MAX_RESIDUES
) -> str:
    """Return ``sequence`` unchanged, or raise :class:`InvalidSequence` saying what is wrong.

    Rejection happens before any forward pass: a silently truncated or
    re-tokenised sequence would make every later comparison meaningless.
    """
    if not isinstance(sequence, str):
        raise InvalidSequence(f"{name}={sequence!r} is a {type(sequence).__name__}, not a str")
    if not sequence:
        raise InvalidSequence(f"{name}='' is empty; a sequence needs at least one residue")
    tokens = split_residues(sequence)
    for position, token in enumerate(tokens):
        if token == MASK or token in _ALLOWED:
            continue
        if token in _SPECIAL_TEXT:
            problem = f"special-token text {token!r} inside the sequence"
        elif token.startswith("<"):
            problem = f"unknown token text {token!r}"
        elif token.islower() and token.upper() in _ALLOWED:
            problem = f"lowercase residue {token!r} (ESM-2's alphabet is upper case)"
        else:
            problem = f"character {token!r} is not in the ESM-2 alphabet"
        raise InvalidSequence(f"{name}={_short(sequence)}: {problem} at residue {position}")
    if len(tokens) > max_residues:
        raise InvalidSequence(
            f"{name}={_short(sequence)} has {len(tokens)} residues, over the model maximum of "
            f"{max_residues}; esmfuzz never truncates silently"
        )
    return sequence


def _short(sequence: str, limit: int = 40) -> str:
    if len(sequence) <= limit:
        return repr(sequence)
    return repr(sequence[:limit] + "...") + f" (length {len(sequence)})"
