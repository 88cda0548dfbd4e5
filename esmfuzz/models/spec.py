"""What a model spec, a dtype or a device option names, checked before anything loads.

Parsing only: no file is read and no weights are built here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from esmfuzz import config
from esmfuzz.config import DEFAULT_MODEL
from esmfuzz.errors import EsmfuzzError

DEFAULT_SPEC = DEFAULT_MODEL
WEIGHT_PROFILES = ("random", "trained")
"""Weight profiles of a synthetic model (``esmfuzz.models.synthetic``): ``trained`` (the
default: massive activations, attention sinks, logits past float16's ``exp`` range, as
trained models have; docs/trained-like.md) and ``random`` (the same weights without them)."""
DEFAULT_WEIGHTS = "trained"


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


class ModelSpecError(EsmfuzzError, ValueError):
    """A model spec that names no model esmfuzz can load."""


@dataclass(frozen=True)
class ModelSpec:
    text: str
    kind: str
    """``hub`` (a fair-esm name), ``path`` (a local .pt) or ``synthetic``."""
    name: str
    path: Path | None = None
    seed: int = 0
    profile: str = DEFAULT_WEIGHTS
    """Of a synthetic model: ``random`` or ``trained`` (trained-like activations)."""

    @property
    def architecture(self) -> Architecture | None:
        return ARCHITECTURES.get(self.name)

    @property
    def weights(self) -> str:
        """The spec that names these very weights, whatever defaults change: a synthetic
        model's profile (and seed) spelled out. What a corpus case records."""
        if self.kind != "synthetic":
            return self.text
        seed = f"seed={self.seed}&" if self.seed else ""
        return f"synthetic:{self.name}?{seed}profile={self.profile}"


_SYNTHETIC_FORM = "synthetic:<esm2 name>[?seed=N][&profile=random|trained]"


def _synthetic(text: str, known: str) -> ModelSpec:
    name, _, query = text[len("synthetic:"):].partition("?")
    options = {}
    for item in query.split("&") if query else []:
        key, _, value = item.partition("=")
        if key not in ("seed", "profile") or not value or key in options:
            raise ModelSpecError(f"model spec {text!r}: {item!r} is not seed=N or profile=NAME "
                                 f"(given once each); expected '{_SYNTHETIC_FORM}', e.g. "
                                 f"'{DEFAULT_SPEC}?seed=1&profile=random'")
        options[key] = value
    if not name:
        raise ModelSpecError(f"model spec {text!r}: expected '{_SYNTHETIC_FORM}'")
    if name not in ARCHITECTURES:
        raise ModelSpecError(f"model spec {text!r}: {name!r} is not one of {known}")
    seed = options.get("seed", "0")
    if not seed.isdigit():
        raise ModelSpecError(f"model spec {text!r}: seed={seed!r} must be a whole number >= 0")
    profile = options.get("profile", DEFAULT_WEIGHTS)
    if profile not in WEIGHT_PROFILES:
        raise ModelSpecError(f"model spec {text!r}: profile={profile!r} must be one of "
                             f"{', '.join(WEIGHT_PROFILES)}")
    return ModelSpec(text, "synthetic", name, seed=int(seed), profile=profile)


def parse_spec(text: str) -> ModelSpec:
    """Read ``esm2_...``, ``path/to/model.pt`` or ``synthetic:esm2_...[?seed=N][&profile=P]``."""
    if not isinstance(text, str) or not text.strip():
        raise ModelSpecError(f"model spec {text!r} is empty")
    text = text.strip()
    known = ", ".join(ARCHITECTURES)
    if text.startswith("synthetic:"):
        return _synthetic(text, known)
    if text.endswith(".pt") or os.sep in text:
        path = Path(text).expanduser()
        return ModelSpec(text, "path", path.stem, path=path)
    if text in ARCHITECTURES:
        return ModelSpec(text, "hub", text)
    raise ModelSpecError(
        f"model spec {text!r} is not a fair-esm ESM-2 name ({known}), a path to a .pt "
        f"checkpoint, or '{_SYNTHETIC_FORM}'"
    )


def parse_dtype(
    name: str | torch.dtype, *, option: str = "dtype", allowed=("float16", "bfloat16", "float32")
) -> torch.dtype:
    return config.parse_dtype(name, option, allowed=allowed)
