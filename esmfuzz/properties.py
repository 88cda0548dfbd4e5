"""The oracles: pure functions from forward outputs to a :class:`Verdict`.

Fuzz targets, corpus replay and the soak runner all call these same functions
(through :mod:`esmfuzz.harness`), so a threshold means the same thing everywhere.
Outputs are per sequence: ``list[dict[layer, Tensor[L_i + 2, D]]]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from esmfuzz import metrics
from esmfuzz.config import Thresholds

__all__ = [
    "FAILURE_KINDS",
    "LOGITS",
    "NONDETERMINISTIC",
    "Sample",
    "Thresholds",
    "Verdict",
    "batch_invariance",
    "context",
    "error_ratio",
    "finite",
    "layer_order",
    "precision",
    "quantized",
    "spread",
    "statistics",
]

FAILURE_KINDS = ("exception", "out_of_memory", "timeout", "malformed_output", "mutated_input")
"""Metrics of a computation that gave no output to judge (:meth:`Verdict.failed`)."""
NONDETERMINISTIC = "nondeterministic"
"""Metric of :func:`spread`: identical calls of one implementation disagree."""

Outputs = Sequence[Mapping[int, torch.Tensor]]

LOGITS = "logits"
"""The masked-LM logits, checked like one more layer after the last: an implementation that
returns logits only (``esmfuzz_outputs = "logits"``) is judged on them, and esmfuzz computes
them for every other forward with the model's own head."""


def layer_order(layer) -> tuple[int, int]:
    """Sort key of the checked outputs: layers by number (``"3"`` as 3), then the logits."""
    return (1, 0) if layer == LOGITS else (0, int(layer))


@dataclass(frozen=True)
class Sample:
    """One fuzz input: a packed layout, and for the context properties the sequence they follow.

    ``variant`` is the second layout of :func:`context` checks (``isolation``), holding the
    target sequence at ``variant_target``; corpus files store the last three fields as
    their ``extra`` mapping.
    """

    sequences: tuple[str, ...]
    target: int | None = None
    variant: tuple[str, ...] | None = None
    variant_target: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sequences", tuple(self.sequences))
        if self.variant is not None:
            object.__setattr__(self, "variant", tuple(self.variant))
        _check_index("target", self.target, len(self.sequences))
        if (self.variant is None) != (self.variant_target is None):
            raise ValueError(
                f"variant and variant_target come together, got variant={self.variant!r} and "
                f"variant_target={self.variant_target!r}"
            )
        if self.variant is not None:
            _check_index("variant_target", self.variant_target, len(self.variant))
            if self.target is None:
                raise ValueError("a Sample with a variant needs target=, the sequence to follow")
            if self.variant[self.variant_target] != self.sequences[self.target]:
                raise ValueError(
                    f"variant[{self.variant_target}] is not the target sequence "
                    f"sequences[{self.target}]"
                )

    @property
    def extra(self) -> dict:
        """The corpus form of the fields beyond ``sequences``."""
        out: dict = {}
        if self.target is not None:
            out["target"] = self.target
        if self.variant is not None:
            out["variant"] = list(self.variant)
            out["variant_target"] = self.variant_target
        return out

    @classmethod
    def from_extra(cls, sequences, extra: Mapping | None) -> Sample:
        extra = dict(extra or {})
        unknown = sorted(set(extra) - {"target", "variant", "variant_target"})
        if unknown:
            raise ValueError(f"extra: unknown keys {unknown}; known: target, variant, "
                             f"variant_target")
        variant = extra.get("variant")
        return cls(
            tuple(sequences),
            extra.get("target"),
            tuple(variant) if variant is not None else None,
            extra.get("variant_target", 0 if variant is not None else None),
        )


