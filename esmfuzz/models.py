"""Model specs, safe loading, memory estimates and the cached reference/candidate pair.

Every spec ends in a fair-esm checkpoint file read by fair-esm's own loader, so
that the embedded synthetic default exercises the same code as a real model.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_SPEC",
    "Architecture",
    "CheckpointError",
    "InsufficientMemory",
    "MemoryEstimate",
    "ModelPair",
    "ModelSpec",
    "ModelSpecError",
    "cache_dir",
    "estimate_memory",
    "load_model",
    "model_pair",
    "plan_memory",
    "parse_spec",
    "resolve_device",
    "synthetic_checkpoint",
]

DEFAULT_SPEC = "synthetic:esm2_t6_8M_UR50D"
_DOWNLOAD = "https://dl.fbaipublicfiles.com/fair-esm"
_SAFE_GLOBALS = [argparse.Namespace]
"""What real ESM-2 checkpoints pickle besides tensors: ``cfg['model']`` is a Namespace."""


@dataclass(frozen=True)
class Architecture:
    layers: int
    embed_dim: int
    heads: int
    token_dropout: bool = True

    @property
    def parameters(self) -> int:
        """Exact parameter count of fair-esm's ``ESM2`` (lm_head tied to the embedding)."""
        d, vocab = self.embed_dim, 33
        attention = 4 * (d * d + d)
        ffn = 2 * 4 * d * d + 4 * d + d
        norms = 2 * 2 * d
        head = d * d + d + 2 * d + vocab
        contact = self.layers * self.heads + 1
        return vocab * d + self.layers * (attention + ffn + norms) + 2 * d + head + contact


ARCHITECTURES = {
    "esm2_t6_8M_UR50D": Architecture(6, 320, 20),
    "esm2_t12_35M_UR50D": Architecture(12, 480, 20),
    "esm2_t30_150M_UR50D": Architecture(30, 640, 20),
    "esm2_t33_650M_UR50D": Architecture(33, 1280, 20),
    "esm2_t36_3B_UR50D": Architecture(36, 2560, 40),
    "esm2_t48_15B_UR50D": Architecture(48, 5120, 40),
}


