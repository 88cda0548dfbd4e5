"""The esm-efficient (``esme``) adapter: a strict weight map, fair-esm's layer numbering in
float64 on fixed layouts (rare residues and ``<mask>``), packed (``cu_seqlens``) and padded,
esmfuzz's own oracles, the token-dropout divergence of esme 0.0.9, and one-line usage errors.

esme imports flash_attn, which needs CUDA. Where the real flash_attn is absent, the
``adapter`` fixture puts ``tests/support/flash_attn_standin`` (a CPU test double: exact
per-sequence SDPA, not FlashAttention) on ``sys.path`` for this module only; these tests then
check the adapter's glue and esme's code around the kernel, never the kernel. The kernel
itself is checked by the ``gpu`` test. Where esme is not installed, they skip with the
adapter's own reason."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esmfuzz.forward import ImplementationError, load_implementation, run_packed, run_padded

MODULE = "esmfuzz.adapters.esm_efficient"
STANDIN = Path(__file__).parent / "support" / "flash_attn_standin"
LAYOUTS = [
    ("MKTAYIAKQRQISFVKSHFSRQ", "LLGXZBUO", "A<mask>C"),
    ("<mask>" * 3, "MPEPTIDE" * 12, "W"),
]
MASK_RATIO_TRAIN = 0.15 * 0.8


def _ours(name: str) -> bool:
    return (name in ("esme", "flash_attn", MODULE)
            or name.startswith(("esme.", "flash_attn.")))


def _real_flash_attn() -> bool:
    spec = importlib.util.find_spec("flash_attn") if "flash_attn" not in sys.modules else None
    loaded = sys.modules.get("flash_attn")
    if loaded is not None:
        return not getattr(loaded, "ESMFUZZ_STANDIN", False)
    return spec is not None and STANDIN not in Path(spec.origin or "").parents


@pytest.fixture(scope="module")
def adapter():
    """The adapter, on the CPU stand-in for flash_attn where the real one is absent (for
    this module only: its modules leave ``sys.modules`` afterwards); or a skip whose reason
    is the adapter's own usage error."""
    if importlib.util.find_spec("esme") is None:
        pytest.skip("esm-efficient is not installed: pip install 'esmfuzz[esm-efficient]'")
    patch = pytest.MonkeyPatch()
    before = {name for name in sys.modules if _ours(name)}
    if not _real_flash_attn():
        for name in before:
            patch.delitem(sys.modules, name)
        patch.syspath_prepend(str(STANDIN))
    try:
        module = importlib.import_module(MODULE)
    except ImportError as exc:
        patch.undo()
        pytest.skip(str(exc))
    yield module
    for name in [name for name in sys.modules if _ours(name) and name not in before]:
        del sys.modules[name]
    patch.undo()


@pytest.fixture(scope="module")
def standin(adapter):
    if not adapter.on_standin():
        pytest.skip(f"esme runs on {adapter.kernel()}; the CPU tests need the stand-in")
    return adapter


@pytest.fixture(scope="module")
def fair64(esmfuzz_cache):
    from esmfuzz.models import load_model

    model, alphabet = load_model("synthetic:esm2_t6_8M_UR50D")
    return model.double().eval(), alphabet


def _rescaled_embedding(plain):
    """esme's ``ESM2.embedding`` with ESM-2's token-dropout rescale added:
    x * (1 - 0.15 * 0.8) / (1 - <mask> ratio), the ratio per sequence (per ``cu_seqlens``
    segment for a packed stream, per row without padding for a padded batch)."""

    def embedding(self, tokens, pad_args=None):
        x = plain(self, tokens, pad_args)
        is_mask = tokens.eq(32).to(x.dtype)
        if pad_args is None:
            ratio = is_mask.sum(-1) / tokens.ne(1).sum(-1)
            return x * (1 - MASK_RATIO_TRAIN) / (1 - ratio)[:, None, None]
        lengths = pad_args[0].diff().long()
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths)
        masked = x.new_zeros(len(lengths)).index_add_(0, segment, is_mask)
        return x * (1 - MASK_RATIO_TRAIN) / (1 - masked / lengths)[segment, None]

    return embedding


