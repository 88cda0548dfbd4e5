"""The forward paths: the reference packed forward against fair-esm's padded forward.

The acceptance rule is esmfuzz's own error-ratio oracle (docs/oracles.md): per sequence
and layer, the packed path's RMS error against the FP64 oracle within k times that of
fair-esm's padded forward at the same dtype, plus one ulp.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esmfuzz.alphabet import split_residues
from esmfuzz.attention import (
    BACKENDS,
    BackendUnavailable,
    backend_status,
    select_backend,
)
from esmfuzz.forward import (
    DEFAULT_PACKED,
    DEFAULT_PADDED,
    ImplementationError,
    length_buckets,
    load_implementation,
    oracle_forward,
    packed_forward,
    padded_forward,
    run_packed,
    run_padded,
)
from esmfuzz.models import model_pair
from esmfuzz.packing import PADDED_BATCH_TOKENS, PackingError, pack
from esmfuzz.properties import Thresholds, error_ratio

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

LETTERS = "ACDEFGHIKLMNPQRSTVWYXBZUO"
MASK = "<mask>"
SPEC = "synthetic:esm2_t6_8M_UR50D"
LAYERS = range(7)  # 0 (embedding) .. 6 (after the final layer norm) of the 8M model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

sequences_strategy = st.lists(
    # <mask> weighted x4 so that masked positions (and the token-dropout ratio) are common
    st.lists(st.sampled_from([*LETTERS, *[MASK] * 4]), min_size=1, max_size=120).map("".join)
    | st.text(alphabet=LETTERS, min_size=1, max_size=120),
    min_size=1,
    max_size=16,
)


def error_ratio_violations(sequences, packed, padded, exact, *, dtype=torch.float32):
    """The error-ratio oracle's violations: packed vs padded, both against ``exact``."""
    for out in exact:
        assert all(reference.dtype == torch.float64 for reference in out.values())
    verdict = error_ratio({f"packed {dtype}": (packed, [padded], dtype)}, exact, Thresholds())
    return verdict.violations


def check_reference_packed(pair, sequences):
    exact = run_padded(oracle_forward, pair.oracle, pair.alphabet, sequences, LAYERS)
    padded = run_padded(padded_forward, pair.reference, pair.alphabet, sequences, LAYERS)
    packed = run_packed(packed_forward, pair.reference, pair.alphabet, sequences, LAYERS,
                        backend="sdpa")
    for pk, seq in zip(packed, sequences, strict=True):
        n = len(pack([seq], pair.alphabet).tokens)
        assert all(v.shape == (n, 320) and v.dtype == torch.float32 for v in pk.values())
    bad = error_ratio_violations(sequences, packed, padded, exact)
    assert not bad, f"packed FP32 breaks the error-ratio rule at {bad[:5]}"


@pytest.fixture(scope="module")
def fp32_pair(pair):
    assert pair.oracle_dtype == torch.float64, pair.oracle_note
    return pair


@settings(max_examples=15, derandomize=True, database=None, deadline=None)
@given(sequences=sequences_strategy)
def test_reference_packed_matches_fair_esm_padded(fp32_pair, sequences):
    check_reference_packed(fp32_pair, sequences)


FIXED_LAYOUTS = {
    "one-residue": ["A"],
    "one-mask": [MASK],
    "all-masks": [MASK * 5, "W"],
    "length-1-among-long": ["M", "ACDEFGHIKLMNPQRSTVWY" * 6, "K", MASK],
    "tile-boundaries": ["L" * 61, "G" * 62, "A" * 63, "S" * 125, "E" * 126],
    "duplicates": ["MKTAYIAKQR", "MKTAYIAKQR", "MKTAYIAKQR"],
    "sixteen": [("ACDEFGHIKLMNPQRSTVWYXBZUO" * 5)[i: i + 1 + 7 * i] for i in range(16)],
    "max-pack": [  # 16 sequences of 120 residues, masks included: the strategy's largest draw
        "".join(split_residues("MKTAYIAK<mask>QRQISFVKSHFSRQLEERLGLIEVQ" * 5)[i: i + 120])
        for i in range(16)
    ],
    "rare-and-masks": ["XBZUO", "M<mask>K<mask>T", "<mask>" * 3 + "XX"],
}


@pytest.mark.parametrize("layout", FIXED_LAYOUTS.values(), ids=FIXED_LAYOUTS.keys())
def test_reference_packed_fixed_layouts(fp32_pair, layout):
    check_reference_packed(fp32_pair, layout)


