"""Runs the forward paths a property needs, then hands the outputs to its oracle.

One :class:`Harness` per configuration and process; the pytest plugin, corpus
replay and the soak runner all check properties through :meth:`Harness.check`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import math
import os
import time
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from esmfuzz import properties as P
from esmfuzz import registry
from esmfuzz.attention import backend_status, select_backend
from esmfuzz.config import (
    BACKENDS,
    DEFAULT_PACKED,
    DEFAULT_PADDED,
    Config,
    ConfigError,
    dtype_name,
    resolve_device,
)
from esmfuzz.corpus import Case, environment
from esmfuzz.errors import HarnessError
from esmfuzz.forward import (
    ImplementationFailure,
    PackedForward,
    implementation_name,
    is_out_of_memory,
    load_implementation,
    oracle_forward,
    outputs_of,
    packed_forward,
    padded_forward,
    run_packed,
    run_padded,
)
from esmfuzz.launches import LaunchCounter
from esmfuzz.models import ModelPair, model_pair
from esmfuzz.properties import LOGITS, Sample, layer_order

__all__ = ["KEPT_BYTES", "Harness", "KeptOutputs", "Repeat", "check_runnable", "config_for_case",
           "harness_error", "harness_for"]


def harness_error(role: str, exc: BaseException) -> HarnessError:
    """``role`` (``esmfuzz's float64 oracle``) failed with ``exc``: esmfuzz's error, with the
    advice that fits it (out of memory: smaller packs or a memory budget)."""
    memory = is_out_of_memory(exc) or getattr(exc, "metric", "") == "out_of_memory"
    cause = exc.__cause__ if isinstance(exc, ImplementationFailure) and exc.__cause__ else exc
    reason = f"{role} {'ran out of memory' if memory else f'raised {type(cause).__name__}'}"
    advice = (
        "lower --esm-crowd-tokens or --esm-pack-tokens, or set --esm-device-memory to "
        "what this process may use" if memory else
        "this is esmfuzz's error, not the code under test's: please report it with the "
        "traceback"
    )
    details = getattr(exc, "details", None) or traceback.format_exception(exc)
    return HarnessError(reason, str(exc), advice=advice, details=details)


KEPT_BYTES = 512 * 2**20
"""What :class:`KeptOutputs` may hold per harness. Not in esmfuzz's memory estimate: it lives
in the tenth of the GPU that ``--workers auto`` leaves free (1.3-1.8 GiB per worker on an
H100 or H200 at 650M), and a check that runs out of memory drops it before its retry."""


class KeptOutputs:
    """The outputs of esmfuzz's trusted forwards (the oracle, fair-esm's padded baseline, the
    packed reference), kept across checks by the exact batch they computed.

    Hypothesis draws the same batches again and again (a mutated layout keeps most of its
    sequences, and a fifth to a third of a soak's padded tokens are batches it has drawn
    before), and a forward of the same batch gives the same bits, so the second one is a
    lookup. The implementations under test are never kept: they are called every time. The
    least recently used batch goes first past ``limit`` bytes.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.bytes = 0
        self.hits = 0
        self._entries: OrderedDict[tuple, tuple[list[dict], int]] = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], list[dict]]) -> list[dict]:
        """The rows kept under ``key``, else ``compute()``'s, kept where they fit."""
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found[0]
        rows = compute()
        size = _bytes(rows)
        if size <= self.limit:
            self._entries[key] = (rows, size)
            self.bytes += size
            while self.bytes > self.limit:
                _, (_, freed) = self._entries.popitem(last=False)
                self.bytes -= freed
        return rows

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


