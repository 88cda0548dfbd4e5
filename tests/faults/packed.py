"""Faulty packed forwards, one per bug class of a production packed ESM-2 path.

Each is esmfuzz's reference :class:`~esmfuzz.forward.PackedForward` with one
step overridden, so the diff against the correct path is the bug and nothing
else. Each is importable as ``tests.faults.packed:<name>`` for
``--esm-packed-impl``.
"""

import itertools

import torch
import torch.nn.functional as F

from esmfuzz.attention import varlen_attention
from esmfuzz.forward import PackedForward

TILE = 64
TRUNCATE_AT = 512


def _segments(cu_seqlens):
    bounds = cu_seqlens.tolist()
    return list(zip(bounds, bounds[1:]))


def _attend(q, k, v):
    """Plain attention of one segment, [L, H, D] in and out, unit scale."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), scale=1.0
    )
    return out.transpose(0, 1)


class PositionsRunOn(PackedForward):
    """Rotary positions count on across boundaries instead of restarting at 0."""

    def positions(self, cu_seqlens):
        return torch.arange(int(cu_seqlens[-1]), device=cu_seqlens.device)


class RotaryTableOverStream(PositionsRunOn):
    """One rotary table over the whole stream, built in the model dtype (as fair-esm does)."""

    def rotary(self, positions, head_dim, dtype):
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        freqs = torch.outer(positions.to(dtype), inv_freq.to(positions.device, dtype))
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)


class LeakEveryBoundary(PackedForward):
    """cu_seqlens off by one: every inner boundary sits one token late."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        shifted = cu_seqlens.clone()
        shifted[1:-1] += 1
        return varlen_attention(q, k, v, shifted, max_seqlen + 1, backend=backend)


class LeakPastFirstTile(PackedForward):
    """Off by one only at boundaries past the first 64-token tile."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        shifted = cu_seqlens.clone()
        late = shifted >= TILE
        late[0] = late[-1] = False
        shifted[late] += 1
        return varlen_attention(q, k, v, shifted, max_seqlen + 1, backend=backend)


class LeakInBigPacks(PackedForward):
    """Off by one only in packs of five or more sequences."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        if cu_seqlens.numel() - 1 >= 5:
            cu_seqlens = cu_seqlens.clone()
            cu_seqlens[1:-1] += 1
            max_seqlen += 1
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, backend=backend)


class LeakPast32Sequences(PackedForward):
    """Off by one only in packs of more than 32 sequences (a second kernel path for big
    batches, as varlen kernels have)."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        if cu_seqlens.numel() - 1 > 32:
            cu_seqlens = cu_seqlens.clone()
            cu_seqlens[1:-1] += 1
            max_seqlen += 1
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, backend=backend)


class LeakPast2048Tokens(PackedForward):
    """Off by one only at boundaries past token 2048 (an index that overflows a tile table)."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        shifted = cu_seqlens.clone()
        late = shifted > 2048
        late[-1] = False
        shifted[late] += 1
        return varlen_attention(q, k, v, shifted, max_seqlen + 1, backend=backend)


class MissingTokenDropoutRescale(PackedForward):
    """<mask> rows zeroed but the 0.88 / (1 - mask ratio) rescale left out."""

    def dropout_rescale(self, model, x, tokens, cu_seqlens):
        return x


class MaskRatioOverPack(PackedForward):
    """Token-dropout mask ratio counted over the whole pack, not per sequence."""

    def dropout_rescale(self, model, x, tokens, cu_seqlens):
        ratio = (tokens == model.mask_idx).sum().to(x.dtype) / tokens.numel()
        return x * (1 - 0.15 * 0.8) / (1 - ratio)


class MaskNotZeroed(PackedForward):
    """<mask> embeddings kept (the padded path zeroes them); the rescale still applied."""

    def zero_masks(self, model, x, tokens):
        return x


class ReprLayerOffByOne(PackedForward):
    """Layer i answered with the output of layer i + 1 (the last layer stays right)."""

    def __call__(self, model, tokens, cu_seqlens, max_seqlen, repr_layers, **kwargs):
        last = model.num_layers
        shifted = {layer: min(layer + 1, last) for layer in repr_layers}
        out = super().__call__(
            model, tokens, cu_seqlens, max_seqlen, set(shifted.values()), **kwargs
        )
        return {layer: out[source] for layer, source in shifted.items()}


class FinalNormMissing(PackedForward):
    """emb_layer_norm_after never applied to the last layer."""

    def final_norm(self, model, x):
        return x


class FinalNormTwice(PackedForward):
    """emb_layer_norm_after applied twice."""

    def final_norm(self, model, x):
        return model.emb_layer_norm_after(model.emb_layer_norm_after(x))


class TanhGelu(PackedForward):
    """The tanh approximation of GELU instead of fair-esm's erf GELU."""

    def activation(self, x):
        return F.gelu(x, approximate="tanh")


class EosAsPadding(PackedForward):
    """<eos> treated like padding: no token attends to it."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        out = torch.empty_like(q)
        for start, end in _segments(cu_seqlens):
            out[start:end] = _attend(q[start:end], k[start : end - 1], v[start : end - 1])
        return out


class MaxSeqlenTooSmall(PackedForward):
    """The kernel is told max_seqlen - 1 and reads that many keys of the longest sequence."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        out = torch.empty_like(q)
        for start, end in _segments(cu_seqlens):
            keys = min(end, start + max_seqlen - 1)
            out[start:end] = _attend(q[start:end], k[start:keys], v[start:keys])
        return out


