"""The two forward paths under test: fair-esm's padded forward and a reference packed one.

``packed_forward`` reproduces ``esm.model.esm2.ESM2.forward`` step by step on a
1-D token stream, with rotary positions reset at every ``cu_seqlens`` boundary.
The only deliberate difference: rotary angles are computed in at least FP32
(fair-esm computes them in the model dtype, a precision loss under FP16).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence

import torch
from esm.modules import gelu
from esm.rotary_embedding import rotate_half

from esmfuzz.adapters._hf import PerModel
from esmfuzz.alphabet import residue_count
from esmfuzz.attention import select_backend, varlen_attention
from esmfuzz.config import DEFAULT_PACKED, DEFAULT_PADDED, ConfigError, parse_implementation
from esmfuzz.errors import EsmfuzzError
from esmfuzz.packing import PADDED_BATCH_TOKENS, check_packed, pack, pad, position_ids
from esmfuzz.properties import LOGITS, layer_order

__all__ = [
    "DEFAULT_PACKED",
    "DEFAULT_PADDED",
    "OUTPUTS",
    "ImplementationError",
    "ImplementationFailure",
    "PackedForward",
    "free_memory",
    "is_out_of_memory",
    "load_implementation",
    "oracle_forward",
    "outputs_of",
    "packed_forward",
    "length_buckets",
    "padded_forward",
    "run_packed",
    "run_padded",
]


_MASK_RATIO_TRAIN = 0.15 * 0.8

OUTPUTS = ("layers", "last", "logits")
"""What an implementation may declare it returns (its ``esmfuzz_outputs`` attribute):
every layer asked for (the default), the final layer only, or the logits only."""


def outputs_of(impl) -> str:
    """What ``impl`` returns: its ``esmfuzz_outputs`` attribute, ``"layers"`` without one."""
    value = getattr(impl, "esmfuzz_outputs", "layers")
    if value not in OUTPUTS:
        raise ImplementationError(
            f"{implementation_name(impl)}: esmfuzz_outputs={value!r} must be one of "
            f"{', '.join(map(repr, OUTPUTS))}"
        )
    return value


def _apply_head(model, x: torch.Tensor) -> torch.Tensor:
    """fair-esm's masked-LM head on ``x``, in ``x``'s dtype: an implementation that computes
    in its own precision (a float32 engine under a float16 model) keeps it."""
    head = model.lm_head
    if x.dtype != model.embed_tokens.weight.dtype:
        head = _HEADS.get(model, x.dtype, lambda: _head_copy(head, x.dtype))
    return head(x)


def _head_copy(head, dtype: torch.dtype):
    import copy

    return copy.deepcopy(head).to(dtype)


_HEADS = PerModel()
"""A head copy per model and dtype (the adapters' per-model cache)."""


class ImplementationError(EsmfuzzError, RuntimeError):
    """A user implementation that cannot be imported or breaks the forward contract."""


class ImplementationFailure(ImplementationError):
    """A forward that raised, ran past the time limit, returned malformed output or changed
    its inputs. ``Harness.check`` turns it into a failing verdict: a finding, shrunk and
    saved like any other, never a crash of the run.

    ``metric`` is the kind of failure (``exception``, ``out_of_memory``, ``timeout``,
    ``malformed_output``, ``mutated_input``); ``details`` hold the traceback of an
    exception; ``tokens`` is the size of the call's input (the pack, or the padded batch).
    """

    def __init__(self, message: str, *, metric: str, details: Sequence[str] = (),
                 tokens: int | None = None):
        super().__init__(message)
        self.metric = metric
        self.details = list(details)
        self.tokens = tokens


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, Python's MemoryError, or a library's own words for it
    (flash-attn, cuBLAS and the CPU allocator raise a RuntimeError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("out of memory", "can't allocate memory",
                                    "CUBLAS_STATUS_ALLOC_FAILED")
    )


def free_memory(device: torch.device) -> str:
    """``12.3 GiB of 139.8 GiB free on cuda:0``: what the device had at the time."""
    try:
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
        else:
            page = os.sysconf("SC_PAGE_SIZE")
            free = os.sysconf("SC_AVPHYS_PAGES") * page
            total = os.sysconf("SC_PHYS_PAGES") * page
    except (RuntimeError, ValueError, OSError):
        return f"free memory on {device} unknown"
    return f"{free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB free on {device}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


class _TimeLimit(BaseException):
    """Raised by the alarm in the forward's frame; a BaseException, so that the forward's
    own ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """SIGALRM after ``seconds``: Unix, main thread only (pytest and its xdist workers run
    tests there); elsewhere, or with no limit, the call runs unbounded."""
    usable = (
        seconds
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise _TimeLimit

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def implementation_name(impl) -> str:
    return f"{getattr(impl, '__module__', '?')}:{getattr(impl, '__qualname__', impl)}"


def _call(impl: Callable, kind: str, timeout: float | None, inputs: dict[str, torch.Tensor],
          *args, check_inputs: bool = True, **kwargs):
    """``impl(*args, **kwargs)``, with every way it can fail as an ImplementationFailure.

    ``inputs`` are the tensors among the arguments that it must not change in place
    (checked unless ``check_inputs`` is False: esmfuzz's own forwards, which do not, are
    spared a copy and a read-back of each).
    """
    name = f"{kind} implementation {implementation_name(impl)}"
    tokens = inputs["tokens"]
    size = tokens.numel()
    before = {key: value.clone() for key, value in inputs.items()} if check_inputs else {}
    try:
        with _time_limit(timeout):
            out = impl(*args, **kwargs)
    except _TimeLimit:
        raise ImplementationFailure(
            f"{name} did not return within --esm-timeout {timeout:g} s", metric="timeout"
        ) from None
    except Exception as exc:
        if is_out_of_memory(exc):
            shape = (f"a pack of {size:,} tokens" if tokens.dim() == 1 else
                     f"a padded batch of {tokens.shape[0]} x {tokens.shape[1]} tokens")
            raise ImplementationFailure(
                f"{name} raised {type(exc).__name__} on {shape}, with "
                f"{free_memory(tokens.device)} at the time: {_first_line(exc)}",
                metric="out_of_memory",
                details=traceback.format_exception(exc),
                tokens=size,
            ) from exc
        raise ImplementationFailure(
            f"{name} raised {type(exc).__name__}: {exc}",
            metric="exception",
            details=traceback.format_exception(exc),
        ) from exc
    changed = [key for key, value in before.items() if not torch.equal(inputs[key], value)]
    if changed:
        raise ImplementationFailure(
            f"{name} changed its input {' and '.join(changed)} in place", metric="mutated_input"
        )
    return out


def padded_forward(model, tokens: torch.Tensor, repr_layers: Iterable[int]):
    """fair-esm's own forward on a [B, T] batch padded with ``<pad>``."""
    return model(tokens, repr_layers=list(repr_layers))["representations"]


def _softmax_keeping_float64(x, dim: int, onnx_trace: bool = False):
    return torch.softmax(x, dim=dim, dtype=torch.float64 if x.dtype == torch.float64 else
                         torch.float32)


@contextlib.contextmanager
def _float64_softmax():
    import esm.multihead_attention as mha

    original = mha.utils_softmax
    mha.utils_softmax = _softmax_keeping_float64
    try:
        yield
    finally:
        mha.utils_softmax = original


def oracle_forward(model, tokens: torch.Tensor, repr_layers: Iterable[int]):
    """fair-esm's forward with its attention softmax in float64 for a float64 model.

    fair-esm takes the softmax in float32 whatever the model dtype, so a float64 copy run
    as is lies about 1e-7 (relative) from the exact result: as far as the FP32 paths it
    is meant to judge. Every other step of fair-esm already runs in the model's dtype.
    """
    with _float64_softmax():
        return padded_forward(model, tokens, repr_layers)


class PackedForward:
    """ESM-2 on a packed [N] token stream; calling it returns ``{layer: Tensor[N, D]}``.

    One method per step of ``ESM2.forward``, so a variant (a faulty packed path
    in the seeded-fault tests, or an experiment) overrides one step and keeps
    the rest identical.
    """

    def __call__(
        self,
        model,
        tokens: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        repr_layers: Iterable[int],
        *,
        backend: str = "auto",
    ) -> dict[int, torch.Tensor]:
        check_packed(tokens, cu_seqlens, max_seqlen)
        weight = model.embed_tokens.weight
        if tokens.device != weight.device or cu_seqlens.device != weight.device:
            raise ImplementationError(
                f"tokens are on {tokens.device} and cu_seqlens on {cu_seqlens.device}, "
                f"but the model is on {weight.device}"
            )
        backend = select_backend(backend, weight.device, weight.dtype)
        wanted = _check_layers(repr_layers, model.num_layers)
        x = self.embed(model, tokens, cu_seqlens)
        representations = {}
        if 0 in wanted:
            representations[0] = x
        attn = model.layers[0].self_attn
        cos, sin = self.rotary(self.positions(cu_seqlens), attn.head_dim, weight.dtype)
        for index, layer in enumerate(model.layers, start=1):
            x = self.layer(layer, x, cos, sin, cu_seqlens, max_seqlen, backend)
            if index in wanted:
                representations[index] = x
        if model.num_layers in wanted:
            representations[model.num_layers] = self.final_norm(model, x)
        return representations

    def embed(self, model, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        x = model.embed_scale * model.embed_tokens(tokens)
        if model.token_dropout:
            x = self.zero_masks(model, x, tokens)
            x = self.dropout_rescale(model, x, tokens, cu_seqlens)
        return x

    def zero_masks(self, model, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return x.masked_fill((tokens == model.mask_idx).unsqueeze(-1), 0.0)

    def dropout_rescale(self, model, x, tokens, cu_seqlens) -> torch.Tensor:
        """Token dropout's 0.88 / (1 - mask ratio), the ratio of each sequence on its own."""
        lengths = cu_seqlens.diff().long()
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths)
        is_mask = tokens == model.mask_idx
        masked = torch.zeros_like(lengths).index_add_(0, segment, is_mask.long())
        mask_ratio_observed = masked.to(x.dtype) / lengths
        return x * (1 - _MASK_RATIO_TRAIN) / (1 - mask_ratio_observed)[segment, None]

    def positions(self, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return position_ids(cu_seqlens)

    def rotary(self, positions: torch.Tensor, head_dim: int, dtype: torch.dtype):
        """cos/sin [N, 1, head_dim] in FP32 (FP64 for an FP64 model)."""
        angle_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        inv_freq = inv_freq.to(device=positions.device, dtype=angle_dtype)
        freqs = torch.outer(positions.to(angle_dtype), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of ``x`` [N, heads, head_dim], queries' and keys' heads side by
        side (element by element, the same numbers as one at a time, in half the kernels)."""
        wide = x.to(cos.dtype)
        return ((wide * cos) + (rotate_half(wide) * sin)).to(x.dtype)

    def attention(self, q, k, v, cu_seqlens, max_seqlen, backend) -> torch.Tensor:
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, backend=backend)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x)

    def layer(self, layer, x, cos, sin, cu_seqlens, max_seqlen, backend) -> torch.Tensor:
        attn = layer.self_attn
        tokens = x.shape[0]
        residual = x
        h = self.norm(layer.self_attn_layer_norm, x)
        q = attn.q_proj(h) * attn.scaling
        k = attn.k_proj(h)
        v = attn.v_proj(h)
        q, k, v = (t.view(tokens, attn.num_heads, attn.head_dim) for t in (q, k, v))
        q, k = self.rotate(torch.cat([q, k], dim=1), cos, sin).split(attn.num_heads, dim=1)
        o = self.attention(q, k, v, cu_seqlens, max_seqlen, backend)
        x = residual + attn.out_proj(o.reshape(tokens, attn.embed_dim))
        residual = x
        h = self.activation(layer.fc1(self.norm(layer.final_layer_norm, x)))
        return residual + layer.fc2(h)

    def norm(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One of the model's LayerNorms."""
        return module(x)

    def final_norm(self, model, x: torch.Tensor) -> torch.Tensor:
        return self.norm(model.emb_layer_norm_after, x)


packed_forward = PackedForward()
"""The reference packed forward: ``esmfuzz.forward:packed_forward``."""


def _check_layers(repr_layers: Iterable[int], num_layers: int) -> set[int]:
    wanted = set(repr_layers)
    bad = sorted(
        (layer for layer in wanted if not _is_layer(layer, num_layers)),
        key=repr,
    )
    if bad:
        raise ValueError(
            f"repr_layers={sorted(wanted, key=repr)!r}: {bad!r} not in 0..{num_layers}"
        )
    return wanted


def _is_layer(value: object, num_layers: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= num_layers


def load_implementation(spec: str | Callable, *, option: str = "implementation") -> Callable:
    """Import ``module:function``; a callable passes through unchanged.

    A function with an ``esmfuzz_requires()`` attribute (the adapters) says there what it
    needs that is missing (a kernel, a library version): a usage error before any model
    loads, rather than a finding in every example.
    """
    if callable(spec):
        return spec
    try:
        parse_implementation(spec, option)
    except ConfigError as exc:
        raise ImplementationError(str(exc)) from None
    module_name, _, attr = str(spec).partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a SyntaxError or a crash at import time is a usage error too
        raise ImplementationError(
            f"{option}={spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ImplementationError(f"{option}={spec!r}: {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ImplementationError(f"{option}={spec!r} is a {type(target).__name__}, not callable")
    requires = getattr(target, "esmfuzz_requires", None)
    problem = requires() if callable(requires) else None
    if problem:
        raise ImplementationError(f"{option}={spec!r}: {problem}")
    return target


def length_buckets(lengths: Sequence[int], *, waste: float = 0.5,
                   max_tokens: int = PADDED_BATCH_TOKENS) -> list[list[int]]:
    """Indices grouped longest first, each group padded by at most ``waste`` x its tokens
    and holding at most ``max_tokens`` tokens, padding included (or one sequence).

    Padding a dozen short sequences to a 1000-residue one multiplies the work ten-fold
    (measured: 36 s instead of 1.7 s for one FP64 pack on two CPU cores); inference
    pipelines sort by length for the same reason.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        width = lengths[group[0]] if group else 0
        if (group and width * (len(group) + 1) <= (1 + waste) * (
                sum(lengths[j] for j in group) + lengths[i])
                and (width + 2) * (len(group) + 1) <= max_tokens):
            group.append(i)
        else:
            groups.append([i])
    return groups


def _asked(impl, model, layers) -> tuple[list, list]:
    """(the sorted outputs wanted, what to ask ``impl`` for): the logits of an implementation
    that does not return them come from its final layer, through :func:`_apply_head`."""
    layers = sorted(set(layers), key=layer_order)
    kind = outputs_of(impl)
    if kind == "logits":
        if layers != [LOGITS]:
            raise ValueError(f"{implementation_name(impl)} returns logits only; asked for "
                             f"{layers!r}")
        return layers, layers
    hidden = [layer for layer in layers if layer != LOGITS]
    if LOGITS in layers and model.num_layers not in hidden:
        hidden.append(model.num_layers)
    if kind == "last" and hidden != [model.num_layers]:
        raise ValueError(f"{implementation_name(impl)} returns the final layer only; asked "
                         f"for {layers!r}")
    return layers, hidden


def _collect(out, asked, layers, model, rows: tuple[int, ...], kind: str, impl,
             device) -> dict:
    """``impl``'s output checked against the contract, with the logits it did not return."""
    for layer in asked:
        width = model.embed_tokens.weight.shape[0] if layer == LOGITS else model.embed_dim
        _check_output(out, layer, (*rows, width), kind, impl, device)
    if LOGITS in layers and LOGITS not in asked:
        out = {**out, LOGITS: _apply_head(model, out[model.num_layers])}
    return out


def run_padded(
    impl: Callable,
    model,
    alphabet,
    sequences: Sequence[str],
    layers: Iterable[int],
    *,
    bucketed: bool = False,
    timeout: float | None = None,
    check_inputs: bool = True,
    kept: Callable[[tuple[str, ...], Callable[[], list]], list] | None = None,
) -> list[dict[int, torch.Tensor]]:
    """Per sequence, ``{layer: Tensor[L_i + 2, D]}`` with the padding cut off (and
    ``{"logits": Tensor[L_i + 2, V]}`` where :data:`LOGITS` is asked for).

    ``bucketed`` runs :func:`length_buckets` batches instead of one batch of all; each
    call of ``impl`` may take ``timeout`` seconds. ``kept(batch, compute)``, where given,
    returns each batch's rows: ``compute()``, or the rows of the same batch computed before.
    """
    if bucketed and len(sequences) > 1:
        out: list = [None] * len(sequences)
        for group in length_buckets([residue_count(s) for s in sequences]):
            rows = run_padded(
                impl, model, alphabet, [sequences[i] for i in group], layers, timeout=timeout,
                check_inputs=check_inputs, kept=kept,
            )
            for i, row in zip(group, rows):
                out[i] = row
        return out
    if kept is not None:
        return kept(tuple(sequences), lambda: run_padded(
            impl, model, alphabet, sequences, layers, timeout=timeout, check_inputs=check_inputs))
    layers, asked = _asked(impl, model, layers)
    device = model.embed_tokens.weight.device
    tokens = pad(sequences, alphabet).to(device)
    with torch.inference_mode():
        out = _call(impl, "padded", timeout, {"tokens": tokens}, model, tokens, asked,
                    check_inputs=check_inputs)
        out = _collect(out, asked, layers, model, (len(sequences), tokens.shape[1]), "padded",
                       impl, device)
    lengths = tokens.ne(alphabet.padding_idx).sum(1).tolist()
    return [{layer: out[layer][i, :n] for layer in layers} for i, n in enumerate(lengths)]


def run_packed(
    impl: Callable,
    model,
    alphabet,
    sequences: Sequence[str],
    layers: Iterable[int],
    *,
    timeout: float | None = None,
    check_inputs: bool = True,
    **kwargs,
) -> list[dict[int, torch.Tensor]]:
    """Per sequence, ``{layer: Tensor[L_i + 2, D]}`` cut from the packed output (and
    ``{"logits": Tensor[L_i + 2, V]}`` where :data:`LOGITS` is asked for)."""
    layers, asked = _asked(impl, model, layers)
    device = model.embed_tokens.weight.device
    batch = pack(sequences, alphabet, device=device)
    inputs = {"tokens": batch.tokens, "cu_seqlens": batch.cu_seqlens}
    with torch.inference_mode():
        out = _call(impl, "packed", timeout, inputs, model, batch.tokens, batch.cu_seqlens,
                    batch.max_seqlen, asked, check_inputs=check_inputs, **kwargs)
        out = _collect(out, asked, layers, model, (batch.tokens.numel(),), "packed", impl,
                       device)
    lengths = batch.lengths
    per_layer = {layer: list(out[layer].split(lengths)) for layer in layers}
    return [{layer: per_layer[layer][i] for layer in layers} for i in range(len(sequences))]


def _check_output(out, layer: int | str, shape: tuple[int, ...], kind: str, impl: Callable,
                  device: torch.device) -> None:
    name = f"{kind} implementation {implementation_name(impl)}"
    if not isinstance(out, dict):
        raise ImplementationFailure(
            f"{name} returned {type(out).__name__}, not a dict of layer -> tensor",
            metric="malformed_output",
        )
    if layer not in out:
        raise ImplementationFailure(
            f"{name} returned layers {sorted(out, key=repr)}, missing requested layer {layer}",
            metric="malformed_output",
        )
    value = out[layer]
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ImplementationFailure(
            f"{name} returned {got} for layer {layer}, expected shape {shape}",
            metric="malformed_output",
        )
    if not value.is_floating_point() or value.device != device:
        raise ImplementationFailure(
            f"{name} returned a {value.dtype} tensor on {value.device} for layer {layer}, "
            f"expected a floating-point tensor on {device}",
            metric="malformed_output",
        )
