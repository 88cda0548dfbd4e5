"""The FAESM adapter: a strict weight map, fair-esm's layer numbering in float64, esmfuzz's own
oracles on fixed layouts (rare residues and ``<mask>``), and one-line usage errors for a
missing library, a transformers too new for faesm 0.1.1, and a missing flash-attn.

The numerical tests need the faesm extra (faesm 0.1.1 with transformers < 4.54); where it is
absent, or transformers is newer, they skip with the adapter's own reason."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from esmfuzz.forward import ImplementationError, load_implementation

PATHS = ["esmfuzz.adapters.faesm:padded_forward",
         "esmfuzz.adapters.faesm:padded_forward_flash"]
LAYOUTS = [
    ("MKTAYIAKQRQISFVKSHFSRQ", "LLGXZBUO", "A<mask>C"),
    ("<mask>" * 3, "MPEPTIDE" * 12, "W"),
]


@pytest.fixture(scope="module")
def adapter():
    """The adapter, or a skip whose reason is the adapter's own usage error."""
    return pytest.importorskip("esmfuzz.adapters.faesm", exc_type=ImportError)


@pytest.fixture(scope="module")
def fair64(adapter):
    from esmfuzz.models import load_model

    model, alphabet = load_model("synthetic:esm2_t6_8M_UR50D")
    return model.double().eval(), alphabet


def test_every_weight_is_mapped_by_name(adapter, fair64):
    model, _ = fair64
    fa = adapter.faesm_model(model)
    names = adapter.weight_map(model.num_layers)
    assert set(names.values()) == set(fa.state_dict()) - set(adapter._UNREAD)
    assert {k for k in model.state_dict() if not k.startswith("lm_head.")} == set(names)
    assert adapter.faesm_model(model) is fa  # built once per model and path
    assert next(fa.parameters()).dtype == torch.float64
    assert not fa.config.use_fa


@pytest.mark.parametrize("layout", LAYOUTS, ids=["rare", "masks"])
def test_layers_follow_fair_esm_numbering(adapter, fair64, layout):
    """Every layer in float64 against fair-esm's float64 oracle. FAESM (through transformers
    4.x's embeddings) takes the ``<mask>`` ratio of token dropout in float32, which leaves it
    about 1e-7 (relative) from fair-esm (measured up to 4.7e-7 absolute on a sequence of
    ``<mask>`` only); a layer off by one differs by O(1)."""
    from esmfuzz.forward import oracle_forward

    model, alphabet = fair64
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(layout)])
    layers = list(range(model.num_layers + 1))
    with torch.no_grad():
        want = oracle_forward(model, tokens, layers)
    got = adapter.padded_forward(model, tokens, layers)
    real = tokens.ne(alphabet.padding_idx)
    for layer in layers:
        assert got[layer].dtype == torch.float64
        scale = want[layer][real].abs().max()
        assert (got[layer] - want[layer])[real].abs().max() < 1e-6 * scale, layer


@pytest.fixture(scope="module")
def harness(adapter, tmp_path_factory):
    from esmfuzz.config import Config
    from esmfuzz.harness import harness_for

    os.environ.setdefault("ESMFUZZ_CACHE", str(tmp_path_factory.mktemp("esmfuzz-cache")))
    return harness_for(Config(device="cpu", padded_impl=PATHS[0]))