def leaky_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """A packed path with attention leaking across every boundary (and positions running on)."""
    n = tokens.numel()
    whole = torch.tensor([0, n], dtype=torch.int32, device=tokens.device)
    return packed_forward(model, tokens, whole, n, repr_layers, backend="sdpa")


def no_rescale_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """A packed path that forgets the token-dropout rescale (embeddings 12% too large)."""
    model.token_dropout = False
    try:
        return packed_forward(model, tokens, cu_seqlens, max_seqlen, repr_layers, backend="sdpa")
    finally:
        model.token_dropout = True


@pytest.mark.parametrize(("impl", "layout"), [
    (leaky_packed, ["MKTAYIAKQRQISFVK", "GLVWYE"]),
    (no_rescale_packed, ["MKTAYIAK<mask>QR"]),
])
def test_error_ratio_rule_has_teeth(fp32_pair, impl, layout):
    pair = fp32_pair
    exact = run_padded(oracle_forward, pair.oracle, pair.alphabet, layout, LAYERS)
    padded = run_padded(padded_forward, pair.reference, pair.alphabet, layout, LAYERS)
    packed = run_packed(impl, pair.reference, pair.alphabet, layout, LAYERS)
    bad = error_ratio_violations(layout, packed, padded, exact)
    assert bad
    if impl is no_rescale_packed:
        assert any("at layer 0," in v for v in bad)  # visible at the embedding layer already


def test_packed_outputs_are_per_sequence_independent(fp32_pair):
    pair = fp32_pair
    alone = run_packed(packed_forward, pair.reference, pair.alphabet, ["MKTAYIAK"], [6],
                       backend="sdpa")
    among = run_packed(packed_forward, pair.reference, pair.alphabet,
                       ["GLVW", "MKTAYIAK", "ACDEFGHIKL"], [6], backend="sdpa")
    torch.testing.assert_close(among[1][6], alone[0][6], rtol=1e-5, atol=1e-5)


def test_run_padded_cuts_padding_off(fp32_pair):
    pair = fp32_pair
    out = run_padded(padded_forward, pair.reference, pair.alphabet, ["MK", "ACDEFG", MASK], [0, 6])
    assert [tuple(o[6].shape) for o in out] == [(4, 320), (8, 320), (3, 320)]
    assert set(out[0]) == {0, 6}
    # the masked token is zeroed at layer 0 (token dropout), <cls>/<eos> are not
    assert torch.count_nonzero(out[2][0][1]) == 0 and torch.count_nonzero(out[2][0][0]) > 0


def test_length_buckets_bound_the_padding():
    assert length_buckets([1000, 10, 12, 900, 11]) == [[0, 3], [2, 4, 1]]
    assert length_buckets([5]) == [[0]]
    assert length_buckets([]) == []
    assert length_buckets([3, 3, 3]) == [[0, 1, 2]]
    lengths = [1022, *range(1, 40)]
    for group in length_buckets(lengths):
        padded = max(lengths[i] for i in group) * len(group)
        assert padded <= 1.5 * sum(lengths[i] for i in group) or len(group) == 1


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 1022), max_size=300),
       max_tokens=st.sampled_from([1, 1024, 4096]))
def test_length_buckets_bound_the_batch(lengths, max_tokens):
    """No batch of several sequences holds more than ``max_tokens`` tokens, padding
    included (a crowded pack of 16384 tokens in one float64 batch ran eight H200 workers
    out of memory); every index is in one batch, longest first."""
    groups = length_buckets(lengths, max_tokens=max_tokens)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    assert [i for g in groups for i in g] == order
    for group in groups:
        tokens = len(group) * (max(lengths[i] for i in group) + 2)
        assert tokens <= max_tokens or len(group) == 1
    if len(lengths) * (max(lengths, default=0) + 2) <= PADDED_BATCH_TOKENS:
        assert length_buckets(lengths) == length_buckets(lengths, max_tokens=10**9)


def test_run_padded_bucketed_keeps_the_order_and_the_values(fp32_pair):
    pair = fp32_pair
    layout = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV",
              "GL", "M", "ACDEFGHIKLMNPQRSTVWY", "K" + MASK + "LV"]
    whole = run_padded(padded_forward, pair.reference, pair.alphabet, layout, [0, 6])
    split = run_padded(padded_forward, pair.reference, pair.alphabet, layout, [0, 6],
                       bucketed=True)
    for a, b in zip(whole, split):
        assert a.keys() == b.keys()
        torch.testing.assert_close(b[6], a[6], rtol=1e-5, atol=1e-5)


