"""Thresholds, samples and verdict messages of :mod:`esmfuzz.properties`: validation that
names the bad input, and messages that state the statistic and the bound."""

from __future__ import annotations

import math

import pytest
import torch

from esmfuzz import metrics
from esmfuzz.properties import (
    Sample,
    Thresholds,
    Verdict,
    error_ratio,
)
from tests.oracle_tensors import (
    copy_outputs,
    noisy,
    oracle_outputs,
)

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
        "precision_ratio": 3.0,
        "embedding_cosine": 0.99,
        "logit_drift": 2.0,
        "log_prob_drift": 1.0,
        "rank_agreement": 0.9,
        "context_drift": 0.1,
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


@pytest.mark.parametrize("name", ["error_ratio", "context_ratio", "statistics_ratio",
                                  "precision_ratio"])
def test_zero_ratio_is_rejected(name):
    with pytest.raises(ValueError, match=f"{name}=0.0 must be above 0"):
        Thresholds(**{name: 0.0})


# --------------------------------------------------------------------------- Verdict


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
