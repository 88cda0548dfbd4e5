"""The oracles of :mod:`esmfuzz.properties` on small hand-built tensors.

Every oracle tensor is float64 from a seeded ``torch.Generator``; tested and baseline
tensors are the oracle plus a perturbation whose statistic is known in closed form
(a +-1 sign pattern has per-token and overall RMS exactly 1, a rotation in a 2-D plane
has an exact cosine). Each bound is checked just inside it (``1 - 1e-6``) and just
past it (``1 + 1e-3``), so a moved bound, a flipped comparison or a wrong ``atol``
fails a test. No model is loaded.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from esmfuzz import metrics
from esmfuzz.config import dtype_name
from esmfuzz.properties import (
    Sample,
    Thresholds,
    Verdict,
    context,
    error_ratio,
    finite,
    precision,
    statistics,
)

F64 = torch.float64
D = 16
INSIDE = 1 - 1e-6
PAST = 1 + 1e-3

# --------------------------------------------------------------------------- helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(rows: int, seed: int, cols: int = D) -> torch.Tensor:
    return torch.randn(rows, cols, generator=_gen(seed), dtype=F64)


def activations(rows: int, seed: int, cols: int = D) -> torch.Tensor:
    """Random signs and magnitudes in [0.5, 1.5): no element is an outlier of its row
    (``metrics.OUTLIER_SIGMAS``), so the statistics are plain RMS ratios."""
    magnitude = 0.5 + torch.rand(rows, cols, generator=_gen(seed + 10**6), dtype=F64)
    return signs(rows, seed, cols) * magnitude


def signs(rows: int, seed: int, cols: int = D) -> torch.Tensor:
    """A +-1 pattern: every token's RMS, and the whole tensor's, is exactly 1."""
    return torch.randint(0, 2, (rows, cols), generator=_gen(seed)).to(F64) * 2 - 1


def one_token(rows: int, token: int, seed: int, cols: int = D) -> torch.Tensor:
    """+-1 on ``token`` only: that token's RMS is 1, the whole tensor's sqrt(1 / rows)."""
    out = torch.zeros(rows, cols, dtype=F64)
    out[token] = signs(1, seed, cols)[0]
    return out


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def token_rms(x: torch.Tensor) -> torch.Tensor:
    return x.double().pow(2).mean(-1).sqrt()


def atol_of(thresholds: Thresholds, dtype: torch.dtype) -> float:
    return thresholds.ulp_floor * torch.finfo(dtype).eps


def place(verdict: Verdict) -> set[tuple[str, int]]:
    """(path label, layer) of every violation."""
    out = set()
    for v in verdict.violations:
        m = re.match(r"(.*?) (?:rms|token): \w+=.* at layer (\d+)", v)
        assert m, v
        out.add((m.group(1), int(m.group(2))))
    return out


LENGTHS = (3, 6)  # residues; tensors have L + 2 rows
LAYERS = (0, 5)


def oracle_outputs(lengths=LENGTHS, layers=LAYERS, seed=0) -> list[dict[int, torch.Tensor]]:
    return [
        {layer: activations(n + 2, seed=seed + 100 * s + layer) for layer in layers}
        for s, n in enumerate(lengths)
    ]


def noisy(outputs, scale: float, seed: int) -> list[dict[int, torch.Tensor]]:
    """outputs + scale * N(0, 1): a baseline whose worst token is well above its RMS."""
    return [
        {layer: t + scale * randn(t.shape[0], seed=seed + 100 * s + layer, cols=t.shape[1])
         for layer, t in out.items()}
        for s, out in enumerate(outputs)
    ]


def copy_outputs(outputs):
    return [{layer: t.clone() for layer, t in out.items()} for out in outputs]


# --------------------------------------------------------------------------- relative_errors


def test_relative_errors_hand_computed():
    diff = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, -1.0]], dtype=F64)
    ref = torch.full((3, 2), 2.0, dtype=F64)  # RMS 2
    total, worst, token = metrics.relative_errors(diff, ref)
    assert total == pytest.approx(math.sqrt((9 + 16 + 1 + 1) / 6) / 2, rel=1e-15)
    assert worst == pytest.approx(math.sqrt(25 / 2) / 2, rel=1e-15)
    assert token == 1


def test_relative_errors_zero_reference_is_absolute():
    diff = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.5, 0.5]], dtype=F64)
    total, worst, token = metrics.relative_errors(diff, torch.zeros(3, 2, dtype=F64))
    assert total == pytest.approx(math.sqrt(0.5 / 6), rel=1e-15)  # scale falls back to 1
    assert (worst, token) == (0.5, 2)


def test_relative_errors_is_linear_in_the_difference():
    ref, diff = randn(7, seed=1), randn(7, seed=2)
    a = metrics.relative_errors(diff, ref)
    b = metrics.relative_errors(3.0 * diff, ref)
    assert b[0] == pytest.approx(3 * a[0], rel=1e-14)
    assert b[1] == pytest.approx(3 * a[1], rel=1e-14)
    assert b[2] == a[2] == int(token_rms(diff).argmax())
    assert a[0] == pytest.approx(rms(diff) / rms(ref), rel=1e-14)


def test_segment_relative_errors_match_each_segment_alone():
    lengths = [3, 1, 6, 2]
    ref, diff = randn(sum(lengths), seed=3), randn(sum(lengths), seed=4)
    together = metrics.segment_relative_errors(diff, ref, lengths).tolist()
    start = 0
    for row, n in zip(together, lengths):
        total, worst, token = metrics.relative_errors(diff[start:start + n], ref[start:start + n])
        assert row[0] == pytest.approx(total, rel=1e-14)
        assert row[1] == pytest.approx(worst, rel=1e-14)
        assert row[2] == token
        start += n


def test_segment_relative_errors_name_the_first_non_finite_token():
    lengths = [2, 4, 3]
    ref, diff = randn(9, seed=5), randn(9, seed=6)
    diff[3, 0], diff[4, 1], diff[7, 0] = math.inf, math.nan, math.inf
    rows = metrics.segment_relative_errors(diff, ref, lengths).tolist()
    assert math.isfinite(rows[0][0]) and math.isfinite(rows[0][1])
    assert math.isnan(rows[1][0]) and math.isnan(rows[1][1]) and rows[1][2] == 1
    assert rows[2][1] == math.inf and rows[2][2] == 1


def test_an_outlier_counts_by_its_relative_error():
    """An element far beyond its row's robust spread is scaled down to c robust standard
    deviations, and its error with it: its relative error then counts like an ordinary
    element's at that size. Ordinary elements and mostly-zero rows are left as they are."""
    ref = activations(5, seed=8)
    ref[2, 3] = 1600.0
    sigma = float(ref[2].abs().median()) / 0.6745
    cap = metrics.OUTLIER_SIGMAS * sigma
    diff = torch.zeros_like(ref)
    diff[2, 3] = 1600.0 * 1e-3
    clipped = ref.clone()
    clipped[2, 3] = cap
    total, worst, token = metrics.relative_errors(diff, ref)
    assert token == 2
    assert worst == pytest.approx(cap * 1e-3 / math.sqrt(D) / rms(clipped), rel=1e-12)
    assert total == pytest.approx(cap * 1e-3 / rms(clipped) / math.sqrt(5 * D), rel=1e-12)
    ordinary = torch.zeros_like(ref)
    ordinary[1, 4] = 0.01
    assert metrics.relative_errors(ordinary, ref)[1] == pytest.approx(
        0.01 / math.sqrt(D) / rms(clipped), rel=1e-12)
    mostly_zero = torch.zeros(3, D, dtype=F64)
    mostly_zero[1, 0] = 5.0
    assert metrics.relative_errors(mostly_zero, mostly_zero)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("error,ok", [(4.0, True), (0.05 * 1600, False)])
