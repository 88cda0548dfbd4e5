"""The property fuzz targets: ``pytest fuzz/`` is esmfuzz's main job.

Each target names a property of :mod:`esmfuzz.registry` and a stratum; the ``esm_fuzz``
fixture draws samples from the property's strategy, checks them through the session's
harness, reports the margin to ``hypothesis.target``, saves the shrunk failure to the
corpus (once per distinct signature: a bug already known is counted as seen again), and
checks the corpus cases of the same property first. The sharpest oracle
(``error_ratio``) comes first, so ``-x`` stops at the most telling failure.
"""

import pytest

from esmfuzz.registry import PROPERTIES


def strata(name):
    return pytest.mark.parametrize(
        "stratum", PROPERTIES[name].strata, ids=lambda s: s or "mixed"
    )


@strata("error_ratio")
def test_error_ratio(esm_fuzz, stratum):
    esm_fuzz("error_ratio", stratum)


@strata("isolation")
def test_isolation(esm_fuzz, stratum):
    esm_fuzz("isolation", stratum)


@strata("packed_precision")
def test_packed_precision(esm_fuzz, stratum):
    esm_fuzz("packed_precision", stratum)


@strata("finite")
def test_finite(esm_fuzz, stratum):
    esm_fuzz("finite", stratum)


@strata("statistics")
def test_statistics(esm_fuzz, stratum):
    esm_fuzz("statistics", stratum)


@strata("precision")
def test_precision(esm_fuzz, stratum):
    esm_fuzz("precision", stratum)


@strata("padding_invariance")
def test_padding_invariance(esm_fuzz, stratum):
    esm_fuzz("padding_invariance", stratum)


def test_every_property_has_a_target():
    targets = {name[5:] for name in globals() if name.startswith("test_")}
    assert set(PROPERTIES) <= targets
