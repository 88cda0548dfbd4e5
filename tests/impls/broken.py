"""Packed forwards that break the contract the way code under development does.

Each wraps the correct ``loop_packed`` and breaks one thing on every call, so that the
fuzzer's finding, once shrunk, is the smallest layout it draws. ``pytest fuzz/`` must
report each as a named finding with a saved case, never crash on it.
"""

from __future__ import annotations

import time

import torch

from tests.impls.packed import loop_packed

__all__ = ["hangs", "mutates_cu_seqlens", "out_of_memory", "racy", "returns_nan", "raises",
           "wrong_shape"]


def raises(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")


def out_of_memory(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    out_of_memory.calls += 1
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "79.19 GiB of which 1.06 GiB is free. (simulated)"
    )


out_of_memory.calls = 0


def racy(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Right on every other call; on the others a race lets the stream's last row overwrite
    its first (``<cls>`` of the first sequence), as a kernel that reads a buffer before
    another block wrote it. Alternating per dtype, so that tests see it on every pair of
    calls of one dtype path."""
    dtype = model.embed_tokens.weight.dtype
    racy.calls[dtype] = racy.calls.get(dtype, 0) + 1
    out = loop_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers)
    if racy.calls[dtype] % 2:
        return out
    return {layer: torch.cat([x[-1:], x[1:]]) for layer, x in out.items()}


racy.calls = {}


def wrong_shape(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    out = loop_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers)
    return {layer: x[:-1] for layer, x in out.items()}


def returns_nan(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    out = loop_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers)
    return {layer: torch.full_like(x, float("nan")) for layer, x in out.items()}


def hangs(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    time.sleep(3600)


def mutates_cu_seqlens(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    out = loop_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers)
    cu_seqlens[-1] += 1
    return out