@pytest.fixture
def with_rescale(adapter, monkeypatch):
    """Every esme ``ESM2`` with the token-dropout rescale it omits (see the divergence test)."""
    cls = adapter._EsmeESM2
    monkeypatch.setattr(cls, "embedding", _rescaled_embedding(cls.embedding))


def test_every_weight_is_mapped_by_name(adapter, fair64):
    model, _ = fair64
    es = adapter.esme_model(model)
    names = adapter.weight_map(model.num_layers)
    assert set(names.values()) == set(es.state_dict())
    fair = {k for k in model.state_dict()
            if not k.startswith("contact_head.") and not k.endswith("rot_emb.inv_freq")}
    assert fair == set(names)
    assert adapter.esme_model(model) is es  # built once per model
    assert es.embed_tokens.weight.dtype == torch.float64
    for name, ours in names.items():
        assert torch.equal(es.state_dict()[ours], model.state_dict()[name]), name


def test_load_is_strict(adapter, fair64, monkeypatch):
    """A fair-esm weight the map leaves out, or a map entry esme does not hold, is an error."""
    import copy

    model = copy.deepcopy(fair64[0])  # a model the adapter has not built yet
    monkeypatch.delitem(adapter._TOP, "lm_head.bias")
    with pytest.raises(RuntimeError, match="fair-esm weights with no esme name.*lm_head.bias"):
        adapter.esme_model(model)
    monkeypatch.setitem(adapter._TOP, "lm_head.bias", "lm_head.bias")  # esme: lm_head.final.bias
    with pytest.raises(RuntimeError, match="esme weights the map does not fill"):
        adapter.esme_model(model)


@pytest.mark.parametrize("kind", ["packed", "padded"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["rare", "masks"])
def test_layers_follow_fair_esm_with_the_rescale(standin, fair64, with_rescale, kind, layout):
    """Every layer in float64 against fair-esm's float64 oracle, once esme's embedding has the
    token-dropout rescale it omits: then the weight map, the layer numbering and the
    ``cu_seqlens`` handling leave esme within 1e-6 of fair-esm (measured 1.6e-7; esme takes
    rotary angles in float32). A layer off by one, a weight in the wrong place or a leak
    across a boundary differs by O(0.1)."""
    from esmfuzz.forward import oracle_forward

    model, alphabet = fair64
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(layout)])
    layers = list(range(model.num_layers + 1))
    with torch.no_grad():
        want = oracle_forward(model, tokens, layers)
    impl = standin.packed_forward_standin if kind == "packed" else standin.padded_forward_standin
    run = run_packed if kind == "packed" else run_padded
    got = run(impl, model, alphabet, layout, layers)
    for i, row in enumerate(got):
        for layer in layers:
            expected = want[layer][i, :len(row[layer])]
            assert row[layer].dtype == torch.float64
            assert (row[layer] - expected).abs().max() < 1e-6 * expected.abs().max(), (i, layer)


def test_esme_omits_the_token_dropout_rescale(standin, fair64):
    """esme 0.0.9's ``ESM2.embedding`` zeroes ``<mask>`` embeddings but never applies ESM-2's
    token-dropout rescale (1 - 0.15 * 0.8) / (1 - <mask> ratio): fair-esm's layer 0 is esme's
    times exactly 0.88 in a sequence without ``<mask>``, 0.88 / (1 - r) with a ratio r, and
    the difference carries through every layer, a thousand times the 1e-6 of the rescaled
    esme in float64."""
    model, alphabet = fair64
    layout = ("MKTAYIAKQR", "MKT<mask>YIAKQR")  # 12 tokens each: r = 0, 1/12
    last = model.num_layers
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(layout)])
    with torch.no_grad():
        want = model(tokens, repr_layers=[0, last])["representations"]
    got = run_packed(standin.packed_forward_standin, model, alphabet, layout, [0, last])
    for i, ratio in enumerate([0.0, 1 / 12]):
        ours, theirs = got[i][0], want[0][i, :12]
        real = tokens[i, :12].ne(alphabet.mask_idx)
        assert torch.allclose(theirs[real], ours[real] * (0.88 / (1 - ratio)),
                              rtol=1e-12, atol=0), i  # no division: trained-like rows hold zeros
        final = got[i][last] - want[last][i, :12]
        assert final.norm() > 1e-3 * want[last][i, :12].norm()  # 1.2e-2 (r > 0) to 3.9e-2


