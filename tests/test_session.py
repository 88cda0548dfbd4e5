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


# --- Hypothesis's Pareto front is not kept for esmfuzz's fuzz targets ---------------------


def _targeted_run(directory: Path, wrap) -> list[bytes]:
    """The database keys a targeted Hypothesis run (60 examples, a database) wrote to. Not
    seeded: Hypothesis writes no database for a test under ``@seed``. The first example
    always joins an empty front, so a plain run always saves one."""
    from hypothesis import given, settings, target
    from hypothesis import strategies as st
    from hypothesis.database import DirectoryBasedExampleDatabase

    database = DirectoryBasedExampleDatabase(str(directory))

    @settings(max_examples=60, database=database)
    @given(st.lists(st.integers(0, 1000), min_size=1, max_size=20))
    def test(values):
        target(float(sum(values)), label="score")

    with wrap():
        test()
    return [key for key in database.fetch(b".hypothesis-keys")
            if any(database.fetch(key))]


def test_fuzz_targets_keep_no_pareto_front(tmp_path):
    """Where a database is set, Hypothesis saves the front of targeted examples, to replay
    at the next start; esmfuzz's targets run without it (each example paid 7-46 ms for
    it on one core, ``benchmarks/pareto_cost.py``)."""
    import contextlib

    from hypothesis.internal.conjecture import engine
    from hypothesis.internal.conjecture.pareto import ParetoFront

    from esmfuzz.session import without_pareto_front

    plain = _targeted_run(tmp_path / "plain", contextlib.nullcontext)
    assert any(key.endswith(b".pareto") for key in plain), plain
    assert _targeted_run(tmp_path / "esmfuzz", without_pareto_front) == []
    assert engine.ParetoFront is ParetoFront


def test_the_pareto_front_comes_back_after_a_target_that_raised():
    from hypothesis.internal.conjecture import engine
    from hypothesis.internal.conjecture.pareto import ParetoFront

    from esmfuzz.session import without_pareto_front

    try:
        with without_pareto_front():
            assert engine.ParetoFront is not ParetoFront
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert engine.ParetoFront is ParetoFront