def test_error_ratio_rounding_of_a_massive_activation(error, ok):
    """A massive activation (1600, as a trained model's ``<cls>`` carries) that a correct
    float16 forward rounds 4 ulps away from where both baselines land passes; 5% off fails.
    Weighed as an ordinary element, the 4 ulps would read 53 against the bound of 8 (2.3 here)."""
    th = Thresholds()
    oracle = oracle_outputs()
    oracle[1][5][0, 3] = 1600.0
    baseline = noisy(oracle, 1e-3, seed=7)
    baseline[1][5][0, 3] = 1600.0
    tested = copy_outputs(baseline)
    tested[1][5][0, 3] += error
    verdict = error_ratio({"packed float16": (tested, [baseline], torch.float16)}, oracle, th)
    assert verdict.ok is ok, verdict.message()
    if not ok:
        assert verdict.worst == {"layer": 5, "sequence": 1, "token": 0}


# --------------------------------------------------------------------------- error_ratio

ERROR_CASES = [
    pytest.param(torch.float32, Thresholds(), id="float32-default"),
    pytest.param(torch.float16, Thresholds(), id="float16-default"),
    pytest.param(torch.bfloat16, Thresholds(), id="bfloat16-default"),
    pytest.param(torch.float32, Thresholds(error_ratio=1.5, ulp_floor=4.0), id="float32-k1.5-4ulp"),
    pytest.param(torch.float16, Thresholds(error_ratio=3.0, context_ratio=1.0), id="float16-k3"),
]


def _error_case(dtype, thresholds, factor, *, seq=1, layer=5, label=None):
    """Baseline = oracle + 1e-3 N; tested = baseline except (seq, layer), where the tested
    error is a uniform sign pattern with RMS ``factor * (k * e_b + atol)``."""
    label = label or f"packed {dtype_name(dtype)}"
    k, atol = thresholds.error_ratio, atol_of(thresholds, dtype)
    oracle = oracle_outputs()
    baseline = noisy(oracle, 1e-3, seed=7)
    tested = copy_outputs(baseline)
    ref = oracle[seq][layer]
    e_b = rms(baseline[seq][layer] - ref) / rms(ref)
    tok_b = float(token_rms(baseline[seq][layer] - ref).max()) / rms(ref)
    # The tested error is uniform over tokens, the baseline's is not: the RMS statistic binds.
    assert tok_b > e_b * 1.05
    target = factor * (k * e_b + atol)
    tested[seq][layer] = ref + target * rms(ref) * signs(ref.shape[0], seed=11)
    verdict = error_ratio({label: (tested, [baseline], dtype)}, oracle, thresholds)
    return verdict, target / (e_b + atol / k)


@pytest.mark.parametrize("dtype,thresholds", ERROR_CASES)
def test_error_ratio_rms_just_inside_passes(dtype, thresholds):
    verdict, expected = _error_case(dtype, thresholds, INSIDE)
    k = thresholds.error_ratio
    assert verdict.ok, verdict.message()
    assert verdict.violations == []
    assert verdict.metric == "error_ratio"
    assert verdict.value == pytest.approx(expected, rel=1e-9)
    assert verdict.value == pytest.approx(k * INSIDE, rel=1e-9)
    assert verdict.threshold == k
    assert verdict.margin == pytest.approx(1e-6, rel=1e-3)
    assert verdict.worst == {"layer": 5, "sequence": 1, "token": None}
    assert verdict.first_layer is None


@pytest.mark.parametrize("dtype,thresholds", ERROR_CASES)
def test_error_ratio_rms_just_past_fails(dtype, thresholds):
    verdict, expected = _error_case(dtype, thresholds, PAST)
    k = thresholds.error_ratio
    label = f"packed {dtype_name(dtype)}"
    assert not verdict.ok
    assert verdict.metric == "error_ratio"
    assert verdict.value == pytest.approx(expected, rel=1e-9)
    assert verdict.value == pytest.approx(k * PAST, rel=1e-9)
    assert verdict.threshold == k
    assert verdict.margin < 0
    assert verdict.path == f"{label} rms"
    assert verdict.worst == {"layer": 5, "sequence": 1, "token": None}
    assert verdict.first_layer == 5
    assert len(verdict.violations) == 1, verdict.violations
    v = verdict.violations[0]
    assert v.startswith(f"{label} rms: error_ratio=")
    assert f"(needs <= {k:g})" in v
    assert v.endswith("at layer 5, sequence 1")


def test_error_ratio_exactly_at_k_passes():
    """ulp_floor = 0 and integer errors: the ratio is exactly k, and the bound is ``<=``."""
    th = Thresholds(ulp_floor=0.0)
    k = th.error_ratio
    s = signs(5, seed=3)
    oracle = [{0: torch.ones(5, D, dtype=F64)}]
    baseline = [{0: oracle[0][0] + s}]  # error RMS exactly 1, scale exactly 1
    at = error_ratio({"p": ([{0: oracle[0][0] + k * s}], [baseline], torch.float32)}, oracle, th)
    assert at.ok and at.value == k and at.margin == 0.0
    past = error_ratio(
        {"p": ([{0: oracle[0][0] + k * (1 + 2**-30) * s}], [baseline], torch.float32)}, oracle, th
    )
    assert not past.ok and past.value > k


