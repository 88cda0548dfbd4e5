"""The property fuzz targets: ``pytest fuzz/`` is esmfuzz's main job.

One target per property of :mod:`esmfuzz.registry` and stratum, in registry order, so
``-x`` stops at the sharpest oracle (``error_ratio``) first. The ``esm_fuzz`` fixture
draws samples from the property's strategy, checks them through the session's harness,
reports the margin to ``hypothesis.target``, saves the shrunk failure to the corpus (once
per distinct signature: a bug already known is counted as seen again), and checks the
corpus cases of the same property first. Select with ``-k``: ``-k error_ratio``,
``-k "error_ratio-short"``, ``-k "not crowded"``.
"""

import pytest

from esmfuzz.registry import targets


@pytest.mark.parametrize(("prop", "stratum"), [
    pytest.param(prop, stratum, id=f"{prop}-{stratum}") for prop, stratum in targets()
])
def test_property(esm_fuzz, prop, stratum):
    esm_fuzz(prop, stratum)
