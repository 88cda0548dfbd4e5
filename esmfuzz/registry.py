"""The properties: one entry each, holding what it runs, its oracle and how it is fuzzed.

The fuzz targets, corpus replay and the soak runner all go through :func:`get`, so a
property means the same thing everywhere. A ``run`` gathers the forward outputs its
oracle needs from a :class:`~esmfuzz.harness.Harness` and returns the oracle's verdict.
Each run calls the implementations under test before its baselines and oracle: a broken
implementation fails at once, so shrinking its failure costs no baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from esmfuzz import properties as P
from esmfuzz.alphabet import MAX_RESIDUES
from esmfuzz.config import dtype_name
from esmfuzz.edges import Scope
from esmfuzz.properties import Sample, Verdict

__all__ = ["PROPERTIES", "STRATA", "Metric", "Property", "get", "metric", "scope", "targets"]

STRATA = ("short", "medium", "long", "very_long")
"""Length strata of the longest sequence in a layout (``strategies.LENGTH_STRATA``)."""
MIXED = "mixed"
"""Layouts of any lengths."""
CROWDED = "crowded"
"""Dozens to hundreds of short proteins in one pack of thousands of tokens."""


@dataclass(frozen=True)
class Metric:
    """A value an oracle reports and bounds: which side of its bound is good, and how to
    draw it (``cosine``: on the log of 1 - value; ``ratio``, ``difference``, ``count``)."""

    name: str
    higher_is_better: bool = False
    scale: str = "ratio"


@dataclass(frozen=True)
class Property:
    name: str
    calls: tuple[str, ...]
    """Implementations under test it calls: ``packed``, ``padded``."""
    run: Callable[..., Verdict]
    """``run(harness, sample, layers) -> Verdict``."""
    sample: str
    """How a sample is drawn from the target's layouts: ``plain`` (the layout alone),
    ``pairs`` (a layout and a metamorphic variant) or ``shortest`` (the layout, following
    its shortest sequence)."""
    metrics: tuple[Metric, ...]
    """What its oracle reports (besides the failure kinds every property shares)."""
    strata: tuple[str, ...] = (MIXED,)
    """One fuzz target per entry."""
    limits: tuple[tuple[str, int], ...] = ()
    """Bounds on the target's layouts (``min_sequences``, ``max_sequences``,
    ``max_tokens``) where they differ from :func:`scope`'s defaults."""
    noise: str = "error_ratio"
    """The threshold that bounds how far two correct computations lie apart: the spread
    of identical calls is judged against it (:func:`esmfuzz.properties.spread`)."""
    modes: tuple[str, ...] = ("dtype",)
    """The ``--esm-compare`` modes that judge by this property (the harness's
    :meth:`~esmfuzz.harness.Harness.compare`); in another its targets skip, saying why."""
    fixed_bounds: str = ""
    """For a property judged against fixed thresholds, not against the run's own noise,
    their name (``cosine thresholds``): which metric fails first, and at how many layers,
    depends on how far an example pushes the bug past a threshold, so its signature stops
    at the output (:func:`esmfuzz.triage.signature`)."""

    def validate(self, sample: Sample) -> None:
        """A ValueError where ``sample`` lacks what this property's samples hold."""
        if self.sample in ("pairs", "shortest") and sample.target is None:
            raise ValueError(f"{self.name} needs a sample with target=, the sequence to follow")
        if self.sample == "pairs" and sample.variant is None:
            raise ValueError(f"{self.name} needs a sample with variant=, the layout to "
                             f"compare with")

    def scope(self, config, stratum: str) -> Scope:
        """What the target's layouts can be, and so which edges it can reach."""
        return scope(config, stratum, **dict(self.limits))

    def samples(self, config, stratum: str):
        """``SearchStrategy[Sample]`` of the fuzz target for ``stratum``."""
        return _SAMPLES[self.sample](self.scope(config, stratum), config, stratum)


def _per_model(harness, kind: str, run) -> dict:
    """``{label: run(model)}`` for each dtype path the implementation ``kind`` is checked on."""
    out = {}
    for model in harness.path_models(kind):
        result = harness.tested(kind, model, lambda model=model: run(model))
        if result is not None:
            out[dtype_name(model.embed_tokens.weight.dtype)] = (model, result)
    return out