@pytest.mark.parametrize("token", [0, 4, 7])
@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_error_ratio_worst_token(token, factor, ok, dtype):
    """An error on one token: its RMS over the sequence is sqrt(1/8) of the token's, so
    only the worst-token statistic can catch it."""
    th = Thresholds()
    k, atol = th.error_ratio, atol_of(th, dtype)
    oracle = oracle_outputs()
    ref = oracle[1][5]
    rows = ref.shape[0]
    assert rows == 8
    baseline = copy_outputs(oracle)
    baseline[1][5] = ref + 1e-3 * signs(rows, seed=5)  # uniform: token RMS = RMS
    tested = copy_outputs(baseline)
    tok_b = 1e-3 / rms(ref)
    target = factor * (k * tok_b + atol)
    tested[1][5] = ref + target * rms(ref) * one_token(rows, token, seed=9)
    verdict = error_ratio({"packed float32": (tested, [baseline], dtype)}, oracle, th)
    assert verdict.ok is ok, verdict.message()
    assert verdict.value == pytest.approx(target / (tok_b + atol / k), rel=1e-9)
    assert verdict.value == pytest.approx(k * factor, rel=1e-9)
    assert verdict.worst == {"layer": 5, "sequence": 1, "token": token}
    assert verdict.path == "packed float32 token"
    assert verdict.metrics["token_error[packed float32]"] == pytest.approx(target, rel=1e-9)
    assert verdict.metrics["rms_error[packed float32]"] == pytest.approx(
        target / math.sqrt(rows), rel=1e-9
    )
    if ok:
        assert verdict.violations == []
    else:
        assert verdict.violations == [
            f"packed float32 token: error_ratio={verdict.value:.6g} (needs <= {k:g}) "
            f"at layer 5, sequence 1, token {token}"
        ]
        assert verdict.first_layer == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_error_ratio_zero_baseline_is_bounded_by_atol(dtype):
    th = Thresholds()
    k, atol = th.error_ratio, atol_of(th, dtype)
    oracle = oracle_outputs()
    exact = copy_outputs(oracle)

    def run(factor):
        tested = copy_outputs(oracle)
        ref = oracle[0][0]
        tested[0][0] = ref + factor * atol * rms(ref) * signs(ref.shape[0], seed=4)
        return error_ratio({"packed x": (tested, [exact], dtype)}, oracle, th)

    same = error_ratio({"packed x": (copy_outputs(oracle), [exact], dtype)}, oracle, th)
    assert same.ok and same.value == 0.0
    inside, past = run(INSIDE), run(PAST)
    assert inside.ok, inside.message()
    assert inside.value == pytest.approx(k * INSIDE, rel=1e-6)
    assert not past.ok
    assert past.value == pytest.approx(k * PAST, rel=1e-6)
    # Uniform error, zero baseline: both statistics are over the bound.
    assert len(past.violations) == 2
    assert past.violations[0].startswith("packed x rms: error_ratio=")
    assert past.violations[1].startswith("packed x token: error_ratio=")
    assert past.first_layer == 0
    assert past.worst["sequence"] == 0 and past.worst["layer"] == 0


def test_error_ratio_first_layer_is_the_smallest_failing_layer():
    th = Thresholds()
    k, atol = th.error_ratio, atol_of(th, torch.float32)
    layers = (0, 2, 4, 6)
    oracle = oracle_outputs(layers=layers)
    baseline = copy_outputs(oracle)
    for out in baseline:
        for layer in out:
            out[layer] = out[layer] + 1e-3 * signs(out[layer].shape[0], seed=layer)
    tested = copy_outputs(baseline)
    for s, layer, factor in [(0, 6, 3.0), (1, 2, 1.01), (1, 4, 1.5)]:
        ref = oracle[s][layer]
        e_b = 1e-3 / rms(ref)
        tested[s][layer] = ref + factor * (k * e_b + atol) * rms(ref) * signs(ref.shape[0], 8)
    verdict = error_ratio({"packed float32": (tested, [baseline], torch.float32)}, oracle, th)
    assert not verdict.ok
    assert verdict.first_layer == 2
    assert verdict.worst["layer"] == 6 and verdict.worst["sequence"] == 0
    assert verdict.value == pytest.approx(3.0 * k, rel=1e-9)
    assert {layer for _, layer in place(verdict)} == {2, 4, 6}


def test_error_ratio_names_the_failing_path():
    th = Thresholds()
    oracle = oracle_outputs()
    baseline = noisy(oracle, 1e-3, seed=7)
    good = copy_outputs(baseline)
    bad = copy_outputs(baseline)
    bad[0][0] = oracle[0][0] + 10 * (bad[0][0] - oracle[0][0])
    verdict = error_ratio(
        {
            "packed float32": (good, [baseline], torch.float32),
            "packed float16": (bad, [baseline], torch.float16),
        },
        oracle,
        th,
    )
    assert not verdict.ok
    assert place(verdict) == {("packed float16", 0)}
    assert verdict.path.startswith("packed float16 ")
    assert "rms_error[packed float32]" in verdict.metrics
    assert "rms_error[packed float16]" in verdict.metrics


def test_error_ratio_non_finite_tested_fails():
    oracle = oracle_outputs()
    baseline = noisy(oracle, 1e-3, seed=7)
    tested = copy_outputs(baseline)
    tested[1][0][2, 3] = float("nan")
    verdict = error_ratio({"packed float16": (tested, [baseline], torch.float16)}, oracle,
                          Thresholds())
    assert not verdict.ok
    assert math.isnan(verdict.value)
    assert verdict.worst["layer"] == 0 and verdict.worst["sequence"] == 1
    assert verdict.margin == float("-inf")


def test_error_ratio_note_names_statistic_and_bound():
    verdict, _ = _error_case(torch.float32, Thresholds(error_ratio=2.5, ulp_floor=3.0), INSIDE)
    (note,) = verdict.notes
    assert "statistic: RMS error against the oracle" in note
    assert "bound: tested <= 2.5 x" in note
    assert "+ 3 ulp" in note


# --------------------------------------------------------------------------- context

CONTEXT_CASES = [
    pytest.param(torch.float16, Thresholds(), id="float16-default"),
    pytest.param(torch.float32, Thresholds(), id="float32-default"),
    pytest.param(torch.bfloat16, Thresholds(context_ratio=4.0, error_ratio=1.0, ulp_floor=0.5),
                 id="bfloat16-k4-half-ulp"),
]


