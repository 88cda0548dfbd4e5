"""Model specs, synthetic checkpoints, safe loading, memory estimates and the cached pair.

Real files under temporary directories, fair-esm's real loader, no mocks.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
from pathlib import Path

import esm.data
import esm.pretrained
import pytest
import torch
from esm.model.esm2 import ESM2

from esmfuzz import models
from esmfuzz.models import (
    ARCHITECTURES,
    DEFAULT_SPEC,
    CheckpointError,
    InsufficientMemory,
    ModelSpecError,
    estimate_memory,
    load_checkpoint,
    load_model,
    model_pair,
    parse_spec,
    synthetic_checkpoint,
)

NAME_8M = "esm2_t6_8M_UR50D"
NAME_15B = "esm2_t48_15B_UR50D"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A private, empty ``$ESMFUZZ_CACHE`` for tests that must watch files appear."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ESMFUZZ_CACHE", str(cache))
    return cache


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def _fair_esm_body(model: dict, **cfg_extra) -> dict:
    arch = ARCHITECTURES[NAME_8M]
    cfg = argparse.Namespace(
        encoder_layers=arch.layers, encoder_embed_dim=arch.embed_dim,
        encoder_ffn_embed_dim=4 * arch.embed_dim, encoder_attention_heads=arch.heads,
        token_dropout=True, arch="ESM-1b",
    )
    return {"cfg": {"model": cfg, **cfg_extra}, "model": model}


def _safe_load(path: Path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


class _WritesMarker:
    """Unpickling this runs ``open(marker, "w")``: the arbitrary-code attack on a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------- parse_spec


def test_parse_spec_hub_name():
    spec = parse_spec(NAME_8M)
    assert (spec.kind, spec.name, spec.path, spec.seed) == ("hub", NAME_8M, None, 0)
    assert spec.architecture == ARCHITECTURES[NAME_8M]


@pytest.mark.parametrize("text", ["/models/esm2_t6_8M_UR50D.pt", "esm2_t6_8M_UR50D.pt",
                                  "some/dir/custom"])
def test_parse_spec_path(text):
    spec = parse_spec(text)
    assert spec.kind == "path"
    assert spec.path == Path(text)
    assert spec.name == Path(text).stem


def test_parse_spec_path_of_unknown_model_has_no_architecture():
    assert parse_spec("/x/finetuned.pt").architecture is None


def test_parse_spec_synthetic_default_and_seeded():
    spec = parse_spec(DEFAULT_SPEC)
    assert (spec.kind, spec.name, spec.seed) == ("synthetic", NAME_8M, 0)
    seeded = parse_spec(f"  synthetic:{NAME_15B}?seed=42 ")
    assert (seeded.kind, seeded.name, seeded.seed) == ("synthetic", NAME_15B, 42)
    assert seeded.architecture == ARCHITECTURES[NAME_15B]
    assert (spec.profile, seeded.profile) == ("trained", "trained")
    random = parse_spec(f"synthetic:{NAME_8M}?profile=random&seed=3")
    assert (random.seed, random.profile) == (3, "random")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nope", r"'nope' is not a fair-esm ESM-2 name"),
        ("synthetic:esm3", r"'esm3' is not one of esm2_t6_8M_UR50D"),
        ("synthetic:esm2_t6_8M_UR50D?seed=x", r"seed='x' must be a whole number"),
        ("synthetic:esm2_t6_8M_UR50D?profile=real", r"profile=.real. must be one of random, "),
        ("synthetic:esm2_t6_8M_UR50D?seed=1&seed=2", r"'seed=2' is not seed=N or profile="),
        ("synthetic:esm2_t6_8M_UR50D?size=2", r"'size=2' is not seed=N or profile=NAME"),
        ("synthetic:", r"expected 'synthetic:<esm2 name>"),
        ("", r"is empty"),
        ("   ", r"is empty"),
    ],
)
def test_parse_spec_rejects_bad_specs_clearly(text, expected):
    with pytest.raises(ModelSpecError, match=expected):
        parse_spec(text)


def test_model_spec_error_is_a_value_error():
    assert issubclass(ModelSpecError, ValueError)


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_parameters_is_the_real_count(name):
    arch = ARCHITECTURES[name]
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with torch.device("meta"):  # exact shapes, no memory: even the 15B model builds instantly
        model = ESM2(arch.layers, arch.embed_dim, arch.heads, alphabet, arch.token_dropout)
    assert arch.parameters == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- synthetic


