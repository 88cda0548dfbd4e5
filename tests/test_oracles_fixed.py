"""The fixed-bound oracles of :mod:`esmfuzz.properties` on small hand-built tensors:
``precision`` (cosines), ``finite`` and ``statistics``, each bound checked just inside and
just past it. No model is loaded."""

from __future__ import annotations

import pytest
import torch

from esmfuzz import metrics
from esmfuzz.properties import (
    Thresholds,
    finite,
    precision,
    statistics,
)
from tests.oracle_tensors import (
    F64,
    INSIDE,
    PAST,
    D,
    Deferred,
    _gen,
    copy_outputs,
    randn,
    rotate,
    signs,
    unit_reference,
)

# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    "cos,ok",
    [(0.99 + 1e-6, True), (0.99 - 1e-6, False), (0.995, True), (0.98, False)],
)
def test_precision_sequence_cosine(cos, ok):
    th = Thresholds()
    ref = unit_reference(8, seed=70)
    m = metrics.residue_mean(ref)
    cand = ref.clone()
    cand[1:-1] += rotate(m, cos, seed=71) - m  # residue mean turned by exactly acos(cos)
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
    ref = unit_reference(8, seed=80)
    cand = ref.clone()
    cand[token] = rotate(ref[token], cos, seed=81)
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


def _turned(ref, cos, seed):
    """``ref`` with its residue mean turned by exactly acos(cos)."""
    m = metrics.residue_mean(ref)
    out = ref.clone()
    out[1:-1] += rotate(m, cos, seed=seed) - m
    return out


@pytest.mark.parametrize("cos,ok", [(0.979 + 1e-6, True), (0.979 - 1e-6, False)])
def test_precision_baseline_widens_the_bound(cos, ok):
    """Below 0.99, a sequence cosine passes within precision_ratio x the distance from 1
    of fair-esm's own (0.993: bound 1 - 3 x 0.007 = 0.979), and fails just past that."""
    th = Thresholds()
    ref = unit_reference(8, seed=95)
    own, cand = _turned(ref, 0.993, seed=96), _turned(ref, cos, seed=97)
    verdict = precision([{4: cand}], [{4: ref}], th, baseline=[{4: own}])
    assert verdict.ok is ok, verdict.message()
    assert verdict.metric == "sequence_cosine"
    assert verdict.value == pytest.approx(cos, abs=1e-12)
    assert verdict.threshold == pytest.approx(0.979, abs=1e-12)
    assert not precision([{4: cand}], [{4: ref}], th).ok  # the fixed 0.99 alone


@pytest.mark.parametrize("token", [0, 5])
def test_precision_baseline_widens_the_token_bound(token):
    """The same for the smallest token cosine: fair-esm's own 0.9 gives 1 - 3 x 0.1 = 0.7."""
    th = Thresholds()
    ref = unit_reference(8, seed=98)
    own, cand = ref.clone(), ref.clone()
    own[2] = rotate(ref[2], 0.9, seed=99)
    cand[token] = rotate(ref[token], 0.75, seed=100)
    verdict = precision([{1: cand}], [{1: ref}], th, baseline=[{1: own}])
    assert verdict.ok, verdict.message()
    assert verdict.metric == "token_cosine_min"
    assert verdict.threshold == pytest.approx(0.7, abs=1e-12)
    cand[token] = rotate(ref[token], 0.69, seed=100)
    failed = precision([{1: cand}], [{1: ref}], th, baseline=[{1: own}])
    assert not failed.ok and failed.worst["token"] == token


def test_precision_close_baseline_keeps_the_fixed_threshold():
    """fair-esm's own within (1 - 0.99) / 3 of 1 never makes the bound tighter than 0.99;
    a baseline that is the candidate itself (the default padded forward) passes."""
    th = Thresholds()
    ref = unit_reference(8, seed=101)
    own, cand = _turned(ref, 0.999, seed=102), _turned(ref, 0.991, seed=103)
    verdict = precision([{0: cand}], [{0: ref}], th, baseline=[{0: own}])
    assert verdict.ok and verdict.threshold == 0.99
    low = _turned(ref, 0.97, seed=104)
    assert precision([{0: low}], [{0: ref}], th, baseline=[{0: low.clone()}]).ok
    nan = ref.clone()
    nan[2, 0] = float("nan")
    assert not precision([{0: nan}], [{0: ref}], th, baseline=[{0: nan.clone()}]).ok


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


