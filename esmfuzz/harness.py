"""Runs the forward paths a property needs, then hands the outputs to its oracle.

One :class:`Harness` per configuration and process; the pytest plugin, corpus
replay and the soak runner all check properties through :meth:`Harness.check`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esmfuzz import properties as P
from esmfuzz.attention import BACKENDS, backend_status, select_backend
from esmfuzz.corpus import Case, environment
from esmfuzz.forward import (
    DEFAULT_PACKED,
    DEFAULT_PADDED,
    PackedForward,
    load_implementation,
    padded_forward,
    run_packed,
    run_padded,
)
from esmfuzz.models import DEFAULT_SPEC, ModelPair, model_pair, parse_dtype
from esmfuzz.packing import pack

__all__ = ["Config", "Harness", "config_for_case", "harness_for", "read_pyproject"]


@dataclass(frozen=True)
class Config:
    """What to test: the keys of ``[tool.esmfuzz]`` and the ``--esm-*`` options."""

    model: str = DEFAULT_SPEC
    device: str = "auto"
    dtype: str = "float16"
    oracle_dtype: str = "float64"
    backend: str = "auto"
    packed_impl: str = DEFAULT_PACKED
    padded_impl: str = DEFAULT_PADDED
    corpus: str = "corpus"
    pack_tokens: int = 1536
    """Token budget of a generated pack: one very long sequence plus neighbours by default;
    raise it (4096 and more) to reach positions where FP16/BF16 rounding shows."""
    thresholds: P.Thresholds = field(default_factory=P.Thresholds)

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], *, source: str = "[tool.esmfuzz]"):
        known = {f.name for f in dataclasses.fields(cls)}
        clean: dict[str, object] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name == "thresholds":
                if not isinstance(value, Mapping):
                    raise ValueError(f"{source}: thresholds must be a table, got {value!r}")
                clean[name] = P.Thresholds.from_mapping(value, source=f"{source}.thresholds")
            elif name == "pack_tokens":
                try:
                    clean[name] = int(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{source}: pack-tokens={value!r} is not an int") from None
                if clean[name] < 1027:
                    raise ValueError(f"{source}: pack-tokens={value!r} must be at least 1027 "
                                     f"(one 1022-residue sequence, <cls>, <eos>, one more)")
            elif name in known:
                clean[name] = str(value)
            else:
                raise ValueError(f"{source}: unknown key {key!r}; known: {sorted(known)}")
        config = cls(**clean)
        parse_dtype(config.dtype, option=f"{source} dtype")
        parse_dtype(
            config.oracle_dtype, option=f"{source} oracle-dtype", allowed=("float64", "float32")
        )
        if config.backend not in ("auto",) + BACKENDS:
            raise ValueError(
                f"{source}: backend={config.backend!r} is not one of "
                f"{', '.join(('auto',) + BACKENDS)}"
            )
        return config


def read_pyproject(start: Path | str = ".") -> dict:
    """The ``[tool.esmfuzz]`` table of the nearest pyproject.toml at or above ``start``."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            with candidate.open("rb") as handle:
                return tomllib.load(handle).get("tool", {}).get("esmfuzz", {})
    return {}


