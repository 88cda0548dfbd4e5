"""Model specs, safe loading, synthetic checkpoints, memory estimates and the cached pair.

One module per concern, so each reads on its own (spec <- synthetic <- checkpoint <- memory
<- pair); this package re-exports the public API, so ``from esmfuzz.models import X`` works.
``parse_dtype`` and ``load_checkpoint`` are re-exported too, outside ``__all__``, for their callers.
"""

from esmfuzz.config import resolve_device
from esmfuzz.models.checkpoint import CheckpointError, load_model
from esmfuzz.models.checkpoint import load_checkpoint as load_checkpoint
from esmfuzz.models.memory import InsufficientMemory, MemoryEstimate, estimate_memory
from esmfuzz.models.pair import ModelPair, model_pair, plan_memory
from esmfuzz.models.spec import (
    ARCHITECTURES,
    DEFAULT_SPEC,
    Architecture,
    ModelSpec,
    ModelSpecError,
    parse_spec,
)
from esmfuzz.models.spec import parse_dtype as parse_dtype
from esmfuzz.models.synthetic import cache_dir, synthetic_checkpoint

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
