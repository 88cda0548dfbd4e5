"""Seeded faults: faulty packed and padded forwards that the fuzz targets must catch.

``FAULTS`` is the one table that the seeded-fault tests and the detection report
(``benchmarks/detection.py``) both read: per fault, the pytest options that plug
it in and the largest shrunk case (total residues) that counts as "small" for it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    name: str
    bug_class: str
    options: tuple[str, ...]
    max_residues: int = 64
    """Bound on the shrunk case: most faults need only a residue or two per sequence;
    faults that live past a tile or a length need that many residues."""
    max_sequences: int = 6
    """Bound on the shrunk case's sequence count."""
    cpu: bool = True
    """False where only a GPU run (long FP16 packs) can show the fault."""
    select: str | None = None
    """A ``-k`` expression for faults that live in one length stratum only, so the run
    goes straight to the targets that can show them."""
    edge: bool = False
    """Lives only at an edge of the input space (``esmfuzz.edges``): caught under seeds 1
    and 2 and shrunk to at most three sequences."""
    random_passes: bool = False
    """A low-precision shortcut that only trained-like activations expose: caught on the
    default (trained-like) synthetic model, and seen to pass on its random weights
    (:data:`RANDOM_WEIGHTS`; the contrast is what the trained-like profile is for)."""
    ci: bool = False
    """In CI's fast subset: seven faults of different families, each caught and shrunk in
    under a minute and a half on two cores (docs/detection.md has the times). The others
    carry the ``slow`` mark; ``pytest tests/test_faults.py -m ""`` runs all."""


def _packed(name: str, *extra: str) -> tuple[str, ...]:
    return ("--esm-packed-impl", f"tests.faults.packed:{name}", *extra)


RANDOM_WEIGHTS = "synthetic:esm2_t6_8M_UR50D?profile=random"
"""The default model without its trained-like traits: where ``random_passes`` faults pass."""


def _padded(name: str, *extra: str) -> tuple[str, ...]:
    return ("--esm-padded-impl", f"tests.faults.padded:{name}", *extra)


_PAST_POSITION = 1100
"""Positions that run on change nothing in exact arithmetic: only rounding at large
positions shows them, so the shrunk case keeps its sequences long enough to push the
last one's positions that far. Under the noise-relative oracle (k = 8 x the pooled
baselines' error) the ci run on two CPU cores shrank them to 3 sequences of 1022
residues in all (positions_run_on, value 8.3) and 2 of 402 (rotary_table_over_stream,
value 17): removing more residues lowers the positions below what the fault needs."""

FAULTS = (
    Fault(
        "at_1022_residues",
        "a sequence of exactly 1022 residues (1024 tokens) mishandled",
        _packed("at_1022_residues"),
        max_residues=1022,
        max_sequences=3,
        edge=True,
    ),
    Fault(
        "at_full_tile",
        "a sequence of exactly 64 tokens (one full tile) mishandled",
        _packed("at_full_tile"),
        max_residues=62 * 3,
        max_sequences=3,
        edge=True,
        ci=True,
    ),
    Fault(
        "at_full_stream",
        "a pack of a multiple of 512 tokens (a full budget) mishandled",
        _packed("at_full_stream"),
        max_residues=1536,
        max_sequences=3,
        edge=True,
    ),
    Fault(
        "positions_run_on",
        "positions not reset",
        _packed("positions_run_on"),
        max_residues=_PAST_POSITION,
    ),
    Fault(
        "rotary_table_over_stream",
        "positions not reset + rotary in FP16",
        _packed("rotary_table_over_stream"),
        max_residues=_PAST_POSITION,
    ),
    Fault(
        "leak_every_boundary",
        "attention leak (cu_seqlens off by one)",
        _packed("leak_every_boundary"),
        ci=True,
    ),
    Fault(
        "leak_past_first_tile",
        "attention leak at some boundaries",
        _packed("leak_past_first_tile"),
        max_residues=128,
    ),
    Fault(
        "leak_in_big_packs",
        "attention leak in big packs only",
        _packed("leak_in_big_packs"),
        max_residues=256,  # five sequences, one of 50+ residues: found in the medium stratum
    ),
    Fault(
        "leak_past_32_sequences",
        "attention leak in packs of more than 32 sequences",
        _packed("leak_past_32_sequences"),
        max_residues=6144,
        max_sequences=128,
        select="crowded",
    ),
    Fault(
        "leak_past_2048_tokens",
        "attention leak past token 2048",
        _packed("leak_past_2048_tokens"),
        max_residues=6144,
        max_sequences=128,
        select="crowded",
    ),
    Fault(
        "missing_token_dropout_rescale",
        "token-dropout rescale missing",
        _packed("missing_token_dropout_rescale"),
        ci=True,
    ),
    Fault(
        "mask_ratio_over_pack",
        "<mask> handled differently (ratio over the pack)",
        _packed("mask_ratio_over_pack"),
        max_residues=256,  # seen: ['L' * 201, '<mask>'] under the ci budget
        ci=True,
    ),
    Fault("mask_not_zeroed", "<mask> handled differently (not zeroed)", _packed("mask_not_zeroed")),
    Fault(
        "repr_layer_off_by_one", "representation layer off by one", _packed("repr_layer_off_by_one")
    ),
    Fault("final_norm_missing", "final layer norm missing", _packed("final_norm_missing")),
    Fault("final_norm_twice", "final layer norm applied twice", _packed("final_norm_twice")),
    Fault("tanh_gelu", "approximate GELU", _packed("tanh_gelu")),
    Fault("eos_as_padding", "BOS/EOS handling differs", _packed("eos_as_padding")),
    Fault(
        "max_seqlen_too_small",
        "max_seqlen smaller than the longest sequence",
        _packed("max_seqlen_too_small"),
    ),
    Fault(
        "silent_truncation",
        "silent truncation of long sequences",
        _packed("silent_truncation"),
        max_residues=1100,
    ),
    Fault(
        "low_precision_softmax",
        "low-precision softmax",
        _packed("low_precision_softmax"),
        max_residues=128,  # rounding shows on rows of 50+ keys: found in the medium stratum
    ),
    Fault(
        "half_layer_norm_statistics",
        "LayerNorm statistics in float16 (overflow on massive activations)",
        _packed("half_layer_norm_statistics"),
        random_passes=True,
        ci=True,
    ),
    Fault(
        "low_precision_accumulation",
        "low-precision accumulation in attention",
        _packed("low_precision_accumulation"),
    ),
    Fault(
        "flaky_race",
        "one call in many differs (race)",
        _packed("flaky_race"),
        max_residues=2048,
        ci=True,
    ),
    Fault(
        "pad_with_cls",
        "padding with <cls> instead of <pad>",
        _padded("pad_with_cls"),
        max_residues=256,  # seen: two sequences of 50 and 61 residues under the ci budget
        ci=True,
    ),
    Fault(
        "padded_repr_layer_off_by_one",
        "representation layer off by one (padded)",
        _padded("repr_layer_off_by_one"),
    ),
)
