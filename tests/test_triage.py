"""Failure signatures: one bug gives one signature, two bugs two; claimed once per run."""

import json
import math
import multiprocessing
from pathlib import Path

from esmfuzz.properties import Verdict
from esmfuzz.triage import Claims, Known, signature

CHECKED = [0, 1, 3, 6]


def _failing(prop: str, metric: str, value: float, failing: dict[int, float], path: str = ""):
    layers = {layer: [-1.0 if layer in failing else 0.5, metric, failing.get(layer, 0.0)]
              for layer in CHECKED}
    return Verdict(prop, ok=False, metric=metric, value=value, threshold=0.95, margin=-1.0,
                   path=path, layers=layers)


def test_a_threshold_property_keeps_one_signature_however_far_an_example_fails():
    """One missing rescale failed packed_precision at layer 6 in one example, at layers 3
    and 6 (and on another cosine) in the next: one bug, one signature."""
    mild = _failing("packed_precision", "token_cosine_min", 0.94, {6: 0.94})
    severe = _failing("packed_precision", "sequence_cosine", 0.90, {3: 0.97, 6: 0.90})
    assert signature(mild, CHECKED) == signature(severe, CHECKED)
    assert signature(mild, CHECKED) == "packed_precision: cosine thresholds in the packed output"
    padded = _failing("precision", "token_cosine_min", 0.9, {6: 0.9})
    assert signature(padded, CHECKED) == "precision: cosine thresholds in the padded output"


def test_statistics_signatures_tell_the_output_apart():
    packed = _failing("statistics", "mean_abs_diff", 0.2, {6: 0.2}, path="packed")
    padded = _failing("statistics", "std_rel_diff", 0.3, {6: 0.3}, path="padded")
    assert signature(packed, CHECKED) != signature(padded, CHECKED)


def test_error_ratio_tells_bugs_apart_by_their_failing_layers():
    leak = _failing("error_ratio", "error_ratio", 1e5, {1: 1e5, 3: 1e5, 6: 1e5},
                    path="packed float32 token")
    rescale = _failing("error_ratio", "error_ratio", 1e6, {0: 1e6, 1: 1e6, 3: 1e6, 6: 1e6},
                       path="packed float32 token")
    assert signature(leak, CHECKED) == (
        "error_ratio: error_ratio in the packed output, failing layers 1,3,6")
    assert signature(leak, CHECKED) != signature(rescale, CHECKED)


def test_non_finite_threshold_failures_keep_their_layers():
    nan = _failing("packed_precision", "sequence_cosine", math.nan, {3: math.nan, 6: math.nan})
    assert signature(nan, CHECKED) == (
        "packed_precision: non-finite sequence_cosine in the packed output, failing layers 3,6")


def _claim(directory, sig, start, results):
    start.wait()
    results.put(Claims(directory).claim(sig))


def test_of_processes_claiming_one_signature_at_once_exactly_one_wins(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    sig = "error_ratio: exception"
    workers = [context.Process(target=_claim, args=(tmp_path, sig, start, results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    won = sorted(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert won == [False, False, False, True]
    claims = Claims(tmp_path)
    assert not claims.claimed("finite: exception")
    # The winner died without saving a case: its claim no longer stands, and the bug is
    # claimed afresh (by this process, alive, so the claim holds).
    assert not claims.claimed(sig) and claims.claim(sig) and claims.claimed(sig)
    case = _case(tmp_path, "open")
    claims.settle(sig, case=str(case), pattern="every layer")
    assert claims.read(sig)["case"] == str(case)
    assert not claims.claim(sig) and claims.claim("finite: exception")


def _case(root, status: str) -> Path:
    path = root / "corpus" / "error_ratio" / "abc.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": status}))
    return path


def test_a_claim_whose_case_is_gone_or_fixed_no_longer_stands(tmp_path):
    claims = Claims(tmp_path / "claims")
    sig = "error_ratio: exception"
    case = _case(tmp_path, "open")
    assert claims.claim(sig)
    claims.settle(sig, case=str(case), pattern="")
    assert claims.claimed(sig) and not claims.claim(sig)
    case.write_text(json.dumps({"status": "fixed"}))
    assert not claims.claimed(sig) and claims.claim(sig)
    claims.settle(sig, case=str(case), pattern="")
    case.unlink()
    assert claims.claim(sig)


def test_claims_of_other_set_ups_are_kept_apart(tmp_path):
    ours, theirs = Claims(tmp_path, namespace="8M fp16"), Claims(tmp_path, namespace="8M bf16")
    assert ours.claim("error_ratio: exception") and theirs.claim("error_ratio: exception")


def test_settled_claims_are_listed_for_folding_and_unsettled_ones_are_not(tmp_path):
    claims = Claims(tmp_path / "claims")
    assert claims.claim("error_ratio: exception") and claims.claim("finite: exception")
    claims.settle("error_ratio: exception", case=str(_case(tmp_path, "open")), pattern="")
    assert [c["signature"] for c in claims.settled()] == ["error_ratio: exception"]


def test_a_folded_signature_counts_on_the_failure_it_was_folded_into():
    known = Known("error_ratio: exception", "new", "x.json")
    assert known.property == "error_ratio"
    known.fold("finite: exception", "finite[short]")
    known.fold("finite: exception", "finite[long]")
    assert known.also == ["finite: exception"] and known.seen_again == 2
    assert known.targets == ["finite[short]", "finite[long]"]


def test_an_unsettled_claim_of_another_host_expires_after_a_while(tmp_path):
    """A claimant on another host may have died: no process here can tell, so its claim
    expires after CLAIM_HOURS; a fresh one stands."""
    from esmfuzz import triage

    claims = Claims(tmp_path)
    sig = "error_ratio: error_ratio in the packed output, failing layers 1,3,6"
    path = claims._path(sig)
    path.write_text(json.dumps({"signature": sig, "namespace": "", "pid": 1,
                                "host": "another-host", "t": 0.0}))
    assert not claims.claimed(sig) and claims.claim(sig)
    fresh = json.loads(path.read_text())
    assert fresh["t"] > 0 and claims.claimed(sig)
    path.write_text(json.dumps({**fresh, "host": "another-host",
                                "t": fresh["t"] - 0.5 * triage.CLAIM_HOURS * 3600}))
    assert claims.claimed(sig)