def _context_paths(dtype, thresholds, factor, *, token=None, zero_baseline=False):
    """Oracle layers {0, 3, 6} of one 7-row sequence; the two contexts differ at layer 3
    by a sign pattern (uniform, or on ``token`` only) scaled to ``factor`` x the bound."""
    k, atol = thresholds.context_ratio, atol_of(thresholds, dtype)
    oracle = {layer: activations(7, seed=20 + layer) for layer in (0, 3, 6)}
    if zero_baseline:
        baseline = {layer: t.clone() for layer, t in oracle.items()}
    elif token is None:
        baseline = {layer: t + 2e-3 * randn(7, seed=30 + layer) for layer, t in oracle.items()}
    else:
        baseline = {layer: t + 2e-3 * signs(7, seed=30 + layer) for layer, t in oracle.items()}
    first = {layer: t + 1e-3 * randn(7, seed=40 + layer) for layer, t in oracle.items()}
    second = {layer: t.clone() for layer, t in first.items()}
    ref = oracle[3]
    diff = baseline[3] - ref
    e_b = rms(diff) / rms(ref)
    tok_b = float(token_rms(diff).max()) / rms(ref)
    if token is None:
        if not zero_baseline:
            assert tok_b > 1.05 * e_b
        err_b = e_b
        pattern = signs(7, seed=50)
    else:
        assert tok_b == pytest.approx(e_b, rel=1e-12)
        err_b = tok_b
        pattern = one_token(7, token, seed=51)
    diff = factor * (k * err_b + atol)
    second[3] = first[3] - diff * rms(ref) * pattern
    paths = {"packed " + dtype_name(dtype): (first, second, [baseline], dtype)}
    return paths, oracle, diff / (err_b + atol / k)


@pytest.mark.parametrize("dtype,thresholds", CONTEXT_CASES)
@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
def test_context_rms_at_and_past(dtype, thresholds, factor, ok):
    paths, oracle, expected = _context_paths(dtype, thresholds, factor)
    verdict = context(paths, oracle, thresholds, name="isolation", sequence=3)
    label = f"packed {dtype_name(dtype)}"
    k = thresholds.context_ratio
    assert verdict.property == "isolation"
    assert verdict.ok is ok, verdict.message()
    assert verdict.metric == "context_ratio"
    assert verdict.threshold == k
    assert verdict.value == pytest.approx(expected, rel=1e-9)
    assert verdict.value == pytest.approx(k * factor, rel=1e-9)
    assert verdict.worst == {"layer": 3, "sequence": 3, "token": None}
    assert verdict.path == f"{label} rms"
    if ok:
        assert verdict.violations == [] and verdict.first_layer is None
    else:
        assert verdict.violations == [
            f"{label} rms: context_ratio={verdict.value:.6g} (needs <= {k:g}) "
            f"at layer 3, sequence 3"
        ]
        assert verdict.first_layer == 3


