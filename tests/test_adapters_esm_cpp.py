"""The esm.cpp adapter: esm.cpp's own loader reads fair-esm's weights, its float32 paths agree
with fair-esm in float64, and esmfuzz's own targets find what was found in it by hand
(docs/findings.md): the padded path attends its padding, INT8 packs depend on their
neighbours (AMX kernels), and the AVX-512 GELU is not finite near -13.3. A float32 engine
whose kernels are right (AVX2) passes under the default options.

Needs the esm-cpp extra (esm.cpp needs numpy < 2, so CI tests it in an environment of its
own); without it, every test skips with the adapter's own reason. ``ESM_FORCE_ISA`` picks
esm.cpp's kernels; the tests of a kernel this CPU lacks skip, saying which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esmfuzz.properties import Sample

REPO = Path(__file__).resolve().parents[1]
RANDOM_8M = "synthetic:esm2_t6_8M_UR50D?profile=random"
TRAINED_8M = "synthetic:esm2_t6_8M_UR50D"
LAYOUT = ("MKTAYIAKQRQISFVKSHFSRQ", "LLGXZBUO", "A<mask>C")


@pytest.fixture(scope="module")
def adapter():
    """The adapter, or a skip whose reason is the adapter's own usage error."""
    return pytest.importorskip("esmfuzz.adapters.esm_cpp", exc_type=ImportError)


def _isa(adapter) -> str:
    return adapter.esm_cpp.host_isa()


def _needs(adapter, *isas: str) -> None:
    if _isa(adapter) not in isas:
        pytest.skip(f"needs esm.cpp's {' or '.join(isas)} kernels; this CPU runs "
                    f"{_isa(adapter)}")


@pytest.fixture
def avx2(monkeypatch):
    monkeypatch.setenv("ESM_FORCE_ISA", "avx2")


def _model(spec: str):
    from esmfuzz.models import load_model

    model, alphabet = load_model(spec)
    return model.eval(), alphabet


def test_every_fair_esm_weight_has_an_esm_cpp_name(adapter):
    model, _ = _model(RANDOM_8M)
    names = adapter.weight_map(model.num_layers)
    assert set(names) == set(model.state_dict())
    assert len(set(names.values())) == len(names)
    engine = adapter.engine(model)
    assert adapter.engine(model) is engine  # built once per model and precision
    config = engine.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        model.num_layers, model.embed_dim, model.attention_heads)
    assert not config.weights_quantized and adapter.engine(model, "int8").config.weights_quantized
    with pytest.raises(ValueError, match="precision='int4'"):
        adapter.engine(model, "int4")


def test_float32_paths_follow_fair_esm_in_float64(adapter, avx2):
    """Every layer and the logits, per row of a padded batch with its padding masked off
    (one sequence per row: the padding bug does not enter) and from a packed stream; float32
    against float64: within 1e-5 of each layer's largest value."""
    from esmfuzz.forward import oracle_forward
    from esmfuzz.packing import pack

    model, alphabet = _model(RANDOM_8M)
    layers = list(range(model.num_layers + 1))
    for sequence in LAYOUT:
        _, _, tokens = alphabet.get_batch_converter()([("s", sequence)])
        with torch.no_grad():
            want = oracle_forward(model.double(), tokens, layers)
            logits = model.lm_head(want[model.num_layers])
        model.float()
        got = adapter.padded_forward(model, tokens, layers)
        for layer in layers:
            scale = float(want[layer].abs().max())
            assert float((got[layer].double() - want[layer]).abs().max()) < 1e-5 * scale, layer
        batch = pack([sequence], alphabet)
        packed = adapter.packed_forward(model, batch.tokens, batch.cu_seqlens, batch.max_seqlen,
                                        ["logits"])["logits"]
        assert packed.dtype == torch.float32
        assert float((packed.double() - logits[0]).abs().max()) < 1e-5 * float(logits.abs().max())


