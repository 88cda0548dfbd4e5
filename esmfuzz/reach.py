"""How often a run of each fuzz target hits each kind of edge, over many seeds.

A generator that can reach an edge is not one that does. This draws exactly what
``pytest fuzz/`` draws (each target's strategy, the profile's settings, the seed mixed with
the target's node id as ``--esm-seed`` does) without running a model, and counts, per
target and :data:`esmfuzz.edges.CLASSES` entry, the seeds whose run hit it. It assumes the
code under test passes: a failure would stop the target and start shrinking.
``benchmarks/edge_reach.py`` prints it; ``tests/test_edges.py`` holds it above 0.95.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from hypothesis import given, settings

from esmfuzz import edges
from esmfuzz.config import Config, crowd_limits, hypothesis_settings
from esmfuzz.properties import Sample
from esmfuzz.registry import PROPERTIES, targets
from esmfuzz.session import seeded, target_id

__all__ = ["Target", "draws", "edge_reach"]

Target = tuple[str, str]
"""(property, stratum): one fuzz target of ``fuzz/test_properties.py``."""


def profile_config(config: Config, profile: str) -> Config:
    """``config`` with the crowded limits a run under ``profile`` uses, as the plugin sets."""
    most, tokens = crowd_limits(config, profile=profile)
    return dataclasses.replace(config, crowd_sequences=most, crowd_tokens=tokens)


def draws(target: Target, config: Config, *, profile: str, seed: int | None,
          max_examples: int | None = None) -> list[Sample]:
    """The samples a run of ``target`` under ``profile`` and ``--esm-seed seed`` checks
    (the first ``max_examples`` of them, where the profile's run has no end, as soak's)."""
    prop, stratum = target
    drawn: list[Sample] = []
    limit = {} if max_examples is None else {"max_examples": max_examples}

    @settings(hypothesis_settings(profile), database=None, **limit)
    @given(sample=PROPERTIES[prop].samples(config, stratum))
    def test(sample):
        drawn.append(sample)

    seeded(test, target_id(prop, stratum), seed)()
    return drawn


def edge_reach(
    config: Config, *, profile: str, seeds: Iterable[int], chosen: Iterable[Target] | None = None
) -> dict[Target, dict[str, dict[str, int]]]:
    """Per target: per edge class and per edge, the number of ``seeds`` whose run hit it
    (``classes``, ``edges``); per class, the number of examples on it (``examples_on``) out
    of ``examples`` drawn after each run's first (Hypothesis's simplest, the same every
    run). Only what the target can reach is listed."""
    config = profile_config(config, profile)
    seeds = list(seeds)
    out = {}
    for target in chosen or targets():
        scope = PROPERTIES[target[0]].scope(config, target[1])
        reachable = edges.reachable(scope)
        per_edge = dict.fromkeys(reachable, 0)
        per_class = {c: 0 for e in reachable for c in edges.classes_of(e)}
        on = dict.fromkeys(per_class, 0)
        examples = 0
        for seed in seeds:
            hit: set[str] = set()
            for index, sample in enumerate(draws(target, config, profile=profile, seed=seed)):
                found = edges.hits((sample.sequences, sample.variant), scope)
                hit |= found
                if index:
                    examples += 1
                    for kind in {c for e in found for c in edges.classes_of(e)}:
                        on[kind] += 1
            for edge in hit:
                per_edge[edge] += 1
            for kind in {c for e in hit for c in edges.classes_of(e)}:
                per_class[kind] += 1
        out[target] = {"classes": per_class, "edges": per_edge, "examples_on": on,
                       "examples": examples}
    return out
