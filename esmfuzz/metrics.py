"""Comparison metrics between a candidate and a reference embedding.

Inputs are one sequence's representation, [L, D] with ``<cls>`` first and
``<eos>`` last. Everything is computed in float64 on the tensors' own device, so
the metric never adds rounding of its own to the error it measures.
"""

from __future__ import annotations

import torch

__all__ = [
    "l2_norm_rel_diff",
    "max_abs_error",
    "mean_abs_diff",
    "non_finite",
    "outlier_count",
    "relative_error_tensor",
    "relative_errors",
    "residue_mean",
    "sequence_cosine",
    "std_rel_diff",
    "summary",
    "token_cosine",
]


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def token_cosine(candidate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine per token, [L]. Two zero vectors (``<mask>`` at layer 0) count as equal."""
    a, b = _f64(candidate), _f64(reference)
    dot = (a * b).sum(-1)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    both_zero = (a.norm(dim=-1) == 0) & (b.norm(dim=-1) == 0)
    cosine = dot / norms.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(both_zero, torch.ones_like(cosine), cosine)


def residue_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the residues, ``<cls>`` and ``<eos>`` left out: the usual protein embedding."""
    return _f64(x)[1:-1].mean(0)


def sequence_cosine(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """Cosine of the residue-mean embeddings."""
    return float(token_cosine(residue_mean(candidate)[None], residue_mean(reference)[None])[0])


def max_abs_error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((_f64(candidate) - _f64(reference)).abs().max())


def relative_error_tensor(difference: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """:func:`relative_errors` as a float64 tensor ``[rms, worst token's rms, token]`` left
    on the device: many of them are read back at once, not one synchronisation each."""
    d, r = _f64(difference), _f64(reference)
    scale = r.pow(2).mean().sqrt()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    per_token = d.pow(2).mean(-1).sqrt()
    token = per_token.argmax()
    return torch.stack([d.pow(2).mean().sqrt() / scale, per_token[token] / scale, token.double()])


def relative_errors(difference: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, int]:
    """(RMS of ``difference``, RMS of its worst token, that token), both over the RMS of
    ``reference``.

    Means over hundreds of elements are stable where a maximum over them is not: the
    maximum of a few ulps of rounding noise varies by 3x and more between two correct
    computations, the RMS by a few percent (docs/oracles.md).
    """
    total, worst, token = relative_error_tensor(difference, reference).tolist()
    return total, worst, int(token)


def mean_abs_diff(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((_f64(candidate) - _f64(reference)).abs().mean())


def std_rel_diff(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    ref_std = _f64(reference).std()
    return float((_f64(candidate).std() - ref_std).abs() / ref_std)


def l2_norm_rel_diff(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest relative difference of per-token L2 norms."""
    a, b = _f64(candidate).norm(dim=-1), _f64(reference).norm(dim=-1)
    return float(((a - b).abs() / b.clamp_min(torch.finfo(torch.float64).tiny)).max())


def outlier_count(x: torch.Tensor, *, z: float = 3.0) -> int:
    """Number of values more than ``z`` standard deviations from the mean."""
    x = _f64(x)
    return int(((x - x.mean()).abs() > z * x.std()).sum())


def non_finite(x: torch.Tensor) -> int:
    """Number of NaN or infinite values."""
    return int((~torch.isfinite(x)).sum())


def summary(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """All metrics of one sequence and layer, for reports and the statistics oracle."""
    cos = token_cosine(candidate, reference)
    return {
        "sequence_cosine": sequence_cosine(candidate, reference),
        "token_cosine_min": float(cos.min()),
        "token_cosine_argmin": int(cos.argmin()),
        "max_abs_error": max_abs_error(candidate, reference),
        "mean_abs_diff": mean_abs_diff(candidate, reference),
        "std_rel_diff": std_rel_diff(candidate, reference),
        "l2_norm_rel_diff": l2_norm_rel_diff(candidate, reference),
        "outliers_candidate": outlier_count(candidate),
        "outliers_reference": outlier_count(reference),
        "non_finite": non_finite(candidate),
    }