def test_synthetic_checkpoint_is_written_once(fresh_cache):
    path = synthetic_checkpoint(NAME_8M, seed=3)
    assert path.is_file() and fresh_cache in path.parents
    regression = path.with_name(f"{NAME_8M}-contact-regression.pt")
    assert regression.is_file()
    stamps = {p: p.stat().st_mtime_ns for p in _files_under(fresh_cache)}
    assert set(stamps) == {path, regression}  # no temporary files left behind
    assert synthetic_checkpoint(NAME_8M, seed=3) == path
    assert {p: p.stat().st_mtime_ns for p in _files_under(fresh_cache)} == stamps


def test_synthetic_checkpoint_leaves_global_rng_alone(fresh_cache):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    synthetic_checkpoint(NAME_8M, seed=5)
    assert torch.equal(torch.rand(4), expected)


def test_synthetic_checkpoint_has_the_exact_architecture(esmfuzz_cache):
    arch = ARCHITECTURES[NAME_8M]
    data = _safe_load(synthetic_checkpoint(NAME_8M))
    cfg = data["cfg"]["model"]
    assert isinstance(cfg, argparse.Namespace)
    assert (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_attention_heads) == (
        arch.layers, arch.embed_dim, arch.heads)
    assert cfg.token_dropout is True

    model, alphabet = load_model(DEFAULT_SPEC)
    assert isinstance(model, ESM2)
    assert model.num_layers == arch.layers
    assert model.embed_dim == arch.embed_dim
    assert model.attention_heads == arch.heads
    assert model.token_dropout is True
    assert len(alphabet) == 33 and model.alphabet_size == 33
    assert model.embed_tokens.weight.shape == (33, arch.embed_dim)
    assert sum(p.numel() for p in model.parameters()) == arch.parameters
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert not model.training


def test_synthetic_layer_norms_are_not_identity(esmfuzz_cache):
    """Identity norms would hide a missing or doubled layer norm from the oracles."""
    model, _ = load_model(DEFAULT_SPEC)
    for norm in (model.emb_layer_norm_after, model.layers[0].self_attn_layer_norm):
        assert not torch.allclose(norm.weight, torch.ones_like(norm.weight))
        assert not torch.allclose(norm.bias, torch.zeros_like(norm.bias))


def _weights(spec: str) -> dict[str, torch.Tensor]:
    model, _ = load_model(spec)
    return model.state_dict()


def test_same_seed_same_weights_different_seed_different(tmp_path, monkeypatch):
    monkeypatch.setenv("ESMFUZZ_CACHE", str(tmp_path / "a"))
    first = _weights(f"synthetic:{NAME_8M}?seed=1")
    other_seed = _weights(f"synthetic:{NAME_8M}?seed=2")
    monkeypatch.setenv("ESMFUZZ_CACHE", str(tmp_path / "b"))  # written again from scratch
    again = _weights(f"synthetic:{NAME_8M}?seed=1")
    assert first.keys() == again.keys() == other_seed.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    differ = [k for k in first if not torch.equal(first[k], other_seed[k])]
    assert "embed_tokens.weight" in differ and "layers.0.fc1.weight" in differ


def test_loading_goes_through_fair_esm_loader(esmfuzz_cache, monkeypatch):
    calls = []
    real_core = esm.pretrained.load_model_and_alphabet_core

    def recording_core(*args, **kwargs):  # pass-through: the real loader still does the work
        calls.append(args[0])
        return real_core(*args, **kwargs)

    monkeypatch.setattr(esm.pretrained, "load_model_and_alphabet_core", recording_core)
    path = synthetic_checkpoint(NAME_8M)
    model, alphabet = load_checkpoint(path)
    assert calls == [NAME_8M]
    assert type(model) is ESM2
    assert isinstance(alphabet, esm.data.Alphabet)
    assert alphabet.all_toks == esm.data.Alphabet.from_architecture("ESM-1b").all_toks
    # fair-esm's prefix stripping and regression merge: the model holds exactly the file's weights
    body = _safe_load(path)["model"]
    regression = _safe_load(path.with_name(f"{NAME_8M}-contact-regression.pt"))["model"]
    state = model.state_dict()
    prefix = "encoder.sentence_encoder."
    assert {prefix + k for k in state if not k.startswith("contact_head.regression")} | set(
        regression) == set(body) | set(regression)
    for key, value in body.items():
        assert torch.equal(state[key[len(prefix):]], value)
    for key, value in regression.items():
        assert torch.equal(state[key], value)


