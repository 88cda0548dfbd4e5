"""Hand-built tensors for the oracle tests: seeded float64 oracles and perturbations whose
statistic is known in closed form (see ``tests/test_oracles.py``)."""

from __future__ import annotations

import math
import re

import torch

from esmfuzz.properties import Thresholds, Verdict

F64 = torch.float64
D = 16
INSIDE = 1 - 1e-6
PAST = 1 + 1e-3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(rows: int, seed: int, cols: int = D) -> torch.Tensor:
    return torch.randn(rows, cols, generator=_gen(seed), dtype=F64)


def activations(rows: int, seed: int, cols: int = D) -> torch.Tensor:
    """Random signs and magnitudes in [0.5, 1.5): no element is an outlier of its row
    (``metrics.OUTLIER_SIGMAS``), so the statistics are plain RMS ratios."""
    magnitude = 0.5 + torch.rand(rows, cols, generator=_gen(seed + 10**6), dtype=F64)
    return signs(rows, seed, cols) * magnitude


def signs(rows: int, seed: int, cols: int = D) -> torch.Tensor:
    """A +-1 pattern: every token's RMS, and the whole tensor's, is exactly 1."""
    return torch.randint(0, 2, (rows, cols), generator=_gen(seed)).to(F64) * 2 - 1


def one_token(rows: int, token: int, seed: int, cols: int = D) -> torch.Tensor:
    """+-1 on ``token`` only: that token's RMS is 1, the whole tensor's sqrt(1 / rows)."""
    out = torch.zeros(rows, cols, dtype=F64)
    out[token] = signs(1, seed, cols)[0]
    return out


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def token_rms(x: torch.Tensor) -> torch.Tensor:
    return x.double().pow(2).mean(-1).sqrt()


def atol_of(thresholds: Thresholds, dtype: torch.dtype) -> float:
    return thresholds.ulp_floor * torch.finfo(dtype).eps


def place(verdict: Verdict) -> set[tuple[str, int]]:
    """(path label, layer) of every violation."""
    out = set()
    for v in verdict.violations:
        m = re.match(r"(.*?) (?:rms|token): \w+=.* at layer (\d+)", v)
        assert m, v
        out.add((m.group(1), int(m.group(2))))
    return out


LENGTHS = (3, 6)  # residues; tensors have L + 2 rows
LAYERS = (0, 5)


def oracle_outputs(lengths=LENGTHS, layers=LAYERS, seed=0) -> list[dict[int, torch.Tensor]]:
    return [
        {layer: activations(n + 2, seed=seed + 100 * s + layer) for layer in layers}
        for s, n in enumerate(lengths)
    ]


def noisy(outputs, scale: float, seed: int) -> list[dict[int, torch.Tensor]]:
    """outputs + scale * N(0, 1): a baseline whose worst token is well above its RMS."""
    return [
        {layer: t + scale * randn(t.shape[0], seed=seed + 100 * s + layer, cols=t.shape[1])
         for layer, t in out.items()}
        for s, out in enumerate(outputs)
    ]


def copy_outputs(outputs):
    return [{layer: t.clone() for layer, t in out.items()} for out in outputs]


def rotate(v: torch.Tensor, cos: float, seed: int) -> torch.Tensor:
    """``v`` rotated in the plane of ``v`` and a random orthogonal direction: exact cosine."""
    u = torch.randn(v.shape[0], generator=_gen(seed), dtype=F64)
    u = u - (u @ v) / (v @ v) * v
    u = u / u.norm() * v.norm()
    return cos * v + math.sqrt(1 - cos * cos) * u


def unit_reference(rows: int, seed: int) -> torch.Tensor:
    """Tokens sharing a strong common direction, so one token turned does not turn the mean."""
    return 3 * randn(1, seed=seed) + randn(rows, seed=seed + 1)


class Deferred:
    """A baseline given as a callable, counting its calls."""

    def __init__(self, outputs):
        self.outputs, self.calls = outputs, 0

    def __call__(self):
        self.calls += 1
        return self.outputs
