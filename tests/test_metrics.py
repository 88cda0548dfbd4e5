"""Comparison metrics on small hand-computed tensors; everything in float64."""

from __future__ import annotations

import math

import pytest
import torch

from esmfuzz.metrics import (
    l2_norm_rel_diff,
    max_abs_error,
    mean_abs_diff,
    non_finite,
    outlier_count,
    residue_mean,
    sequence_cosine,
    std_rel_diff,
    summary,
    token_cosine,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ]),
]


def t(values, dtype=torch.float32, device="cpu"):
    return torch.tensor(values, dtype=dtype, device=device)


# --------------------------------------------------------------------------- cosine


@pytest.mark.parametrize("device", DEVICES)
def test_token_cosine_hand_computed(device):
    a = t([[1, 0], [0, 0], [3, 4], [1, 1], [2, 0]], device=device)
    b = t([[5, 0], [0, 0], [-4, 3], [-1, -1], [0, 0]], device=device)
    cos = token_cosine(a, b)
    assert cos.dtype == torch.float64 and cos.shape == (5,) and cos.device.type == device
    # same direction, both zero (a <mask> at layer 0), orthogonal, opposite, one zero
    assert cos.tolist() == [1.0, 1.0, 0.0, pytest.approx(-1.0, abs=1e-15), 0.0]


