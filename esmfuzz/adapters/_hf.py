"""What the adapters share: building a name map, and for the libraries built on
transformers' ESM modules, the names of fair-esm's weights there, the config that
reproduces a fair-esm model, a per-model cache."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

LAYER = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "LayerNorm",
}
TOP = {
    "embed_tokens.weight": "embeddings.word_embeddings.weight",
    "emb_layer_norm_after.weight": "encoder.emb_layer_norm_after.weight",
    "emb_layer_norm_after.bias": "encoder.emb_layer_norm_after.bias",
    "contact_head.regression.weight": "contact_head.regression.weight",
    "contact_head.regression.bias": "contact_head.regression.bias",
}
UNUSED = ("lm_head.",)
"""fair-esm weights with no place in an ``EsmModel`` (the masked-LM head: esmfuzz computes
logits with fair-esm's own head)."""


def name_map(top: dict[str, str], layer: dict[str, str], num_layers: int,
             prefix: str) -> dict[str, str]:
    """fair-esm name -> a library's name: ``top`` as given, and every layer's weight and bias
    of each ``layer`` module, under ``{prefix}{i}.`` in the library."""
    out = dict(top)
    for i in range(num_layers):
        for fair, theirs in layer.items():
            for kind in ("weight", "bias"):
                out[f"layers.{i}.{fair}.{kind}"] = f"{prefix}{i}.{theirs}.{kind}"
    return out


def weight_map(num_layers: int) -> dict[str, str]:
    """fair-esm name -> transformers name of every weight but the rotary frequencies (whose
    place differs between transformers 4 and 5)."""
    return name_map(TOP, LAYER, num_layers, "encoder.layer.")


def strict_state(model, names: dict[str, str], target: torch.nn.Module, library: str, *,
                 skip_prefixes: tuple[str, ...] = (), skip_suffixes: tuple[str, ...] = (),
                 fill: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """fair-esm's weights under ``target``'s names (``names``: fair-esm -> library). Every
    fair-esm weight is mapped or skipped on purpose, and every weight of ``target`` is filled
    (``fill``: those no fair-esm weight stands for); anything else is an error naming it."""
    state = model.state_dict()
    left = {k for k in state if k not in names
            and not k.startswith(skip_prefixes) and not k.endswith(skip_suffixes)}
    if left:
        raise RuntimeError(f"fair-esm weights with no {library} name: {sorted(left)[:5]}")
    mapped = {theirs: state[name] for name, theirs in names.items()}
    mapped.update(fill or {})
    missing = set(target.state_dict()) - set(mapped)
    if missing:
        raise RuntimeError(f"{library} weights the map does not fill: {sorted(missing)[:5]}")
    return mapped


def esm_config(model, config_class):
    """An ``EsmConfig`` (``config_class``) of ``model``'s architecture, built locally."""
    weight = model.embed_tokens.weight
    return config_class(
        vocab_size=weight.shape[0], hidden_size=model.embed_dim,
        num_hidden_layers=model.num_layers, num_attention_heads=model.attention_heads,
        intermediate_size=4 * model.embed_dim, max_position_embeddings=1026,
        position_embedding_type="rotary", token_dropout=model.token_dropout,
        mask_token_id=model.mask_idx, pad_token_id=model.padding_idx,
        emb_layer_norm_before=False, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


class PerModel:
    """A library's model built once per fair-esm model and path, dropped with the model."""

    def __init__(self):
        self._built: dict[tuple, tuple[weakref.ref, torch.nn.Module]] = {}

    def get(self, model, path, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        key = (id(model), path)
        cached = self._built.get(key)
        if cached is not None and cached[0]() is model:
            return cached[1]
        built = build()
        self._built[key] = (weakref.ref(model), built)
        return built
