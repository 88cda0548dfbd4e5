"""The transformers adapter: a strict weight map, fair-esm's layer numbering, esmfuzz's own
oracles on fixed layouts (rare residues and ``<mask>``), the fuzz targets end to end, and
one-line usage errors for what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the transformers extra is not installed")

from esmfuzz.adapters import transformers as adapter  # noqa: E402
from esmfuzz.config import Config  # noqa: E402
from esmfuzz.forward import ImplementationError, load_implementation  # noqa: E402
from esmfuzz.harness import harness_for  # noqa: E402
from esmfuzz.models import load_model  # noqa: E402
from esmfuzz.properties import Sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = [
    ("MKTAYIAKQRQISFVKSHFSRQ", "LLGXZBUO", "A<mask>C"),
    ("<mask>" * 3, "MPEPTIDE" * 12, "W"),
]
PATHS = ["esmfuzz.adapters.transformers:padded_forward",
         "esmfuzz.adapters.transformers:padded_forward_eager"]


@pytest.fixture(scope="module")
def fair64():
    model, alphabet = load_model("synthetic:esm2_t6_8M_UR50D")
    return model.double().eval(), alphabet


def test_every_weight_is_mapped_by_name(fair64):
    model, _ = fair64
    hf = adapter.hf_model(model, "eager")
    names = adapter.weight_map(model.num_layers)
    assert set(names.values()) == set(hf.state_dict())
    fair = {k for k in model.state_dict() if not k.startswith("lm_head.")
            and not k.endswith("rot_emb.inv_freq")}
    assert fair <= set(names)
    assert adapter.hf_model(model, "eager") is hf  # built once per model and path
    assert next(hf.parameters()).dtype == torch.float64


@pytest.mark.parametrize("forward", [adapter.padded_forward, adapter.padded_forward_eager])
def test_layers_follow_fair_esm_numbering(fair64, forward):
    """Layer 0 is the embedding output and L is after emb_layer_norm_after (transformers'
    hidden_states[L] is before it). In float64 the two agree to transformers' float32
    rotary angles and <mask> ratio (about 1e-7, plus 1e-8 of a massive activation: the
    default model carries 1600 in <cls>); a layer off by one differs by O(1)."""
    model, alphabet = fair64
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(LAYOUTS[0])])
    layers = list(range(model.num_layers + 1))
    with torch.no_grad():
        want = model(tokens, repr_layers=layers)["representations"]
    got = forward(model, tokens, layers)
    real = tokens.ne(alphabet.padding_idx)
    for layer in layers:
        scale = want[layer][real].abs().max()
        assert (got[layer] - want[layer])[real].abs().max() < 1e-5 + 1e-8 * scale, layer


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory):
    os.environ.setdefault("ESMFUZZ_CACHE", str(tmp_path_factory.mktemp("esmfuzz-cache")))
    return {path: harness_for(Config(device="cpu", padded_impl=path)) for path in PATHS}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("prop", ["error_ratio", "precision", "finite", "statistics"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["rare", "masks"])
def test_adapter_passes_esmfuzz_oracles(harnesses, path, prop, layout):
    verdict = harnesses[path].check(prop, Sample(layout))
    assert verdict.ok, verdict.message()
    assert f"padded {path}" in harnesses[path].under_test(prop)


@pytest.mark.parametrize("path", PATHS)
def test_padding_invariance_of_the_adapter(harnesses, path):
    layout = LAYOUTS[0]
    verdict = harnesses[path].check("padding_invariance", Sample(layout, target=2))
    assert verdict.ok, verdict.message()


def test_fuzz_targets_run_against_the_adapter(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.esmfuzz]\ncorpus = "corpus"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CI", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "fuzz" / "test_properties.py"), "-k",
         "test_property[precision-short] or finite-short", "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "--esm-profile", "ci", "--esm-device", "cpu",
         "--esm-padded-impl", PATHS[0]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "2 passed" in done.stdout
    assert f"padded {PATHS[0]}" in done.stdout


def test_missing_library_is_a_one_line_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "esmfuzz.adapters.transformers")
    with pytest.raises(ImplementationError) as error:
        load_implementation(PATHS[0], option="--esm-padded-impl")
    message = str(error.value)
    assert "\n" not in message and "pip install 'esmfuzz[transformers]'" in message


def test_attention_path_the_library_lacks_is_a_usage_error(monkeypatch):
    from transformers.models.esm import modeling_esm

    monkeypatch.setattr(modeling_esm.EsmPreTrainedModel, "_supports_sdpa", False)
    with pytest.raises(ImplementationError, match="has no SDPA attention for ESM"):
        load_implementation(PATHS[0], option="--esm-padded-impl")
    assert load_implementation(PATHS[1]) is adapter.padded_forward_eager


def test_info_says_which_path_runs(capsys):
    from esmfuzz import cli

    assert cli.main(["info", "--device", "cpu", "--padded-impl", PATHS[1],
                     "--packed-impl", "esmfuzz.adapters.transformers:no_such_forward"]) == 0
    out = capsys.readouterr().out
    assert f"padded     {PATHS[1]}: transformers ``EsmModel``, eager attention" in out
    assert "packed     esmfuzz.adapters.transformers:no_such_forward: unusable here" in out
    assert f"transformers {adapter.transformers.__version__}" in out