@pytest.mark.parametrize("dtype,thresholds", CONTEXT_CASES)
@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
@pytest.mark.parametrize("token", [0, 2, 6])
def test_context_worst_token_at_and_past(dtype, thresholds, factor, ok, token):
    paths, oracle, expected = _context_paths(dtype, thresholds, factor, token=token)
    verdict = context(paths, oracle, thresholds, name="padding_invariance", sequence=0)
    label = f"packed {dtype_name(dtype)}"
    assert verdict.ok is ok, verdict.message()
    assert verdict.value == pytest.approx(expected, rel=1e-9)
    assert verdict.worst == {"layer": 3, "sequence": 0, "token": token}
    assert verdict.path == f"{label} token"
    assert len(verdict.violations) == (0 if ok else 1)
    if not ok:
        assert verdict.violations[0].startswith(f"{label} token: context_ratio=")
        assert verdict.violations[0].endswith(f"at layer 3, sequence 0, token {token}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
def test_context_zero_baseline_is_bounded_by_atol(dtype, factor, ok):
    th = Thresholds()
    paths, oracle, _ = _context_paths(dtype, th, factor, zero_baseline=True)
    verdict = context(paths, oracle, th, name="isolation", sequence=1)
    assert verdict.ok is ok
    assert verdict.value == pytest.approx(th.context_ratio * factor, rel=1e-6)


def test_context_identical_contexts_give_zero():
    th = Thresholds()
    paths, oracle, _ = _context_paths(torch.float16, th, 0.0)
    verdict = context(paths, oracle, th, name="isolation", sequence=2)
    assert verdict.ok
    assert verdict.value == 0.0
    assert verdict.margin == 1.0
    assert verdict.violations == []
    (note,) = verdict.notes
    assert "statistic: RMS difference between the two contexts" in note
    assert f"bound: {th.context_ratio:g} x" in note


def test_context_uses_context_ratio_not_error_ratio():
    th = Thresholds(error_ratio=100.0, context_ratio=2.0)
    paths, oracle, _ = _context_paths(torch.float16, Thresholds(), PAST)
    verdict = context(paths, oracle, th, name="isolation", sequence=0)
    assert not verdict.ok and verdict.threshold == 2.0


def test_context_first_layer():
    th = Thresholds()
    oracle = {layer: randn(5, seed=60 + layer) for layer in (1, 2, 4)}
    first = {layer: t.clone() for layer, t in oracle.items()}
    second = {layer: t.clone() for layer, t in oracle.items()}
    second[4] = second[4] + 1.0
    second[2] = second[2] + 0.1
    paths = {"padded float32": (first, second, [oracle], torch.float32)}
    verdict = context(paths, oracle, th, name="padding_invariance", sequence=0)
    assert not verdict.ok
    assert verdict.first_layer == 2
    assert verdict.worst["layer"] == 4
    assert place(verdict) == {("padded float32", 2), ("padded float32", 4)}


# --------------------------------------------------------------------------- precision


def _rotate(v: torch.Tensor, cos: float, seed: int) -> torch.Tensor:
    """``v`` rotated in the plane of ``v`` and a random orthogonal direction: exact cosine."""
    u = torch.randn(v.shape[0], generator=_gen(seed), dtype=F64)
    u = u - (u @ v) / (v @ v) * v
    u = u / u.norm() * v.norm()
    return cos * v + math.sqrt(1 - cos * cos) * u


def _reference(rows: int, seed: int) -> torch.Tensor:
    """Tokens sharing a strong common direction, so one token turned does not turn the mean."""
    return 3 * randn(1, seed=seed) + randn(rows, seed=seed + 1)


@pytest.mark.parametrize(
    "cos,ok",
    [(0.99 + 1e-6, True), (0.99 - 1e-6, False), (0.995, True), (0.98, False)],
)
def test_precision_sequence_cosine(cos, ok):
    th = Thresholds()
    ref = _reference(8, seed=70)
    m = metrics.residue_mean(ref)
    cand = ref.clone()
    cand[1:-1] += _rotate(m, cos, seed=71) - m  # residue mean turned by exactly acos(cos)
    reference = [{0: randn(4, seed=72)}, {0: ref, 6: ref.clone()}]
    candidate = [{0: reference[0][0].clone()}, {0: ref.clone(), 6: cand}]
    verdict = precision(candidate, reference, th)
    assert metrics.sequence_cosine(cand, ref) == pytest.approx(cos, abs=1e-12)
    assert float(metrics.token_cosine(cand, ref).min()) > 0.96
    assert verdict.property == "precision"
    assert verdict.ok is ok, verdict.message()
    assert verdict.metric == "sequence_cosine"
    assert verdict.value == pytest.approx(cos, abs=1e-12)
    assert verdict.threshold == 0.99
    assert verdict.worst == {"layer": 6, "sequence": 1, "token": None}
    assert verdict.metrics["sequence_cosine"] == pytest.approx(cos, abs=1e-12)
    if ok:
        assert verdict.violations == [] and verdict.margin > 0
    else:
        assert verdict.violations == [
            f"sequence_cosine={verdict.value:.6g} (needs > 0.99) at layer 6, sequence 1"
        ]
        assert verdict.first_layer == 6


@pytest.mark.parametrize("token", [0, 3, 7])
@pytest.mark.parametrize(
    "cos,ok", [(0.95 + 1e-6, True), (0.95 - 1e-6, False), (0.97, True), (0.9, False)]
)
def test_precision_token_cosine(token, cos, ok):
    th = Thresholds()
    ref = _reference(8, seed=80)
    cand = ref.clone()
    cand[token] = _rotate(ref[token], cos, seed=81)
    verdict = precision([{2: cand}], [{2: ref}], th, name="packed_precision")
    assert metrics.sequence_cosine(cand, ref) > 0.995
    assert verdict.property == "packed_precision"
    assert verdict.ok is ok, verdict.message()
    assert verdict.metric == "token_cosine_min"
    assert verdict.value == pytest.approx(cos, abs=1e-12)
    assert verdict.threshold == 0.95
    assert verdict.worst == {"layer": 2, "sequence": 0, "token": token}
    if not ok:
        assert verdict.violations == [
            f"token_cosine_min={verdict.value:.6g} (needs > 0.95) "
            f"at layer 2, sequence 0, token {token}"
        ]
        assert verdict.first_layer == 2


def test_precision_cosine_exactly_at_threshold_fails():
    """(3, 4) against (4, 3): cosine exactly 24/25 = 0.96; the bound is strict (``> t``)."""
    ref = torch.tensor([[3.0, 4.0]] * 3, dtype=F64)
    cand = ref.clone()
    cand[1] = torch.tensor([4.0, 3.0], dtype=F64)
    th = Thresholds(sequence_cosine=0.5, token_cosine=0.96)
    verdict = precision([{0: cand}], [{0: ref}], th)
    assert verdict.value == 0.96 and verdict.metric == "token_cosine_min"
    assert not verdict.ok
    assert verdict.worst["token"] == 1
    th = Thresholds(sequence_cosine=0.96, token_cosine=0.5)
    assert not precision([{0: cand}], [{0: ref}], th).ok


def test_precision_zero_tokens_count_as_equal():
    ref = randn(5, seed=90)
    ref[0] = 0.0
    cand = ref.clone()
    verdict = precision([{0: cand}], [{0: ref}], Thresholds())
    assert verdict.ok
    assert verdict.metrics["token_cosine_min"] == pytest.approx(1.0, abs=1e-15)


def test_precision_nan_fails():
    ref = randn(5, seed=91)
    cand = ref.clone()
    cand[2, 0] = float("nan")
    verdict = precision([{0: cand}], [{0: ref}], Thresholds())
    assert not verdict.ok
    assert verdict.margin == float("-inf")


# --------------------------------------------------------------------------- finite


def _finite_outputs():
    return [
        {0: randn(4, seed=100), 3: randn(4, seed=101), "logits": randn(4, seed=102, cols=33)},
        {0: randn(6, seed=103), 3: randn(6, seed=104), "logits": randn(6, seed=105, cols=33)},
    ]


def test_finite_clean_passes():
    ref = _finite_outputs()
    verdict = finite({"packed": copy_outputs(ref), "padded": copy_outputs(ref)}, ref)
    assert verdict.ok
    assert verdict.metric == "non_finite" and verdict.value == 0.0 and verdict.threshold == 0.0
    assert verdict.margin == 1.0  # no non-finite value: full headroom, not "at the bound"


def test_finite_nan_where_reference_finite_fails_with_count_and_token():
    ref = _finite_outputs()
    cand = copy_outputs(ref)
    cand[1][3][4, 0] = float("nan")
    cand[1][3][4, 5] = float("inf")
    cand[1][3][5, 1] = float("-inf")
    cand[1][3][2, 2] = float("nan")
    verdict = finite({"packed": copy_outputs(ref), "padded": cand}, ref)
    assert not verdict.ok
    assert verdict.value == 4.0 and verdict.margin == -4.0
    assert verdict.worst == {"layer": 3, "sequence": 1, "token": 2}
    assert verdict.first_layer == 3
    assert verdict.path == "padded"
    assert verdict.violations == [
        "padded: non_finite=4 (needs <= 0) at layer 3, sequence 1, token 2"
    ]


def test_finite_nan_where_reference_is_nan_passes():
    ref = _finite_outputs()
    ref[0][0][1, 1] = float("nan")
    ref[0][0][2, :] = float("inf")
    cand = copy_outputs(ref)
    cand[0][0][2, 3] = float("nan")
    verdict = finite({"packed": cand}, ref)
    assert verdict.ok, verdict.message()
    cand[0][0][3, 0] = float("nan")
    verdict = finite({"packed": cand}, ref)
    assert not verdict.ok
    assert verdict.value == 1.0 and verdict.worst["token"] == 3


def test_finite_logits_is_a_non_int_layer():
    ref = _finite_outputs()
    cand = copy_outputs(ref)
    cand[0]["logits"][3, 30] = float("nan")
    verdict = finite({"packed": cand}, ref)
    assert not verdict.ok
    assert verdict.worst == {"layer": None, "sequence": 0, "token": 3}
    assert verdict.first_layer is None
    assert verdict.path == "packed logits"
    assert verdict.violations == ["packed logits: non_finite=1 (needs <= 0) at sequence 0, token 3"]
    assert "of the packed logits output" in verdict.message()
    cand[1][0][0, 0] = float("nan")
    both = finite({"packed": cand}, ref)
    assert both.first_layer == 0
    assert len(both.violations) == 2


# --------------------------------------------------------------------------- statistics


def _uniform(rows: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Uniform in [-scale, scale]: no value is 3 standard deviations from the mean."""
    g = _gen(seed)
    return (torch.rand(rows, D, generator=g, dtype=F64) * 2 - 1) * scale


def _stats(cand, ref, th=None, layer=6):
    return statistics({"packed": [{layer: cand}]}, [{layer: ref}], th or Thresholds(), layer=layer)


def _metric_violations(verdict, metric):
    return [v for v in verdict.violations if f": {metric}=" in v]


@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
def test_statistics_mean_abs_diff(factor, ok):
    ref = _uniform(10, seed=110)
    cand = ref + 0.01 * factor * signs(10, seed=111)
    verdict = _stats(cand, ref)
    assert verdict.metrics["mean_abs_diff"] == pytest.approx(0.01 * factor, rel=1e-9)
    assert verdict.ok is ok, verdict.message()
    if not ok:
        assert verdict.metric == "mean_abs_diff"
        assert verdict.value == pytest.approx(0.01 * factor, rel=1e-9)
        assert verdict.violations == [
            f"packed: mean_abs_diff={verdict.value:.6g} (needs <= 0.01) at layer 6, sequence 0"
        ]
        assert verdict.first_layer == 6


def test_statistics_mean_abs_diff_exactly_at_threshold_passes():
    ref = torch.zeros(4, D, dtype=F64)
    ref[:, 0] = 1.0
    cand = ref + 0.25 * signs(4, seed=112)  # |diff| is exactly 0.25 everywhere
    th = Thresholds(mean_abs_diff=0.25, std_rel_diff=10.0, l2_norm_rel_diff=10.0,
                    outlier_rel_diff=10.0)
    verdict = _stats(cand, ref, th)
    assert verdict.value == 0.25 and verdict.ok


@pytest.mark.parametrize("scale", [1.05, 0.95])
@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
def test_statistics_std_rel_diff(scale, factor, ok):
    ref = _uniform(10, seed=120, scale=0.05)  # small values: mean_abs_diff stays < 0.01
    eps = (scale - 1) * factor
    cand = ref * (1 + eps)
    th = Thresholds(l2_norm_rel_diff=1.0)  # scaling moves every token norm by eps too
    verdict = _stats(cand, ref, th)
    assert verdict.metrics["std_rel_diff"] == pytest.approx(abs(eps), rel=1e-9)
    assert verdict.ok is ok, verdict.message()
    assert len(_metric_violations(verdict, "std_rel_diff")) == (0 if ok else 1)
    if not ok:
        assert verdict.metric == "std_rel_diff"
    default = _stats(cand, ref)  # default thresholds: the L2 check sees the same eps
    assert len(_metric_violations(default, "l2_norm_rel_diff")) == (0 if ok else 1)


@pytest.mark.parametrize("token", [0, 5, 9])
@pytest.mark.parametrize("scale", [1.05, 0.95])
@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
def test_statistics_l2_norm_rel_diff(token, scale, factor, ok):
    ref = _uniform(10, seed=130, scale=0.05)
    cand = ref.clone()
    cand[token] *= 1 + (scale - 1) * factor
    verdict = _stats(cand, ref)
    assert verdict.metrics["l2_norm_rel_diff"] == pytest.approx(0.05 * factor, rel=1e-9)
    assert verdict.ok is ok, verdict.message()
    if not ok:
        assert verdict.metric == "l2_norm_rel_diff"
        assert verdict.violations == [
            f"packed: l2_norm_rel_diff={verdict.value:.6g} (needs <= 0.05) "
            f"at layer 6, sequence 0"
        ]


def _with_outliers(x: torch.Tensor, count: int, stride: int = 37, start: int = 0) -> torch.Tensor:
    """``x`` with ``count`` values set to 10, far past 3 standard deviations of U(-1, 1)."""
    out = x.clone()
    out.view(-1)[start + torch.arange(count) * stride] = 10.0
    assert metrics.outlier_count(out) == metrics.outlier_count(x) + count
    return out


LOOSE = dict(mean_abs_diff=1.0, std_rel_diff=10.0, l2_norm_rel_diff=10.0)


@pytest.mark.parametrize("extra,ok", [(4, True), (5, False)])
def test_statistics_outlier_rel_diff(extra, ok):
    """Outlier counts relative to max(reference count, 16): 4 / 16 = 0.25 passes, 5 / 16 not."""
    ref = _uniform(40, seed=140)
    assert metrics.outlier_count(ref) == 0
    cand = _with_outliers(ref, extra)
    verdict = _stats(cand, ref, Thresholds(**LOOSE))
    assert verdict.metrics["outlier_rel_diff"] == extra / 16
    assert verdict.ok is ok, verdict.message()
    if not ok:
        assert verdict.metric == "outlier_rel_diff" and verdict.threshold == 0.25


@pytest.mark.parametrize("extra,ok", [(5, True), (6, False)])
def test_statistics_outlier_rel_diff_above_the_floor(extra, ok):
    """A reference with 20 outliers (> 16) is its own scale: 5 / 20 = 0.25 passes, 6 / 20 not."""
    ref = _with_outliers(_uniform(200, seed=141), 20, stride=97)
    assert metrics.outlier_count(ref) == 20
    cand = _with_outliers(ref, extra, stride=89, start=1)
    verdict = _stats(cand, ref, Thresholds(**LOOSE))
    assert verdict.metrics["outlier_rel_diff"] == extra / 20
    assert verdict.ok is ok, verdict.message()


def test_statistics_checks_every_path_and_sequence():
    refs = [{6: _uniform(5, seed=150)}, {6: _uniform(7, seed=151)}]
    good = copy_outputs(refs)
    bad = copy_outputs(refs)
    bad[1][6] = bad[1][6] + 0.02 * signs(7, seed=152)
    verdict = statistics({"packed": good, "padded": bad}, refs, Thresholds(), layer=6)
    assert not verdict.ok
    assert verdict.worst == {"layer": 6, "sequence": 1, "token": None}
    assert verdict.path == "padded"
    assert all(v.startswith("padded: ") for v in verdict.violations)


# --------------------------------------------------------------------------- statistics baseline


def _stats_b(cand, ref, base, th, layer=6):
    return statistics({"packed": [{layer: cand}]}, [{layer: ref}], th, layer=layer,
                      baseline=[{layer: base}])


def _scaled_token(ref: torch.Tensor, token: int, eps: float) -> torch.Tensor:
    out = ref.clone()
    out[token] *= 1 + eps
    return out


# (statistic, reference, perturbation(ref, value) giving the statistic exactly ``value``,
# the baseline's own value: above the fixed threshold; the other checks are loosened).
BASELINE_CASES = {
    "mean_abs_diff": (lambda: _uniform(10, seed=170),
                      lambda r, v: r + v * signs(10, seed=171), 0.02),
    "std_rel_diff": (lambda: _uniform(10, seed=172, scale=0.05),
                     lambda r, v: r * (1 + v), 0.1),
    "l2_norm_rel_diff": (lambda: _uniform(10, seed=173, scale=0.05),
                         lambda r, v: _scaled_token(r, 4, v), 0.1),
}
LOOSE_EXCEPT = {
    name: {**{n: 10.0 for n in (*BASELINE_CASES, "outlier_rel_diff")}, name: value}
    for name, value in Thresholds().as_dict().items() if name in BASELINE_CASES
}


@pytest.mark.parametrize("ratio", [3.0, 1.5])
@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
@pytest.mark.parametrize("name", list(BASELINE_CASES))
def test_statistics_baseline_widens_the_bound(name, factor, ok, ratio):
    """Above its fixed threshold, a statistic passes within statistics_ratio x the baseline's
    own value of it, and fails just past that."""
    th = Thresholds(statistics_ratio=ratio, **LOOSE_EXCEPT[name])
    make_ref, perturb, own = BASELINE_CASES[name]
    fixed = getattr(th, name)
    assert own > fixed
    ref = make_ref()
    base = perturb(ref, own)
    cand = perturb(ref, ratio * own * factor)
    assert _stats(base, ref, th).metrics[name] == pytest.approx(own, rel=1e-9)
    verdict = _stats_b(cand, ref, base, th)
    assert verdict.metrics[name] == pytest.approx(ratio * own * factor, rel=1e-9)
    assert verdict.ok is ok, verdict.message()
    if ok:
        assert verdict.violations == []
    else:
        assert verdict.metric == name
        assert verdict.threshold == pytest.approx(ratio * own, rel=1e-9)
        assert verdict.violations == [
            f"packed: {name}={verdict.value:.6g} (needs <= {verdict.threshold:g}) "
            f"at layer 6, sequence 0"
        ]
        assert verdict.first_layer == 6
    # Without a baseline the fixed threshold applies, and the same candidate fails.
    alone = _stats(cand, ref, th)
    assert not alone.ok
    assert alone.metric == name and alone.threshold == fixed


@pytest.mark.parametrize("factor,ok", [(INSIDE, True), (PAST, False)])
def test_statistics_small_baseline_keeps_the_fixed_threshold(factor, ok):
    """ratio x own below the threshold: the bound is the threshold, not ratio x own."""
    th = Thresholds()
    ref = _uniform(10, seed=180)
    base = ref + 0.001 * signs(10, seed=181)  # 3 x 0.001 < 0.01
    cand = ref + 0.01 * factor * signs(10, seed=182)
    verdict = _stats_b(cand, ref, base, th)
    assert verdict.metrics["mean_abs_diff"] == pytest.approx(0.01 * factor, rel=1e-9)
    assert verdict.ok is ok, verdict.message()
    if not ok:
        assert verdict.metric == "mean_abs_diff" and verdict.threshold == 0.01
    exact = _stats_b(cand, ref, ref.clone(), th)  # a baseline equal to the reference
    assert exact.ok is ok


@pytest.mark.parametrize("extra,ok", [(15, True), (16, False)])
def test_statistics_baseline_outliers_exactly_at_the_bound(extra, ok):
    """Baseline 5 outliers over none: own 5 / 16, bound 3 x 5 / 16 = 15 / 16 exactly."""
    th = Thresholds(**LOOSE)
    ref = _uniform(40, seed=190)
    base = _with_outliers(ref, 5, stride=31)
    cand = _with_outliers(ref, extra)
    verdict = _stats_b(cand, ref, base, th)
    assert verdict.metrics["outlier_rel_diff"] == extra / 16
    assert verdict.ok is ok, verdict.message()
    assert verdict.metric == "outlier_rel_diff"
    assert verdict.threshold == th.statistics_ratio * 5 / 16 == 15 / 16
    assert not _stats(cand, ref, th).ok


def test_statistics_baseline_is_per_sequence():
    """Sequence s is bounded by baseline[s]: a wide baseline of one sequence does not widen
    another's bound."""
    th = Thresholds()
    refs = [{6: _uniform(5, seed=200)}, {6: _uniform(7, seed=201)}]
    base = [{6: refs[0][6] + 0.02 * signs(5, seed=202)}, {6: refs[1][6].clone()}]
    cand = [{6: refs[0][6] + 0.05 * signs(5, seed=203)},
            {6: refs[1][6] + 0.05 * signs(7, seed=204)}]
    verdict = statistics({"packed": cand}, refs, th, layer=6, baseline=base)
    assert not verdict.ok
    assert verdict.worst == {"layer": 6, "sequence": 1, "token": None}
    assert [v for v in verdict.violations if "mean_abs_diff" in v] == [
        "packed: mean_abs_diff=0.05 (needs <= 0.01) at layer 6, sequence 1"
    ]


# --------------------------------------------------------------------------- Thresholds

FIELDS = list(Thresholds().as_dict())


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), -1e-9])
def test_thresholds_reject_non_finite_and_negative(name, bad):
    with pytest.raises(ValueError, match=rf"threshold {name}=.* must be a finite number >= 0"):
        Thresholds(**{name: bad})


