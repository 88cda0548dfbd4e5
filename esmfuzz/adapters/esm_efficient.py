"""esm-efficient's ``ESM2`` (PyPI ``esm-efficient``, package ``esme``) behind esmfuzz's packed
and padded forward contracts.

esme is packed-native: ``packed_forward`` hands esmfuzz's token stream and ``cu_seqlens`` to
``ESM2.forward_representation(tokens, pad_args=(cu_seqlens, max_seqlen), layers=...)``, so
esme's own varlen path runs (its embedding, its rotary positions from ``cu_seqlens``,
``flash_attn_varlen_func``); ``padded_forward`` gives it the [B, T] batch, which esme unpads
with flash_attn's ``unpad_input`` itself. Layers follow fair-esm: 0 is esme's
``embedding(tokens)``, ``i`` (1 <= i < L) esme's block ``i - 1``, L the output after
``emb_layer_norm_after``.

esme imports flash_attn unconditionally and its kernel takes float16/bfloat16 on CUDA only:
a float32 model is refused with a TypeError, so that esmfuzz (``paths = auto``) checks only
the candidate dtype. Without flash_attn the module still imports, and naming a forward is a
one-line usage error. On a CPU, ``tests/support/flash_attn_standin`` (a test double: exact
per-sequence SDPA, not FlashAttention) lets esme run; the adapter then answers only to the
``*_standin`` names, so every summary row and corpus case says the kernel was a stand-in.

Known divergence (esme 0.0.9): its ``ESM2.embedding`` zeroes ``<mask>`` but omits ESM-2's
token-dropout rescale (1 - 0.15 * 0.8) / (1 - <mask> ratio), so every layer differs from
fair-esm (layer 0 by exactly 0.88 without ``<mask>``); esmfuzz reports it, and the adapter
passes it on as is.

Needs ``pip install 'esmfuzz[esm-efficient]'``; without esme, naming an implementation of this
module is a one-line usage error.
"""

from __future__ import annotations

import torch

_EXTRA = "pip install 'esmfuzz[esm-efficient]'"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


_NO_FLASH: str | None = None
"""Why esme could not import because of flash_attn (None: it imported)."""
try:
    import esme.attention as _esme_attention
    from esme.esm import ESM2 as _EsmeESM2
except ImportError as exc:  # the usage error names the extra (load_implementation)
    _missing = getattr(exc, "name", None) or ""
    if _missing.startswith("flash_attn") or (not _missing and "flash_attn" in str(exc)):
        _esme_attention = _EsmeESM2 = None
        _NO_FLASH = (f"esm-efficient imports flash_attn, which cannot be imported here "
                     f"({type(exc).__name__}: {_first_line(exc)}); it needs a CUDA machine: "
                     f"pip install flash-attn --no-build-isolation")
    elif _missing == "esme":
        raise ImportError(
            f"the esm-efficient adapter needs esm-efficient (package esme): {_EXTRA}"
        ) from exc
    else:
        raise ImportError(
            f"the esm-efficient adapter cannot import esme ({type(exc).__name__}: "
            f"{_first_line(exc)}): {_EXTRA}"
        ) from exc

from esmfuzz.adapters._hf import PerModel, name_map, strict_state  # noqa: E402
from esmfuzz.config import dtype_name  # noqa: E402

__all__ = [
    "esme_model",
    "kernel",
    "on_standin",
    "packed_forward",
    "packed_forward_standin",
    "padded_forward",
    "padded_forward_standin",
    "weight_map",
]

_LAYER = {
    "self_attn.q_proj": "self_attn.q",
    "self_attn.k_proj": "self_attn.k",
    "self_attn.v_proj": "self_attn.v",
    "self_attn.out_proj": "self_attn.out",
    "self_attn_layer_norm": "self_attn.norm",
    "final_layer_norm": "final.0",
    "fc1": "final.1",
    "fc2": "final.3",
}
_TOP = {
    "embed_tokens.weight": "embed_tokens.weight",
    "emb_layer_norm_after.weight": "emb_layer_norm_after.weight",
    "emb_layer_norm_after.bias": "emb_layer_norm_after.bias",
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "lm_head.weight": "lm_head.final.weight",
    "lm_head.bias": "lm_head.final.bias",
}
_UNUSED = ("contact_head.",)
"""fair-esm weights with no place in esme's ``ESM2`` (it has no contact head)."""
_RECOMPUTED = "self_attn.rot_emb.inv_freq"
"""fair-esm's per-layer rotary frequencies: esme recomputes them in float32 from the head
dimension (a non-persistent buffer); :func:`esme_model` checks that they agree."""
_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_VOCAB, _PAD, _MASK = 33, 1, 32  # esme's ESM2 hard-codes fair-esm's ESM-1b alphabet


