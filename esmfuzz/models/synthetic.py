"""Seeded stand-ins for the real ESM-2 weights, written as fair-esm checkpoint files.

They are read by the same loader as a real model, so the default spec exercises the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

import torch

from esmfuzz.models.spec import ARCHITECTURES, DEFAULT_WEIGHTS, WEIGHT_PROFILES


def cache_dir() -> Path:
    """Where synthetic checkpoints live: ``$ESMFUZZ_CACHE`` or ``~/.cache/esmfuzz``."""
    root = os.environ.get("ESMFUZZ_CACHE") or Path.home() / ".cache" / "esmfuzz"
    return Path(root)


_SYNTHETIC_VERSION = 4
"""Bump whenever the synthetic weights change, so cached checkpoints are not reused."""

_QK_SHARPEN = 2.0
_STORED_HALF = {"esm2_t48_15B_UR50D"}
"""Written in float16 (30 GB, not 60 GB in float32): the file must fit on the disk, and the
host must hold it next to the FP32 model built from it (a 64 GB disk and 128 GB of memory on
the H200 machines esmfuzz is measured on). The FP32 reference then holds the float16 values."""


def synthetic_checkpoint(name: str, seed: int = 0, profile: str = DEFAULT_WEIGHTS) -> Path:
    """Write, once, a fair-esm-format checkpoint of ``name``'s architecture with seeded weights."""
    if profile not in WEIGHT_PROFILES:
        raise ValueError(f"profile={profile!r} must be one of {', '.join(WEIGHT_PROFILES)}")
    arch = ARCHITECTURES[name]
    folder = cache_dir() / "synthetic" / f"v{_SYNTHETIC_VERSION}" / profile / f"seed{seed}"
    model_path = folder / f"{name}.pt"
    regression_path = folder / f"{name}-contact-regression.pt"
    if model_path.exists() and regression_path.exists():
        return model_path
    folder.mkdir(parents=True, exist_ok=True)
    from esm.model.esm2 import ESM2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(arch.layers, arch.embed_dim, arch.heads, "ESM-1b", arch.token_dropout)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                # Identity norms would hide a missing or doubled layer norm.
                torch.nn.init.normal_(module.weight, 1.0, 0.1)
                torch.nn.init.normal_(module.bias, 0.0, 0.1)
        with torch.no_grad():
            for layer in model.layers:
                # Default init gives attention logits of std ~0.3: near-uniform attention,
                # which hides position and accumulation faults that trained models show.
                layer.self_attn.q_proj.weight.mul_(_QK_SHARPEN)
                layer.self_attn.k_proj.weight.mul_(_QK_SHARPEN)
            if profile == "trained":
                _trained_like(model, seed)
    state = model.state_dict()
    del model
    if name in _STORED_HALF:
        for key, value in state.items():  # one tensor at a time: the host holds one model
            state[key] = value.half() if value.is_floating_point() else value
    regression = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.regression")}
    cfg = argparse.Namespace(
        encoder_layers=arch.layers,
        encoder_embed_dim=arch.embed_dim,
        encoder_ffn_embed_dim=4 * arch.embed_dim,
        encoder_attention_heads=arch.heads,
        token_dropout=arch.token_dropout,
        arch="ESM-1b",
    )
    body = {
        "cfg": {"model": cfg},
        "model": {"encoder.sentence_encoder." + k: v for k, v in state.items()},
    }
    _atomic_save({"model": regression}, regression_path)
    _atomic_save(body, model_path)
    return model_path


