"""Packed batches: sequences concatenated into one token stream with ``cu_seqlens``.

Every field is validated with an error naming the field and the bad value, so a
malformed layout is reported before it reaches a kernel that would read out of
bounds or silently attend across a boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from esmfuzz.alphabet import validate_sequence
from esmfuzz.errors import EsmfuzzError

__all__ = [
    "PADDED_BATCH_TOKENS",
    "PackedBatch",
    "PackingError",
    "check_packed",
    "pack",
    "pad",
    "position_ids",
    "unpack",
]


class PackingError(EsmfuzzError, ValueError):
    """A packed batch whose fields contradict the packed contract."""


@dataclass(frozen=True)
class PackedBatch:
    tokens: torch.Tensor
    """LongTensor [N]: each sequence as ``<cls> residues <eos>``, concatenated."""
    cu_seqlens: torch.Tensor
    """int32 [B+1]: 0 = cu[0] < cu[1] < ... < cu[B] = N."""
    max_seqlen: int

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def lengths(self) -> list[int]:
        return self.cu_seqlens.diff().tolist()

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.tokens.to(device),
            self.cu_seqlens.to(device),
            self.max_seqlen,
        )


def check_packed(tokens: object, cu_seqlens: object, max_seqlen: object) -> None:
    """Raise :class:`PackingError` unless the three fields obey the packed contract."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1:
        raise PackingError(f"tokens must be a 1-D LongTensor, got {_describe(tokens)}")
    if tokens.dtype != torch.long:
        raise PackingError(f"tokens must have dtype torch.int64, got tokens.dtype={tokens.dtype}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.ndim != 1:
        raise PackingError(f"cu_seqlens must be a 1-D int32 tensor, got {_describe(cu_seqlens)}")
    if cu_seqlens.dtype != torch.int32:
        raise PackingError(
            f"cu_seqlens must have dtype torch.int32 (what varlen kernels take), "
            f"got cu_seqlens.dtype={cu_seqlens.dtype}"
        )
    cu = cu_seqlens.tolist()
    if len(cu) < 2:
        raise PackingError(f"cu_seqlens={cu!r} must hold at least two offsets (one sequence)")
    if cu[0] != 0:
        raise PackingError(f"cu_seqlens={_clip(cu)} must start at 0, starts at {cu[0]}")
    steps = [b - a for a, b in zip(cu, cu[1:])]
    bad = next((i for i, s in enumerate(steps) if s <= 0), None)
    if bad is not None:
        raise PackingError(
            f"cu_seqlens={_clip(cu)} must be strictly increasing: "
            f"cu_seqlens[{bad + 1}]={cu[bad + 1]} <= cu_seqlens[{bad}]={cu[bad]}"
        )
    if cu[-1] != tokens.numel():
        raise PackingError(
            f"cu_seqlens={_clip(cu)} must end at the token count {tokens.numel()}, ends at {cu[-1]}"
        )
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise PackingError(f"max_seqlen must be an int, got max_seqlen={max_seqlen!r}")
    longest = max(steps)
    if max_seqlen < longest:
        raise PackingError(
            f"max_seqlen={max_seqlen} is smaller than the longest sequence ({longest} tokens, "
            f"sequence {steps.index(longest)})"
        )


def position_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 at every ``cu_seqlens`` boundary."""
    lengths = cu_seqlens.diff().long()
    starts = cu_seqlens[:-1].long().repeat_interleave(lengths)
    return torch.arange(int(cu_seqlens[-1]), device=cu_seqlens.device) - starts


def pack(
    sequences: Sequence[str], alphabet, *, device: torch.device | str | None = None
) -> PackedBatch:
    """Tokenise with fair-esm's own alphabet and concatenate, one ``<cls> ... <eos>`` each."""
    if isinstance(sequences, str) or not len(sequences):
        raise PackingError(f"sequences must be a non-empty list of str, got {sequences!r}")
    chunks = []
    for i, sequence in enumerate(sequences):
        validate_sequence(sequence, name=f"sequences[{i}]")
        chunks.append([alphabet.cls_idx, *alphabet.encode(sequence), alphabet.eos_idx])
    lengths = torch.tensor([len(c) for c in chunks], dtype=torch.int32)
    cu_seqlens = torch.zeros(len(chunks) + 1, dtype=torch.int32)
    cu_seqlens[1:] = lengths.cumsum(0)
    tokens = torch.tensor([t for c in chunks for t in c], dtype=torch.long)
    batch = PackedBatch(tokens, cu_seqlens, int(lengths.max()))
    return batch.to(device) if device is not None else batch


PADDED_BATCH_TOKENS = 4096
"""The most tokens, padding included, esmfuzz puts in one padded batch of several
sequences: the workspace its memory estimate plans for. Eight 650M workers on one H200
ran out of memory on a float64 batch of 141 x 172 tokens of a crowded pack."""


def pad(sequences: Sequence[str], alphabet) -> torch.Tensor:
    """The [B, T] token batch of fair-esm's own batch converter (``<pad>`` = 1 fills)."""
    for i, sequence in enumerate(sequences):
        validate_sequence(sequence, name=f"sequences[{i}]")
    _, _, tokens = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(sequences)])
    return tokens


def unpack(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Split a [N, ...] packed tensor back into one [L_i, ...] tensor per sequence."""
    return list(packed.split(cu_seqlens.diff().tolist()))


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def _clip(values: list[int], limit: int = 12) -> str:
    if len(values) <= limit:
        return repr(values)
    return repr(values[:limit])[:-1] + f", ... ({len(values)} offsets)]"