def weight_map(num_layers: int) -> dict[str, str]:
    """Every fair-esm ``ESM2`` weight that esme's ``ESM2`` holds, fair-esm name -> esme name."""
    return name_map(_TOP, _LAYER, num_layers, "layers.")


def on_standin() -> bool:
    """Whether the flash_attn that esme calls is esmfuzz's CPU stand-in (tests/support)."""
    return bool(getattr(getattr(_esme_attention, "flash_attn_varlen_func", None),
                        "ESMFUZZ_STANDIN", False))


def kernel() -> str:
    """The attention kernel esme runs here, in words."""
    if _NO_FLASH:
        return "none (flash_attn missing)"
    if on_standin():
        return "esmfuzz's CPU stand-in for flash_attn (per-sequence SDPA, not FlashAttention)"
    import flash_attn

    return f"flash_attn {getattr(flash_attn, '__version__', '?')}"


_MODELS = PerModel()


def esme_model(model) -> torch.nn.Module:
    """esme's ``ESM2`` with ``model``'s weights, dtype and device; built once per fair-esm
    model (moved along if the fair-esm model moved device)."""
    if _NO_FLASH:
        raise RuntimeError(_NO_FLASH)
    weight = model.embed_tokens.weight

    def build():
        _check_compatible(model)
        es = _EsmeESM2(num_layers=model.num_layers, embed_dim=model.embed_dim,
                       attention_heads=model.attention_heads, dtype=weight.dtype)
        # built in the model's dtype, then the load copies: float64 weights stay exact
        es = es.to(device=weight.device).eval()
        es.load_state_dict(_mapped(model, es), strict=True)
        return es

    es = _MODELS.get(model, None, build)
    if es.embed_tokens.weight.device != weight.device:
        es.to(weight.device)
    return es


def _check_compatible(model) -> None:
    vocab = model.embed_tokens.weight.shape[0]
    if (vocab, model.padding_idx, model.mask_idx) != (_VOCAB, _PAD, _MASK):
        raise RuntimeError(f"esme's ESM2 hard-codes a {_VOCAB}-token alphabet with <pad> "
                           f"{_PAD} and <mask> {_MASK}; this model has {vocab}, "
                           f"{model.padding_idx}, {model.mask_idx}")
    if model.embed_scale != 1:
        raise RuntimeError(f"esme's ESM2 has embed_scale 1, this model {model.embed_scale}")


def _mapped(model, es) -> dict[str, torch.Tensor]:
    mapped = strict_state(model, weight_map(model.num_layers), es, "esme",
                          skip_prefixes=_UNUSED, skip_suffixes=(_RECOMPUTED,))
    state = model.state_dict()
    theirs = es.layers[0].self_attn.rot_emb._compute_inv_freq()
    for name in (k for k in state if k.endswith(_RECOMPUTED)):
        # compared in the model's dtype: fair-esm holds them in it
        if not torch.equal(state[name].cpu(), theirs.to(state[name].dtype)):
            raise RuntimeError(f"fair-esm's {name} differs from the rotary frequencies esme "
                               f"computes")
    return mapped


def _check_layers(repr_layers, num_layers: int) -> list[int]:
    wanted = sorted(set(repr_layers))
    bad = [layer for layer in wanted if not 0 <= layer <= num_layers]
    if bad:
        raise ValueError(f"repr_layers {bad} not in 0..{num_layers}")
    return wanted