@pytest.mark.parametrize("prop", ["error_ratio", "precision", "finite", "statistics"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["rare", "masks"])
def test_adapter_passes_esmfuzz_oracles(harness, prop, layout):
    from esmfuzz.properties import Sample

    verdict = harness.check(prop, Sample(layout))
    assert verdict.ok, verdict.message()
    assert f"padded {PATHS[0]}" in harness.under_test(prop)


def test_padding_invariance_of_the_adapter(harness):
    from esmfuzz.properties import Sample

    verdict = harness.check("padding_invariance", Sample(LAYOUTS[0], target=2))
    assert verdict.ok, verdict.message()


@pytest.mark.gpu
def test_flash_path_against_fair_esm_in_float16(adapter):
    """FlashAttention takes float16/bfloat16 only: FAESM's flash path against fair-esm in
    float16 on CUDA, every layer, to a float16 tolerance."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    problem = adapter.padded_forward_flash.esmfuzz_requires()
    if problem:
        pytest.skip(problem)
    from esmfuzz.models import load_model

    model, alphabet = load_model("synthetic:esm2_t6_8M_UR50D")
    model = model.half().cuda().eval()
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(LAYOUTS[1])])
    tokens = tokens.cuda()
    layers = list(range(model.num_layers + 1))
    with torch.no_grad():
        want = model(tokens, repr_layers=layers)["representations"]
    got = adapter.padded_forward_flash(model, tokens, layers)
    real = tokens.ne(alphabet.padding_idx)
    for layer in layers:
        diff = (got[layer].float() - want[layer].float())[real].abs().max()
        assert diff < 0.05 * want[layer].float()[real].abs().max(), layer
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        adapter.padded_forward_flash(model.float(), tokens, layers)


def _forget_faesm(monkeypatch):
    for name in [n for n in sys.modules if n == "faesm" or n.startswith("faesm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "esmfuzz.adapters.faesm", raising=False)


def test_missing_library_is_a_one_line_usage_error(monkeypatch):
    _forget_faesm(monkeypatch)
    monkeypatch.setitem(sys.modules, "faesm", None)
    with pytest.raises(ImplementationError) as error:
        load_implementation(PATHS[0], option="--esm-padded-impl")
    message = str(error.value)
    assert "\n" not in message and "pip install 'esmfuzz[faesm]'" in message


def test_transformers_too_new_for_faesm_is_a_usage_error(monkeypatch):
    """faesm 0.1.1 imports ``BaseModelOutputWithPastAndCrossAttentions`` from transformers'
    ``modeling_esm``, which transformers 4.54 removed (as it did FAESM's other 4.x
    internals); the error says so, on one line."""
    pytest.importorskip("faesm", reason="faesm is not installed")
    pytest.importorskip("transformers", reason="transformers is not installed")
    import transformers
    from transformers.models.esm import modeling_esm

    _forget_faesm(monkeypatch)
    monkeypatch.delattr(modeling_esm, "BaseModelOutputWithPastAndCrossAttentions",
                        raising=False)
    monkeypatch.setattr(transformers, "__version__", "4.54.0")
    with pytest.raises(ImplementationError) as error:
        load_implementation(PATHS[0], option="--esm-padded-impl")
    message = str(error.value)
    assert "\n" not in message and "pip install 'esmfuzz[faesm]'" in message
    assert "needs transformers < 4.54, this is 4.54.0" in message


def test_flash_path_without_flash_attn_is_a_usage_error(adapter, monkeypatch):
    monkeypatch.setattr(adapter._faesm, "flash_attn_installed", False)
    with pytest.raises(ImplementationError, match="needs flash-attn"):
        load_implementation(PATHS[1], option="--esm-padded-impl")
    assert load_implementation(PATHS[0]) is adapter.padded_forward


def test_flash_path_refuses_float32_with_a_type_error(adapter, fair64):
    """So that the harness (``paths = auto``) checks only the candidate dtype."""
    model, alphabet = fair64
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        adapter.padded_forward_flash(model, torch.tensor([[0, 5, 2]]), [0])


def test_flash_attn_without_cuda_is_a_usage_error(monkeypatch):
    """faesm's ``fa_utils`` asks for the CUDA device at import when flash_attn is there;
    without CUDA the adapter says so instead of a bare AssertionError."""
    pytest.importorskip("faesm", reason="faesm is not installed")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    _forget_faesm(monkeypatch)
    for name in ["flash_attn", "flash_attn.bert_padding", "flash_attn.flash_attn_interface",
                 "flash_attn.layers", "flash_attn.layers.rotary", "flash_attn.ops",
                 "flash_attn.ops.triton", "flash_attn.ops.triton.rotary"]:
        stub = types.ModuleType(name)
        stub.__getattr__ = lambda attr: (lambda *a, **k: None)
        monkeypatch.setitem(sys.modules, name, stub)
    with pytest.raises(ImplementationError) as error:
        load_implementation(PATHS[0], option="--esm-padded-impl")
    message = str(error.value)
    assert "\n" not in message and "no usable CUDA device" in message