@pytest.fixture(scope="module")
def harnesses(adapter, tmp_path_factory):
    """One harness per esm.cpp implementation under test, on the random-weight 8M (AVX2
    float32 kernels: exact there), built lazily."""
    from esmfuzz.config import Config
    from esmfuzz.harness import harness_for

    os.environ.setdefault("ESMFUZZ_CACHE", str(tmp_path_factory.mktemp("esmfuzz-cache")))
    built = {}

    def get(model=RANDOM_8M, **impls):
        key = (model, tuple(sorted(impls.items())))
        if key not in built:
            built[key] = harness_for(Config(model=model, device="cpu", **{
                f"{kind}_impl": f"esmfuzz.adapters.esm_cpp:{name}" for kind, name in impls.items()
            }))
        return built[key]

    return get


@pytest.mark.parametrize("prop", ["error_ratio", "finite", "packed_precision"])
def test_float32_packed_engine_passes_esmfuzz_oracles_on_its_logits(harnesses, avx2, prop):
    """A float32 engine under the default float16 candidate: no false alarm from esmfuzz's
    own head or statistics, and the summary says the logits are what was checked."""
    harness = harnesses(packed="packed_forward")
    verdict = harness.check(prop, Sample(LAYOUT))
    assert verdict.ok, verdict.message()
    assert "logits" in verdict.layers
    assert harness.compare == "dtype"
    assert any("returns logits only" in n for n in harness.output_notes())
    assert any("computes in float32" in n for n in harness.output_notes())


def test_padded_path_attends_its_padding(harnesses, avx2):
    """esm.cpp's ``forward(ids, attention_mask)`` lets real tokens attend padded ones: a
    short sequence padded to a long one's length moves by O(1) from the same sequence alone
    (docs/findings.md). padding_invariance fails from layer 1 on (the embedding is right)."""
    harness = harnesses(padded="padded_forward")
    verdict = harness.check("padding_invariance", Sample(("MKTAYIAKQRQISFVKSHFSRQ", "LL"),
                                                         target=1))
    assert not verdict.ok
    assert verdict.value > 100 * harness.thresholds.context_ratio, verdict.message()
    assert 0 not in verdict.failing_layers() and 1 in verdict.failing_layers()


def test_int8_engine_is_compared_as_quantized(harnesses, avx2):
    """An engine declaring INT8 is judged against float32 in user units (compare auto): the
    targets bounded by same-dtype noise skip, saying why. On the trained-like 8M, esm.cpp's
    AVX2 INT8 meets the default quantized bounds (measured worst: logit drift 0.51,
    log-probability drift 0.66 nats, rank agreement 0.994: docs/adapters.md)."""
    harness = harnesses(model=TRAINED_8M, packed="packed_forward_int8")
    assert harness.compare == "quantized"
    assert harness.judges("quantized_drift") is None and harness.judges("finite") is None
    assert "esmfuzz_precision int8" in harness.judges("error_ratio")
    verdict = harness.check("quantized_drift", Sample(("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV",)))
    assert set(verdict.metrics) >= {"logit_drift", "log_prob_drift", "rank_agreement"}
    assert verdict.ok, verdict.message()
    assert verdict.path == "packed int8"


def test_int8_packs_depend_on_their_neighbours(harnesses, adapter):
    """esm.cpp's AMX INT8 kernels: a sequence's log-probabilities move with its pack's other
    sequences (a one-sequence pack equals ``forward``); batch_invariance fails by far more
    than its bound. Its FP32 kernels move nothing. (Random weights: on the trained-like ones
    the AMX kernels' GELU is not finite, below.)"""
    _needs(adapter, "amx")
    sample = Sample(("MKTAYIAKQRQISFVKSHFSRQ", "LLLLAGCW"), 0, ("MKTAYIAKQRQISFVKSHFSRQ",), 0)
    verdict = harnesses(packed="packed_forward_int8").check("batch_invariance", sample)
    assert not verdict.ok
    assert verdict.metric == "context_drift"
    assert verdict.value > 3 * harnesses().thresholds.context_drift, verdict.message()
    from esmfuzz.config import Config
    from esmfuzz.harness import harness_for

    fp32 = harness_for(Config(model=RANDOM_8M, device="cpu", compare="quantized",
                              packed_impl="esmfuzz.adapters.esm_cpp:packed_forward"))
    again = fp32.check("batch_invariance", sample)
    assert again.ok and again.metrics["context_drift"] == 0.0, again.message()