class ModelSpecError(ValueError):
    """A model spec that names no model esmfuzz can load."""


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, corrupt, not fair-esm, or not safe to unpickle."""


class InsufficientMemory(RuntimeError):
    """Loading would need more memory than the device has free."""


@dataclass(frozen=True)
class ModelSpec:
    text: str
    kind: str
    """``hub`` (a fair-esm name), ``path`` (a local .pt) or ``synthetic``."""
    name: str
    path: Path | None = None
    seed: int = 0

    @property
    def architecture(self) -> Architecture | None:
        return ARCHITECTURES.get(self.name)


def parse_spec(text: str) -> ModelSpec:
    """Read ``esm2_...``, ``path/to/model.pt`` or ``synthetic:esm2_...[?seed=N]``."""
    if not isinstance(text, str) or not text.strip():
        raise ModelSpecError(f"model spec {text!r} is empty")
    text = text.strip()
    known = ", ".join(ARCHITECTURES)
    if text.startswith("synthetic:"):
        match = re.fullmatch(r"synthetic:([A-Za-z0-9_]+)(?:\?seed=(\d+))?", text)
        if not match:
            raise ModelSpecError(
                f"model spec {text!r}: expected 'synthetic:<esm2 name>[?seed=N]', "
                f"e.g. '{DEFAULT_SPEC}?seed=1'"
            )
        name, seed = match.group(1), int(match.group(2) or 0)
        if name not in ARCHITECTURES:
            raise ModelSpecError(f"model spec {text!r}: {name!r} is not one of {known}")
        return ModelSpec(text, "synthetic", name, seed=seed)
    if text.endswith(".pt") or os.sep in text:
        path = Path(text).expanduser()
        return ModelSpec(text, "path", path.stem, path=path)
    if text in ARCHITECTURES:
        return ModelSpec(text, "hub", text)
    raise ModelSpecError(
        f"model spec {text!r} is not a fair-esm ESM-2 name ({known}), a path to a .pt "
        f"checkpoint, or 'synthetic:<esm2 name>[?seed=N]'"
    )


def cache_dir() -> Path:
    """Where synthetic checkpoints live: ``$ESMFUZZ_CACHE`` or ``~/.cache/esmfuzz``."""
    root = os.environ.get("ESMFUZZ_CACHE") or Path.home() / ".cache" / "esmfuzz"
    return Path(root)


_SYNTHETIC_VERSION = 3
"""Bump whenever the synthetic weights change, so cached checkpoints are not reused."""
_QK_SHARPEN = 2.0


def synthetic_checkpoint(name: str, seed: int = 0) -> Path:
    """Write, once, a fair-esm-format checkpoint of ``name``'s architecture with seeded weights."""
    arch = ARCHITECTURES[name]
    folder = cache_dir() / "synthetic" / f"v{_SYNTHETIC_VERSION}" / f"seed{seed}"
    model_path = folder / f"{name}.pt"
    regression_path = folder / f"{name}-contact-regression.pt"
    if model_path.exists() and regression_path.exists():
        return model_path
    folder.mkdir(parents=True, exist_ok=True)
    from esm.model.esm2 import ESM2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(arch.layers, arch.embed_dim, arch.heads, "ESM-1b", arch.token_dropout)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                # Identity norms would hide a missing or doubled layer norm.
                torch.nn.init.normal_(module.weight, 1.0, 0.1)
                torch.nn.init.normal_(module.bias, 0.0, 0.1)
        with torch.no_grad():
            for layer in model.layers:
                # Default init gives attention logits of std ~0.3: near-uniform attention,
                # which hides position and accumulation faults that trained models show.
                layer.self_attn.q_proj.weight.mul_(_QK_SHARPEN)
                layer.self_attn.k_proj.weight.mul_(_QK_SHARPEN)
    state = model.state_dict()
    regression = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.regression")}
    cfg = argparse.Namespace(
        encoder_layers=arch.layers,
        encoder_embed_dim=arch.embed_dim,
        encoder_ffn_embed_dim=4 * arch.embed_dim,
        encoder_attention_heads=arch.heads,
        token_dropout=arch.token_dropout,
        arch="ESM-1b",
    )
    body = {
        "cfg": {"model": cfg},
        "model": {"encoder.sentence_encoder." + k: v for k, v in state.items()},
    }
    _atomic_save({"model": regression}, regression_path)
    _atomic_save(body, model_path)
    return model_path


def _atomic_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _weights_only():
    """Force ``weights_only`` unpickling with the ESM-2 allow-list, whatever the environment."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)}
    forced = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            yield
    finally:
        if forced is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = forced
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def load_checkpoint(path: Path | str):
    """Load a fair-esm ESM-2 checkpoint safely; return ``(model, alphabet)`` in FP32 on the CPU.

    fair-esm's local loader is ``torch.load`` of the checkpoint and its co-located
    contact regression, then ``load_model_and_alphabet_core``. esmfuzz does the
    two ``torch.load`` calls itself, to force ``weights_only`` with the allow-list
    and to tell a corrupt file from a foreign one, and hands the data to fair-esm's
    core, which builds the real ``ESM2`` and checks every key.
    """
    import esm.pretrained

    path = Path(path)
    regression = Path(str(path.with_suffix("")) + "-contact-regression.pt")
    data = _safe_load(path)
    if not isinstance(data, dict) or "model" not in data or "cfg" not in data:
        keys = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a fair-esm ESM-2 checkpoint: expected top-level "
            f"keys 'cfg' and 'model', found {keys}"
        )
    reg = _safe_load(regression) if regression.is_file() else None
    name = path.stem if path.stem.startswith("esm2") else f"esm2_{path.stem}"
    try:
        model, alphabet = esm.pretrained.load_model_and_alphabet_core(name, data, reg)
    except (KeyError, AttributeError, TypeError, RuntimeError) as exc:
        problem = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a fair-esm ESM-2 checkpoint: {problem}"
        ) from None
    return model.eval(), alphabet


def _safe_load(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with _weights_only():
            return torch.load(str(path), map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not found:
            raise CheckpointError(f"checkpoint {str(path)!r} is not a torch checkpoint") from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} needs {found.group(1)} to unpickle, which is not on "
            f"esmfuzz's allow-list ({_allowed()}); esmfuzz will not run arbitrary code from "
            f"a checkpoint"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _allowed() -> str:
    return ", ".join(f"{g.__module__}.{g.__qualname__}" for g in _SAFE_GLOBALS)


def _hub_checkpoint(name: str) -> Path:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    model_path = folder / f"{name}.pt"
    for url, target in (
        (f"{_DOWNLOAD}/models/{name}.pt", model_path),
        (
            f"{_DOWNLOAD}/regression/{name}-contact-regression.pt",
            folder / f"{name}-contact-regression.pt",
        ),
    ):
        if target.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except Exception as exc:
            raise CheckpointError(
                f"model {name!r} is not in the torch hub cache ({target}) and could not be "
                f"downloaded from {url}: {exc}. Place the file there, or pass a local path."
            ) from None
    return model_path


def checkpoint_path(spec: ModelSpec) -> Path:
    if spec.kind == "synthetic":
        return synthetic_checkpoint(spec.name, spec.seed)
    if spec.kind == "hub":
        return _hub_checkpoint(spec.name)
    return spec.path


def load_model(spec: str | ModelSpec):
    """``(model, alphabet)`` for a spec, FP32 on the CPU, through fair-esm's loader."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    return load_checkpoint(checkpoint_path(spec))


