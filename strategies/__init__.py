"""Hypothesis strategies for fuzzing ESM-2 inference: sequences, packed layouts,
metamorphic variants and invalid input. The README lists what they cover."""

from strategies.layouts import (
    crowded_layouts,
    cu_seqlens_of,
    metamorphic_pairs,
    metamorphic_variants,
    packing_layouts,
    stratified_layouts,
)
from strategies.sequences import (
    INVALID_KINDS,
    LENGTH_STRATA,
    invalid_sequences,
    protein_sequences,
    stratum_of,
)

__all__ = [
    "INVALID_KINDS",
    "LENGTH_STRATA",
    "crowded_layouts",
    "cu_seqlens_of",
    "invalid_sequences",
    "metamorphic_pairs",
    "metamorphic_variants",
    "packing_layouts",
    "protein_sequences",
    "stratified_layouts",
    "stratum_of",
]
