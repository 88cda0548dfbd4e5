"""How much memory a reference/candidate/oracle pair needs, worked out before anything loads.

A model too big for the device then fails once, with advice, instead of out of memory mid-run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import torch

from esmfuzz.config import dtype_name
from esmfuzz.errors import EsmfuzzError
from esmfuzz.models.loading import LOADINGS
from esmfuzz.models.spec import Architecture, ModelSpec, parse_spec
from esmfuzz.packing import PADDED_BATCH_TOKENS


class InsufficientMemory(EsmfuzzError, RuntimeError):
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
    loading: str = "together"

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
        if self.loading == "sequential":
            text += f", one copy at a time; {_gib(self.host_bytes)} on the host"
        if self.available_device is not None:
            text += f", {_gib(self.available_device)} free"
        return text


def _still_needed(estimate: MemoryEstimate, loaded: set[torch.dtype]) -> MemoryEstimate:
    """``estimate`` less the copies already on the device (another pair's)."""
    names = {dtype_name(t) for t in loaded}
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


def one_copy_fits(spec: ModelSpec, device: torch.device, *,
                  device_memory: float = 0.0) -> tuple[bool, int]:
    """(whether one float32 copy of ``spec`` fits the host and ``device`` now, within
    ``device_memory`` GiB of the device (0: all that is free), its bytes): the activation
    profile needs that alone, where the whole model triple may not fit."""
    need = parameters_of(spec) * 4
    free = [_available(place) for place in {torch.device("cpu"), device}]
    if device_memory:
        free.append(int(device_memory * 2**30))
    return all(n is None or need <= n for n in free), need


def parameters_of(spec: ModelSpec) -> int:
    """Counted from the checkpoint's tensors (memory-mapped, nothing read): real files hold
    float32 or float16 weights, so the file size alone is off by up to 2x."""
    if spec.architecture is not None:
        return spec.architecture.parameters
    path = spec.path
    stat = path.stat() if path is not None and path.is_file() else None
    return _file_parameters(str(path), stat and (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _file_parameters(path: str, version: tuple[int, int] | None) -> int:
    """Once per file and version: a plan tries up to four estimates, and the plugin's
    preflight plans before the pair does."""
    from esmfuzz.models.checkpoint import read_state

    state = read_state(path)
    return sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))


def estimate_memory(
    spec: str | ModelSpec,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
    oracle_dtype: torch.dtype | None = torch.float64,
    loading: str = "together",
    device_limit: int | None = None,
    max_tokens: int = PADDED_BATCH_TOKENS,
) -> MemoryEstimate:
    """Bytes needed for the pair before anything is loaded.

    The workspace term is the largest attention-score block of a padded forward of
    ``max_tokens`` tokens (B x H x T x T in FP32; esmfuzz's padded batches hold no more)
    plus 16 activations of [tokens, 4D]: measured loosely, it keeps the estimate on the
    safe side.
    ``together``: every copy on the device, the FP32 model it is made from on the host.
    ``sequential``: every copy on the host, the largest on the device at a time.
    ``device_limit``: bytes esmfuzz may use on the device, where less than is free.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    device = torch.device(device)
    params = parameters_of(spec)
    arch = spec.architecture or Architecture(1, 1280, 20)
    copies = {"reference float32": params * 4,
              f"candidate {dtype_name(dtype)}": params * _BYTES[dtype]}
    if oracle_dtype is torch.float64:
        copies["oracle float64"] = params * 8
    seq = min(max_tokens, 1024)
    workspace = (max_tokens // seq) * arch.heads * seq * seq * 4 * 2 + (
        16 * max_tokens * 4 * arch.embed_dim * 8
    )
    slack = 2 * 2**30
    if loading == "sequential":
        parts = {f"largest copy ({max(copies, key=copies.get)})": max(copies.values()),
                 "workspace": workspace}
        host_bytes = sum(copies.values()) + params * 4 + slack  # + the model loaded from disk
    else:
        parts = {**copies, "workspace": workspace}
        host_bytes = params * 4 + slack
        if device.type == "cpu":
            host_bytes += sum(parts.values())
    available = _available(device) if device.type == "cuda" else None
    if device_limit and available is not None:
        available = min(available, device_limit)
    return MemoryEstimate(
        params,
        str(device),
        sum(parts.values()),
        host_bytes,
        available,
        _available(torch.device("cpu")),
        parts,
        loading,
    )


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` chose: the estimate, the oracle dtype, the loading mode, and why."""

    estimate: MemoryEstimate
    oracle_dtype: torch.dtype
    loading: str
    note: str


def plan(
    spec: ModelSpec,
    *,
    device: torch.device,
    dtype: torch.dtype,
    oracle_dtype: torch.dtype,
    loaded: set[torch.dtype],
    loading: str = "auto",
    device_limit: int | None = None,
) -> Plan:
    """The first that fits of: the oracle as asked with every copy on the device, a float32
    oracle (where float64 was asked) with every copy on the device, then the same two
    loading one copy at a time (``sequential``; on a GPU only, unless asked for).
    ``loaded`` copies are already on the device (another pair's). Raises
    InsufficientMemory, with advice about what was not already tried, where nothing fits.
    """
    if loading not in LOADINGS:
        raise ValueError(f"loading={loading!r} is not one of {', '.join(LOADINGS)}")
    oracles = [oracle_dtype] + ([torch.float32] if oracle_dtype is torch.float64 else [])
    modes = {"auto": ["together"] + (["sequential"] if device.type == "cuda" else []),
             "together": ["together"], "sequential": ["sequential"]}[loading]
    tried = []
    for mode in modes:
        for oracle in oracles:
            estimate = estimate_memory(spec, device=device, dtype=dtype, oracle_dtype=oracle,
                                       loading=mode, device_limit=device_limit)
            if mode == "together":
                estimate = _still_needed(estimate, loaded)
            if estimate.fits:
                return Plan(estimate, oracle, mode, _note(oracle, oracle_dtype, mode, tried))
            tried.append((estimate, f"oracle {dtype_name(oracle)}, loading {mode}"))
    least, way = min(tried, key=lambda t: t[0].device_bytes)
    advice = ["a smaller model", "another device"]
    if torch.float32 not in oracles:
        advice.append("--esm-oracle-dtype float32")
    if loading == "together" and device.type == "cuda":
        advice.append("--esm-loading sequential")
    raise InsufficientMemory(
        f"model {spec.text!r} needs at least {_gib(least.device_bytes)} on {device} "
        f"(the least of {len(tried)} way(s) tried: {way}; {least.describe()}) and "
        f"{_gib(least.host_bytes)} of host memory; available: device "
        f"{_maybe_gib(least.available_device)}, host {_maybe_gib(least.available_host)}. "
        f"Use {', '.join(advice[:-1])} or {advice[-1]}."
    )


def _note(oracle, asked, mode, tried) -> str:
    text = f"oracle in {dtype_name(oracle)}"
    if oracle is not asked:
        text += ": a float64 copy does not fit in memory"
    if mode == "sequential":
        text += ("; loading sequential: the copies do not fit on the device together, so "
                 "each is brought over from the host when a forward needs it"
                 if tried else "; loading sequential, as asked")
    return text
