"""Two packed forwards that follow the contract of DESIGN.md, written without esmfuzz.forward.

``packed(model, tokens, cu_seqlens, max_seqlen, repr_layers) -> {layer: Tensor[N, D]}``
with ``tokens`` the packed ``[N]`` stream and ``cu_seqlens`` the ``[B + 1]`` boundaries.
"""

from __future__ import annotations

import torch


def _per_sequence(model, tokens, spans, repr_layers, drop_first):
    """Run fair-esm's own forward on each span as a batch of one; cut ``drop_first[i]`` rows."""
    layers = list(repr_layers)
    pieces = {layer: [] for layer in layers}
    for (start, end), skip in zip(spans, drop_first):
        out = model(tokens[start:end][None], repr_layers=layers)["representations"]
        for layer in layers:
            pieces[layer].append(out[layer][0, skip:])
    return {layer: torch.cat(rows) for layer, rows in pieces.items()}


def independent_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """Correct: every sequence alone, exactly its own ``cu_seqlens`` span."""
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
