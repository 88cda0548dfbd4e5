"""esm.cpp (PyPI ``esm-cpp``, package ``esm_cpp``), a CPU engine for ESM-2 with packed
varlen scheduling and W8A8 INT8, behind esmfuzz's packed and padded forward contracts.

esm.cpp computes in its own precision whatever the model's dtype: float32, or INT8 after
SmoothQuant and weight quantization. Its engine is built from the fair-esm model under test
(its weights written as a transformers-format safetensors file, read by esm.cpp's own
loader), once per model and precision. Which entry point and precision ran is in each
implementation's name:

- ``packed_forward`` / ``packed_forward_int8``: ``Model.forward_packed(tokens, cu_seqlens)``
  on esmfuzz's own pack. Logits only (``esmfuzz_outputs = "logits"``).
- ``scheduled_forward`` / ``scheduled_forward_int8``: ``Model.forward_scheduled`` on the
  pack's sequences: esm.cpp's scheduler buckets them by length and packs them itself.
  Logits only.
- ``padded_forward`` / ``padded_forward_int8``: ``Model.forward_with_hidden_states(ids,
  attention_mask)`` on each row of esmfuzz's padded batch, its padding masked: every layer
  (esm.cpp's ``hidden_states[0]`` is the embedding output, ``hidden_states[L]`` the output
  after the final LayerNorm, as fair-esm's layers 0 and L).

The INT8 engine is calibrated on :data:`CALIBRATION` (made-up proteins: real ones cannot
be downloaded here) with esm.cpp's own observer at its 99.9th percentile, SmoothQuant
alpha 0.5, then ``quantize_weights()``: the steps of ``esm-cpp-quantize``. Judge it with
``--esm-compare quantized`` (docs/adapters.md).

esm.cpp runs on the CPU: on a CUDA model, the weights are copied to the host and the
outputs back to the model's device. ``ESM_FORCE_ISA`` (esm.cpp's own variable: ``avx2``,
``avx512``, ...) chooses its kernels for the whole process.

Needs ``pip install 'esmfuzz[esm-cpp]'`` (esm.cpp needs numpy < 2); without it, naming an
implementation of this module is a one-line usage error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

try:
    import esm_cpp
    import numpy as np
    from safetensors.torch import save_file
except ImportError as exc:  # the usage error names the extra (load_implementation)
    raise ImportError(
        f"the esm.cpp adapter needs esm-cpp and safetensors ({exc}): "
        f"pip install 'esmfuzz[esm-cpp]'"
    ) from exc

from esmfuzz.adapters import _hf

__all__ = [
    "CALIBRATION",
    "engine",
    "packed_forward",
    "packed_forward_int8",
    "padded_forward",
    "padded_forward_int8",
    "scheduled_forward",
    "scheduled_forward_int8",
    "weight_map",
]

_HEAD = {
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "lm_head.weight": "lm_head.decoder.weight",
    "lm_head.bias": "lm_head.bias",
}

CALIBRATION = (
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRESVPALL",
    "MADQLTEEQIAEFKEAFSLFDKDGDGTITTKELGTVMRSLGQNPTEAELQDMINEVDADGNGTIDFPEFLTMMARKMKDTDSEEEIREAFRVFDKDGNGYISAAELRHVMTNLGEKLTDEEVDEMIREADIDGDGQVNYEEFVQMMTAK",
    "GSHMSLFDFFKNKGSAATATDRLKLLLGGKK",
    "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHKLRVDPVNFKLLSHCLLVTLAAHLPAEFTPAVHASLDKFLASVSTVLTSKYR",
    "XBZUOACDEFGHIKLMNPQRSTVWY",
)
"""Made-up and well-known proteins the INT8 engine is calibrated on (fixed, so every run
builds the same engine)."""


def weight_map(num_layers: int) -> dict[str, str]:
    """fair-esm name -> the transformers ``EsmForMaskedLM`` name esm.cpp reads, for every
    fair-esm weight (the rotary table of each layer included)."""
    names = {k: "esm." + v for k, v in _hf.weight_map(num_layers).items()}
    names.update(_HEAD)
    for i in range(num_layers):
        names[f"layers.{i}.self_attn.rot_emb.inv_freq"] = (
            f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq")
    return names


class _Engine:
    """An esm.cpp model and the weights file it maps (which must outlive it)."""

    def __init__(self, model, precision: str):
        self._folder = tempfile.TemporaryDirectory(prefix="esmfuzz-esm-cpp-")
        path = Path(self._folder.name) / "model.safetensors"
        save_file(_state(model), str(path))
        self.model = esm_cpp.Model.load_from_safetensors(str(path))
        if precision == "int8":
            observer = esm_cpp.ActivationObserver()
            tokenizer = esm_cpp.Tokenizer()
            for sequence in CALIBRATION:
                ids = np.asarray(tokenizer.encode(sequence), dtype=np.int32)
                self.model.forward_with_observer(ids, np.ones_like(ids), observer)
            self.model.apply_smoothquant(observer.percentile(99.9), 0.5)
            self.model.quantize_weights()
        self.precision = precision


def _state(model) -> dict[str, torch.Tensor]:
    """fair-esm's weights under esm.cpp's names, in float32 on the host; every fair-esm
    weight must have a name."""
    names = weight_map(model.num_layers)
    state = model.state_dict()
    left = sorted(set(state) - set(names))
    if left:
        raise RuntimeError(f"fair-esm weights with no esm.cpp name: {left[:5]}")
    return {theirs: state[name].detach().to("cpu", torch.float32).clone().contiguous()
            for name, theirs in names.items()}


_ENGINES = _hf.PerModel()


def engine(model, precision: str = "float32"):
    """esm.cpp's ``Model`` with ``model``'s weights in ``precision`` (``float32`` or
    ``int8``); built once per fair-esm model and precision."""
    if precision not in ("float32", "int8"):
        raise ValueError(f"precision={precision!r} must be 'float32' or 'int8'")
    return _ENGINES.get(model, precision, lambda: _Engine(model, precision)).model


def _ids(tokens: torch.Tensor) -> np.ndarray:
    return tokens.detach().to("cpu", torch.int32).numpy()


def _logits(arrays, device) -> dict:
    return {"logits": torch.from_numpy(np.concatenate(arrays)).to(device)}


def _packed(model, tokens, cu_seqlens, precision: str) -> dict:
    cpp = engine(model, precision)
    return _logits(cpp.forward_packed(_ids(tokens), _ids(cu_seqlens)), tokens.device)


def _scheduled(model, tokens, cu_seqlens, precision: str) -> dict:
    cpp = engine(model, precision)
    ids = _ids(tokens)
    bounds = _ids(cu_seqlens).tolist()
    sequences = [ids[a:b] for a, b in zip(bounds, bounds[1:])]
    return _logits(cpp.forward_scheduled(sequences), tokens.device)


def _padded(model, tokens, repr_layers, precision: str) -> dict:
    cpp = engine(model, precision)
    ids = _ids(tokens)
    masks = (ids != model.padding_idx).astype(np.int32)
    rows = [cpp.forward_with_hidden_states(row, mask)[1] for row, mask in zip(ids, masks)]
    return {layer: torch.from_numpy(np.stack([hidden[layer] for hidden in rows]))
            .to(tokens.device) for layer in repr_layers}


def packed_forward(model, tokens, cu_seqlens, max_seqlen, repr_layers) -> dict:
    """esm.cpp float32, ``forward_packed`` on esmfuzz's pack (logits)."""
    return _packed(model, tokens, cu_seqlens, "float32")