@pytest.mark.parametrize("name", [f for f in FIELDS if not f.endswith("_ratio")])
def test_thresholds_accept_zero(name):
    assert getattr(Thresholds(**{name: 0.0}), name) == 0.0


def test_thresholds_defaults():
    assert Thresholds().as_dict() == {
        "sequence_cosine": 0.99,
        "token_cosine": 0.95,
        "error_ratio": 8.0,
        "ulp_floor": 1.0,
        "context_ratio": 8.0,
        "mean_abs_diff": 0.01,
        "std_rel_diff": 0.05,
        "l2_norm_rel_diff": 0.05,
        "outlier_rel_diff": 0.25,
        "statistics_ratio": 3.0,
    }


def test_thresholds_from_mapping():
    th = Thresholds.from_mapping({"token-cosine": "0.9", "error_ratio": 3, "ulp_floor": 2.5})
    assert th.token_cosine == 0.9 and th.error_ratio == 3.0 and th.ulp_floor == 2.5
    assert th.sequence_cosine == 0.99
    assert Thresholds.from_mapping({}) == Thresholds()


def test_thresholds_from_mapping_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"^cfg: unknown threshold 'token_cosin'; known: \["):
        Thresholds.from_mapping({"token_cosin": 0.9}, source="cfg")


@pytest.mark.parametrize("value", ["high", None, [1.0], {}])
def test_thresholds_from_mapping_rejects_non_numbers(value):
    match = r"^thresholds: threshold mean-abs-diff=.* is not a number"
    with pytest.raises(ValueError, match=match):
        Thresholds.from_mapping({"mean-abs-diff": value})


