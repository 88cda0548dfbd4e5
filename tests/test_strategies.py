"""Tests for the Hypothesis strategies in ``strategies/``: what each can generate,
what each never generates, option checking, and shrinking."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from esmfuzz.alphabet import (
    MASK,
    MAX_RESIDUES,
    RARE_RESIDUES,
    STANDARD_RESIDUES,
    InvalidSequence,
    residue_count,
    split_residues,
    validate_sequence,
)
from strategies import (
    INVALID_KINDS,
    LENGTH_STRATA,
    crowded_layouts,
    cu_seqlens_of,
    invalid_sequences,
    metamorphic_pairs,
    metamorphic_variants,
    packing_layouts,
    protein_sequences,
    stratified_layouts,
    stratum_of,
)

# .example() is the simplest way to trigger the lazy option checks.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")

# Deterministic everywhere; FIND skips shrinking when only existence matters.
CHECK = settings(derandomize=True, database=None, max_examples=50, deadline=None)
FIND = settings(derandomize=True, database=None, max_examples=3000, phases=[Phase.generate])
SHRINK = settings(
    derandomize=True, database=None, max_examples=300, phases=[Phase.generate, Phase.shrink]
)


def found(strategy, condition):
    return find(strategy, condition, settings=FIND)


def tokens_of(layout):
    return sum(residue_count(s) + 2 for s in layout)


# --- length strata ------------------------------------------------------------------


def test_length_strata_tile_the_model_range():
    spans = sorted(LENGTH_STRATA.values())
    assert spans[0][0] == 1 and spans[-1][1] == MAX_RESIDUES
    assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:], strict=False))
    for name, (low, high) in LENGTH_STRATA.items():
        assert stratum_of(low) == stratum_of(high) == name
    for bad in (0, MAX_RESIDUES + 1):
        with pytest.raises(ValueError, match="length"):
            stratum_of(bad)


# --- protein_sequences: never ------------------------------------------------------


@CHECK
@given(protein_sequences())
def test_protein_sequences_are_valid(sequence):
    validate_sequence(sequence)
    assert 1 <= residue_count(sequence) <= MAX_RESIDUES


@pytest.mark.parametrize("stratum", sorted(LENGTH_STRATA))
def test_protein_sequences_stay_in_their_stratum(stratum):
    @settings(CHECK, max_examples=20)
    @given(protein_sequences(stratum=stratum))
    def check(sequence):
        validate_sequence(sequence)
        assert stratum_of(residue_count(sequence)) == stratum

    check()


@CHECK
@given(protein_sequences(min_size=40, max_size=60, stratum="medium"))
def test_stratum_intersects_size_bounds(sequence):
    assert 50 <= residue_count(sequence) <= 60


@CHECK
@given(protein_sequences(masks=False, rare=False, max_size=300))
def test_masks_and_rare_can_be_turned_off(sequence):
    assert set(sequence) <= set(STANDARD_RESIDUES)


# --- protein_sequences: can --------------------------------------------------------


@pytest.mark.parametrize("stratum", sorted(LENGTH_STRATA))
def test_default_sequences_reach_every_stratum(stratum):
    found(protein_sequences(), lambda s: stratum_of(residue_count(s)) == stratum)


def test_sequences_can_contain_masks():
    sequence = found(protein_sequences(), lambda s: MASK in s)
    assert residue_count(sequence) < len(sequence)


@pytest.mark.parametrize("residue", RARE_RESIDUES)
def test_sequences_can_contain_each_rare_residue(residue):
    found(protein_sequences(), lambda s: residue in s)


def test_sequences_can_contain_homopolymer_runs():
    found(protein_sequences(), lambda s: re.search(r"([AC-KM-Z])\1{7}", s))


def test_sequences_can_contain_tandem_repeats():
    def tandem(s):
        match = re.search(r"([A-Z]{2,3})\1{3}", s)
        return match and len(set(match.group(1))) > 1

    found(protein_sequences(), tandem)


def test_composition_follows_swissprot_or_uniform():
    def share_of_w(composition):
        counts = Counter()

        @settings(CHECK, max_examples=20)
        @given(protein_sequences(stratum="long", composition=composition, low_complexity=False))
        def collect(sequence):
            counts.update(split_residues(sequence))

        collect()
        return counts["W"] / sum(counts.values())

    assert share_of_w("swissprot") < 0.025 < share_of_w("uniform")


@settings(CHECK, max_examples=20)
@given(protein_sequences(stratum="very_long"))
def test_very_long_needs_no_health_check_suppression(sequence):
    assert residue_count(sequence) > 500


# --- protein_sequences: shrinking --------------------------------------------------


def test_sequences_shrink_to_short_runs_of_l():
    assert find(protein_sequences(), lambda s: len(s) >= 5, settings=SHRINK) == "LLLLL"
    assert find(protein_sequences(), lambda s: MASK in s, settings=SHRINK) == MASK
    medium = find(protein_sequences(stratum="medium"), lambda s: True, settings=SHRINK)
    assert medium == "L" * 50


def test_rare_residues_shrink_to_x():
    rare = find(protein_sequences(), lambda s: set(s) & set(RARE_RESIDUES), settings=SHRINK)
    assert rare == "X"


# --- protein_sequences: options ----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_size": 0}, "min_size"),
        ({"min_size": 1.5}, "min_size"),
        ({"max_size": MAX_RESIDUES + 1}, "max_size"),
        ({"min_size": 10, "max_size": 5}, "min_size"),
        ({"stratum": "huge"}, "stratum"),
        ({"stratum": "short", "min_size": 100}, "stratum"),
        ({"composition": "pdb"}, "composition"),
        ({"rare": 1}, "rare"),
        ({"masks": None}, "masks"),
        ({"low_complexity": "yes"}, "low_complexity"),
    ],
)
def test_bad_sequence_options_raise_at_draw_time(kwargs, name):
    strategy = protein_sequences(**kwargs)  # building is lazy: no error yet
    with pytest.raises(InvalidArgument, match=name):
        strategy.example()


# --- packing_layouts ---------------------------------------------------------------


def test_cu_seqlens_counts_cls_and_eos():
    assert cu_seqlens_of([]) == [0]
    assert cu_seqlens_of(["A", f"L{MASK}K"]) == [0, 3, 8]


@CHECK
@given(packing_layouts())
def test_layouts_fit_the_budget_and_are_valid(layout):
    assert 1 <= len(layout) <= 16
    assert tokens_of(layout) <= 4096 == 4096
    assert cu_seqlens_of(layout)[-1] == tokens_of(layout)
    for sequence in layout:
        validate_sequence(sequence)


@CHECK
@given(packing_layouts(min_sequences=3, max_sequences=5, max_tokens=40, tile_sizes=(8,)))
def test_layouts_respect_tight_options(layout):
    assert 3 <= len(layout) <= 5
    assert tokens_of(layout) <= 40
    for sequence in layout:
        validate_sequence(sequence)


@CHECK
@given(packing_layouts(sequences=st.sampled_from(["ACDE", "W" * 600]), max_tokens=700))
def test_layouts_use_the_given_element_strategy(layout):
    assert tokens_of(layout) <= 700
    for sequence in layout:
        validate_sequence(sequence)
        assert set(sequence) <= set("ACDEW")


def test_layouts_can_hold_a_single_sequence():
    found(packing_layouts(), lambda layout: len(layout) == 1 and residue_count(layout[0]) > 1)


def test_layouts_can_hold_many_sequences():
    found(packing_layouts(), lambda layout: len(layout) == 16)


def test_layouts_can_hold_one_residue_sequences():
    found(
        packing_layouts(),
        lambda layout: (
            len(layout) > 1 and "L" not in layout and any(residue_count(s) == 1 for s in layout)
        ),
    )


def test_layouts_can_hold_duplicates():
    found(packing_layouts(), lambda layout: len(set(layout)) < len(layout))


def test_layouts_can_hold_one_long_among_many_short():
    def shape(layout):
        sizes = sorted(residue_count(s) for s in layout)
        return len(sizes) >= 5 and sizes[-1] >= 100 and sizes[-2] <= 10

    found(packing_layouts(), shape)


@pytest.mark.parametrize("boundary", [63, 64, 65, 127, 128, 129])
def test_layouts_place_boundaries_around_tiles(boundary):
    tile = 64 if boundary < 100 else 128
    layouts = packing_layouts(tile_sizes=(tile,), max_tokens=512)
    found(layouts, lambda layout: boundary in cu_seqlens_of(layout))


def test_default_layouts_place_boundaries_on_tiles():
    found(packing_layouts(), lambda layout: 128 in cu_seqlens_of(layout))


def test_layouts_shrink_to_one_l():
    assert find(packing_layouts(), lambda layout: True, settings=SHRINK) == ["L"]
    two = find(packing_layouts(), lambda layout: len(layout) >= 2, settings=SHRINK)
    assert two == ["L", "L"]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_sequences": 0}, "min_sequences"),
        ({"min_sequences": 4, "max_sequences": 3}, "max_sequences"),
        ({"max_sequences": "8"}, "max_sequences"),
        ({"min_sequences": 4, "max_tokens": 11}, "max_tokens"),
        ({"sequences": ["A"]}, "sequences"),
        ({"tile_sizes": ()}, "tile_sizes"),
        ({"tile_sizes": (64, 0)}, "tile_sizes"),
        ({"tile_sizes": 64}, "tile_sizes"),
        ({"masks": "no"}, "masks"),
        ({"rare": None}, "rare"),
    ],
)
def test_bad_layout_options_raise_at_draw_time(kwargs, name):
    strategy = packing_layouts(**kwargs)
    with pytest.raises(InvalidArgument, match=name):
        strategy.example()


def test_a_strategy_built_once_still_checks_options_equal_to_it():
    """Strategies are kept per options; masks=1 equals masks=True but is not a bool."""
    assert packing_layouts(masks=True) is packing_layouts(masks=True)
    packing_layouts(masks=True).example()
    with pytest.raises(InvalidArgument, match="masks=1"):
        packing_layouts(masks=1).example()


# --- metamorphic variants and pairs ------------------------------------------------


def check_variant(layout, target, variant, moved):
    assert variant[moved] == layout[target]
    assert variant != layout
    assert all(s != variant[moved] for i, s in enumerate(variant) if i != moved)
    assert tokens_of(variant) <= tokens_of(layout)
    for sequence in variant:
        validate_sequence(sequence)


@CHECK
@given(metamorphic_pairs())
def test_pairs_keep_the_target_and_change_its_neighbours(pair):
    layout, target, variant, moved = pair
    assert 2 <= len(layout) <= 8 and tokens_of(layout) <= 2048
    assert all(s != layout[target] for i, s in enumerate(layout) if i != target)
    check_variant(layout, target, variant, moved)


@CHECK
@given(st.data())
def test_variants_replace_copies_of_the_target(data):
    layout = ["KKK", "AAA", "KKK", "W"]
    variant, moved = data.draw(metamorphic_variants(layout, 0))
    check_variant(layout, 0, variant, moved)


@CHECK
@given(st.data())
def test_variants_use_the_given_element_strategy(data):
    layout = ["KKK", "AAAAA", "CC"]
    variant, moved = data.draw(metamorphic_variants(layout, 1, sequences=st.just("KKKKKK")))
    check_variant(layout, 1, variant, moved)


def test_single_sequence_variant_is_itself():
    assert metamorphic_variants(["ACD"], 0).example() == (["ACD"], 0)


def test_variants_can_permute_the_order():
    pairs = metamorphic_pairs(min_sequences=3)
    found(pairs, lambda p: sorted(p[0]) == sorted(p[2]) and p[0] != p[2])


def test_variants_can_move_the_target():
    found(metamorphic_pairs(), lambda p: p[1] != p[3])


def test_variants_can_replace_neighbours_in_place():
    def replaced(pair):
        layout, target, variant, moved = pair
        return target == moved and len(layout) >= 3 and set(variant) - set(layout)

    found(metamorphic_pairs(), replaced)


def test_pairs_shrink_to_two_one_residue_sequences():
    layout, target, variant, moved = find(metamorphic_pairs(), lambda p: True, settings=SHRINK)
    assert len(layout) == len(variant) == 2
    assert all(residue_count(s) == 1 for s in layout + variant)
    assert (target, moved) == (0, 0)


@pytest.mark.parametrize(
    "layout, target, kwargs, name",
    [
        ([], 0, {}, "layout"),
        (["AC", "J"], 0, {}, "layout"),
        (["AC", "DE"], 2, {}, "target"),
        (["AC", "DE"], -1, {}, "target"),
        (["AC", "DE"], 0, {"sequences": "AAA"}, "sequences"),
    ],
)
def test_bad_variant_arguments_raise_at_draw_time(layout, target, kwargs, name):
    strategy = metamorphic_variants(layout, target, **kwargs)
    with pytest.raises(InvalidArgument, match=name):
        strategy.example()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_sequences": 1}, "min_sequences"),
        ({"min_sequences": 5, "max_sequences": 4}, "max_sequences"),
        ({"max_tokens": 5}, "max_tokens"),
    ],
)
def test_bad_pair_options_raise_at_draw_time(kwargs, name):
    strategy = metamorphic_pairs(**kwargs)
    with pytest.raises(InvalidArgument, match=name):
        strategy.example()


# --- invalid_sequences -------------------------------------------------------------


@settings(CHECK, max_examples=100)
@given(invalid_sequences())
def test_invalid_sequences_are_rejected(pair):
    sequence, kind = pair
    assert kind in INVALID_KINDS
    with pytest.raises(InvalidSequence):
        validate_sequence(sequence)


@pytest.mark.parametrize("kind", INVALID_KINDS)
def test_every_invalid_kind_is_generated_and_restrictable(kind):
    found(invalid_sequences(), lambda pair: pair[1] == kind)

    @settings(CHECK, max_examples=10)
    @given(invalid_sequences(kinds=[kind]))
    def only(pair):
        assert pair[1] == kind

    only()


def test_invalid_sequences_cover_each_problem():
    kinds = invalid_sequences(kinds=["bad_character", "special_token"])
    for text in ("*", "J", " ", "<cls>", "<eos>", "<pad>", "<unk>"):
        found(kinds, lambda pair, text=text: text in pair[0])
    found(invalid_sequences(kinds=["bad_character"]), lambda pair: re.search(r"\d", pair[0]))


def test_invalid_sequences_shrink_to_simple_cases():
    assert find(invalid_sequences(), lambda pair: True, settings=SHRINK) == ("", "empty")
    too_long = find(invalid_sequences(kinds=["too_long"]), lambda p: True, settings=SHRINK)
    assert too_long == ("L" * (MAX_RESIDUES + 1), "too_long")
    lower = find(invalid_sequences(kinds=["lowercase"]), lambda p: True, settings=SHRINK)
    assert lower == ("l", "lowercase")


@pytest.mark.parametrize("kinds", [["empty", "nonsense"], [], "empty"])
def test_bad_kinds_raise_at_draw_time(kinds):
    strategy = invalid_sequences(kinds=kinds)
    with pytest.raises(InvalidArgument, match="kinds"):
        strategy.example()


# --- crowded_layouts ---------------------------------------------------------------

# The CI profile's pack shape: 6144 tokens, up to 128 sequences.
CI_PACKS = {"max_sequences": 128, "max_tokens": 6144}


def drawn_examples(strategy, n):
    """The ``n`` examples a derandomized run with ``max_examples=n`` draws."""
    drawn = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None)
    @given(strategy)
    def collect(layout):
        drawn.append(layout)

    collect()
    return drawn


def check_crowded(layout, *, min_sequences=2, max_sequences=256, max_tokens=16384, longest=170):
    assert min_sequences <= len(layout) <= max_sequences
    assert tokens_of(layout) <= max_tokens
    for sequence in layout:
        validate_sequence(sequence)
        assert 1 <= residue_count(sequence) <= longest


@CHECK
@given(crowded_layouts())
def test_crowded_layouts_fit_their_bounds(layout):
    check_crowded(layout)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_sequences": 5, "max_sequences": 7, "max_tokens": 40, "max_residues": 3},
        {"min_sequences": 60, "max_sequences": 64, "max_tokens": 400},
        {"min_sequences": 1, "max_sequences": 1, "max_tokens": 3, "max_residues": 1},
        {"max_sequences": 40, "max_tokens": 20000, "max_residues": MAX_RESIDUES},
    ],
)
def test_crowded_layouts_respect_tight_options(kwargs):
    bounds = {k.replace("max_residues", "longest"): v for k, v in kwargs.items()}

    @settings(CHECK, max_examples=20)
    @given(crowded_layouts(**kwargs))
    def check(layout):
        check_crowded(layout, **bounds)

    check()


@settings(CHECK, max_examples=20)
@given(crowded_layouts(masks=False, rare=False, **CI_PACKS))
def test_crowded_masks_and_rare_can_be_turned_off(layout):
    assert set("".join(layout)) <= set(STANDARD_RESIDUES)


def test_crowded_layouts_are_big_within_six_examples():
    sizes = [(len(x), tokens_of(x)) for x in drawn_examples(crowded_layouts(**CI_PACKS), 6)]
    assert any(n >= 64 and t >= 4096 for n, t in sizes), sizes


def test_default_crowded_layouts_are_big_within_twenty_examples():
    sizes = [(len(x), tokens_of(x)) for x in drawn_examples(crowded_layouts(), 20)]
    assert any(n >= 200 or t >= 12000 for n, t in sizes), sizes


def test_crowded_layouts_hold_masks_rare_residues_duplicates_and_longest():
    layouts = crowded_layouts(**CI_PACKS)
    found(layouts, lambda layout: any(MASK in s for s in layout))
    found(layouts, lambda layout: set("".join(layout)) & set(RARE_RESIDUES))
    found(layouts, lambda layout: len(set(layout)) < len(layout) and len(set(layout)) > 10)
    found(layouts, lambda layout: any(residue_count(s) == 170 for s in layout))


def test_crowded_layouts_shrink_to_min_sequences_of_l():
    layouts = crowded_layouts(min_sequences=3, **CI_PACKS)
    assert find(layouts, lambda layout: True, settings=SHRINK) == ["L", "L", "L"]


def test_crowded_layouts_shrink_to_just_over_a_sequence_count():
    layout = find(crowded_layouts(**CI_PACKS), lambda layout: len(layout) > 32, settings=SHRINK)
    assert 33 <= len(layout) <= 40
    assert all(residue_count(s) == 1 for s in layout)


def test_crowded_layouts_shrink_to_just_over_a_token_count():
    layouts = crowded_layouts(**CI_PACKS)
    layout = find(layouts, lambda layout: tokens_of(layout) > 2048, settings=SHRINK)
    # Shortening a read by one residue shortens each of its (up to six) frames.
    assert 2048 < tokens_of(layout) <= 2048 + 6
    # Shrinking never lengthens a sequence, so a couple of dozen of mean length remain.
    assert len(layout) <= 40
    assert all(residue_count(s) <= 170 for s in layout)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_sequences": 0}, "min_sequences"),
        ({"min_sequences": 9, "max_sequences": 8}, "max_sequences"),
        ({"max_sequences": 8.0}, "max_sequences"),
        ({"min_sequences": 10, "max_tokens": 29}, "max_tokens"),
        ({"max_residues": 0}, "max_residues"),
        ({"max_residues": MAX_RESIDUES + 1}, "max_residues"),
        ({"max_residues": "170"}, "max_residues"),
        ({"masks": 1}, "masks"),
        ({"rare": None}, "rare"),
    ],
)
def test_bad_crowded_options_raise_at_draw_time(kwargs, name):
    strategy = crowded_layouts(**kwargs)
    with pytest.raises(InvalidArgument, match=name):
        strategy.example()


def test_metamorphic_pairs_draw_from_given_layouts():
    from strategies import crowded_layouts, metamorphic_pairs

    @settings(max_examples=5, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(metamorphic_pairs(layouts=crowded_layouts(max_sequences=64, max_tokens=2048)))
    def check(pair):
        layout, target, variant, moved = pair
        assert len(layout) >= 2 and variant[moved] == layout[target]
        assert all(s != layout[target] for i, s in enumerate(layout) if i != target)

    check()


def test_metamorphic_pairs_reject_a_layouts_that_is_no_strategy():
    from strategies import metamorphic_pairs

    with pytest.raises(InvalidArgument, match="layouts"):
        metamorphic_pairs(layouts=[["A", "C"]]).example()


@pytest.mark.parametrize(
    "strategy",
    [
        stratified_layouts("long", masks=False, rare=False),
        stratified_layouts("short", masks=False, rare=False),
        packing_layouts(masks=False, rare=False),
        crowded_layouts(max_sequences=32, max_tokens=2048, masks=False, rare=False),
        metamorphic_pairs(masks=False, rare=False).map(lambda p: p[0] + p[2]),
    ],
    ids=["stratified-long", "stratified-short", "packing", "crowded", "pairs"],
)
@settings(max_examples=40, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_masks_and_standard_residues_only(strategy, data):
    """For pipelines that never see <mask> or rare residues (translated reads)."""
    layout = data.draw(strategy)
    residues = {r for s in layout for r in split_residues(s)}
    assert MASK not in residues and not residues & set(RARE_RESIDUES), layout
