"""Hugging Face transformers' ``EsmModel`` behind esmfuzz's padded-forward contract.

One forward per attention path of the library (``padded_forward`` is SDPA,
``padded_forward_eager`` the eager softmax), so the implementation name in every summary
and corpus case says which path ran. Layers follow fair-esm: 0 is the embedding output,
``i`` block ``i``'s output, L the output after ``emb_layer_norm_after`` (transformers'
``last_hidden_state``; its ``hidden_states[L]`` is block L before that norm).

Needs ``pip install 'esmfuzz[transformers]'``; without it, naming an implementation of
this module is a one-line usage error.
"""

from __future__ import annotations

import torch

try:
    import transformers
    from transformers import EsmConfig, EsmModel
except ImportError as exc:  # the usage error names the extra (load_implementation)
    raise ImportError(
        "the transformers adapter needs transformers: pip install 'esmfuzz[transformers]'"
    ) from exc

from esmfuzz.adapters import _hf

__all__ = ["hf_model", "padded_forward", "padded_forward_eager", "weight_map"]

_ROTARY = {"layers.0.self_attn.rot_emb.inv_freq": "rotary_embeddings.inv_freq"}
"""transformers 5 keeps one rotary table for the model (fair-esm: one per layer)."""


def weight_map(num_layers: int) -> dict[str, str]:
    """Every fair-esm ``ESM2`` weight that ``EsmModel`` holds, fair-esm name -> HF name."""
    return {**_hf.weight_map(num_layers), **_ROTARY}


_MODELS = _hf.PerModel()


def hf_model(model, attention: str = "sdpa") -> torch.nn.Module:
    """transformers' ``EsmModel`` with ``model``'s weights, dtype and device; built once per
    fair-esm model and attention path."""

    def build():
        weight = model.embed_tokens.weight
        config = _hf.esm_config(model, EsmConfig)
        config._attn_implementation = attention
        hf = EsmModel(config, add_pooling_layer=False)
        hf.load_state_dict(_mapped(model, hf), strict=True)
        return hf.to(device=weight.device, dtype=weight.dtype).eval()

    return _MODELS.get(model, attention, build)


def _mapped(model, hf) -> dict[str, torch.Tensor]:
    mapped = _hf.strict_state(model, weight_map(model.num_layers), hf, "transformers",
                              skip_prefixes=_hf.UNUSED, skip_suffixes=("rot_emb.inv_freq",))
    state = model.state_dict()
    rotary = [k for k in state if k.endswith("rot_emb.inv_freq")]
    if any(not torch.equal(state[k], state[rotary[0]]) for k in rotary):
        raise RuntimeError("fair-esm's layers hold different rotary frequencies; "
                           "transformers shares one table")
    return mapped


def _forward(model, tokens: torch.Tensor, repr_layers, attention: str) -> dict:
    hf = hf_model(model, attention)
    mask = tokens.ne(model.padding_idx).long()
    with torch.inference_mode():
        out = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True,
                 return_dict=True)
    hidden = out.hidden_states
    last = model.num_layers
    return {layer: (out.last_hidden_state if layer == last else hidden[layer])
            for layer in repr_layers}


def padded_forward(model, tokens: torch.Tensor, repr_layers) -> dict:
    """transformers ``EsmModel``, SDPA attention, on fair-esm's padded batch."""
    return _forward(model, tokens, repr_layers, "sdpa")


def padded_forward_eager(model, tokens: torch.Tensor, repr_layers) -> dict:
    """transformers ``EsmModel``, eager attention, on fair-esm's padded batch."""
    return _forward(model, tokens, repr_layers, "eager")


def _sdpa_support() -> str | None:
    from transformers.models.esm.modeling_esm import EsmPreTrainedModel

    if getattr(EsmPreTrainedModel, "_supports_sdpa", False):
        return None
    return (f"transformers {transformers.__version__} has no SDPA attention for ESM; "
            f"use padded_forward_eager, or a newer transformers")


padded_forward.esmfuzz_requires = _sdpa_support