@pytest.mark.parametrize("value", ["nan", "inf", -0.5, "-1"])
def test_thresholds_from_mapping_rejects_bad_values_naming_source_and_field(value):
    with pytest.raises(ValueError, match=r"^pyproject: threshold context_ratio=.* must be"):
        Thresholds.from_mapping({"context-ratio": value}, source="pyproject")


# --------------------------------------------------------------------------- Sample


@pytest.mark.parametrize(
    "sample",
    [
        Sample(("MKV", "A")),
        Sample(("MKV", "A"), target=1),
        Sample(("MKV", "A", "GG"), target=0, variant=("GG", "MKV"), variant_target=1),
        Sample(("MKV",), target=0, variant=("MKV",), variant_target=0),
    ],
)
def test_sample_extra_round_trip(sample):
    extra = sample.extra
    assert Sample.from_extra(list(sample.sequences), extra) == sample
    assert Sample.from_extra(sample.sequences, dict(extra)).extra == extra


def test_sample_extra_form():
    s = Sample(["MKV", "A"], target=0, variant=["A", "MKV"], variant_target=1)
    assert s.sequences == ("MKV", "A") and s.variant == ("A", "MKV")
    assert s.extra == {"target": 0, "variant": ["A", "MKV"], "variant_target": 1}
    assert Sample(("A",)).extra == {}
    assert Sample.from_extra(["A"], None) == Sample(("A",))