def test_checkpoint_with_non_esm2_file_name_loads_through_core_path(esmfuzz_cache, tmp_path):
    source = synthetic_checkpoint(NAME_8M)
    copy_path = tmp_path / "my-finetune.pt"
    copy_path.write_bytes(source.read_bytes())
    model, _ = load_checkpoint(copy_path)
    reference, _ = load_checkpoint(source)
    assert type(model) is ESM2
    assert torch.equal(model.embed_tokens.weight, reference.embed_tokens.weight)


# --------------------------------------------------------------------------- CheckpointError


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)  # a directory is not a checkpoint either


@pytest.mark.parametrize("name", [NAME_8M, "truncated"])
def test_truncated_checkpoint(esmfuzz_cache, tmp_path, name):
    source = synthetic_checkpoint(NAME_8M)
    target = tmp_path / f"{name}.pt"
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    if name == NAME_8M:  # with its regression file: fair-esm's local loader reads it
        regression = source.with_name(f"{NAME_8M}-contact-regression.pt")
        (tmp_path / regression.name).write_bytes(regression.read_bytes())
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(target)
    assert str(target) in str(info.value)


@pytest.mark.parametrize("text", [
    "hello world\n",
    '{"model": "esm2"}\n',
    "these are not the weights you are looking for\n",
])
def test_text_file_is_not_a_checkpoint(tmp_path, text):
    target = tmp_path / "notes.pt"
    target.write_text(text)
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_checkpoint(target)


def test_empty_file_is_not_a_checkpoint(tmp_path):
    target = tmp_path / "empty.pt"
    target.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        load_checkpoint(target)


def test_plain_state_dict_is_not_a_fair_esm_checkpoint(esmfuzz_cache, tmp_path):
    model, _ = load_model(DEFAULT_SPEC)
    target = tmp_path / "plain.pt"
    torch.save(model.state_dict(), target)
    with pytest.raises(CheckpointError, match="expected top-level keys 'cfg' and 'model'"):
        load_checkpoint(target)


def test_plain_state_dict_with_esm2_name_and_regression_file(esmfuzz_cache, tmp_path):
    """Through fair-esm's local loader the file fails inside fair-esm: still a CheckpointError."""
    model, _ = load_model(DEFAULT_SPEC)
    target = tmp_path / f"{NAME_8M}.pt"
    torch.save(model.state_dict(), target)
    source = synthetic_checkpoint(NAME_8M)
    regression = source.with_name(f"{NAME_8M}-contact-regression.pt")
    (tmp_path / regression.name).write_bytes(regression.read_bytes())
    with pytest.raises(CheckpointError, match="not a fair-esm ESM-2 checkpoint"):
        load_checkpoint(target)


@pytest.mark.parametrize("name", ["dated", NAME_8M])
def test_non_allow_listed_global_is_named(esmfuzz_cache, tmp_path, name):
    target = tmp_path / f"{name}.pt"
    torch.save(_fair_esm_body({}, when=datetime.datetime(2024, 1, 2)), target)
    if name == NAME_8M:
        regression = synthetic_checkpoint(NAME_8M).with_name(f"{NAME_8M}-contact-regression.pt")
        (tmp_path / regression.name).write_bytes(regression.read_bytes())
    with pytest.raises(CheckpointError, match=r"needs datetime\.datetime to unpickle") as info:
        load_checkpoint(target)
    assert "allow-list" in str(info.value)


@pytest.mark.parametrize("name", ["evil", NAME_8M])
def test_loading_never_runs_pickled_code(esmfuzz_cache, tmp_path, name):
    marker = tmp_path / "pwned"
    target = tmp_path / f"{name}.pt"
    torch.save(_fair_esm_body({"payload": _WritesMarker(marker)}), target)
    if name == NAME_8M:
        regression = synthetic_checkpoint(NAME_8M).with_name(f"{NAME_8M}-contact-regression.pt")
        (tmp_path / regression.name).write_bytes(regression.read_bytes())
    with pytest.raises(CheckpointError, match="will not run arbitrary code"):
        load_checkpoint(target)
    assert not marker.exists()