def _run(model, tokens: torch.Tensor, pad_args, repr_layers) -> dict:
    """fair-esm's layers from esme: ``pad_args`` = (cu_seqlens, max_seqlen) for a packed
    [N] stream, None for a padded [B, T] batch."""
    es = esme_model(model)
    last = model.num_layers
    wanted = _check_layers(repr_layers, last)
    blocks = [layer - 1 for layer in wanted if 0 < layer < last]  # esme's 0-indexed blocks
    out = {}
    with torch.inference_mode():
        if 0 in wanted:
            out[0] = es.embedding(tokens, pad_args)
        if blocks or last in wanted:
            x = es.forward_representation(tokens, pad_args=pad_args, layers=blocks)
            # the final output after emb_layer_norm_after, then each block in block order
            parts = x.split(model.embed_dim, dim=-1)
            if len(parts) != 1 + len(blocks):
                raise RuntimeError(f"esme returned {len(parts)} layers, asked for "
                                   f"{1 + len(blocks)}")
            if last in wanted:
                out[last] = parts[0]
            out.update({block + 1: part for block, part in zip(blocks, parts[1:])})
    return out


def _refuse_wrong_kernel(model, standin: bool) -> None:
    if _NO_FLASH:
        raise RuntimeError(_NO_FLASH)
    if on_standin() != standin:
        raise RuntimeError(f"esme runs on {kernel()}: name "
                           f"{'packed/padded_forward' if standin else '*_standin'} instead")
    if standin:
        return
    weight = model.embed_tokens.weight
    if weight.dtype not in _FLASH_DTYPES:
        raise TypeError(f"esm-efficient's FlashAttention kernel takes float16 or bfloat16, "
                        f"not {dtype_name(weight.dtype)}")
    if weight.device.type != "cuda":
        raise RuntimeError("esm-efficient's FlashAttention kernel runs on CUDA only")


def packed_forward(model, tokens: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                   repr_layers) -> dict:
    """esme ``ESM2`` on esmfuzz's packed stream, its varlen path, real flash_attn (CUDA,
    float16/bfloat16; float32 is refused with a TypeError)."""
    _refuse_wrong_kernel(model, standin=False)
    return _run(model, tokens, (cu_seqlens, max_seqlen), repr_layers)


def padded_forward(model, tokens: torch.Tensor, repr_layers) -> dict:
    """esme ``ESM2`` on fair-esm's padded batch (esme unpads it itself), real flash_attn."""
    _refuse_wrong_kernel(model, standin=False)
    return _run(model, tokens, None, repr_layers)


def packed_forward_standin(model, tokens: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_seqlen: int, repr_layers) -> dict:
    """``packed_forward`` on esmfuzz's CPU stand-in for flash_attn (any dtype and device):
    tests esme's code around the kernel, not the kernel."""
    _refuse_wrong_kernel(model, standin=True)
    return _run(model, tokens, (cu_seqlens, max_seqlen), repr_layers)


def padded_forward_standin(model, tokens: torch.Tensor, repr_layers) -> dict:
    """``padded_forward`` on esmfuzz's CPU stand-in for flash_attn."""
    _refuse_wrong_kernel(model, standin=True)
    return _run(model, tokens, None, repr_layers)


def _real_kernel_problem() -> str | None:
    if _NO_FLASH:
        return (f"{_NO_FLASH}; on a CPU, tests/support/flash_attn_standin on PYTHONPATH and "
                f"packed_forward_standin test esme's code around the kernel")
    if on_standin():
        return ("flash_attn here is esmfuzz's CPU stand-in (tests/support/flash_attn_standin), "
                "not FlashAttention: name packed_forward_standin / padded_forward_standin")
    if not torch.cuda.is_available():
        return ("esm-efficient's FlashAttention kernel runs on CUDA only; on a CPU use "
                "packed_forward_standin with tests/support/flash_attn_standin on PYTHONPATH")
    return None


def _standin_problem() -> str | None:
    if _NO_FLASH:
        return ("the *_standin forwards need esmfuzz's CPU stand-in for flash_attn: "
                "PYTHONPATH=tests/support/flash_attn_standin")
    if not on_standin():
        return (f"flash_attn here is the real one ({kernel()}), not esmfuzz's CPU stand-in: "
                f"name packed_forward / padded_forward")
    return None


packed_forward.esmfuzz_requires = _real_kernel_problem
padded_forward.esmfuzz_requires = _real_kernel_problem
packed_forward_standin.esmfuzz_requires = _standin_problem
padded_forward_standin.esmfuzz_requires = _standin_problem
