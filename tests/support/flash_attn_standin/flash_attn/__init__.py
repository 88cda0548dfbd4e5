"""CPU stand-in for ``flash_attn``: a test double, NOT FlashAttention.

esm-efficient (``esme``) imports ``flash_attn`` unconditionally, and flash_attn cannot be
installed without CUDA (its build needs nvcc). This package provides exactly what esme 0.0.9
imports, so that esme's code around the kernel (and esmfuzz's adapter for it: weight map,
layer numbering, ``cu_seqlens`` handling) can be tested on a CPU:

- ``flash_attn_varlen_func``: attention computed per ``cu_seqlens`` segment with
  ``torch.nn.functional.scaled_dot_product_attention`` in float32 (float64 for float64
  inputs), cast back to the input dtype. Unlike the real kernel it accepts any floating
  dtype and any device; options esme never passes are refused.
- ``bert_padding.pad_input`` / ``unpad_input``: flash_attn 2.7+ semantics.

Nothing tested on it says anything about FlashAttention's numerics. It is never on
``sys.path`` by default: ``tests/test_adapters_esm_efficient.py`` adds it (only where the real
flash_attn is absent), or ``PYTHONPATH=tests/support/flash_attn_standin`` for a fuzz run.
``ESMFUZZ_STANDIN`` (here and on ``flash_attn_varlen_func``) lets the adapter tell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ESMFUZZ_STANDIN", "flash_attn_varlen_func"]
__version__ = "0.0.0+esmfuzz.cpu.standin"

ESMFUZZ_STANDIN = True
"""Marks this package as esmfuzz's CPU stand-in (the real flash_attn has no such name)."""


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """Non-causal attention of each ``cu_seqlens`` segment on its own: q, k, v [N, H, D] ->
    [N, H, D], exact SDPA in float32 or better (a reference, not the flash kernel)."""
    unsupported = {
        "dropout_p": dropout_p != 0.0, "causal": causal,
        "window_size": tuple(window_size) != (-1, -1), "softcap": softcap != 0.0,
        "alibi_slopes": alibi_slopes is not None, "return_attn_probs": return_attn_probs,
        "block_table": block_table is not None,
    }
    if any(unsupported.values()):
        raise NotImplementedError(
            f"flash_attn CPU stand-in: {[k for k, on in unsupported.items() if on]} "
            f"not supported (esme does not use them)")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype != torch.int32:  # as the real kernel
            raise RuntimeError(f"{name} must have dtype int32, got {cu.dtype}")
    if not torch.equal(cu_seqlens_q, cu_seqlens_k):
        raise NotImplementedError("flash_attn CPU stand-in: cu_seqlens_q != cu_seqlens_k")
    bounds = cu_seqlens_q.tolist()
    if bounds[0] != 0 or bounds[-1] != q.shape[0]:
        raise ValueError(f"cu_seqlens {bounds} do not span the {q.shape[0]} tokens")
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    if min(max_seqlen_q, max_seqlen_k) < longest:
        # the real kernel would not compute every row: refuse rather than guess its output
        raise ValueError(f"max_seqlen {min(max_seqlen_q, max_seqlen_k)} < longest "
                         f"segment {longest}")
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty_like(q)
    for start, end in zip(bounds, bounds[1:]):
        qs, ks, vs = (t[start:end].to(wide).transpose(0, 1) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=softmax_scale)
        out[start:end] = o.transpose(0, 1).to(q.dtype)
    return out


flash_attn_varlen_func.ESMFUZZ_STANDIN = True
