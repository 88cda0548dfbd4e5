"""Runs the forward paths a property needs, then hands the outputs to its oracle.

One :class:`Harness` per configuration and process; the pytest plugin, corpus
replay and the soak runner all check properties through :meth:`Harness.check`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esmfuzz import properties as P
from esmfuzz import registry
from esmfuzz.attention import BACKENDS, backend_status, select_backend
from esmfuzz.corpus import Case, environment
from esmfuzz.forward import (
    DEFAULT_PACKED,
    DEFAULT_PADDED,
    ImplementationFailure,
    PackedForward,
    implementation_name,
    load_implementation,
    oracle_forward,
    packed_forward,
    padded_forward,
    run_packed,
    run_padded,
)
from esmfuzz.models import DEFAULT_SPEC, ModelPair, model_pair, parse_dtype, resolve_device
from esmfuzz.models.loading import LOADINGS
from esmfuzz.properties import Sample

__all__ = [
    "PATHS",
    "Config",
    "Harness",
    "config_for_case",
    "crowd_limits",
    "harness_for",
    "read_pyproject",
]


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
    crowd_tokens: int = 0
    """Token budget of the ``crowded`` stratum (many short proteins in one pack); 0 picks
    6144 for the quick and ci profiles on the CPU, else 16384."""
    crowd_sequences: int = 0
    """Most sequences in a ``crowded`` pack; 0 picks 128 for quick and ci on the CPU,
    else 256."""
    loading: str = "auto"
    """``together`` (every copy on the device), ``sequential`` (one copy on the device at a
    time, for models whose copies do not fit together), or ``auto`` (the memory estimate
    decides, and the run's header says which it chose)."""
    device_memory: float = 0.0
    """GiB of device memory esmfuzz may use (0: all that is free), for a GPU it shares with
    other work; the memory plan (and the loading mode it picks) keeps within it."""
    paths: str = "auto"
    """Dtype paths the implementations under test are checked on: ``both`` (candidate dtype
    and FP32), ``candidate`` (candidate dtype only, for FP16/BF16-only kernels), or ``auto``
    (both, dropping FP32 with a note where the implementation refuses it with a TypeError)."""
    masks: bool = True
    """Whether generated sequences hold ``<mask>`` (false for pipelines that never see it,
    such as translated reads)."""
    residues: str = "all"
    """``all`` residues, or ``standard`` (the 20 amino acids: no X B Z U O)."""
    shrink_seconds: float = 0.0
    """Seconds a target may spend shrinking its failure (0: Hypothesis's own limit); past
    them the smallest failure so far is saved, with a note that it may not be minimal."""
    timeout: float = 0.0
    """Seconds one call of an implementation under test may take (0: no limit); a call over
    the limit is a finding."""
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
            elif name in _INT_KEYS:
                least, why, zero_is_default = _INT_KEYS[name]
                option = name.replace("_", "-")
                try:
                    clean[name] = int(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{source}: {option}={value!r} is not an int") from None
                if clean[name] < least and not (zero_is_default and clean[name] == 0):
                    raise ValueError(f"{source}: {option}={value!r} must be at least {least} "
                                     f"({why})")
            elif name == "masks":
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    value = value.lower() == "true"
                if not isinstance(value, bool):
                    raise ValueError(f"{source}: masks={value!r} must be true or false")
                clean[name] = value
            elif name in ("timeout", "shrink_seconds", "device_memory"):
                option = name.replace("_", "-")
                try:
                    clean[name] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{source}: {option}={value!r} is not a number") from None
                if not (math.isfinite(clean[name]) and clean[name] >= 0):
                    raise ValueError(
                        f"{source}: {option}={value!r} must be a finite number of "
                        f"{'GiB' if name == 'device_memory' else 'seconds'}, at least 0 "
                        f"(0: no limit)"
                    )
            elif name in known:
                clean[name] = str(value)
            else:
                raise ValueError(f"{source}: unknown key {key!r}; known: {sorted(known)}")
        config = cls(**clean)
        parse_dtype(config.dtype, option=f"{source} dtype")
        parse_dtype(
            config.oracle_dtype, option=f"{source} oracle-dtype", allowed=("float64", "float32")
        )
        if config.residues not in ("all", "standard"):
            raise ValueError(f"{source}: residues={config.residues!r} is not one of all, standard")
        if config.loading not in LOADINGS:
            raise ValueError(
                f"{source}: loading={config.loading!r} is not one of {', '.join(LOADINGS)}"
            )
        if config.paths not in PATHS:
            raise ValueError(
                f"{source}: paths={config.paths!r} is not one of {', '.join(PATHS)}"
            )
        if config.backend not in ("auto",) + BACKENDS:
            raise ValueError(
                f"{source}: backend={config.backend!r} is not one of "
                f"{', '.join(('auto',) + BACKENDS)}"
            )
        return config


PATHS = ("auto", "both", "candidate")
_INT_KEYS = {
    "pack_tokens": (1027, "one 1022-residue sequence, <cls>, <eos>, one more", False),
    "crowd_tokens": (1024, "or 0 for the default", True),
    "crowd_sequences": (2, "or 0 for the default", True),
}
"""Integer keys: (least value, why, whether 0 means "the default")."""


def crowd_limits(config: Config, *, profile: str) -> tuple[int, int]:
    """(most sequences, token budget) of the ``crowded`` stratum under ``profile``."""
    small = profile in ("quick", "ci") and resolve_device(config.device).type == "cpu"
    return (
        config.crowd_sequences or (128 if small else 256),
        config.crowd_tokens or (6144 if small else 16384),
    )


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
            config.model, device=config.device, dtype=config.dtype,
            oracle_dtype=config.oracle_dtype, loading=config.loading,
            device_memory=config.device_memory,
        )
        self.thresholds = config.thresholds
        self.backend = select_backend(config.backend, self.pair.device, self.pair.dtype)
        layers = self.pair.num_layers
        self.all_layers = list(range(layers + 1))
        self.layers = sorted({0, 1, layers // 2, layers})
        """Checked on every example; all layers are computed only to explain a failure."""
        self.timings: Counter | None = Counter() if os.environ.get("ESMFUZZ_TIMINGS") else None
        """Seconds per kind of forward, where ``$ESMFUZZ_TIMINGS`` is set (:meth:`_timed`)."""
        self._outputs: dict | None = None
        """Forward outputs of the :meth:`check` in progress, by call (see :meth:`_memo`)."""
        self.refused: dict[str, str] = {}
        """Implementations (``packed``/``padded``) that refused the FP32 reference with a
        TypeError: from then on only their candidate-dtype path is checked (``paths=auto``)."""

    @property
    def device(self) -> torch.device:
        return self.pair.device

    def _backend_for(self, dtype: torch.dtype) -> str:
        if backend_status(self.device, dtype)[self.backend] is None:
            return self.backend
        return select_backend("auto", self.device, dtype)

    def _memo(self, key: tuple, model, compute: Callable[[], list[dict]]) -> list[dict]:
        """``compute()`` once per key within one :meth:`check`: properties ask for the same
        forward more than once (a default implementation under test is also a baseline).
        ``model``'s weights are brought to the device first (sequential loading)."""
        if self.timings is not None:
            compute = self._timed(key, compute)
        compute = self._on_device(model, compute)
        if self._outputs is None:
            return compute()
        if key not in self._outputs:
            self._outputs[key] = compute()
        return self._outputs[key]

    def _on_device(self, model, compute: Callable[[], list[dict]]) -> Callable[[], list[dict]]:
        def run():
            moved = self.pair.ready(model)
            if moved and self.timings is not None:
                self.timings["loading"] += moved
            return compute()

        return run

    def _timed(self, key: tuple, compute: Callable[[], list[dict]]) -> Callable[[], list[dict]]:
        """Seconds per kind of forward (``timings``, for benchmarks/throughput.py): waits for
        the device after each, so it costs the overlap of one forward with the next."""
        impl = key[1]
        kind = ("oracle" if impl is oracle_forward else
                "under test" if impl in (self._packed, self._padded) else "baselines")

        def timed():
            start = time.perf_counter()
            try:
                return compute()
            finally:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.timings[kind] += time.perf_counter() - start

        return timed

    def _run_packed(self, impl, model, sequences: Sequence[str], layers) -> list[dict]:
        kwargs = {"timeout": self._timeout(impl, self._packed)}
        if isinstance(impl, PackedForward):
            kwargs["backend"] = self._backend_for(model.embed_tokens.weight.dtype)
        return self._memo(
            ("packed", impl, id(model), tuple(sequences), tuple(sorted(layers))), model,
            lambda: run_packed(impl, model, self.pair.alphabet, sequences, layers, **kwargs),
        )

    def _run_padded(self, impl, model, sequences: Sequence[str], layers, *, bucketed: bool):
        return self._memo(
            ("padded", impl, id(model), tuple(sequences), tuple(sorted(layers)), bucketed),
            model,
            lambda: run_padded(impl, model, self.pair.alphabet, sequences, layers,
                               bucketed=bucketed, timeout=self._timeout(impl, self._padded)),
        )

    def _timeout(self, impl, under_test) -> float | None:
        """The time limit applies to the implementations under test, not esmfuzz's own."""
        return self.config.timeout or None if impl is under_test else None

    def packed(self, model, sequences: Sequence[str], layers) -> list[dict]:
        return self._run_packed(self._packed, model, sequences, layers)

    def padded(
        self, model, sequences: Sequence[str], layers, *, trusted: bool = False, whole=False
    ):
        """Length-bucketed batches, or one batch of all (``whole``) where padding is the point."""
        impl = padded_forward if trusted else self._padded
        return self._run_padded(impl, model, sequences, layers, bucketed=not whole)

    def oracle(self, sequences: Sequence[str], layers) -> list[dict]:
        """The FP64 oracle (FP32 where a float64 copy does not fit), length-bucketed."""
        return self._run_padded(oracle_forward, self.pair.oracle, sequences, layers,
                                bucketed=True)

    def baseline(self, model, sequences: Sequence[str], layers) -> list[dict]:
        """fair-esm's own padded forward, length-bucketed."""
        return self.padded(model, sequences, layers, trusted=True)

    def baselines(self, model, sequences: Sequence[str], layers) -> list[list[dict]]:
        """Two trusted computations in ``model``'s dtype that round differently: fair-esm's
        padded forward, and esmfuzz's packed reference (FP32 rotary, varlen attention)."""
        return [self.baseline(model, sequences, layers),
                self.reference_packed(model, sequences, layers)]

    def reference_packed(self, model, sequences: Sequence[str], layers) -> list[dict]:
        """esmfuzz's packed reference (FP32 rotary, varlen attention), a trusted baseline."""
        return self._run_packed(packed_forward, model, sequences, layers)

    def path_models(self, kind: str) -> list:
        """The models whose dtype paths the implementation ``kind`` is checked on.

        The candidate always; the FP32 reference too unless ``paths = "candidate"``, the
        implementation refused it, or the oracle itself is the FP32 reference.
        """
        pair = self.pair
        models = [pair.candidate]
        if (
            self.config.paths != "candidate"
            and kind not in self.refused
            and pair.reference is not pair.candidate
            and pair.oracle is not pair.reference
        ):
            models.append(pair.reference)
        return models

    def tested(self, kind: str, model, run: Callable[[], list[dict]]) -> list[dict] | None:
        """``run()``, or None where the implementation refuses FP32 with a TypeError (auto)."""
        try:
            return run()
        except ImplementationFailure as failure:
            cause = failure.__cause__
            if (
                not isinstance(cause, TypeError)
                or model is not self.pair.reference
                or self.config.paths != "auto"
            ):
                raise
            self.refused[kind] = f"{type(cause).__name__}: {cause}"
            return None

    def refusal_notes(self) -> list[str]:
        return [
            f"the {kind} implementation refused float32 ({why}); only its "
            f"{str(self.pair.dtype)[6:]} path is checked (paths = auto)"
            for kind, why in self.refused.items()
        ]

    def check(
        self,
        prop: str,
        sample: Sample | Sequence[str],
        extra: Mapping | None = None,
        *,
        layers: Sequence[int] | None = None,
        explain: bool = True,
        reuse: dict | None = None,
    ) -> P.Verdict:
        """Run property ``prop`` on one sample; a failure is re-run on every layer to explain
        it, unless ``explain`` is False (while Hypothesis shrinks, only pass/fail matters).

        ``reuse``, a dict the caller keeps, holds the forward outputs across checks of the
        same sample: checking one sample against several implementations (the
        false-positive benchmark) then runs the oracle and the baselines once.
        """
        entry = registry.get(prop)
        if not isinstance(sample, Sample):
            sample = Sample.from_extra(sample, extra)
        try:
            self._outputs = {} if reuse is None else reuse
            try:
                verdict = entry.run(self, sample, list(layers or self.layers))
            except ImplementationFailure as failure:
                return P.Verdict.failed(prop, failure.metric, str(failure), failure.details)
            if not verdict.ok and explain and layers is None and self.layers != self.all_layers:
                self._outputs = {}  # the re-run calls the implementation afresh
                explained = entry.run(self, sample, self.all_layers)
                if explained.ok:
                    verdict.notes.append("the failure did not reproduce when re-run on every "
                                         "layer: the implementation under test is not "
                                         "deterministic")
                    return verdict
                verdict = explained
        finally:
            self._outputs = None
        verdict.notes.extend(self.refusal_notes())
        return verdict

    def with_logits(self, model, outputs: list[dict]) -> list[dict]:
        last = model.num_layers
        self.pair.ready(model)
        with torch.inference_mode():
            return [{**out, "logits": model.lm_head(out[last])} for out in outputs]

    def _chosen(self) -> dict[str, tuple[str, str]]:
        """Per kind, (the implementation's name, esmfuzz's default)."""
        return {"packed": (_name(self.config.packed_impl), DEFAULT_PACKED),
                "padded": (_name(self.config.padded_impl), DEFAULT_PADDED)}

    def under_test_kinds(self) -> set[str]:
        """``packed``/``padded``: the implementations that are not esmfuzz's defaults."""
        return {kind for kind, (impl, default) in self._chosen().items() if impl != default}

    def under_test(self, prop: str) -> list[str]:
        """The implementations under test (not esmfuzz's defaults) that ``prop`` calls."""
        chosen = self._chosen()
        return [f"{kind} {chosen[kind][0]}" for kind in registry.get(prop).calls
                if chosen[kind][0] != chosen[kind][1]]

    def case(
        self,
        prop: str,
        sample: Sample,
        verdict: P.Verdict,
        *,
        status: str = "open",
    ) -> Case:
        """The corpus record of a (shrunk) failing example."""
        return Case(
            property=prop,
            sequences=tuple(sample.sequences),
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
            extra=sample.extra,
            status=status,
            environment=environment(self.device),
            message=verdict.message(),
        )


def _name(impl) -> str:
    return impl if isinstance(impl, str) else implementation_name(impl)


@functools.cache
def harness_for(config: Config) -> Harness:
    """One harness per configuration and process (the model pair is cached below it too)."""
    return Harness(config)


def config_for_case(case: Case, *, device: str = "auto", base: Config | None = None) -> Config:
    """The configuration that reproduces a corpus case on this machine."""
    base = base or Config()
    known = {f.name for f in dataclasses.fields(P.Thresholds)}
    thresholds = {
        k: v for k, v in case.thresholds.items() if k in known and not math.isnan(v)
    }
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