def _bytes(rows: list[dict]) -> int:
    """Bytes of the storages ``rows``' tensors view, each counted once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for row in rows for t in row.values()}
    return sum(storages.values())


@dataclass
class Repeat:
    """One sample checked several times, the implementations under test called afresh each
    time (:meth:`Harness.repeat`)."""

    verdicts: list[P.Verdict]
    """The property's verdict on each call."""
    spread: P.Verdict | None
    """How far the outputs of identical calls lie apart, against the property's noise
    bound; None where every call gave identical outputs."""

    def reproduced(self, signature: Callable[[P.Verdict], str], sig: str) -> bool:
        """Every call failed with signature ``sig``."""
        return all(not v.ok and signature(v) == sig for v in self.verdicts)


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
        mode = os.environ.get("ESMFUZZ_TIMINGS", "")
        self.timings: Counter | None = Counter() if mode else None
        """Seconds per kind of forward, where ``$ESMFUZZ_TIMINGS`` is set (:meth:`_timed`);
        with ``launches``, also the operations each ran (:mod:`esmfuzz.launches`)."""
        self._launches = LaunchCounter(self.timings) if mode == "launches" else None
        self._outputs: dict | None = None
        """Forward outputs of the :meth:`check` in progress, by call (see :meth:`_memo`)."""
        self.kept = KeptOutputs(KEPT_BYTES)
        """The trusted forwards' outputs across checks, by batch."""
        self.refused: dict[str, str] = {}
        """Implementations (``packed``/``padded``) that refused the FP32 reference with a
        TypeError: from then on only their candidate-dtype path is checked (``paths=auto``)."""
        self.defer_baselines = True
        """Whether noise bounds leave out the baselines a pass does not need (their ratios
        are then upper bounds); a benchmark that records the exact ratios turns it off."""
        self.oracle_impl: Callable = oracle_forward
        """The oracle's forward: a seam for tests that make esmfuzz's own forwards fail."""
        kinds = self.under_test_kinds()
        self._mine = {impl for kind, impl in (("packed", self._packed), ("padded", self._padded))
                      if kind in kinds}
        """The implementations under test: every other forward is esmfuzz's own."""

    @property
    def device(self) -> torch.device:
        return self.pair.device

    def _backend_for(self, dtype: torch.dtype) -> str:
        if backend_status(self.device, dtype)[self.backend] is None:
            return self.backend
        return select_backend("auto", self.device, dtype)

    def _memo(self, key: tuple, model, compute: Callable[[], list[dict]], *,
              trusted: bool = False) -> list[dict]:
        """``compute()`` once per key within one :meth:`check`: properties ask for the same
        forward more than once (a default implementation under test is also a baseline).
        ``model``'s weights are brought to the device first (sequential loading).

        A ``trusted`` call (a baseline, the reference, the oracle) takes the output of the
        same call made as the implementation under test in this check; its own output, which
        may come from :class:`KeptOutputs`, is never handed to an implementation-under-test
        call, which always computes.
        """
        if self.timings is not None:
            compute = self._timed(key, compute, model)
        compute = self._on_device(model, compute)
        if self._outputs is None:
            return compute()
        if key in self._outputs:
            return self._outputs[key]
        slot = ("trusted", key) if trusted else key
        if slot not in self._outputs:
            self._outputs[slot] = compute()
        return self._outputs[slot]

    def _keeper(self, key: tuple) -> Callable[[tuple[str, ...], Callable], list[dict]]:
        """``kept(batch, compute)`` for a trusted forward: its rows from :attr:`kept`, under
        ``key`` and the batch's sequences."""
        def kept(batch: tuple[str, ...], compute: Callable[[], list[dict]]) -> list[dict]:
            hits = self.kept.hits
            rows = self.kept.get((*key, batch), compute)
            if self.timings is not None:
                self.timings["kept batches" if self.kept.hits > hits else "computed batches"] += 1
            return rows

        return kept

    def _on_device(self, model, compute: Callable[[], list[dict]]) -> Callable[[], list[dict]]:
        def run():
            moved = self.pair.ready(model)
            if moved and self.timings is not None:
                self.timings["loading"] += moved
            return compute()

        return run

    def _timed(self, key: tuple, compute: Callable[[], list[dict]],
               model) -> Callable[[], list[dict]]:
        """Seconds per kind of forward, and per dtype (``in float32``) across kinds
        (``timings``, for benchmarks/throughput.py): waits for the device after each, so it
        costs the overlap of one forward with the next."""
        impl = key[1]
        kind = ("oracle" if impl is self.oracle_impl else
                "under test" if impl in self._mine else "baselines")
        dtype = f"in {dtype_name(model.embed_tokens.weight.dtype)}"

        def timed():
            start = time.perf_counter()
            try:
                if self._launches is None:
                    return compute()
                with self._launches.phase(kind):
                    return compute()
            finally:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                spent = time.perf_counter() - start
                self.timings[kind] += spent
                self.timings[dtype] += spent

        return timed

    def _run_packed(self, impl, model, sequences: Sequence[str], layers, *,
                    role: str = "esmfuzz's packed reference", trusted: bool = False) -> list[dict]:
        kwargs = {"timeout": self._timeout(impl), "check_inputs": impl in self._mine}
        if isinstance(impl, PackedForward):
            kwargs["backend"] = self._backend_for(model.embed_tokens.weight.dtype)
        order = tuple(sorted(layers, key=layer_order))

        def compute():
            return run_packed(impl, model, self.pair.alphabet, sequences, layers, **kwargs)

        if trusted:
            compute = functools.partial(self._keeper(("packed", impl, id(model), order)),
                                        tuple(sequences), compute)
        return self._memo(_packed_key(impl, model, sequences, layers), model,
                          self._owned(impl, role, compute), trusted=trusted)

    def _run_padded(self, impl, model, sequences: Sequence[str], layers, *, bucketed: bool,
                    role: str = "fair-esm's padded forward", trusted: bool = False):
        order = tuple(sorted(layers, key=layer_order))
        kept = self._keeper(("padded", impl, id(model), order)) if trusted else None
        return self._memo(
            _padded_key(impl, model, sequences, layers, bucketed),
            model,
            self._owned(impl, role, lambda: run_padded(
                impl, model, self.pair.alphabet, sequences, layers, bucketed=bucketed,
                timeout=self._timeout(impl), check_inputs=impl in self._mine, kept=kept)),
            trusted=trusted,
        )

    def _owned(self, impl, role: str, compute: Callable[[], list[dict]]):
        """``compute`` of an implementation under test as it is; of esmfuzz's own forward
        (``role``), with its failures made :class:`HarnessError`."""
        if impl in self._mine:
            return compute

        def run():
            try:
                return compute()
            except ImplementationFailure as failure:
                raise harness_error(role, failure) from failure

        return run

    def _timeout(self, impl) -> float | None:
        """The time limit applies to the implementations under test, not esmfuzz's own."""
        return self.config.timeout or None if impl in self._mine else None

    def packed(self, model, sequences: Sequence[str], layers) -> list[dict]:
        return self._run_packed(self._packed, model, sequences, layers)

    def padded(
        self, model, sequences: Sequence[str], layers, *, trusted: bool = False, whole=False
    ):
        """Length-bucketed batches, or one batch of all (``whole``) where padding is the point."""
        impl = padded_forward if trusted else self._padded
        return self._run_padded(impl, model, sequences, layers, bucketed=not whole,
                                trusted=trusted)

    def oracle(self, sequences: Sequence[str], layers) -> list[dict]:
        """The FP64 oracle (FP32 where a float64 copy does not fit), length-bucketed."""
        dtype = dtype_name(self.pair.oracle.embed_tokens.weight.dtype)
        return self._run_padded(self.oracle_impl, self.pair.oracle, sequences, layers,
                                bucketed=True, role=f"esmfuzz's {dtype} oracle", trusted=True)

    def baseline(self, model, sequences: Sequence[str], layers) -> list[dict]:
        """fair-esm's own padded forward, length-bucketed."""
        return self.padded(model, sequences, layers, trusted=True)

    def baselines(self, model, sequences: Sequence[str], layers, *,
                  defer: bool = False) -> list:
        """Two trusted computations in ``model``'s dtype that round differently: fair-esm's
        padded forward, and esmfuzz's packed reference (FP32 rotary, varlen attention).

        With ``defer``, fair-esm's forward is a callable unless this check holds it already:
        a noise bound calls it only where it fails without it (``properties.error_ratio``).
        """
        padded = functools.partial(self.baseline, model, sequences, layers)
        deferred = defer and not self._holds(
            _padded_key(padded_forward, model, sequences, layers, True))
        return [padded if deferred else padded(),
                self.reference_packed(model, sequences, layers)]

    def reference_packed(self, model, sequences: Sequence[str], layers, *,
                         defer: bool = False) -> list[dict] | Callable[[], list[dict]]:
        """esmfuzz's packed reference (FP32 rotary, varlen attention), a trusted baseline;
        with ``defer``, a callable unless this check holds it already."""
        run = functools.partial(self._run_packed, packed_forward, model, sequences, layers,
                                trusted=True)
        deferred = defer and not self._holds(
            _packed_key(packed_forward, model, sequences, layers))
        return run if deferred else run()

    def _holds(self, key: tuple) -> bool:
        """Whether the check in progress has computed the forward of memo ``key``, as the
        implementation under test or as a trusted one."""
        return self._outputs is not None and (key in self._outputs
                                              or ("trusted", key) in self._outputs)

    @functools.cached_property
    def compare(self) -> str:
        """``dtype`` or ``quantized`` (``--esm-compare``; ``auto``: quantized where an
        implementation under test declares an integer ``esmfuzz_precision``)."""
        if self.config.compare != "auto":
            return self.config.compare
        return "quantized" if self._integer() else "dtype"

    def _impl(self, kind: str):
        return self._packed if kind == "packed" else self._padded

    def precision(self, kind: str) -> str:
        """What the ``packed``/``padded`` implementation computes in: its
        ``esmfuzz_precision`` (an engine with its own: ``float32``, ``int8``), else the
        candidate dtype."""
        return str(getattr(self._impl(kind), "esmfuzz_precision", dtype_name(self.pair.dtype)))

    def judges(self, prop: str) -> str | None:
        """None where ``prop`` judges in this run's compare mode, else why its targets skip."""
        modes = registry.get(prop).modes
        if self.compare in modes:
            return None
        return (f"{prop} judges in --esm-compare {' or '.join(modes)}; this run compares "
                f"{self.compare}" + (" (an implementation under test declares "
                                     f"esmfuzz_precision {self._integer()})"
                                     if self.compare == "quantized"
                                     and self.config.compare == "auto" else ""))

    def _integer(self) -> str:
        """The non-float precisions the implementations under test declare, as text."""
        return ", ".join(sorted({self.precision(k) for k in self.under_test_kinds()}
                                - set(_FLOATS)))

    def path_models(self, kind: str) -> list:
        """The models whose dtype paths the implementation ``kind`` is checked on.

        Comparing quantized, or for an engine that declares a float precision of its own
        (``esmfuzz_precision``), the FP32 reference only. Else the candidate always; the
        FP32 reference too unless ``paths = "candidate"``, the implementation refused it,
        or the oracle itself is the FP32 reference.
        """
        pair = self.pair
        if self.compare == "quantized" or hasattr(self._impl(kind), "esmfuzz_precision"):
            return [pair.reference]
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
            f"{dtype_name(self.pair.dtype)} path is checked (paths = auto)"
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

        An implementation under test that runs out of memory, and any failure of esmfuzz's
        own forwards or checks, is retried once after freeing cached memory. Out of memory
        again, the implementation's verdict is ``out_of_memory``; esmfuzz's own failure
        raises :class:`HarnessError`: the caller skips the example, never blames the code
        under test.
        """
        entry = registry.get(prop)
        if not isinstance(sample, Sample):
            sample = Sample.from_extra(sample, extra)
        entry.validate(sample)
        with self._launches or contextlib.nullcontext():
            return self._check(entry, prop, sample, layers, explain, reuse)

    def _check(self, entry, prop, sample: Sample, layers, explain: bool, reuse) -> P.Verdict:
        for attempt in (1, 2):
            try:
                verdict = self._check_once(entry, sample, layers, explain, reuse)
                break
            except (HarnessError, ImplementationFailure) as failure:
                if attempt == 1:
                    self.free_memory()
                    continue
                if isinstance(failure, HarnessError):
                    raise
                verdict = P.Verdict.failed(prop, failure.metric, str(failure), failure.details,
                                           tokens=failure.tokens)
                verdict.notes.insert(0, "ran out of memory again when retried once, after "
                                        "esmfuzz freed its cached memory")
        verdict.notes.extend(self.refusal_notes() + self.output_notes())
        return verdict

    def _check_once(self, entry, sample: Sample, layers, explain: bool, reuse) -> P.Verdict:
        """One try of :meth:`check`. Raises what is worth a retry: a HarnessError, or an
        implementation under test that ran out of memory; any other exception of esmfuzz's
        own code becomes a HarnessError."""
        try:
            self._outputs = {} if reuse is None else reuse
            try:
                verdict = entry.run(self, sample, self.checked_layers(entry.calls,
                                                                      layers or self.layers))
            except ImplementationFailure as failure:
                if failure.metric == "out_of_memory":
                    raise
                return P.Verdict.failed(entry.name, failure.metric, str(failure),
                                        failure.details)
            except HarnessError:
                raise
            except Exception as exc:
                raise harness_error("esmfuzz's checks", exc) from exc
            every = self.checked_layers(entry.calls, self.all_layers)
            if (not verdict.ok and explain and layers is None
                    and self.checked_layers(entry.calls, self.layers) != every):
                self._outputs = {}  # the re-run calls the implementation afresh
                try:
                    explained = entry.run(self, sample, every)
                except HarnessError as failure:
                    verdict.notes.append(f"not explained on every layer: {failure}")
                    return verdict
                if explained.ok:
                    verdict.notes.append("the failure did not reproduce when re-run on every "
                                         "layer: the implementation under test is not "
                                         "deterministic")
                    return verdict
                verdict = explained
            return verdict
        finally:
            self._outputs = None

    def free_memory(self) -> None:
        """Drop this check's outputs and the kept ones, and return cached device memory:
        before a retry."""
        self._outputs = None
        self.kept.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def repeat(self, prop: str, sample: Sample, *, calls: int = 3) -> Repeat:
        """``prop`` checked ``calls`` times on ``sample``, the implementations under test called
        afresh each time and esmfuzz's own forwards once; with the spread of the outputs of
        those identical calls against the property's noise bound (``Property.noise``)."""
        entry = registry.get(prop)
        shared: dict = {}
        verdicts, runs = [], []
        for _ in range(calls):
            verdicts.append(self.check(prop, sample, explain=False, reuse=shared))
            runs.append({key: shared.pop(key) for key in list(shared) if key[1] in self._mine})
        keys = [key for key in runs[0] if all(key in run for run in runs[1:])]
        if all(_identical(runs[0][key], run[key]) for run in runs[1:] for key in keys):
            return Repeat(verdicts, None)
        models = {id(m): m for m in (self.pair.candidate, self.pair.reference, self.pair.oracle)}
        paths = []
        try:
            self._outputs = shared
            for key in keys:
                kind, _, model, sequences, layers = key[0], key[1], models[key[2]], key[3], key[4]
                dtype = model.embed_tokens.weight.dtype
                paths.append((f"{kind} {dtype_name(dtype)}", [run[key] for run in runs],
                              self.baselines(model, sequences, layers),
                              self.oracle(sequences, layers), dtype))
            spread = P.spread(paths, self.thresholds, name=prop,
                              k=getattr(self.thresholds, entry.noise))
        except HarnessError:
            raise
        except Exception as exc:
            raise harness_error("esmfuzz's checks", exc) from exc
        finally:
            self._outputs = None
        return Repeat(verdicts, spread)

    def check_case(self, case: Case, *, layers: Sequence[int] | None = None) -> P.Verdict:
        """A corpus case checked as it was found: a spread between identical calls
        (``nondeterministic``) is measured again as one, anything else by :meth:`check`."""
        if P.NONDETERMINISTIC not in case.metrics:
            return self.check(case.property, case.sequences, case.extra, layers=layers)
        repeat = self.repeat(case.property, Sample.from_extra(case.sequences, case.extra))
        if repeat.spread is not None:
            return repeat.spread
        k = getattr(self.thresholds, registry.get(case.property).noise)
        return P.Verdict(case.property, ok=True, metric=P.NONDETERMINISTIC, value=0.0,
                         threshold=k, margin=1.0,
                         notes=[f"{len(repeat.verdicts)} identical calls gave identical outputs"])

    def returns(self, kind: str) -> str:
        """What the ``packed``/``padded`` implementation returns (:data:`OUTPUTS`)."""
        return outputs_of(self._impl(kind))

    def checked_layers(self, calls: Sequence[str], layers: Sequence) -> list:
        """Of ``layers``, those every implementation in ``calls`` can be judged on.

        An implementation that returns the final layer only is judged there and on its
        logits (esmfuzz applies the model's head), one that returns logits only on them;
        where none of ``layers`` is left, on the closest output it has.
        """
        last = self.pair.num_layers
        kinds = {self.returns(kind) for kind in calls}
        if "logits" in kinds:
            return [LOGITS]
        if "last" in kinds:
            kept = [layer for layer in layers if layer in (last, LOGITS)]
            return kept or [last]
        return sorted(set(layers), key=layer_order)

    def output_notes(self) -> list[str]:
        """What the implementations under test that do not return every layer, or compute in
        a precision of their own, are judged on."""
        what = {"last": "the final layer only: its targets check that layer and the logits",
                "logits": "logits only: its targets check the logits, no hidden layer"}
        notes = []
        for kind, impl in (("packed", self._packed), ("padded", self._padded)):
            if outputs_of(impl) != "layers":
                notes.append(f"the {kind} implementation {_name(impl)} returns "
                             f"{what[outputs_of(impl)]}")
            if hasattr(impl, "esmfuzz_precision"):
                notes.append(f"the {kind} implementation {_name(impl)} computes in "
                             f"{self.precision(kind)} whatever the model's dtype: it runs on "
                             f"the float32 model only")
        if self.compare == "quantized":
            notes.append("compared as a quantized engine (--esm-compare quantized): against "
                         "float32, in user units; the targets judged against same-dtype noise "
                         "skip")
        return notes

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
            model=self.pair.spec.weights,
            dtype=dtype_name(self.pair.dtype),
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


