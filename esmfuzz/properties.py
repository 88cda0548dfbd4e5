"""The oracles: pure functions from forward outputs to a :class:`Verdict`.

Fuzz targets, corpus replay and the soak runner all call these same functions
(through :mod:`esmfuzz.harness`), so a threshold means the same thing everywhere.
Outputs are per sequence: ``list[dict[layer, Tensor[L_i + 2, D]]]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from esmfuzz import metrics
from esmfuzz.packing import PackedBatch

__all__ = [
    "PROPERTIES",
    "Thresholds",
    "Verdict",
    "error_ratio",
    "finite",
    "isolation",
    "isolation_noise_floor",
    "positions",
    "precision",
    "statistics",
]

PROPERTIES = (
    "precision",
    "packed_precision",
    "error_ratio",
    "finite",
    "statistics",
    "isolation",
    "padding_invariance",
    "positions",
)

Outputs = Sequence[Mapping[int, torch.Tensor]]


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail bounds; defaults are DESIGN.md's, every one configurable."""

    sequence_cosine: float = 0.99
    token_cosine: float = 0.95
    error_ratio: float = 2.0
    ulp_floor: float = 1.0
    mean_abs_diff: float = 0.01
    std_rel_diff: float = 0.05
    l2_norm_rel_diff: float = 0.05
    outlier_rel_diff: float = 0.25
    isolation_ulps: float = -1.0
    """Negative: use the measured noise floor of the backend (:func:`isolation_noise_floor`)."""
    padding_ulps: float = 64.0
    """fair-esm's padded forward, a sequence alone vs among longer ones: up to 3.8 ulps of
    the layer's max |value| on the CPU (8M), 27 on an H200 (650M, FP16, 33 layers of
    cuBLAS kernels chosen by shape): docs/gpu-measurements.md."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], *, source: str = "thresholds"):
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"{source}: unknown threshold {key!r}; known: {sorted(known)}")
            try:
                clean[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: threshold {key}={value!r} is not a number") from None
        return cls(**clean)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def isolation_noise_floor(device_type: str, backend: str) -> float:
    """Allowed ulps (of a layer's max |value|) between one sequence packed in two layouts.

    Measured batch-invariant, so any difference is a leak: CPU sdpa (0 ulps over 10
    random layout pairs in float16, bfloat16 and float32, 8M synthetic, torch 2.13)
    and CUDA torch-varlen (0 ulps over 13 pairs, 8M and 650M, float16 and bfloat16,
    H200, torch 2.11: docs/gpu-measurements.md). Combinations not measured get 8 ulps:
    CUDA GEMMs may pick kernels by token count and round rows differently.
    """
    measured = {("cpu", "sdpa"), ("cuda", "torch-varlen")}
    return 0.0 if (device_type, backend) in measured else 8.0


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

    def message(self) -> str:
        head = f"property {self.property!r} "
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
        lines += [f"  - {v}" for v in self.violations[:8]]
        if len(self.violations) > 8:
            lines.append(f"  ... and {len(self.violations) - 8} more")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


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
        else:
            passed = value <= threshold
            slack = (threshold - value) / max(abs(threshold), 1e-30)
        if value != value:
            passed, slack = False, float("-inf")
        if slack < v.margin or (not v.metric):
            v.margin, v.metric, v.value, v.threshold = slack, metric, value, threshold
            v.worst = {"layer": layer, "sequence": sequence, "token": token}
            v.path = label.rstrip(": ")
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
            v.violations.append(
                f"{label}{metric}={value:.6g} (needs {rel} {threshold:g}) at {place}"
            )
            if layer is not None and (v.first_layer is None or layer < v.first_layer):
                v.first_layer = layer

    def done(self) -> Verdict:
        return self.verdict


def precision(
    candidate: Outputs, reference: Outputs, thresholds: Thresholds, *, name: str = "precision"
) -> Verdict:
    """Residue-mean cosine and per-token minimum cosine of every sequence and layer."""
    checks = _Checks(name)
    for s, (cand, ref) in enumerate(zip(candidate, reference)):
        for layer in sorted(ref):
            checks.check(
                "sequence_cosine",
                metrics.sequence_cosine(cand[layer], ref[layer]),
                thresholds.sequence_cosine,
                at_least=True,
                layer=layer,
                sequence=s,
            )
            cos = metrics.token_cosine(cand[layer], ref[layer])
            checks.check(
                "token_cosine_min",
                float(cos.min()),
                thresholds.token_cosine,
                at_least=True,
                layer=layer,
                sequence=s,
                token=int(cos.argmin()),
            )
    return checks.done()


def error_ratio(
    tested: Mapping[str, tuple[Outputs, Outputs, torch.dtype]],
    oracle: Outputs,
    thresholds: Thresholds,
) -> Verdict:
    """Per path, sequence and layer: ``err(tested) <= k * err(baseline) + ulp floor``.

    ``tested`` maps a label (``packed float32``) to (tested outputs, same-dtype
    padded baseline outputs, that dtype); errors are max-abs against ``oracle``.
    The floor is one ulp of the dtype at the oracle's scale, so an exactly-equal
    baseline cannot make the bound zero.
    """
    checks = _Checks("error_ratio")
    for label, (outputs, baseline, dtype) in tested.items():
        eps = torch.finfo(dtype).eps
        for s, (out, base, ref) in enumerate(zip(outputs, baseline, oracle)):
            for layer in sorted(ref):
                err = metrics.max_abs_error(out[layer], ref[layer])
                err_base = metrics.max_abs_error(base[layer], ref[layer])
                floor = thresholds.ulp_floor * eps * float(ref[layer].abs().max())
                # err <= k * err_base + floor  <=>  err / (err_base + floor / k) <= k
                ratio = err / max(err_base + floor / thresholds.error_ratio, 1e-300)
                checks.check(
                    "error_ratio",
                    ratio,
                    thresholds.error_ratio,
                    at_least=False,
                    layer=layer,
                    sequence=s,
                    label=f"{label}: ",
                )
                checks.verdict.metrics[f"max_error[{label}]"] = max(
                    checks.verdict.metrics.get(f"max_error[{label}]", 0.0), err
                )
    return checks.done()


def finite(candidates: Mapping[str, Outputs], reference: Outputs) -> Verdict:
    """No NaN/Inf in any candidate output where the reference is finite."""
    checks = _Checks("finite")
    for label, outputs in candidates.items():
        for s, (cand, ref) in enumerate(zip(outputs, reference)):
            for layer in sorted(ref, key=str):
                bad = ~torch.isfinite(cand[layer]) & torch.isfinite(ref[layer])
                count = int(bad.sum())
                token = int(bad.any(-1).nonzero()[0, 0]) if count else None
                checks.check(
                    "non_finite",
                    float(count),
                    0.0,
                    at_least=False,
                    layer=layer if isinstance(layer, int) else None,
                    sequence=s,
                    token=token,
                    label=f"{label} {layer}: " if not isinstance(layer, int) else f"{label}: ",
                )
    return checks.done()


def statistics(
    candidates: Mapping[str, Outputs], reference: Outputs, thresholds: Thresholds, *, layer: int
) -> Verdict:
    """Distribution statistics of the final embedding: mean, spread, norms, outliers."""
    checks = _Checks("statistics")
    for label, outputs in candidates.items():
        for s, (cand, ref) in enumerate(zip(outputs, reference)):
            c, r = cand[layer], ref[layer]
            kw = {"layer": layer, "sequence": s, "at_least": False, "label": f"{label}: "}
            checks.check(
                "mean_abs_diff", metrics.mean_abs_diff(c, r), thresholds.mean_abs_diff, **kw
            )
            checks.check("std_rel_diff", metrics.std_rel_diff(c, r), thresholds.std_rel_diff, **kw)
            checks.check(
                "l2_norm_rel_diff",
                metrics.l2_norm_rel_diff(c, r),
                thresholds.l2_norm_rel_diff,
                **kw,
            )
            oc, orf = metrics.outlier_count(c), metrics.outlier_count(r)
            checks.check(
                "outlier_rel_diff", abs(oc - orf) / max(orf, 8), thresholds.outlier_rel_diff, **kw
            )
    return checks.done()


def isolation(
    first: Mapping[int, torch.Tensor],
    second: Mapping[int, torch.Tensor],
    *,
    ulps: float,
    dtype: torch.dtype,
    name: str = "isolation",
    sequence: int | None = None,
) -> Verdict:
    """One sequence computed in two contexts must agree to within ``ulps`` at each layer."""
    checks = _Checks(name)
    eps = torch.finfo(dtype).eps
    for layer in sorted(first):
        a, b = first[layer], second[layer]
        diff = (a.to(torch.float64) - b.to(torch.float64)).abs()
        scale = eps * float(b.abs().max().clamp_min(torch.finfo(torch.float64).tiny))
        token = int(diff.max(-1).values.argmax())
        checks.check(
            "context_ulps",
            float(diff.max()) / scale,
            ulps,
            at_least=False,
            layer=layer,
            sequence=sequence,
            token=token,
        )
    return checks.done()


def positions(batch: PackedBatch) -> Verdict:
    """Position ids restart at 0 at every boundary and count up by one inside a sequence."""
    checks = _Checks("positions")
    bounds = batch.cu_seqlens.tolist()
    pos = batch.position_ids.tolist()
    for s, (start, end) in enumerate(zip(bounds, bounds[1:])):
        wrong = [t for t in range(start, end) if pos[t] != t - start]
        checks.check(
            "misplaced_positions",
            float(len(wrong)),
            0.0,
            at_least=False,
            sequence=s,
            token=(wrong[0] - start) if wrong else None,
        )
    return checks.done()
