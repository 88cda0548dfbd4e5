"""Packed ESM-2 forwards for the plugin and false-positive tests, written without esmfuzz.

``packed(model, tokens, cu_seqlens, max_seqlen, repr_layers) -> {layer: Tensor[N, D]}``
with ``tokens`` the packed ``[N]`` stream and ``cu_seqlens`` the ``[B + 1]`` boundaries.

A control for false positives must be correct yet compute differently from the padded
baseline (other kernels, other summation orders): one that repeats the baseline's exact
arithmetic matches it bit for bit and so proves nothing about the thresholds. The
controls listed in :data:`CONTROLS` differ in their attention kernel, token-dropout
rounding and a fused q/k/v projection; the fuzzer must report nothing on any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from esm.modules import gelu
from esm.rotary_embedding import rotate_half

__all__ = [
    "half_only_packed",
    "CONTROLS",
    "blockdiag_packed",
    "independent_packed",
    "jittery_attention_packed",
    "jittery_packed",
    "leaky_packed",
    "sometimes_jittery_packed",
    "loop_packed",
    "tiled_packed",
]

CONTROLS = (
    "tests.impls.packed:loop_packed",
    "tests.impls.packed:tiled_packed",
    "tests.impls.packed:blockdiag_packed",
    "esmfuzz.forward:packed_forward",
)
"""Every correct control whose arithmetic differs from fair-esm's padded forward."""

_MASK_RATIO_TRAIN = 0.15 * 0.8
_KEY_TILE = 64
_QUERY_CHUNK = 1024

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[int]], torch.Tensor]
"""``(q, k, v, bounds) -> out``, all ``[N, heads, head_dim]``; ``bounds`` is ``cu_seqlens``."""


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _packed_esm2(model, tokens, cu_seqlens, repr_layers, attention: Attention):
    """ESM2.forward on the packed stream with ``attention`` in every layer.

    Besides the attention kernel, two harmless changes of rounding: token dropout's
    factor 0.88 / (1 - ratio) is formed before it multiplies ``x`` (fair-esm divides
    ``x * 0.88``), and q/k/v come from one matmul on the concatenated weights.
    """
    wanted = set(repr_layers)
    if not all(isinstance(i, int) and 0 <= i <= model.num_layers for i in wanted):
        raise ValueError(f"repr_layers={sorted(wanted, key=repr)} not in 0..{model.num_layers}")
    bounds = cu_seqlens.tolist()
    lengths = cu_seqlens.diff().long()
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=tokens.device), lengths)
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:
        is_mask = tokens == model.mask_idx
        x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
        masked = torch.zeros_like(lengths).index_add_(0, segment, is_mask.long())
        ratio = masked.to(x.dtype) / lengths
        x = x * ((1 - _MASK_RATIO_TRAIN) / (1 - ratio))[segment, None]
    out = {0: x} if 0 in wanted else {}

    first = model.layers[0].self_attn
    heads, head_dim, dim = first.num_heads, first.head_dim, first.embed_dim
    angle = _wide(x.dtype)
    positions = torch.arange(tokens.numel(), device=tokens.device) - cu_seqlens[:-1].long()[segment]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(positions.to(angle), inv_freq.to(device=tokens.device, dtype=angle))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)

    def rotate(t):
        wide = t.to(angle)
        return (wide * cos + rotate_half(wide) * sin).to(t.dtype)

    for index, layer in enumerate(model.layers, start=1):
        attn = layer.self_attn
        weight = torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
        bias = torch.cat((attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias))
        qkv = F.linear(layer.self_attn_layer_norm(x), weight, bias)
        q, k, v = (t.reshape(-1, heads, head_dim) for t in qkv.split(dim, dim=-1))
        o = attention(rotate(q * attn.scaling), rotate(k), v.contiguous(), bounds)
        x = x + attn.out_proj(o.reshape(-1, dim))
        x = x + layer.fc2(gelu(layer.fc1(layer.final_layer_norm(x))))
        if index in wanted:
            out[index] = x
    if model.num_layers in wanted:
        out[model.num_layers] = model.emb_layer_norm_after(x)
    return out


def _loop_attention(q, k, v, bounds):
    """Per sequence: einsum scores, FP32 (FP64) softmax, probabilities in the model dtype, P @ V."""
    wide = _wide(q.dtype)
    out = torch.empty_like(q)
    for start, end in zip(bounds, bounds[1:]):
        scores = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end])
        probs = torch.softmax(scores, dim=-1, dtype=wide).to(v.dtype)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v[start:end])
    return out


def _tiled_attention(q, k, v, bounds):
    """FlashAttention's online softmax per sequence over 64-key tiles, FP32 running state."""
    wide = _wide(q.dtype)
    out = torch.empty_like(q)
    for start, end in zip(bounds, bounds[1:]):
        qs = q[start:end].transpose(0, 1).to(wide)
        run_max = torch.full((*qs.shape[:2], 1), -torch.inf, dtype=wide, device=q.device)
        run_sum = torch.zeros_like(run_max)
        acc = torch.zeros_like(qs)
        for tile in range(start, end, _KEY_TILE):
            stop = min(tile + _KEY_TILE, end)
            kt = k[tile:stop].transpose(0, 1).to(wide)
            vt = v[tile:stop].transpose(0, 1).to(wide)
            scores = qs @ kt.transpose(-1, -2)
            new_max = torch.maximum(run_max, scores.amax(-1, keepdim=True))
            rescale = torch.exp(run_max - new_max)
            p = torch.exp(scores - new_max)
            run_sum = run_sum * rescale + p.sum(-1, keepdim=True)
            acc = acc * rescale + p.to(v.dtype).to(wide) @ vt
            run_max = new_max
        out[start:end] = (acc / run_sum).transpose(0, 1).to(q.dtype)
    return out