def test_finite_logits_are_checked_as_a_layer_after_the_last():
    ref = _finite_outputs()
    cand = copy_outputs(ref)
    cand[0]["logits"][3, 30] = float("nan")
    verdict = finite({"packed": cand}, ref)
    assert not verdict.ok
    assert verdict.worst == {"layer": "logits", "sequence": 0, "token": 3}
    assert verdict.first_layer == "logits"
    assert verdict.path == "packed"
    assert verdict.violations == [
        "packed: non_finite=1 (needs <= 0) at layer logits, sequence 0, token 3"]
    cand[0][3][0, 0] = float("nan")
    verdict = finite({"packed": cand}, ref)
    assert verdict.failing_layers() == [3, "logits"] and verdict.first_layer == 3
    assert verdict.layer_pattern() == "layers 3 on of 0-logits (first 3, last logits)"
    cand[1][0][0, 0] = float("nan")
    both = finite({"packed": cand}, ref)
    assert both.first_layer == 0
    assert len(both.violations) == 3


def _lazy(ref):
    """``ref`` behind a callable that counts its calls: the reference's forward."""
    calls = []

    def reference():
        calls.append(1)
        return ref

    return reference, calls


def test_finite_calls_a_lazy_reference_only_where_a_candidate_is_not_finite():
    ref = _finite_outputs()
    reference, calls = _lazy(ref)
    clean = {"packed": copy_outputs(ref), "padded": copy_outputs(ref)}
    lazy = finite(clean, reference)
    assert calls == [] and lazy.ok
    assert vars(lazy) == vars(finite(clean, ref))
    nan_in_reference = _finite_outputs()
    nan_in_reference[0][3][1, 1] = float("nan")
    cand = copy_outputs(nan_in_reference)
    for nan_where_reference_is, expected in ((True, True), (False, False)):
        if not nan_where_reference_is:
            cand[1]["logits"][2, 0] = float("inf")
        reference, calls = _lazy(nan_in_reference)
        lazy = finite({"packed": cand}, reference)
        assert calls == [1] and lazy.ok is expected
        assert vars(lazy) == vars(finite({"packed": cand}, nan_in_reference))


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


def _same(lazy, eager) -> None:
    assert (lazy.ok, lazy.metrics, lazy.violations, lazy.worst) == (
        eager.ok, eager.metrics, eager.violations, eager.worst)


@pytest.mark.parametrize("cos", [0.995, 0.985, 0.97])
def test_precision_calls_a_callable_baseline_only_past_a_fixed_threshold(cos):
    """Passing the fixed 0.99, no baseline forward runs; below it the verdict is the one an
    eager baseline gives (0.985 passes the widened 0.979, 0.97 fails it)."""
    th = Thresholds()
    ref = unit_reference(8, seed=105)
    own, cand = [{4: _turned(ref, 0.993, seed=106)}], [{4: _turned(ref, cos, seed=107)}]
    lazy = Deferred(own)
    verdict = precision(cand, [{4: ref}], th, baseline=lazy)
    eager = precision(cand, [{4: ref}], th, baseline=own)
    assert lazy.calls == (cos < 0.99)
    assert verdict.ok is (cos > 0.979)
    _same(verdict, eager)
    if cos > 0.99:
        assert verdict.threshold == 0.99  # margins of a pass are against the fixed bound


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


@pytest.mark.parametrize("value", [0.005, 0.05, 0.07])
def test_statistics_calls_a_callable_baseline_only_past_a_fixed_threshold(value):
    """Under the fixed 0.01, no baseline forward runs; past it the verdict is the eager
    baseline's (own 0.02: bound 0.06; the other statistics loosened)."""
    th = Thresholds(**LOOSE_EXCEPT["mean_abs_diff"])
    ref = _uniform(6, seed=205)
    base = [{6: ref + 0.02 * signs(6, seed=206)}]
    cand = {"packed": [{6: ref + value * signs(6, seed=207)}]}
    lazy = Deferred(base)
    verdict = statistics(cand, [{6: ref}], th, layer=6, baseline=lazy)
    eager = statistics(cand, [{6: ref}], th, layer=6, baseline=base)
    assert lazy.calls == (value > 0.01)
    assert verdict.ok is (value < 0.06)
    _same(verdict, eager)
