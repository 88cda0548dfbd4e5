"""How the copies reach the device: the memory plan's choice, sequential loading, big-model
files. Real fair-esm models and checkpoints; on the CPU the shuttle's "device" is the host
itself, so these tests check the bookkeeping and the outputs, the GPU test the movement."""

from __future__ import annotations

import shutil

import pytest
import torch

from esmfuzz.config import Config, dtype_name
from esmfuzz.harness import Harness
from esmfuzz.models import (
    ARCHITECTURES,
    DEFAULT_SPEC,
    InsufficientMemory,
    estimate_memory,
    load_model,
    memory,
    model_pair,
    parse_spec,
    synthetic,
    synthetic_checkpoint,
)
from esmfuzz.models.checkpoint import read_state
from esmfuzz.models.loading import Shuttle, device_copy

GiB = 2**30
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "LLGXZBUO", "A<mask>C" * 5]


@pytest.fixture(scope="module")
def fair():
    return load_model(DEFAULT_SPEC)


def test_device_copy_converts_and_keeps_the_tie(fair):
    model, _ = fair
    half = device_copy(model, "cpu", torch.float16)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert half.lm_head.weight is half.embed_tokens.weight
    assert model.embed_tokens.weight.dtype == torch.float32  # the source is left alone
    assert torch.equal(half.embed_tokens.weight, model.embed_tokens.weight.half())
    same = device_copy(model, "cpu", torch.float32)  # no second host copy of the weights
    assert same.embed_tokens.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    assert same is not model and not same.training


def test_shuttle_keeps_what_fits_and_evicts_least_recently_used(fair):
    model, _ = fair
    shuttle = Shuttle(torch.device("cpu"), capacity=0)
    copies = [shuttle.host_copy(model, dtype)
              for dtype in (torch.float32, torch.float16, torch.float64)]
    sizes = [shuttle.nbytes(c) for c in copies]
    assert sizes[1] * 2 == sizes[0] and sizes[0] * 2 == sizes[2]
    shuttle.capacity = sizes[0] + sizes[1]
    shuttle.ready(copies[0])
    shuttle.ready(copies[1])
    assert shuttle.resident() == copies[:2] and shuttle.loads == 2
    shuttle.ready(copies[0])  # already there: no load, now most recently used
    assert shuttle.loads == 2 and shuttle.resident() == [copies[1], copies[0]]
    shuttle.ready(copies[2])  # float64 needs all the room: both leave
    assert shuttle.resident() == [copies[2]] and shuttle.loads == 3
    host = shuttle._slots[id(copies[0])][0][2]
    assert copies[0].embed_tokens.weight.data_ptr() == host.data_ptr()  # back on the host


def test_sequential_harness_gives_the_together_verdicts(esmfuzz_cache):
    """One copy on the "device" at a time: same metrics as all copies at once."""
    together = Harness(Config(device="cpu", loading="together"))
    sequential = Harness(Config(device="cpu", loading="sequential"))
    pair = sequential.pair
    assert (together.pair.loading, pair.loading) == ("together", "sequential")
    assert "loading sequential" in pair.oracle_note
    pair.shuttle.capacity = max(map(pair.shuttle.nbytes, (pair.reference, pair.candidate,
                                                          pair.oracle)))
    for prop in ("error_ratio", "precision", "statistics", "finite"):
        want, got = together.check(prop, SEQUENCES), sequential.check(prop, SEQUENCES)
        assert (got.ok, got.metrics) == (want.ok, want.metrics), prop
    assert pair.shuttle.loads >= 3
    assert len(pair.shuttle.resident()) <= 2  # float32 + float16 fit where float64 does


def _fake_machine(monkeypatch, *, device_gib: float, host_gib: float):
    def available(device):
        return int((device_gib if device.type == "cuda" else host_gib) * GiB)

    monkeypatch.setattr(memory, "_available", available)


@pytest.mark.parametrize(("name", "device_gib", "host_gib", "asked", "oracle", "loading"), [
    ("esm2_t36_3B_UR50D", 139, 128, "auto", torch.float64, "together"),   # one H200
    ("esm2_t36_3B_UR50D", 40, 128, "auto", torch.float32, "together"),    # an A100-40GB
    ("esm2_t36_3B_UR50D", 40, 128, "sequential", torch.float64, "sequential"),
    ("esm2_t48_15B_UR50D", 139, 128, "auto", torch.float32, "together"),  # float32 oracle
    ("esm2_t48_15B_UR50D", 80, 512, "auto", torch.float32, "sequential"),  # an 80 GB GPU
])
def test_plan_picks_oracle_and_loading_by_memory(monkeypatch, name, device_gib, host_gib,
                                                 asked, oracle, loading):
    """Every copy on the device first (float32 oracle before sequential loading: a float64
    one only sharpens the error-ratio baseline, while sequential loading moves a copy's
    weights at every switch); sequential where even that does not fit, or where asked."""
    _fake_machine(monkeypatch, device_gib=device_gib, host_gib=host_gib)
    chosen = memory.plan(parse_spec(name), device=torch.device("cuda:0"), dtype=torch.float16,
                         oracle_dtype=torch.float64, loaded=set(), loading=asked)
    assert (chosen.oracle_dtype, chosen.loading) == (oracle, loading)
    assert chosen.estimate.fits
    assert chosen.note.startswith(f"oracle in {dtype_name(oracle)}")
    assert ("loading sequential" in chosen.note) == (loading == "sequential")