_BYTES = {torch.float64: 8, torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    device: str
    device_bytes: int
    host_bytes: int
    available_device: int | None
    available_host: int | None
    parts: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return all(
            have is None or need <= have
            for need, have in (
                (self.device_bytes, self.available_device),
                (self.host_bytes, self.available_host),
            )
        )

    def describe(self) -> str:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in self.parts.items())
        text = (
            f"{self.parameters / 1e6:,.0f}M parameters; on {self.device}: {_gib(self.device_bytes)}"
        )
        text += f" ({parts})"
        if self.available_device is not None:
            text += f", {_gib(self.available_device)} free"
        return text


def _still_needed(estimate: MemoryEstimate, loaded: set[torch.dtype]) -> MemoryEstimate:
    """``estimate`` less the copies already on the device (another pair's)."""
    names = {str(t)[6:] for t in loaded}
    gone = {k: v for k, v in estimate.parts.items() if k.split()[-1] in names}
    if not gone:
        return estimate
    return replace(
        estimate,
        device_bytes=estimate.device_bytes - sum(gone.values()),
        parts={k: v for k, v in estimate.parts.items() if k not in gone},
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _maybe_gib(n: int | None) -> str:
    return "unknown" if n is None else _gib(n)


def _available(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _parameters_of(spec: ModelSpec) -> int:
    if spec.architecture is not None:
        return spec.architecture.parameters
    if spec.path is None or not spec.path.is_file():
        raise CheckpointError(f"checkpoint {str(spec.path)!r} does not exist or is not a file")
    return spec.path.stat().st_size // 4


def estimate_memory(
    spec: str | ModelSpec,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
    oracle_dtype: torch.dtype | None = torch.float64,
    max_tokens: int = 4096,
) -> MemoryEstimate:
    """Bytes needed for the pair before anything is loaded.

    The workspace term is the largest attention-score block of a padded forward
    of ``max_tokens`` tokens (B x H x T x T in FP32) plus 16 activations of
    [tokens, 4D]: measured loosely, it keeps the estimate on the safe side.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    device = torch.device(device)
    params = _parameters_of(spec)
    arch = spec.architecture or Architecture(1, 1280, 20)
    parts = {"reference float32": params * 4, f"candidate {str(dtype)[6:]}": params * _BYTES[dtype]}
    if oracle_dtype is torch.float64:
        parts["oracle float64"] = params * 8
    seq = min(max_tokens, 1024)
    parts["workspace"] = (max_tokens // seq) * arch.heads * seq * seq * 4 * 2 + (
        16 * max_tokens * 4 * arch.embed_dim * 8
    )
    device_bytes = sum(parts.values())
    host_bytes = 2 * params * 4 if device.type != "cpu" else device_bytes + params * 4
    return MemoryEstimate(
        params,
        str(device),
        device_bytes,
        host_bytes,
        _available(device) if device.type == "cuda" else None,
        _available(torch.device("cpu")),
        parts,
    )


@dataclass
class ModelPair:
    """The FP32 reference, the low-precision candidate, and the error-ratio oracle."""

    spec: ModelSpec
    device: torch.device
    alphabet: object
    reference: torch.nn.Module
    candidate: torch.nn.Module
    oracle: torch.nn.Module
    dtype: torch.dtype
    oracle_dtype: torch.dtype
    oracle_note: str
    memory: MemoryEstimate

    @property
    def num_layers(self) -> int:
        return self.reference.num_layers


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r} asked for, but CUDA is not available here")
    return device


_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def parse_dtype(
    name: str | torch.dtype, *, option: str = "dtype", allowed=("float16", "bfloat16", "float32")
) -> torch.dtype:
    if isinstance(name, torch.dtype):
        name = str(name)[6:]
    if name not in allowed:
        raise ValueError(f"{option}={name!r} must be one of {', '.join(allowed)}")
    return _DTYPES[name]


def plan_memory(
    spec: ModelSpec, *, device: torch.device, dtype: torch.dtype, oracle_dtype: torch.dtype
) -> tuple[MemoryEstimate, torch.dtype, str]:
    """(estimate, oracle dtype, note) of the pair :func:`model_pair` would build: a float64
    oracle falls back to float32 where only that fits. Raises InsufficientMemory, with
    advice about what was not already tried, where nothing fits.
    """
    loaded = {t for (text, where, t) in _COPIES if (text, where) == (spec.text, str(device))}

    def estimate(oracle):
        return _still_needed(
            estimate_memory(spec, device=device, dtype=dtype, oracle_dtype=oracle), loaded
        )

    first = estimate(oracle_dtype)
    if first.fits:
        return first, oracle_dtype, f"oracle in {str(oracle_dtype)[6:]}"
    tried = [first]
    if oracle_dtype is torch.float64:
        smaller = estimate(torch.float32)
        if smaller.fits:
            note = "oracle in float32: a float64 copy does not fit in memory"
            return smaller, torch.float32, note
        tried.append(smaller)
    least = tried[-1]
    advice = "a smaller model or another device" + (
        "" if len(tried) > 1 or oracle_dtype is torch.float32 else ", or --esm-oracle-dtype float32"
    )
    raise InsufficientMemory(
        f"model {spec.text!r} needs about {_gib(least.device_bytes)} on {device} "
        f"({'oracle in float32, the least tried' if len(tried) > 1 else 'as asked'}) and "
        f"{_gib(least.host_bytes)} of host memory to load; available: device "
        f"{_maybe_gib(least.available_device)}, host {_maybe_gib(least.available_host)}. "
        f"Use {advice}."
    )


_PAIRS: dict[tuple, ModelPair] = {}
_COPIES: dict[tuple, torch.nn.Module] = {}
"""Copies by (spec, device, dtype): pairs that differ only in the candidate's dtype share
their FP32 reference and their oracle, so their outputs are computed once."""


def model_pair(
    spec: str | ModelSpec = DEFAULT_SPEC,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float16",
    oracle_dtype: str | torch.dtype = "float64",
) -> ModelPair:
    """Build (once per process) every copy before any forward pass.

    fair-esm caches rotary tables by length and device, not dtype: a model
    converted after an FP32 forward would mix dtypes. Each copy here is made
    from the freshly loaded FP32 weights, then never converted again.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    device = resolve_device(device)
    dtype = parse_dtype(dtype)
    want_oracle = parse_dtype(oracle_dtype, option="oracle_dtype", allowed=("float64", "float32"))
    key = (spec.text, str(device), dtype, want_oracle)
    if key in _PAIRS:
        return _PAIRS[key]
    estimate, want_oracle, note = plan_memory(spec, device=device, dtype=dtype,
                                              oracle_dtype=want_oracle)
    model, alphabet = load_model(spec)
    copies = {}
    for role, role_dtype in (
        ("reference", torch.float32),
        ("candidate", dtype),
        ("oracle", want_oracle),
    ):
        at = (spec.text, str(device), role_dtype)
        if at not in _COPIES:
            _COPIES[at] = copy.deepcopy(model).to(device=device, dtype=role_dtype).eval()
        copies[role] = _COPIES[at]
    del model
    pair = ModelPair(
        spec,
        device,
        alphabet,
        copies["reference"],
        copies["candidate"],
        copies["oracle"],
        dtype,
        want_oracle,
        note,
        estimate,
    )
    _PAIRS[key] = pair
    return pair
