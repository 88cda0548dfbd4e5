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

import pytest
import torch

from esmfuzz import metrics
from esmfuzz.config import dtype_name
from esmfuzz.properties import (
    Thresholds,
    context,
    error_ratio,
    precision,
)
from tests.oracle_tensors import (
    F64,
    INSIDE,
    PAST,
    D,
    Deferred,
    activations,
    atol_of,
    copy_outputs,
    noisy,
    one_token,
    oracle_outputs,
    place,
    randn,
    rms,
    rotate,
    signs,
    token_rms,
    unit_reference,
)

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


# --------------------------------------------------------------------------- messages


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
    ref = unit_reference(6, seed=160)
    cand = ref.clone()
    cand[2] = rotate(ref[2], 0.9, seed=161)
    msg = precision([{4: cand}], [{4: ref}], Thresholds()).message()
    assert msg.splitlines()[0] == (
        "property 'precision' violated: token_cosine_min=0.9 against threshold 0.95 "
        "at layer 4, sequence 0, token 2"
    )
    assert "first diverging layer: 4" in msg


def test_batched_relative_errors_equal_each_difference_alone(monkeypatch):
    """Stacked, chunked or alone, every difference's statistics are the same numbers, with
    a NaN and an infinity among them."""
    lengths = [3, 1, 6, 2]
    rows = sum(lengths)
    refs = [randn(rows, seed=10), randn(rows, seed=11)]
    weights = [metrics.outlier_weights(r) for r in refs]
    minuends = [randn(rows, seed=20 + i).to(torch.float16) for i in range(5)]
    minuends[2][4, 1] = math.nan
    minuends[3][9, 0] = math.inf
    subtrahends = [refs[0], refs[1], refs[0], randn(rows, seed=30), refs[1]]
    which = [0, 1, 0, 0, 1]
    alone = [metrics.segment_relative_errors(m.double() - s, refs[i], lengths,
                                             weights=weights[i])
             for m, s, i in zip(minuends, subtrahends, which)]
    differences = [([m[:5], m[5:]], s, i) for m, s, i in zip(minuends, subtrahends, which)]
    for limit in (metrics.BATCH_ELEMENTS, 2 * rows * 8, 1):
        monkeypatch.setattr(metrics, "BATCH_ELEMENTS", limit)
        batched = metrics.batched_relative_errors(differences, refs, weights, lengths)
        for got, want in zip(batched, alone):
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_batched_relative_errors_refuse_outputs_of_the_wrong_length():
    ref = randn(5, seed=1)
    with pytest.raises(ValueError, match="4 rows for 1 difference"):
        metrics.batched_relative_errors([([randn(4, seed=2)], ref, 0)], [ref],
                                        [metrics.outlier_weights(ref)], [5])


# --------------------------------------------------------------------------- deferred baselines


@pytest.mark.parametrize("scale,calls,ok", [(3.0, 0, True), (6.5, 1, True), (10.0, 1, False)])
def test_error_ratio_calls_a_deferred_baseline_only_where_the_bound_needs_it(scale, calls, ok):
    """Two baselines of about equal error ``s``: the one at hand bounds the pooled error from
    below by ``s / sqrt(2)``, so a tested error of ``3 s`` passes without the deferred one
    (ratio at most 4.3 of 8), ``6.5 s`` needs it (at most 9.2 without it, 6.5 with it), and
    ``10 s`` fails with every value of the eager verdict."""
    th = Thresholds()
    oracle = oracle_outputs()
    first, second = noisy(oracle, 1e-3, seed=301), noisy(oracle, 1e-3, seed=302)
    tested = noisy(oracle, scale * 1e-3, seed=303)
    deferred = Deferred(first)
    lazy = error_ratio({"packed float32": (tested, [deferred, second], torch.float32)},
                       oracle, th)
    eager = error_ratio({"packed float32": (tested, [first, second], torch.float32)},
                        oracle, th)
    _deferred_agrees(lazy, eager, deferred, calls, ok, th.error_ratio)
    if not calls:
        assert lazy.notes[-1].startswith("passed without fair-esm's padded baseline")


def test_error_ratio_with_nothing_at_hand_computes_every_baseline():
    th = Thresholds()
    oracle = oracle_outputs()
    base = noisy(oracle, 1e-3, seed=311)
    deferred = Deferred(base)
    tested = noisy(oracle, 1e-3, seed=312)
    lazy = error_ratio({"p": (tested, [deferred], torch.float32)}, oracle, th)
    assert deferred.calls == 1
    assert vars(lazy) == vars(error_ratio({"p": (tested, [base], torch.float32)}, oracle, th))


@pytest.mark.parametrize("scale,calls,ok", [(2.0, 0, True), (6.0, 1, True), (12.0, 1, False)])
def test_context_calls_a_deferred_baseline_only_where_the_bound_needs_it(scale, calls, ok):
    """Three baselines of about equal error ``s``, one deferred: the two at hand bound the
    pooled error from below by ``s sqrt(2/3)``."""
    th = Thresholds()
    oracle = oracle_outputs()[1]
    bases = [noisy([oracle], 1e-3, seed=320 + i)[0] for i in range(3)]
    first = noisy([oracle], 1e-3, seed=330)[0]
    second = {layer: t + (scale * 1e-3) * randn(t.shape[0], seed=331 + layer, cols=t.shape[1])
              for layer, t in first.items()}
    deferred = Deferred(bases[2])
    lazy = context({"packed float32": (first, second, [*bases[:2], deferred], torch.float32)},
                   oracle, th, name="isolation", sequence=1)
    eager = context({"packed float32": (first, second, bases, torch.float32)},
                    oracle, th, name="isolation", sequence=1)
    _deferred_agrees(lazy, eager, deferred, calls, ok, th.context_ratio)


def _deferred_agrees(lazy, eager, deferred, calls: int, ok: bool, k: float) -> None:
    """The deferred baseline ran ``calls`` times and the verdicts agree: a verdict that
    computed it is the eager one in every field; one that did not has the same errors, and
    its ratio, an upper bound, lies between the eager one and ``k``."""
    assert deferred.calls == calls
    assert lazy.ok is eager.ok is ok
    if calls:
        assert vars(lazy) == vars(eager)
        return
    ratio = eager.metric
    assert lazy.metrics[ratio] >= eager.metrics[ratio]
    assert ({key: v for key, v in lazy.metrics.items() if key != ratio}
            == {key: v for key, v in eager.metrics.items() if key != ratio})
    assert lazy.violations == eager.violations == []
    assert eager.value <= lazy.value <= k
