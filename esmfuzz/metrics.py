"""Comparison metrics between a candidate and a reference embedding.

Inputs are one sequence's representation, [L, D] with ``<cls>`` first and
``<eos>`` last. Everything is computed in float64 on the tensors' own device, so
the metric never adds rounding of its own to the error it measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "l2_norm_rel_diff",
    "max_abs_error",
    "mean_abs_diff",
    "non_finite",
    "outlier_count",
    "outlier_weights",
    "batched_relative_errors",
    "cosines",
    "distribution",
    "relative_error_tensor",
    "relative_errors",
    "rank_correlation",
    "residue_mean",
    "score_drift",
    "segment_relative_errors",
    "sequence_cosine",
    "std_rel_diff",
    "summary",
    "token_cosine",
]


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def token_cosine(candidate: torch.Tensor, reference: torch.Tensor, *,
                 scale: float | torch.Tensor | None = None,
                 eps: float | None = None) -> torch.Tensor:
    """Cosine per token, [L]. Two zero vectors (``<mask>`` at layer 0) count as equal, and
    a vector within rounding of zero has no direction: a row whose norm is at most one ulp
    of the candidate's dtype times ``scale`` (default: the reference's largest row norm)
    counts as zero (``eps`` overrides the dtype's). A correct kernel that rounds an exact
    zero one ulp away (atomics, split-K) would otherwise give a cosine of 0 against it."""
    a, b = _f64(candidate), _f64(reference)
    dot = (a * b).sum(-1)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    if scale is None:
        scale = nb.max() if nb.numel() else 0.0
    if eps is None:
        eps = _eps(candidate)
    floor = eps * scale
    both_zero = (na <= floor) & (nb <= floor)
    cosine = dot / (na * nb).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(both_zero, torch.ones_like(cosine), cosine)


def residue_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the residues, ``<cls>`` and ``<eos>`` left out: the usual protein embedding."""
    return _f64(x)[1:-1].mean(0)


def sequence_cosine(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """Cosine of the residue-mean embeddings (zero within rounding of the sequence's largest
    row, :func:`token_cosine`)."""
    return float(_sequence_cosine(candidate, reference))


def _sequence_cosine(candidate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    scale = _f64(reference).norm(dim=-1).max() if reference.numel() else 0.0
    return token_cosine(residue_mean(candidate)[None], residue_mean(reference)[None],
                        scale=scale, eps=_eps(candidate))[0]


def cosines(candidate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``[sequence_cosine, smallest token cosine, its token]`` as one float64 tensor left on
    the device: the precision oracle reads every sequence's and layer's back at once."""
    cos = token_cosine(candidate, reference)
    return torch.stack([_sequence_cosine(candidate, reference), cos.min(),
                        cos.argmin().double()])


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each row of ``a`` with the same row of ``b``, [P] (ranks by
    order; ties in float logits are measure-zero). A row with no spread in either has no
    ranking to agree with: NaN."""
    ra = _f64(a).argsort(-1).argsort(-1).to(torch.float64)
    rb = _f64(b).argsort(-1).argsort(-1).to(torch.float64)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1))


def score_drift(candidate: torch.Tensor, reference: torch.Tensor,
                columns: list[int]) -> dict[str, torch.Tensor]:
    """Per row of two [P, V] logit tensors, what a masked-marginal scorer reads from them at
    the vocabulary ``columns`` (the amino acids): the largest logit drift, the largest
    log-probability drift (softmax over the whole vocabulary, as fair-esm's users take it)
    and the rank correlation of the log-probabilities (the mutation scores), each [P]."""
    c, r = _f64(candidate), _f64(reference)
    logp_c = torch.log_softmax(c, -1)[:, columns]
    logp_r = torch.log_softmax(r, -1)[:, columns]
    return {
        "logit_drift": (c[:, columns] - r[:, columns]).abs().amax(-1),
        "log_prob_drift": (logp_c - logp_r).abs().amax(-1),
        "rank_agreement": rank_correlation(logp_c, logp_r),
    }


def _eps(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).eps if x.is_floating_point() else 0.0


def max_abs_error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((_f64(candidate) - _f64(reference)).abs().max())


def relative_error_tensor(difference: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """:func:`relative_errors` as a float64 tensor ``[rms, worst token's rms, token]`` left
    on the device: many of them are read back at once, not one synchronisation each."""
    return segment_relative_errors(difference, reference, [difference.shape[0]])[0]


OUTLIER_SIGMAS = 4.0
"""Elements beyond this many robust standard deviations of their row are outliers."""


def outlier_weights(reference: torch.Tensor) -> torch.Tensor:
    """Per element, ``min(1, c * sigma_row / |x|)``: 1 on ordinary elements, and on an
    outlier the factor that brings it down to ``c`` robust standard deviations of its row
    (``sigma_row`` = median ``|x|`` / 0.6745, ``c`` = :data:`OUTLIER_SIGMAS`).

    Trained transformers carry massive activations, hundreds to thousands, in a few channels
    of a few tokens (``<cls>``/``<eos>``). Their rounding error scales with their size (a
    float16 element of 1600 is off by a whole unit), and, amplified by the unit that writes
    them, by a few ulps of it on correct code; weighed as ordinary elements, that one
    element becomes the whole error of its row and of a short sequence, a one-dimensional
    statistic whose ratio to the baselines' is heavy-tailed. Scaled down to the row's
    ordinary magnitude, an outlier counts by its relative error, as one element of many.
    A row that is mostly zeros (``<mask>`` at layer 0) is left as it is.
    """
    a = _f64(reference).abs()
    cap = OUTLIER_SIGMAS * a.median(-1, keepdim=True).values / 0.6745
    return torch.where((a > cap) & (cap > 0), cap / a, torch.ones_like(a))


def segment_relative_errors(
    difference: torch.Tensor, reference: torch.Tensor, lengths: list[int], *,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`relative_error_tensor` of each run of ``lengths`` rows at once, ``[S, 3]``.

    A crowded pack holds hundreds of sequences; a dozen kernels per sequence and layer
    cost more than the forwards they judge at 8M, so the statistics of all sequences
    are segment reductions over the concatenated rows. ``token`` counts from the
    segment's first row; a non-finite row is a segment's worst.

    ``difference`` may carry leading batch dimensions (``[*B, N, D]``, several differences
    against one reference, ``reference`` and ``weights`` broadcasting to it): the result is
    then ``[*B, S, 3]``, each row computed as it would be alone, with one set of kernels
    for all of them (:func:`batched_relative_errors`).

    Massive activations count at their own scale (:func:`outlier_weights`; pass
    ``weights`` where several differences share one reference: a row median per call
    costs more than the rest of the statistics).
    """
    d, r = _f64(difference), _f64(reference)
    w = outlier_weights(r) if weights is None else weights
    d, r = d * w, r * w
    device, rows = d.device, d.shape[-2]
    count = torch.tensor(lengths, device=device)
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), count)

    def per_segment(values: torch.Tensor) -> torch.Tensor:
        """Sums over each segment's rows, in row order: ``[..., N]`` to ``[..., S]``."""
        zeros = values.new_zeros((*values.shape[:-1], len(lengths)))
        return zeros.index_add(-1, segment, values)

    row_sq = d.pow(2).mean(-1)
    rms = (per_segment(row_sq) / count).sqrt()
    scale = (per_segment(r.pow(2).mean(-1)) / count).sqrt()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    per_row = row_sq.sqrt()
    bad = ~torch.isfinite(per_row)
    segments = segment.expand_as(per_row)
    worst = row_sq.new_zeros((*row_sq.shape[:-1], len(lengths))).scatter_reduce(
        -1, segments, per_row.nan_to_num(0.0, posinf=0.0), "amax")
    has_bad = per_segment(bad.double()) > 0
    worst = torch.where(has_bad, per_segment(torch.where(bad, per_row, 0.0)), worst)
    offset = torch.arange(rows, device=device) - (torch.cumsum(count, 0) - count)[segment]
    hit = torch.where(has_bad[..., segment], bad, per_row == worst[..., segment])
    token = torch.full_like(rms, rows, dtype=torch.long).scatter_reduce(
        -1, segments, torch.where(hit, offset, rows), "amin")
    rms, worst = torch.broadcast_tensors(rms / scale, worst / scale)
    return torch.stack([rms, worst, token.double()], dim=-1)


BATCH_ELEMENTS = 2**22
"""Elements of the float64 differences one :func:`batched_relative_errors` call stacks
(32 MiB each): small packs, where launching kernels costs more than running them, go in
a call or two; a large pack's differences run a few at a time and stay within memory."""


def batched_relative_errors(
    differences: Sequence[tuple[Sequence[torch.Tensor], torch.Tensor, int]],
    references: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    lengths: list[int],
) -> list[torch.Tensor]:
    """:func:`segment_relative_errors` of many differences, ``[S, 3]`` each, in few calls.

    Each difference is ``(pieces, subtrahend, i)``: the float64 rows of ``cat(pieces)``
    minus ``subtrahend`` (float64, ``[N, D]``), against ``references[i]`` with
    ``weights[i]``. Differences of one width are stacked up to :data:`BATCH_ELEMENTS` per
    call; each statistic is the one the difference alone gives, at a fraction of the
    kernel launches (a dozen checked outputs per example at 8M cost more to judge one by
    one than to compute).
    """
    results: list[torch.Tensor] = [torch.empty(0)] * len(differences)
    rows = sum(lengths)
    by_width: dict[int, list[int]] = {}
    for n, (_, _, i) in enumerate(differences):
        by_width.setdefault(references[i].shape[-1], []).append(n)
    for width, members in by_width.items():
        step = max(1, BATCH_ELEMENTS // max(1, rows * width))
        for at in range(0, len(members), step):
            chunk = [differences[n] for n in members[at : at + step]]
            minuend = _f64(torch.cat([p for pieces, _, _ in chunk for p in pieces]))
            if minuend.shape[0] != len(chunk) * rows:
                raise ValueError(f"{minuend.shape[0]} rows for {len(chunk)} difference(s) "
                                 f"of {rows} rows")
            d = minuend.view(len(chunk), rows, width) - _shared([c[1] for c in chunk])
            i = [c[2] for c in chunk]
            stats = segment_relative_errors(d, _shared([references[j] for j in i]), lengths,
                                            weights=_shared([weights[j] for j in i]))
            for n, row in zip(members[at : at + step], stats):
                results[n] = row
    return results


def _shared(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One tensor that broadcasts over the batch where all are the same, else a stack."""
    first = tensors[0]
    return first if all(t is first for t in tensors) else torch.stack(list(tensors))


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
    return float(_mean_abs_diff(candidate, reference))


def std_rel_diff(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    return float(_std_rel_diff(candidate, reference))


def l2_norm_rel_diff(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest relative difference of per-token L2 norms."""
    return float(_l2_norm_rel_diff(candidate, reference))


def outlier_count(x: torch.Tensor, *, z: float = 3.0) -> int:
    """Number of values more than ``z`` standard deviations from the mean."""
    return int(_outlier_count(x, z=z))


def _mean_abs_diff(candidate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (_f64(candidate) - _f64(reference)).abs().mean()


def _std_rel_diff(candidate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    ref_std = _f64(reference).std()
    return (_f64(candidate).std() - ref_std).abs() / ref_std


def _l2_norm_rel_diff(candidate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    a, b = _f64(candidate).norm(dim=-1), _f64(reference).norm(dim=-1)
    return ((a - b).abs() / b.clamp_min(torch.finfo(torch.float64).tiny)).max()


def _outlier_count(x: torch.Tensor, *, z: float = 3.0) -> torch.Tensor:
    x = _f64(x)
    return ((x - x.mean()).abs() > z * x.std()).sum()


def distribution(candidate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``[mean_abs_diff, std_rel_diff, l2_norm_rel_diff, outlier_count(candidate),
    outlier_count(reference)]`` as one float64 tensor left on the device: the statistics
    oracle reads every sequence's back at once."""
    return torch.stack([
        _mean_abs_diff(candidate, reference), _std_rel_diff(candidate, reference),
        _l2_norm_rel_diff(candidate, reference),
        _outlier_count(candidate).double(), _outlier_count(reference).double(),
    ])


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
