"""The harness: dtype paths, refusals of FP32, and what each property calls."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from esmfuzz.config import Config
from esmfuzz.harness import Harness
from esmfuzz.properties import Sample
from esmfuzz.registry import PROPERTIES

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

SPEC = "synthetic:esm2_t6_8M_UR50D"
HALF_ONLY = "tests.impls.packed:half_only_packed"
LAYOUT = ["MKTAYIAK<mask>QR", "GLVW", "XBZUO"]


def harness(esmfuzz_cache, **options) -> Harness:
    return Harness(Config(model=SPEC, device="cpu", dtype="float16", **options))


def labels(verdict) -> set[str]:
    return {key.split("[")[1].rstrip("]") for key in verdict.metrics if "[" in key}


def test_both_paths_are_checked_by_default(esmfuzz_cache):
    verdict = harness(esmfuzz_cache, packed_impl="tests.impls.packed:tiled_packed").check(
        "error_ratio", LAYOUT)
    assert verdict.ok, verdict.message()
    assert labels(verdict) == {"packed float16", "packed float32"}


def test_auto_drops_fp32_for_an_implementation_that_refuses_it(esmfuzz_cache):
    h = harness(esmfuzz_cache, packed_impl=HALF_ONLY)
    verdict = h.check("error_ratio", LAYOUT)
    assert verdict.ok, verdict.message()
    assert labels(verdict) == {"packed float16"}
    assert any("refused float32" in note and "TypeError" in note for note in verdict.notes)
    assert "packed" in h.refused
    context = h.check("isolation", Sample(LAYOUT, 1, [LAYOUT[1], "L"], 0))
    assert context.ok and labels(context) == {"packed float16"}


def test_candidate_paths_never_call_fp32(esmfuzz_cache):
    h = harness(esmfuzz_cache, packed_impl=HALF_ONLY, paths="candidate")
    verdict = h.check("error_ratio", LAYOUT)
    assert verdict.ok and labels(verdict) == {"packed float16"}
    assert h.refused == {}


def test_both_paths_turn_a_refusal_into_a_finding(esmfuzz_cache):
    verdict = harness(esmfuzz_cache, packed_impl=HALF_ONLY, paths="both").check(
        "error_ratio", LAYOUT
    )
    assert not verdict.ok and verdict.metric == "exception"
    assert "raised TypeError" in verdict.violations[0]
    assert "half_only_packed takes float16" in verdict.message()
    assert "traceback:" in verdict.message()


def test_under_test_names_only_non_default_implementations(esmfuzz_cache):
    h = harness(esmfuzz_cache, packed_impl=HALF_ONLY)
    assert h.under_test("error_ratio") == [f"packed {HALF_ONLY}"]
    assert h.under_test("precision") == []
    assert h.under_test("padding_invariance") == []


def test_every_property_has_an_oracle_a_runner_and_samples():
    for name, entry in PROPERTIES.items():
        assert entry.name == name and callable(entry.run) and callable(entry.samples)
        assert set(entry.calls) <= {"packed", "padded"}
    assert "positions" not in PROPERTIES


def test_one_check_runs_each_forward_once(esmfuzz_cache, monkeypatch):
    """With the default packed forward under test, it is also the second baseline: one run."""
    forwards = _counting_forwards(monkeypatch)
    verdict = harness(esmfuzz_cache).check("error_ratio", LAYOUT)
    calls = [name for name, _ in forwards]
    assert verdict.ok, verdict.message()
    assert calls.count("run_packed") == 2  # float16 and float32
    # The oracle; fair-esm's padded baselines are deferred, and the packed reference, the
    # implementation under test itself, bounds its own error within k / sqrt(2).
    assert calls.count("run_padded") == 1
    assert any(note.startswith("oracle in float64") for note in verdict.notes)
    assert any(note.startswith("passed without fair-esm's padded baseline")
               for note in verdict.notes)


def _eager_baselines(monkeypatch) -> None:
    """Every baseline computed up front, as before they could be deferred."""
    baselines, reference = Harness.baselines, Harness.reference_packed
    monkeypatch.setattr(Harness, "baselines",
                        lambda self, *args, defer=False: baselines(self, *args))
    monkeypatch.setattr(Harness, "reference_packed",
                        lambda self, *args, defer=False: reference(self, *args))


@pytest.mark.parametrize("prop,impl,padded", [
    ("error_ratio", "tiled_packed", 0),
    ("error_ratio", "leaky_packed", 2),
    ("isolation", "tiled_packed", None),
    ("isolation", "leaky_packed", None),
])
def test_deferred_baselines_give_the_eager_verdict(esmfuzz_cache, monkeypatch, prop, impl,
                                                   padded):
    """A correct implementation passes without fair-esm's padded baselines; a leaky one
    computes them and fails with every value an eager harness gives."""
    def h():
        return harness(esmfuzz_cache, packed_impl=f"tests.impls.packed:{impl}")

    sample = (Sample(("MKTAYIAKQR", "GLVWEE", "ACDEFGHIK"), target=1,
                     variant=("GLVWEE", "MKTAYIAKQRMKTAYIAKQR"), variant_target=0)
              if prop == "isolation" else Sample(tuple(LAYOUT)))
    calls = _counting_forwards(monkeypatch)
    lazy = h().check(prop, sample, explain=False)
    deferred_calls = list(calls)
    _eager_baselines(monkeypatch)
    calls.clear()
    eager = h().check(prop, sample, explain=False)  # a harness of its own keeps nothing
    assert lazy.ok is eager.ok is (impl == "tiled_packed"), lazy.message()
    assert lazy.metrics.keys() == eager.metrics.keys()
    if lazy.ok:
        assert len(deferred_calls) < len(calls)
        assert lazy.value >= eager.value  # an upper bound of the ratio
        assert ({k: v for k, v in lazy.metrics.items() if "error[" in k}
                == {k: v for k, v in eager.metrics.items() if "error[" in k})
    else:
        assert sorted(deferred_calls) == sorted(calls)
        assert (lazy.metrics, lazy.violations, lazy.worst, lazy.value) == (
            eager.metrics, eager.violations, eager.worst, eager.value)
    if padded is not None:
        fair = [c for c in deferred_calls if c[0] == "run_padded"]
        assert len(fair) == 1 + padded  # the oracle, and fair-esm where the bound needs it


def _counting_forwards(monkeypatch) -> list[tuple[str, str]]:
    """(``run_packed``/``run_padded``, dtype) of every forward the harness runs."""
    import esmfuzz.harness as module

    calls = []
    for name in ("run_packed", "run_padded"):
        original = getattr(module, name)

        def counted(impl, model, *args, _f=original, _n=name, **kwargs):
            calls.append((_n, str(model.embed_tokens.weight.dtype)[6:]))
            return _f(impl, model, *args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


def _nan_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """The default packed forward with one NaN in its first output row."""
    from esmfuzz.forward import packed_forward

    out = packed_forward(model, tokens, cu_seqlens, max_seqlen, repr_layers)
    for layer in out:
        out[layer] = out[layer].clone()
        out[layer][0, 0] = float("nan")
    return out


def test_finite_runs_the_reference_only_for_a_candidate_that_is_not_finite(
    esmfuzz_cache, monkeypatch
):
    calls = _counting_forwards(monkeypatch)
    assert harness(esmfuzz_cache).check("finite", LAYOUT).ok
    assert calls == [("run_packed", "float16"), ("run_padded", "float16")]
    calls.clear()
    verdict = harness(esmfuzz_cache, packed_impl="tests.test_harness:_nan_packed").check(
        "finite", LAYOUT, explain=False)
    assert not verdict.ok and verdict.metric == "non_finite"
    assert verdict.worst["sequence"] == 0 and verdict.worst["token"] == 0
    assert ("run_padded", "float32") in calls


def test_precision_bounds_come_from_fair_esms_own_candidate_dtype_forward(
    esmfuzz_cache, monkeypatch
):
    """fair-esm's padded forward in float16, whose own cosine can widen the bound, runs only
    where a cosine falls below its fixed threshold; precision's padded candidate is that
    forward, so there it costs nothing."""
    calls = _counting_forwards(monkeypatch)
    h = harness(esmfuzz_cache)
    assert h.check("packed_precision", LAYOUT).ok
    assert calls == [("run_packed", "float16"), ("run_padded", "float32")]
    calls.clear()
    assert h.check("precision", LAYOUT).ok
    assert calls == [("run_padded", "float16"), ("run_padded", "float32")]
    calls.clear()
    h.thresholds = dataclasses.replace(h.thresholds, sequence_cosine=1.0)
    verdict = h.check("packed_precision", LAYOUT, explain=False)
    assert verdict.ok, verdict.message()  # every cosine is below 1: fair-esm's own widened it
    assert calls == [("run_packed", "float16"), ("run_padded", "float32"),
                     ("run_padded", "float16")]


# --------------------------------------------------------------------------- kept outputs

CALLED: list[int] = []


def _counted_packed(model, tokens, cu_seqlens, max_seqlen, repr_layers):
    """The default packed forward, as an implementation under test that counts its calls."""
    from esmfuzz.forward import packed_forward

    CALLED.append(len(cu_seqlens) - 1)
    return packed_forward(model, tokens, cu_seqlens, max_seqlen, repr_layers)


SHARED = [  # samples that share batches, as Hypothesis's mutated layouts do
    ("error_ratio", Sample(LAYOUT)),
    ("error_ratio", Sample(LAYOUT)),
    ("error_ratio", Sample([*LAYOUT, "MKV" * 30])),
    ("isolation", Sample(LAYOUT, 1, [LAYOUT[1], "L"], 0)),
    ("padding_invariance", Sample(LAYOUT, 1)),
    ("packed_precision", Sample(LAYOUT)),
    ("statistics", Sample(LAYOUT)),
    ("isolation", Sample(LAYOUT, 1, [LAYOUT[1], "L"], 0)),
]


@pytest.mark.parametrize("packed_impl", [None, "tests.test_harness:_counted_packed"])
def test_kept_outputs_change_no_verdict(esmfuzz_cache, packed_impl):
    """Checks that share batches give the verdicts, every recorded value included, of a
    harness that keeps nothing: a kept batch holds the bits a new forward of it computes."""
    options = {"packed_impl": packed_impl} if packed_impl else {}
    keeping, recomputing = harness(esmfuzz_cache, **options), harness(esmfuzz_cache, **options)
    recomputing.kept.limit = 0
    for prop, sample in SHARED:
        kept, fresh = keeping.check(prop, sample), recomputing.check(prop, sample)
        assert kept.ok and fresh.ok, (kept.message(), fresh.message())
        assert (kept.metrics, kept.worst, kept.margin) == (fresh.metrics, fresh.worst,
                                                           fresh.margin)
    assert keeping.kept.hits >= 10 and recomputing.kept.hits == 0
    assert 0 < keeping.kept.bytes <= keeping.kept.limit and recomputing.kept.bytes == 0


def test_the_implementation_under_test_is_called_every_time(esmfuzz_cache):
    """A sample checked again calls the implementation under test again (both dtypes); the
    oracle, a trusted forward, runs once."""
    h = harness(esmfuzz_cache, packed_impl="tests.test_harness:_counted_packed")
    oracle_calls = []
    seam = h.oracle_impl

    def oracle(*args, **kwargs):
        oracle_calls.append(1)
        return seam(*args, **kwargs)

    h.oracle_impl = oracle
    called = importlib.import_module("tests.test_harness").CALLED  # the module esmfuzz loaded
    called.clear()
    for _ in range(3):
        assert h.check("error_ratio", LAYOUT).ok
    assert called == [3, 3] * 3
    from esmfuzz.alphabet import residue_count
    from esmfuzz.forward import length_buckets

    assert len(oracle_calls) == len(length_buckets([residue_count(s) for s in LAYOUT])) == 2


def test_kept_outputs_drop_the_least_recently_used_first():
    import torch

    from esmfuzz.harness import KeptOutputs

    def rows(n):
        return [{0: torch.zeros(n, dtype=torch.uint8)}]

    kept = KeptOutputs(limit=100)
    computed = []

    def get(key, n):
        return kept.get(key, lambda: computed.append(key) or rows(n))

    get("a", 40), get("b", 40), get("a", 40)
    get("c", 40)  # over 100 bytes: "b", used least recently, goes
    get("a", 40), get("b", 40)
    assert computed == ["a", "b", "c", "b"] and kept.hits == 2
    get("huge", 101)  # larger than the limit: returned, not kept
    assert "huge" in computed and kept.bytes <= 100
    kept.clear()
    assert kept.bytes == 0
    get("a", 40)
    assert computed[-1] == "a"


def test_a_retry_drops_the_kept_outputs(esmfuzz_cache):
    h = harness(esmfuzz_cache)
    assert h.check("error_ratio", LAYOUT).ok and h.kept.bytes > 0
    h.free_memory()
    assert h.kept.bytes == 0