class Harness:
    """A model pair plus the two implementations under test."""

    def __init__(self, config: Config):
        self.config = config
        self._packed = load_implementation(config.packed_impl, option="packed_impl")
        self._padded = load_implementation(config.padded_impl, option="padded_impl")
        self.pair: ModelPair = model_pair(
            config.model, device=config.device, dtype=config.dtype, oracle_dtype=config.oracle_dtype
        )
        self.thresholds = config.thresholds
        self.backend = select_backend(config.backend, self.pair.device, self.pair.dtype)
        layers = self.pair.num_layers
        self.all_layers = list(range(layers + 1))
        self.layers = sorted({0, 1, layers // 2, layers})
        """Checked on every example; all layers are computed only to explain a failure."""

    @property
    def device(self) -> torch.device:
        return self.pair.device

    def _backend_for(self, dtype: torch.dtype) -> str:
        if backend_status(self.device, dtype)[self.backend] is None:
            return self.backend
        return select_backend("auto", self.device, dtype)

    def packed(self, model, sequences: Sequence[str], layers) -> list[dict]:
        dtype = model.embed_tokens.weight.dtype
        kwargs = {}
        if isinstance(self._packed, PackedForward):
            kwargs["backend"] = self._backend_for(dtype)
        return run_packed(self._packed, model, self.pair.alphabet, sequences, layers, **kwargs)

    def padded(
        self, model, sequences: Sequence[str], layers, *, trusted: bool = False, whole=False
    ):
        """Length-bucketed batches, or one batch of all (``whole``) where padding is the point."""
        impl = padded_forward if trusted else self._padded
        return run_padded(
            impl, model, self.pair.alphabet, sequences, layers, bucketed=not whole
        )

    def check(
        self,
        prop: str,
        sequences: Sequence[str],
        extra: Mapping | None = None,
        *,
        layers: Sequence[int] | None = None,
    ) -> P.Verdict:
        """Run property ``prop`` on one layout; a failure is re-run on every layer to explain it."""
        if prop not in P.PROPERTIES:
            raise ValueError(f"property={prop!r} is not one of {', '.join(P.PROPERTIES)}")
        sequences = list(sequences)
        extra = dict(extra or {})
        verdict = self._run(prop, sequences, extra, layers or self.layers)
        if not verdict.ok and layers is None and self.layers != self.all_layers:
            explained = self._run(prop, sequences, extra, self.all_layers)
            if explained.ok:
                verdict.notes.append("the failure did not reproduce when re-run on every layer: "
                                     "the implementation under test is not deterministic")
                return verdict
            verdict = explained
        return verdict

    def _run(self, prop, sequences, extra, layers) -> P.Verdict:
        pair, th = self.pair, self.thresholds
        if prop == "positions":
            return P.positions(pack(sequences, pair.alphabet))
        if prop in ("precision", "packed_precision"):
            reference = self.padded(pair.reference, sequences, layers, trusted=True)
            if prop == "precision":
                candidate = self.padded(pair.candidate, sequences, layers)
            else:
                candidate = self.packed(pair.candidate, sequences, layers)
            return P.precision(candidate, reference, th, name=prop)
        if prop == "error_ratio":
            oracle = self.padded(pair.oracle, sequences, layers, trusted=True)
            tested = {}
            models = [pair.candidate] + (
                [pair.reference] if pair.oracle is not pair.reference else []
            )
            for model in models:
                dtype = model.embed_tokens.weight.dtype
                baseline = self.padded(model, sequences, layers, trusted=True)
                label = str(dtype)[6:]
                tested[f"packed {label}"] = (self.packed(model, sequences, layers), baseline, dtype)
                if self._padded is not padded_forward:
                    tested[f"padded {label}"] = (
                        self.padded(model, sequences, layers),
                        baseline,
                        dtype,
                    )
            verdict = P.error_ratio(tested, oracle, th)
            verdict.notes.append(self.pair.oracle_note)
            return verdict
        if prop == "finite":
            last = pair.num_layers
            layers = sorted(set(layers) | {last})
            reference = self._with_logits(
                pair.reference, self.padded(pair.reference, sequences, layers, trusted=True)
            )
            candidates = {
                "packed": self._with_logits(
                    pair.candidate, self.packed(pair.candidate, sequences, layers)
                ),
                "padded": self._with_logits(
                    pair.candidate, self.padded(pair.candidate, sequences, layers)
                ),
            }
            return P.finite(candidates, reference)
        if prop == "statistics":
            last = [pair.num_layers]
            reference = self.padded(pair.reference, sequences, last, trusted=True)
            candidates = {
                "packed": self.packed(pair.candidate, sequences, last),
                "padded": self.padded(pair.candidate, sequences, last),
            }
            return P.statistics(candidates, reference, th, layer=pair.num_layers)
        return self._context(prop, sequences, extra, layers)

    def _context(self, prop, sequences, extra, layers) -> P.Verdict:
        """isolation and padding_invariance: one sequence, two contexts."""
        target = _index(extra, "target", len(sequences))
        model = self.pair.candidate
        dtype = self.pair.dtype
        if prop == "isolation":
            variant = list(extra.get("variant") or [])
            if not variant:
                raise ValueError("isolation needs extra['variant'], the layout to compare with")
            other = _index(extra, "variant_target", len(variant))
            if variant[other] != sequences[target]:
                raise ValueError(
                    f"isolation: variant[{other}] is not the target sequence sequences[{target}]"
                )
            first = self.packed(model, sequences, layers)[target]
            second = self.packed(model, variant, layers)[other]
            ulps = self.thresholds.isolation_ulps
            if ulps < 0:
                ulps = P.isolation_noise_floor(self.device.type, self._backend_for(dtype))
            return P.isolation(first, second, ulps=ulps, dtype=dtype, sequence=target)
        alone = self.padded(model, [sequences[target]], layers)[0]
        among = self.padded(model, sequences, layers, whole=True)[target]
        return P.isolation(
            among,
            alone,
            ulps=self.thresholds.padding_ulps,
            dtype=dtype,
            name="padding_invariance",
            sequence=target,
        )

    def _with_logits(self, model, outputs: list[dict]) -> list[dict]:
        last = model.num_layers
        with torch.inference_mode():
            return [{**out, "logits": model.lm_head(out[last])} for out in outputs]

    def case(
        self,
        prop: str,
        sequences: Sequence[str],
        extra: Mapping | None,
        verdict: P.Verdict,
        *,
        status: str = "open",
    ) -> Case:
        """The corpus record of a (shrunk) failing example."""
        return Case(
            property=prop,
            sequences=tuple(sequences),
            model=self.pair.spec.text,
            dtype=str(self.pair.dtype)[6:],
            backend=self.backend,
            implementations={
                "packed": _name(self.config.packed_impl),
                "padded": _name(self.config.padded_impl),
            },
            thresholds=self.thresholds.as_dict(),
            metrics={k: float(v) for k, v in verdict.metrics.items()},
            worst=dict(verdict.worst),
            extra=dict(extra or {}),
            status=status,
            environment=environment(self.device),
            message=verdict.message(),
        )


def _index(extra: Mapping, key: str, size: int) -> int:
    value = extra.get(key, 0)
    if not isinstance(value, int) or not 0 <= value < size:
        raise ValueError(f"extra[{key!r}]={value!r} is not an index into {size} sequences")
    return value


def _name(impl) -> str:
    if isinstance(impl, str):
        return impl
    return f"{impl.__module__}:{impl.__qualname__}"


@functools.cache
def harness_for(config: Config) -> Harness:
    """One harness per configuration and process (the model pair is cached below it too)."""
    return Harness(config)


def config_for_case(case: Case, *, device: str = "auto", base: Config | None = None) -> Config:
    """The configuration that reproduces a corpus case on this machine."""
    base = base or Config()
    thresholds = {k: v for k, v in case.thresholds.items() if not math.isnan(v)}
    return dataclasses.replace(
        base,
        model=case.model,
        device=device,
        dtype=case.dtype,
        backend=case.backend if case.backend in BACKENDS else "auto",
        packed_impl=case.implementations.get("packed", DEFAULT_PACKED),
        padded_impl=case.implementations.get("padded", DEFAULT_PADDED),
        thresholds=P.Thresholds.from_mapping(thresholds),
    )