def test_packed_forward_layer_indexing(fp32_pair):
    """Layer 0 is the embedding output, L the last layer after emb_layer_norm_after."""
    pair = fp32_pair
    batch = pack(["MKTAY", "GL"], pair.alphabet)
    model = pair.reference
    with torch.inference_mode():
        out = packed_forward(model, batch.tokens, batch.cu_seqlens, batch.max_seqlen,
                             [0, 5, 6], backend="sdpa")
        assert set(out) == {0, 5, 6}
        scaled = model.embed_scale * model.embed_tokens(batch.tokens) * (1 - 0.12)
        torch.testing.assert_close(out[0], scaled)
        norm = model.emb_layer_norm_after
        standard = ((out[6] - norm.bias) / norm.weight).double()
        torch.testing.assert_close(standard.mean(-1), torch.zeros(len(batch.tokens),
                                   dtype=torch.float64), rtol=0, atol=1e-4)
        torch.testing.assert_close(standard.var(-1, unbiased=False),
                                   torch.ones(len(batch.tokens), dtype=torch.float64),
                                   rtol=0, atol=1e-3)
        assert not torch.allclose(out[5], out[6], atol=0.1)  # the final norm was applied


# --------------------------------------------------------------------------- backends


def test_select_backend_auto_on_cpu_is_sdpa():
    assert select_backend("auto", "cpu", torch.float32) == "sdpa"
    assert select_backend("auto", torch.device("cpu"), torch.float16) == "sdpa"
    assert select_backend("sdpa", "cpu", torch.float64) == "sdpa"


def test_backend_status_says_why():
    status = backend_status("cpu", torch.float32)
    assert set(status) == set(BACKENDS)
    assert status["sdpa"] is None
    assert "CUDA" in status["torch-varlen"]
    assert status["flash-attn"] is not None


def test_torch_varlen_on_cpu_is_unavailable_saying_why(fp32_pair):
    batch = pack(["MKTAY", "GL"], fp32_pair.alphabet)
    with pytest.raises(BackendUnavailable, match=r"backend='torch-varlen' .*CUDA"):
        packed_forward(fp32_pair.reference, batch.tokens, batch.cu_seqlens, batch.max_seqlen,
                       [6], backend="torch-varlen")


def test_select_backend_dtype_reason_on_cuda_without_touching_cuda():
    """select_backend only inspects the device type: it works with 'cuda' even without CUDA."""
    if backend_status("cuda", torch.bfloat16)["torch-varlen"] is not None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    with pytest.raises(BackendUnavailable, match=r"float16 or bfloat16 only, not float32"):
        select_backend("torch-varlen", "cuda", torch.float32)
    assert select_backend("torch-varlen", "cuda", torch.bfloat16) == "torch-varlen"
    assert select_backend("auto", "cuda", torch.float32) == "sdpa"


def test_select_backend_unknown_name():
    with pytest.raises(BackendUnavailable, match=r"backend='xformers' is not one of auto, "):
        select_backend("xformers", "cpu", torch.float32)


# --------------------------------------------------------------------------- layers, impls


@pytest.mark.parametrize("layers", [[7], [-1], [0, 99], ["6"], [1.0]])
def test_bad_repr_layers(fp32_pair, layers):
    batch = pack(["MKTAY"], fp32_pair.alphabet)
    with pytest.raises(ValueError, match=r"repr_layers=.* not in 0\.\.6"):
        packed_forward(fp32_pair.reference, batch.tokens, batch.cu_seqlens, batch.max_seqlen,
                       layers, backend="sdpa")


def test_packed_forward_checks_the_layout(fp32_pair):
    batch = pack(["MKTAY", "GL"], fp32_pair.alphabet)
    with pytest.raises(PackingError, match="max_seqlen=3 is smaller"):
        packed_forward(fp32_pair.reference, batch.tokens, batch.cu_seqlens, 3, [6], backend="sdpa")