def test_sample_from_extra_variant_target_defaults_to_zero():
    s = Sample.from_extra(["MKV", "A"], {"target": 0, "variant": ["MKV", "A"]})
    assert s.variant_target == 0


def test_sample_rejects_variant_without_the_target_sequence():
    with pytest.raises(ValueError, match=r"variant\[1\] is not the target sequence sequences\[0\]"):
        Sample(("MKV", "A"), target=0, variant=("MKV", "A"), variant_target=1)
    with pytest.raises(ValueError, match="is not the target sequence"):
        Sample.from_extra(["MKV", "A"], {"target": 1, "variant": ["MKV", "A"]})


def test_sample_rejects_variant_without_target():
    with pytest.raises(ValueError, match="needs target="):
        Sample(("MKV",), variant=("MKV",), variant_target=0)


@pytest.mark.parametrize("bad", [2, -1, True, 1.0, "0"])
def test_sample_rejects_bad_target(bad):
    with pytest.raises(ValueError, match=rf"target={bad!r} is not an index into 2 sequences"):
        Sample(("MKV", "A"), target=bad)


@pytest.mark.parametrize("bad", [1, -1, False, 0.0])
def test_sample_rejects_bad_variant_target(bad):
    with pytest.raises(ValueError, match=r"variant_target=.* is not an index into 1 sequences"):
        Sample(("MKV", "A"), target=0, variant=("MKV",), variant_target=bad)


def test_sample_from_extra_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown keys \['layout'\]"):
        Sample.from_extra(["A"], {"target": 0, "layout": 1})


def test_sample_variant_without_variant_target_is_a_value_error():
    with pytest.raises(ValueError, match="variant and variant_target come together"):
        Sample(("MKV", "A"), target=0, variant=("MKV",))
    with pytest.raises(ValueError, match="variant and variant_target come together"):
        Sample(("MKV", "A"), target=0, variant_target=5)


# --------------------------------------------------------------------------- zero ratios


@pytest.mark.parametrize("name", ["error_ratio", "context_ratio", "statistics_ratio"])
def test_zero_ratio_is_rejected(name):
    with pytest.raises(ValueError, match=f"{name}=0.0 must be above 0"):
        Thresholds(**{name: 0.0})


# --------------------------------------------------------------------------- Verdict


def test_verdict_message_of_error_ratio_failure():
    th = Thresholds()
    k = th.error_ratio
    verdict, _ = _error_case(torch.float16, th, PAST, seq=0, layer=5)
    msg = verdict.message()
    first = msg.splitlines()[0]
    assert first == (
        f"property 'error_ratio' violated: error_ratio={verdict.value:.6g} against threshold "
        f"{k:g} at layer 5, sequence 0 of the packed float16 rms output"
    )
    assert f"{verdict.value:.6g}" == f"{k * PAST:.6g}"
    assert "first diverging layer: 5" in msg
    assert "  - packed float16 rms: error_ratio=" in msg
    assert "note: statistic: RMS error against the oracle" in msg
    assert f"bound: tested <= {k:g} x (RMS of the same-dtype baselines' errors" in msg


def test_verdict_message_of_token_failure_names_the_token():
    th = Thresholds()
    k = th.context_ratio
    paths, oracle, _ = _context_paths(torch.float16, th, PAST, token=2)
    msg = context(paths, oracle, th, name="isolation", sequence=4).message()
    assert msg.startswith(
        f"property 'isolation' violated: context_ratio={k * PAST:.6g} against threshold {k:g} "
        f"at layer 3, sequence 4, token 2 of the packed float16 token output"
    )
    assert "note: statistic: RMS difference between the two contexts" in msg


def test_verdict_message_of_precision_failure():
    ref = _reference(6, seed=160)
    cand = ref.clone()
    cand[2] = _rotate(ref[2], 0.9, seed=161)
    msg = precision([{4: cand}], [{4: ref}], Thresholds()).message()
    assert msg.splitlines()[0] == (
        "property 'precision' violated: token_cosine_min=0.9 against threshold 0.95 "
        "at layer 4, sequence 0, token 2"
    )
    assert "first diverging layer: 4" in msg


def test_verdict_message_holds_and_truncates():
    ok = Verdict("p", ok=True, metric="m", value=0.5, threshold=2.0)
    assert ok.message() == "property 'p' holds: worst m=0.5 (threshold 2)"
    bad = Verdict("p", ok=False, metric="m", value=3.0, threshold=2.0,
                  violations=[f"v{i}" for i in range(11)], notes=["why"])
    lines = bad.message().splitlines()
    assert lines[0] == "property 'p' violated: m=3 against threshold 2 at the whole output"
    assert lines[1:9] == [f"  - v{i}" for i in range(8)]
    assert lines[9:] == ["  ... and 3 more", "note: why"]


def test_error_ratio_pools_baselines_by_root_mean_square():
    """One baseline exactly on the oracle and one at error e pool to e / sqrt(2)."""
    th = Thresholds()
    oracle = oracle_outputs()
    noisy_one = noisy(oracle, 1e-3, seed=3)
    e = metrics.relative_errors(noisy_one[0][0] - oracle[0][0], oracle[0][0])[0]
    pooled = e / math.sqrt(2)
    atol = th.ulp_floor * torch.finfo(torch.float32).eps
    bound = th.error_ratio * pooled + atol
    for factor, ok in ((1 - 1e-6, True), (1 + 1e-3, False)):
        tested = copy_outputs(oracle)
        tested[0][0] = oracle[0][0] + (noisy_one[0][0] - oracle[0][0]) * (bound * factor / e)
        verdict = error_ratio(
            {"packed float32": (tested, [copy_outputs(oracle), noisy_one], torch.float32)},
            oracle, th,
        )
        rms_failed = any(v.startswith("packed float32 rms:") for v in verdict.violations)
        assert rms_failed is not ok, verdict.message()