def packed_forward_int8(model, tokens, cu_seqlens, max_seqlen, repr_layers) -> dict:
    """esm.cpp W8A8 INT8, ``forward_packed`` on esmfuzz's pack (logits)."""
    return _packed(model, tokens, cu_seqlens, "int8")


def scheduled_forward(model, tokens, cu_seqlens, max_seqlen, repr_layers) -> dict:
    """esm.cpp float32, ``forward_scheduled``: its own length-bucketed packs (logits)."""
    return _scheduled(model, tokens, cu_seqlens, "float32")


def scheduled_forward_int8(model, tokens, cu_seqlens, max_seqlen, repr_layers) -> dict:
    """esm.cpp W8A8 INT8, ``forward_scheduled``: its own length-bucketed packs (logits)."""
    return _scheduled(model, tokens, cu_seqlens, "int8")


def padded_forward(model, tokens, repr_layers) -> dict:
    """esm.cpp float32, ``forward_with_hidden_states`` per padded row, padding masked."""
    return _padded(model, tokens, repr_layers, "float32")


def padded_forward_int8(model, tokens, repr_layers) -> dict:
    """esm.cpp W8A8 INT8, ``forward_with_hidden_states`` per padded row, padding masked."""
    return _padded(model, tokens, repr_layers, "int8")


for _forward in (packed_forward, packed_forward_int8, scheduled_forward, scheduled_forward_int8):
    _forward.esmfuzz_outputs = "logits"
for _forward in (packed_forward_int8, scheduled_forward_int8, padded_forward_int8):
    _forward.esmfuzz_precision = "int8"
for _forward in (packed_forward, scheduled_forward, padded_forward):
    _forward.esmfuzz_precision = "float32"
del _forward
