"""Varlen attention backends and their selection.

All backends take q, k, v of shape [N, H, D] (q already scaled, as in fair-esm)
and attend only within each ``cu_seqlens`` segment.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch
import torch.nn.functional as F

from esmfuzz.config import BACKENDS, dtype_name
from esmfuzz.errors import EsmfuzzError

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "backend_status",
    "select_backend",
    "varlen_attention",
]

_FLASH_DTYPES = (torch.float16, torch.bfloat16)


class BackendUnavailable(EsmfuzzError, RuntimeError):
    """The requested attention backend cannot run on this device and dtype."""


def _why_not(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if ``backend`` can run here, else the reason it cannot."""
    if backend == "sdpa":
        return None
    if backend == "flash-attn" and importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install 'esmfuzz[flash]')"
    if backend == "torch-varlen":
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            return f"torch {torch.__version__} has no torch.nn.attention.varlen (needs >= 2.11)"
        if "scale" not in inspect.signature(varlen_attn).parameters:
            return f"torch {torch.__version__}'s varlen_attn takes no scale= (needs >= 2.11)"
    if device.type != "cuda":
        return f"it runs on CUDA only, and the device is {device}"
    if dtype not in _FLASH_DTYPES:
        return f"FlashAttention kernels take float16 or bfloat16 only, not {dtype_name(dtype)}"
    return None


def backend_status(device: torch.device | str, dtype: torch.dtype) -> dict[str, str | None]:
    """Map each backend to None (available) or the reason it is not."""
    device = torch.device(device)
    return {name: _why_not(name, device, dtype) for name in BACKENDS}


def select_backend(name: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """Resolve ``auto`` to the first available backend; refuse one that cannot run, saying why."""
    device = torch.device(device)
    if name == "auto":
        status = backend_status(device, dtype)
        return next(b for b in BACKENDS if status[b] is None)
    if name not in BACKENDS:
        raise BackendUnavailable(
            f"backend={name!r} is not one of {', '.join(('auto',) + BACKENDS)}"
        )
    reason = _why_not(name, device, dtype)
    if reason is not None:
        raise BackendUnavailable(f"backend={name!r} is not available here: {reason}")
    return name


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    backend: str,
) -> torch.Tensor:
    """Block-diagonal attention with unit scale (q arrives pre-scaled)."""
    if backend == "flash-attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=1.0
        )
    if backend == "torch-varlen":
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=1.0)
    if backend == "sdpa":
        return _sdpa_per_sequence(q, k, v, cu_seqlens)
    raise BackendUnavailable(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")


def _sdpa_per_sequence(q, k, v, cu_seqlens):
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds, bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out[start:end] = F.scaled_dot_product_attention(qs, ks, vs, scale=1.0).transpose(0, 1)
    return out
