"""How much memory a reference/candidate/oracle pair needs, worked out before anything loads.

A model too big for the device then fails once, with advice, instead of out of memory mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from esmfuzz.models.checkpoint import CheckpointError
from esmfuzz.models.spec import Architecture, ModelSpec, parse_spec


class InsufficientMemory(RuntimeError):
    """Loading would need more memory than the device has free."""


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


def plan(
    spec: ModelSpec,
    *,
    device: torch.device,
    dtype: torch.dtype,
    oracle_dtype: torch.dtype,
    loaded: set[torch.dtype],
) -> tuple[MemoryEstimate, torch.dtype, str]:
    """(estimate, oracle dtype, note) of a pair whose ``loaded`` copies are already on the
    device: a float64 oracle falls back to float32 where only that fits. Raises
    InsufficientMemory, with advice about what was not already tried, where nothing fits.
    """

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
