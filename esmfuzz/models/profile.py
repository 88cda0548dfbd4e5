"""The activation profile of any fair-esm ESM-2 model on a fixed probe batch.

What makes low precision go wrong on a trained model is the size of its activations: a
few residual channels of hundreds to thousands, attention heads that sink onto
``<cls>``/``<eos>``, attention logits past float16's ``exp`` range. ``esmfuzz info``
prints this profile so a real checkpoint can be compared with the synthetic one.
"""

from __future__ import annotations

import dataclasses
import math

import torch

PROBE = (
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLG"
    "QHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPD"
    "QIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLE"
    "DAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHHPGKHIGRVESHVASDE",
    "GSHMASNLEELKRRIEEIAKRLGVEVRVEVEGDKVRVRVEGTDEETAKKIAELVLRAAKEAGVEVRVEVHGDKVEIEVR",
    "MSTNPKPQRKTKRNTNRRPQDVKFPGG",
)
"""Three made-up proteins of 326, 79 and 27 residues: long enough for sinks to show."""


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    layer: int
    """0: the embeddings (after token dropout's rescale); i: the output of layer i, the last
    after the final LayerNorm, as fair-esm returns it."""
    residual_max: float
    """Largest |value| of the residual stream over the probe's tokens."""
    channel: int
    """The channel holding it."""
    low: float
    high: float
    """Smallest and largest value: the range the next LayerNorm sees."""
    special_share: float | None = None
    """Attention of non-special queries on ``<cls>``/``<eos>``, mean over heads."""
    top_share: float | None = None
    """The same, of the head that puts the most there."""
    logit_max: float | None = None
    """Largest attention logit (after the 1/sqrt(head_dim) scale and rotary)."""


def _attention_stats(attn, h, specials, padding):
    """(mean share, top share, largest logit) of one fair-esm attention layer on ``h``."""
    length, batch, _ = h.shape
    heads, head_dim = attn.num_heads, attn.head_dim

    def split(t):
        return t.reshape(length, batch * heads, head_dim).transpose(0, 1)

    q, k = split(attn.q_proj(h) * attn.scaling), split(attn.k_proj(h))
    if attn.rot_emb is not None:
        q, k = attn.rot_emb(q, k)
    logits = torch.bmm(q, k.transpose(1, 2)).view(batch, heads, length, length)
    logits = logits.masked_fill(padding[:, None, None, :], -math.inf)
    real = ~padding[:, None, :].expand(-1, heads, -1)
    logit_max = logits.amax(-1)[real].max()
    probs = torch.softmax(logits.float(), dim=-1)
    on_special = (probs * specials[:, None, None, :]).sum(-1)
    queries = real & ~specials[:, None, :]
    per_head = (on_special * queries).sum((0, 2)) / queries.sum((0, 2))
    return float(per_head.mean()), float(per_head.max()), float(logit_max)


@torch.no_grad()
def activation_profile(model, alphabet, sequences=PROBE) -> list[LayerProfile]:
    """One :class:`LayerProfile` per layer of ``model`` (any fair-esm ESM-2) on ``sequences``."""
    converter = alphabet.get_batch_converter()
    _, _, tokens = converter([(str(i), s) for i, s in enumerate(sequences)])
    tokens = tokens.to(next(model.parameters()).device)
    padding = tokens.eq(alphabet.padding_idx)
    specials = tokens.eq(alphabet.cls_idx) | tokens.eq(alphabet.eos_idx)
    attention = {}
    hooks = []

    def record(index):
        def hook(module, args, kwargs):
            query = kwargs.get("query", args[0] if args else None)
            attention[index] = _attention_stats(module, query, specials, padding)
        return hook

    for index, layer in enumerate(model.layers, start=1):
        hooks.append(layer.self_attn.register_forward_pre_hook(record(index), with_kwargs=True))
    try:
        out = model(tokens, repr_layers=range(len(model.layers) + 1))
    finally:
        for hook in hooks:
            hook.remove()
    real = ~padding
    rows = []
    for layer in range(len(model.layers) + 1):
        x = out["representations"][layer][real].float()
        where = int(x.abs().argmax())
        share, top, logit = attention.get(layer, (None, None, None))
        rows.append(LayerProfile(
            layer=layer, residual_max=float(x.abs().max()), channel=where % x.shape[1],
            low=float(x.min()), high=float(x.max()), special_share=share, top_share=top,
            logit_max=logit,
        ))
    return rows


def format_profile(rows: list[LayerProfile]) -> list[str]:
    """The profile as a table, one line per layer."""
    lines = ["layer  max |residual| (channel)  range                 attention on <cls>/<eos> "
             "(mean, top head)  largest logit"]
    for r in rows:
        attention = (f"{r.special_share:6.1%}, {r.top_share:6.1%}" if r.special_share is not None
                     else "-")
        logit = f"{r.logit_max:7.2f}" if r.logit_max is not None else "-"
        lines.append(f"{r.layer:>5}  {r.residual_max:10.1f} ({r.channel:>4})  "
                     f"[{r.low:9.1f}, {r.high:8.1f}]   {attention:<31}  {logit}")
    return lines