def test_avx512_gelu_is_not_finite_near_minus_13(adapter, monkeypatch):
    """esm.cpp 0.2.1's AVX-512 (and AMX) float32 GELU gives NaN/Inf for inputs in about
    [-13.35, -13.30]; its AVX2 GELU is exact. A one-layer probe: every FFN unit's input set
    by its bias (weights zero), the output projection zero, so the layer's output is finite
    exactly when every unit's GELU is."""
    _needs(adapter, "avx512", "amx")
    import numpy as np
    from safetensors.torch import load_file, save_file

    model, _ = _model(RANDOM_8M)
    adapter.engine(model)
    folder = Path(adapter._ENGINES._built[(id(model), "float32")][1]._folder.name)
    state = load_file(str(folder / "model.safetensors"))
    prefix = "esm.encoder.layer.0."

    def finite(x: float, isa: str) -> bool:
        probe = dict(state)
        probe[prefix + "intermediate.dense.weight"] = torch.zeros_like(
            state[prefix + "intermediate.dense.weight"])
        bias = torch.ones_like(state[prefix + "intermediate.dense.bias"])
        bias[0] = x
        probe[prefix + "intermediate.dense.bias"] = bias
        probe[prefix + "output.dense.weight"] = torch.zeros_like(
            state[prefix + "output.dense.weight"])
        path = folder / f"probe-{isa}.safetensors"
        save_file({k: v.clone().contiguous() for k, v in probe.items()}, str(path))
        monkeypatch.setenv("ESM_FORCE_ISA", isa)
        engine = adapter.esm_cpp.Model.load_from_safetensors(str(path))
        ids = np.asarray(adapter.esm_cpp.Tokenizer().encode("KALW"), dtype=np.int32)
        return bool(np.isfinite(engine.forward_with_hidden_states(ids)[1][1]).all())

    assert not finite(-13.32, "avx512")
    assert finite(-13.32, "avx2")
    assert finite(-13.4, "avx512") and finite(-13.25, "avx512")


def _fuzz(tmp_path: Path, *args: str, isa: str | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "pyproject.toml").write_text('[tool.esmfuzz]\ncorpus = "corpus"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CI", None)
    if isa:
        env["ESM_FORCE_ISA"] = isa
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "fuzz" / "test_properties.py"),
         "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "--esm-profile", "ci",
         "--esm-device", "cpu", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def test_fuzz_targets_pass_a_float32_engine_under_default_options(adapter, tmp_path):
    """The default options (trained-like 8M, float16 candidate) against esm.cpp's float32
    packed path on its AVX2 kernels: every packed target that runs passes, none on a path
    that never called it without saying so, and the quantized targets skip."""
    done = _fuzz(tmp_path, "-k", "error_ratio-short or isolation-mixed or finite-short or "
                 "quantized_drift-mixed", "--esm-packed-impl",
                 "esmfuzz.adapters.esm_cpp:packed_forward", isa="avx2")
    assert done.returncode == 0, done.stdout[-4000:]
    assert "3 passed, 1 skipped" in done.stdout, done.stdout[-3000:]
    assert "returns logits only" in done.stdout
    assert not (tmp_path / "corpus").exists() or not list((tmp_path / "corpus").rglob("*.json"))


def test_fuzz_targets_find_the_int8_batch_dependence(adapter, tmp_path):
    """``--esm-packed-impl ...:packed_forward_int8`` alone: compare auto turns quantized, and
    batch_invariance fails, shrinks and saves the case (AMX kernels)."""
    _needs(adapter, "amx")
    done = _fuzz(tmp_path, "-x", "-k", "batch_invariance-mixed", "--esm-model", RANDOM_8M,
                 "--esm-packed-impl", "esmfuzz.adapters.esm_cpp:packed_forward_int8")
    assert done.returncode == 1, done.stdout[-4000:]
    assert "context_drift" in done.stdout
    cases = list((tmp_path / "corpus").rglob("*.json"))
    assert len(cases) == 1, done.stdout[-3000:]