def _atomic_save(obj, path: Path) -> None:
    """Write through a temporary file, so a concurrent or interrupted writer never leaves a
    half-written checkpoint that the existence check above would take as done."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


MASSIVE = (1500.0, -400.0)
"""What the FFN of layer :func:`massive_layer` writes into two residual channels of
``<cls>`` and ``<eos>``: massive activations, one large positive and one negative, so the
pre-LayerNorm range of those tokens is asymmetric."""
OUTLIERS = (40.0, -15.0)
"""Offsets that layer :func:`massive_layer` adds to two more channels of every token:
outlier feature dimensions, again asymmetric."""
SINK_LOGITS = (10.0, 16.0)
"""Attention logits of sink heads towards ``<cls>``/``<eos>``, spread over this range. At
16 an un-shifted ``exp`` overflows float16 (its largest finite value is 65504 = e^11.1)."""
SINK_SHARE = 4
"""One head in SINK_SHARE of every layer after :func:`massive_layer` is a sink head."""
_MARK = 10.0
"""The marker channel of ``<cls>``/``<eos>`` embeddings, which layer :func:`massive_layer`'s
FFN detects."""


def massive_layer(layers: int) -> int:
    """0-based index of the layer whose FFN writes the massive activations: after the
    first layers, as in trained transformers."""
    return max(1, layers // 8)


def _trained_like(model, seed: int) -> None:
    """Give random ESM-2 weights the activation traits of trained ones, deliberately.

    - Massive activations: ``<cls>`` and ``<eos>`` embeddings carry a marker channel; one
      FFN unit of layer :func:`massive_layer` fires on it alone and writes ``MASSIVE`` into
      two channels, which the residual stream then carries to the last layer.
    - Outlier channels: the same layer's FFN bias adds ``OUTLIERS`` to two channels of
      every token.
    - Attention sinks with large logits: in every later layer, one head in ``SINK_SHARE``
      reads the massive channel into the key of its lowest-frequency rotary pair (which
      barely turns over 1024 positions) and has a constant query there, so every query
      meets ``<cls>``/``<eos>`` at a logit in ``SINK_LOGITS``.
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    d, heads = model.embed_dim, model.attention_heads
    head_dim = d // heads
    mark, big, neg, out_pos, out_neg = torch.randperm(d, generator=gen)[:5].tolist()
    specials = (model.cls_idx, model.eos_idx)
    model.embed_tokens.weight[:, mark] = 0.0
    model.embed_tokens.weight[list(specials), mark] = _MARK
    first = massive_layer(len(model.layers))
    ffn = model.layers[first]
    unit = int(torch.randint(ffn.fc1.out_features, (1,), generator=gen))
    gain, threshold = 3.0, 0.45 * _MARK
    fired = gain * (0.8 * _MARK - threshold)
    ffn.fc1.weight[unit] = 0.0
    ffn.fc1.weight[unit, mark] = gain
    ffn.fc1.bias[unit] = -gain * threshold
    ffn.fc2.weight[:, unit] = 0.0
    ffn.fc2.weight[big, unit] = MASSIVE[0] / fired
    ffn.fc2.weight[neg, unit] = MASSIVE[1] / fired
    ffn.fc2.bias[out_pos] += OUTLIERS[0]
    ffn.fc2.bias[out_neg] += OUTLIERS[1]
    share = MASSIVE[0] / (MASSIVE[0] ** 2 + MASSIVE[1] ** 2) ** 0.5
    normed_big = share * d**0.5
    for layer in model.layers[first + 1 :]:
        attn = layer.self_attn
        sinks = torch.randperm(heads, generator=gen)[: max(1, heads // SINK_SHARE)].tolist()
        logits = torch.empty(len(sinks)).uniform_(*SINK_LOGITS, generator=gen)
        logits[0] = SINK_LOGITS[1]
        for head, logit in zip(sinks, logits.tolist()):
            for dim in (head_dim // 2 - 1, head_dim - 1):
                row = head * head_dim + dim
                attn.k_proj.weight[row] = 0.0
                attn.k_proj.bias[row] = 0.0
                attn.k_proj.weight[row, big] = 1.0
                attn.q_proj.weight[row] = 0.0
                attn.q_proj.bias[row] = logit / (2 * attn.scaling * normed_big)
