"""Replay every corpus case as its own test: ``fixed`` must pass, ``open`` is a strict xfail.

Both corpora: the user-facing ``corpus/`` (empty as shipped) and the seeded-fault cases of
``tests/data/corpus/``."""

from pathlib import Path

import pytest

from esmfuzz.attention import BackendUnavailable
from esmfuzz.corpus import load_corpus
from esmfuzz.errors import HarnessError
from esmfuzz.harness import config_for_case, harness_for

HERE = Path(__file__).resolve().parent
_cases, _errors = [], []
for _root in (HERE.parent / "corpus", HERE / "data" / "corpus"):
    _found, _bad = load_corpus(_root)
    _cases += _found
    _errors += _bad


def _param(path, case):
    marks = []
    if case.status in ("open", "accepted"):
        marks.append(pytest.mark.xfail(strict=True, reason=f"{case.status} case {case.id}"))
    return pytest.param(case, id=f"{path.parent.parent.name}/{case.property}/{path.stem}",
                        marks=marks)


@pytest.mark.parametrize("case", [_param(p, c) for p, c in _cases])
def test_corpus_case(case):
    try:
        harness = harness_for(config_for_case(case))
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        verdict = harness.check_case(case)
    except HarnessError as exc:
        pytest.skip(f"esmfuzz could not check this case ({exc.advice}): {exc}")
    assert verdict.ok, verdict.message()


@pytest.mark.parametrize("error", _errors, ids=lambda e: str(getattr(e, "path", e)))
def test_corpus_file_is_well_formed(error):
    pytest.fail(str(error))