def _precision(harness, sample: Sample, layers, *, packed: bool) -> Verdict:
    pair, seqs = harness.pair, sample.sequences
    if packed:
        candidate = harness.packed(pair.candidate, seqs, layers)
    else:
        candidate = harness.padded(pair.candidate, seqs, layers)
    reference = harness.baseline(pair.reference, seqs, layers)
    name = "packed_precision" if packed else "precision"
    return P.precision(candidate, reference, harness.thresholds, name=name,
                       baseline=lambda: harness.baseline(pair.candidate, seqs, layers))


def _error_ratio(harness, sample: Sample, layers) -> Verdict:
    seqs = sample.sequences
    outputs = {}
    kinds = ["packed"] + (["padded"] if "padded" in harness.under_test_kinds() else [])
    for kind in kinds:
        forward = harness.packed if kind == "packed" else harness.padded
        for label, result in _per_model(
            harness, kind, lambda m, forward=forward: forward(m, seqs, layers)
        ).items():
            outputs[f"{kind} {label}"] = result
    tested = {
        path: (out, harness.baselines(model, seqs, layers, defer=harness.defer_baselines),
               model.embed_tokens.weight.dtype)
        for path, (model, out) in outputs.items()
    }
    verdict = P.error_ratio(tested, harness.oracle(seqs, layers), harness.thresholds)
    verdict.notes.append(harness.pair.oracle_note)
    return verdict


def _finite(harness, sample: Sample, layers) -> Verdict:
    pair, seqs = harness.pair, sample.sequences
    layers = harness.checked_layers(("packed", "padded"),
                                    [*layers, pair.num_layers, P.LOGITS])
    candidates = {
        "packed": harness.packed(harness.path_models("packed")[0], seqs, layers),
        "padded": harness.padded(harness.path_models("padded")[0], seqs, layers),
    }
    return P.finite(candidates, lambda: harness.baseline(pair.reference, seqs, layers))


def _statistics(harness, sample: Sample, layers) -> Verdict:
    pair, seqs = harness.pair, sample.sequences
    last = [pair.num_layers]
    candidates = {
        "packed": harness.packed(pair.candidate, seqs, last),
        "padded": harness.padded(pair.candidate, seqs, last),
    }
    reference = harness.baseline(pair.reference, seqs, last)
    return P.statistics(candidates, reference, harness.thresholds, layer=pair.num_layers,
                        baseline=lambda: harness.baseline(pair.candidate, seqs, last))


def _context(harness, sample: Sample, layers, *, kind: str, name: str) -> Verdict:
    seqs, target = sample.sequences, sample.target
    alone = [seqs[target]]
    if name == "isolation":
        contexts = [(seqs, target), (sample.variant, sample.variant_target)]

        def run(model):
            first = harness.packed(model, seqs, layers)[target]
            return first, harness.packed(model, sample.variant, layers)[sample.variant_target]
    else:
        contexts = [(seqs, target)]

        def run(model):
            among = harness.padded(model, seqs, layers, whole=True)[target]
            return among, harness.padded(model, alone, layers)[0]

    def baselines(model):
        """The target alone (fair-esm padded, packed reference), and the packed reference
        in each context: packs of other sizes round the linear layers differently, so the
        pool holds independent samples of the noise that separates two contexts. fair-esm's
        forward and a whole pack's reference not computed yet are deferred
        (``properties.context``)."""
        defer = harness.defer_baselines
        return [_row(out, 0) for out in harness.baselines(model, alone, layers, defer=defer)] + [
            _row(harness.reference_packed(model, context, layers, defer=defer), at)
            for context, at in contexts
        ]

    paths = {
        f"{kind} {label}": (first, second, baselines(model), model.embed_tokens.weight.dtype)
        for label, (model, (first, second)) in _per_model(harness, kind, run).items()
    }
    verdict = P.context(paths, harness.oracle(alone, layers)[0], harness.thresholds, name=name,
                        sequence=target)
    verdict.notes.append(harness.pair.oracle_note)
    return verdict


def _row(outputs, at: int):
    """Row ``at`` of a forward's outputs, or of a deferred forward's, deferred."""
    if callable(outputs):
        return lambda: outputs()[at]
    return outputs[at]


SCORED_EVERY = 7
"""A masked-marginal scorer's positions in a sequence without ``<mask>``: residues 2, 9, 16..."""


