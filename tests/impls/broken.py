"""Packed forwards that break the contract the way code under development does.

Each wraps the correct ``loop_packed`` and breaks one thing on every call, so that the
fuzzer's finding, once shrunk, is the smallest layout it draws. ``pytest fuzz/`` must
report each as a named finding with a saved case, never crash on it.
"""

from __future__ import annotations

import time

import torch

from tests.impls.packed import loop_packed

__all__ = ["hangs", "mutates_cu_seqlens", "returns_nan", "raises", "wrong_shape"]


def raises(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")


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
