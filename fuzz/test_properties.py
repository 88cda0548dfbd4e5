"""The property fuzz targets, one per oracle: ``pytest fuzz/`` is esmfuzz's main job.

Each target hands a strategy of ``(sequences, extra)`` samples to the ``esm_fuzz``
fixture, which checks the property through the session's harness, reports the
margin to ``hypothesis.target``, saves the shrunk failure to the corpus, and
runs the corpus cases of the same property first. The sharpest oracle
(``error_ratio``) comes first, so ``-x`` stops at the most telling failure.
"""

import pytest

from esmfuzz.alphabet import residue_count
from strategies import LENGTH_STRATA, metamorphic_pairs, packing_layouts, stratified_layouts

STRATA = list(LENGTH_STRATA)


def plain(layouts):
    return layouts.map(lambda sequences: (sequences, {}))


def layouts(stratum, config, **options):
    return plain(stratified_layouts(stratum, max_tokens=config.pack_tokens, **options))


@pytest.mark.parametrize("stratum", STRATA)
def test_error_ratio(esm_fuzz, esm_config, stratum):
    esm_fuzz("error_ratio", layouts(stratum, esm_config), stratum=stratum)


def test_isolation(esm_fuzz, esm_config):
    pairs = metamorphic_pairs(max_sequences=6, max_tokens=esm_config.pack_tokens)
    esm_fuzz("isolation", pairs.map(lambda p: (p[0], {"target": p[1], "variant": p[2],
                                                      "variant_target": p[3]})))


@pytest.mark.parametrize("stratum", STRATA)
def test_packed_precision(esm_fuzz, esm_config, stratum):
    esm_fuzz("packed_precision", layouts(stratum, esm_config), stratum=stratum)


@pytest.mark.parametrize("stratum", STRATA)
def test_finite(esm_fuzz, esm_config, stratum):
    esm_fuzz("finite", layouts(stratum, esm_config), stratum=stratum)


def test_statistics(esm_fuzz):
    esm_fuzz("statistics", plain(packing_layouts(max_sequences=4, max_tokens=1024)))


@pytest.mark.parametrize("stratum", STRATA)
def test_precision(esm_fuzz, esm_config, stratum):
    esm_fuzz("precision", layouts(stratum, esm_config, max_sequences=4), stratum=stratum)


def _shortest_among_longer(layout):
    lengths = [residue_count(s) for s in layout]
    return layout, {"target": lengths.index(min(lengths))}


def test_padding_invariance(esm_fuzz):
    layouts = packing_layouts(min_sequences=2, max_sequences=6, max_tokens=2048)
    esm_fuzz("padding_invariance", layouts.map(_shortest_among_longer))


def test_positions(esm_fuzz):
    esm_fuzz("positions", plain(packing_layouts(max_sequences=64, max_tokens=8192)))