_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _packed_key(impl, model, sequences: Sequence[str], layers) -> tuple:
    """:meth:`Harness._memo`'s key of a packed forward."""
    return ("packed", impl, id(model), tuple(sequences),
            tuple(sorted(layers, key=layer_order)))


def _padded_key(impl, model, sequences: Sequence[str], layers, bucketed: bool) -> tuple:
    """:meth:`Harness._memo`'s key of a padded forward."""
    return ("padded", impl, id(model), tuple(sequences),
            tuple(sorted(layers, key=layer_order)), bucketed)


def _identical(first: list[dict], second: list[dict]) -> bool:
    """Bit for bit, NaN where NaN."""
    return all(
        torch.equal(a[layer].isnan(), b[layer].isnan())
        and torch.equal(a[layer].nan_to_num(0.0), b[layer].nan_to_num(0.0))
        for a, b in zip(first, second, strict=True) for layer in a
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


def check_runnable(config: Config, report: str | None = None) -> None:
    """What would otherwise fail only once the model loads, in every test: one
    :class:`ConfigError` before anything runs (device, backend, model spec, checkpoint,
    memory, report path)."""
    from esmfuzz.models import parse_spec, plan_memory

    try:
        device = resolve_device(config.device)
    except RuntimeError as exc:
        raise ConfigError(f"--esm-device: {exc}") from None
    try:
        select_backend(config.backend, device, config.dtype)
        plan_memory(parse_spec(config.model), device=device, dtype=config.dtype,
                    oracle_dtype=config.oracle_dtype, loading=config.loading,
                    device_memory=config.device_memory)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    if report:
        folder = Path(report).resolve().parent
        problem = (
            "does not exist" if not folder.is_dir()
            else "is not writable" if not os.access(folder, os.W_OK)
            else None
        )
        if problem:
            raise ConfigError(f"--esm-report {report!r}: folder {str(folder)!r} {problem}")