def scored(sequences) -> tuple[tuple[str, ...], list[list[int]]]:
    """The sequences as a masked-marginal scorer feeds them, and the token rows it reads.

    A sequence that holds ``<mask>`` is scored where it does; one without gets ``<mask>`` at
    every :data:`SCORED_EVERY`-th residue from the third (its first, if shorter). Rows count
    ``<cls>`` as 0.
    """
    from esmfuzz.alphabet import MASK, split_residues

    out, rows = [], []
    for sequence in sequences:
        tokens = split_residues(sequence)
        at = [i for i, token in enumerate(tokens) if token == MASK]
        if not at:
            at = list(range(2, len(tokens), SCORED_EVERY)) or [0]
            tokens = [MASK if i in at else token for i, token in enumerate(tokens)]
        out.append("".join(tokens))
        rows.append([i + 1 for i in at])
    return tuple(out), rows


def _columns(harness) -> list[int]:
    from esmfuzz.alphabet import STANDARD_RESIDUES

    return [harness.pair.alphabet.get_idx(a) for a in STANDARD_RESIDUES]


def _quantized_drift(harness, sample: Sample, layers) -> Verdict:
    pair = harness.pair
    seqs, rows = scored(sample.sequences)
    want = [pair.num_layers, P.LOGITS]
    kinds = ["packed"] + (["padded"] if "padded" in harness.under_test_kinds() else [])
    tested = {}
    for kind in kinds:
        forward = harness.packed if kind == "packed" else harness.padded
        tested[f"{kind} {harness.precision(kind)}"] = forward(
            pair.reference, seqs, harness.checked_layers((kind,), want))
    reference = harness.baseline(pair.reference, seqs, want)
    return P.quantized(tested, reference, rows, harness.thresholds, columns=_columns(harness),
                       last=pair.num_layers)


def _batch_invariance(harness, sample: Sample, layers) -> Verdict:
    pair = harness.pair
    first, rows = scored(sample.sequences)
    second, _ = scored(sample.variant)
    want = harness.checked_layers(("packed",), [pair.num_layers, P.LOGITS])
    paths = {f"packed {harness.precision('packed')}": (
        harness.packed(pair.reference, first, want)[sample.target],
        harness.packed(pair.reference, second, want)[sample.variant_target])}
    return P.batch_invariance(paths, rows[sample.target], harness.thresholds,
                              columns=_columns(harness), last=pair.num_layers,
                              sequence=sample.target)


CROWD_RESIDUES = 170
"""Residues of the longest read in a crowded pack (``strategies.crowded_layouts``)."""


def scope(config, stratum: str, *, min_sequences: int = 1,
          max_sequences: int | None = None, max_tokens: int | None = None) -> Scope:
    """The layouts of a target in ``stratum``: crowded packs (``crowd_limits``), layouts whose
    longest sequence lies in a length stratum (8 sequences, ``pack_tokens``), or
    any layout (``mixed``: 16 sequences, ``pack_tokens``), each bounded further by the arguments."""
    from esmfuzz.config import crowd_limits
    from strategies import LENGTH_STRATA

    if stratum == CROWDED:
        most, tokens = crowd_limits(config, profile="dev")
        return Scope((1, CROWD_RESIDUES), CROWD_RESIDUES, max(min_sequences, 2), most, tokens)
    tokens = max_tokens or config.pack_tokens
    if stratum == MIXED:
        cap = min(MAX_RESIDUES, tokens - 2 - 3 * (min_sequences - 1))
        return Scope((1, cap), cap, min_sequences, max_sequences or 16, tokens)
    low, high = LENGTH_STRATA[stratum]
    return Scope((low, high), high, 1, max_sequences or 8, tokens)


def _layouts(scope: Scope, config, stratum):
    from strategies import crowded_layouts, packing_layouts, stratified_layouts

    options = _residues(config)
    if stratum == CROWDED:
        return crowded_layouts(min_sequences=scope.min_sequences,
                               max_sequences=scope.max_sequences, max_tokens=scope.max_tokens,
                               max_residues=scope.max_residues, **options)
    if stratum == MIXED:
        return packing_layouts(min_sequences=scope.min_sequences,
                               max_sequences=scope.max_sequences, max_tokens=scope.max_tokens,
                               **options)
    return stratified_layouts(stratum, max_sequences=scope.max_sequences,
                              max_tokens=scope.max_tokens, **options)


def _residues(config) -> dict[str, bool]:
    """What the sequences may hold: ``<mask>`` and the rare residues X B Z U O, unless the
    pipeline under test never sees them (``masks = false``, ``residues = "standard"``)."""
    return {"masks": config.masks, "rare": config.residues == "all"}


def _plain(scope: Scope, config, stratum):
    return _layouts(scope, config, stratum).map(Sample)