def _blockdiag_attention(q, k, v, bounds):
    """SDPA over the pack, 1024 queries at a time against the key span of the sequences
    they touch, with the block-diagonal mask of that chunk x span (other sequences stay
    in the softmax row, masked)."""
    cu = torch.tensor(bounds, device=q.device)
    segment = torch.bucketize(torch.arange(bounds[-1], device=q.device), cu, right=True) - 1
    out = torch.empty_like(q)
    for qs in range(0, bounds[-1], _QUERY_CHUNK):
        qe = min(qs + _QUERY_CHUNK, bounds[-1])
        ks, ke = bounds[int(segment[qs])], bounds[int(segment[qe - 1]) + 1]
        mask = segment[qs:qe, None] == segment[None, ks:ke]
        o = F.scaled_dot_product_attention(
            q[qs:qe].transpose(0, 1),
            k[ks:ke].transpose(0, 1),
            v[ks:ke].transpose(0, 1),
            attn_mask=mask,
            scale=1.0,
        )
        out[qs:qe] = o.transpose(0, 1)
    return out


def loop_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct control: a Python loop of einsum attention, one sequence at a time."""
    return _packed_esm2(model, tokens, cu_seqlens, repr_layers, _loop_attention)


def tiled_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct control: FlashAttention-style online softmax over 64-key tiles."""
    return _packed_esm2(model, tokens, cu_seqlens, repr_layers, _tiled_attention)


def blockdiag_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct control: SDPA with a block-diagonal mask over 1024-query chunks of the pack."""
    return _packed_esm2(model, tokens, cu_seqlens, repr_layers, _blockdiag_attention)


def _per_sequence(model, tokens, spans, repr_layers: Iterable[int], drop_first):
    """Run fair-esm's own forward on each span as a batch of one; cut ``drop_first[i]`` rows."""
    layers = list(repr_layers)
    pieces = {layer: [] for layer in layers}
    for (start, end), skip in zip(spans, drop_first):
        out = model(tokens[start:end][None], repr_layers=layers)["representations"]
        for layer in layers:
            pieces[layer].append(out[layer][0, skip:])
    return {layer: torch.cat(rows) for layer, rows in pieces.items()}


def independent_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct, but NOT a false-positive control: fair-esm's own forward on each sequence
    alone computes the same arithmetic as the padded baseline (only GEMM shapes differ),
    so it probes nothing that another kernel or summation order would.
    """
    bounds = cu_seqlens.tolist()
    spans = list(zip(bounds, bounds[1:]))
    return _per_sequence(model, tokens, spans, repr_layers, [0] * len(spans))


def leaky_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Faulty: an off-by-one start, ``cu_seqlens[i] - 1``, so every sequence after the
    first also attends to the last token of the sequence before it (dropped from the output).
    """
    bounds = cu_seqlens.tolist()
    spans = [(max(start - 1, 0), end) for start, end in zip(bounds, bounds[1:])]
    return _per_sequence(model, tokens, spans, repr_layers, [int(i > 0) for i in range(len(spans))])


def half_only_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct, but like FlashAttention kernels it takes float16/bfloat16 models only and
    refuses float32 with a TypeError (the candidate-dtype-only mode's use case)."""
    dtype = model.embed_tokens.weight.dtype
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"half_only_packed takes float16 or bfloat16 models, not {dtype}")
    return tiled_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers)


def _jitter(x: torch.Tensor) -> torch.Tensor:
    """Every element one ulp up or down, a new draw on every call (torch's global generator,
    which nothing here seeds): what atomics and split-K reductions do between calls."""
    up = torch.rand(x.shape, device=x.device) < 0.5
    toward = torch.where(up, float("inf"), float("-inf")).to(x.dtype)
    return torch.nextafter(x, toward)


def jittery_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct but nondeterministic: ``loop_packed`` with every output element moved one ulp
    up or down at random on each call."""
    out = loop_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers)
    return {layer: _jitter(x) for layer, x in out.items()}


def jittery_attention_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct but nondeterministic inside: every layer's attention output moves one ulp up or
    down at random on each call, and the layers after carry it on, as with a kernel whose
    reduction order changes between calls."""
    return _packed_esm2(model, tokens, cu_seqlens, repr_layers,
                        lambda q, k, v, bounds: _jitter(_loop_attention(q, k, v, bounds)))


def sometimes_jittery_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct but nondeterministic: ``loop_packed``, with ``jittery_packed``'s one-ulp moves
    on every other call of each dtype path only (a kernel that picks its reduction order by
    what else runs). Its jittered calls err about twice as far as its plain ones at exact
    layers, and so fail a bound set between the two; the two kinds of call differ by one
    ulp, within the same bound of a spread (two ulps)."""
    dtype = model.embed_tokens.weight.dtype
    calls = sometimes_jittery_packed.calls
    calls[dtype] = calls.get(dtype, 0) + 1
    out = loop_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers)
    if calls[dtype] % 2:
        return out
    return {layer: _jitter(x) for layer, x in out.items()}


sometimes_jittery_packed.calls = {}
