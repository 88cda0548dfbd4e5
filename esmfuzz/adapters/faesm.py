"""FAESM's ``FAEsmModel`` (PyPI ``faesm``) behind esmfuzz's padded-forward contract.

FAESM subclasses transformers 4.x's ESM modules but brings its own attention, so the path
that runs is FAESM's whatever transformers supports: ``padded_forward`` is its SDPA path
(``F.scaled_dot_product_attention`` on the padded batch, additive padding mask, rotary from
transformers 4.x), ``padded_forward_flash`` its FlashAttention path (it unpads the batch and
runs flash-attn's rotary and ``flash_attn_varlen_qkvpacked_func``; CUDA, float16/bfloat16).
Layers follow fair-esm as they stand: FAESM's ``hidden_states[i]`` is block ``i``'s output
and ``hidden_states[L]`` the output after ``emb_layer_norm_after``.

Needs ``pip install 'esmfuzz[faesm]'``. faesm 0.1.1 imports names that transformers 4.54
removed, so it needs transformers < 4.54; without it, or with a newer transformers, naming an
implementation of this module is a one-line usage error.
"""

from __future__ import annotations

import contextlib
import io

import torch


def _import_problem(exc: BaseException) -> str:
    why = (str(exc).splitlines() or [type(exc).__name__])[0]
    try:
        import transformers

        version = transformers.__version__
    except ImportError:
        version = None
    try:
        newer = tuple(int(part) for part in version.split(".")[:2]) >= (4, 54)
    except (AttributeError, ValueError):
        newer = False
    hint = (f"; faesm 0.1.1 needs transformers < 4.54, this is {version}" if newer else "")
    return (f"the faesm adapter cannot import faesm ({type(exc).__name__}: {why}){hint}: "
            f"pip install 'esmfuzz[faesm]'")


try:
    # faesm prints a banner to stdout at import when flash_attn is missing; the
    # implementation's name already says which attention path runs.
    with contextlib.redirect_stdout(io.StringIO()):
        from faesm import esm as _faesm
    from transformers import EsmConfig
except ImportError as exc:  # the usage error names the extra (load_implementation)
    raise ImportError(_import_problem(exc)) from exc
except (AssertionError, RuntimeError) as exc:
    # With flash_attn installed, faesm.fa_utils asks for the CUDA device's capability at
    # import, which fails where there is no CUDA device.
    raise ImportError(
        f"faesm cannot import with flash_attn installed and no usable CUDA device "
        f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
        f"uninstall flash-attn to run its SDPA path (padded_forward) here"
    ) from exc

from esmfuzz.adapters import _hf  # noqa: E402
from esmfuzz.config import dtype_name  # noqa: E402

__all__ = ["faesm_model", "padded_forward", "padded_forward_flash", "weight_map"]

_UNREAD = ("embeddings.position_embeddings.weight",)
"""FAESM weights that no fair-esm weight fills because a rotary ESM never reads them:
transformers 4.40 (not 4.53) builds absolute position embeddings whatever the position type
and adds them only for ``absolute``. Loaded as zeros."""
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def weight_map(num_layers: int) -> dict[str, str]:
    """Every fair-esm ``ESM2`` weight that ``FAEsmModel`` holds, fair-esm name -> FAESM name.

    Unlike transformers 5, each FAESM layer keeps its own rotary ``inv_freq`` (both of its
    rotary modules register it under ``attention.self.rotary_embeddings``)."""
    out = _hf.weight_map(num_layers)
    for i in range(num_layers):
        out[f"layers.{i}.self_attn.rot_emb.inv_freq"] = (
            f"encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq")
    return out


_MODELS = _hf.PerModel()


def faesm_model(model, flash: bool = False) -> torch.nn.Module:
    """FAESM's ``FAEsmModel`` with ``model``'s weights, dtype and device; built once per
    fair-esm model and attention path (``flash``: FAESM's ``use_fa``)."""

    def build():
        weight = model.embed_tokens.weight
        config = _hf.esm_config(model, EsmConfig)
        config.use_fa = flash
        fa = _faesm.FAEsmModel(config, add_pooling_layer=False)
        # dtype first, then the load: copying into the target dtype keeps float64 weights exact
        fa = fa.to(device=weight.device, dtype=weight.dtype).eval()
        fa.load_state_dict(_mapped(model, fa), strict=True)
        return fa

    return _MODELS.get(model, flash, build)


def _mapped(model, fa) -> dict[str, torch.Tensor]:
    own = fa.state_dict()
    return _hf.strict_state(model, weight_map(model.num_layers), fa, "FAESM",
                            skip_prefixes=_hf.UNUSED,
                            fill={name: torch.zeros_like(own[name]) for name in _UNREAD
                                  if name in own})


def _forward(model, tokens: torch.Tensor, repr_layers, flash: bool) -> dict:
    fa = faesm_model(model, flash)
    real = tokens.ne(model.padding_idx)  # bool: FAESM's unpad asserts it
    with torch.inference_mode():
        out = fa(input_ids=tokens, attention_mask=real, output_hidden_states=True,
                 return_dict=True)
    hidden = out.hidden_states
    if flash:
        if not fa.config.use_fa:  # FAESM turns use_fa off, silently, without flash_attn
            raise RuntimeError("FAESM fell back from FlashAttention to SDPA")
        hidden = [_repad(h, real) for h in hidden]  # FAESM returns them unpadded, [N, D]
    return {layer: hidden[layer] for layer in repr_layers}


def _repad(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    out = hidden.new_zeros(*real.shape, hidden.shape[-1])
    out[real] = hidden  # flash-attn's unpad keeps row-major order, as boolean indexing does
    return out


def padded_forward(model, tokens: torch.Tensor, repr_layers) -> dict:
    """FAESM ``FAEsmModel``, its SDPA attention, on fair-esm's padded batch."""
    return _forward(model, tokens, repr_layers, flash=False)


def padded_forward_flash(model, tokens: torch.Tensor, repr_layers) -> dict:
    """FAESM ``FAEsmModel``, its FlashAttention varlen path, on fair-esm's padded batch.

    A model in another dtype than float16/bfloat16 is refused with a TypeError, so that
    esmfuzz checks only the candidate dtype (``paths = auto``)."""
    dtype = model.embed_tokens.weight.dtype
    if dtype not in _FLASH_DTYPES:
        raise TypeError(f"FAESM's FlashAttention path takes float16 or bfloat16, "
                        f"not {dtype_name(dtype)}")
    if model.embed_tokens.weight.device.type != "cuda":
        raise RuntimeError("FAESM's FlashAttention path runs on CUDA only")
    return _forward(model, tokens, repr_layers, flash=True)


def _flash_support() -> str | None:
    if not _faesm.flash_attn_installed:
        return ("FAESM's FlashAttention path needs flash-attn (pip install flash-attn "
                "--no-build-isolation); use padded_forward for its SDPA path")
    if not torch.cuda.is_available():
        return "FAESM's FlashAttention path runs on CUDA only; use padded_forward"
    return None


padded_forward_flash.esmfuzz_requires = _flash_support