def test_load_implementation_defaults():
    assert load_implementation(DEFAULT_PADDED) is padded_forward
    assert load_implementation(DEFAULT_PACKED) is packed_forward
    assert load_implementation(leaky_packed) is leaky_packed
    assert load_implementation("esmfuzz.forward:ImplementationError") is ImplementationError


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nocolon", r"implementation='nocolon' must have the form 'module:function'"),
        (":fn", r"must have the form"),
        ("esmfuzz.forward:", r"must have the form"),
        ("nosuchmodule:fn", r"cannot import 'nosuchmodule'"),
        ("esmfuzz.forward:nosuch", r"'esmfuzz.forward' has no 'nosuch'"),
        ("esmfuzz.forward:DEFAULT_PACKED", r"is a str, not callable"),
    ],
)
def test_load_implementation_errors(spec, match):
    with pytest.raises(ImplementationError, match=match):
        load_implementation(spec)


def test_load_implementation_names_the_option():
    with pytest.raises(ImplementationError, match=r"--esm-packed-impl='nocolon'"):
        load_implementation("nocolon", option="--esm-packed-impl")


def wrong_width_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    return {layer: torch.zeros(tokens.numel(), model.embed_dim + 1) for layer in repr_layers}


def padded_shaped_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    return {layer: torch.zeros(1, tokens.numel(), model.embed_dim) for layer in repr_layers}


def missing_layer_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    return {0: torch.zeros(tokens.numel(), model.embed_dim)}


def list_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    return [torch.zeros(tokens.numel(), model.embed_dim)]


def array_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    return {layer: torch.zeros(tokens.numel(), model.embed_dim).numpy() for layer in repr_layers}


def unpadded_padded(model, tokens, repr_layers):
    return {layer: torch.zeros(tokens.shape[0], tokens.shape[1] - 1, model.embed_dim)
            for layer in repr_layers}


@pytest.mark.parametrize(
    ("impl", "match"),
    [
        (wrong_width_packed, r"packed implementation .*wrong_width_packed returned \(13, 321\) "
                             r"for layer 0, expected shape \(13, 320\)"),
        (padded_shaped_packed, r"returned \(1, 13, 320\) for layer 0, expected shape \(13, 320\)"),
        (missing_layer_packed, r"returned layers \[0\], missing requested layer 6"),
        (list_packed, r"returned list, not a dict of layer -> tensor"),
        (array_packed, r"returned ndarray for layer 0"),
    ],
)
def test_run_packed_rejects_wrong_outputs(fp32_pair, impl, match):
    with pytest.raises(ImplementationError, match=match):
        run_packed(impl, fp32_pair.reference, fp32_pair.alphabet, ["MKTAY", "GLVW"], [0, 6])


def test_run_padded_rejects_wrong_outputs(fp32_pair):
    with pytest.raises(ImplementationError, match=r"padded implementation .*unpadded_padded "
                                                  r"returned \(2, 6, 320\)"):
        run_padded(unpadded_padded, fp32_pair.reference, fp32_pair.alphabet, ["MKTAY", "GL"], [6])


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_varlen_low_precision_meets_error_ratio(esmfuzz_cache, dtype):
    try:
        pair = model_pair(SPEC, device="cuda", dtype=dtype)
        select_backend("torch-varlen", pair.device, pair.dtype)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    layouts = [
        ["A"],
        ["M", "ACDEFGHIKLMNPQRSTVWY" * 6, "K", MASK],
        ["L" * 61, "G" * 62, "A" * 63, "S" * 125, "E" * 126],
        ["MKTAYIAK<mask>QR" * 10, "XBZUO", MASK * 4 + "W"],
    ]
    for layout in layouts:
        exact = run_padded(oracle_forward, pair.oracle, pair.alphabet, layout, LAYERS)
        padded = run_padded(padded_forward, pair.candidate, pair.alphabet, layout, LAYERS)
        packed = run_packed(packed_forward, pair.candidate, pair.alphabet, layout, LAYERS,
                            backend="torch-varlen")
        assert all(v.dtype == pair.dtype for out in packed for v in out.values())
        bad = error_ratio_violations(layout, packed, padded, exact, dtype=pair.dtype)
        assert not bad, f"torch-varlen {dtype} breaks the error-ratio rule at {bad[:5]}"


@pytest.mark.gpu
@needs_cuda
def test_reference_packed_on_cuda_matches_fair_esm_padded(esmfuzz_cache):
    pair = model_pair(SPEC, device="cuda", dtype="float16")
    for layout in FIXED_LAYOUTS.values():
        check_reference_packed(pair, layout)