@pytest.fixture(scope="module")
def harness(standin, esmfuzz_cache, one_cpu_thread):
    from esmfuzz.config import Config
    from esmfuzz.harness import harness_for

    return harness_for(Config(device="cpu", packed_impl=f"{MODULE}:packed_forward_standin",
                              padded_impl=f"{MODULE}:padded_forward_standin"))


def test_esmfuzz_finds_the_missing_rescale(harness):
    """esmfuzz's error-ratio oracle (float16 candidate and float32 paths, both on the
    stand-in) fails esme at every layer from the embedding on, the signature of a change at
    the embedding; in float32 the worst relative RMS error is that of a sequence without
    ``<mask>``: 1 / 0.88 - 1 = 0.1364."""
    from esmfuzz.properties import Sample

    verdict = harness.check("error_ratio", Sample(LAYOUTS[0]))
    assert not verdict.ok and verdict.first_layer == 0
    assert set(verdict.failing_layers()) == set(harness.all_layers)
    assert verdict.metrics["rms_error[packed float32]"] == pytest.approx(0.12 / 0.88, rel=1e-5)


@pytest.mark.parametrize("prop", ["error_ratio", "finite", "packed_precision", "statistics"])
def test_adapter_passes_esmfuzz_oracles_with_the_rescale(harness, with_rescale, prop):
    """With the rescale added, esme passes esmfuzz's oracles on both paths: the rescale is
    the only divergence these layouts show."""
    from esmfuzz.properties import Sample

    for layout in LAYOUTS:
        verdict = harness.check(prop, Sample(layout))
        assert verdict.ok, verdict.message()
    assert f"packed {MODULE}:packed_forward_standin" in harness.under_test(prop)


