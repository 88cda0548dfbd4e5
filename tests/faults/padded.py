"""Faulty padded forwards (``--esm-padded-impl tests.faults.padded:<name>``)."""

from esmfuzz.forward import padded_forward


def pad_with_cls(model, tokens, repr_layers):
    """A fallback that pads with <cls> (id 0) instead of <pad> (id 1): nothing is masked."""
    return padded_forward(
        model, tokens.masked_fill(tokens == model.padding_idx, model.cls_idx), repr_layers
    )


def repr_layer_off_by_one(model, tokens, repr_layers):
    """Layer i answered with layer i + 1 (the last layer stays right)."""
    last = model.num_layers
    out = padded_forward(model, tokens, {min(layer + 1, last) for layer in repr_layers})
    return {layer: out[min(layer + 1, last)] for layer in repr_layers}
