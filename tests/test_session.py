"""The fuzz session's choices that need no fuzz run: which open cases apply to a set-up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from esmfuzz.config import Config
from esmfuzz.corpus import load_corpus
from esmfuzz.models import parse_spec
from esmfuzz.session import applies

SEEDED = Path(__file__).resolve().parent / "data" / "corpus"


def test_open_cases_apply_only_to_their_own_set_up():
    """A fresh checkout's run (esmfuzz's defaults, trained-like weights) replays none of the
    seeded-fault cases; a run of the very fault, weights and dtype replays its case."""
    cases, errors = load_corpus(SEEDED)
    assert not errors and len(cases) == 5
    assert not any(applies(case, Config()) for _, case in cases)
    for _, case in cases:
        own = Config(model=case.model, dtype=case.dtype,
                     packed_impl=case.implementations["packed"],
                     padded_impl=case.implementations["padded"])
        assert applies(case, own)
        assert applies(case, dataclasses.replace(own, model=case.model.replace("?", "?seed=0&")))
        assert not applies(case, dataclasses.replace(own, model="synthetic:esm2_t6_8M_UR50D"))
        assert not applies(case, dataclasses.replace(own, dtype="bfloat16"))
        others = [c for _, c in cases if c.implementations != case.implementations]
        assert not any(applies(other, own) for other in others)


def test_a_case_records_the_weights_not_the_words():
    """``synthetic:esm2_t6_8M_UR50D`` means trained-like weights today and meant random ones
    before: a case spells the profile out."""
    assert parse_spec("synthetic:esm2_t6_8M_UR50D").weights == (
        "synthetic:esm2_t6_8M_UR50D?profile=trained")
    assert parse_spec("synthetic:esm2_t6_8M_UR50D?seed=2&profile=random").weights == (
        "synthetic:esm2_t6_8M_UR50D?seed=2&profile=random")
    assert parse_spec("esm2_t6_8M_UR50D").weights == "esm2_t6_8M_UR50D"