def _pairs(scope: Scope, config, stratum):
    from strategies import metamorphic_pairs

    pairs = metamorphic_pairs(min_sequences=scope.min_sequences,
                              layouts=_layouts(scope, config, stratum), **_residues(config))
    return pairs.map(lambda p: Sample(p[0], p[1], p[2], p[3]))


def _shortest(scope: Scope, config, stratum):
    from esmfuzz.alphabet import residue_count

    def sample(layout):
        lengths = [residue_count(s) for s in layout]
        return Sample(layout, lengths.index(min(lengths)))

    return _layouts(scope, config, stratum).map(sample)


_SAMPLES = {"plain": _plain, "pairs": _pairs, "shortest": _shortest}


_RATIO = (Metric("error_ratio"),)
_CONTEXT = (Metric("context_ratio"),)
_COSINES = (Metric("sequence_cosine", True, "cosine"), Metric("token_cosine_min", True, "cosine"))
_QUANTIZED = (Metric("embedding_cosine", True, "cosine"), Metric("logit_drift", scale="difference"),
              Metric("log_prob_drift", scale="difference"),
              Metric("rank_agreement", True, "cosine"))
_STATISTICS = tuple(Metric(name, scale="difference") for name in (
    "mean_abs_diff", "std_rel_diff", "l2_norm_rel_diff", "outlier_rel_diff"))


def _entries() -> tuple[Property, ...]:
    return (
        Property("error_ratio", ("packed", "padded"), _error_ratio, "plain", _RATIO,
                 STRATA + (CROWDED,)),
        Property("isolation", ("packed",),
                 lambda h, s, layers: _context(h, s, layers, kind="packed", name="isolation"),
                 "pairs", _CONTEXT, (MIXED, CROWDED),
                 (("min_sequences", 2), ("max_sequences", 6)), "context_ratio"),
        Property("packed_precision", ("packed",),
                 lambda h, s, layers: _precision(h, s, layers, packed=True), "plain", _COSINES,
                 STRATA, fixed_bounds="cosine thresholds"),
        Property("finite", ("packed", "padded"), _finite, "plain",
                 (Metric("non_finite", scale="count"),), STRATA + (CROWDED,),
                 modes=("dtype", "quantized")),
        Property("statistics", ("packed", "padded"), _statistics, "plain", _STATISTICS, (MIXED,),
                 (("max_sequences", 4),), fixed_bounds="statistics thresholds"),
        Property("precision", ("padded",),
                 lambda h, s, layers: _precision(h, s, layers, packed=False), "plain", _COSINES,
                 STRATA, (("max_sequences", 4),), fixed_bounds="cosine thresholds"),
        Property("padding_invariance", ("padded",),
                 lambda h, s, layers: _context(h, s, layers, kind="padded",
                                               name="padding_invariance"),
                 "shortest", _CONTEXT, (MIXED,),
                 (("min_sequences", 2), ("max_sequences", 6), ("max_tokens", 2048)),
                 "context_ratio"),
        Property("quantized_drift", ("packed", "padded"), _quantized_drift, "plain",
                 _QUANTIZED, (MIXED, CROWDED), modes=("quantized",),
                 fixed_bounds="quantized thresholds"),
        Property("batch_invariance", ("packed",), _batch_invariance, "pairs",
                 (_QUANTIZED[0], Metric("context_drift", scale="difference")), (MIXED, CROWDED),
                 (("min_sequences", 2), ("max_sequences", 6)), modes=("quantized",),
                 fixed_bounds="quantized thresholds"),
    )


PROPERTIES: dict[str, Property] = {entry.name: entry for entry in _entries()}


def get(name: str) -> Property:
    try:
        return PROPERTIES[name]
    except KeyError:
        raise ValueError(
            f"property={name!r} is not one of {', '.join(PROPERTIES)}"
        ) from None


def targets() -> list[tuple[str, str]]:
    """``(property, stratum)`` of every fuzz target, in registry order: ``error_ratio``, the
    sharpest oracle, first."""
    return [(entry.name, stratum) for entry in PROPERTIES.values() for stratum in entry.strata]


def metric(name: str) -> Metric:
    """The declaration of metric ``name``: a property's, or a failure kind every property
    shares (``exception``, ``nondeterministic``, ...: smaller is better)."""
    for entry in PROPERTIES.values():
        for declared in entry.metrics:
            if declared.name == name:
                return declared
    if name in P.FAILURE_KINDS or name == P.NONDETERMINISTIC:
        return Metric(name, scale="count" if name in P.FAILURE_KINDS else "ratio")
    raise ValueError(f"metric={name!r} is not declared by a property of esmfuzz.registry")