def test_plan_sequential_estimate_is_the_largest_copy(monkeypatch):
    _fake_machine(monkeypatch, device_gib=1000, host_gib=1000)
    spec = parse_spec("esm2_t36_3B_UR50D")
    params = ARCHITECTURES[spec.name].parameters
    together = estimate_memory(spec, device="cuda:0", loading="together")
    one = estimate_memory(spec, device="cuda:0", loading="sequential")
    workspace = together.parts["workspace"]
    assert together.device_bytes == params * (4 + 2 + 8) + workspace
    assert one.device_bytes == params * 8 + workspace
    assert one.host_bytes > params * (4 + 2 + 8)
    assert "one copy at a time" in one.describe()


def test_plan_refuses_with_advice(monkeypatch):
    _fake_machine(monkeypatch, device_gib=10, host_gib=16)
    spec = parse_spec("esm2_t48_15B_UR50D")
    with pytest.raises(InsufficientMemory, match="the least of 4 way") as info:
        memory.plan(spec, device=torch.device("cuda:0"), dtype=torch.float16,
                    oracle_dtype=torch.float64, loaded=set())
    assert "esm2_t48_15B_UR50D" in str(info.value)
    with pytest.raises(InsufficientMemory, match="--esm-loading sequential"):
        memory.plan(spec, device=torch.device("cuda:0"), dtype=torch.float16,
                    oracle_dtype=torch.float32, loaded=set(), loading="together")
    with pytest.raises(ValueError, match="loading='later' is not one of"):
        memory.plan(spec, device=torch.device("cpu"), dtype=torch.float16,
                    oracle_dtype=torch.float32, loaded=set(), loading="later")


def test_config_rejects_unknown_loading():
    with pytest.raises(ValueError, match="loading='lazy' is not one of auto, together"):
        Config.from_mapping({"loading": "lazy"})


def test_half_stored_checkpoint_loads_as_float32_and_counts_right(tmp_path, monkeypatch):
    """The synthetic 15B file is written in float16 (a float32 one is 60 GB); shown here on
    the 8M architecture, with the same code."""
    monkeypatch.setenv("ESMFUZZ_CACHE", str(tmp_path))
    monkeypatch.setattr(synthetic, "_STORED_HALF", {"esm2_t6_8M_UR50D"})
    path = synthetic_checkpoint("esm2_t6_8M_UR50D", seed=5)
    state = read_state(path)
    assert {t.dtype for t in state.values()} == {torch.float16}
    local = tmp_path / "esm2_t6_8M_UR50D.pt"
    shutil.copy(path, local)
    shutil.copy(path.with_name("esm2_t6_8M_UR50D-contact-regression.pt"),
                tmp_path / "esm2_t6_8M_UR50D-contact-regression.pt")
    estimate = estimate_memory(str(local), device="cpu")
    assert estimate.parameters == ARCHITECTURES["esm2_t6_8M_UR50D"].parameters
    assert local.stat().st_size < 3 * estimate.parameters  # the file size alone says half
    model, _ = load_model(str(local))
    weight = model.embed_tokens.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, weight.half().float())


@pytest.mark.gpu
def test_sequential_on_cuda_moves_weights_off_the_device(esmfuzz_cache):
    pair = model_pair(DEFAULT_SPEC, device="cuda", loading="sequential")
    shuttle = pair.shuttle
    shuttle.capacity = shuttle.nbytes(pair.oracle)
    harness = Harness(Config(device="cuda", loading="sequential"))
    assert harness.pair is pair
    verdict = harness.check("error_ratio", SEQUENCES)
    assert verdict.ok, verdict.message()
    on_device = [m for m in (pair.reference, pair.candidate, pair.oracle)
                 if m.embed_tokens.weight.device.type == "cuda"]
    assert on_device == shuttle.resident() and len(on_device) == 1
    assert pair.oracle.embed_tokens.weight.is_pinned() or pair.oracle in on_device


def test_device_memory_limit_plans_as_on_a_smaller_gpu(monkeypatch):
    """--esm-device-memory 40 on an H200 plans as an A100-40GB would."""
    _fake_machine(monkeypatch, device_gib=139, host_gib=128)
    spec, cuda = parse_spec("esm2_t36_3B_UR50D"), torch.device("cuda:0")
    kwargs = dict(device=cuda, dtype=torch.float16, oracle_dtype=torch.float64, loaded=set(),
                  device_limit=40 * GiB)
    chosen = memory.plan(spec, **kwargs)
    assert (chosen.oracle_dtype, chosen.loading) == (torch.float32, "together")
    assert chosen.estimate.available_device == 40 * GiB
    chosen = memory.plan(spec, **kwargs, loading="sequential")
    assert (chosen.oracle_dtype, chosen.loading) == (torch.float64, "sequential")


@pytest.mark.parametrize("value", ["-1", "lots", "nan"])
def test_config_rejects_bad_device_memory(value):
    with pytest.raises(ValueError, match=f"device-memory={value!r} must be|is not a number"):
        Config.from_mapping({"device-memory": value})
