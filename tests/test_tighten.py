"""The second shrink pass: smaller samples that keep a failure's signature."""

from __future__ import annotations

import pytest

from esmfuzz.alphabet import residue_count
from esmfuzz.config import Config
from esmfuzz.harness import Harness
from esmfuzz.properties import Sample
from esmfuzz.tighten import smaller_samples, tighten, tightened
from esmfuzz.triage import signature


def test_tighten_reaches_the_smallest_sample_a_predicate_allows():
    """A failure that needs a W and a second sequence: every other residue and sequence
    goes, in one pass per step."""
    start = Sample(("MKTAYIAKQRW", "GLVWPEST", "AAAA<mask>CC", "L"))

    def fails(sample):
        return len(sample.sequences) >= 2 and any("W" in s for s in sample.sequences)

    smallest, tried = tighten(start, fails, seconds=30)
    assert fails(smallest)
    assert len(smallest.sequences) == 2
    assert sum(map(residue_count, smallest.sequences)) == 2
    assert tried > 0


def test_tighten_keeps_a_sample_nothing_smaller_fails():
    start = Sample(("L", "A"))
    smallest, tried = tighten(start, lambda s: s == start, seconds=30)
    # The candidates: drop either sequence, merge the two, 'A' made 'L'; each tried once.
    assert smallest == start and tried == len(list(smaller_samples(start))) == 4


def test_a_failure_that_needs_many_tokens_merges_into_three_long_sequences():
    """A leak past 2048 tokens found in a pack of 64 short sequences: merging keeps the
    tokens, so the case ends as three sequences just over 2048 tokens, all 'L'."""
    start = Sample(tuple("ACDEFGHIKLMNPQRSTVWY"[i % 20] * (30 + i % 40) for i in range(64)))

    def tokens(sample):
        return sum(residue_count(s) + 2 for s in sample.sequences)

    assert tokens(start) > 2048
    smallest, tried = tighten(start, lambda s: tokens(s) > 2048, seconds=60)
    assert len(smallest.sequences) == 3 and tokens(smallest) == 2049
    assert set("".join(smallest.sequences)) == {"L"}
    assert tried < 200


def test_a_failure_that_needs_many_sequences_keeps_just_enough_of_one_residue():
    start = Sample(tuple("MKTAYIAKQR"[: 1 + i % 10] for i in range(100)))
    smallest, tried = tighten(start, lambda s: len(s.sequences) > 32, seconds=60)
    assert smallest.sequences == ("L",) * 33
    assert tried < 400


def test_tighten_stops_when_time_is_up():
    start = Sample(("MKTAYIAKQRW" * 10,) * 4)
    smallest, tried = tighten(start, lambda s: True, seconds=0)
    assert smallest == start and tried == 0


def test_smaller_samples_keep_the_followed_sequence_in_both_layouts():
    start = Sample(("MKTAYIAK", "GLVW<mask>PE", "QR"), 1, ("GLVW<mask>PE", "SSSS"), 0)
    candidates = list(smaller_samples(start))
    assert candidates
    for candidate in candidates:  # Sample() itself checks that the target is in both
        assert candidate.sequences[candidate.target] == candidate.variant[candidate.variant_target]
        assert all(residue_count(s) >= 1 for s in candidate.sequences + candidate.variant)
    assert not any(len(c.sequences) == 2 and "GLVW<mask>PE" not in c.sequences
                   for c in candidates)
    assert Sample(("MKTAYIAK", "GLVW<mask>PE"), 1, ("GLVW<mask>PE", "SSSS"), 0) in candidates
    cut = "GLVW<mask>P"
    assert any(c.sequences[1] == cut and c.variant[0] == cut for c in candidates)


@pytest.mark.usefixtures("one_cpu_thread")
def test_a_leak_found_in_a_bloated_pack_is_tightened_to_two_short_sequences(esmfuzz_cache):
    """The real harness on a leaky packed forward: the leak needs a second sequence; the
    other two sequences and most residues go, and the signature is the same."""
    harness = Harness(Config(model="synthetic:esm2_t6_8M_UR50D", device="cpu",
                             dtype="float16", packed_impl="tests.impls.packed:leaky_packed",
                             shrink_seconds=120))
    start = Sample(("MKTAYIAKQRQISFVKSHFSRQ", "GLVWPESTAAAA", "XBZUOLLLL", "CCCCHHHH"))
    verdict = harness.check("error_ratio", start)
    assert not verdict.ok
    sig = signature(verdict, harness.layers)
    smaller, explained = tightened(harness, "error_ratio", start, verdict, sig)
    assert len(smaller.sequences) == 2
    assert sum(map(residue_count, smaller.sequences)) <= 4
    assert not explained.ok and signature(explained, harness.layers) == sig
    assert any("shrunk further after Hypothesis" in note for note in explained.notes)