def _check_index(name: str, value: object, size: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise ValueError(f"{name}={value!r} is not an index into {size} sequences")


@dataclass
class Verdict:
    """The outcome of one property on one input, with what it would take to explain it."""

    property: str
    ok: bool
    metric: str = ""
    value: float = float("nan")
    threshold: float = float("nan")
    margin: float = float("inf")
    """Normalised slack of the worst check: > 0 passes; fuzzing drives it down with target()."""
    worst: dict = field(default_factory=lambda: {"layer": None, "sequence": None, "token": None})
    first_layer: int | None = None
    violations: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: str = ""
    """Which output the worst check looked at, e.g. ``packed float16``."""
    layers: dict = field(default_factory=dict)
    """Per layer checked, its worst check: ``{layer: [margin, metric, value]}``."""

    @classmethod
    def failed(cls, prop: str, metric: str, message: str, details: Sequence[str] = (),
               *, tokens: int | None = None) -> Verdict:
        """The verdict of a computation that failed outright (raised, ran out of memory,
        hung, returned malformed output); ``details``, a traceback, go into the notes and so
        the case; ``tokens``, the size of the input it failed on, into the metrics."""
        return cls(
            prop,
            ok=False,
            metric=metric,
            value=float("nan"),
            threshold=0.0,
            margin=float("-inf"),
            violations=[message],
            notes=["traceback:\n" + "".join(details).rstrip()] if details else [],
            metrics={"tokens": float(tokens)} if tokens is not None else {},
        )

    def layer_values(self) -> str:
        """``layer metric=value`` for each layer, worst check first."""
        return ", ".join(
            f"{k} {metric}={value:.3g}{'' if margin >= 0 else ' FAIL'}"
            for k, (margin, metric, value) in sorted(self.layers.items(),
                                                     key=lambda x: layer_order(x[0]))
        )

    def failing_layers(self) -> list[int | str]:
        return sorted((_layer(k) for k, (margin, *_) in self.layers.items() if not margin >= 0),
                      key=layer_order)

    def layer_pattern(self) -> str:
        """Which layers fail, compactly: the pattern tells bugs apart (every layer but the
        last: layer indexing off by one; from layer 1 on: a leak; every layer by one
        factor: a missing rescale)."""
        checked = sorted((_layer(k) for k in self.layers), key=layer_order)
        bad = self.failing_layers()
        if not bad:
            return "no layer fails" if checked else ""
        span = f"{checked[0]}-{checked[-1]}" if len(checked) > 1 else str(checked[0])
        if bad == checked:
            which = "every layer"
        elif bad == checked[:-1]:
            which = "every layer but the last"
        elif bad == checked[checked.index(bad[0]):]:
            which = f"layers {bad[0]} on"
        else:
            which = "layers " + ",".join(map(str, bad))
        return f"{which} of {span} (first {bad[0]}, last {bad[-1]})"

    def brief(self) -> str:
        """One line: ``metric=value vs threshold``, or what happened where there was no
        output to judge (``raised OutOfMemoryError ...``)."""
        if self.metric in FAILURE_KINDS:
            return f"{self.metric}: {self.violations[0] if self.violations else ''}"
        return f"{self.metric}={self.value:.4g} vs {self.threshold:g}"

    def message(self) -> str:
        head = f"property {self.property!r} "
        if not self.ok and self.metric in FAILURE_KINDS:
            return "\n".join([head + f"failed ({self.metric}): " + "; ".join(self.violations),
                              *(f"note: {n}" for n in self.notes)])
        if self.ok:
            return (
                head + f"holds: worst {self.metric}={self.value:.6g} (threshold {self.threshold:g})"
            )
        where = ", ".join(f"{k} {v}" for k, v in self.worst.items() if v is not None)
        lines = [
            head + f"violated: {self.metric}={self.value:.6g} against threshold "
            f"{self.threshold:g} at {where or 'the whole output'}"
            + (f" of the {self.path} output" if self.path else ""),
        ]
        if self.first_layer is not None:
            lines.append(f"first diverging layer: {self.first_layer}")
        if self.layers:
            lines.append(f"failing: {self.layer_pattern()}; by layer: {self.layer_values()}")
        lines += [f"  - {v}" for v in self.violations[:8]]
        if len(self.violations) > 8:
            lines.append(f"  ... and {len(self.violations) - 8} more")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _layer(key) -> int | str:
    """A layer key as checked: a number (JSON keeps it as text), or :data:`LOGITS`."""
    return key if key == LOGITS else int(key)


class _Checks:
    """Accumulates (value vs threshold) checks and keeps the worst one."""

    def __init__(self, name: str):
        self.verdict = Verdict(name, ok=True)

    def check(
        self,
        metric: str,
        value: float,
        threshold: float,
        *,
        at_least: bool,
        layer=None,
        sequence=None,
        token=None,
        label: str = "",
    ) -> None:
        v = self.verdict
        if at_least:
            passed = value > threshold
            slack = (value - threshold) / max(abs(1.0 - threshold), 1e-12)
        elif threshold == 0:  # a count that must be zero (``finite``): passing is full headroom
            passed = value <= 0
            slack = 1.0 if passed else -float(value)
        else:
            passed = value <= threshold
            slack = (threshold - value) / max(abs(threshold), 1e-30)
        if value != value:
            passed, slack = False, float("-inf")
        if slack < v.margin or (not v.metric):
            v.margin, v.metric, v.value, v.threshold = slack, metric, value, threshold
            v.worst = {"layer": layer, "sequence": sequence, "token": token}
            v.path = label.rstrip(": ")
        if layer is not None and (layer not in v.layers or not slack >= v.layers[layer][0]):
            v.layers[layer] = [slack, metric, value]
        v.metrics[metric] = (
            value
            if metric not in v.metrics
            else (min(v.metrics[metric], value) if at_least else max(v.metrics[metric], value))
        )
        if not passed:
            v.ok = False
            rel = ">" if at_least else "<="
            place = ", ".join(
                f"{k} {x}"
                for k, x in (("layer", layer), ("sequence", sequence), ("token", token))
                if x is not None
            )
            why = "" if math.isfinite(value) else " (the output holds NaN or Inf)"
            v.violations.append(
                f"{label}{metric}={value:.6g} (needs {rel} {threshold:g}) at {place}{why}"
            )
            if layer is not None and (v.first_layer is None
                                      or layer_order(layer) < layer_order(v.first_layer)):
                v.first_layer = layer

    def done(self) -> Verdict:
        return self.verdict


def precision(
    candidate: Outputs, reference: Outputs, thresholds: Thresholds, *, name: str = "precision",
    baseline: Outputs | Callable[[], Outputs] | None = None,
) -> Verdict:
    """Residue-mean cosine and per-token minimum cosine of every sequence and layer.

    Each passes above its threshold, or, given ``baseline`` (fair-esm's padded forward in
    the candidate's dtype), where its distance from 1 is within ``precision_ratio`` times
    the baseline's own: fair-esm's own bfloat16 forward took one 650M sequence to
    residue-mean cosine 0.9705 of float32 (on a CPU and on an H200), and that is not the
    code under test.

    ``baseline`` may be a callable, called only where a fixed threshold fails: the baseline
    only widens bounds, so a check that passes them needs no baseline forward. Such a
    verdict's margin is then measured against the fixed thresholds.
    """
    return _past_fixed_bounds(
        lambda own: _precision(candidate, reference, thresholds, name, own), baseline)


def _past_fixed_bounds(judge: Callable[[Outputs | None], Verdict],
                       baseline: Outputs | Callable[[], Outputs] | None) -> Verdict:
    """``judge(baseline)``; a callable ``baseline`` is called only where ``judge(None)``, the
    fixed bounds alone, fails: a baseline that only widens bounds cannot fail a pass."""
    if callable(baseline):
        verdict = judge(None)
        if verdict.ok:
            return verdict
        baseline = baseline()
    return judge(baseline)


def _precision(candidate: Outputs, reference: Outputs, thresholds: Thresholds, name: str,
               baseline: Outputs | None) -> Verdict:
    checks = _Checks(name)
    k = thresholds.precision_ratio
    pairs = [(s, layer, cand[layer], ref[layer])
             for s, (cand, ref) in enumerate(zip(candidate, reference, strict=True))
             for layer in sorted(ref, key=layer_order)]
    own_pairs = [] if baseline is None else [
        (own[layer], ref[layer]) for own, ref in zip(baseline, reference, strict=True)
        for layer in sorted(ref, key=layer_order)]
    found = [metrics.cosines(c, r) for *_, c, r in pairs] + [
        metrics.cosines(c, r) for c, r in own_pairs]
    # One read-back for every sequence and layer.
    values = torch.stack(found).tolist() if found else []
    own = values[len(pairs):] or [None] * len(pairs)
    for (s, layer, *_), (sequence_cos, token_min, token), mine in zip(pairs, values, own):
        sequence_bound, token_bound = thresholds.sequence_cosine, thresholds.token_cosine
        if mine is not None:
            sequence_bound = _widened(sequence_bound, mine[0], k)
            token_bound = _widened(token_bound, mine[1], k)
        checks.check("sequence_cosine", sequence_cos, sequence_bound,
                     at_least=True, layer=layer, sequence=s)
        checks.check("token_cosine_min", token_min, token_bound,
                     at_least=True, layer=layer, sequence=s, token=int(token))
    return checks.done()


def _widened(threshold: float, own: float, k: float) -> float:
    """The lower of ``threshold`` and a cosine ``k`` times as far from 1 as ``own``."""
    relaxed = 1.0 - k * (1.0 - own)
    return min(threshold, relaxed) if math.isfinite(relaxed) else threshold


def _pooled(errors: Sequence[tuple[float, float, int]],
            size: int | None = None) -> tuple[float, float, int]:
    """Root-mean-square of each statistic over several baselines' errors.

    Deep in a network the rounding error of one computation is dominated by a few
    amplified directions, so one baseline's error can be small by chance (the ratio of
    two such errors is heavy-tailed: docs/oracles.md); pooling independent baselines
    makes the scale stable.

    ``size``, where larger than ``len(errors)``, is the pool's full size: the baselines not
    at hand count as zero error, which gives a lower bound of the full pool's RMS (a sum of
    squares only grows with more terms, in floating point too).
    """
    n = max(len(errors), size or 0)
    if not errors:
        raise ValueError("a noise bound needs at least one baseline")
    return (
        math.sqrt(sum(e[0] ** 2 for e in errors) / n),
        math.sqrt(sum(e[1] ** 2 for e in errors) / n),
        errors[0][2],
    )


def _at_hand(baselines: Sequence, complete: bool) -> list:
    """``baselines`` with each deferred one (a callable) computed, or, unless ``complete``,
    left out."""
    return [b() if callable(b) else b for b in baselines if complete or not callable(b)]


def _past_noise_bounds(judge: Callable[[bool], Verdict], baselines: Iterable[Sequence],
                       deferred: str) -> Verdict:
    """``judge(True)``, the noise bounds pooled over every baseline, where a deferred
    baseline (a callable in ``baselines``) is needed.

    ``judge(False)``, where every pool holds a baseline at hand, pools those over the full size
    (:func:`_pooled`): a lower bound of every pooled error, so an upper bound of every
    ratio. Where that passes, the full pool passes too and the deferred baselines
    (``deferred`` names them) are never computed; the verdict's ratios are then those upper
    bounds. Where it fails, the verdict is the full pool's, as if nothing were deferred.
    """
    pools = list(baselines)
    if (any(callable(b) for pool in pools for b in pool)
            and all(any(not callable(b) for b in pool) for pool in pools)):
        verdict = judge(False)
        if verdict.ok:
            verdict.notes.append(f"passed without {deferred}: each ratio is an upper bound, "
                                 f"with the missing baselines' errors taken as zero")
            return verdict
    return judge(True)


def _noise_bounds(checks: _Checks, metric: str, k: float, items: Iterable[tuple]) -> None:
    """``tested <= k * pooled(baselines) + atol`` for the RMS and the worst-token statistic.

    ``items`` yields ``(label, tested, baselines, atol, layer, sequences, size)``: ``tested``
    and each baseline are ``[S, 3]`` statistics of :func:`metrics.segment_relative_errors`,
    one row per sequence in ``sequences``; ``size`` is the full pool's (:func:`_pooled`).
    Every statistic is read back from the device at once: one synchronisation per verdict,
    not several per sequence and layer (hundreds of sequences fill a crowded pack).
    """
    blocks = [(item, torch.stack([item[1], *item[2]])) for item in items]
    flat = torch.cat([block.reshape(-1) for _, block in blocks]).cpu() if blocks else None
    at = 0
    for (label, _, _, atol, layer, sequences, size), block in blocks:
        values = flat[at : at + block.numel()].reshape(block.shape).tolist()
        at += block.numel()
        for row, sequence in enumerate(sequences):
            observed, *others = (stats[row] for stats in values)
            pooled = _pooled(others, size)
            for i, stat in enumerate(("rms", "token")):
                ratio = observed[i] / max(pooled[i] + atol / k, 1e-300)
                checks.check(
                    metric,
                    ratio,
                    k,
                    at_least=False,
                    layer=layer,
                    sequence=sequence,
                    token=int(observed[2]) if stat == "token" else None,
                    label=f"{label} {stat}: ",
                )
                key = f"{stat}_error[{label}]"
                checks.verdict.metrics[key] = max(checks.verdict.metrics.get(key, 0.0),
                                                  observed[i])


def _stream(outputs: Outputs, layer: int) -> torch.Tensor:
    """One layer of every sequence, rows concatenated (as in a pack)."""
    return torch.cat([out[layer] for out in outputs]).double()


def error_ratio(
    tested: Mapping[str, tuple[Outputs, Sequence[Outputs | Callable[[], Outputs]], torch.dtype]],
    oracle: Outputs,
    thresholds: Thresholds,
) -> Verdict:
    """Per path, sequence and layer: ``err(tested) <= k * err(baselines) + atol``.

    ``tested`` maps a label (``packed float32``) to (tested outputs, a list of same-dtype
    baseline outputs, that dtype). ``err`` is the RMS of the difference to ``oracle`` over
    the sequence's elements, and over its worst token, both relative to the oracle's RMS;
    ``err(baselines)`` pools the baselines' errors (:func:`_pooled`); ``atol`` is
    ``ulp_floor`` ulps of the dtype. The reported value is
    ``err / (err_baselines + atol / k)``, bounded by ``k`` = ``thresholds.error_ratio``.

    A baseline may be deferred, a callable called only where the bounds fail without it
    (:func:`_past_noise_bounds`): the bound that passes nearly every example needs no
    fair-esm padded forward.
    """
    return _past_noise_bounds(
        lambda complete: _error_ratio(
            {label: (out, _at_hand(bases, complete), dtype, len(bases))
             for label, (out, bases, dtype) in tested.items()},
            oracle, thresholds),
        [bases for _, bases, _ in tested.values()],
        "fair-esm's padded baseline",
    )


def _error_ratio(tested: Mapping[str, tuple[Outputs, Sequence[Outputs], torch.dtype, int]],
                 oracle: Outputs, thresholds: Thresholds) -> Verdict:
    checks = _Checks("error_ratio")
    k = thresholds.error_ratio
    layers = sorted(oracle[0], key=layer_order) if oracle else []
    lengths = [out[layers[0]].shape[0] for out in oracle] if layers else []
    exact = [_stream(oracle, layer) for layer in layers]
    weights = [metrics.outlier_weights(ref) for ref in exact]
    differences = []
    for outputs, baselines, _, _ in tested.values():
        for outs in (outputs, *baselines):
            rows = [[out[layer].shape[0] for out in outs] for layer in layers]
            if any(r != lengths for r in rows):
                raise ValueError(f"outputs of {rows} rows per sequence for an oracle of "
                                 f"{lengths}")
        differences += [([out[layer] for out in outs], exact[j], j)
                        for j, layer in enumerate(layers) for outs in (outputs, *baselines)]
    stats = iter(metrics.batched_relative_errors(differences, exact, weights, lengths))
    _noise_bounds(
        checks,
        "error_ratio",
        k,
        [
            (
                label,
                next(stats),
                [next(stats) for _ in baselines],
                thresholds.ulp_floor * torch.finfo(dtype).eps,
                layer,
                range(len(oracle)),
                size,
            )
            for label, (_, baselines, dtype, size) in tested.items()
            for layer in layers
        ],
    )
    checks.verdict.notes.append(
        f"statistic: RMS error against the oracle, over the sequence and over its worst token, "
        f"relative to the oracle's RMS; bound: tested <= {k:g} x (RMS of the same-dtype "
        f"baselines' errors: fair-esm's padded forward and esmfuzz's packed reference) + "
        f"{thresholds.ulp_floor:g} ulp (docs/oracles.md)"
    )
    return checks.done()


def finite(candidates: Mapping[str, Outputs],
           reference: Outputs | Callable[[], Outputs]) -> Verdict:
    """No NaN/Inf in any candidate output where the reference is finite.

    ``reference`` may be a callable, called only where a candidate holds a NaN or Inf: a
    candidate finite everywhere counts zero whatever the reference holds, so the checks
    that pass (nearly all) need no reference forward.
    """
    if callable(reference):
        if _finite_everywhere(candidates):
            return _non_finite_checks(candidates, None)
        reference = reference()
    return _non_finite_checks(candidates, reference)


def _finite_everywhere(candidates: Mapping[str, Outputs]) -> bool:
    """Whether every candidate output is finite: one read-back for all, one output layer at
    a time (a crowded pack's layers at once would double the memory they hold)."""
    found = [torch.isfinite(torch.cat([out[layer] for out in outputs])).all()
             for outputs in candidates.values() if outputs for layer in outputs[0]]
    return bool(torch.stack(found).all()) if found else True


def _non_finite_checks(candidates: Mapping[str, Outputs], reference: Outputs | None) -> Verdict:
    """:func:`finite`'s checks; ``reference`` None where every candidate is finite, all
    counts then zero."""
    checks = _Checks("finite")
    rows_of = reference if reference is not None else next(iter(candidates.values()), [])
    layers = sorted(rows_of[0], key=layer_order) if rows_of else []
    bounds = [0, *itertools.accumulate(row[layers[0]].shape[0] if layers else 0
                                       for row in rows_of)]
    keys = [(label, layer) for label in candidates for layer in layers]
    if reference is None:
        counts = [[0] * bounds[-1] for _ in keys]
    else:
        streams = {layer: torch.isfinite(torch.cat([ref[layer] for ref in reference]))
                   for layer in layers}
        # Non-finite elements per row of every output, read back at once: hundreds of
        # sequences fill a crowded pack.
        counts = torch.stack([
            (~torch.isfinite(torch.cat([out[layer] for out in candidates[label]]))
             & streams[layer]).sum(-1)
            for label, layer in keys
        ]).tolist() if keys else []
    rows = dict(zip(keys, counts))
    for label in candidates:
        for s in range(len(rows_of)):
            for layer in layers:
                per_row = rows[label, layer][bounds[s]:bounds[s + 1]]
                count = sum(per_row)
                checks.check(
                    "non_finite",
                    float(count),
                    0.0,
                    at_least=False,
                    layer=layer,
                    sequence=s,
                    token=next(i for i, n in enumerate(per_row) if n) if count else None,
                    label=f"{label}: ",
                )
    return checks.done()


def _distribution(values: Sequence[float]) -> dict[str, float]:
    """The statistics of one :func:`metrics.distribution`, read back."""
    mean_abs, std_rel, l2_rel, oc, orf = values
    return {
        "mean_abs_diff": mean_abs,
        "std_rel_diff": std_rel,
        "l2_norm_rel_diff": l2_rel,
        "outlier_rel_diff": abs(oc - orf) / max(orf, 16),
    }


def statistics(
    candidates: Mapping[str, Outputs],
    reference: Outputs,
    thresholds: Thresholds,
    *,
    layer: int,
    baseline: Outputs | Callable[[], Outputs] | None = None,
) -> Verdict:
    """Distribution statistics of the final embedding: mean, spread, norms, outliers.

    Each statistic passes under its threshold, or, given ``baseline`` (fair-esm's padded
    forward in the candidate's dtype), within ``statistics_ratio`` times the baseline's own
    value: low precision alone moves a large model's embeddings past a fixed threshold
    (bfloat16 at 650M: mean_abs_diff 0.048), and that is the model, not the code under test.
    Outlier counts differ by ``|a - b| / max(b, 16)``: a few values either side of 3 sigma
    move between correct computations. A callable ``baseline`` is called only where a
    fixed threshold fails, as :func:`precision`'s.
    """
    return _past_fixed_bounds(
        lambda own: _statistics(candidates, reference, thresholds, layer, own), baseline)


def _statistics(candidates: Mapping[str, Outputs], reference: Outputs, thresholds: Thresholds,
                layer: int, baseline: Outputs | None) -> Verdict:
    checks = _Checks("statistics")
    k = thresholds.statistics_ratio
    pairs = [(out[layer], ref[layer])
             for outputs in [*candidates.values(), *([baseline] if baseline is not None else [])]
             for out, ref in zip(outputs, reference, strict=True)]
    values = iter(torch.stack([metrics.distribution(c, r) for c, r in pairs]).tolist()
                  if pairs else [])
    own = [{}] * len(reference)
    measured = {label: [_distribution(next(values)) for _ in outputs]
                for label, outputs in candidates.items()}
    if baseline is not None:
        own = [_distribution(next(values)) for _ in baseline]
    for label, rows in measured.items():
        for s, row in enumerate(rows):
            for name, value in row.items():
                relaxed = k * own[s].get(name, 0.0)
                bound = max(getattr(thresholds, name), relaxed if math.isfinite(relaxed) else 0.0)
                checks.check(name, value, bound, at_least=False, layer=layer, sequence=s,
                             label=f"{label}: ")
    return checks.done()


def context(
    paths: Mapping[str, tuple[Mapping[int, torch.Tensor], Mapping[int, torch.Tensor],
                              Sequence[Mapping[int, torch.Tensor]
                                       | Callable[[], Mapping[int, torch.Tensor]]],
                              torch.dtype]],
    oracle: Mapping[int, torch.Tensor],
    thresholds: Thresholds,
    *,
    name: str,
    sequence: int,
) -> Verdict:
    """One sequence computed in two contexts agrees to within the rounding noise of its dtype.

    ``paths`` maps a label to (output in the first context, output in the second, a list
    of baseline outputs of the sequence alone in the same dtype, that dtype). Two correct
    computations each lie about ``err(baselines)`` from the exact result, so their
    difference is bounded by ``k * err(baselines) + atol`` (``k`` = ``context_ratio``),
    with the same pooled RMS statistics as :func:`error_ratio`. A noise floor fixed in ulps does
    not hold across model sizes: kernels chosen by token count round rows differently.
    A baseline may be deferred, as in :func:`error_ratio`.
    """
    return _past_noise_bounds(
        lambda complete: _context(
            {label: (first, second, _at_hand(bases, complete), dtype, len(bases))
             for label, (first, second, bases, dtype) in paths.items()},
            oracle, thresholds, name=name, sequence=sequence),
        [bases for _, _, bases, _ in paths.values()],
        "the baselines of the sequence alone and in its contexts it did not need",
    )


def _context(paths, oracle, thresholds: Thresholds, *, name: str, sequence: int) -> Verdict:
    checks = _Checks(name)
    k = thresholds.context_ratio
    layers = sorted(oracle, key=layer_order)
    refs = [oracle[layer] for layer in layers]
    weights = [metrics.outlier_weights(ref) for ref in refs]
    differences = []
    for first, second, baselines, _, _ in paths.values():
        for j, layer in enumerate(layers):
            differences.append(([first[layer]], second[layer].double(), j))
            differences += [([b[layer]], refs[j], j) for b in baselines]
    stats = iter(metrics.batched_relative_errors(differences, refs, weights,
                                                 [refs[0].shape[0]] if refs else []))
    _noise_bounds(
        checks,
        "context_ratio",
        k,
        [
            (
                label,
                next(stats),
                [next(stats) for _ in baselines],
                thresholds.ulp_floor * torch.finfo(dtype).eps,
                layer,
                [sequence],
                size,
            )
            for label, (_, _, baselines, dtype, size) in paths.items()
            for layer in layers
        ],
    )
    checks.verdict.notes.append(
        f"statistic: RMS difference between the two contexts, over the sequence and over its "
        f"worst token, relative to the oracle's RMS; bound: {k:g} x (RMS of the same-dtype "
        f"baselines' errors) + {thresholds.ulp_floor:g} ulp (docs/oracles.md)"
    )
    return checks.done()


def spread(
    paths: Sequence[tuple[str, Sequence[Outputs], Sequence[Outputs], Outputs, torch.dtype]],
    thresholds: Thresholds,
    *,
    name: str,
    k: float,
) -> Verdict:
    """Identical calls of one implementation agree within the rounding noise of their dtype.

    ``paths`` holds (label, the outputs of each call, same-dtype baseline outputs, the
    oracle's, that dtype). Every later call's difference from the first is a statistic of
    :func:`error_ratio`'s kind, bounded by ``k * err(baselines) + 2 ulp``: atomics and
    split-K reductions may round each element its own way on every call, one ulp either
    side of where another call lands. ``k`` is the bound of the property whose failure
    is being judged (``error_ratio`` or ``context_ratio``).
    """
    checks = _Checks(name)
    items = []
    for label, calls, baselines, oracle, dtype in paths:
        layers = sorted(oracle[0], key=layer_order) if oracle else []
        lengths = [out[layers[0]].shape[0] for out in oracle] if layers else []
        atol = 2 * thresholds.ulp_floor * torch.finfo(dtype).eps
        for layer in layers:
            ref = _stream(oracle, layer)
            w = metrics.outlier_weights(ref)
            first = _stream(calls[0], layer)
            base = [metrics.segment_relative_errors(_stream(b, layer) - ref, ref, lengths,
                                                    weights=w)
                    for b in baselines]
            items += [(label,
                       metrics.segment_relative_errors(_stream(later, layer) - first, ref,
                                                       lengths, weights=w),
                       base, atol, layer, range(len(oracle)), len(base))
                      for later in calls[1:]]
    _noise_bounds(checks, NONDETERMINISTIC, k, items)
    checks.verdict.notes.append(
        f"statistic: RMS difference between {max((len(p[1]) for p in paths), default=0)} "
        f"identical calls (each later one against the first), over the sequence and over its "
        f"worst token, relative to the oracle's RMS; bound: {k:g} x (RMS of the same-dtype "
        f"baselines' errors) + {2 * thresholds.ulp_floor:g} ulp"
    )
    return checks.done()


def _worst_scores(checks: _Checks, drift: dict[str, torch.Tensor], rows: Sequence[int],
                  thresholds: Thresholds, *, names: Mapping[str, str], sequence: int,
                  label: str) -> None:
    """The worst masked position of each :func:`metrics.score_drift` statistic, checked
    against its threshold (``names``: statistic -> metric name)."""
    for stat, name in names.items():
        values = drift[stat]
        at_least = stat == "rank_agreement"
        worst = int(values.argmin() if at_least else values.argmax())
        if not values.isfinite().all():
            worst = int((~values.isfinite()).nonzero()[0, 0])
        checks.check(name, float(values[worst]), getattr(thresholds, name), at_least=at_least,
                     layer=LOGITS, sequence=sequence, token=int(rows[worst]), label=label)


def quantized(
    tested: Mapping[str, Outputs],
    reference: Outputs,
    positions: Sequence[Sequence[int]],
    thresholds: Thresholds,
    *,
    columns: list[int],
    last: int,
) -> Verdict:
    """A quantized engine against float32, in the units its users read.

    At the masked positions (``positions[s]``: the token rows of sequence ``s`` that hold
    ``<mask>``), over the amino acids' vocabulary ``columns``: the largest logit drift, the
    largest log-probability drift, and the least rank agreement of the log-probabilities
    (the masked-marginal mutation scores); where the engine returns the final layer
    ``last``, the cosine of the residue-mean embedding. Fixed, user-chosen bounds: a
    quantized engine's error has no same-precision baseline to scale by.
    """
    checks = _Checks("quantized_drift")
    names = {"logit_drift": "logit_drift", "log_prob_drift": "log_prob_drift",
             "rank_agreement": "rank_agreement"}
    for label, outputs in tested.items():
        for s, (out, ref) in enumerate(zip(outputs, reference, strict=True)):
            if last in out:
                checks.check("embedding_cosine", metrics.sequence_cosine(out[last], ref[last]),
                             thresholds.embedding_cosine, at_least=True, layer=last,
                             sequence=s, label=f"{label}: ")
            rows = list(positions[s])
            drift = metrics.score_drift(out[LOGITS][rows], ref[LOGITS][rows], columns)
            _worst_scores(checks, drift, rows, thresholds, names=names, sequence=s,
                          label=f"{label}: ")
    checks.verdict.notes.append(
        f"against fair-esm's float32 forward at {sum(map(len, positions))} masked position(s): "
        f"logit drift <= {thresholds.logit_drift:g}, log-probability drift <= "
        f"{thresholds.log_prob_drift:g} nats, rank agreement (Spearman, 20 amino acids) > "
        f"{thresholds.rank_agreement:g}, embedding cosine > {thresholds.embedding_cosine:g} "
        f"(docs/oracles.md, quantized engines)"
    )
    return checks.done()


def batch_invariance(
    paths: Mapping[str, tuple[Mapping, Mapping]],
    positions: Sequence[int],
    thresholds: Thresholds,
    *,
    columns: list[int],
    last: int,
    sequence: int,
) -> Verdict:
    """One sequence in two packs gives the scores it gives alone, in user units.

    ``paths`` maps a label to the sequence's outputs in the first and the second pack; at
    its masked ``positions``, the log-probabilities of the amino acids ``columns`` move by
    at most ``context_drift`` nats, and where the final layer ``last`` is returned its
    residue-mean embedding keeps a cosine above ``embedding_cosine``. A batch-invariant
    engine moves neither; one that quantizes activations per pack moves both.
    """
    checks = _Checks("batch_invariance")
    rows = list(positions)
    for label, (first, second) in paths.items():
        if last in first:
            checks.check("embedding_cosine", metrics.sequence_cosine(first[last], second[last]),
                         thresholds.embedding_cosine, at_least=True, layer=last,
                         sequence=sequence, label=f"{label}: ")
        drift = metrics.score_drift(first[LOGITS][rows], second[LOGITS][rows], columns)
        _worst_scores(checks, drift, rows, thresholds,
                      names={"log_prob_drift": "context_drift"}, sequence=sequence,
                      label=f"{label}: ")
    checks.verdict.notes.append(
        f"the same sequence in two packs, at {len(rows)} masked position(s): log-probability "
        f"drift <= {thresholds.context_drift:g} nats (docs/oracles.md, quantized engines)"
    )
    return checks.done()
