"""The FP32 reference, low-precision candidate and oracle copies, built once per process.

Pairs that differ only in the candidate's dtype share their reference and oracle copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from esmfuzz.config import resolve_device
from esmfuzz.models.checkpoint import load_model
from esmfuzz.models.loading import Shuttle, device_copy
from esmfuzz.models.memory import MemoryEstimate, Plan, plan
from esmfuzz.models.spec import DEFAULT_SPEC, ModelSpec, parse_dtype, parse_spec


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
    loading: str = "together"
    shuttle: Shuttle | None = None
    """Where ``loading`` is ``sequential``: what brings a copy to the device (see
    :meth:`ready`)."""

    @property
    def num_layers(self) -> int:
        return self.reference.num_layers

    def ready(self, model: torch.nn.Module) -> float:
        """Call before a forward of ``model``: under sequential loading, brings its weights
        to the device (evicting others); otherwise they are there already. The seconds spent
        moving weights."""
        return self.shuttle.ready(model) if self.shuttle is not None else 0.0


_PAIRS: dict[tuple, ModelPair] = {}
_COPIES: dict[tuple, torch.nn.Module] = {}
"""Copies by (spec, device, dtype, loading): pairs that differ only in the candidate's dtype
share their FP32 reference and their oracle, so their outputs are computed once."""
_SHUTTLES: dict[tuple, Shuttle] = {}


def plan_memory(
    spec: ModelSpec,
    *,
    device: torch.device,
    dtype: torch.dtype,
    oracle_dtype: torch.dtype,
    loading: str = "auto",
    device_memory: float = 0.0,
) -> Plan:
    """What :func:`model_pair` would build (:func:`memory.plan`), counting only the copies
    this process does not already hold on the device, within ``device_memory`` GiB (0: all
    that is free)."""
    loaded = {t for (text, where, t, mode) in _COPIES
              if (text, where, mode) == (spec.text, str(device), "together")}
    return plan(spec, device=device, dtype=dtype, oracle_dtype=oracle_dtype, loaded=loaded,
                loading=loading, device_limit=int(device_memory * 2**30) or None)


def model_pair(
    spec: str | ModelSpec = DEFAULT_SPEC,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float16",
    oracle_dtype: str | torch.dtype = "float64",
    loading: str = "auto",
    device_memory: float = 0.0,
) -> ModelPair:
    """Build (once per process) every copy before any forward pass.

    fair-esm caches rotary tables by length and device, not dtype: a model
    converted after an FP32 forward would mix dtypes. Each copy here is made
    from the freshly loaded FP32 weights, then never converted again.
    ``loading`` is ``together``, ``sequential`` or ``auto`` (the memory estimate decides;
    ``pair.oracle_note`` says what it chose).
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    device = resolve_device(device)
    dtype = parse_dtype(dtype)
    want_oracle = parse_dtype(oracle_dtype, option="oracle_dtype", allowed=("float64", "float32"))
    key = (spec.text, str(device), dtype, want_oracle, loading, device_memory)
    if key in _PAIRS:
        return _PAIRS[key]
    chosen = plan_memory(spec, device=device, dtype=dtype, oracle_dtype=want_oracle,
                         loading=loading, device_memory=device_memory)
    want_oracle, mode = chosen.oracle_dtype, chosen.loading
    shuttle = None
    if mode == "sequential":
        workspace = chosen.estimate.parts["workspace"]
        free = chosen.estimate.available_device or chosen.estimate.available_host or 0
        shuttle = _SHUTTLES.setdefault((spec.text, str(device)),
                                       Shuttle(device, max(0, free - workspace)))
    model, alphabet = load_model(spec)
    copies = {}
    for role, role_dtype in (
        ("reference", torch.float32),
        ("candidate", dtype),
        ("oracle", want_oracle),
    ):
        at = (spec.text, str(device), role_dtype, mode)
        if at not in _COPIES:
            _COPIES[at] = (shuttle.host_copy(model, role_dtype) if shuttle
                           else device_copy(model, device, role_dtype))
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
        chosen.note,
        chosen.estimate,
        mode,
        shuttle,
    )
    _PAIRS[key] = pair
    return pair
