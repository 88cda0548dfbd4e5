"""The FP32 reference, low-precision candidate and oracle copies, built once per process.

Pairs that differ only in the candidate's dtype share their reference and oracle copies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from esmfuzz.models.checkpoint import load_model
from esmfuzz.models.memory import MemoryEstimate, plan
from esmfuzz.models.spec import DEFAULT_SPEC, ModelSpec, parse_dtype, parse_spec, resolve_device


@dataclass
class ModelPair:
    """The FP32 reference, the low-precision candidate, and the error-ratio oracle."""

    spec: ModelSpec
    device: torch.device
    alphabet: object
    reference: torch.nn.Module
    candidate: torch.nn.Module
    oracle: torch.nn.Module
    dtype: torch.dtype
    oracle_dtype: torch.dtype
    oracle_note: str
    memory: MemoryEstimate

    @property
    def num_layers(self) -> int:
        return self.reference.num_layers


_PAIRS: dict[tuple, ModelPair] = {}
_COPIES: dict[tuple, torch.nn.Module] = {}
"""Copies by (spec, device, dtype): pairs that differ only in the candidate's dtype share
their FP32 reference and their oracle, so their outputs are computed once."""


def plan_memory(
    spec: ModelSpec, *, device: torch.device, dtype: torch.dtype, oracle_dtype: torch.dtype
) -> tuple[MemoryEstimate, torch.dtype, str]:
    """(estimate, oracle dtype, note) of the pair :func:`model_pair` would build, counting
    only the copies this process does not already hold (see :func:`memory.plan`).
    """
    loaded = {t for (text, where, t) in _COPIES if (text, where) == (spec.text, str(device))}
    return plan(spec, device=device, dtype=dtype, oracle_dtype=oracle_dtype, loaded=loaded)


def model_pair(
    spec: str | ModelSpec = DEFAULT_SPEC,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float16",
    oracle_dtype: str | torch.dtype = "float64",
) -> ModelPair:
    """Build (once per process) every copy before any forward pass.

    fair-esm caches rotary tables by length and device, not dtype: a model
    converted after an FP32 forward would mix dtypes. Each copy here is made
    from the freshly loaded FP32 weights, then never converted again.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    device = resolve_device(device)
    dtype = parse_dtype(dtype)
    want_oracle = parse_dtype(oracle_dtype, option="oracle_dtype", allowed=("float64", "float32"))
    key = (spec.text, str(device), dtype, want_oracle)
    if key in _PAIRS:
        return _PAIRS[key]
    estimate, want_oracle, note = plan_memory(spec, device=device, dtype=dtype,
                                              oracle_dtype=want_oracle)
    model, alphabet = load_model(spec)
    copies = {}
    for role, role_dtype in (
        ("reference", torch.float32),
        ("candidate", dtype),
        ("oracle", want_oracle),
    ):
        at = (spec.text, str(device), role_dtype)
        if at not in _COPIES:
            _COPIES[at] = copy.deepcopy(model).to(device=device, dtype=role_dtype).eval()
        copies[role] = _COPIES[at]
    del model
    pair = ModelPair(
        spec,
        device,
        alphabet,
        copies["reference"],
        copies["candidate"],
        copies["oracle"],
        dtype,
        want_oracle,
        note,
        estimate,
    )
    _PAIRS[key] = pair
    return pair