class SilentTruncation(PackedForward):
    """Sequences longer than 512 tokens are cut into 512-token windows that never meet."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        out = torch.empty_like(q)
        for start, end in _segments(cu_seqlens):
            for lo in range(start, end, TRUNCATE_AT):
                hi = min(end, lo + TRUNCATE_AT)
                out[lo:hi] = _attend(q[lo:hi], k[lo:hi], v[lo:hi])
        return out


class LowPrecisionSoftmax(PackedForward):
    """Softmax exponentials taken in the model dtype without subtracting the row maximum."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        out = torch.empty_like(q)
        for start, end in _segments(cu_seqlens):
            scores = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end])
            weights = scores.exp()
            probs = weights / weights.sum(-1, keepdim=True)
            out[start:end] = torch.einsum("hqk,khd->qhd", probs, v[start:end])
        return out


class LowPrecisionAccumulation(PackedForward):
    """Attention output accumulated key by key in a bfloat16 accumulator, whatever the dtype."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        out = torch.empty_like(q)
        for start, end in _segments(cu_seqlens):
            scores = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end]).float()
            probs = torch.softmax(scores, dim=-1)
            values = v[start:end].float()
            acc = torch.zeros(out[start:end].shape, dtype=torch.bfloat16, device=q.device)
            for key in range(probs.shape[-1]):
                part = probs[..., key].transpose(0, 1).unsqueeze(-1) * values[key]
                acc = acc + part.to(torch.bfloat16)
            out[start:end] = acc.to(q.dtype)
        return out


class HalfLayerNormStatistics(PackedForward):
    """LayerNorm's mean and variance taken in the model dtype: in float16 a squared
    deviation past 256 overflows, so a token with a massive activation normalizes to its
    bias alone. On small activations it rounds as fair-esm's own float16 output does."""

    def norm(self, module, x):
        centered = x - x.mean(-1, keepdim=True)
        variance = (centered * centered).mean(-1, keepdim=True)
        return centered * torch.rsqrt(variance + module.eps) * module.weight + module.bias


class HalfScoreAccumulation(PackedForward):
    """Attention logits q.k summed one head dimension at a time in the model dtype (no
    float32 accumulator); softmax and values in float32."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        out = torch.empty_like(q)
        for start, end in _segments(cu_seqlens):
            qs, ks = q[start:end].transpose(0, 1), k[start:end].transpose(0, 1)
            scores = torch.zeros(qs.shape[0], end - start, end - start, dtype=q.dtype,
                                 device=q.device)
            for dim in range(q.shape[-1]):
                scores = scores + qs[..., dim, None] * ks[:, None, :, dim]
            probs = torch.softmax(scores.float(), dim=-1)
            out[start:end] = torch.einsum("hqk,khd->qhd", probs, v[start:end].float()).to(q.dtype)
        return out


class FlakyRace(PackedForward):
    """One call in seven returns one corrupted row, as a race would."""

    def __init__(self):
        self._calls = itertools.count(1)

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        if next(self._calls) % 7 == 0:
            out = {layer: x.clone() for layer, x in out.items()}
            for x in out.values():
                x[x.shape[0] // 2] += 0.5 * x.abs().max()
        return out


class _DropsLastKey(PackedForward):
    """Segments that ``hit`` lose their last key; every other segment is computed right."""

    def hit(self, length: int, total: int) -> bool:
        raise NotImplementedError

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, backend=backend)
        total = int(cu_seqlens[-1])
        for start, end in _segments(cu_seqlens):
            if self.hit(end - start, total):
                out[start:end] = _attend(q[start:end], k[start : end - 1], v[start : end - 1])
        return out


class At1022Residues(_DropsLastKey):
    """A sequence of exactly 1022 residues (1024 tokens, the model's limit) loses its last
    key: a 1023-entry key buffer, right for every shorter sequence."""

    def hit(self, length, total):
        return length == 1024


class AtFullTile(_DropsLastKey):
    """A sequence of exactly 64 tokens (62 residues) loses its last key: a full first tile
    whose last column the kernel treats as padding."""

    def hit(self, length, total):
        return length == 64


class AtFullStream(PackedForward):
    """In a pack of a multiple of 512 tokens (a budget filled to the last token), the last
    sequence loses its last key: the kernel pads the stream to whole 512-token tiles and
    assumes at least one padding token."""

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend):
        out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, backend=backend)
        start, end = _segments(cu_seqlens)[-1]
        if end % 512 == 0:
            out[start:end] = _attend(q[start:end], k[start : end - 1], v[start : end - 1])
        return out


positions_run_on = PositionsRunOn()
rotary_table_over_stream = RotaryTableOverStream()
leak_every_boundary = LeakEveryBoundary()
leak_past_first_tile = LeakPastFirstTile()
leak_in_big_packs = LeakInBigPacks()
leak_past_32_sequences = LeakPast32Sequences()
leak_past_2048_tokens = LeakPast2048Tokens()
missing_token_dropout_rescale = MissingTokenDropoutRescale()
mask_ratio_over_pack = MaskRatioOverPack()
mask_not_zeroed = MaskNotZeroed()
repr_layer_off_by_one = ReprLayerOffByOne()
final_norm_missing = FinalNormMissing()
final_norm_twice = FinalNormTwice()
tanh_gelu = TanhGelu()
eos_as_padding = EosAsPadding()
max_seqlen_too_small = MaxSeqlenTooSmall()
silent_truncation = SilentTruncation()
low_precision_softmax = LowPrecisionSoftmax()
low_precision_accumulation = LowPrecisionAccumulation()
half_layer_norm_statistics = HalfLayerNormStatistics()
half_score_accumulation = HalfScoreAccumulation()
flaky_race = FlakyRace()
at_1022_residues = At1022Residues()
at_full_tile = AtFullTile()
at_full_stream = AtFullStream()