def test_token_cosine_identical_is_one():
    x = torch.randn(7, 320, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(token_cosine(x, x), torch.ones(7, dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_token_cosine_all_zero_vectors_is_one():
    zeros = torch.zeros(3, 8)
    assert token_cosine(zeros, zeros).tolist() == [1.0, 1.0, 1.0]


def test_token_cosine_orthogonal_is_zero():
    eye = torch.eye(4)
    assert token_cosine(eye, eye.roll(1, 0)).tolist() == [0.0] * 4


def test_token_cosine_scale_invariant():
    a = t([[1.0, 2.0, 3.0]])
    assert token_cosine(a, 1000 * a).item() == pytest.approx(1.0, abs=1e-15)


# --------------------------------------------------------------------------- residue mean


def test_residue_mean_excludes_cls_and_eos():
    x = t([[100, -100], [1, 2], [3, 4], [-50, 70]])  # <cls>, two residues, <eos>
    mean = residue_mean(x)
    assert mean.dtype == torch.float64
    assert mean.tolist() == [2.0, 3.0]


def test_residue_mean_single_residue():
    x = t([[9, 9], [1, 5], [9, 9]])
    assert residue_mean(x).tolist() == [1.0, 5.0]


def test_sequence_cosine_uses_residue_means():
    ref = t([[100, 0], [1, 0], [1, 0], [0, 100]])
    # same residues, wildly different <cls>/<eos>: still identical embeddings
    cand = t([[0, -7], [1, 0], [1, 0], [-3, 0]])
    assert sequence_cosine(cand, ref) == 1.0
    orth = t([[0, 0], [0, 1], [0, 2], [0, 0]])
    assert sequence_cosine(orth, ref) == 0.0


# --------------------------------------------------------------------------- differences


def test_max_abs_error_and_mean_abs_diff():
    cand = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    ref = t([[1.0, 2.5, 0.0], [4.0, 5.0, 7.0]])
    assert max_abs_error(cand, ref) == 3.0
    assert mean_abs_diff(cand, ref) == pytest.approx((0.5 + 3.0 + 1.0) / 6, rel=1e-15)
    assert isinstance(max_abs_error(cand, ref), float)
    assert max_abs_error(ref, ref) == 0.0 and mean_abs_diff(ref, ref) == 0.0


def test_std_rel_diff():
    ref = t([[0.0, 2.0], [4.0, 6.0]])
    assert std_rel_diff(3 * ref, ref) == pytest.approx(2.0, rel=1e-14)
    assert std_rel_diff(ref + 10, ref) == pytest.approx(0.0, abs=1e-14)  # shift-invariant
    assert std_rel_diff(ref / 2, ref) == pytest.approx(0.5, rel=1e-14)


def test_l2_norm_rel_diff_is_the_largest_per_token():
    cand = t([[3, 4], [0, 1], [0, 0]])
    ref = t([[3, 4], [0, 2], [0, 0]])
    # norms 5 / 5 -> 0, 1 / 2 -> 0.5, 0 / 0 -> 0 (no division by zero)
    assert l2_norm_rel_diff(cand, ref) == 0.5
    assert l2_norm_rel_diff(ref, ref) == 0.0


def test_outlier_count():
    x = t([0.0] * 99 + [100.0])  # mean 1, sample std 10: only 100 is beyond 3 sigma
    assert outlier_count(x) == 1
    assert outlier_count(x, z=10.0) == 0
    assert outlier_count(t([[1.0, -1.0], [1.0, -1.0]])) == 0


def test_non_finite():
    x = t([1.0, math.nan, math.inf, -math.inf, 0.0, -0.0])
    assert non_finite(x) == 3
    assert non_finite(x.half()) == 3
    assert non_finite(torch.zeros(2, 3)) == 0
    assert non_finite(t([65504.0], dtype=torch.float16) * 2) == 1  # FP16 overflow is counted


# --------------------------------------------------------------------------- float64


def test_metrics_compute_in_float64_from_float16_inputs():
    big = t([60000.0], dtype=torch.float16)  # exact in FP16 (max 65504)
    assert torch.isinf(big - (-big)).all()  # the FP16 difference overflows...
    assert max_abs_error(big, -big) == 120000.0  # ...the metric's does not
    assert mean_abs_diff(big, -big) == 120000.0

    v = torch.full((1, 4), 300.0, dtype=torch.float16)
    assert torch.isinf((v * v).sum(-1)).all()  # an FP16 dot product would overflow
    assert token_cosine(v, v).tolist() == [1.0]
    assert l2_norm_rel_diff(v, v) == 0.0

    one_ulp = t([[1.0 + 2**-10, 1.0]], dtype=torch.float16)
    ref = t([[1.0, 1.0]], dtype=torch.float16)
    assert max_abs_error(one_ulp, ref) == 2**-10
    # 1 - cos is ~1.2e-7, far below FP16's resolution: only float64 sees it
    assert 0 < 1 - token_cosine(one_ulp, ref).item() < 1e-6


def test_metrics_accept_bfloat16_and_inference_tensors():
    with torch.inference_mode():
        a = torch.ones(4, 8, dtype=torch.bfloat16)
        b = a * 2
        assert sequence_cosine(a, b) == pytest.approx(1.0, abs=1e-15)
        assert max_abs_error(a, b) == 1.0


def test_summary_keys_and_types():
    ref = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    cand = ref + 0.01
    out = summary(cand.half(), ref)
    assert set(out) == {
        "sequence_cosine", "token_cosine_min", "token_cosine_argmin", "max_abs_error",
        "mean_abs_diff", "std_rel_diff", "l2_norm_rel_diff", "outliers_candidate",
        "outliers_reference", "non_finite",
    }
    assert isinstance(out["token_cosine_argmin"], int) and 0 <= out["token_cosine_argmin"] < 6
    assert out["non_finite"] == 0
    assert out["max_abs_error"] == pytest.approx(0.01, abs=2e-3)
    assert out["sequence_cosine"] > 0.999


def test_a_zero_rounded_one_ulp_away_is_still_zero():
    """``<mask>`` rows are exactly zero at layer 0; a kernel that rounds them one ulp off is
    right, one that leaves the mask embedding there is not."""
    ref = torch.zeros(3, 8, dtype=torch.float32)
    ref[0] = ref[2] = 1.0  # <cls> and <eos>
    jittered = ref.half().clone()
    jittered[1] = torch.nextafter(jittered[1], torch.full_like(jittered[1], 1.0))
    assert token_cosine(jittered, ref).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert sequence_cosine(jittered, ref) == 1.0
    unmasked = jittered.clone()
    unmasked[1] = 0.5
    assert token_cosine(unmasked, ref)[1] == 0.0 and sequence_cosine(unmasked, ref) == 0.0