def test_marker_payload_is_live(tmp_path):
    """The payload above really is an attack: an unsafe load would have created the marker."""
    marker = tmp_path / "pwned"
    target = tmp_path / "evil.pt"
    torch.save({"payload": _WritesMarker(marker)}, target)
    torch.load(target, weights_only=False)
    assert marker.exists()


def test_env_cannot_switch_off_safe_loading(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    target = tmp_path / "evil.pt"
    torch.save(_fair_esm_body({"payload": _WritesMarker(marker)}), target)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError):
        load_checkpoint(target)
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == "1"  # restored afterwards
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# --------------------------------------------------------------------------- memory


def test_estimate_memory_15b_does_not_fit_here():
    estimate = estimate_memory(NAME_15B, device="cpu")
    assert estimate.parameters == ARCHITECTURES[NAME_15B].parameters
    assert estimate.parts["reference float32"] == 4 * estimate.parameters
    assert estimate.parts["candidate float16"] == 2 * estimate.parameters
    assert estimate.parts["oracle float64"] == 8 * estimate.parameters
    assert estimate.device_bytes == sum(estimate.parts.values())
    assert estimate.available_host is not None
    assert estimate.fits == (estimate.host_bytes <= estimate.available_host)
    if estimate.available_host < 200 * 2**30:  # this machine (24 GiB) and anything short of 200
        assert estimate.fits is False
    assert "GiB" in estimate.describe()


def test_estimate_memory_8m_fits():
    estimate = estimate_memory(DEFAULT_SPEC, device="cpu", oracle_dtype=torch.float32)
    assert estimate.fits is True
    assert "oracle float64" not in estimate.parts


def test_model_pair_refuses_15b_before_writing_anything(fresh_cache):
    estimate = estimate_memory(NAME_15B, device="cpu", oracle_dtype=torch.float32)
    if estimate.fits:
        pytest.skip("this host has enough memory for the 15B pair")
    with pytest.raises(InsufficientMemory, match="GiB") as info:
        model_pair(f"synthetic:{NAME_15B}", device="cpu")
    assert NAME_15B in str(info.value)
    assert _files_under(fresh_cache) == []


# --------------------------------------------------------------------------- model_pair


def test_model_pair_is_cached(pair):
    again = model_pair(DEFAULT_SPEC, device="cpu", dtype=torch.float16)
    assert again is pair
    assert model_pair(f"  {DEFAULT_SPEC}", device="cpu", dtype="float16") is pair


def test_model_pair_dtypes_and_independent_copies(pair):
    assert pair.dtype == torch.float16 and pair.oracle_dtype == torch.float64
    assert pair.num_layers == ARCHITECTURES[NAME_8M].layers
    for model, dtype in ((pair.reference, torch.float32), (pair.candidate, torch.float16),
                         (pair.oracle, torch.float64)):
        assert isinstance(model, ESM2)
        assert not model.training
        assert {p.dtype for p in model.parameters()} == {dtype}
        assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert pair.reference is not pair.candidate and pair.reference is not pair.oracle
    weight = pair.reference.embed_tokens.weight
    assert pair.candidate.embed_tokens.weight.data_ptr() != weight.data_ptr()
    assert torch.equal(pair.oracle.embed_tokens.weight.float(), pair.reference.embed_tokens.weight)


