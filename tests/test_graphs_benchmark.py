"""benchmarks/graphs.py captures fair-esm's forward only if its body is that forward."""

from __future__ import annotations

import pytest
import torch

from esmfuzz.models.checkpoint import load_model
from esmfuzz.packing import pad
from tests.conftest import SYNTHETIC_8M, benchmark


@pytest.fixture(scope="module")
def model_and_alphabet(esmfuzz_cache):
    model, alphabet = load_model(SYNTHETIC_8M)
    return model.eval(), alphabet


@pytest.mark.parametrize("sequences", [
    ["MKTAYIAKQR"],
    ["MKTAYIAKQR", "GAVLI<mask>PF", "W"],
    ["ACDEFGHIKL", "MNPQRSTVWY"],
], ids=["one", "padded-with-mask", "same-lengths"])
def test_the_captured_body_is_fair_esms_forward_bit_for_bit(model_and_alphabet, sequences):
    model, alphabet = model_and_alphabet
    graphs = benchmark("graphs")
    tokens = pad(sequences, alphabet)
    layers = [0, 3, model.num_layers]
    with torch.inference_mode():
        expected = model(tokens, repr_layers=layers)["representations"]
        got = graphs.padded_body(model, tokens, layers,
                                 bool(tokens.eq(model.padding_idx).any()))
    assert sorted(got) == sorted(expected)
    assert graphs._same(expected, got) == "identical"


def test_a_difference_is_reported_with_its_size(model_and_alphabet):
    graphs = benchmark("graphs")
    first = {1: torch.tensor([1.0, 2.0])}
    assert graphs._same(first, {1: torch.tensor([1.0, 2.0])}) == "identical"
    assert graphs._same(first, {1: torch.tensor([1.0, 2.2])}) == "differ (max rel 1.0e-01)"


@pytest.mark.gpu
def test_a_captured_forward_replays_the_eager_one_bit_for_bit(model_and_alphabet):
    from esmfuzz.models.loading import device_copy

    model, alphabet = model_and_alphabet
    graphs = benchmark("graphs")
    cuda = device_copy(model, "cuda", torch.float16)
    tokens = pad(["MKTAYIAKQR", "GAVLIPF"], alphabet).to("cuda")
    with torch.inference_mode():
        expected = cuda(tokens, repr_layers=[0, 6])["representations"]
        graph, outputs = graphs.capture(lambda: graphs.padded_body(cuda, tokens, [0, 6], True))
        graph.replay()
        torch.cuda.synchronize()
    assert graphs._same(expected, outputs) == "identical"
