"""esmfuzz never blames the code under test for its own failures, resources or nondeterminism.

Checks on a CPU harness (the embedded 8M synthetic model) first, then real pytest runs of
the fuzz targets as in ``test_plugin.py``: esmfuzz's oracle failing through its test seam
(``Harness.oracle_impl``, :mod:`tests.support.oracle_seam`), and implementations that are
correct but nondeterministic (one ulp either way on every call) or racy.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from esmfuzz import cli
from esmfuzz.config import Config
from esmfuzz.corpus import load_corpus
from esmfuzz.errors import HarnessError
from esmfuzz.forward import oracle_forward
from esmfuzz.harness import Harness
from esmfuzz.properties import FAILURE_KINDS, Sample, Thresholds, Verdict
from esmfuzz.session import Session, _judged
from esmfuzz.triage import signature
from tests.impls import broken
from tests.test_plugin import ERROR_RATIO_SHORT, SMALL_PACKS, _workdir, corpus_files, fuzz

PAIR = Sample(("MKTAYIAKQR", "LLGG"))


def _harness(impl: str = "tests.impls.packed:loop_packed") -> Harness:
    """A fresh harness (its seam is changed by some tests); the model pair below is cached."""
    return Harness(Config(device="cpu", packed_impl=impl))


def _failing_oracle(times: int, error=torch.OutOfMemoryError):
    calls = []

    def oracle(model, tokens, repr_layers):
        calls.append(tokens.shape)
        if len(calls) <= times:
            raise error("CUDA out of memory (simulated)" if error is torch.OutOfMemoryError
                        else "shape mismatch (simulated)")
        return oracle_forward(model, tokens, repr_layers)

    return oracle, calls


# --- esmfuzz's own forwards ---------------------------------------------------------------


def test_oracle_that_fails_once_is_retried_after_freeing_memory():
    harness = _harness()
    harness.oracle_impl, calls = _failing_oracle(1)
    verdict = harness.check("error_ratio", PAIR)
    assert verdict.ok, verdict.message()
    assert len(calls) >= 2


@pytest.mark.parametrize("error, reason, advice", [
    (torch.OutOfMemoryError, "esmfuzz's float64 oracle ran out of memory", "--esm-crowd-tokens"),
    (ValueError, "esmfuzz's float64 oracle raised ValueError", "esmfuzz's error"),
])
def test_oracle_that_keeps_failing_is_esmfuzz_error_never_a_verdict(error, reason, advice):
    harness = _harness()
    harness.oracle_impl, calls = _failing_oracle(10**6, error)
    with pytest.raises(HarnessError) as info:
        harness.check("error_ratio", PAIR)
    assert info.value.reason == reason and advice in info.value.advice
    assert "loop_packed" not in str(info.value)
    assert len(calls) == 2  # the try and one retry


def test_esmfuzz_forwards_standing_in_for_the_user_are_esmfuzz_own():
    """With no implementation given, every forward is esmfuzz's: none runs under the time
    limit, and none can be blamed."""
    default = Harness(Config(device="cpu", timeout=5.0))
    assert default.under_test_kinds() == set() and not default._mine
    mine = _harness()
    assert mine._mine == {mine._packed}


# --- an implementation under test that runs out of memory ----------------------------------


def test_out_of_memory_is_its_own_kind_in_plain_words():
    harness = _harness("tests.impls.broken:out_of_memory")
    before = broken.out_of_memory.calls
    verdict = harness.check("error_ratio", PAIR)
    assert broken.out_of_memory.calls - before == 2  # retried once
    assert verdict.metric == "out_of_memory" and not verdict.ok
    text = verdict.message()
    assert text.startswith("property 'error_ratio' failed (out_of_memory): packed "
                           "implementation tests.impls.broken:out_of_memory raised "
                           "OutOfMemoryError on a pack of 18 tokens, with ")
    assert "GiB free on cpu at the time" in text and "=nan" not in text
    assert verdict.metrics["tokens"] == 18
    assert signature(verdict, harness.layers) == (
        "error_ratio: out_of_memory on inputs of 1-1024 tokens")


def test_out_of_memory_signature_keeps_size_classes_and_logic_errors_apart():
    def sig(metric, tokens=None):
        verdict = Verdict.failed("error_ratio", metric, "raised ...", tokens=tokens)
        return signature(verdict, [0, 1])

    small, crowded, huge = sig("out_of_memory", 900), sig("out_of_memory", 5000), sig(
        "out_of_memory", 40000)
    assert len({small, crowded, huge, sig("exception")}) == 4
    assert sig("out_of_memory", 1024) == small and sig("out_of_memory", 1025) != small
    assert huge.endswith("inputs of more than 16384 tokens")


@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_every_failure_kind_reads_as_words(kind):
    verdict = Verdict.failed("isolation", kind, "packed implementation m:f did something")
    assert verdict.message().startswith(f"property 'isolation' failed ({kind}): packed "
                                         f"implementation m:f did something")
    assert "nan" not in verdict.message() + verdict.brief()


# --- nondeterminism, measured -------------------------------------------------------------


def test_identical_calls_of_a_deterministic_implementation_have_no_spread():
    repeat = _harness().repeat("error_ratio", PAIR)
    assert repeat.spread is None and all(v.ok for v in repeat.verdicts)


@pytest.mark.parametrize("impl", ["jittery_packed", "jittery_attention_packed"])
@pytest.mark.parametrize("prop, sample", [
    ("error_ratio", Sample(("L",))),
    ("error_ratio", PAIR),
    ("isolation", Sample(("MKTAYIAKQR", "LLGG"), 1, ("LLGG", "WWW"), 0)),
])
def test_one_ulp_jitter_is_within_the_noise_bound(impl, prop, sample):
    repeat = _harness(f"tests.impls.packed:{impl}").repeat(prop, sample)
    assert repeat.spread is not None, "the jitter must show"
    assert repeat.spread.ok, repeat.spread.message()
    assert 0 < repeat.spread.value < repeat.spread.threshold


def _judge(impl: str, original: Verdict, sample: Sample, **thresholds):
    harness = Harness(Config(device="cpu", packed_impl=f"tests.impls.packed:{impl}",
                             thresholds=Thresholds(**thresholds)))
    recorder = Session(harness.config, "ci")
    sig = signature(original, harness.layers)
    verdict, outcome = _judged(harness, recorder, "error_ratio", "short", sample, original, sig)
    return verdict, outcome, recorder


def _failing(impl: str, sample: Sample) -> Verdict:
    """A real first failure: the implementation checked against a bound (0.5) below what
    correct code reaches (about 1)."""
    strict = Harness(Config(device="cpu", packed_impl=f"tests.impls.packed:{impl}",
                            thresholds=Thresholds(error_ratio=0.5)))
    verdict = strict.check("error_ratio", sample, explain=False)
    assert not verdict.ok
    return verdict


def test_a_failure_that_does_not_come_back_is_judged_on_the_spread():
    """First call failed, the repeated ones pass and differ by one ulp: noise, not a bug."""
    sample = Sample(("MKTAYIAKQR", "LLGG"))
    verdict, outcome, recorder = _judge("sometimes_jittery_packed",
                                        _failing("sometimes_jittery_packed", sample), sample)
    assert outcome == "noise" and verdict.ok and verdict.metric == "nondeterministic"
    assert "error_ratio failed on 1 of 4 identical calls" in verdict.notes[0]
    assert recorder.spreads["error_ratio[short]"]["noise"] == 1 and not recorder.firsts


def test_a_failure_on_every_call_stands_whatever_the_spread():
    sample = Sample(("MKTAYIAKQR", "LLGG"))
    original = _failing("sometimes_jittery_packed", sample)
    verdict, outcome, recorder = _judge("sometimes_jittery_packed", original, sample,
                                        error_ratio=0.5)
    assert outcome is None and verdict is original
    assert "showed on every one of 4 calls" in verdict.notes[-1]
    assert recorder.spreads["error_ratio[short]"]["reproduced"] == 1
    assert recorder.firsts[("error_ratio", "short")][0] == sample


def test_a_race_is_a_spread_past_the_bound():
    harness = _harness("tests.impls.broken:racy")
    repeat = harness.repeat("error_ratio", PAIR)
    assert [v.ok for v in repeat.verdicts].count(False) in (1, 2)
    spread = repeat.spread
    assert not spread.ok and spread.metric == "nondeterministic"
    assert signature(spread, harness.layers) == "error_ratio: nondeterministic in the packed output"


# --- whole runs ---------------------------------------------------------------------------


def _seam(run_env, mode: str) -> dict:
    return {**run_env, "ESMFUZZ_BROKEN_ORACLE": mode}


def test_oracle_failing_on_every_example_is_esmfuzz_error_not_a_finding(tmp_path_factory,
                                                                         run_env):
    root = _workdir(tmp_path_factory, "oracle-always")
    done = fuzz(root, _seam(run_env, "always"), ERROR_RATIO_SHORT, "-p",
                "tests.support.oracle_seam", "--esm-packed-impl",
                "tests.impls.packed:loop_packed", "--esm-report", str(root / "r.json"))
    out = done.stdout
    assert done.returncode == pytest.ExitCode.INTERNAL_ERROR, out
    assert "esmfuzz error, not a finding against the code under test" in out
    assert "skipped: esmfuzz's float64 oracle ran out of memory; lower --esm-crowd-tokens" in out
    assert not corpus_files(root) and "distinct failures" not in out
    report = json.loads((root / "r.json").read_text())
    assert report["unchecked"] == ["error_ratio[short]"] and not report["failures"]


def test_oracle_failing_on_some_examples_skips_and_counts_them(tmp_path_factory, run_env):
    root = _workdir(tmp_path_factory, "oracle-wide")
    done = fuzz(root, _seam(run_env, "12"), ERROR_RATIO_SHORT, "-p",
                "tests.support.oracle_seam", "--esm-packed-impl",
                "tests.impls.packed:loop_packed", "--esm-report", str(root / "r.json"))
    out = done.stdout
    assert done.returncode == 0, out
    [row] = json.loads((root / "r.json").read_text())["rows"]
    assert row["skipped"] >= 1 and row["examples"] >= 1, row
    assert f"{row['skipped']} example" in out and "skipped: esmfuzz's float64 oracle" in out
    assert not corpus_files(root)


@pytest.mark.parametrize("seed", ["1", "2"])
def test_one_ulp_nondeterminism_is_never_a_finding(tmp_path_factory, run_env, seed):
    root = _workdir(tmp_path_factory, f"jitter-{seed}")
    done = fuzz(root, run_env, "(error_ratio or packed_precision) and short or "
                "(isolation-mixed)",
                "--esm-seed", seed, *SMALL_PACKS,
                "--esm-packed-impl", "tests.impls.packed:jittery_packed")
    assert done.returncode == 0, done.stdout
    assert not corpus_files(root)
    assert "unreproducible" not in done.stdout


@pytest.fixture(scope="module")
def racy_run(tmp_path_factory, run_env):
    root = _workdir(tmp_path_factory, "racy")
    return root, fuzz(root, run_env, ERROR_RATIO_SHORT, "--esm-packed-impl",
                      "tests.impls.broken:racy")


def test_a_race_is_saved_once_as_nondeterministic(racy_run):
    root, done = racy_run
    out = done.stdout
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, out
    [path] = corpus_files(root)
    case = json.loads(path.read_text())
    assert "nondeterministic" in case["metrics"] and case["status"] == "open"
    assert len(case["sequences"]) == 1, case["sequences"]
    assert "judged on the calls' spread" in case["message"]
    assert "nondeterministic: error_ratio[short]" in out and "unreproducible" not in out


def test_replay_measures_a_nondeterministic_case_again(racy_run, capsys, monkeypatch):
    root, _ = racy_run
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.environ.get(
        "PYTHONPATH")])))
    [(path, case)], errors = load_corpus(root / "corpus")
    assert not errors
    code = cli.main(["replay", str(root / "corpus"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "still open" in out and "nondeterministic=" in out, out