@pytest.mark.parametrize(("dtype", "oracle", "expected"), [
    ("bfloat16", "float32", (torch.bfloat16, torch.float32)),
])
def test_model_pair_other_dtypes(esmfuzz_cache, dtype, oracle, expected):
    pair = model_pair(DEFAULT_SPEC, device="cpu", dtype=dtype, oracle_dtype=oracle)
    assert (pair.dtype, pair.oracle_dtype) == expected
    assert pair.candidate.embed_tokens.weight.dtype == expected[0]
    assert pair.oracle.embed_tokens.weight.dtype == expected[1]
    assert pair.reference.embed_tokens.weight.dtype == torch.float32
    if oracle == "float32":
        assert pair.oracle is pair.reference


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dtype": "float64"}, "dtype='float64' must be one of"),
    ({"dtype": "int8"}, "dtype='int8'"),
    ({"oracle_dtype": "float16"}, "oracle_dtype='float16' must be one of float64, float32"),
])
def test_model_pair_rejects_bad_dtypes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        model_pair(DEFAULT_SPEC, device="cpu", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_model_pair_cuda_without_cuda_says_so():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        model_pair(DEFAULT_SPEC, device="cuda")


# --------------------------------------------------------------------------- rotary-cache trap


def _tokens(alphabet, length: int) -> torch.Tensor:
    residues = ("MKTAYIAKQRQISFVKSHFSRQ" * 10)[:length]
    return alphabet.get_batch_converter()([("s", residues)])[2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fair_esm_half_after_fp32_forward_is_broken(esmfuzz_cache, dtype):
    """fair-esm caches rotary tables by length and device, not dtype: the trap model_pair avoids."""
    model, alphabet = load_model(DEFAULT_SPEC)
    tokens = _tokens(alphabet, 17)
    with torch.inference_mode():
        model(tokens)  # FP32 forward fills the rotary cache with FP32 tables
    model = model.to(dtype)
    try:
        with torch.inference_mode():
            out = model(tokens, repr_layers=[model.num_layers])["representations"]
    except RuntimeError as exc:  # CPU: bmm of the FP32 rotated q/k with the low-precision v
        assert "dtype" in str(exc) or "scalar type" in str(exc)
    else:  # some kernels promote silently instead: the output is not in the model dtype
        assert out[model.num_layers].dtype == torch.float32


def test_model_pair_candidate_is_immune_to_the_trap(pair):
    tokens = _tokens(pair.alphabet, 17)
    with torch.inference_mode():
        ref = pair.reference(tokens, repr_layers=[6])["representations"][6]
        cand = pair.candidate(tokens, repr_layers=[6])["representations"][6]
        ref_again = pair.reference(tokens, repr_layers=[6])["representations"][6]
    assert ref.dtype == torch.float32 and cand.dtype == torch.float16
    assert torch.equal(ref, ref_again)
    assert torch.isfinite(cand).all()
    cosine = torch.nn.functional.cosine_similarity(cand.double()[0], ref.double()[0], dim=-1)
    assert cosine.min() > 0.95
    assert pair.candidate.layers[0].self_attn.rot_emb._cos_cached.dtype == torch.float16


def test_deepcopy_of_loaded_model_has_empty_rotary_cache(esmfuzz_cache):
    model, _ = load_model(DEFAULT_SPEC)
    clone = copy.deepcopy(model)
    assert clone.layers[0].self_attn.rot_emb._cos_cached is None


def test_models_module_exports():
    for name in models.__all__:
        assert hasattr(models, name)


@pytest.fixture(scope="module")
def profiles():
    from esmfuzz.models.profile import activation_profile

    out = {}
    for profile in ("random", "trained"):
        model, alphabet = load_model(f"synthetic:{NAME_8M}?profile={profile}")
        out[profile] = activation_profile(model.eval(), alphabet)
    return out


def test_trained_like_profile_has_the_traits_of_trained_models(profiles):
    from esmfuzz.models.synthetic import MASSIVE, SINK_LOGITS, massive_layer

    trained, random = profiles["trained"], profiles["random"]
    first = massive_layer(len(trained) - 1) + 1
    assert all(r.residual_max < 20 for r in trained[:first])
    inner = trained[first:-1]
    assert all(0.8 * MASSIVE[0] < r.residual_max < 2 * MASSIVE[0] for r in inner)
    assert all(r.low < 0.5 * MASSIVE[1] and r.high > -2 * r.low for r in inner)
    assert all(r.top_share > 0.9 for r in trained[first + 1:])
    assert max(r.logit_max for r in trained[1:]) > SINK_LOGITS[1]
    assert all(r.residual_max < 20 and r.top_share < 0.2 for r in random[1:])


def test_fair_esm_half_forwards_stay_finite_on_the_trained_like_model():
    model, alphabet = load_model(f"synthetic:{NAME_8M}?profile=trained")
    from esmfuzz.models.profile import PROBE

    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(PROBE)])
    reference = model.eval()(tokens, repr_layers=[3])["representations"][3]
    assert reference.abs().max() > 500
    for dtype in (torch.float16, torch.bfloat16):
        fresh = load_model(f"synthetic:{NAME_8M}?profile=trained")[0].eval().to(dtype)
        half = fresh(tokens, repr_layers=[3])["representations"][3]
        assert torch.isfinite(half).all(), dtype
        cosine = torch.nn.functional.cosine_similarity(half.float(), reference, dim=-1)
        assert cosine[tokens != alphabet.padding_idx].min() > 0.99, dtype
