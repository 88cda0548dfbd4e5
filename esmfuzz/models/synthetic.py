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

from esmfuzz.models.spec import ARCHITECTURES


def cache_dir() -> Path:
    """Where synthetic checkpoints live: ``$ESMFUZZ_CACHE`` or ``~/.cache/esmfuzz``."""
    root = os.environ.get("ESMFUZZ_CACHE") or Path.home() / ".cache" / "esmfuzz"
    return Path(root)


_SYNTHETIC_VERSION = 3
"""Bump whenever the synthetic weights change, so cached checkpoints are not reused."""
_QK_SHARPEN = 2.0
_STORED_HALF = {"esm2_t48_15B_UR50D"}
"""Written in float16 (30 GB, not 60 GB in float32): the file must fit on the disk, and the
host must hold it next to the FP32 model built from it (a 64 GB disk and 128 GB of memory on
the H200 machines esmfuzz is measured on). The FP32 reference then holds the float16 values."""


def synthetic_checkpoint(name: str, seed: int = 0) -> Path:
    """Write, once, a fair-esm-format checkpoint of ``name``'s architecture with seeded weights."""
    arch = ARCHITECTURES[name]
    folder = cache_dir() / "synthetic" / f"v{_SYNTHETIC_VERSION}" / f"seed{seed}"
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