def test_standin_semantics(standin):
    """The stand-in's varlen attention is per segment (no leak across ``cu_seqlens``), and its
    ``unpad_input`` / ``pad_input`` round-trip a padded batch as flash_attn 2.7+ does."""
    import flash_attn
    from flash_attn.bert_padding import pad_input, unpad_input

    assert flash_attn.ESMFUZZ_STANDIN
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 2, 4, generator=gen, dtype=torch.float16) for _ in range(3))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out = flash_attn.flash_attn_varlen_func(q, k, v, cu, cu, 4, 4)
    one = torch.tensor([0, 4], dtype=torch.int32)
    alone = flash_attn.flash_attn_varlen_func(q[3:], k[3:], v[3:], one, one, 4, 4)
    assert out.dtype == torch.float16 and torch.equal(out[3:], alone)
    with pytest.raises(ValueError, match="max_seqlen"):
        flash_attn.flash_attn_varlen_func(q, k, v, cu, cu, 3, 3)
    x = torch.randn(2, 5, 3, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    flat, indices, cu2, longest, used = unpad_input(x, mask)
    assert cu2.tolist() == [0, 3, 8] and longest == 5 and used.tolist() == [3, 5]
    assert cu2.dtype == torch.int32 and flat.shape == (8, 3)
    back = pad_input(flat, indices, 2, 5)
    assert torch.equal(back[mask], x[mask]) and not back[~mask].any()


def test_standin_is_not_importable_by_default():
    """Only the fixture (or an explicit PYTHONPATH) puts the stand-in on ``sys.path``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import importlib.util as u, sys; s = u.find_spec('flash_attn'); "
            "sys.exit(1 if s and 'flash_attn_standin' in (s.origin or '') else 0)")
    assert subprocess.run([sys.executable, "-c", code], env=env,
                          cwd=Path(__file__).parents[1]).returncode == 0


def test_real_kernel_names_refuse_the_standin(standin, fair64):
    """On the stand-in, the real-kernel names are a usage error naming the ``*_standin``
    ones, so that no result of the stand-in is reported as FlashAttention's."""
    with pytest.raises(ImplementationError) as error:
        load_implementation(f"{MODULE}:packed_forward", option="--esm-packed-impl")
    message = str(error.value)
    assert "\n" not in message and "packed_forward_standin" in message
    assert load_implementation(f"{MODULE}:packed_forward_standin") is \
        standin.packed_forward_standin
    with pytest.raises(RuntimeError, match="stand-in"):
        standin.packed_forward(fair64[0], torch.tensor([0, 5, 2]),
                               torch.tensor([0, 3], dtype=torch.int32), 3, [0])


def test_real_kernel_refuses_float32_with_a_type_error(adapter, fair64, monkeypatch):
    """So that the harness (``paths = auto``) checks only the candidate dtype."""
    monkeypatch.setattr(adapter, "on_standin", lambda: False)
    monkeypatch.setattr(adapter, "_NO_FLASH", None)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        adapter.packed_forward(fair64[0], torch.tensor([0, 5, 2]),
                               torch.tensor([0, 3], dtype=torch.int32), 3, [0])


@pytest.fixture
def forget(monkeypatch):
    """esme, flash_attn and the adapter imported afresh; what the test imports leaves
    ``sys.modules`` afterwards, and what was there comes back."""
    before = [name for name in sys.modules if _ours(name)]
    for name in before:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [name for name in sys.modules if _ours(name)]:
        del sys.modules[name]


def test_missing_library_is_a_one_line_usage_error(forget, monkeypatch):
    monkeypatch.setitem(sys.modules, "esme", None)
    with pytest.raises(ImplementationError) as error:
        load_implementation(f"{MODULE}:packed_forward", option="--esm-packed-impl")
    message = str(error.value)
    assert "\n" not in message and "pip install 'esmfuzz[esm-efficient]'" in message


def test_missing_flash_attn_is_a_one_line_usage_error(forget, monkeypatch):
    """esme imports flash_attn unconditionally; without it the adapter still imports and
    names what is missing (flash_attn, CUDA) and the CPU stand-in."""
    if importlib.util.find_spec("esme") is None:
        pytest.skip("esm-efficient is not installed")
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    for name in ("packed_forward", "padded_forward"):
        with pytest.raises(ImplementationError) as error:
            load_implementation(f"{MODULE}:{name}", option="--esm-packed-impl")
        message = str(error.value)
        assert "\n" not in message and "flash_attn" in message and "CUDA" in message
        assert "flash_attn_standin" in message
    with pytest.raises(ImplementationError, match="PYTHONPATH=tests/support/flash_attn_standin"):
        load_implementation(f"{MODULE}:packed_forward_standin")


@pytest.mark.gpu
def test_real_kernel_against_fair_esm_in_float16(adapter, monkeypatch):
    """FlashAttention takes float16/bfloat16 only: esme on the real kernel against fair-esm in
    float16 on CUDA, packed and padded, every layer, with the rescale added (as above), to a
    float16 tolerance; and float32 refused with a TypeError."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    problem = adapter.packed_forward.esmfuzz_requires()
    if problem:
        pytest.skip(problem)
    from esmfuzz.models import load_model

    cls = adapter._EsmeESM2
    monkeypatch.setattr(cls, "embedding", _rescaled_embedding(cls.embedding))
    model, alphabet = load_model("synthetic:esm2_t6_8M_UR50D")
    model = model.half().cuda().eval()
    layout = LAYOUTS[1]
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(layout)])
    layers = list(range(model.num_layers + 1))
    with torch.no_grad():
        want = model(tokens.cuda(), repr_layers=layers)["representations"]
    for impl, run in [(adapter.packed_forward, run_packed), (adapter.padded_forward, run_padded)]:
        got = run(impl, model, alphabet, layout, layers)
        for i, row in enumerate(got):
            for layer in layers:
                expected = want[layer][i, :len(row[layer])].float()
                diff = (row[layer].float() - expected).abs().max()
                assert diff < 0.05 * expected.abs().max(), (impl.__name__, i, layer)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        adapter.packed_forward(model.float(), tokens[0].cuda(),
                               torch.tensor([0, tokens.shape[1]], dtype=torch.int32).cuda(),
                               tokens.shape[1], [0])
