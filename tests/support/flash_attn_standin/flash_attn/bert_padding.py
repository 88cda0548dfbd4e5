"""``flash_attn.bert_padding`` for the CPU stand-in: flash_attn 2.7+ semantics (``unpad_input``
returns five values, as esme 0.0.9 unpacks), in plain torch indexing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pad_input", "unpad_input"]


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """[B, S, ...] and a [B, S] mask (1 = token) -> (tokens [nnz, ...], indices into the
    flattened [B * S], cu_seqlens int32 [B + 1], max_seqlen int, used seqlens int32 [B])."""
    all_masks = (attention_mask + unused_mask) if unused_mask is not None else attention_mask
    seqlens = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen = seqlens.max().item()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, max_seqlen, used_seqlens


def pad_input(hidden_states, indices, batch, seqlen):
    """[nnz, ...] -> [batch, seqlen, ...], zeros where no token was."""
    out = torch.zeros(batch * seqlen, *hidden_states.shape[1:], device=hidden_states.device,
                      dtype=hidden_states.dtype)
    out[indices] = hidden_states
    return out.reshape(batch, seqlen, *hidden_states.shape[1:])
