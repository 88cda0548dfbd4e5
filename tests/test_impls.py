"""The packed controls of :mod:`tests.impls.packed` against fair-esm's padded forward.

A false-positive control must be right (FP64 agreement to rounding, FP32 to ~1e-4 of the
layer's scale) and compute differently (not bit-identical to the padded FP32 baseline).

fair-esm's softmax is FP32 whatever the model dtype (``utils_softmax``), which leaves its
FP64 forward ~1e-7 off exact; the FP64 baseline here is esmfuzz's oracle forward, which
runs it with an FP64 softmax.
"""

from __future__ import annotations

import random

import pytest
import torch

from esmfuzz.forward import (
    load_implementation,
    oracle_forward,
    padded_forward,
    run_packed,
    run_padded,
)
from esmfuzz.packing import pack
from tests.impls.packed import CONTROLS, leaky_packed

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

LAYERS = range(7)


def _protein(rng: random.Random, residues: int, masks: int = 0) -> str:
    letters = [rng.choice("LAGVSERTIDPKQNFYMHWC") for _ in range(residues)]
    for i in rng.sample(range(residues), masks):
        letters[i] = "<mask>"
    return "".join(letters)


_RNG = random.Random(0)
SEQUENCES = [
    "MK<mask>TAY",
    "X",
    "BZUOXMKTAYIAKQRQISFVKSHFSRQ",
    _protein(_RNG, 90, masks=9),
    "<mask>",
    _protein(_RNG, 300, masks=3),
    _protein(_RNG, 600),
    _protein(_RNG, 280, masks=40),
]
"""1,292 tokens: the 1024-query chunk boundary falls inside the 600-residue sequence."""


@pytest.fixture(scope="module")
def padded(pair):
    """fair-esm's padded outputs of ``SEQUENCES`` at FP32, and at FP64 with an FP64 softmax."""
    return {
        model.embed_tokens.weight.dtype: run_padded(
            forward, model, pair.alphabet, SEQUENCES, LAYERS, bucketed=True
        )
        for model, forward in ((pair.reference, padded_forward), (pair.oracle, oracle_forward))
    }


def _relative_errors(got, want):
    """Per layer, max |got - want| over the pack divided by max |want|."""
    out = {}
    for layer in LAYERS:
        g = torch.cat([row[layer] for row in got])
        w = torch.cat([row[layer] for row in want])
        assert g.shape == w.shape and g.dtype == w.dtype
        out[layer] = ((g - w).abs().max() / w.abs().max()).item()
    return out


def test_pack_layout(pair):
    batch = pack(SEQUENCES, pair.alphabet)
    cu = batch.cu_seqlens.tolist()
    assert cu[-1] > 1100 and 1024 not in cu
    assert batch.max_seqlen > 64 and min(batch.lengths) == 3


@pytest.mark.parametrize("spec", CONTROLS)
def test_control_fp32_close_but_not_identical(pair, padded, spec):
    got = run_packed(load_implementation(spec), pair.reference, pair.alphabet, SEQUENCES, LAYERS)
    errors = _relative_errors(got, padded[torch.float32])
    assert max(errors.values()) < 1e-4, errors
    assert max(errors.values()) > 0, f"{spec} is bit-identical to the padded baseline"


@pytest.mark.parametrize("spec", CONTROLS)
def test_control_fp64_exact(pair, padded, spec):
    got = run_packed(load_implementation(spec), pair.oracle, pair.alphabet, SEQUENCES, LAYERS)
    errors = _relative_errors(got, padded[torch.float64])
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize("spec", CONTROLS)
def test_control_fp16_smoke(pair, padded, spec):
    got = run_packed(load_implementation(spec), pair.candidate, pair.alphabet, SEQUENCES, [6])
    g = torch.cat([row[6] for row in got]).float()
    w = torch.cat([row[6] for row in padded[torch.float32]])
    assert torch.isfinite(g).all()
    assert torch.nn.functional.cosine_similarity(g, w, dim=-1).min() > 0.999


def test_leaky_packed_still_leaks(pair, padded):
    got = run_packed(leaky_packed, pair.reference, pair.alphabet, SEQUENCES, LAYERS)
    assert _relative_errors(got, padded[torch.float32])[6] > 1e-2
